"""Test doubles for the spool and the queue runner: thread runners, a directory, envelopes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, maybeDeferred

from mdtwist.directory.model import Account
from mdtwist.envelope import ClientInfo, Envelope, Recipient
from tests.support.directory import FakeDirectory as FakeDirectory  # re-exported: now shared


def run_now(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Run a function at once on the calling thread, as the C{spool-io} pool would on its own.

    @return: a Deferred that has fired with the result or the exception.
    """
    return maybeDeferred(f, *args, **kwargs)


@attrs.define
class HeldCall:
    """
    One call handed to a L{HeldRunner}, not yet run.

    @ivar f: the function.
    @ivar args: its arguments.
    @ivar deferred: the Deferred returned to the caller.
    """

    f: Callable[..., Any]
    args: tuple[Any, ...]
    deferred: Deferred[Any]


class HeldRunner:
    """
    A thread runner that holds each call until the test runs it: a write "in flight".

    @ivar calls: the calls not run yet, oldest first.
    """

    def __init__(self) -> None:
        self.calls: list[HeldCall] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Hold a call.

        @return: a Deferred that fires when the test runs the call.
        """
        d: Deferred[Any] = Deferred()
        self.calls.append(HeldCall(f, args, d))
        return d

    def run_next(self) -> None:
        """Run the oldest held call and fire its Deferred."""
        call = self.calls.pop(0)
        maybeDeferred(call.f, *call.args).chainDeferred(call.deferred)

    def run_all(self) -> None:
        """Run held calls, including those that running them adds, until none is left."""
        while self.calls:
            self.run_next()


def make_account(address: str, *aliases: str, enabled: bool = True) -> Account:
    """
    Make an account whose mailbox is the local part of its address.

    @return: the account.
    """
    mailbox, _, domain = address.partition("@")
    return Account(
        address=address,
        mailbox=mailbox,
        domain=domain,
        login=address,
        aliases=aliases,
        enabled=enabled,
    )


def make_envelope(*recipients: str | Recipient, sender: str = "s@remote.example") -> Envelope:
    """
    Make an envelope from a client at 192.0.2.1 that arrived at time 1000.

    @param recipients: addresses or full recipients.
    @return: the envelope.
    """
    return Envelope(
        sender=sender,
        recipients=tuple(r if isinstance(r, Recipient) else Recipient(r) for r in recipients),
        client=ClientInfo(address="192.0.2.1", helo="client.example"),
        arrival=1000.0,
    )
