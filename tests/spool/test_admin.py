"""Tests for L{mdtwist.spool.admin}: choosing messages and the operator's changes."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.envelope import RecipientState
from mdtwist.spool.admin import Action, Selection, administer, queue_stats, select
from mdtwist.spool.model import Queue, RecipientResult
from mdtwist.spool.store import BAD_QUEUE_HEADER, BODIES_NAME, SpoolReader, SQLiteSpool
from tests.spool.fakes import make_envelope, run_now

BODY = b"Subject: hi\r\n\r\nhello\r\n"


class AdminTests(SynchronousTestCase):
    """
    A spool with an active message to two domains, one from the null sender, and a parked
    one; the operator's changes go through L{SQLiteSpool.administer}.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.spool = SQLiteSpool(self.directory, run_now, inline_limit=100)
        self.addCleanup(self.spool.close)
        self.first = self.enqueue(make_envelope("a@one.example", "B@Two.example"))
        self.second = self.enqueue(make_envelope("c@one.example", sender=""))
        self.parked = self.enqueue(make_envelope("d@three.example"), BODY * 10)
        self.successResultOf(
            self.spool.record(
                self.parked,
                [RecipientResult(0, RecipientState.FAILED, "5.1.1", "no such user")],
                0.0,
                park="undeliverable delivery status notification",
            )
        )

    def enqueue(self, envelope: object, body: bytes = BODY) -> str:
        return self.successResultOf(self.spool.enqueue(envelope, body))  # type: ignore[arg-type]

    def select(self, **conditions: object) -> list[str]:
        reader = SpoolReader(self.directory)
        try:
            selection = Selection(**conditions)  # type: ignore[arg-type]
            return [entry.queue_id for entry in reader.read(lambda db: select(db, selection))]
        finally:
            reader.close()

    def act(self, action: Action, *ids: str, now: float = 5000.0) -> tuple[list[str], list[str]]:
        done, refused = self.successResultOf(
            self.spool.administer(
                lambda db, bodies: administer(db, bodies, action, ids, now, inline_limit=100)
            )
        )
        return done, [f"{r.queue_id}: {r.reason}" for r in refused]

    def queue_of(self, queue_id: str) -> Queue:
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        return message.queue

    def test_select(self) -> None:
        """
        Each condition narrows the choice; addresses and domains match without regard to case;
        C{%} and C{_} in a domain are plain characters.
        """
        everything = [self.first, self.second, self.parked]
        self.assertEqual(self.select(), everything)
        self.assertEqual(self.select(ids=(self.second, self.parked)), [self.second, self.parked])
        self.assertEqual(self.select(sender=""), [self.second])
        self.assertEqual(self.select(sender="S@REMOTE.example"), [self.first, self.parked])
        self.assertEqual(self.select(recipient="b@two.EXAMPLE"), [self.first])
        self.assertEqual(self.select(domain="ONE.example"), [self.first, self.second])
        self.assertEqual(self.select(domain="one.example", sender=""), [self.second])
        self.assertEqual(self.select(domain="%.example"), [])
        self.assertEqual(self.select(queue=Queue.BAD), [self.parked])
        self.assertTrue(Selection().everything)
        self.assertFalse(Selection(queue=Queue.BAD).everything)

    def test_select_bad_id(self) -> None:
        """
        An id that is not one is refused.
        """
        reader = SpoolReader(self.directory)
        self.addCleanup(reader.close)
        with self.assertRaises(ValueError):
            reader.read(lambda db: select(db, Selection(ids=("xyz!",))))

    def test_hold_and_release(self) -> None:
        """
        A held message is not due, whatever the time; released, it is due at once.
        """
        self.assertEqual(self.act(Action.HOLD, self.first), ([self.first], []))
        self.assertIs(self.queue_of(self.first), Queue.HOLD)
        self.assertEqual(self.successResultOf(self.spool.due(10**9, 10)), [self.second])
        self.assertEqual(
            self.act(Action.HOLD, self.first, self.parked),
            ([], [f"{self.first}: already held", f"{self.parked}: in the bad queue"]),
        )
        self.assertEqual(
            self.act(Action.RELEASE, self.first, self.second, now=2000.0)[0], [self.first]
        )
        # Due by their next attempt: the second since 1000, the released one since 2000.
        self.assertEqual(
            self.successResultOf(self.spool.due(2000.0, 10)), [self.second, self.first]
        )

    def test_held_message_keeps_an_attempt(self) -> None:
        """
        An attempt that started before the hold is still recorded.
        """
        self.act(Action.HOLD, self.first)
        self.successResultOf(
            self.spool.record(
                self.first, [RecipientResult(0, RecipientState.DELIVERED, "2.0.0")], 9000.0
            )
        )
        message = self.successResultOf(self.spool.load(self.first))
        assert message is not None
        self.assertEqual(message.envelope.recipients[0].state, RecipientState.DELIVERED)
        self.assertIs(message.queue, Queue.HOLD)

    def test_retry(self) -> None:
        """
        A retried message is due now; held and parked ones are refused with advice.
        """
        self.act(Action.HOLD, self.second)
        self.assertEqual(
            self.act(Action.RETRY, self.first, self.second, self.parked, "0000000000FF", now=1.0),
            (
                [self.first],
                [
                    f"{self.second}: held (release it)",
                    f"{self.parked}: in the bad queue (requeue it)",
                    "0000000000FF: no such message",
                ],
            ),
        )
        self.assertEqual(self.successResultOf(self.spool.due(1.0, 10)), [self.first])

    def test_delete(self) -> None:
        """
        A deleted message and its body file are gone.
        """
        bodies = self.directory / BODIES_NAME
        self.assertEqual(len(list(bodies.iterdir())), 1)
        self.assertEqual(
            self.act(Action.DELETE, self.parked, self.first), ([self.parked, self.first], [])
        )
        self.assertEqual(self.select(), [self.second])
        self.assertEqual(list(bodies.iterdir()), [])

    def test_requeue(self) -> None:
        """
        A requeued message is active and due now with a new lifetime, its failed recipients
        pending again, and its body without the bad-queue line.
        """
        self.assertEqual(
            self.act(Action.REQUEUE, self.parked, self.first, now=7000.0),
            ([self.parked], [f"{self.first}: not in the bad queue"]),
        )
        message = self.successResultOf(self.spool.load(self.parked))
        assert message is not None and message.body is not None
        self.assertEqual((message.queue, message.reason), (Queue.ACTIVE, None))
        self.assertEqual(message.envelope.arrival, 7000.0)
        self.assertEqual(message.envelope.recipients[0].state, RecipientState.PENDING)
        self.assertEqual(message.body, BODY * 10)
        self.assertNotIn(BAD_QUEUE_HEADER.encode(), message.body)
        self.assertEqual(message.size, len(BODY * 10))
        self.assertIn(self.parked, self.successResultOf(self.spool.due(7000.0, 10)))

    def test_requeue_large_body(self) -> None:
        """
        A large requeued body is written to a new file; the old one goes.
        """
        big = self.enqueue(make_envelope("e@one.example"), BODY * 50)
        self.successResultOf(self.spool.park(big, "mail loop"))
        bodies = self.directory / BODIES_NAME
        before = {p.name for p in bodies.iterdir()}
        self.act(Action.REQUEUE, big)
        after = {p.name for p in bodies.iterdir()}
        self.assertEqual(len(after), len(before))
        self.assertNotEqual(after, before)
        message = self.successResultOf(self.spool.load(big))
        assert message is not None
        self.assertEqual(message.body, BODY * 50)

    def test_stats(self) -> None:
        """
        The queue sizes and their oldest arrivals; empty queues count 0 and have no age.
        """
        self.act(Action.HOLD, self.second)
        stats = self.successResultOf(self.spool.inspect(queue_stats))
        self.assertEqual(stats.counts, {Queue.ACTIVE: 1, Queue.HOLD: 1, Queue.BAD: 1})
        self.assertEqual(
            stats.oldest, {Queue.ACTIVE: 1000.0, Queue.HOLD: 1000.0, Queue.BAD: 1000.0}
        )
        self.act(Action.DELETE, self.first)
        stats = self.successResultOf(self.spool.inspect(queue_stats))
        self.assertEqual(stats.counts[Queue.ACTIVE], 0)
        self.assertNotIn(Queue.ACTIVE, stats.oldest)
