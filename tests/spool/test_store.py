"""Tests for L{mdtwist.spool.store}."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient, RecipientState
from mdtwist.errors import SpoolError
from mdtwist.interfaces import ISpool
from mdtwist.route import Route
from mdtwist.secret import Secret
from mdtwist.spool.model import (
    MessageKind,
    Notice,
    Queue,
    RecipientProgress,
    RecipientResult,
    StoredBody,
)
from mdtwist.spool.schema import MIGRATE_FROM_1, SCHEMA_VERSION
from mdtwist.spool.store import (
    BODIES_NAME,
    DATABASE_NAME,
    MAX_SHARDS,
    SHARD_BITS,
    SpoolReader,
    SQLiteSpool,
    existing_shards,
    format_queue_id,
    parse_queue_id,
    shard_directory,
    shard_of,
)
from tests.spool.fakes import HeldRunner, make_envelope, run_now, write_v3_spool

BIG = b"Subject: big\r\n\r\n" + b"x" * 300 + b"\r\n"
SMALL = b"Subject: small\r\n\r\nhello\r\n"


class FlakyConnection(sqlite3.Connection):
    """
    A connection that counts transactions and fails a chosen statement on purpose.

    The settings are class attributes: the spool makes its own connection.
    """

    fail_prefix: ClassVar[str | None] = None
    fail_after: ClassVar[int] = 0
    begins: ClassVar[int] = 0

    def _check(self, sql: str) -> None:
        if sql.startswith("BEGIN"):
            type(self).begins += 1
        prefix = type(self).fail_prefix
        if prefix is not None and sql.startswith(prefix):
            if type(self).fail_after == 0:
                raise sqlite3.OperationalError("database or disk is full")
            type(self).fail_after -= 1

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """Run a statement, or fail it on purpose."""
        self._check(sql)
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        """Run a statement for many rows, or fail it on purpose."""
        self._check(sql)
        return super().executemany(sql, parameters)


class SyncRecordingConnection(sqlite3.Connection):
    """
    A connection that notes the C{synchronous} setting in effect at each commit.
    """

    commits: ClassVar[list[int]] = []

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        """Run a statement; before a commit, note the setting (2 FULL, 1 NORMAL)."""
        if sql == "COMMIT":
            (level,) = super().execute("PRAGMA synchronous").fetchone()
            type(self).commits.append(level)
        return super().execute(sql, parameters)


def flaky(prefix: str | None = None, after: int = 0) -> type[FlakyConnection]:
    """
    Make a fresh L{FlakyConnection} class.

    @param prefix: fail statements that start with this, or none when L{None}.
    @param after: let this many such statements pass first.
    @return: the class.
    """
    return type(
        "Flaky", (FlakyConnection,), {"fail_prefix": prefix, "fail_after": after, "begins": 0}
    )


class SQLiteSpoolTests(SynchronousTestCase):
    """Tests for L{SQLiteSpool}."""

    def setUp(self) -> None:
        """Make a spool in a new directory."""
        self.directory = Path(self.mktemp())
        self.spool = SQLiteSpool(self.directory, run_now, inline_limit=100)
        self.addCleanup(self.spool.close)

    def test_provides_ispool(self) -> None:
        """The spool provides L{ISpool}."""
        self.assertTrue(verifyObject(ISpool, self.spool))

    def test_round_trip(self) -> None:
        """A loaded message has the envelope, DSN parameters and body that were enqueued."""
        envelope = Envelope(
            sender="bounce+x@remote.example",
            recipients=(
                Recipient(
                    "a@local.example", notify=frozenset({"FAILURE", "DELAY"}), orcpt="rfc822;a@x"
                ),
                Recipient("b@local.example", notify=frozenset({"NEVER"})),
                Recipient("c@remote.example"),
            ),
            client=ClientInfo("2001:db8::1", "mx.remote.example", user="alice", tls="TLSv1.3"),
            arrival=1234.5,
            body_type=BodyType.EIGHT_BIT_MIME,
            smtputf8=True,
            ret="HDRS",
            envid="abc+2Bdef",
            size=4096,
        )
        queue_id = self.successResultOf(self.spool.enqueue(envelope, SMALL))
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual(message.queue_id, queue_id)
        self.assertEqual(message.envelope, envelope)
        self.assertEqual(message.body, SMALL)
        self.assertEqual(message.size, len(SMALL))
        self.assertEqual((message.attempts, message.next_attempt), (0, 1234.5))

    def test_round_trip_null_sender_and_empty_fields(self) -> None:
        """The null sender, an empty body and absent optional fields survive storage."""
        envelope = Envelope("", (Recipient("a@local.example"),), ClientInfo("192.0.2.9", ""), 1.0)
        queue_id = self.successResultOf(self.spool.enqueue(envelope, b""))
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual((message.envelope, message.body), (envelope, b""))

    def test_queue_ids_unique_and_sortable(self) -> None:
        """Queue ids are distinct and sort in the order the messages were stored."""
        ids = [
            self.successResultOf(self.spool.enqueue(make_envelope("a@x"), SMALL)) for _ in "abc"
        ]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(sorted(ids), ids)

    def test_queue_id_format(self) -> None:
        """Queue ids are printable and parse back to their row ids; other text does not parse."""
        self.assertEqual(format_queue_id(42), "00000000002A")
        self.assertEqual(parse_queue_id("000000002a"), 42)
        self.assertIsNone(parse_queue_id("no-such-id"))
        self.assertIsNone(parse_queue_id(""))

    def test_load_unknown(self) -> None:
        """Loading an id the spool does not hold gives L{None}."""
        self.assertIsNone(self.successResultOf(self.spool.load("00000000FF")))
        self.assertIsNone(self.successResultOf(self.spool.load("junk")))

    def test_large_body_in_file(self) -> None:
        """
        A body above the inline limit is kept in a file and read back from it, as a
        L{StoredBody} naming that file (a delivery worker reads it there); a body kept inline
        is plain bytes.
        """
        queue_id = self.successResultOf(self.spool.enqueue(make_envelope("a@x"), BIG))
        files = list((self.directory / BODIES_NAME).iterdir())
        self.assertEqual([f.read_bytes() for f in files], [BIG])
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual((message.body, message.size), (BIG, len(BIG)))
        assert isinstance(message.body, StoredBody)
        self.assertEqual(message.body.path, str(files[0].absolute()))
        small_id = self.successResultOf(self.spool.enqueue(make_envelope("a@x"), SMALL))
        small = self.successResultOf(self.spool.load(small_id))
        assert small is not None
        self.assertIs(type(small.body), bytes)

    def test_due(self) -> None:
        """Only messages whose next attempt has come are due, the oldest first, up to the limit."""
        first = self.successResultOf(self.spool.enqueue(make_envelope("a@x"), SMALL))
        later = make_envelope("b@x")
        second = self.successResultOf(
            self.spool.enqueue(Envelope(later.sender, later.recipients, later.client, 2000), SMALL)
        )
        self.assertEqual(self.successResultOf(self.spool.due(999, 10)), [])
        self.assertEqual(self.successResultOf(self.spool.due(1000, 10)), [first])
        self.assertEqual(self.successResultOf(self.spool.due(5000, 10)), [first, second])
        self.assertEqual(self.successResultOf(self.spool.due(5000, 1)), [first])

    def test_pending_pages(self) -> None:
        """
        L{SQLiteSpool.pending} walks the active messages with pending recipients in queue-id
        order, page by page, whatever their schedule; a parked message is not in it.
        """
        ids = [
            self.successResultOf(self.spool.enqueue(make_envelope(f"{n}@x"), SMALL))
            for n in "abcd"
        ]
        later = make_envelope("e@x")
        ids.append(
            self.successResultOf(
                self.spool.enqueue(
                    Envelope(later.sender, later.recipients, later.client, 9e9), SMALL
                )
            )
        )
        self.successResultOf(self.spool.park(ids[1], "looping"))
        self.assertEqual(self.successResultOf(self.spool.pending(None, 2)), [ids[0], ids[2]])
        self.assertEqual(self.successResultOf(self.spool.pending(ids[2], 2)), [ids[3], ids[4]])
        self.assertEqual(self.successResultOf(self.spool.pending(ids[4], 2)), [])
        self.assertRaises(ValueError, self.spool.pending, "nonsense", 2)

    def test_count_and_list(self) -> None:
        """The spool counts and lists its messages with their pending recipients."""
        queue_id = self.successResultOf(self.spool.enqueue(make_envelope("a@x", "b@x"), SMALL))
        self.successResultOf(
            self.spool.record(queue_id, [RecipientResult(0, RecipientState.DELIVERED)], 1300)
        )
        self.assertEqual(self.successResultOf(self.spool.count()), 1)
        [entry] = self.successResultOf(self.spool.list())
        self.assertEqual(
            (entry.queue_id, entry.sender, entry.recipients, entry.pending, entry.attempts),
            (queue_id, "s@remote.example", 2, 1, 1),
        )
        self.assertEqual((entry.arrival, entry.next_attempt, entry.size), (1000, 1300, len(SMALL)))

    def test_only_new_mail_waits_for_fsync(self) -> None:
        """
        A transaction that holds new messages commits with C{synchronous=FULL} (fsynced before
        the 250); one with delivery outcomes only commits with C{NORMAL} (made durable by the
        next fsynced commit of the write-ahead log).
        """
        factory: type[SyncRecordingConnection] = type(
            "Recording", (SyncRecordingConnection,), {"commits": []}
        )
        writer = HeldRunner()
        spool = SQLiteSpool(Path(self.mktemp()), writer, factory=factory)
        self.addCleanup(writer.run_all)
        self.addCleanup(spool.close)
        spool.open()
        writer.run_all()
        del factory.commits[:]
        first = spool.enqueue(make_envelope("a@x", "b@x"), SMALL)
        writer.run_all()
        queue_id = self.successResultOf(first)
        spool.record(queue_id, [RecipientResult(0, RecipientState.DELIVERED)], 1300)
        writer.run_all()
        # While a write is in flight, an outcome and a new message wait for one batch.
        spool.enqueue(make_envelope("a@x"), SMALL)
        spool.record(queue_id, [RecipientResult(1, RecipientState.DELIVERED)], 1300)
        spool.enqueue(make_envelope("a@x"), SMALL)
        self.assertEqual(len(writer.calls), 1)
        writer.run_all()
        self.assertEqual(factory.commits, [2, 1, 2, 2])

    def test_page_and_counts(self) -> None:
        """
        L{SQLiteSpool.page} lists the queue a page at a time after a given queue id, and
        L{SQLiteSpool.counts} counts each queue without listing it.
        """
        ids = [
            self.successResultOf(self.spool.enqueue(make_envelope("a@x"), SMALL)) for _ in "abc"
        ]
        self.successResultOf(self.spool.park(ids[1], "looped"))
        first = self.successResultOf(self.spool.page(None, 2))
        self.assertEqual([e.queue_id for e in first], ids[:2])
        rest = self.successResultOf(self.spool.page(first[-1].queue_id, 2))
        self.assertEqual([e.queue_id for e in rest], ids[2:])
        bad = self.successResultOf(self.spool.page(None, 10, Queue.BAD))
        self.assertEqual([e.queue_id for e in bad], [ids[1]])
        self.assertEqual(
            self.successResultOf(self.spool.counts()),
            {Queue.ACTIVE: 2, Queue.HOLD: 0, Queue.BAD: 1},
        )
        self.assertRaises(ValueError, self.spool.page, "nonsense", 2)


class RecordTests(SynchronousTestCase):
    """Tests for L{SQLiteSpool.record}."""

    def setUp(self) -> None:
        """Make a spool in a new directory."""
        self.directory = Path(self.mktemp())
        self.spool = SQLiteSpool(self.directory, run_now, inline_limit=100)
        self.addCleanup(self.spool.close)
        self.queue_id = self.successResultOf(
            self.spool.enqueue(make_envelope("a@x", "b@x", "c@x"), BIG)
        )

    def load(self) -> Envelope:
        """Load the test message, which must be there."""
        message = self.successResultOf(self.spool.load(self.queue_id))
        assert message is not None
        return message.envelope

    def test_partial(self) -> None:
        """Recorded results update their recipients; the message stays with its new schedule."""
        removed = self.successResultOf(
            self.spool.record(
                self.queue_id,
                [
                    RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "delivered"),
                    RecipientResult(1, RecipientState.FAILED, "5.1.1", "no such user"),
                    RecipientResult(2, RecipientState.PENDING, "4.2.2", "mailbox full"),
                ],
                1600,
            )
        )
        self.assertFalse(removed)
        envelope = self.load()
        self.assertEqual(
            [(r.state, r.attempts, r.status, r.diagnostic) for r in envelope.recipients],
            [
                (RecipientState.DELIVERED, 1, "2.0.0", "delivered"),
                (RecipientState.FAILED, 1, "5.1.1", "no such user"),
                (RecipientState.PENDING, 1, "4.2.2", "mailbox full"),
            ],
        )
        self.assertEqual(self.successResultOf(self.spool.due(1599, 10)), [])
        self.assertEqual(self.successResultOf(self.spool.due(1600, 10)), [self.queue_id])

    def test_reschedule_without_results(self) -> None:
        """Recording no results moves the next attempt and counts no attempt."""
        self.assertFalse(self.successResultOf(self.spool.record(self.queue_id, [], 3000)))
        message = self.successResultOf(self.spool.load(self.queue_id))
        assert message is not None
        self.assertEqual((message.attempts, message.next_attempt), (0, 3000))

    def test_all_final_removes(self) -> None:
        """When no recipient is left pending the message and its body file leave the spool."""
        self.successResultOf(
            self.spool.record(self.queue_id, [RecipientResult(0, RecipientState.DELIVERED)], 1)
        )
        removed = self.successResultOf(
            self.spool.record(
                self.queue_id,
                [
                    RecipientResult(1, RecipientState.DELIVERED),
                    RecipientResult(2, RecipientState.FAILED, "5.1.1"),
                ],
                2,
            )
        )
        self.assertTrue(removed)
        self.assertIsNone(self.successResultOf(self.spool.load(self.queue_id)))
        self.assertEqual(self.successResultOf(self.spool.count()), 0)
        self.assertEqual(list((self.directory / BODIES_NAME).iterdir()), [])

    def test_final_recipient_is_not_changed_again(self) -> None:
        """
        A result for a recipient that is already final fails the whole record.

        Nothing changes, not even the results given for pending recipients.
        """
        self.successResultOf(
            self.spool.record(self.queue_id, [RecipientResult(0, RecipientState.DELIVERED)], 1)
        )
        failure = self.failureResultOf(
            self.spool.record(
                self.queue_id,
                [
                    RecipientResult(1, RecipientState.DELIVERED),
                    RecipientResult(0, RecipientState.FAILED),
                ],
                2,
            ),
            SpoolError,
        )
        self.assertIn("not pending", str(failure.value))
        self.assertEqual(
            [r.state for r in self.load().recipients],
            [RecipientState.DELIVERED, RecipientState.PENDING, RecipientState.PENDING],
        )

    def test_unknown_message(self) -> None:
        """Recording results for a message the spool does not hold fails with L{SpoolError}."""
        self.failureResultOf(self.spool.record("00000000FF", [], 1), SpoolError)
        self.failureResultOf(self.spool.record("junk", [], 1), SpoolError)


class GroupCommitTests(SynchronousTestCase):
    """Tests for the batching of L{SQLiteSpool.enqueue}."""

    def setUp(self) -> None:
        """Make a spool in a new directory."""
        self.directory = Path(self.mktemp())
        self.runner = HeldRunner()
        self.factory = flaky()
        self.spool = SQLiteSpool(self.directory, self.runner, factory=self.factory)
        self.addCleanup(self.close)

    def close(self) -> None:
        """Close the spool."""
        self.spool.close()
        self.runner.run_all()

    def visible(self, queue_id: str) -> bool:
        """@return: whether another connection sees the message as committed."""
        reader = SpoolReader(self.directory)
        try:
            return reader.load(queue_id) is not None
        finally:
            reader.close()

    def test_batches(self) -> None:
        """
        Messages enqueued while a write is in flight form the next batch.

        They are written together in one transaction once the write in flight returns, and
        none of their Deferreds fires before that.
        """
        first = self.spool.enqueue(make_envelope("a@x"), SMALL)
        self.assertEqual(len(self.runner.calls), 1)
        rest = [self.spool.enqueue(make_envelope(f"{n}@x"), SMALL) for n in range(3)]
        self.assertEqual(len(self.runner.calls), 1)
        self.assertNoResult(first)
        self.runner.run_next()
        first_id = self.successResultOf(first)
        # One transaction opened the spool (the shard check), one wrote the first batch.
        self.assertEqual(self.factory.begins, 2)
        for d in rest:
            self.assertNoResult(d)
        self.assertEqual(len(self.runner.calls), 1)
        self.assertEqual(len(self.runner.calls[0].args[0]), 3)
        self.runner.run_next()
        self.assertEqual(self.factory.begins, 3)
        ids = [self.successResultOf(d) for d in rest]
        self.assertEqual(len({first_id, *ids}), 4)
        self.assertEqual(self.runner.calls, [])

    def test_fires_after_commit(self) -> None:
        """When an enqueue Deferred fires, its message is committed: another connection sees it."""
        seen: list[bool] = []
        d = self.spool.enqueue(make_envelope("a@x"), SMALL)
        d.addCallback(lambda queue_id: seen.append(self.visible(queue_id)))
        self.runner.run_all()
        self.assertEqual(seen, [True])

    def test_observers(self) -> None:
        """
        Subscribers hear the ids of each committed batch until they unsubscribe.

        They hear them after the enqueue Deferreds fired.
        """
        heard: list[list[str]] = []
        fired: list[str] = []
        unsubscribe = self.spool.subscribe(lambda ids: heard.append(list(ids)))
        self.spool.enqueue(make_envelope("a@x"), SMALL).addCallback(fired.append)
        self.spool.enqueue(make_envelope("b@x"), SMALL).addCallback(fired.append)
        self.spool.enqueue(make_envelope("c@x"), SMALL).addCallback(fired.append)
        self.runner.run_all()
        self.assertEqual(heard, [fired[:1], fired[1:]])
        unsubscribe()
        self.spool.enqueue(make_envelope("d@x"), SMALL)
        self.runner.run_all()
        self.assertEqual(len(heard), 2)

    def queued(self, count: int) -> list[str]:
        """Enqueue C{count} messages and commit them; return their ids."""
        ds = [self.spool.enqueue(make_envelope(f"{n}@x"), SMALL) for n in range(count)]
        self.runner.run_all()
        return [self.successResultOf(d) for d in ds]

    def test_outcomes_batched_with_messages(self) -> None:
        """
        Delivery outcomes recorded while a write is in flight are committed in the next
        transaction together with newly enqueued messages, and their Deferreds fire only then.
        """
        first, second = self.queued(2)
        begins = self.factory.begins
        holder = self.spool.enqueue(make_envelope("held@x"), SMALL)
        done = RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "ok")
        records = [self.spool.record(q, [done], 0.0) for q in (first, second)]
        late = self.spool.enqueue(make_envelope("late@x"), SMALL)
        self.runner.run_next()
        self.successResultOf(holder)
        for d in (*records, late):
            self.assertNoResult(d)
        self.runner.run_next()
        self.assertEqual(self.factory.begins, begins + 2)
        self.assertEqual([self.successResultOf(d) for d in records], [True, True])
        self.assertFalse(self.visible(first))
        self.assertTrue(self.visible(self.successResultOf(late)))

    def test_bad_outcome_fails_alone(self) -> None:
        """
        An outcome for an unknown message fails with SpoolError; the outcomes and messages
        written in the same transaction are kept.
        """
        [known] = self.queued(1)
        done = RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "ok")
        pending = RecipientResult(0, RecipientState.PENDING, "4.0.0", "later")
        bad = self.spool.record("00000000FF", [done], 0.0)
        good = self.spool.record(known, [pending], 99.0)
        new = self.spool.enqueue(make_envelope("new@x"), SMALL)
        self.runner.run_all()
        self.failureResultOf(bad, SpoolError)
        self.assertFalse(self.successResultOf(good))
        self.assertTrue(self.visible(self.successResultOf(new)))
        reader = SpoolReader(self.directory)
        self.addCleanup(reader.close)
        loaded = reader.load(known)
        assert loaded is not None
        self.assertEqual(loaded.next_attempt, 99.0)

    def test_large_batch(self) -> None:
        """
        A large batch (120 messages, one with 450 recipients) is stored whole: every message
        gets its own id, in the order of enqueueing, and loads with its own recipients.
        """
        holder = self.spool.enqueue(make_envelope("held@x"), SMALL)
        envelopes = [make_envelope(f"{n}@x", f"{n}b@x", f"{n}c@x") for n in range(119)]
        envelopes.append(make_envelope(*(f"r{n}@x" for n in range(450))))
        ds = [self.spool.enqueue(envelope, SMALL) for envelope in envelopes]
        self.runner.run_all()
        self.successResultOf(holder)
        ids = [self.successResultOf(d) for d in ds]
        self.assertEqual(ids, sorted(set(ids)))
        reader = SpoolReader(self.directory)
        self.addCleanup(reader.close)
        for queue_id, envelope in zip(ids, envelopes, strict=True):
            loaded = reader.load(queue_id)
            assert loaded is not None
            self.assertEqual(
                [r.address for r in loaded.envelope.recipients],
                [r.address for r in envelope.recipients],
            )

    def test_repeated_outcome_fails_alone(self) -> None:
        """
        Two outcomes for the same recipient in one transaction: the first is kept, the second
        fails with SpoolError (the recipient is no longer pending), and the other outcome of
        the transaction is kept.
        """
        pair = self.spool.enqueue(make_envelope("a@x", "b@x"), SMALL)
        [second] = self.queued(1)
        first = self.successResultOf(pair)
        holder = self.spool.enqueue(make_envelope("held@x"), SMALL)
        done = RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "ok")
        failed = RecipientResult(0, RecipientState.FAILED, "5.0.0", "no")
        kept = self.spool.record(first, [done], 50.0)
        again = self.spool.record(first, [failed], 60.0)
        other = self.spool.record(second, [done], 0.0)
        self.runner.run_all()
        self.successResultOf(holder)
        self.assertFalse(self.successResultOf(kept))
        self.assertIn("not pending", str(self.failureResultOf(again, SpoolError).value))
        self.assertTrue(self.successResultOf(other))
        reader = SpoolReader(self.directory)
        self.addCleanup(reader.close)
        loaded = reader.load(first)
        assert loaded is not None
        self.assertEqual((loaded.next_attempt, loaded.attempts), (50.0, 1))
        self.assertEqual(
            [r.state for r in loaded.envelope.recipients],
            [RecipientState.DELIVERED, RecipientState.PENDING],
        )
        self.assertIsNone(reader.load(second))


class PrivacyTests(SynchronousTestCase):
    """
    Queued mail is readable by its owner only.
    """

    def test_modes(self) -> None:
        """
        The spool directory and its bodies directory are 0700; the database and its WAL
        file are 0600, also when the directory existed with a looser mode.
        """
        directory = Path(self.mktemp())
        directory.mkdir(mode=0o755)
        spool = SQLiteSpool(directory, run_now)
        self.successResultOf(spool.enqueue(make_envelope("a@x"), BIG * 1000))
        self.addCleanup(spool.close)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [directory, *directory.iterdir()]}
        self.assertEqual(modes[directory.name], 0o700)
        self.assertEqual(modes[BODIES_NAME], 0o700)
        self.assertEqual(modes[DATABASE_NAME], 0o600)
        self.assertEqual(modes[DATABASE_NAME + "-wal"], 0o600)
        [body] = (directory / BODIES_NAME).iterdir()
        self.assertEqual(stat.S_IMODE(body.stat().st_mode), 0o600)


class ReadConnectionTests(SynchronousTestCase):
    """
    With a read runner, loads use read-only connections of their own.
    """

    def test_load_while_a_write_is_in_flight(self) -> None:
        """
        A message is loaded while the writer is busy with another write, and it is read
        through a connection that cannot write.
        """
        directory = Path(self.mktemp())
        writer = HeldRunner()
        spool = SQLiteSpool(directory, writer, read=run_now)
        d = spool.enqueue(make_envelope("a@x"), SMALL)
        writer.run_all()
        queue_id = self.successResultOf(d)
        spool.enqueue(make_envelope("b@x"), SMALL)
        self.assertEqual(len(writer.calls), 1)
        message = self.successResultOf(spool.load(queue_id))
        assert message is not None
        self.assertEqual(message.body, SMALL)
        [reader] = spool._reader_connections
        self.assertRaises(sqlite3.OperationalError, reader.execute, "DELETE FROM message")
        spool.close()
        writer.run_all()
        self.assertEqual(spool._reader_connections, [])

    def test_due_while_a_write_is_in_flight(self) -> None:
        """
        With a reading pool, the due messages are found while the writer is busy with
        another write (the query runs on a reading thread), and a message committed before
        the query is among them.
        """
        directory = Path(self.mktemp())
        writer = HeldRunner()
        spool = SQLiteSpool(directory, writer, read=run_now)
        self.addCleanup(writer.run_all)
        self.addCleanup(spool.close)
        d = spool.enqueue(make_envelope("a@x"), SMALL)
        writer.run_all()
        queue_id = self.successResultOf(d)
        spool.enqueue(make_envelope("b@x"), SMALL)
        self.assertEqual(len(writer.calls), 1)
        self.assertEqual(self.successResultOf(spool.due(5000, 10)), [queue_id])
        self.assertEqual(len(writer.calls), 1)

    def test_loads_batched(self) -> None:
        """
        Loads asked for while a read runs are read together in one call, and a message
        whose body cannot be read fails alone.
        """
        directory = Path(self.mktemp())
        reader = HeldRunner()
        spool = SQLiteSpool(directory, run_now, inline_limit=100, read=reader)
        ids = [
            self.successResultOf(spool.enqueue(make_envelope(f"{n}@x"), BIG)) for n in "abc"
        ] + [self.successResultOf(spool.enqueue(make_envelope("d@x"), SMALL))]
        first = spool.load(ids[0])
        rest = [spool.load(queue_id) for queue_id in ids[1:]]
        unknown = spool.load("00000000FF")
        self.assertEqual(len(reader.calls), 1)
        (body_of_b,) = (
            spool._connection()
            .execute("SELECT body_file FROM message WHERE id = ?", (parse_queue_id(ids[1]),))
            .fetchone()
        )
        (directory / BODIES_NAME / body_of_b).unlink()
        reader.run_next()
        self.assertEqual(self.successResultOf(first).body, BIG)  # type: ignore[union-attr]
        self.assertEqual(len(reader.calls), 1)
        reader.run_next()
        self.failureResultOf(rest[0], SpoolError)
        self.assertEqual(self.successResultOf(rest[1]).body, BIG)  # type: ignore[union-attr]
        self.assertEqual(self.successResultOf(rest[2]).body, SMALL)  # type: ignore[union-attr]
        self.assertIsNone(self.successResultOf(unknown))
        self.assertEqual(reader.calls, [])
        spool.close()


class FailureTests(SynchronousTestCase):
    """Tests for storage failures: the batch fails with L{SpoolError} and nothing of it stays."""

    def make_spool(self, factory: type[sqlite3.Connection]) -> SQLiteSpool:
        """Make a spool with a held runner and a given connection class."""
        self.directory = Path(self.mktemp())
        self.runner = HeldRunner()
        spool = SQLiteSpool(self.directory, self.runner, inline_limit=100, factory=factory)
        self.addCleanup(self.runner.run_all)
        self.addCleanup(spool.close)
        return spool

    def stored(self) -> int:
        """Count the stored messages through another connection."""
        reader = SpoolReader(self.directory)
        try:
            return len(reader.list())
        finally:
            reader.close()

    def test_disk_full_mid_batch(self) -> None:
        """
        A disk-full error on the second message of a batch fails every message of the batch.

        None of them is stored and the batch's body files are removed; the next batch is
        written.
        """
        factory = flaky("INSERT INTO message", after=2)
        spool = self.make_spool(factory)
        spool.open()
        self.runner.run_all()
        first = spool.enqueue(make_envelope("a@x"), SMALL)  # held: the batch starts later
        batch = [
            spool.enqueue(make_envelope("b@x"), BIG),
            spool.enqueue(make_envelope("c@x"), BIG),
        ]
        self.runner.run_next()
        self.successResultOf(first)
        self.runner.run_next()
        for d in batch:
            failure = self.failureResultOf(d, SpoolError)
            self.assertIn("disk is full", str(failure.value))
        self.assertEqual(self.stored(), 1)
        self.assertEqual(list((self.directory / BODIES_NAME).iterdir()), [])
        factory.fail_prefix = None
        later = spool.enqueue(make_envelope("d@x"), BIG)
        self.runner.run_all()
        self.successResultOf(later)
        self.assertEqual(self.stored(), 2)

    def test_commit_fails(self) -> None:
        """A failed commit fails the batch and leaves nothing of it stored."""
        spool = self.make_spool(flaky("COMMIT"))
        batch = [
            spool.enqueue(make_envelope("a@x"), SMALL),
            spool.enqueue(make_envelope("b@x"), BIG),
        ]
        self.runner.run_all()
        for d in batch:
            self.failureResultOf(d, SpoolError)
        self.assertEqual(self.stored(), 0)
        self.assertEqual(list((self.directory / BODIES_NAME).iterdir()), [])

    def test_directory_unusable(self) -> None:
        """A spool path that is a plain file gives L{SpoolError}; nothing is stored."""
        path = Path(self.mktemp())
        path.write_bytes(b"")
        spool = SQLiteSpool(path, run_now)
        self.failureResultOf(spool.enqueue(make_envelope("a@x"), SMALL), SpoolError)
        self.assertEqual(path.read_bytes(), b"")

    def test_not_a_database(self) -> None:
        """A spool file that is not a database makes every operation fail with L{SpoolError}."""
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / DATABASE_NAME).write_bytes(b"this is not sqlite" * 100)
        spool = SQLiteSpool(directory, run_now)
        self.failureResultOf(spool.open(), SpoolError)
        self.failureResultOf(spool.count(), SpoolError)


class RecoveryTests(SynchronousTestCase):
    """Tests for reopening a spool: crash recovery is the normal start."""

    def test_orphans_removed(self) -> None:
        """Opening removes body files that no message names and keeps the others."""
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now, inline_limit=100)
        queue_id = self.successResultOf(spool.enqueue(make_envelope("a@x"), BIG))
        self.successResultOf(spool.close())
        (directory / BODIES_NAME / "left-by-a-crash").write_bytes(b"partial")
        reopened = SQLiteSpool(directory, run_now, inline_limit=100)
        self.addCleanup(reopened.close)
        self.successResultOf(reopened.open())
        self.assertEqual(len(list((directory / BODIES_NAME).iterdir())), 1)
        message = self.successResultOf(reopened.load(queue_id))
        assert message is not None
        self.assertEqual(message.body, BIG)

    def test_crash_keeps_committed(self) -> None:
        """
        A spool that was never closed keeps every committed message.

        Its files are copied while it is open, as a crash leaves them; the copy holds every
        message with its recipients' states.
        """
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now, inline_limit=100)
        self.addCleanup(spool.close)
        ids = [
            self.successResultOf(spool.enqueue(make_envelope("a@x", "b@x"), body))
            for body in (SMALL, BIG, SMALL)
        ]
        self.successResultOf(
            spool.record(ids[0], [RecipientResult(0, RecipientState.DELIVERED)], 1500)
        )
        copy = Path(self.mktemp())
        shutil.copytree(directory, copy)
        (copy / BODIES_NAME / "orphan").write_bytes(b"x")
        recovered = SQLiteSpool(copy, run_now, inline_limit=100)
        self.addCleanup(recovered.close)
        self.assertEqual(self.successResultOf(recovered.due(2000, 10)), [ids[1], ids[2], ids[0]])
        message = self.successResultOf(recovered.load(ids[1]))
        assert message is not None
        self.assertEqual(message.body, BIG)
        first = self.successResultOf(recovered.load(ids[0]))
        assert first is not None
        self.assertEqual(
            [r.state for r in first.envelope.recipients],
            [RecipientState.DELIVERED, RecipientState.PENDING],
        )
        self.assertEqual(len(list((copy / BODIES_NAME).iterdir())), 1)

    def test_unknown_schema_version(self) -> None:
        """A database from a newer schema is refused rather than misread."""
        directory = Path(self.mktemp())
        directory.mkdir()
        db = sqlite3.connect(directory / DATABASE_NAME)
        db.execute("PRAGMA user_version = 99")
        db.close()
        spool = SQLiteSpool(directory, run_now)
        failure = self.failureResultOf(spool.open(), SpoolError)
        self.assertIn("99", str(failure.value))


class SpoolReaderTests(SynchronousTestCase):
    """Tests for L{SpoolReader}."""

    def test_reads_while_open(self) -> None:
        """
        The reader sees committed messages while the spool is open.

        It reads the body only when asked.
        """
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        queue_id = self.successResultOf(spool.enqueue(make_envelope("a@x"), SMALL))
        reader = SpoolReader(directory)
        self.addCleanup(reader.close)
        self.assertEqual([e.queue_id for e in reader.list()], [queue_id])
        message = reader.load(queue_id)
        assert message is not None
        self.assertIsNone(message.body)
        with_body = reader.load(queue_id, with_body=True)
        assert with_body is not None
        self.assertEqual(with_body.body, SMALL)
        self.assertIsNone(reader.load("nonsense"))

    def test_never_writes(self) -> None:
        """The reader's connection refuses writes."""
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now)
        self.successResultOf(spool.open())
        self.successResultOf(spool.close())
        reader = SpoolReader(directory)
        self.addCleanup(reader.close)
        self.assertRaises(sqlite3.OperationalError, reader._db.execute, "DELETE FROM message")

    def test_entries_stream_page_by_page(self) -> None:
        """
        L{SpoolReader.entries} yields the whole queue in queue-id order, a page at a time,
        optionally one queue only; L{SpoolReader.counts} counts each queue.
        """
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        ids = [
            self.successResultOf(spool.enqueue(make_envelope("a@x", "b@x"), SMALL))
            for _ in range(7)
        ]
        self.successResultOf(spool.park(ids[2], "looped"))
        self.successResultOf(
            spool.record(ids[3], [RecipientResult(0, RecipientState.DELIVERED)], 1300)
        )
        reader = SpoolReader(directory)
        self.addCleanup(reader.close)
        for page in (1, 2, 3, 7, 100):
            entries = list(reader.entries(page=page))
            self.assertEqual([e.queue_id for e in entries], ids)
            self.assertEqual(entries, reader.list())
        active = list(reader.entries(Queue.ACTIVE, page=2))
        self.assertEqual([e.queue_id for e in active], ids[:2] + ids[3:])
        self.assertEqual(
            [(e.recipients, e.pending) for e in active], [(2, 2)] * 2 + [(2, 1)] + [(2, 2)] * 3
        )
        [bad] = reader.entries(Queue.BAD, page=2)
        self.assertEqual((bad.queue_id, bad.reason), (ids[2], "looped"))
        self.assertEqual(reader.counts(), {Queue.ACTIVE: 6, Queue.HOLD: 0, Queue.BAD: 1})

    def test_entries_first_page_before_the_rest(self) -> None:
        """
        The stream reads lazily: the first entries come before later pages are read, and a
        message queued meanwhile after the current page is listed once.
        """
        directory = Path(self.mktemp())
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        first = [self.successResultOf(spool.enqueue(make_envelope("a@x"), SMALL)) for _ in "ab"]
        reader = SpoolReader(directory)
        self.addCleanup(reader.close)
        stream = reader.entries(page=1)
        self.assertEqual(next(stream).queue_id, first[0])
        late = self.successResultOf(spool.enqueue(make_envelope("a@x"), SMALL))
        self.assertEqual([e.queue_id for e in stream], [first[1], late])

    def test_missing(self) -> None:
        """A directory without a spool database gives a L{SpoolError} naming the file."""
        directory = Path(self.mktemp())
        error = self.assertRaises(SpoolError, SpoolReader, directory)
        self.assertIn(DATABASE_NAME, str(error))


_SCHEMA_V1 = """
CREATE TABLE message (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sender TEXT NOT NULL, arrival REAL NOT NULL,
    body_type TEXT NOT NULL, smtputf8 INTEGER NOT NULL, ret TEXT, envid TEXT,
    declared_size INTEGER, size INTEGER NOT NULL, client_address TEXT NOT NULL,
    client_helo TEXT NOT NULL, client_user TEXT, client_tls TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, body BLOB, body_file TEXT
);
CREATE TABLE recipient (
    message_id INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    position INTEGER NOT NULL, address TEXT NOT NULL, notify TEXT, orcpt TEXT,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '', diagnostic TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (message_id, position)
);
CREATE INDEX message_next_attempt ON message (next_attempt);
PRAGMA user_version = 1;
INSERT INTO message (sender, arrival, body_type, smtputf8, size, client_address, client_helo,
    next_attempt, body) VALUES ('s@x', 1000, '7BIT', 0, 5, '192.0.2.1', 'h', 1000, x'6869');
INSERT INTO recipient (message_id, position, address, state) VALUES (1, 0, 'a@x', 'pending');
"""


class NoticeRecordTests(SynchronousTestCase):
    """Tests for the notices, delay marks and parking of L{SQLiteSpool.record}."""

    def setUp(self) -> None:
        """Make a spool with one message for two recipients."""
        self.directory = Path(self.mktemp())
        self.factory = flaky()
        self.spool = SQLiteSpool(self.directory, run_now, inline_limit=100, factory=self.factory)
        self.addCleanup(self.spool.close)
        self.queue_id = self.successResultOf(
            self.spool.enqueue(make_envelope("a@x", "b@x"), SMALL)
        )
        self.committed: list[Sequence[str]] = []
        self.spool.subscribe(self.committed.append)

    def notice(self, body: bytes = SMALL) -> Notice:
        """@return: a notice to the test sender."""
        return Notice(make_envelope("s@remote.example", sender=""), body)

    def test_notice_with_results(self) -> None:
        """
        Notices are queued with the results, marked as notices; observers hear of them.

        The delay mark and the time of the attempt are kept for their recipients.
        """
        removed = self.successResultOf(
            self.spool.record(
                self.queue_id,
                [
                    RecipientResult(0, RecipientState.FAILED, "5.1.1", "550 no", "mx.y"),
                    RecipientResult(1, RecipientState.PENDING, "4.3.0", "451 later"),
                ],
                2000,
                now=1500,
                notices=[self.notice(BIG)],
                delay_notified=[1],
            )
        )
        self.assertFalse(removed)
        entries = self.successResultOf(self.spool.list())
        self.assertEqual(
            [(e.kind, e.sender) for e in entries],
            [(MessageKind.MESSAGE, "s@remote.example"), (MessageKind.NOTICE, "")],
        )
        self.assertEqual(self.committed, [[entries[1].queue_id]])
        notice = self.successResultOf(self.spool.load(entries[1].queue_id))
        assert notice is not None
        self.assertEqual(notice.body, BIG)
        message = self.successResultOf(self.spool.load(self.queue_id))
        assert message is not None
        self.assertEqual(
            message.progress,
            (RecipientProgress(False, "mx.y", 1500), RecipientProgress(True, None, 1500)),
        )

    def test_atomic(self) -> None:
        """When the notice cannot be stored, the results are not stored either."""
        self.factory.fail_prefix = "INSERT INTO message"
        self.failureResultOf(
            self.spool.record(
                self.queue_id,
                [RecipientResult(0, RecipientState.FAILED, "5.1.1")],
                2000,
                notices=[self.notice(BIG)],
                delay_notified=[1],
            ),
            SpoolError,
        )
        self.factory.fail_prefix = None
        message = self.successResultOf(self.spool.load(self.queue_id))
        assert message is not None
        self.assertEqual(
            [r.state for r in message.envelope.recipients], [RecipientState.PENDING] * 2
        )
        self.assertFalse(message.progress[1].delay_notified)
        self.assertEqual(self.successResultOf(self.spool.count()), 1)
        self.assertEqual(list((self.directory / BODIES_NAME).iterdir()), [])
        self.assertEqual(self.committed, [])

    def test_park(self) -> None:
        """
        A parked message keeps its recipients, is never due, and starts with the reason.

        Recording for it again is refused.
        """
        self.assertFalse(self.successResultOf(self.spool.park(self.queue_id, "loop\r\nx")))
        message = self.successResultOf(self.spool.load(self.queue_id))
        assert message is not None
        self.assertEqual((message.queue, message.reason), (Queue.BAD, "loop x"))
        self.assertEqual(message.body, b"X-Mdtwist-Bad-Queue-Reason: loop x\r\n" + SMALL)
        self.assertEqual(message.size, len(message.body or b""))
        self.assertEqual(self.successResultOf(self.spool.due(1e12, 10)), [])
        [entry] = self.successResultOf(self.spool.list())
        self.assertEqual((entry.queue, entry.reason), (Queue.BAD, "loop x"))
        self.failureResultOf(self.spool.record(self.queue_id, [], 1), SpoolError)

    def test_park_drops_kept_password(self) -> None:
        """
        A message parked in the bad queue no longer holds the sender's kept password.
        """
        envelope = attrs.evolve(
            make_envelope("a@x"),
            client=ClientInfo("192.0.2.1", "h", user="alice", password=Secret("kept")),
        )
        d = self.spool.enqueue(envelope, SMALL)
        queue_id = self.successResultOf(d)
        self.successResultOf(self.spool.park(queue_id, "loop"))
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertIsNone(message.envelope.client.password)

    def test_park_large_body(self) -> None:
        """Parking a message whose body is a file replaces the file; the old one goes."""
        big_id = self.successResultOf(self.spool.enqueue(make_envelope("a@x"), BIG))
        before = set((self.directory / BODIES_NAME).iterdir())
        self.successResultOf(self.spool.park(big_id, "why"))
        after = set((self.directory / BODIES_NAME).iterdir())
        self.assertEqual((len(before), len(after)), (1, 1))
        self.assertNotEqual(before, after)
        message = self.successResultOf(self.spool.load(big_id))
        assert message is not None
        self.assertEqual(message.body, b"X-Mdtwist-Bad-Queue-Reason: why\r\n" + BIG)


class MigrationTests(SynchronousTestCase):
    """Tests for opening a spool of an older schema."""

    def test_from_version_1(self) -> None:
        """
        A version 1 spool is migrated: its messages are active, with no delay marks.

        The read-only reader refuses a version 1 spool, asking for the server to migrate it.
        """
        directory = _version_1_spool(Path(self.mktemp()))
        error = self.assertRaises(SpoolError, SpoolReader, directory)
        self.assertIn("migrate", str(error))
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        self.assertEqual(self.successResultOf(spool.due(2000, 10)), ["000000000001"])
        message = self.successResultOf(spool.load("000000000001"))
        assert message is not None
        self.assertEqual(
            (message.queue, message.kind, message.body, message.progress),
            (Queue.ACTIVE, MessageKind.MESSAGE, b"hi", (RecipientProgress(),)),
        )
        self.assertIsNone(message.envelope.client.password)
        check = sqlite3.connect(directory / DATABASE_NAME)
        self.addCleanup(check.close)
        self.assertEqual(check.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))

    def test_from_version_2(self) -> None:
        """
        A version 2 spool gains the column for kept passwords; its messages stay as they were.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        db = sqlite3.connect(directory / DATABASE_NAME)
        db.executescript(_SCHEMA_V1)
        for statement in MIGRATE_FROM_1:
            db.execute(statement)
        db.execute("PRAGMA user_version = 2")
        db.commit()
        db.close()
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        message = self.successResultOf(spool.load("000000000001"))
        assert message is not None
        self.assertEqual(message.body, b"hi")
        self.assertIsNone(message.envelope.client.password)
        queue_id = self.successResultOf(
            spool.enqueue(
                attrs.evolve(
                    make_envelope("a@x"),
                    client=ClientInfo("192.0.2.1", "h", user="alice", password=Secret("pw")),
                ),
                SMALL,
            )
        )
        kept = self.successResultOf(spool.load(queue_id))
        assert kept is not None and kept.envelope.client.password is not None
        self.assertEqual(kept.envelope.client.password.reveal(), "pw")


class RouteTests(SynchronousTestCase):
    """Tests for the route stored with each recipient (schema version 4)."""

    def test_round_trip(self) -> None:
        """
        Every kind of route comes back as it was stored; a recipient without one stays without.
        """
        routes = [
            Route.local("alice@example.com"),
            Route.remote(),
            Route.sharing_peer("peer.example:2525"),
            Route.gateway_hold("gate.example"),
            None,
        ]
        envelope = make_envelope(
            *(Recipient(f"r{n}@example.com", route=route) for n, route in enumerate(routes))
        )
        spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(spool.close)
        message = self.successResultOf(
            spool.load(self.successResultOf(spool.enqueue(envelope, SMALL)))
        )
        assert message is not None
        self.assertEqual([r.route for r in message.envelope.recipients], routes)

    def test_from_version_3(self) -> None:
        """
        A spool written by the release before routes opens and is upgraded in place: its
        recipients have no route (the queue runner classifies them), new ones keep theirs, and
        the reader of command-line tools reads it.
        """
        directory = Path(self.mktemp())
        queue_id = write_v3_spool(directory, ["a@example.com", "b@remote.test"], SMALL)
        spool = SQLiteSpool(directory, run_now)
        self.addCleanup(spool.close)
        old = self.successResultOf(spool.load(queue_id))
        assert old is not None
        self.assertEqual(
            [(r.address, r.route) for r in old.envelope.recipients],
            [("a@example.com", None), ("b@remote.test", None)],
        )
        self.assertEqual(old.body, SMALL)
        self.assertEqual(self.successResultOf(spool.due(1e12, 10)), [queue_id])
        new_id = self.successResultOf(
            spool.enqueue(make_envelope(Recipient("c@remote.test", route=Route.remote())), SMALL)
        )
        new = self.successResultOf(spool.load(new_id))
        assert new is not None
        self.assertEqual(new.envelope.recipients[0].route, Route.remote())
        check = sqlite3.connect(directory / DATABASE_NAME)
        self.addCleanup(check.close)
        self.assertEqual(check.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))
        reader = SpoolReader(directory)
        self.addCleanup(reader.close)
        self.assertEqual([e.queue_id for e in reader.list()], [queue_id, new_id])


class ShardTests(SynchronousTestCase):
    """Tests for spool shards: one spool per process, with queue ids unique across them."""

    def open_spool(self, directory: Path, shard: int) -> SQLiteSpool:
        """
        Open a spool shard, closed again when the test ends.

        @return: the spool.
        """
        spool = SQLiteSpool(directory, run_now, shard=shard)
        self.addCleanup(spool.close)
        self.successResultOf(spool.open())
        return spool

    def enqueue(self, spool: SQLiteSpool) -> str:
        """
        Queue a small message.

        @return: its queue id.
        """
        return self.successResultOf(spool.enqueue(make_envelope("a@x"), SMALL))

    def test_first_id_of_shard(self) -> None:
        """
        Shard 1 numbers its messages from C{1 << 40}: its first id is C{010000000001}.

        The ids keep increasing when the shard is opened again, and the messages are found.
        """
        directory = Path(self.mktemp())
        spool = self.open_spool(directory, 1)
        self.assertEqual([self.enqueue(spool) for _ in "ab"], ["010000000001", "010000000002"])
        self.successResultOf(spool.close())
        reopened = self.open_spool(directory, 1)
        self.assertEqual(self.enqueue(reopened), "010000000003")
        message = self.successResultOf(reopened.load("010000000001"))
        assert message is not None
        self.assertEqual(message.body, SMALL)

    def test_shard_zero_unchanged(self) -> None:
        """Shard 0, the default, numbers its messages from 1 as before."""
        directory = Path(self.mktemp())
        spool = self.open_spool(directory, 0)
        self.assertEqual([self.enqueue(spool) for _ in "ab"], ["000000000001", "000000000002"])

    def test_last_shard(self) -> None:
        """The last shard's ids start with C{FF}; a shard out of range is refused."""
        spool = self.open_spool(Path(self.mktemp()), MAX_SHARDS - 1)
        self.assertEqual(self.enqueue(spool), "FF0000000001")
        directory = Path(self.mktemp())
        self.assertRaises(ValueError, SQLiteSpool, directory, run_now, shard=MAX_SHARDS)
        self.assertRaises(ValueError, SQLiteSpool, directory, run_now, shard=-1)

    def test_existing_database_keeps_its_ids(self) -> None:
        """
        A database made before shards existed opens as shard 0 with its ids unchanged.

        Nothing is written into it for the shard, and new ids follow the old ones.
        """
        directory = _version_1_spool(Path(self.mktemp()))
        spool = self.open_spool(directory, 0)
        message = self.successResultOf(spool.load("000000000001"))
        assert message is not None
        self.assertEqual(message.body, b"hi")
        self.assertEqual(self.enqueue(spool), "000000000002")

    def test_existing_empty_database_as_shard(self) -> None:
        """
        An empty spool database of the current schema, never used, opens as any shard.

        Opening it again does not move its sequence: the claim is idempotent.
        """
        directory = Path(self.mktemp())
        self.successResultOf(SQLiteSpool(directory, run_now).close())
        self.successResultOf(SQLiteSpool(directory, run_now).open())
        spool = self.open_spool(directory, 2)
        self.successResultOf(spool.close())
        spool = self.open_spool(directory, 2)
        self.assertEqual(self.enqueue(spool), "020000000001")
        check = sqlite3.connect(directory / DATABASE_NAME)
        self.addCleanup(check.close)
        self.assertEqual(
            check.execute("SELECT seq FROM sqlite_sequence WHERE name = 'message'").fetchall(),
            [((2 << SHARD_BITS) + 1,)],
        )

    def test_wrong_shard_refused(self) -> None:
        """
        A shard pointed at another shard's directory is refused, naming the database file.

        The database is left as it was: its own shard still opens it.
        """
        directory = Path(self.mktemp())
        spool = self.open_spool(directory, 0)
        queue_id = self.enqueue(spool)
        self.successResultOf(spool.close())
        wrong = SQLiteSpool(directory, run_now, shard=1)
        self.addCleanup(wrong.close)
        failure = self.failureResultOf(wrong.open(), SpoolError)
        self.assertIn(str(directory / DATABASE_NAME), str(failure.value))
        self.assertIn("shard 0, not of shard 1", str(failure.value))
        self.failureResultOf(wrong.enqueue(make_envelope("a@x"), SMALL), SpoolError)
        again = self.open_spool(directory, 0)
        self.assertIsNotNone(self.successResultOf(again.load(queue_id)))
        self.assertEqual(self.enqueue(again), "000000000002")

    def test_higher_shard_refused_as_lower(self) -> None:
        """Shard 0 refuses the directory of shard 1."""
        directory = Path(self.mktemp())
        self.enqueue(self.open_spool(directory, 1))
        wrong = SQLiteSpool(directory, run_now)
        self.addCleanup(wrong.close)
        failure = self.failureResultOf(wrong.open(), SpoolError)
        self.assertIn("shard 1, not of shard 0", str(failure.value))

    def test_emptied_shard_refused(self) -> None:
        """
        A shard's database that holds no message any more still belongs to that shard.

        Its sequence says which shard used it.
        """
        directory = Path(self.mktemp())
        spool = self.open_spool(directory, 0)
        queue_id = self.enqueue(spool)
        self.successResultOf(
            spool.record(queue_id, [RecipientResult(0, RecipientState.DELIVERED)], 1300)
        )
        self.assertEqual(self.successResultOf(spool.count()), 0)
        self.successResultOf(spool.close())
        wrong = SQLiteSpool(directory, run_now, shard=1)
        self.addCleanup(wrong.close)
        self.failureResultOf(wrong.open(), SpoolError)

    def test_ids_used_up(self) -> None:
        """
        A shard whose ids ran out refuses new messages rather than use the next shard's ids.

        Nothing of the refused batch is kept.
        """
        directory = Path(self.mktemp())
        spool = self.open_spool(directory, 1)
        self.successResultOf(spool.close())
        db = sqlite3.connect(directory / DATABASE_NAME)
        db.execute(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = 'message'",
            ((2 << SHARD_BITS) - 2,),
        )
        db.commit()
        db.close()
        self.assertEqual(self.enqueue(spool), "01FFFFFFFFFF")
        failure = self.failureResultOf(spool.enqueue(make_envelope("a@x"), SMALL), SpoolError)
        self.assertIn("used up its queue ids", str(failure.value))
        self.assertEqual(self.successResultOf(spool.count()), 1)

    def test_shard_directory(self) -> None:
        """Shard 0 is the spool directory itself, shard k its C{shard-<k>} subdirectory."""
        root = Path("/var/spool/mdtwist")
        self.assertEqual(shard_directory(root, 0), root)
        self.assertEqual(shard_directory(root, 7), root / "shard-7")
        self.assertEqual(shard_directory(root, 255), root / "shard-255")
        self.assertRaises(ValueError, shard_directory, root, MAX_SHARDS)
        self.assertRaises(ValueError, shard_directory, root, -1)

    def test_shard_of(self) -> None:
        """The first two of the twelve hex digits of a queue id name its shard."""
        self.assertEqual(shard_of("000000000001"), 0)
        self.assertEqual(shard_of("0000000001"), 0)  # an id of ten digits, from before shards
        self.assertEqual(shard_of("00FFFFFFFFFF"), 0)
        self.assertEqual(shard_of("010000000001"), 1)
        self.assertEqual(shard_of("0a0000000001"), 10)
        self.assertEqual(shard_of("FF0000000001"), 255)
        self.assertEqual(shard_of("2A"), 0)
        self.assertIsNone(shard_of("1000000000000"))
        self.assertIsNone(shard_of("junk"))
        self.assertIsNone(shard_of(""))

    def test_existing_shards(self) -> None:
        """
        The shards with a database are found, in order; other names and empty shards are not.
        """
        root = Path(self.mktemp())
        self.assertEqual(existing_shards(root), [])
        self.open_spool(shard_directory(root, 2), 2)
        self.assertEqual(existing_shards(root), [2])
        self.open_spool(root, 0)
        self.open_spool(shard_directory(root, 10), 10)
        for name in ("shard-x", "shard-999", "shard-256", "shard-0", "shard-02", "shard-"):
            (root / name).mkdir()
            (root / name / DATABASE_NAME).write_bytes(b"")
        (root / "shard-3").mkdir()
        (root / "shard-4").write_bytes(b"")
        self.assertEqual(existing_shards(root), [0, 2, 10])

    def test_existing_shards_not_a_directory(self) -> None:
        """A spool path that is a file has no shards."""
        path = Path(self.mktemp())
        path.write_bytes(b"")
        self.assertEqual(existing_shards(path), [])


def _version_1_spool(directory: Path) -> Path:
    # Make a spool directory holding an empty database of schema version 1.
    directory.mkdir()
    db = sqlite3.connect(directory / DATABASE_NAME)
    db.executescript(_SCHEMA_V1)
    db.commit()
    db.close()
    return directory


class HeldTests(SynchronousTestCase):
    """L{SQLiteSpool.held}: the pending recipients held for gateway domains."""

    def test_held(self) -> None:
        """
        Only pending recipients with a gateway-hold route of active messages are listed, with
        their domain; a delivered one and a parked message are not.
        """
        spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(spool.close)
        hold = Recipient("a@gate.test", route=Route.gateway_hold("gate.test"))
        first = self.successResultOf(
            spool.enqueue(
                make_envelope(
                    "x@remote.example",
                    hold,
                    Recipient("b@other.test", route=Route.gateway_hold("other.test")),
                ),
                b"x\r\n",
            )
        )
        second = self.successResultOf(spool.enqueue(make_envelope(hold, hold), b"x\r\n"))
        parked = self.successResultOf(spool.enqueue(make_envelope(hold), b"x\r\n"))
        self.successResultOf(
            spool.record(second, [RecipientResult(0, RecipientState.DELIVERED, "2.0.0")], 0.0)
        )
        self.successResultOf(spool.park(parked, "test"))
        self.assertEqual(
            self.successResultOf(spool.held()),
            [(first, 1, "gate.test"), (first, 2, "other.test"), (second, 1, "gate.test")],
        )
