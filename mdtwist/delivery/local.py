# -*- test-case-name: tests.delivery.test_local -*-
"""
Delivery into local mailboxes: the L{ILocalDelivery} seam and its Maildir implementation.

A Maildir delivery (after the Maildir specification of qmail) writes the message to a file with
a name no other delivery uses in C{tmp/}, fsyncs it, renames it into C{new/} and fsyncs C{new/},
so a message is either complete in C{new/} or absent. Directories that a delivery creates are
fsynced into their parents. The blocking work (L{mdtwist.delivery.maildir_files}) runs through
C{run}: on a delivery thread, or in a delivery worker process (L{mdtwist.delivery.workers}).

Stored copies have Unix line ends (C{LF}), as Maildir readers expect, and start with a
C{Return-Path:} line with the envelope sender and a C{Delivered-To:} line naming the account.

Loops: a message that already carries a C{Delivered-To:} field naming the account (or the
address it was sent to) has been delivered here before and came back (a forward to an address
that forwards back): it is not delivered again but fails with C{5.4.6} "mail forwarding loop",
as Postfix's local(8) does. L{forwarding_loop} is the check; the LMTP delivery makes it too.
"""

from __future__ import annotations

import enum
import errno
import itertools
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mdtwist.delivery.maildir_files import KnownMaildirs, write_copy
from mdtwist.logging import escape_text

if TYPE_CHECKING:
    from mdtwist.directory.model import Account

log = Logger()

#: Runs a blocking function on a thread and returns a Deferred with its result.
Run = Callable[..., "Deferred[Any]"]


class DeliveryStatus(enum.Enum):
    """
    The outcome of one delivery to one mailbox.

    A temporary failure keeps the recipient queued; a permanent one fails it.
    """

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"


@attrs.frozen
class DeliveryResult:
    """
    What happened to one copy of a message.

    @ivar status: delivered, or a temporary or permanent failure.
    @ivar enhanced: the enhanced status code (C{2.0.0}, C{4.3.1}, C{5.2.1}).
    @ivar reason: a short explanation for logs and bounces; never message content.
    @ivar relay: where the copy went, for the mail log (C{local} for a Maildir, C{lmtp:...}
        for an LMTP server).
    """

    status: DeliveryStatus
    enhanced: str
    reason: str = ""
    relay: str = "local"


_DELIVERED_TO = b"delivered-to:"


def forwarding_loop(account: Account, recipient: str, body: bytes) -> DeliveryResult | None:
    """
    Find a forwarding loop: a C{Delivered-To:} field in the header section of the message
    naming the account's address or the recipient (in any case).

    @param account: the account the copy is for.
    @param recipient: the envelope recipient.
    @param body: the message, CRLF line ends.
    @return: the permanent failure (C{5.4.6}) to report, or L{None} when there is no loop.
    """
    end = body.find(b"\r\n\r\n")
    header = body if end < 0 else body[: end + 2]
    if _DELIVERED_TO not in header.lower():
        return None
    ours = {account.address.lower(), recipient.lower()}
    for line in header.split(b"\r\n"):
        if line[:13].lower() == _DELIVERED_TO:
            value = line[13:].strip().strip(b"<>").decode("utf-8", "replace").lower()
            if value in ours:
                return DeliveryResult(
                    DeliveryStatus.PERMANENT, "5.4.6", f"mail forwarding loop for {value}"
                )
    return None


@attrs.frozen
class CopyId:
    """
    Names one copy of a queued message for one recipient, the same on every attempt.

    With it a Maildir delivery gives the copy a file name of its own (see
    L{MaildirDelivery.deliver}): an attempt after a crash that came between the copy reaching
    the Maildir and the spool recording it finds the copy there and does not deliver it again.

    @ivar queue_id: the queue id of the message (never reused by a spool).
    @ivar position: the recipient's position in the envelope.
    @ivar arrival: when the message arrived (so a name stays unique even if a spool database
        were made anew and gave out its queue ids again).
    """

    queue_id: str
    position: int
    arrival: float


class ILocalDelivery(Interface):
    """
    Puts one copy of a message into one local account's mailbox.

    Implementations: L{MaildirDelivery}; an LMTP client (to Dovecot) can provide it too.
    """

    def deliver(
        account: Account,  # noqa: N805 - zope interface methods have no self
        recipient: str,
        body: bytes,
        sender: str,
        copy: CopyId | None,
    ) -> Deferred[DeliveryResult]:
        """
        Deliver one copy.

        @param account: the account that owns the recipient address.
        @param recipient: the envelope recipient address this copy is for.
        @param body: the message (CRLF line ends, as received).
        @param sender: the envelope sender (C{""} for the null sender).
        @param copy: names this copy, the same on every attempt, so that a copy already
            delivered by an attempt the spool did not record (a crash) is not delivered again
            where the mailbox can tell; L{None} when there is no such name.
        @return: a Deferred firing with the result; expected failures (disk full) are results,
            not errors.
        """


#: How many accounts' Maildir paths a Maildir delivery agent remembers (then it starts over).
PLACES_REMEMBERED = 4096

_SPOOL_FULL = frozenset({errno.ENOSPC})
_QUOTA = frozenset({errno.EDQUOT})


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _is_safe_component(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and not _CONTROL.search(name)


def _is_safe_header_value(text: str) -> bool:
    return bool(text) and not _CONTROL.search(text)


@implementer(ILocalDelivery)
class MaildirDelivery:
    """
    Delivers to C{<root>/<domain>/<mailbox>/Maildir/}.

    Each call writes one copy; any number may run at once on different threads.
    """

    def __init__(
        self, root: Path, run: Run, clock: IReactorTime, hostname: str | None = None
    ) -> None:
        """
        Make a Maildir delivery agent.

        @param root: the directory that holds one directory per domain.
        @param run: calls a blocking function on a thread and returns a Deferred of its result.
        @param clock: the source of the time in file names.
        @param hostname: the host name in file names; the system's name when L{None}.
        """
        self._root = root
        self._run = run
        self._clock = clock
        host = socket.gethostname() if hostname is None else hostname
        self._host = host.replace("/", "\\057").replace(":", "\\072")
        self._pid = os.getpid()
        self._counter = itertools.count(1)
        # Random per delivery agent, not per file: together with the time, the process id
        # and the counter it keeps names unique even across a restart that reuses the pid.
        self._token = secrets.token_hex(4)
        # Maildirs that exist, for the delivery threads; a worker process keeps its own.
        self._known = KnownMaildirs()
        # The Maildir and former Maildirs of recent accounts (the paths cost more to build
        # and compare than the rest of a delivery's preparation).
        # The writes take paths as str (L{mdtwist.delivery.maildir_files}).
        self._remembered: dict[tuple[str, ...], tuple[str | None, tuple[str, ...]]] = {}
        self._root_path = os.fspath(root)

    def _places(self, account: Account) -> tuple[str | None, tuple[str, ...]]:
        # maildir_for and former_maildirs, remembered for up to PLACES_REMEMBERED accounts.
        key = (account.domain, account.mailbox, account.address, *account.aliases)
        places = self._remembered.get(key)
        if places is None:
            maildir = self.maildir_for(account)
            former = () if maildir is None else self.former_maildirs(account, maildir)
            if len(self._remembered) >= PLACES_REMEMBERED:
                self._remembered.clear()
            places = self._remembered[key] = (
                None if maildir is None else os.fspath(maildir),
                tuple(os.fspath(path) for path in former),
            )
        return places

    def maildir_for(self, account: Account) -> Path | None:
        """
        Find the Maildir of an account.

        @param account: the account.
        @return: its Maildir path, or L{None} when the account's domain or mailbox cannot be a
            directory name.
        """
        domain = account.domain.lower()
        if not (_is_safe_component(domain) and _is_safe_component(account.mailbox)):
            return None
        return self._root / domain / account.mailbox / "Maildir"

    def former_maildirs(self, account: Account, maildir: Path) -> tuple[Path, ...]:
        """
        The Maildirs an account's mail may already be in under an earlier naming: one per
        address of the account (named after its local part), in a fixed order.

        An LDAP account's Maildir used to be named after whichever C{mail} value the server
        returned first; the name no longer depends on that order, and a delivery goes on
        into such an existing Maildir while the account's own one does not exist (see
        L{mdtwist.delivery.maildir_files.choose_maildir}), so no mail is split and none
        already there is lost from sight.

        An account whose Maildir is named by a directory attribute (C{attributes.mailbox},
        such as C{uid}) has no former Maildirs: another account's attribute value could equal
        the local part of one of its addresses, and its mail must never go there.

        @param account: the account.
        @param maildir: its Maildir (L{maildir_for}), left out.
        @return: the other candidate Maildirs.
        """
        if account.mailbox != account.address.rpartition("@")[0]:
            return ()
        found: list[Path] = []
        for address in sorted(account.addresses, key=str.lower):
            local, _, domain = address.rpartition("@")
            domain = domain.lower()
            if _is_safe_component(domain) and _is_safe_component(local):
                path = self._root / domain / local / "Maildir"
                if path != maildir and path not in found:
                    found.append(path)
        return tuple(found)

    def unique_name(self) -> str:
        """
        Make a file name that no other delivery uses.

        @return: C{<seconds>.M<microseconds>P<pid>Q<counter>R<random>.<host>}.
        """
        now = self._clock.seconds()
        seconds = int(now)
        micro = int((now - seconds) * 1_000_000)
        count = next(self._counter)
        return f"{seconds}.M{micro}P{self._pid}Q{count}R{self._token}.{self._host}"

    def copy_name(self, copy: CopyId) -> str:
        """
        The file name of a copy named by a L{CopyId}: the same on every attempt.

        @param copy: the copy.
        @return: C{<seconds>.M<microseconds>Q<queue id>R<position>.<host>}, from the
            message's arrival.
        """
        seconds = int(copy.arrival)
        micro = int((copy.arrival - seconds) * 1_000_000)
        return f"{seconds}.M{micro}Q{copy.queue_id}R{copy.position}.{self._host}"

    def deliver(
        self,
        account: Account,
        recipient: str,
        body: bytes,
        sender: str = "",
        copy: CopyId | None = None,
    ) -> Deferred[DeliveryResult]:
        """
        Deliver one copy into the account's Maildir, with C{Return-Path:} and C{Delivered-To:}
        lines on top (RFC 5321 section 4.4: the final delivery records the reverse-path).

        With C{copy}, the file in C{new/} gets the name L{copy_name} gives, and is linked
        there only if no file has it yet: when the copy is already there (delivered by an
        attempt that a crash kept the spool from recording), it is not delivered again. A copy
        the reader has already moved to C{cur/} is not looked for: delivery stays at least
        once, and only this window of duplicates is closed.

        @param account: the account.
        @param recipient: the envelope recipient, for the log.
        @param body: the message with CRLF line ends.
        @param sender: the envelope sender.
        @param copy: the name of this copy, or L{None} for a name of its own.
        @return: a Deferred firing with the result.
        """
        maildir, former = self._places(account)
        if (
            maildir is None
            or not _is_safe_header_value(account.address)
            or not (sender == "" or _is_safe_header_value(sender))
        ):
            log.error("Account data unusable for Maildir delivery to {rcpt}", rcpt=recipient)
            return succeed(
                DeliveryResult(DeliveryStatus.TEMPORARY, "4.3.5", "account data unusable")
            )
        loop = forwarding_loop(account, recipient, body)
        if loop is not None:
            log.warn(
                "Not delivered to {rcpt}: {reason}",
                rcpt=escape_text(recipient),
                reason=loop.reason,
            )
            return succeed(loop)
        header = f"Return-Path: <{sender}>\nDelivered-To: {account.address}\n".encode()
        d: Deferred[bool] = self._run(
            write_copy,
            self._root_path,
            maildir,
            former,
            self.unique_name(),
            None if copy is None else self.copy_name(copy),
            header,
            body,
            self._known,
        )

        def delivered(written: bool) -> DeliveryResult:
            if not written:
                log.info(
                    "{rcpt}: copy {name} was in the Maildir already, not delivered again",
                    rcpt=escape_text(recipient),
                    name=None if copy is None else self.copy_name(copy),
                )
            return DeliveryResult(DeliveryStatus.DELIVERED, "2.0.0", "delivered to Maildir")

        def failed(reason: Failure) -> DeliveryResult:
            reason.trap(OSError)
            error = reason.value
            assert isinstance(error, OSError)
            code = error.errno
            log.warn("Maildir delivery to {rcpt} failed: {error}", rcpt=recipient, error=error)
            if code in _SPOOL_FULL:
                return DeliveryResult(DeliveryStatus.TEMPORARY, "4.3.1", "mail system full")
            if code in _QUOTA:
                return DeliveryResult(DeliveryStatus.TEMPORARY, "4.2.2", "mailbox full")
            return DeliveryResult(
                DeliveryStatus.TEMPORARY, "4.3.0", f"mailbox write failed: {error.strerror}"
            )

        return d.addCallbacks(delivered, failed)
