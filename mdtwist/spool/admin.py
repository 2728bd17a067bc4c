# -*- test-case-name: tests.spool.test_admin -*-
"""
What an operator does to queued mail (C{mdtwistctl queue ...}): choose messages, and hold,
release, retry, requeue or delete them.

Plain C{sqlite3} on a connection the caller gives: L{select} on a read-only one (the command
line reads the spool while the server runs), L{administer} inside the write transaction of
L{SQLiteSpool.administer <mdtwist.spool.store.SQLiteSpool.administer>} on the server's writer
thread, so an operator's change is one transaction like any other change of the queue.

The states: a message is in the I{active} queue (delivered and retried), I{held} (kept, never
attempted, until released; an attempt that had started before the hold is still recorded) or
in the I{bad} queue (parked with a reason). Bouncing needs the queue runner's notices and is
done by L{mdtwist.control.queue}.
"""

from __future__ import annotations

import enum
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs

from mdtwist.durable import fsync_directory, write_new_file
from mdtwist.envelope import RecipientState
from mdtwist.spool.model import MessageKind, Queue, QueueEntry
from mdtwist.spool.store import BAD_QUEUE_HEADER, DEFAULT_INLINE_LIMIT, format_queue_id
from mdtwist.spool.store import parse_queue_id as _rowid

#: The stored form of a parked message starts with this header line (see
#: L{mdtwist.spool.store.bad_queue_body}); requeueing removes it.
_BAD_QUEUE_PREFIX = BAD_QUEUE_HEADER.encode("ascii") + b":"

_PENDING = RecipientState.PENDING.value
_FAILED = RecipientState.FAILED.value


class Action(enum.Enum):
    """
    What an operator does to the chosen messages.
    """

    #: Keep them from being attempted (active queue only).
    HOLD = "hold"
    #: Let held messages be attempted again, now.
    RELEASE = "release"
    #: Attempt messages of the active queue now, whatever their schedule.
    RETRY = "retry"
    #: Take messages out of the bad queue: their failed recipients are pending again, the
    #: reason header goes, and they are attempted now with a new queue lifetime.
    REQUEUE = "requeue"
    #: Remove them without a notice.
    DELETE = "delete"
    #: Fail every pending recipient, with a notice to the sender (L{mdtwist.control.queue}).
    BOUNCE = "bounce"


@attrs.frozen
class Selection:
    """
    Which messages a command is about; every condition given must hold.

    @ivar ids: these queue ids (any of them); empty: any id.
    @ivar sender: the reverse-path, without regard to case (C{""} the null sender).
    @ivar recipient: a recipient address, without regard to case.
    @ivar domain: the domain of a recipient, without regard to case.
    @ivar queue: the queue they are in.
    """

    ids: tuple[str, ...] = ()
    sender: str | None = None
    recipient: str | None = None
    domain: str | None = None
    queue: Queue | None = None

    @property
    def everything(self) -> bool:
        """
        Whether nothing narrows the selection down.
        """
        return (
            not self.ids
            and self.sender is None
            and self.recipient is None
            and self.domain is None
            and self.queue is None
        )


def _like(text: str) -> str:
    # A LIKE pattern matching the text literally (escape character "\").
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def select(db: sqlite3.Connection, selection: Selection) -> list[QueueEntry]:
    """
    List the messages a selection names.

    @param db: a spool database.
    @param selection: the conditions.
    @return: one entry per message, in queue id order.
    @raise ValueError: when an id is not a queue id.
    """
    where: list[str] = []
    values: list[object] = [_PENDING]
    if selection.ids:
        rowids = []
        for queue_id in selection.ids:
            rowid = _rowid(queue_id)
            if rowid is None:
                raise ValueError(f"{queue_id!r} is not a queue id")
            rowids.append(rowid)
        where.append(f"m.id IN ({', '.join('?' * len(rowids))})")
        values += rowids
    if selection.sender is not None:
        where.append("lower(m.sender) = lower(?)")
        values.append(selection.sender)
    if selection.recipient is not None:
        where.append(
            "EXISTS (SELECT 1 FROM recipient AS x WHERE x.message_id = m.id"
            " AND lower(x.address) = lower(?))"
        )
        values.append(selection.recipient)
    if selection.domain is not None:
        where.append(
            "EXISTS (SELECT 1 FROM recipient AS x WHERE x.message_id = m.id"
            " AND lower(x.address) LIKE ? ESCAPE '\\')"
        )
        values.append("%@" + _like(selection.domain.lower().rstrip(".")))
    if selection.queue is not None:
        where.append("m.queue = ?")
        values.append(selection.queue.value)
    rows = db.execute(
        "SELECT m.id, m.arrival, m.size, m.sender, m.attempts, m.next_attempt, count(r.position),"
        " sum(r.state = ?), m.queue, m.reason, m.kind FROM message AS m"
        " JOIN recipient AS r ON r.message_id = m.id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " GROUP BY m.id ORDER BY m.id",
        values,
    )
    return [
        QueueEntry(
            queue_id=format_queue_id(rowid),
            arrival=arrival,
            size=size,
            sender=sender,
            recipients=recipients,
            pending=pending,
            attempts=attempts,
            next_attempt=next_attempt,
            queue=Queue(queue),
            reason=reason,
            kind=MessageKind(kind),
        )
        for (
            rowid,
            arrival,
            size,
            sender,
            attempts,
            next_attempt,
            recipients,
            pending,
            queue,
            reason,
            kind,
        ) in rows
    ]


@attrs.frozen
class QueueStats:
    """
    The size of each queue and the age of its oldest message.

    @ivar counts: messages per queue (every queue named, zero included).
    @ivar oldest: per queue, the arrival time of its oldest message; absent when it is empty.
    """

    counts: dict[Queue, int]
    oldest: dict[Queue, float]


def queue_stats(db: sqlite3.Connection) -> QueueStats:
    """
    Count the queues.

    @param db: a spool database.
    @return: the statistics.
    """
    counts = dict.fromkeys(Queue, 0)
    oldest: dict[Queue, float] = {}
    for queue, count, first in db.execute(
        "SELECT queue, count(*), min(arrival) FROM message GROUP BY queue"
    ):
        counts[Queue(queue)] = count
        oldest[Queue(queue)] = first
    return QueueStats(counts, oldest)


@attrs.frozen
class Refusal:
    """
    A message an action was not carried out on.

    @ivar queue_id: its queue id.
    @ivar reason: why, for the operator.
    """

    queue_id: str
    reason: str


def administer(
    db: sqlite3.Connection,
    bodies: Path,
    action: Action,
    ids: Sequence[str],
    now: float,
    *,
    inline_limit: int = DEFAULT_INLINE_LIMIT,
) -> tuple[tuple[list[str], list[Refusal]], list[str]]:
    """
    Carry an action out on messages, inside the caller's write transaction.

    @param db: the spool database, in a write transaction.
    @param bodies: the directory of its body files.
    @param action: any action but L{Action.BOUNCE}.
    @param ids: the queue ids.
    @param now: the time: when released, retried and requeued messages are due.
    @param inline_limit: a requeued body larger than this is written to a file.
    @return: the ids it was done to and the refusals, and the body files that no row names any
        more (to delete once the transaction has committed).
    """
    assert action is not Action.BOUNCE
    done: list[str] = []
    refused: list[Refusal] = []
    unused: list[str] = []
    for queue_id in ids:
        rowid = _rowid(queue_id)
        row = None
        if rowid is not None:
            row = db.execute(
                "SELECT queue, body_file FROM message WHERE id = ?", (rowid,)
            ).fetchone()
        if row is None:
            refused.append(Refusal(queue_id, "no such message"))
            continue
        queue, body_file = Queue(row[0]), row[1]
        problem = _refusal(action, queue)
        if problem is None and action is Action.REQUEUE:
            problem = _requeue(db, bodies, rowid, body_file, now, unused, inline_limit)
        elif problem is None:
            _apply(db, action, rowid, now)
            if action is Action.DELETE and body_file:
                unused.append(body_file)
        if problem is None:
            done.append(queue_id)
        else:
            refused.append(Refusal(queue_id, problem))
    return (done, refused), unused


def _refusal(action: Action, queue: Queue) -> str | None:
    # Why an action does not apply to a message of that queue, or None.
    if action is Action.HOLD and queue is not Queue.ACTIVE:
        return "already held" if queue is Queue.HOLD else "in the bad queue"
    if action is Action.RELEASE and queue is not Queue.HOLD:
        return "not held"
    if action is Action.RETRY and queue is not Queue.ACTIVE:
        if queue is Queue.HOLD:
            return "held (release it)"
        return "in the bad queue (requeue it)"
    if action is Action.REQUEUE and queue is not Queue.BAD:
        return "not in the bad queue"
    return None


def _apply(db: sqlite3.Connection, action: Action, rowid: int | None, now: float) -> None:
    if action is Action.HOLD:
        db.execute("UPDATE message SET queue = ? WHERE id = ?", (Queue.HOLD.value, rowid))
    elif action in (Action.RELEASE, Action.RETRY):
        db.execute(
            "UPDATE message SET queue = ?, next_attempt = ? WHERE id = ?",
            (Queue.ACTIVE.value, now, rowid),
        )
    elif action is Action.DELETE:
        db.execute("DELETE FROM message WHERE id = ?", (rowid,))


def _requeue(
    db: sqlite3.Connection,
    bodies: Path,
    rowid: int | None,
    body_file: str | None,
    now: float,
    unused: list[str],
    inline_limit: int,
) -> str | None:
    # Back to the active queue: failed recipients pending again, the reason line removed.
    db.execute(
        "UPDATE recipient SET state = ?, status = '', diagnostic = '' WHERE message_id = ?"
        " AND state = ?",
        (_PENDING, rowid, _FAILED),
    )
    (pending,) = db.execute(
        "SELECT count(*) FROM recipient WHERE message_id = ? AND state = ?", (rowid, _PENDING)
    ).fetchone()
    if pending == 0:
        return "every recipient has its copy already"
    if body_file:
        body = (bodies / body_file).read_bytes()
    else:
        (inline,) = db.execute("SELECT body FROM message WHERE id = ?", (rowid,)).fetchone()
        body = bytes(inline)
    if body.startswith(_BAD_QUEUE_PREFIX):
        body = body[body.find(b"\r\n") + 2 :] if b"\r\n" in body else b""
    new_file = None
    if len(body) > inline_limit:
        new_file = uuid.uuid4().hex
        write_new_file(bodies / new_file, body)
        fsync_directory(bodies)
    if body_file:
        unused.append(body_file)
    db.execute(
        "UPDATE message SET queue = ?, reason = NULL, arrival = ?, next_attempt = ?, body = ?,"
        " body_file = ?, size = ? WHERE id = ?",
        (
            Queue.ACTIVE.value,
            now,
            now,
            None if new_file else body,
            new_file,
            len(body),
            rowid,
        ),
    )
    return None
