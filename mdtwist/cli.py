# -*- test-case-name: tests.test_cli -*-
"""
C{mdtwistctl}: look at the queue, talk to the running server, make password hashes.

Commands:
  - C{mdtwistctl queue list [--spool DIR]}: one line per queued message, the active queue first,
    then the bad queue (parked messages, with their reason);
  - C{mdtwistctl queue show ID [--spool DIR] [--body]}: the envelope, the queue (and why a
    message is in the bad queue) and each recipient's state;
  - C{mdtwistctl queue run}: the running server attempts every queued message now;
  - C{mdtwistctl reload}: the running server reads its accounts file and TLS certificate again;
  - C{mdtwistctl status [--json]}: the running server's version, processes, listeners and queue
    counts;
  - C{mdtwistctl hash-password}: read a password, print its argon2id hash;
  - C{mdtwistctl minger query ...} and C{mdtwistctl sharing check|cache ...}: see
    L{mdtwist.sharing.commands};
  - C{mdtwistctl settings ...}: the client settings (L{mdtwist.settings.cli});
  - C{mdtwistctl discover ADDRESS}: find a mailbox's IMAP and SMTP settings as a client would
    (L{mdtwist.settings.discover});
  - C{mdtwistctl dequeue run [DOMAIN]}: the running server sends its dequeue signals now
    (L{mdtwist.dequeue.control}).

C{--config FILE} (before the command; by default C{etc/mdtwist.toml} when it exists, else
C{/etc/mdtwist/mdtwist.toml}) says where the spool and the control socket are; C{--spool}
overrides the spool of the queue reading commands. The commands for the running server talk to
it over its control socket (L{mdtwist.control}); when it is not running, or the socket may not
be used, they say so in one line and exit with status 1.

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
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mdtwist.config import load_locations
from mdtwist.control.client import ControlClientError, call
from mdtwist.control.commands import QueueRun, Reload, Status
from mdtwist.dequeue import control as dequeue_control
from mdtwist.directory.passwords import hash_password
from mdtwist.errors import ConfigError, SpoolError
from mdtwist.settings import cli as settings_cli
from mdtwist.settings import discover
from mdtwist.sharing.commands import add_commands as add_sharing_commands
from mdtwist.sharing.commands import run_command as run_sharing_command
from mdtwist.spool.model import Queue, QueuedMessage, QueueEntry
from mdtwist.spool.store import (
    DATABASE_NAME,
    SpoolReader,
    existing_shards,
    shard_directory,
    shard_of,
)

_PROGRAM = "mdtwistctl"

#: The configuration files tried, in this order, without C{--config}.
DEFAULT_CONFIGS = (Path("etc/mdtwist.toml"), Path("/etc/mdtwist/mdtwist.toml"))


class _CommandError(Exception):
    # A command failed; the message is for the user.
    pass


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    default_configs: Sequence[Path] = DEFAULT_CONFIGS,
) -> int:
    """
    Run C{mdtwistctl}.

    @param argv: the arguments after the program name; C{sys.argv[1:]} when L{None}.
    @param stdin: where passwords are read from; C{sys.stdin} when L{None}.
    @param stdout: where results go; C{sys.stdout} when L{None}.
    @param stderr: where errors go; C{sys.stderr} when L{None}.
    @param default_configs: the configuration files tried without C{--config}.
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
    locations = _Locations(options.config, default_configs)
    try:
        if options.command == "queue" and options.queue_command == "list":
            _queue_list(locations.spool(options.spool), stdout)
        elif options.command == "queue" and options.queue_command == "show":
            _queue_show(locations.spool(options.spool), options.queue_id, options.body, stdout)
        elif options.command == "queue" and options.queue_command == "run":
            return _queue_run(locations.socket(), stdout, stderr)
        elif options.command == "reload":
            return _reload(locations.socket(), stdout, stderr)
        elif options.command == "status":
            _status(locations.socket(), options.json, stdout, stderr)
        elif options.command == "hash-password":
            _hash_password(stdin, stdout)
        elif options.command in ("minger", "sharing"):
            status = run_sharing_command(options, stdout, stderr)
            if status is None:
                parser.print_usage(stderr)
                return 2
            return status
        elif options.command == "settings":
            settings_cli.run(options, stdout)
        elif options.command == "dequeue":
            status = dequeue_control.run_command(options, locations.socket(), stdout, stderr)
            if status is None:
                parser.print_usage(stderr)
                return 2
            return status
        elif options.command == "discover":
            password = stdin.readline().rstrip("\r\n") if options.password_stdin else None
            text, status = discover.main(options, password)
            stdout.write(text)
            return status
        else:
            parser.print_usage(stderr)
            return 2
    except (
        _CommandError,
        SpoolError,
        ControlClientError,
        settings_cli.CommandError,
        discover.UsageError,
    ) as e:
        stderr.write(f"{_PROGRAM}: {e}\n")
        return 1
    return 0


class _Locations:
    # Where the spool and the control socket are, read from the configuration when needed.

    def __init__(self, config: str | None, defaults: Sequence[Path]) -> None:
        self._config = config
        self._defaults = defaults

    def _read(self) -> tuple[Path, Path]:
        if self._config is not None:
            path = Path(self._config)
        else:
            found = [path for path in self._defaults if path.is_file()]
            if not found:
                tried = " or ".join(str(path) for path in self._defaults)
                raise _CommandError(f"no configuration file ({tried}); give --config FILE")
            path = found[0]
        try:
            return load_locations(path)
        except ConfigError as e:
            raise _CommandError("; ".join(e.problems) or f"{path}: no spool.directory") from None

    def spool(self, override: str | None) -> Path:
        return Path(override) if override is not None else self._read()[0]

    def socket(self) -> Path:
        return self._read()[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_PROGRAM, description="Manage an mdtwist server.")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's configuration (default: etc/mdtwist.toml, then"
        " /etc/mdtwist/mdtwist.toml): where the spool and the control socket are",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    queue = commands.add_parser("queue", help="look at the mail queue, or run it")
    queue_commands = queue.add_subparsers(dest="queue_command", metavar="QUEUE-COMMAND")
    spool_help = "the spool directory (default: the configuration's spool.directory)"
    listing = queue_commands.add_parser("list", help="list queued messages")
    listing.add_argument("--spool", metavar="DIR", help=spool_help)
    show = queue_commands.add_parser("show", help="show one queued message")
    show.add_argument("queue_id", metavar="ID", help="the queue id")
    show.add_argument("--spool", metavar="DIR", help=spool_help)
    show.add_argument("--body", action="store_true", help="print the message itself too")
    queue_commands.add_parser(
        "run", help="make the running server attempt every queued message now"
    )
    commands.add_parser(
        "reload", help="make the running server read its accounts and TLS certificate again"
    )
    status = commands.add_parser(
        "status", help="the running server's version, processes, listeners and queue counts"
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    commands.add_parser(
        "hash-password", help="read a password from standard input and print its hash"
    )
    add_sharing_commands(commands)
    settings_cli.add_parser(commands)
    discover.add_parser(commands)
    dequeue_control.add_parser(commands)
    return parser


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _not_answering(missing: Sequence[int], err: TextIO) -> None:
    for shard in missing:
        err.write(f"{_PROGRAM}: the process of shard {shard} did not answer\n")


def _queue_run(socket: Path, out: TextIO, err: TextIO) -> int:
    answer = call(socket, QueueRun)
    shards = answer["shards"]
    out.write(f"Queue run started in {_plural(len(shards), 'process', 'processes')}\n")
    _not_answering(answer["missing"], err)
    return 1 if answer["missing"] else 0


def _reload(socket: Path, out: TextIO, err: TextIO) -> int:
    answer = call(socket, Reload)
    for problem in answer["problems"]:
        err.write(f"{_PROGRAM}: not reloaded: {problem}\n")
    _not_answering(answer["missing"], err)
    if answer["problems"] or answer["missing"]:
        return 1
    shards = answer["shards"]
    out.write(f"Reloaded in {_plural(len(shards), 'process', 'processes')}\n")
    return 0


def _status(socket: Path, as_json: bool, out: TextIO, err: TextIO) -> None:
    answer: dict[str, Any] = call(socket, Status)
    if as_json:
        out.write(json.dumps(answer, indent=2, sort_keys=True) + "\n")
        return
    processes = answer["processes"]
    out.write(f"mdtwist {answer['version']}, {_plural(processes, 'process', 'processes')}\n")
    for listener in answer["listeners"]:
        out.write(f"Listening: {listener}\n")
    out.write(f"{'Shard':>5}  {'PID':>8}  {'Active':>8}  {'Bad':>8}\n")
    for entry in answer["shards"]:
        out.write(
            f"{entry['shard']:>5}  {entry['pid']:>8}  {entry['active']:>8}  {entry['bad']:>8}\n"
        )
    for shard in answer["missing"]:
        out.write(f"{shard:>5}  {'-':>8}  {'?':>8}  {'?':>8}  (not answering)\n")
    out.write(f"{'Total':>5}  {'':>8}  {answer['active']:>8}  {answer['bad']:>8}\n")


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
