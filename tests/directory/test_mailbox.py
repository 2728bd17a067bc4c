"""Tests for L{mdtwist.directory.mailbox}."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.mailbox import find_mailbox
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from tests.spool.fakes import FakeDirectory, make_account

ALICE = make_account("alice@example.com", "a.l@example.com")
PM = make_account("pm@second.example", "postmaster@second.example")
DOMAINS = frozenset({"example.com", "second.example"})


class FindMailboxTests(SynchronousTestCase):
    """
    L{find_mailbox} finds the account with the address, else the postmaster mailbox.
    """

    def setUp(self) -> None:
        self.directory = FakeDirectory([ALICE, PM], DOMAINS)

    def find(self, address: str, postmaster: str | None = "alice@example.com") -> Account | None:
        """
        @return: the account found for C{address}.
        """
        d = Deferred.fromCoroutine(
            find_mailbox(self.directory, address, postmaster=postmaster, local_domains=DOMAINS)
        )
        return self.successResultOf(d)

    def test_account(self) -> None:
        """
        An address or alias of an account, in any case, finds that account.
        """
        self.assertEqual(self.find("A.L@Example.com"), ALICE)
        self.assertIsNone(self.find("nobody@example.com"))

    def test_postmaster(self) -> None:
        """
        Bare postmaster and postmaster at a local domain without its own account reach the
        configured mailbox; an account that has a postmaster address keeps it.
        """
        self.assertEqual(self.find("postmaster"), ALICE)
        self.assertEqual(self.find("PostMaster@example.com"), ALICE)
        self.assertEqual(self.find("postmaster@second.example"), PM)
        self.assertIsNone(self.find("postmaster@other.test"))

    def test_no_postmaster_configured(self) -> None:
        """
        Without a configured mailbox, postmaster reaches only an account of its own.
        """
        self.assertIsNone(self.find("postmaster", None))
        self.assertIsNone(self.find("postmaster@example.com", None))
        self.assertEqual(self.find("postmaster@second.example", None), PM)

    def test_directory_down(self) -> None:
        """
        A directory that cannot answer fails the lookup; it never means "no mailbox".
        """
        self.directory.unavailable = True
        d = Deferred.fromCoroutine(
            find_mailbox(
                self.directory, "alice@example.com", postmaster=None, local_domains=DOMAINS
            )
        )
        self.failureResultOf(d, DirectoryUnavailable)
