# -*- test-case-name: tests.test_cli -*-
"""
C{mdtwistctl}: look at the queue, make password hashes.

Commands:
  - C{mdtwistctl queue list --spool DIR}: one line per queued message, the active queue first,
    then the bad queue (parked messages, with their reason);
  - C{mdtwistctl queue show ID --spool DIR [--body]}: the envelope, the queue (and why a message
    is in the bad queue) and each recipient's state;
  - C{mdtwistctl hash-password}: read a password, print its argon2id hash;
  - C{mdtwistctl settings ...}: the client settings (L{mdtwist.settings.cli});
  - C{mdtwistctl discover ADDRESS}: find a mailbox's IMAP and SMTP settings as a client would
    (L{mdtwist.settings.discover}).

The queue commands open the spool database read-only, so they are safe while the server runs.
A server of several processes keeps one spool shard per process (C{DIR} itself and its
C{shard-<k>} subdirectories): C{queue list} lists every shard there is, in queue id order within
each queue, and C{queue show} reads the shard its id names.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from mdtwist.directory.passwords import hash_password
from mdtwist.errors import SpoolError
from mdtwist.settings import cli as settings_cli
from mdtwist.settings import discover
from mdtwist.spool.store import (
    DATABASE_NAME,
    Queue,
    QueuedMessage,
    QueueEntry,
    SpoolReader,
    existing_shards,
    shard_directory,
    shard_of,
)

_PROGRAM = "mdtwistctl"


class _CommandError(Exception):
    # A command failed; the message is for the user.
    pass


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """
    Run C{mdtwistctl}.

    @param argv: the arguments after the program name; C{sys.argv[1:]} when L{None}.
    @param stdin: where passwords are read from; C{sys.stdin} when L{None}.
    @param stdout: where results go; C{sys.stdout} when L{None}.
    @param stderr: where errors go; C{sys.stderr} when L{None}.
    @return: the exit status: 0 on success, 1 when the command failed, 2 for bad usage.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    parser = _parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        if options.command == "queue" and options.queue_command == "list":
            _queue_list(Path(options.spool), stdout)
        elif options.command == "queue" and options.queue_command == "show":
            _queue_show(Path(options.spool), options.queue_id, options.body, stdout)
        elif options.command == "hash-password":
            _hash_password(stdin, stdout)
        elif options.command == "settings":
            settings_cli.run(options, stdout)
        elif options.command == "discover":
            password = stdin.readline().rstrip("\r\n") if options.password_stdin else None
            text, status = discover.main(options, password)
            stdout.write(text)
            return status
        else:
            parser.print_usage(stderr)
            return 2
    except (_CommandError, SpoolError, settings_cli.CommandError, discover.UsageError) as e:
        stderr.write(f"{_PROGRAM}: {e}\n")
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROGRAM, description="Manage an mdtwist server.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    queue = commands.add_parser("queue", help="look at the mail queue")
    queue_commands = queue.add_subparsers(dest="queue_command", metavar="QUEUE-COMMAND")
    listing = queue_commands.add_parser("list", help="list queued messages")
    listing.add_argument("--spool", required=True, metavar="DIR", help="the spool directory")
    show = queue_commands.add_parser("show", help="show one queued message")
    show.add_argument("queue_id", metavar="ID", help="the queue id")
    show.add_argument("--spool", required=True, metavar="DIR", help="the spool directory")
    show.add_argument("--body", action="store_true", help="print the message itself too")
    commands.add_parser(
        "hash-password", help="read a password from standard input and print its hash"
    )
    settings_cli.add_parser(commands)
    discover.add_parser(commands)
    return parser


def _time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _queue_list(spool: Path, out: TextIO) -> None:
    entries = _list_shards(spool)
    active = [entry for entry in entries if entry.queue is Queue.ACTIVE]
    bad = [entry for entry in entries if entry.queue is not Queue.ACTIVE]
    for entry in active:
        out.write(
            f"{entry.queue_id}  {_time(entry.arrival)}  {entry.size:>9}  <{entry.sender}>"
            f"  {entry.pending}/{entry.recipients} pending\n"
        )
    out.write(f"{len(active)} messages\n")
    if bad:
        out.write("\nBad queue:\n")
        for entry in bad:
            out.write(
                f"{entry.queue_id}  {_time(entry.arrival)}  {entry.size:>9}  <{entry.sender}>"
                f"  {entry.reason or '-'}\n"
            )
        out.write(f"{len(bad)} messages in the bad queue\n")


def _list_shards(spool: Path) -> list[QueueEntry]:
    # Every shard's messages; shards in ascending order, so the ids stay in ascending order.
    # With no shard at all, the reader of the spool directory says there is no database.
    entries: list[QueueEntry] = []
    for shard in existing_shards(spool) or [0]:
        reader = SpoolReader(shard_directory(spool, shard))
        try:
            entries += reader.list()
        finally:
            reader.close()
    return entries


def _queue_show(spool: Path, queue_id: str, body: bool, out: TextIO) -> None:
    message = _load(spool, queue_id, body)
    if message is None:
        raise _CommandError(f"no message {queue_id} in {spool}")
    for name, value in _describe(message):
        out.write(f"{name}: {value}\n")
    if message.body is not None:
        out.write("\n")
        out.flush()
        raw = getattr(out, "buffer", None)
        if raw is not None:
            raw.write(message.body)
            raw.flush()
        else:
            out.write(message.body.decode("utf-8", "replace"))


def _load(spool: Path, queue_id: str, body: bool) -> QueuedMessage | None:
    # Read the message from the shard its id names. A shard without a database holds no
    # message; when the spool has no shard at all, the reader of the spool directory says so.
    directory = shard_directory(spool, shard_of(queue_id) or 0)
    if not (directory / DATABASE_NAME).is_file():
        if existing_shards(spool):
            return None
        directory = spool
    reader = SpoolReader(directory)
    try:
        return reader.load(queue_id, with_body=body)
    finally:
        reader.close()


def _describe(message: QueuedMessage) -> list[tuple[str, str]]:
    envelope = message.envelope
    client = envelope.client
    lines = [
        ("Queue-Id", message.queue_id),
        ("Queue", message.queue.value),
    ]
    if message.reason is not None:
        lines.append(("Bad-Queue-Reason", message.reason))
    lines += [
        ("Kind", message.kind.value),
        ("Arrival", _time(envelope.arrival)),
        ("Size", str(message.size)),
        ("Sender", f"<{envelope.sender}>"),
        ("Client", f"{client.address} helo={client.helo or '-'}"),
        ("Authenticated", client.user or "-"),
        ("TLS", client.tls or "-"),
        ("Body-Type", envelope.body_type.value),
        ("SMTPUTF8", "yes" if envelope.smtputf8 else "no"),
        ("Declared-Size", "-" if envelope.size is None else str(envelope.size)),
        ("DSN-Ret", envelope.ret or "-"),
        ("DSN-Envid", envelope.envid or "-"),
        ("Attempts", str(message.attempts)),
        ("Next-Attempt", _time(message.next_attempt)),
    ]
    for position, recipient in enumerate(envelope.recipients):
        notify = "-" if recipient.notify is None else ",".join(sorted(recipient.notify))
        delayed = position < len(message.progress) and message.progress[position].delay_notified
        lines.append(
            (
                "Recipient",
                f"<{recipient.address}> {recipient.state.value} attempts={recipient.attempts}"
                f" status={recipient.status or '-'} notify={notify}"
                f" orcpt={recipient.orcpt or '-'}{' delay-notified' if delayed else ''}"
                f" {recipient.diagnostic}".rstrip(),
            )
        )
    return lines


def _hash_password(stdin: TextIO, out: TextIO) -> None:
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise _CommandError("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise _CommandError("empty password")
    out.write(hash_password(password) + "\n")
