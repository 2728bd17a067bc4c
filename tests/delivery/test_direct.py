"""Tests for L{mdtwist.delivery.direct}."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist import metrics
from mdtwist.delivery.direct import MAX_SIZE, DeliverFirst, DirectIds, qualifies
from mdtwist.delivery.local import DeliveryStatus, ILocalDelivery, MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.envelope import Envelope, Recipient, RecipientState
from mdtwist.errors import SpoolError
from mdtwist.interfaces import ISpool
from mdtwist.route import Route
from mdtwist.spool.model import Queue
from mdtwist.spool.store import SQLiteSpool, parse_queue_id
from tests.delivery.test_runner import HeldDelivery
from tests.spool.fakes import FakeDirectory, make_account, make_envelope, run_now
from tests.support.logs import capture_logs

BODY = b"Subject: test\r\n\r\nhello\r\n"


def local(address: str, mailbox: str | None = None, **kwargs: object) -> Recipient:
    """
    @param address: the recipient.
    @param mailbox: the account it routes to; C{address} when L{None}.
    @return: a recipient routed to a local mailbox.
    """
    return Recipient(address, route=Route.local(mailbox or address), **kwargs)  # type: ignore[arg-type]


class QualifiesTests(SynchronousTestCase):
    """
    L{qualifies} lets through local mail with few recipients that asks for no success notice.
    """

    def test_local(self) -> None:
        """
        Recipients that all route to local mailboxes, up to the limit, qualify.
        """
        envelope = make_envelope(local("a@example.com"), local("b@example.com"))
        self.assertTrue(qualifies(envelope, 2))
        self.assertFalse(qualifies(envelope, 1))
        self.assertFalse(qualifies(envelope, 0))

    def test_other_routes(self) -> None:
        """
        One recipient that goes elsewhere, or has no stored route, queues the message.
        """
        for other in (
            Recipient("r@remote.example", route=Route.remote()),
            Recipient("p@example.com", route=Route.sharing_peer("peer.example")),
            Recipient("g@gw.example", route=Route.gateway_hold("gw.example")),
            Recipient("n@example.com"),
        ):
            self.assertFalse(qualifies(make_envelope(local("a@example.com"), other), 10), other)

    def test_success_notice(self) -> None:
        """
        A recipient with C{NOTIFY=SUCCESS} queues the message; other notify values do not.
        """
        wants = local("a@example.com", notify=frozenset({"SUCCESS", "FAILURE"}))
        self.assertFalse(qualifies(make_envelope(wants), 10))
        never = local("a@example.com", notify=frozenset({"NEVER"}))
        self.assertTrue(qualifies(make_envelope(never), 10))


class DirectIdsTests(SynchronousTestCase):
    """
    L{DirectIds} hands out ids that grow and are never spool ids.
    """

    def test_ids(self) -> None:
        """
        Two ids in the same microsecond differ; each names the shard and is no queue id.
        """
        ids = DirectIds(3)
        first, second = ids.next(1000.0), ids.next(1000.0)
        self.assertEqual(first, "L3B9ACA00-3")
        self.assertEqual(second, "L3B9ACA01-3")
        self.assertIsNone(parse_queue_id(first))
        self.assertEqual(ids.next(999.0), "L3B9ACA02-3")


class DeliverFirstTests(SynchronousTestCase):
    """
    L{DeliverFirst} with a real spool, queue runner and Maildir delivery in temporary
    directories.
    """

    def setUp(self) -> None:
        """
        Make a spool, a directory with two accounts (one disabled) and a Maildir root, and
        start a queue runner; the time is 1000.
        """
        self.events = capture_logs(self)
        self.counts_before = {o: _delivered_first(o) for o in ("delivered", "queued", "busy")}
        self.clock = Clock()
        self.clock.advance(1000)
        self.spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(lambda: self.spool.close())
        self.directory = FakeDirectory(
            [make_account("alice@example.com"), make_account("carol@example.com", enabled=False)],
            ["example.com"],
        )
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.local: ILocalDelivery = MaildirDelivery(
            self.root, run_now, self.clock, hostname="mx.example"
        )

    def front(self, local: ILocalDelivery | None = None, limit: int = 10) -> DeliverFirst:
        """
        Start a queue runner and put a L{DeliverFirst} in front of the spool.

        @param local: the local delivery; the Maildir one when L{None}.
        @param limit: the most messages in delivery before their reply.
        @return: the L{DeliverFirst}.
        """
        runner = QueueRunner(
            self.spool, self.directory, local or self.local, self.clock, interval=60
        )
        self.addCleanup(lambda: runner.running and runner.stopService())
        runner.startService()
        self.runner = runner
        return DeliverFirst(self.spool, runner, self.clock, max_recipients=5, limit=limit, shard=0)

    def files(self, mailbox: str) -> list[Path]:
        """
        @param mailbox: the local part of an account in C{example.com}.
        @return: the messages in its Maildir's C{new/}.
        """
        new = self.root / "example.com" / mailbox / "Maildir" / "new"
        return sorted(new.iterdir()) if new.exists() else []

    def maillog(self) -> list[str]:
        """
        @return: the text of every mail-log line so far.
        """
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "mdtwist.maillog"]

    def counted(self, outcome: str) -> float:
        """
        @param outcome: an outcome of C{mdtwist_messages_delivered_first_total}.
        @return: how many were counted with it since the test started.
        """
        return _delivered_first(outcome) - self.counts_before[outcome]

    def queued(self) -> int:
        """
        @return: how many messages the spool holds in its active queue.
        """
        return self.successResultOf(self.spool.counts())[Queue.ACTIVE]

    def test_interface(self) -> None:
        """
        L{DeliverFirst} provides L{ISpool}.
        """
        self.assertTrue(verifyObject(ISpool, self.front()))

    def test_delivered_before_reply(self) -> None:
        """
        Local mail is in its mailbox when the id comes back, and the spool never holds it. The
        mail log has the copy's line and the removal.
        """
        front = self.front()
        queue_id = self.successResultOf(
            front.enqueue(make_envelope(local("alice@example.com")), BODY)
        )
        self.assertTrue(queue_id.startswith("L"), queue_id)
        [copy] = self.files("alice")
        self.assertIn(b"hello", copy.read_bytes())
        self.assertEqual(self.queued(), 0)
        lines = self.maillog()
        self.assertEqual(len(lines), 2, lines)
        self.assertRegex(lines[0], rf"^{queue_id}: to=<alice@example.com> .* status=sent ")
        self.assertEqual(lines[1], f"{queue_id}: removed")
        self.assertEqual(front.in_flight, 0)
        self.assertEqual(
            [self.counted(o) for o in ("delivered", "queued", "busy")], [1.0, 0.0, 0.0]
        )

    def test_reply_before_log(self) -> None:
        """
        The id comes back (and the SMTP server logs the message as accepted) before the mail
        log's line about the copy.
        """
        held = HeldDelivery()
        front = self.front(held)
        lines_at_reply: list[int] = []
        d = front.enqueue(make_envelope(local("alice@example.com")), BODY)
        d.addCallback(lambda queue_id: lines_at_reply.append(len(self.maillog())))
        held.answer()
        self.assertEqual(lines_at_reply, [0])
        self.assertEqual(len(self.maillog()), 2)

    def queue_spy(self) -> list[Envelope]:
        """
        Record the envelope of every message the spool is given.

        @return: the list the envelopes are added to.
        """
        given: list[Envelope] = []
        enqueue = self.spool.enqueue

        def spy(envelope: Envelope, body: bytes) -> Deferred[str]:
            given.append(envelope)
            return enqueue(envelope, body)

        self.patch(self.spool, "enqueue", spy)
        return given

    def test_remote_queued(self) -> None:
        """
        A message with a remote recipient is queued as it is, and gets a spool id; the queue
        runner then delivers its local copy.
        """
        given = self.queue_spy()
        front = self.front()
        envelope = make_envelope(
            local("alice@example.com"), Recipient("r@remote.example", route=Route.remote())
        )
        queue_id = self.successResultOf(front.enqueue(envelope, BODY))
        self.assertIsNotNone(parse_queue_id(queue_id))
        self.assertEqual(given, [envelope])
        self.assertEqual(
            [self.counted(o) for o in ("delivered", "queued", "busy")], [0.0, 0.0, 0.0]
        )
        self.assertEqual(len(self.files("alice")), 1)
        self.assertEqual(self.queued(), 1, "the remote recipient stays queued")

    def test_partly_delivered(self) -> None:
        """
        When a copy is not delivered, the message is queued with the delivered copies recorded
        as delivered and the others pending as accepted; the queue runner then attempts only
        those, and never makes the delivered copy again.
        """
        given = self.queue_spy()
        front = self.front()
        envelope = make_envelope(local("alice@example.com"), local("carol@example.com"))
        queue_id = self.successResultOf(front.enqueue(envelope, BODY))
        self.assertIsNotNone(parse_queue_id(queue_id))
        [stored] = given
        alice, carol = stored.recipients
        self.assertEqual(
            (alice.state, alice.attempts, alice.status), (RecipientState.DELIVERED, 1, "2.0.0")
        )
        self.assertEqual(carol, envelope.recipients[1])
        self.assertEqual(len(self.files("alice")), 1)
        lines = [line for line in self.maillog() if line.startswith(f"{queue_id}: to=")]
        self.assertEqual(len(lines), 2, lines)
        # In this order when the spool commits on a thread; here it commits at once, and the
        # queue runner's attempt comes first.
        alice_line, carol_line = sorted(lines)
        self.assertRegex(alice_line, r"to=<alice@example.com> .* attempt=1 dsn=2.0.0 status=sent")
        self.assertRegex(
            carol_line, r"to=<carol@example.com> .* attempt=1 dsn=5.2.1 status=bounced"
        )
        self.assertEqual(self.queued(), 1, "only carol's bounce, to the sender, is left")
        self.assertEqual(
            [self.counted(o) for o in ("delivered", "queued", "busy")], [0.0, 1.0, 0.0]
        )

    def test_temporary_failure(self) -> None:
        """
        A copy that fails for now is queued pending, to be retried by the queue runner.
        """
        held = HeldDelivery()
        front = self.front(held)
        d = front.enqueue(make_envelope(local("alice@example.com")), BODY)
        self.assertNoResult(d)
        self.assertEqual(front.in_flight, 1)
        held.answer(DeliveryStatus.TEMPORARY)
        queue_id = self.successResultOf(d)
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual(message.envelope.recipients[0].state, RecipientState.PENDING)
        self.assertEqual(front.in_flight, 0)

    def test_directory_down(self) -> None:
        """
        A directory that cannot answer queues the message with its recipient pending.
        """
        front = self.front()
        self.directory.unavailable = True
        queue_id = self.successResultOf(
            front.enqueue(make_envelope(local("alice@example.com")), BODY)
        )
        self.assertIsNotNone(parse_queue_id(queue_id))
        self.assertEqual(self.queued(), 1)

    def test_limit(self) -> None:
        """
        While C{limit} messages are in delivery before their reply, the next one is queued at
        once; once they are done, the next one is delivered first again.
        """
        held = HeldDelivery()
        front = self.front(held, limit=1)
        first = front.enqueue(make_envelope(local("alice@example.com")), BODY)
        second = self.successResultOf(
            front.enqueue(make_envelope(local("alice@example.com")), BODY)
        )
        self.assertIsNotNone(parse_queue_id(second))
        self.assertEqual(front.in_flight, 1)
        self.assertEqual(self.counted("busy"), 1.0)
        held.answer()
        self.assertTrue(self.successResultOf(first).startswith("L"))
        self.assertEqual(front.in_flight, 0)
        third = front.enqueue(make_envelope(local("alice@example.com")), BODY)
        self.assertNoResult(third)
        self.assertEqual(front.in_flight, 1)

    def test_large_message_queued(self) -> None:
        """
        A message larger than L{MAX_SIZE} is queued first; one of that size is not.
        """
        front = self.front()
        envelope = make_envelope(local("alice@example.com"))
        body = b"Subject: big\r\n\r\n"
        body += b"x" * (MAX_SIZE - len(body) - 2) + b"\r\n"
        self.assertTrue(self.successResultOf(front.enqueue(envelope, body)).startswith("L"))
        queue_id = self.successResultOf(front.enqueue(envelope, body + b"y\r\n"))
        self.assertIsNotNone(parse_queue_id(queue_id))
        self.assertEqual(len(self.files("alice")), 2, "the queue runner delivered it")

    def test_runner_stopped(self) -> None:
        """
        While the queue runner is stopped, every message is queued.
        """
        front = self.front()
        self.runner.stopService()
        queue_id = self.successResultOf(
            front.enqueue(make_envelope(local("alice@example.com")), BODY)
        )
        self.assertIsNotNone(parse_queue_id(queue_id))
        self.assertEqual(self.files("alice"), [])

    def test_spool_fails(self) -> None:
        """
        When the message must be queued and the spool refuses it, the reply fails as the
        spool's would.
        """
        front = self.front()
        self.patch(self.spool, "enqueue", lambda envelope, body: fail(SpoolError("disk full")))
        envelope = make_envelope(local("alice@example.com"), local("carol@example.com"))
        failure = self.failureResultOf(front.enqueue(envelope, BODY), SpoolError)
        self.assertEqual(str(failure.value), "disk full")
        self.assertEqual(front.in_flight, 0)


def _delivered_first(outcome: str) -> float:
    # The process's count of mdtwist_messages_delivered_first_total with this outcome.
    for _, name, labels, value in metrics.samples():
        if name == "mdtwist_messages_delivered_first_total" and labels == {"outcome": outcome}:
            return value
    return 0.0
