# -*- test-case-name: tests.spool.test_commands -*-
"""
C{mdtwistctl queue}: look at the queue and act on it.

  - C{queue list [SELECTION] [--json]}: one line per message, the active queue first, then the
    held messages, then the bad queue (with the reason each was parked);
  - C{queue show ID [--body] [--json]}: the envelope, the queue and each recipient's state;
  - C{queue run}: attempt every queued message now;
  - C{queue retry|hold|release|requeue|delete|bounce SELECTION [--yes] [--json]}: act on the
    chosen messages through the running server.

A SELECTION is queue ids and/or C{--sender ADDRESS}, C{--recipient ADDRESS}, C{--domain
DOMAIN} (of a recipient) and C{--queue active|hold|bad}; every condition given must hold. An
action needs ids, a condition or C{--all}. Without ids an action chooses only the messages it
applies to (hold: the active queue; release: held; retry: active; requeue: the bad queue;
bounce: active and held; delete: all).

Listing reads the spool database read-only (safe while the server runs, and works when it is
stopped); every shard of a server of several processes is read. The actions go through the
control socket: the command line chooses the messages, then sends their ids in batches, and
each process acts on the ids of its own shard. Delete and bounce ask first (or take
C{--yes}). A progress bar shows on a terminal when more than
L{PROGRESS_THRESHOLD <mdtwist.console.PROGRESS_THRESHOLD>} messages are concerned.
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from mdtwist.console import CommandError, Locations, confirm, plural, progress, write_json
from mdtwist.control.client import call
from mdtwist.control.commands import QueueRun
from mdtwist.control.queue import QueueAct
from mdtwist.spool.admin import Action, Selection, select
from mdtwist.spool.model import Queue, QueuedMessage, QueueEntry
from mdtwist.spool.store import (
    DATABASE_NAME,
    SpoolReader,
    existing_shards,
    parse_queue_id,
    shard_directory,
    shard_of,
)

#: Queue ids sent to the server in one command.
BATCH = 100

#: Per action: the word for "done" in reports, and the queues it chooses from without ids.
_ACTIONS: dict[Action, tuple[str, tuple[Queue, ...]]] = {
    Action.RETRY: ("retried", (Queue.ACTIVE,)),
    Action.HOLD: ("held", (Queue.ACTIVE,)),
    Action.RELEASE: ("released", (Queue.HOLD,)),
    Action.REQUEUE: ("requeued", (Queue.BAD,)),
    Action.DELETE: ("deleted", (Queue.ACTIVE, Queue.HOLD, Queue.BAD)),
    Action.BOUNCE: ("bounced", (Queue.ACTIVE, Queue.HOLD)),
}

_HELP = {
    Action.RETRY: "attempt messages of the active queue now, whatever their schedule",
    Action.HOLD: "keep messages from being delivered until they are released",
    Action.RELEASE: "let held messages be delivered again, now",
    Action.REQUEUE: "take messages out of the bad queue and attempt them again",
    Action.DELETE: "remove messages without telling their senders",
    Action.BOUNCE: "give up on messages: their senders get a failure notice",
}

_QUEUE_NAMES = {"active": Queue.ACTIVE, "hold": Queue.HOLD, "held": Queue.HOLD, "bad": Queue.BAD}


def add_parser(commands: Any) -> None:
    """
    Add C{queue} and its subcommands to C{mdtwistctl}'s parser.

    @param commands: the top-level subparsers.
    """
    queue = commands.add_parser(
        "queue",
        help="look at the mail queue and act on it",
        description="Look at the mail queue and act on it. The actions go through the running"
        " server; listing reads the spool directly.",
    )
    sub = queue.add_subparsers(dest="queue_command", metavar="QUEUE-COMMAND")
    spool_help = "the spool directory (default: the configuration's spool.directory)"
    listing = sub.add_parser(
        "list",
        help="list queued messages",
        description="List queued messages: the active queue, then held ones, then the bad queue.",
    )
    _add_selection(listing, ids=True)
    listing.add_argument("--spool", metavar="DIR", help=spool_help)
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    show = sub.add_parser(
        "show",
        help="show one queued message",
        description="Show a queued message's envelope and each recipient's state.",
    )
    show.add_argument("queue_id", metavar="ID", help="the queue id")
    show.add_argument("--spool", metavar="DIR", help=spool_help)
    show.add_argument("--body", action="store_true", help="print the message itself too")
    show.add_argument("--json", action="store_true", help="print it as JSON (body excluded)")
    sub.add_parser(
        "run",
        help="attempt every queued message now",
        description="Make the running server attempt every message of the active queue now,"
        " whatever its schedule.",
    )
    for action in _ACTIONS:
        parser = sub.add_parser(
            action.value,
            help=_HELP[action],
            description=_HELP[action].capitalize()
            + ". Choose the messages by id, by --sender, --recipient, --domain or --queue,"
            " or take --all.",
        )
        _add_selection(parser, ids=True)
        parser.add_argument(
            "--all", action="store_true", help="every message the action applies to"
        )
        if action in (Action.DELETE, Action.BOUNCE):
            parser.add_argument("--yes", action="store_true", help="do not ask first")
        parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _add_selection(parser: argparse.ArgumentParser, *, ids: bool) -> None:
    if ids:
        parser.add_argument("ids", nargs="*", metavar="ID", help="queue ids")
    parser.add_argument("--sender", metavar="ADDRESS", help="from this sender (<> for none)")
    parser.add_argument("--recipient", metavar="ADDRESS", help="to this recipient")
    parser.add_argument("--domain", metavar="DOMAIN", help="to a recipient in this domain")
    parser.add_argument("--queue", choices=("active", "hold", "bad"), help="in this queue only")


def run(
    options: argparse.Namespace, locations: Locations, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    """
    Run a C{queue} command.

    @param options: the parsed command line.
    @param locations: where the configuration, spool and socket are.
    @param stdin: where a confirmation is read.
    @param out: where results go.
    @param err: where problems and the progress bar go.
    @return: the exit status.
    @raise CommandError: when the command fails.
    """
    name = options.queue_command
    if name == "list":
        _list(locations.spool(options.spool), _selection(options), options.json, out)
        return 0
    if name == "show":
        _show(locations.spool(options.spool), options.queue_id, options, out)
        return 0
    if name == "run":
        answer = call(locations.socket(), QueueRun)
        shards = answer["shards"]
        out.write(f"Queue run started in {plural(len(shards), 'process', 'processes')}\n")
        _not_answering(answer["missing"], err)
        return 1 if answer["missing"] else 0
    return _act(Action(name), options, locations, stdin, out, err)


def _selection(options: argparse.Namespace, queues: tuple[Queue, ...] = ()) -> Selection:
    sender = options.sender
    if sender is not None and sender.strip() in ("<>", ""):
        sender = ""
    elif sender is not None:
        sender = sender.strip().removeprefix("<").removesuffix(">")
    ids = tuple(options.ids)
    for queue_id in ids:
        if parse_queue_id(queue_id) is None or shard_of(queue_id) is None:
            raise CommandError(f"{queue_id!r} is not a queue id")
    queue = None if options.queue is None else _QUEUE_NAMES[options.queue]
    return Selection(
        ids=tuple(queue_id.upper() for queue_id in ids),
        sender=sender,
        recipient=None
        if options.recipient is None
        else options.recipient.strip().removeprefix("<").removesuffix(">"),
        domain=options.domain,
        queue=queue,
    )


def _read(spool: Path, selection: Selection) -> list[QueueEntry]:
    # The chosen messages of every shard, shard by shard (so in queue id order). Without any
    # shard, the reader of the spool directory says there is no database.
    entries: list[QueueEntry] = []
    for shard in existing_shards(spool) or [0]:
        reader = SpoolReader(shard_directory(spool, shard))
        try:
            entries += reader.read(lambda db: select(db, selection))
        finally:
            reader.close()
    return entries


def _time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _entry_json(entry: QueueEntry) -> dict[str, Any]:
    return {
        "queue_id": entry.queue_id,
        "queue": entry.queue.value,
        "kind": entry.kind.value,
        "arrival": _time(entry.arrival),
        "size": entry.size,
        "sender": entry.sender,
        "recipients": entry.recipients,
        "pending": entry.pending,
        "attempts": entry.attempts,
        "next_attempt": _time(entry.next_attempt),
        "reason": entry.reason,
    }


def _list(spool: Path, selection: Selection, as_json: bool, out: TextIO) -> None:
    if as_json:
        write_json(out, [_entry_json(entry) for entry in _read(spool, selection)])
        return
    groups = [
        (Queue.ACTIVE, "", "in the active queue"),
        (Queue.HOLD, "Held:", "held"),
        (Queue.BAD, "Bad queue:", "in the bad queue"),
    ]
    chosen = None if _everything(selection) else _read(spool, selection)
    for queue, title, where in groups:
        if chosen is None:
            entries = _stream(spool, queue)
        else:
            entries = iter([entry for entry in chosen if entry.queue is queue])
        count = 0
        for entry in entries:
            if not count and title:
                out.write(f"\n{title}\n")
            count += 1
            if queue is Queue.BAD:
                detail = entry.reason or "-"
            else:
                detail = f"{entry.pending}/{entry.recipients} pending"
            out.write(
                f"{entry.queue_id}  {_time(entry.arrival)}  {entry.size:>9}  <{entry.sender}>"
                f"  {detail}\n"
            )
        if queue is Queue.ACTIVE or count:
            out.write(f"{plural(count, 'message')} {where}\n")


def _everything(selection: Selection) -> bool:
    # No message is singled out: the list can stream the queues page by page.
    return (
        not selection.ids
        and selection.sender is None
        and selection.recipient is None
        and selection.domain is None
        and selection.queue is None
    )


def _stream(spool: Path, queue: Queue) -> Iterator[QueueEntry]:
    # One queue of every shard, page by page (SpoolReader.entries), so memory stays flat and
    # the first lines come at once however long the queue is; shards in ascending order.
    for shard in existing_shards(spool) or [0]:
        reader = SpoolReader(shard_directory(spool, shard))
        try:
            yield from reader.entries(queue)
        finally:
            reader.close()


def _show(spool: Path, queue_id: str, options: argparse.Namespace, out: TextIO) -> None:
    message = _load(spool, queue_id, options.body and not options.json)
    if message is None:
        raise CommandError(f"no message {queue_id} in {spool}")
    if options.json:
        write_json(out, _message_json(message))
        return
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


def _message_json(message: QueuedMessage) -> dict[str, Any]:
    envelope = message.envelope
    client = envelope.client
    return {
        "queue_id": message.queue_id,
        "queue": message.queue.value,
        "reason": message.reason,
        "kind": message.kind.value,
        "arrival": _time(envelope.arrival),
        "size": message.size,
        "sender": envelope.sender,
        "client": {
            "address": client.address,
            "helo": client.helo,
            "user": client.user,
            "tls": client.tls,
        },
        "body_type": envelope.body_type.value,
        "smtputf8": envelope.smtputf8,
        "declared_size": envelope.size,
        "ret": envelope.ret,
        "envid": envelope.envid,
        "attempts": message.attempts,
        "next_attempt": _time(message.next_attempt),
        "recipients": [
            {
                "address": recipient.address,
                "state": recipient.state.value,
                "attempts": recipient.attempts,
                "status": recipient.status,
                "diagnostic": recipient.diagnostic,
                "notify": None if recipient.notify is None else sorted(recipient.notify),
                "orcpt": recipient.orcpt,
                "route": None
                if recipient.route is None
                else {"kind": recipient.route.kind.value, "target": recipient.route.target},
            }
            for recipient in envelope.recipients
        ],
    }


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


def _not_answering(missing: Sequence[int], err: TextIO) -> None:
    for shard in missing:
        err.write(f"mdtwistctl: the process of shard {shard} did not answer\n")


def _act(
    action: Action,
    options: argparse.Namespace,
    locations: Locations,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
) -> int:
    done_word, queues = _ACTIONS[action]
    selection = _selection(options)
    if selection.everything and not options.all:
        raise CommandError(
            f"queue {action.value}: say which messages (ids, --sender, --recipient, --domain,"
            " --queue) or --all"
        )
    socket = locations.socket()
    entries = _read(locations.spool(), selection)
    if not selection.ids:
        entries = [entry for entry in entries if entry.queue in queues]
    ids = [entry.queue_id for entry in entries]
    unknown = [queue_id for queue_id in selection.ids if queue_id not in set(ids)]
    if ids and action in (Action.DELETE, Action.BOUNCE):
        question = f"{action.value.capitalize()} {plural(len(ids), 'message')}?"
        confirm(question, yes=options.yes, stdin=stdin, err=err)
    done: list[str] = []
    refused: list[dict[str, str]] = [
        {"queue_id": queue_id, "reason": "no such message"} for queue_id in unknown
    ]
    missing: set[int] = set()
    with progress(len(ids), err, action.value.capitalize()) as bar:
        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            answer = call(socket, QueueAct, {"action": action.value, "ids": batch})
            done += answer["done"]
            refused += answer["refused"]
            missing.update(answer["missing"])
            answered = set(answer["done"]) | {r["queue_id"] for r in answer["refused"]}
            for queue_id in batch:
                if queue_id in answered:
                    continue
                shard = shard_of(queue_id)
                reason = (
                    f"the process of shard {shard} did not answer"
                    if shard in answer["missing"]
                    else "no such message"
                )
                refused.append({"queue_id": queue_id, "reason": reason})
            bar.update(len(batch))
    if options.json:
        write_json(out, {"done": done, "refused": refused, "missing": sorted(missing)})
    else:
        for refusal in refused:
            err.write(f"mdtwistctl: {refusal['queue_id']}: {refusal['reason']}\n")
        if not ids and not refused:
            out.write("No message matches\n")
        else:
            out.write(f"{plural(len(done), 'message')} {done_word}\n")
    return 1 if refused else 0
