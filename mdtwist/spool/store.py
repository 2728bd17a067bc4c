# -*- test-case-name: tests.spool.test_store -*-
"""
The durable spool: one SQLite database, written by one thread, with group commit.

Theory of operation: the database lives in C{<spool>/spool.sqlite3} (WAL mode,
C{synchronous=FULL}); bodies larger than the inline limit live in C{<spool>/bodies/}. Every
database operation runs through the C{run} callable on the single C{spool-io} thread, never on
the reactor thread.

L{SQLiteSpool.enqueue} is called on the reactor thread. It puts the message in a pending batch;
when no write is in flight it hands the whole batch to the writer thread, which writes and
fsyncs the body files of the batch (and their directory), then inserts every message of the
batch in one transaction. Messages that arrive meanwhile form the next batch, written as soon as
the current one returns. Each enqueue Deferred fires with its queue id after the commit that
holds its message has returned, or fails with L{SpoolError} when the batch could not be stored;
then the transaction is rolled back and the body files of the batch are deleted.

Durability: a transaction that holds new messages is fsynced before their enqueue Deferreds
fire (C{synchronous=FULL}); one that holds delivery outcomes only is not fsynced itself
(C{synchronous=NORMAL}): the next fsynced commit or checkpoint of the write-ahead log makes it
durable, and until then a power cut can only undo it, which repeats that delivery attempt.

L{SQLiteSpool.record} stores the outcome of a delivery attempt in one transaction: the new
recipient states, the notices (DSNs) those states call for, the "delay notice sent" marks, and
when asked the move of the message to the bad queue. So a crash can neither lose a notice nor
send it twice: either the recipients are final and their notice is queued, or neither (qmail's
rule: the bounce is in the queue before the recipients are marked done). Bodies of notices and
of parked messages that are too large to be inline are written and fsynced before that
transaction, as for new mail.

Queues: a message is I{active} (delivered and retried by the queue runner), I{held} by the
operator (kept, never attempted until released; L{mdtwist.spool.admin}) or I{bad} (parked for
a person to look at, with a reason, never retried: loops, undeliverable notices). A parked
message keeps its recipients' states, and its stored body starts with an
C{X-Mdtwist-Bad-Queue-Reason:} header line. The queue is a value of the C{queue} column, so
holding needed no new schema version (an older mdtwist does not read a spool holding held
mail: release it before going back).

Opening the database is the crash-recovery path: it creates the schema when it is absent,
migrates a database of an older schema in place (L{mdtwist.spool.schema}), refuses one of a
newer schema, and deletes body files that no row names (written by a batch that never
committed, or left behind by a message removed just before a crash).

Each recipient row keeps the route the receive policy decided for it (L{mdtwist.route.Route});
rows written before routes were stored have none, and the queue runner classifies them.

Queue ids are the row ids (never reused: C{AUTOINCREMENT}) as twelve upper-case hex digits, so they
are short, unique within a spool, and sort in arrival order.

Shards: a server of several processes gives each process a spool of its own, a I{shard}. Shard 0
is the spool directory itself; shard M{k > 0} is its C{shard-<k>} subdirectory, with the same
layout inside. Shard M{k} numbers its rows from M{k << 40} upward (L{SHARD_BITS}), so the first
two hex digits of a queue id name its shard (L{shard_of}) and ids are unique across shards.
Opening a shard makes sure the C{AUTOINCREMENT} sequence starts at its base, in the same
transaction that checks that the database holds no ids of another shard (a shard pointed at the
wrong directory is refused rather than mixed up with another one).
"""

from __future__ import annotations

import builtins
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mdtwist import maillog, metrics
from mdtwist.durable import fsync_directory, write_new_file
from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient, RecipientState
from mdtwist.errors import SpoolError
from mdtwist.interfaces import ISpool
from mdtwist.secret import Secret
from mdtwist.spool.model import (
    MessageKind,
    Notice,
    Queue,
    QueuedMessage,
    QueueEntry,
    RecipientProgress,
    RecipientResult,
    Route,
    RouteKind,
    StoredBody,
)
from mdtwist.spool.schema import SCHEMA_VERSION, immediate, open_database, upgrade

T = TypeVar("T")

#: Runs a function on the spool's writer thread and returns a Deferred with its result.
Run = Callable[..., "Deferred[Any]"]

#: The name of the database file inside the spool directory.
DATABASE_NAME = "spool.sqlite3"

#: The name of the directory of large bodies inside the spool directory.
BODIES_NAME = "bodies"

#: Bodies larger than this many bytes are stored in files, smaller ones inline.
DEFAULT_INLINE_LIMIT = 64 * 1024

#: How many entries one page of a queue listing reads (L{SpoolReader.entries}).
LIST_PAGE = 1000

#: The header line put at the top of a message parked in the bad queue.
BAD_QUEUE_HEADER = "X-Mdtwist-Bad-Queue-Reason"

#: How many low bits of a row id number the messages of one shard; the bits above name the shard.
SHARD_BITS = 40

#: How many spool shards there can be: shards 0 to C{MAX_SHARDS - 1}, one per process.
MAX_SHARDS = 256

#: The name of shard k's directory inside the spool directory is this followed by k (k > 0).
SHARD_PREFIX = "shard-"

# A shard directory's name: k in decimal, 1 to 255, no leading zero.
_SHARD_NAME = re.compile(re.escape(SHARD_PREFIX) + r"([1-9][0-9]{0,2})")

log = Logger()


def format_queue_id(rowid: int) -> str:
    """
    Format a row id as a queue id.

    @param rowid: a message row id.
    @return: its queue id.
    """
    return f"{rowid:012X}"


def parse_queue_id(queue_id: str) -> int | None:
    """
    Turn a queue id back into a row id.

    @param queue_id: a queue id as shown to users (any case).
    @return: the row id, or L{None} when C{queue_id} is not a queue id.
    """
    if not queue_id or len(queue_id) > 16:
        return None
    try:
        return int(queue_id, 16)
    except ValueError:
        return None


def shard_directory(root: Path, shard: int) -> Path:
    """
    Find the directory of a spool shard.

    @param root: the configured spool directory.
    @param shard: the shard number, 0 to C{MAX_SHARDS - 1}.
    @return: C{root} itself for shard 0, else its C{shard-<shard>} subdirectory.
    @raise ValueError: when C{shard} is out of range.
    """
    _check_shard_number(shard)
    return root if shard == 0 else root / f"{SHARD_PREFIX}{shard}"


def shard_of(queue_id: str) -> int | None:
    """
    Find the shard a queue id belongs to.

    @param queue_id: a queue id as shown to users (any case).
    @return: the shard number, or L{None} when C{queue_id} is not a queue id.
    """
    rowid = parse_queue_id(queue_id)
    if rowid is None:
        return None
    shard = rowid >> SHARD_BITS
    return shard if shard < MAX_SHARDS else None


def existing_shards(root: Path) -> list[int]:
    """
    Find the shards of a spool that have a database on disk.

    Only the names L{shard_directory} gives count: other entries of C{root} (C{shard-x},
    C{shard-999}, C{shard-01}) are ignored, as are shard directories without a database.

    @param root: the configured spool directory.
    @return: the shard numbers, ascending; empty when there is no spool at all.
    """
    shards = [0] if (root / DATABASE_NAME).is_file() else []
    try:
        entries = list(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return shards
    for entry in entries:
        match = _SHARD_NAME.fullmatch(entry.name)
        if match is None or int(match.group(1)) >= MAX_SHARDS:
            continue
        if (entry / DATABASE_NAME).is_file():
            shards.append(int(match.group(1)))
    return sorted(shards)


def _check_shard_number(shard: int) -> None:
    if not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"spool shard {shard} is out of range (0 to {MAX_SHARDS - 1})")


class SpoolReader:
    """
    Blocking, read-only access to a spool, for command-line tools.

    It never writes and never runs crash recovery, so it is safe while the server runs.
    """

    def __init__(self, directory: Path) -> None:
        """
        Open the spool database read-only.

        @param directory: the spool directory.
        @raise SpoolError: when there is no spool database there or it cannot be read.
        """
        self._directory = directory
        path = directory / DATABASE_NAME
        if not path.is_file():
            raise SpoolError(f"{path}: no spool database here")
        try:
            self._db = open_database(path, read_only=True)
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as e:
            raise SpoolError(f"{path}: {e}") from e
        if version != SCHEMA_VERSION:
            self._db.close()
            raise SpoolError(
                f"{path}: spool schema version {version}, this mdtwist reads version"
                f" {SCHEMA_VERSION}"
                + ("; start the server once to migrate it" if version < SCHEMA_VERSION else "")
            )

    def list(self) -> list[QueueEntry]:
        """
        List the queue.

        @return: every queued message, oldest first.
        @raise SpoolError: when the database cannot be read.
        """
        return builtins.list(self.entries())

    def entries(
        self, queue: Queue | None = None, *, page: int = LIST_PAGE
    ) -> Iterator[QueueEntry]:
        """
        List the queue as a stream, a page at a time: memory stays flat however long the
        queue is, and the first entries come at once.

        Each page is read in a short read transaction of its own (a long one would keep the
        server from checkpointing its write-ahead log), after the last id of the page before;
        so a message queued during the listing may or may not be in it, and none is listed
        twice.

        @param queue: only the messages of this queue; every message when L{None}.
        @param page: how many entries to read at a time.
        @return: an iterator of the entries in queue-id order (oldest first).
        @raise SpoolError: when the database cannot be read (while iterating).
        """
        after = 0
        while True:
            try:
                entries = _select_page(self._db, after, page, queue)
            except sqlite3.Error as e:
                raise SpoolError(str(e)) from e
            yield from entries
            if len(entries) < page:
                return
            last = parse_queue_id(entries[-1].queue_id)
            assert last is not None
            after = last

    def counts(self) -> dict[Queue, int]:
        """
        Count the messages of each queue, without listing them.

        @return: the number of messages in each queue (every queue present, 0 when empty).
        @raise SpoolError: when the database cannot be read.
        """
        try:
            return _select_counts(self._db)
        except sqlite3.Error as e:
            raise SpoolError(str(e)) from e

    def load(self, queue_id: str, *, with_body: bool = False) -> QueuedMessage | None:
        """
        Read one message.

        @param queue_id: the queue id.
        @param with_body: whether to read the message itself too.
        @return: the message, or L{None} when the spool holds no such message.
        @raise SpoolError: when the database or the body file cannot be read.
        """
        rowid = parse_queue_id(queue_id)
        if rowid is None:
            return None
        try:
            return _select_message(self._db, self._directory / BODIES_NAME, rowid, with_body)
        except (sqlite3.Error, OSError) as e:
            raise SpoolError(str(e)) from e

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """
        Run a query of its own on the database (L{mdtwist.spool.admin.select}).

        @param query: called with the read-only connection.
        @return: its result.
        @raise SpoolError: when the database cannot be read.
        """
        try:
            return query(self._db)
        except sqlite3.Error as e:
            raise SpoolError(str(e)) from e

    def close(self) -> None:
        """
        Close the database.

        The reader cannot be used afterwards.
        """
        self._db.close()


@implementer(ISpool)
class SQLiteSpool:
    """
    The spool: messages and their per-recipient state in SQLite, written with group commit.

    Methods are called on the reactor thread; the database work runs through C{run}.
    """

    def __init__(
        self,
        directory: Path,
        run: Run,
        *,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        factory: type[sqlite3.Connection] = sqlite3.Connection,
        read: Run | None = None,
        shard: int = 0,
    ) -> None:
        """
        Make a spool; nothing is opened until the first call.

        @param directory: the spool directory (of the shard: see L{shard_directory}); created
            when absent.
        @param run: calls a function on the single C{spool-io} thread and returns a Deferred
            of its result (L{mdtwist.threadpool.ThreadPoolService.run}).
        @param read: calls a function on another thread pool, for L{load} and L{due}: each
            of its threads reads through a read-only connection of its own, so reads never
            wait behind writes (WAL readers see every committed transaction). L{None}: they
            run on the writer thread too.
        @param inline_limit: bodies up to this many bytes are stored in the database, larger
            ones in files.
        @param factory: the SQLite connection class.
        @param shard: the spool shard this is: its queue ids start at C{shard << SHARD_BITS},
            and a database holding ids of another shard is refused when opened.
        @raise ValueError: when C{shard} is out of range.
        """
        _check_shard_number(shard)
        self._shard = shard
        self._directory = directory
        self._bodies = directory / BODIES_NAME
        self._run = run
        self._inline_limit = inline_limit
        self._factory = factory
        # Writer-thread state.
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._full_sync = True  # the connection's synchronous setting: FULL, else NORMAL
        # Reactor-thread state.
        self._batch: list[tuple[Envelope, bytes, Deferred[str]]] = []
        self._records: list[tuple[_Update, tuple[Notice, ...], Deferred[_RecordDone]]] = []
        self._writing = False
        self._loads: list[tuple[int | None, Deferred[QueuedMessage | None]]] = []
        self._loading = False
        self._read = read
        self._readers = threading.local()
        self._reader_connections: list[sqlite3.Connection] = []
        # Guards the list above only: a reader never waits for the writer's lock (held for a
        # whole write batch, fsync included).
        self._readers_lock = threading.Lock()
        self._observers: list[Callable[[Sequence[str]], None]] = []

    # Reactor side.

    @property
    def inline_limit(self) -> int:
        """
        Bodies up to this many bytes are stored in the database, larger ones in files.
        """
        return self._inline_limit

    def open(self) -> Deferred[None]:
        """
        Open the database now, creating the schema and removing orphaned body files.

        Every other method opens the database on first use too; calling this at start-up runs
        crash recovery before the first message arrives.

        @return: a Deferred that fires when the spool is open, or fails with L{SpoolError}.
        """
        d: Deferred[None] = self._run(self._guarded, _nothing)
        return d

    def close(self) -> Deferred[None]:
        """
        Close the database. A later call of another method opens it again.

        @return: a Deferred that fires when it is closed.
        """
        d: Deferred[None] = self._run(self._close)
        return d

    def enqueue(self, envelope: Envelope, body: bytes) -> Deferred[str]:
        """
        Store a message durably, in the next group commit.

        @param envelope: the envelope; its arrival time is when the first attempt is due.
        @param body: the message.
        @return: a Deferred firing with the queue id once the transaction holding the message
            has committed, or failing with L{SpoolError}; then nothing of it is kept.
        """
        d: Deferred[str] = Deferred()
        self._batch.append((envelope, body, d))
        if not self._writing:
            self._write_next_batch()
        return d

    def subscribe(self, observer: Callable[[Sequence[str]], None]) -> Callable[[], None]:
        """
        Be told about newly committed messages (the queue runner wakes up on this).

        @param observer: called on the reactor thread with the queue ids of each committed
            batch, after their enqueue Deferreds have fired.
        @return: a function that ends the subscription.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def due(self, now: float, limit: int) -> Deferred[list[str]]:
        """
        Find the messages whose next attempt is due.

        @param now: the current time, seconds since the epoch.
        @param limit: the most queue ids to return.
        @return: a Deferred firing with the ids of messages that have pending recipients and
            whose next attempt is due at C{now}, the most overdue first.
        """
        return self._query(_select_due, now, limit)

    def pending(self, after: str | None, limit: int) -> Deferred[list[str]]:
        """
        Walk the active messages that have pending recipients, whatever their schedule, in
        queue-id order: a flush (C{mdtwistctl queue run}) asks page after page and sees each
        message once, however long the queue.

        @param after: the last queue id of the page before, or L{None} for the first page.
        @param limit: the most queue ids to return.
        @return: a Deferred firing with the ids after C{after}.
        """
        return self._query(_select_pending, _rowid_after(after), limit)

    def _query(self, query: Callable[..., T], *args: Any) -> Deferred[T]:
        # A read of the queue runner: on a reading thread when there are some (it never waits
        # behind a write batch's fsync, and sees every transaction committed before it
        # starts), else on the writer thread.
        d: Deferred[T]
        if self._read is None:
            d = self._run(self._guarded, query, *args)
        else:
            d = self._read(self._reading, query, *args)
        return d

    def load(self, queue_id: str) -> Deferred[QueuedMessage | None]:
        """
        Read one message with its body.

        Loads are batched like writes: while one read runs, the loads asked for meanwhile
        wait and are then read together, in one call on a reading thread.

        @param queue_id: the queue id.
        @return: a Deferred firing with the message and its body, or L{None} when the spool
            holds no such message; it fails with L{SpoolError} when it cannot be read.
        """
        d: Deferred[QueuedMessage | None] = Deferred()
        self._loads.append((parse_queue_id(queue_id), d))
        if not self._loading:
            self._read_next_loads()
        return d

    def record(
        self,
        queue_id: str,
        results: Iterable[RecipientResult],
        next_attempt: float,
        *,
        now: float | None = None,
        notices: Sequence[Notice] = (),
        delay_notified: Iterable[int] = (),
        park: str | None = None,
    ) -> Deferred[bool]:
        """
        Record the outcome of a delivery attempt, in one transaction.

        Each result updates its recipient and counts one attempt for it; the message counts one
        attempt when any result was given. The notices are queued as new messages, and the
        recipients in C{delay_notified} are marked as told of the delay, in the same
        transaction: all of it is stored, or none. Then, when C{park} is given, the message
        moves to the bad queue with that reason; otherwise, when no recipient is left pending,
        it is removed (its body file after the commit), else its next attempt is set.

        Spool observers are told of the queued notices after the commit.

        @param queue_id: the queue id.
        @param results: results for pending recipients.
        @param next_attempt: when to try the recipients that are still pending.
        @param now: the time of the attempt, kept as each result's last attempt; not kept when
            L{None}.
        @param notices: messages to queue with the outcome (the DSNs it calls for).
        @param delay_notified: positions of recipients whose sender has now been told that
            delivery is delayed.
        @param park: the reason to move the message to the bad queue, or L{None}.
        @return: a Deferred firing with whether the message left the spool; it fails with
            L{SpoolError} when the message or a pending recipient is unknown, the message is
            not in the active queue, or the update could not be stored (then nothing changed).
        """
        update = _Update(
            queue_id=queue_id,
            rowid=parse_queue_id(queue_id),
            results=tuple(results),
            next_attempt=next_attempt,
            now=now,
            delay_notified=tuple(delay_notified),
            park=park,
            parked=None,
        )
        d: Deferred[_RecordDone] = Deferred()
        self._records.append((update, tuple(notices), d))
        if not self._writing:
            self._write_next_batch()

        def committed(outcome: tuple[bool, builtins.list[str]]) -> bool:
            removed, ids = outcome
            if ids:
                maillog.notices_queued(queue_id=queue_id, ids=ids)
                self._tell_observers(ids)
            return removed

        return d.addCallback(committed)

    def park(self, queue_id: str, reason: str) -> Deferred[bool]:
        """
        Move a message to the bad queue.

        @param queue_id: the queue id.
        @param reason: why, one line for people.
        @return: a Deferred firing with C{False} once it is stored; it fails with L{SpoolError}
            as L{record} does.
        """
        return self.record(queue_id, (), 0.0, park=reason)

    def held(self) -> Deferred[builtins.list[tuple[str, int, str]]]:
        """
        Find the recipients held for gateway domains (route C{GATEWAY_HOLD}, still pending)
        in the active queue.

        @return: a Deferred firing with C{(queue_id, position, gateway domain)} for each,
            oldest message first.
        """
        d: Deferred[builtins.list[tuple[str, int, str]]] = self._run(self._guarded, _select_held)
        return d

    def count(self) -> Deferred[int]:
        """
        Count the queued messages.

        @return: a Deferred firing with the number of queued messages.
        """
        d: Deferred[int] = self._run(self._guarded, _select_count)
        return d

    def list(self) -> Deferred[builtins.list[QueueEntry]]:
        """
        List the queue.

        @return: a Deferred firing with every queued message, oldest first.
        """
        d: Deferred[builtins.list[QueueEntry]] = self._run(self._guarded, _select_entries)
        return d

    def inspect(self, query: Callable[[sqlite3.Connection], T]) -> Deferred[T]:
        """
        Read the database on the writer thread (the queue statistics of the metrics).

        @param query: called with the connection; it must not write.
        @return: a Deferred firing with its result, or failing with L{SpoolError}.
        """
        d: Deferred[T] = self._run(self._guarded, query)
        return d

    def administer(
        self, work: Callable[[sqlite3.Connection, Path], tuple[T, builtins.list[str]]]
    ) -> Deferred[T]:
        """
        Make an operator's change (L{mdtwist.spool.admin}) in one write transaction on the
        writer thread.

        @param work: called with the connection and the directory of body files; returns its
            result and the names of body files to delete once the transaction has committed.
        @return: a Deferred firing with the result, or failing with L{SpoolError} (then
            nothing changed).
        """
        d: Deferred[T] = self._run(self._guarded, self._administer, work)
        return d

    def _administer(
        self,
        db: sqlite3.Connection,
        work: Callable[[sqlite3.Connection, Path], tuple[T, builtins.list[str]]],
    ) -> T:
        with immediate(db):
            result, unused = work(db, self._bodies)
        self._discard([self._bodies / name for name in unused])
        return result

    def page(
        self, after: str | None, limit: int, queue: Queue | None = None
    ) -> Deferred[builtins.list[QueueEntry]]:
        """
        List one page of the queue: a long queue is listed page by page, each a short read.

        @param after: the last queue id of the page before, or L{None} for the first page.
        @param limit: the most entries to return; fewer means this was the last page.
        @param queue: only the messages of this queue; every message when L{None}.
        @return: a Deferred firing with the entries after C{after}, in queue-id order.
        """
        d: Deferred[builtins.list[QueueEntry]] = self._run(
            self._guarded, _select_page, _rowid_after(after), limit, queue
        )
        return d

    def counts(self) -> Deferred[dict[Queue, int]]:
        """
        Count the messages of each queue, without listing them.

        @return: a Deferred firing with the number of messages in each queue (every queue
            present, 0 when empty).
        """
        d: Deferred[dict[Queue, int]] = self._run(self._guarded, _select_counts)
        return d

    def _write_next_batch(self) -> None:
        # One writer cycle: every message and every delivery outcome that arrived since the
        # last one, in one transaction (group commit for both).
        batch, self._batch = self._batch, []
        records, self._records = self._records, []
        self._writing = True
        items = [(envelope, body) for envelope, body, _ in batch]
        requests = [(update, notices) for update, notices, _ in records]
        metrics.commit_batch(len(items) + len(requests))
        written: Deferred[tuple[builtins.list[str], builtins.list[_RecordDone | SpoolError]]]
        written = self._run(self._write_batch, items, requests)

        def committed(
            outcome: tuple[builtins.list[str], builtins.list[_RecordDone | SpoolError]],
        ) -> None:
            ids, done = outcome
            for (_, _, d), queue_id in zip(batch, ids, strict=True):
                d.callback(queue_id)
            for (_, _, waiting), result in zip(records, done, strict=True):
                if isinstance(result, SpoolError):
                    waiting.errback(result)
                else:
                    waiting.callback(result)
            self._batch_done()
            if ids:
                self._tell_observers(ids)

        def failed(reason: Failure) -> None:
            error = reason.value if reason.check(SpoolError) else SpoolError(str(reason.value))
            log.error(
                "Spool write of {count} messages and {records} outcomes failed: {error}",
                count=len(batch),
                records=len(records),
                error=error,
            )
            for _, _, d in batch:
                d.errback(error)
            for _, _, waiting in records:
                waiting.errback(error)
            self._batch_done()

        written.addCallbacks(committed, failed)

    def _read_next_loads(self) -> None:
        loads, self._loads = self._loads, []
        self._loading = True
        rowids = [rowid for rowid, _ in loads]
        read: Deferred[builtins.list[QueuedMessage | SpoolError | None]]
        if self._read is None:
            read = self._run(self._guarded, _select_messages, self._bodies, rowids)
        else:
            read = self._read(self._read_messages, rowids)

        def loaded(messages: builtins.list[QueuedMessage | SpoolError | None]) -> None:
            self._loads_done()
            for (_, waiting), message in zip(loads, messages, strict=True):
                if isinstance(message, SpoolError):
                    waiting.errback(message)
                else:
                    waiting.callback(message)

        def failed(reason: Failure) -> None:
            self._loads_done()
            for _, waiting in loads:
                waiting.errback(reason)

        read.addCallbacks(loaded, failed)

    def _loads_done(self) -> None:
        self._loading = False
        if self._loads:
            self._read_next_loads()

    def _tell_observers(self, ids: builtins.list[str]) -> None:
        for observer in list(self._observers):
            try:
                observer(ids)
            except Exception:
                log.failure("Spool commit observer failed")

    def _batch_done(self) -> None:
        self._writing = False
        if self._batch or self._records:
            self._write_next_batch()

    # Writer-thread side.

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open_and_recover()
        return self._db

    def _open_and_recover(self) -> sqlite3.Connection:
        # Queued mail is private: the spool directory is 0700 and the database is created
        # 0600 before SQLite opens it (its -wal and -shm files take the same mode).
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._directory, 0o700)
        if not self._bodies.is_dir():
            self._bodies.mkdir(mode=0o700)
            fsync_directory(self._directory)
        path = self._directory / DATABASE_NAME
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        db = open_database(path, factory=self._factory)
        try:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION or version < 0:
                raise SpoolError(
                    f"spool schema version {version} is not supported (this mdtwist knows"
                    f" versions up to {SCHEMA_VERSION}; was the spool written by a newer one?)"
                )
            if 0 < version < SCHEMA_VERSION:
                log.info(
                    "Migrating the spool schema from version {version} to {to}",
                    version=version,
                    to=SCHEMA_VERSION,
                )
            upgrade(db, version)
            _claim_shard(db, path, self._shard)
            named = {
                name
                for (name,) in db.execute(
                    "SELECT body_file FROM message WHERE body_file IS NOT NULL"
                )
            }
        except BaseException:
            db.close()
            raise
        for entry in self._bodies.iterdir():
            if entry.name not in named:
                log.info("Removing orphaned spool body file {name}", name=entry.name)
                entry.unlink()
        return db

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
                self._full_sync = True
            with self._readers_lock:
                readers, self._reader_connections = self._reader_connections, []
        for reader in readers:
            reader.close()

    def _guarded(self, f: Callable[..., T], *args: Any) -> T:
        # Call f(connection, *args) with the lock held; storage errors become SpoolError.
        with self._lock:
            try:
                return f(self._connection(), *args)
            except (sqlite3.Error, OSError) as e:
                raise SpoolError(str(e)) from e

    def _sync_for(self, db: sqlite3.Connection, durable: bool) -> None:
        # A transaction with new messages is fsynced before it returns (their 250 waits for
        # it); one with delivery outcomes only is not: in WAL mode the next fsynced commit (or
        # checkpoint) makes it durable along with everything before it. Losing such an outcome
        # in a power cut only repeats the attempt: a Maildir copy is found by its name and not
        # written twice, a notice is lost together with the state that called for it.
        if durable != self._full_sync:
            db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._full_sync = durable

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    log.failure("Spool rollback failed")
            raise
        return result

    def _store_body(self, body: bytes, files: builtins.list[Path]) -> str | None:
        # Write a large body to a new file (fsynced; the caller fsyncs the directory) and
        # return its name; None for a body that goes inline.
        if len(body) <= self._inline_limit:
            return None
        path = self._bodies / uuid.uuid4().hex
        files.append(path)
        write_new_file(path, body)
        return path.name

    @staticmethod
    def _discard(files: builtins.list[Path]) -> None:
        for path in files:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                log.failure("Could not remove spool body file {name}", name=path.name)

    def _write_batch(
        self,
        items: builtins.list[tuple[Envelope, bytes]],
        requests: builtins.list[tuple[_Update, tuple[Notice, ...]]],
    ) -> tuple[builtins.list[str], builtins.list[_RecordDone | SpoolError]]:
        # Insert the new messages and apply the delivery outcomes in ONE transaction. Each
        # outcome runs in a savepoint of its own, so a bad one (an unknown message) fails alone;
        # a failing commit fails them all and nothing is kept.
        with self._lock:
            files: builtins.list[Path] = []
            try:
                db = self._connection()
                names = [self._store_body(body, files) for _, body in items]
                prepared = [
                    self._prepare_record(db, update, notices) for update, notices in requests
                ]
                for entry in prepared:
                    if not isinstance(entry, SpoolError):
                        files.extend(entry[2])
                if files:
                    fsync_directory(self._bodies)

                def work(db: sqlite3.Connection) -> tuple[list[str], list[_Outcome | SpoolError]]:
                    ids = [
                        _insert_message(db, envelope, body, name)
                        for (envelope, body), name in zip(items, names, strict=True)
                    ]
                    outcomes = [_apply_record(db, entry) for entry in prepared]
                    _check_room(db, self._directory / DATABASE_NAME, self._shard)
                    return ids, outcomes

                self._sync_for(db, durable=bool(items))
                ids, outcomes = self._transaction(work)
            except (sqlite3.Error, OSError, SpoolError) as e:
                self._discard(files)
                if isinstance(e, SpoolError):
                    raise
                raise SpoolError(str(e)) from e
        done: builtins.list[_RecordDone | SpoolError] = []
        for entry, outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, SpoolError):
                # Its savepoint was rolled back: the files it wrote belong to nobody.
                if not isinstance(entry, SpoolError):
                    self._discard(entry[2])
                done.append(outcome)
                continue
            if outcome.old_body_file:
                self._discard([self._bodies / outcome.old_body_file])
            done.append((outcome.removed, outcome.ids))
        return ids, done

    def _prepare_record(
        self, db: sqlite3.Connection, update: _Update, notices: tuple[Notice, ...]
    ) -> _Prepared | SpoolError:
        # Write the bodies one outcome needs (notices, a parked copy) before the transaction.
        files: builtins.list[Path] = []
        try:
            notice_files = [self._store_body(notice.body, files) for notice in notices]
            if update.park is not None:
                body = _read_body(db, self._bodies, update.queue_id, update.rowid)
                parked_body = bad_queue_body(body, update.park)
                update = attrs.evolve(
                    update, parked=(parked_body, self._store_body(parked_body, files))
                )
        except (sqlite3.Error, OSError, SpoolError) as e:
            self._discard(files)
            return e if isinstance(e, SpoolError) else SpoolError(str(e))
        return (update, (notices, notice_files), files)

    def _read_messages(
        self, rowids: builtins.list[int | None]
    ) -> builtins.list[QueuedMessage | SpoolError | None]:
        return self._reading(_select_messages, self._bodies, rowids)

    def _reading(self, f: Callable[..., T], *args: Any) -> T:
        # On a reading thread: f(connection, *args) with the thread's own read-only connection.
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        with self._readers_lock:
            if db is not None and db not in self._reader_connections:
                db = None  # closed with the spool since this thread last read
        try:
            if db is None:
                db = open_database(self._directory / DATABASE_NAME, read_only=True)
                self._readers.db = db
                with self._readers_lock:
                    self._reader_connections.append(db)
            return f(db, *args)
        except (sqlite3.Error, OSError) as e:
            raise SpoolError(str(e)) from e


#: A finished record: whether the message left the spool, and the ids of notices queued.
_RecordDone = tuple[bool, list[str]]

#: An outcome ready for the writer: the update, its notices with their body files, and every
#: body file written for it (to delete if it fails).
_Prepared = tuple["_Update", tuple[tuple[Notice, ...], list[str | None]], list[Path]]


def _apply_record(db: sqlite3.Connection, entry: _Prepared | SpoolError) -> _Outcome | SpoolError:
    # Apply one outcome inside a savepoint of the open transaction.
    if isinstance(entry, SpoolError):
        return entry
    update, (notices, notice_files), _ = entry
    db.execute("SAVEPOINT record")
    try:
        outcome = _update_message(db, update, notices, notice_files)
    except (sqlite3.Error, SpoolError) as e:
        db.execute("ROLLBACK TO record")
        db.execute("RELEASE record")
        return e if isinstance(e, SpoolError) else SpoolError(str(e))
    db.execute("RELEASE record")
    return outcome


def bad_queue_body(body: bytes, reason: str) -> bytes:
    """
    The stored form of a message parked in the bad queue: its reason as the first header line.

    @param body: the message, CRLF line ends.
    @param reason: why it is parked; made one line of printable ASCII.
    @return: the message with an C{X-Mdtwist-Bad-Queue-Reason:} line in front.
    """
    return f"{BAD_QUEUE_HEADER}: {clean_reason(reason)}\r\n".encode("ascii") + body


def clean_reason(reason: str) -> str:
    """
    Make a reason fit for a header line and a log line.

    @param reason: any text.
    @return: the text on one line, printable ASCII only (others become C{?}), at most 900
        characters.
    """
    text = " ".join(reason.split())
    return re.sub(r"[^\x20-\x7e]", "?", text)[:900] or "unknown"


def _claim_shard(db: sqlite3.Connection, path: Path, shard: int) -> None:
    # In one write transaction: refuse a database holding ids of another shard, then make
    # AUTOINCREMENT continue from the shard's base at least. Shard 0 never writes here.
    base = shard << SHARD_BITS
    with immediate(db):
        (highest,) = db.execute("SELECT max(id) FROM message").fetchone()
        sequence = _sequence(db)
        for value in (highest or 0, sequence):
            if value and value >> SHARD_BITS != shard:
                raise SpoolError(
                    f"{path}: holds queue ids of spool shard {value >> SHARD_BITS}, not of"
                    f" shard {shard}; is this the right spool directory?"
                )
        if sequence < base:
            cursor = db.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'message'", (base,)
            )
            if cursor.rowcount == 0:
                db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES ('message', ?)", (base,)
                )


def _check_room(db: sqlite3.Connection, path: Path, shard: int) -> None:
    # After inserts, in their transaction: the ids must not have run into the next shard's.
    if _sequence(db) >> SHARD_BITS != shard:
        raise SpoolError(f"{path}: spool shard {shard} has used up its queue ids")


def _sequence(db: sqlite3.Connection) -> int:
    # The last row id AUTOINCREMENT handed out for messages (0: none yet).
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'message'").fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def _nothing(db: sqlite3.Connection) -> None:
    pass


def _read_body(db: sqlite3.Connection, bodies: Path, queue_id: str, rowid: int | None) -> bytes:
    row = None
    if rowid is not None:
        row = db.execute("SELECT body, body_file FROM message WHERE id = ?", (rowid,)).fetchone()
    if row is None:
        raise SpoolError(f"no message {queue_id} in the spool")
    inline, body_file = row
    return (bodies / body_file).read_bytes() if body_file else bytes(inline)


def _insert_message(
    db: sqlite3.Connection,
    envelope: Envelope,
    body: bytes,
    body_file: str | None,
    kind: MessageKind = MessageKind.MESSAGE,
) -> str:
    client = envelope.client
    cursor = db.execute(
        "INSERT INTO message (sender, arrival, body_type, smtputf8, ret, envid, declared_size,"
        " size, client_address, client_helo, client_user, client_tls, client_password,"
        " next_attempt, body, body_file, kind)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            envelope.sender,
            envelope.arrival,
            envelope.body_type.value,
            int(envelope.smtputf8),
            envelope.ret,
            envelope.envid,
            envelope.size,
            len(body),
            client.address,
            client.helo,
            client.user,
            client.tls,
            None if client.password is None else client.password.reveal(),
            envelope.arrival,
            None if body_file else body,
            body_file,
            kind.value,
        ),
    )
    rowid = cursor.lastrowid
    assert rowid is not None
    db.executemany(
        "INSERT INTO recipient (message_id, position, address, notify, orcpt, state, attempts,"
        " status, diagnostic, route_kind, route_target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                rowid,
                position,
                r.address,
                None if r.notify is None else ",".join(sorted(r.notify)),
                r.orcpt,
                r.state.value,
                r.attempts,
                r.status,
                r.diagnostic,
                None if r.route is None else r.route.kind.value,
                None if r.route is None else r.route.target,
            )
            for position, r in enumerate(envelope.recipients)
        ],
    )
    return format_queue_id(rowid)


@attrs.frozen
class _Update:
    # The arguments of one record, for the writer thread.
    queue_id: str
    rowid: int | None
    results: tuple[RecipientResult, ...]
    next_attempt: float
    now: float | None
    delay_notified: tuple[int, ...]
    park: str | None
    parked: tuple[bytes, str | None] | None


@attrs.frozen
class _Outcome:
    # What a record did: whether the message left the spool, the body file to delete after the
    # commit, and the ids of the notices queued.
    removed: bool
    old_body_file: str | None
    ids: list[str]


def _update_message(
    db: sqlite3.Connection,
    update: _Update,
    notices: tuple[Notice, ...],
    notice_files: list[str | None],
) -> _Outcome:
    queue_id, rowid = update.queue_id, update.rowid
    row = None
    if rowid is not None:
        row = db.execute("SELECT body_file, queue FROM message WHERE id = ?", (rowid,)).fetchone()
    if row is None:
        raise SpoolError(f"no message {queue_id} in the spool")
    body_file, queue = row
    if queue == Queue.BAD.value:
        # A held message may still get the outcome of an attempt that started before the hold.
        raise SpoolError(f"message {queue_id} is in the {queue} queue")
    for result in update.results:
        cursor = db.execute(
            "UPDATE recipient SET state = ?, status = ?, diagnostic = ?, attempts = attempts + 1,"
            " remote_mta = ?, last_attempt = coalesce(?, last_attempt)"
            " WHERE message_id = ? AND position = ? AND state = ?",
            (
                result.state.value,
                result.status,
                result.diagnostic,
                result.remote_mta,
                update.now,
                rowid,
                result.position,
                RecipientState.PENDING.value,
            ),
        )
        if cursor.rowcount != 1:
            raise SpoolError(f"recipient {result.position} of {queue_id} is not pending")
    for position in update.delay_notified:
        cursor = db.execute(
            "UPDATE recipient SET delay_notified = 1 WHERE message_id = ? AND position = ?",
            (rowid, position),
        )
        if cursor.rowcount != 1:
            raise SpoolError(f"no recipient {position} in {queue_id}")
    ids = [
        _insert_message(db, notice.envelope, notice.body, name, notice.kind)
        for notice, name in zip(notices, notice_files, strict=True)
    ]
    if update.park is not None:
        assert update.parked is not None
        parked_body, parked_file = update.parked
        db.execute(
            "UPDATE message SET queue = ?, reason = ?, body = ?, body_file = ?, size = ?,"
            " client_password = NULL, attempts = attempts + ? WHERE id = ?",
            (
                Queue.BAD.value,
                clean_reason(update.park),
                None if parked_file else parked_body,
                parked_file,
                len(parked_body),
                1 if update.results else 0,
                rowid,
            ),
        )
        return _Outcome(False, body_file, ids)
    (pending,) = db.execute(
        "SELECT count(*) FROM recipient WHERE message_id = ? AND state = ?",
        (rowid, RecipientState.PENDING.value),
    ).fetchone()
    if pending == 0:
        db.execute("DELETE FROM message WHERE id = ?", (rowid,))
        return _Outcome(True, body_file, ids)
    db.execute(
        "UPDATE message SET next_attempt = ?, attempts = attempts + ? WHERE id = ?",
        (update.next_attempt, 1 if update.results else 0, rowid),
    )
    return _Outcome(False, None, ids)


def _select_due(db: sqlite3.Connection, now: float, limit: int) -> list[str]:
    rows = db.execute(
        "SELECT id FROM message WHERE queue = ? AND next_attempt <= ? AND EXISTS (SELECT 1"
        " FROM recipient WHERE message_id = message.id AND state = ?)"
        " ORDER BY next_attempt, id LIMIT ?",
        (Queue.ACTIVE.value, now, RecipientState.PENDING.value, limit),
    )
    return [format_queue_id(rowid) for (rowid,) in rows]


def _select_held(db: sqlite3.Connection) -> list[tuple[str, int, str]]:
    rows = db.execute(
        "SELECT r.message_id, r.position, r.route_target FROM recipient AS r"
        " JOIN message AS m ON m.id = r.message_id"
        " WHERE m.queue = ? AND r.state = ? AND r.route_kind = ?"
        " ORDER BY r.message_id, r.position",
        (Queue.ACTIVE.value, RecipientState.PENDING.value, RouteKind.GATEWAY_HOLD.value),
    )
    return [(format_queue_id(rowid), position, target) for rowid, position, target in rows]


def _select_count(db: sqlite3.Connection) -> int:
    (count,) = db.execute("SELECT count(*) FROM message").fetchone()
    return int(count)


def _select_entries(db: sqlite3.Connection) -> list[QueueEntry]:
    rows = db.execute(
        "SELECT m.id, m.arrival, m.size, m.sender, m.attempts, m.next_attempt, count(r.position),"
        " sum(r.state = ?), m.queue, m.reason, m.kind FROM message AS m"
        " JOIN recipient AS r ON r.message_id = m.id GROUP BY m.id ORDER BY m.id",
        (RecipientState.PENDING.value,),
    )
    return _entries(rows)


def _rowid_after(after: str | None) -> int:
    # The row id a page starts after: 0 for the first page.
    rowid = 0 if after is None else parse_queue_id(after)
    if rowid is None:
        raise ValueError(f"not a queue id: {after!r}")
    return rowid


def _select_pending(db: sqlite3.Connection, after: int, limit: int) -> list[str]:
    rows = db.execute(
        "SELECT id FROM message WHERE id > ? AND queue = ? AND EXISTS (SELECT 1"
        " FROM recipient WHERE message_id = message.id AND state = ?) ORDER BY id LIMIT ?",
        (after, Queue.ACTIVE.value, RecipientState.PENDING.value, limit),
    )
    return [format_queue_id(rowid) for (rowid,) in rows]


def _select_page(
    db: sqlite3.Connection, after: int, limit: int, queue: Queue | None
) -> list[QueueEntry]:
    # One page of a listing: a range of the primary key, the recipients counted per message
    # through their own primary key (no sort, no grouping of the whole table).
    where = "" if queue is None else " AND m.queue = ?"
    parameters: tuple[object, ...] = (RecipientState.PENDING.value, after)
    if queue is not None:
        parameters += (queue.value,)
    rows = db.execute(
        "SELECT m.id, m.arrival, m.size, m.sender, m.attempts, m.next_attempt,"
        " (SELECT count(*) FROM recipient WHERE message_id = m.id),"
        " (SELECT count(*) FROM recipient WHERE message_id = m.id AND state = ?),"
        f" m.queue, m.reason, m.kind FROM message AS m WHERE m.id > ?{where}"
        " ORDER BY m.id LIMIT ?",
        (*parameters, limit),
    )
    return _entries(rows)


def _select_counts(db: sqlite3.Connection) -> dict[Queue, int]:
    counts = dict.fromkeys(Queue, 0)
    for queue, count in db.execute("SELECT queue, count(*) FROM message GROUP BY queue"):
        counts[Queue(queue)] = int(count)
    return counts


# The enums by their stored values: a dict lookup per row instead of an enum call.
_QUEUES = {queue.value: queue for queue in Queue}
_KINDS = {kind.value: kind for kind in MessageKind}


def _entries(rows: Iterable[tuple[Any, ...]]) -> list[QueueEntry]:
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
            queue=_QUEUES[queue],
            reason=reason,
            kind=_KINDS[kind],
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


def _select_messages(
    db: sqlite3.Connection, bodies: Path, rowids: list[int | None]
) -> list[QueuedMessage | SpoolError | None]:
    # Several messages with their bodies in one read transaction; a body that cannot be read
    # fails its own message only.
    db.execute("BEGIN")
    try:
        messages: list[QueuedMessage | SpoolError | None] = []
        for rowid in rowids:
            try:
                messages.append(_select_message(db, bodies, rowid, True))
            except OSError as e:
                messages.append(SpoolError(str(e)))
        return messages
    finally:
        db.execute("COMMIT")


def _select_message(
    db: sqlite3.Connection, bodies: Path, rowid: int | None, with_body: bool
) -> QueuedMessage | None:
    if rowid is None:
        return None
    row = db.execute(
        "SELECT sender, arrival, body_type, smtputf8, ret, envid, declared_size, size,"
        " client_address, client_helo, client_user, client_tls, client_password, attempts,"
        " next_attempt, body, body_file, kind, queue, reason FROM message WHERE id = ?",
        (rowid,),
    ).fetchone()
    if row is None:
        return None
    (
        sender,
        arrival,
        body_type,
        smtputf8,
        ret,
        envid,
        declared_size,
        size,
        client_address,
        client_helo,
        client_user,
        client_tls,
        client_password,
        attempts,
        next_attempt,
        inline_body,
        body_file,
        kind,
        queue,
        reason,
    ) = row
    recipient_rows = db.execute(
        "SELECT address, notify, orcpt, state, attempts, status, diagnostic, route_kind,"
        " route_target, delay_notified, remote_mta, last_attempt FROM recipient"
        " WHERE message_id = ? ORDER BY position",
        (rowid,),
    ).fetchall()
    recipients = tuple(
        Recipient(
            address=address,
            notify=None if notify is None else frozenset(filter(None, notify.split(","))),
            orcpt=orcpt,
            state=RecipientState(state),
            attempts=r_attempts,
            status=status,
            diagnostic=diagnostic,
            route=None if route_kind is None else Route(RouteKind(route_kind), route_target),
        )
        for (
            address,
            notify,
            orcpt,
            state,
            r_attempts,
            status,
            diagnostic,
            route_kind,
            route_target,
            *_,
        ) in recipient_rows
    )
    progress = tuple(
        RecipientProgress(
            delay_notified=bool(delay_notified), remote_mta=remote_mta, last_attempt=last_attempt
        )
        for *_, delay_notified, remote_mta, last_attempt in recipient_rows
    )
    body: bytes | None = None
    if with_body:
        body = StoredBody.read(str(bodies / body_file)) if body_file else bytes(inline_body)
    return QueuedMessage(
        queue_id=format_queue_id(rowid),
        envelope=Envelope(
            sender=sender,
            recipients=recipients,
            client=ClientInfo(
                address=client_address,
                helo=client_helo,
                user=client_user,
                tls=client_tls,
                password=None if client_password is None else Secret(client_password),
            ),
            arrival=arrival,
            body_type=BodyType(body_type),
            smtputf8=bool(smtputf8),
            ret=ret,
            envid=envid,
            size=declared_size,
        ),
        size=size,
        attempts=attempts,
        next_attempt=next_attempt,
        body=body,
        kind=MessageKind(kind),
        queue=Queue(queue),
        reason=reason,
        progress=progress,
    )
