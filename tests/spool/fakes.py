"""Test doubles for the spool and the queue runner: thread runners, a directory, envelopes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
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


#: The spool schema of version 3, the release before routes, as that release created it.
SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    arrival REAL NOT NULL,
    body_type TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL,
    ret TEXT,
    envid TEXT,
    declared_size INTEGER,
    size INTEGER NOT NULL,
    client_address TEXT NOT NULL,
    client_helo TEXT NOT NULL,
    client_user TEXT,
    client_tls TEXT,
    client_password TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    body BLOB,
    body_file TEXT,
    kind TEXT NOT NULL DEFAULT 'message',
    queue TEXT NOT NULL DEFAULT 'active',
    reason TEXT
);
CREATE TABLE IF NOT EXISTS recipient (
    message_id INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    notify TEXT,
    orcpt TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    diagnostic TEXT NOT NULL DEFAULT '',
    delay_notified INTEGER NOT NULL DEFAULT 0,
    remote_mta TEXT,
    last_attempt REAL,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS message_next_attempt ON message (next_attempt);
PRAGMA user_version = 3;
"""


def write_v3_spool(directory: Path, recipients: Sequence[str], body: bytes) -> str:
    """
    Write a spool database of schema version 3 holding one message, as that release did.

    @param directory: the spool directory to create.
    @param recipients: the message's pending recipients.
    @param body: the message, stored inline.
    @return: the message's queue id.
    """
    directory.mkdir(parents=True)
    db = sqlite3.connect(directory / "spool.sqlite3")
    try:
        db.executescript(SCHEMA_V3)
        cursor = db.execute(
            "INSERT INTO message (sender, arrival, body_type, smtputf8, size, client_address,"
            " client_helo, next_attempt, body) VALUES ('s@remote.example', 1000, '7BIT', 0, ?,"
            " '192.0.2.1', 'client.example', 1000, ?)",
            (len(body), body),
        )
        db.executemany(
            "INSERT INTO recipient (message_id, position, address, state)"
            " VALUES (?, ?, ?, 'pending')",
            [(cursor.lastrowid, position, address) for position, address in enumerate(recipients)],
        )
        db.commit()
    finally:
        db.close()
    return f"{cursor.lastrowid:012X}"
