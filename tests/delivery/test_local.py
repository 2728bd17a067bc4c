"""Tests for L{mdtwist.delivery.local}."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist import durable
from mdtwist.delivery import local, maildir_files
from mdtwist.delivery.local import (
    CopyId,
    DeliveryResult,
    DeliveryStatus,
    ILocalDelivery,
    MaildirDelivery,
    forwarding_loop,
)
from mdtwist.delivery.maildir_files import write_maildir_message
from tests.spool.fakes import make_account, run_now
from tests.support.logs import capture_logs

BODY = b"Subject: hi\r\n\r\nline one\r\nline two\r\n"


class MaildirDeliveryTests(SynchronousTestCase):
    """Tests for L{MaildirDelivery}."""

    def setUp(self) -> None:
        """Make a delivery agent on a new mail root, at time 1700000000.25."""
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.clock = Clock()
        self.clock.advance(1700000000.25)
        self.delivery = MaildirDelivery(self.root, run_now, self.clock, hostname="mx.example")
        self.alice = make_account("alice@example.com")

    def maildir(self) -> Path:
        """@return: Alice's Maildir."""
        return self.root / "example.com" / "alice" / "Maildir"

    def test_provides_interface(self) -> None:
        """L{MaildirDelivery} provides L{ILocalDelivery}."""
        self.assertTrue(verifyObject(ILocalDelivery, self.delivery))

    def test_delivers_into_new(self) -> None:
        """
        A delivered copy is a file in C{new/} with C{Return-Path:} (the envelope sender) and
        C{Delivered-To:} lines, and LF line ends.

        C{tmp/} is left empty and C{cur/} exists.
        """
        result = self.successResultOf(
            self.delivery.deliver(self.alice, "Alice@example.com", BODY, "s@elsewhere.test")
        )
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertEqual(result.enhanced, "2.0.0")
        [copy] = (self.maildir() / "new").iterdir()
        self.assertEqual(
            copy.read_bytes(),
            b"Return-Path: <s@elsewhere.test>\nDelivered-To: alice@example.com\n"
            b"Subject: hi\n\nline one\nline two\n",
        )
        self.assertEqual(list((self.maildir() / "tmp").iterdir()), [])
        self.assertTrue((self.maildir() / "cur").is_dir())

    def test_forwarding_loop(self) -> None:
        """
        A message whose header section already has C{Delivered-To:} naming the account (any
        case, with or without angle brackets) or the recipient is not delivered: it fails
        permanently with C{5.4.6} "mail forwarding loop", as with Postfix's local(8).
        """
        for field in [
            b"Delivered-To: alice@example.com",
            b"DELIVERED-TO:   <Alice@Example.com>",
            b"Delivered-To: al@example.com",
        ]:
            body = b"Received: x\r\n" + field + b"\r\nSubject: hi\r\n\r\nbody\r\n"
            result = self.successResultOf(
                self.delivery.deliver(self.alice, "al@example.com", body, "s@e.test")
            )
            self.assertEqual(
                (result.status, result.enhanced), (DeliveryStatus.PERMANENT, "5.4.6"), field
            )
            self.assertTrue(result.reason.startswith("mail forwarding loop for "), result)
        self.assertFalse((self.maildir() / "new").exists())

    def test_no_loop(self) -> None:
        """
        C{Delivered-To:} for another address, or in the body, is no loop.
        """
        for body in [
            b"Delivered-To: bob@example.com\r\n\r\nbody\r\n",
            b"Subject: x\r\n\r\nDelivered-To: alice@example.com\r\n",
            b"X-Delivered-To: alice@example.com\r\n\r\nbody\r\n",
        ]:
            self.assertIsNone(forwarding_loop(self.alice, "alice@example.com", body), body)

    def test_creates_root(self) -> None:
        """A mail root that does not exist yet is created."""
        root = Path(self.mktemp())
        delivery = MaildirDelivery(root, run_now, self.clock, hostname="mx.example")
        result = self.successResultOf(delivery.deliver(self.alice, "alice@example.com", BODY))
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)
        self.assertEqual(len(list((root / "example.com/alice/Maildir/new").iterdir())), 1)

    def test_each_copy_own_file(self) -> None:
        """Copies delivered at the same moment get different file names."""
        for _ in range(3):
            self.successResultOf(self.delivery.deliver(self.alice, "alice@example.com", BODY))
        self.assertEqual(len(list((self.maildir() / "new").iterdir())), 3)

    def test_unique_name(self) -> None:
        """File names hold the time, process id, a counter and the escaped host name."""
        delivery = MaildirDelivery(self.root, run_now, self.clock, hostname="a/b:c")
        first = delivery.unique_name()
        second = delivery.unique_name()
        self.assertTrue(first.startswith(f"1700000000.M250000P{os.getpid()}Q1R"), first)
        self.assertTrue(first.endswith(".a\\057b\\072c"), first)
        self.assertIn("Q2R", second)

    def test_unsafe_mailbox(self) -> None:
        """
        A mailbox or domain that is not a plain directory name is a temporary failure.

        Nothing is written.
        """
        for account in [
            make_account("../escape@example.com"),
            make_account("a/b@example.com"),
            make_account("x@.."),
        ]:
            result = self.successResultOf(self.delivery.deliver(account, "x@example.com", BODY))
            self.assertEqual((result.status, result.enhanced), (DeliveryStatus.TEMPORARY, "4.3.5"))
        self.assertEqual(list(self.root.iterdir()), [])

    def test_disk_full(self) -> None:
        """A full disk is a temporary failure with status C{4.3.1}."""

        def full(*args: Any) -> Deferred[Any]:
            return fail(OSError(errno.ENOSPC, "No space left on device"))

        delivery = MaildirDelivery(self.root, full, self.clock, hostname="mx.example")
        result = self.successResultOf(delivery.deliver(self.alice, "alice@example.com", BODY))
        self.assertEqual(
            result, DeliveryResult(DeliveryStatus.TEMPORARY, "4.3.1", "mail system full")
        )

    def test_write_error(self) -> None:
        """A mailbox that cannot be created is a temporary failure with status C{4.3.0}."""
        (self.root / "example.com").write_bytes(b"not a directory")
        result = self.successResultOf(self.delivery.deliver(self.alice, "alice@example.com", BODY))
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.TEMPORARY, "4.3.0"))

    def test_unexpected_error(self) -> None:
        """An error that is not an I/O error fails the Deferred instead of being hidden."""

        def broken(*args: Any) -> Deferred[Any]:
            return fail(ZeroDivisionError())

        delivery = MaildirDelivery(self.root, broken, self.clock)
        self.failureResultOf(
            delivery.deliver(self.alice, "alice@example.com", BODY), ZeroDivisionError
        )


class WriteMaildirMessageTests(SynchronousTestCase):
    """Tests for L{write_maildir_message}."""

    def test_fsync_fails(self) -> None:
        """When the file cannot be synced the error is raised and nothing is left behind."""
        root = Path(self.mktemp())
        root.mkdir()
        maildir = root / "d" / "m" / "Maildir"
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                real_fsync(fd)
            else:
                raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "fsync", fsync)
        error = self.assertRaises(
            OSError, write_maildir_message, str(root), str(maildir), "n", b"data"
        )
        self.assertEqual(error.errno, errno.EIO)
        self.assertEqual(list((maildir / "tmp").iterdir()), [])
        self.assertEqual(list((maildir / "new").iterdir()), [])

    def test_relative_paths(self) -> None:
        """
        A relative Maildir whose top directory is a plain name (its parent is the current
        directory) is made, with each new directory synced into its parent, even when the
        root given is not above it.
        """
        top = f"maildir-{os.getpid()}-{id(self)}"
        self.addCleanup(shutil.rmtree, top, ignore_errors=True)
        self.addCleanup(shutil.rmtree, top + "-root", ignore_errors=True)
        synced: list[str] = []
        real = durable.fsync_directory

        def fsync_directory(path: str) -> None:
            synced.append(path)
            real(path)

        self.patch(maildir_files, "fsync_directory", fsync_directory)
        write_maildir_message(top + "-root", f"{top}/Maildir", "one", b"1")
        self.assertEqual(os.listdir(f"{top}/Maildir/new"), ["one"])
        self.assertEqual(synced[:2], [os.curdir, top])

    def test_known_maildir_removed(self) -> None:
        """
        A Maildir remembered as existing is not checked again, and is made anew when it has
        been removed since.
        """
        root = Path(self.mktemp())
        maildir = root / "d" / "m" / "Maildir"
        known: set[str] = set()
        write_maildir_message(str(root), str(maildir), "one", b"1", known)
        self.assertEqual(known, {str(maildir)})
        shutil.rmtree(root / "d")
        write_maildir_message(str(root), str(maildir), "two", b"2", known)
        self.assertEqual(known, {str(maildir)})
        self.assertEqual([p.name for p in (maildir / "new").iterdir()], ["two"])
        self.assertEqual(list((maildir / "tmp").iterdir()), [])
        self.assertTrue((maildir / "cur").is_dir())


class FormerMaildirTests(SynchronousTestCase):
    """
    An account's mail goes on into a Maildir named after another of its addresses while its
    own Maildir does not exist (the name used to depend on LDAP value order).
    """

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.delivery = MaildirDelivery(self.root, run_now, Clock(), hostname="mx.example")

    def deliver(self, account: Any) -> None:
        result = self.successResultOf(self.delivery.deliver(account, account.address, BODY))
        self.assertEqual(result.status, DeliveryStatus.DELIVERED)

    def test_existing_former_maildir(self) -> None:
        """
        With only C{a.example}'s Maildir on disk (made when that value came first), a copy
        for the account whose primary is C{alice} goes there; without any, into C{alice}'s.
        """
        account = make_account("alice@example.com")
        account = attrs.evolve(account, aliases=("a.example@example.com",))
        former = self.root / "example.com" / "a.example" / "Maildir"
        for folder in ("new", "cur", "tmp"):
            (former / folder).mkdir(parents=True)
        self.deliver(account)
        self.assertEqual(len(list((former / "new").iterdir())), 1)
        self.assertFalse((self.root / "example.com" / "alice").exists())
        shutil.rmtree(former.parent)
        self.deliver(account)
        self.assertEqual(
            len(list((self.root / "example.com" / "alice" / "Maildir" / "new").iterdir())), 1
        )

    def test_own_maildir_wins(self) -> None:
        """
        When the account's own Maildir exists, it is used even if a former one exists too.
        """
        account = attrs.evolve(
            make_account("alice@example.com"), aliases=("a.example@example.com",)
        )
        self.deliver(account)
        former = self.root / "example.com" / "a.example" / "Maildir" / "new"
        former.mkdir(parents=True)
        self.deliver(account)
        own = self.root / "example.com" / "alice" / "Maildir" / "new"
        self.assertEqual((len(list(own.iterdir())), list(former.iterdir())), (2, []))

    def test_named_by_attribute(self) -> None:
        """
        A Maildir named by a directory attribute (mailbox not the address's local part) has
        no former Maildirs: another account's Maildir is never used.
        """
        account = attrs.evolve(
            make_account("alice@example.com"), mailbox="u1001", aliases=("bob@example.com",)
        )
        maildir = self.delivery.maildir_for(account)
        assert maildir is not None
        self.assertEqual(self.delivery.former_maildirs(account, maildir), ())

    def test_remembered_per_account_data(self) -> None:
        """
        The paths a delivery remembers follow the account's data: once the alias that named
        the former Maildir is gone, mail goes into the account's own Maildir. At most
        L{local.PLACES_REMEMBERED} accounts are remembered.
        """
        account = attrs.evolve(
            make_account("alice@example.com"), aliases=("a.example@example.com",)
        )
        former = self.root / "example.com" / "a.example" / "Maildir"
        for folder in ("new", "cur", "tmp"):
            (former / folder).mkdir(parents=True)
        self.deliver(account)
        self.deliver(attrs.evolve(account, aliases=()))
        own = self.root / "example.com" / "alice" / "Maildir" / "new"
        self.assertEqual((len(list((former / "new").iterdir())), len(list(own.iterdir()))), (1, 1))
        self.patch(local, "PLACES_REMEMBERED", 3)
        for n in range(5):
            self.deliver(make_account(f"u{n}@example.com"))
        self.assertLessEqual(len(self.delivery._remembered), 3)


class CopyIdTests(SynchronousTestCase):
    """
    A copy named by a L{CopyId} is delivered at most once into C{new/}: a second attempt
    (after a crash kept the spool from recording the first) finds it there.
    """

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.delivery = MaildirDelivery(self.root, run_now, Clock(), hostname="mx.example")
        self.alice = make_account("alice@example.com")
        self.new = self.root / "example.com" / "alice" / "Maildir" / "new"

    def deliver(self, copy: CopyId | None, body: bytes = BODY) -> DeliveryResult:
        return self.successResultOf(
            self.delivery.deliver(self.alice, "alice@example.com", body, "s@e.test", copy)
        )

    def test_name(self) -> None:
        """
        The name holds the arrival time, the queue id, the position and the host.
        """
        self.assertEqual(
            self.delivery.copy_name(CopyId("00000000002A", 3, 1700000000.25)),
            "1700000000.M250000Q00000000002AR3.mx.example",
        )

    def test_second_attempt_not_delivered_again(self) -> None:
        """
        The same copy twice: one file, both attempts count as delivered, C{tmp/} is empty,
        and the second is logged. Another position of the same message is another copy.
        """
        events = capture_logs(self)
        copy = CopyId("00000000002A", 0, 1700000000.25)
        self.assertEqual(self.deliver(copy).status, DeliveryStatus.DELIVERED)
        self.assertEqual(self.deliver(copy).status, DeliveryStatus.DELIVERED)
        self.assertEqual([p.name for p in self.new.iterdir()], [self.delivery.copy_name(copy)])
        self.assertEqual(list((self.new.parent / "tmp").iterdir()), [])
        self.assertEqual(
            len([e for e in events if "not delivered again" in e.get("log_format", "")]), 1
        )
        self.deliver(CopyId("00000000002A", 1, 1700000000.25))
        self.assertEqual(len(list(self.new.iterdir())), 2)

    def test_link_keeps_existing(self) -> None:
        """
        A file of the copy's name that appears after the check is kept as it is: the new one
        is linked, never renamed over it, and its temporary file goes.
        """
        copy = CopyId("00000000002B", 0, 1.0)
        self.deliver(None)  # the Maildir exists
        name = self.delivery.copy_name(copy)
        maildir = self.new.parent
        write_maildir_message(str(self.root), str(maildir), "t1", b"first\n", final_name=name)
        write_maildir_message(str(self.root), str(maildir), "t2", b"second\n", final_name=name)
        self.assertEqual((self.new / name).read_bytes(), b"first\n")
        self.assertEqual(list((maildir / "tmp").iterdir()), [])

    def test_without_copy_id(self) -> None:
        """
        Without a L{CopyId} every delivery is a new file, as before.
        """
        self.deliver(None)
        self.deliver(None)
        self.assertEqual(len(list(self.new.iterdir())), 2)
