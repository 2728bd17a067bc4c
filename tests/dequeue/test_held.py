"""
Tests for L{mdtwist.dequeue.held}, L{mdtwist.delivery.leases} and the queue runner's handling
of held recipients (never attempted, kept for the gateway's hold time, no delay notice).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery.leases import Leases
from mdtwist.delivery.local import MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.delivery.schedule import QueuePolicy
from mdtwist.dequeue.gateways import DAY
from mdtwist.dequeue.held import CLAIM_WAIT, HeldMail, HeldMessage, group_held
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.route import Route, RouteKind
from mdtwist.spool.model import MessageKind, QueuedMessage, RecipientResult
from mdtwist.spool.store import SQLiteSpool
from tests.spool.fakes import FakeDirectory, make_account, make_envelope, run_now
from tests.support.logs import capture_logs

BODY = b"Subject: held\r\n\r\nhello\r\n"
GATE = "gate.test"
OTHER = "other.test"


def held(address: str) -> Recipient:
    """A recipient held for the gateway domain of its address."""
    return Recipient(address, route=Route.gateway_hold(address.rpartition("@")[2]))


class RemoteFake:
    """A remote delivery whose calls the test answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[QueuedMessage, Sequence[int], Deferred[list[RecipientResult]]]] = []

    def __call__(
        self, message: QueuedMessage, positions: Sequence[int]
    ) -> Deferred[list[RecipientResult]]:
        d: Deferred[list[RecipientResult]] = Deferred()
        self.calls.append((message, positions, d))
        return d

    def answer(
        self, state: RecipientState = RecipientState.DELIVERED, status: str = "2.0.0"
    ) -> None:
        _, positions, d = self.calls.pop(0)
        d.callback(
            [RecipientResult(p, state, status, f"{status} reply", "gw.example") for p in positions]
        )


class _Setup(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(lambda: self.spool.close())
        self.directory = FakeDirectory([make_account("alice@example.com")], ["example.com"])
        root = Path(self.mktemp())
        root.mkdir()
        self.local = MaildirDelivery(root, run_now, self.clock, hostname="mx.example")
        self.leases = Leases()
        self.remote = RemoteFake()
        self.hold_days = {GATE: 7 * DAY, OTHER: 7 * DAY}
        self.runner = QueueRunner(
            self.spool,
            self.directory,
            self.local,
            self.clock,
            interval=60,
            policy=QueuePolicy(lifetime=2 * DAY),
            hostname="mx.example",
            hold_time=self.hold_days.get,
            leases=self.leases,
        )
        self.held = HeldMail(self.spool, self.runner, self.leases, self.clock, self.remote)

    def enqueue(self, *recipients: str | Recipient) -> str:
        return self.successResultOf(self.spool.enqueue(make_envelope(*recipients), BODY))

    def load(self, queue_id: str) -> QueuedMessage | None:
        return self.successResultOf(self.spool.load(queue_id))

    def states(self, queue_id: str) -> list[str]:
        message = self.load(queue_id)
        assert message is not None
        return [r.state.value for r in message.envelope.recipients]

    def notices(self) -> list[QueuedMessage]:
        found = []
        for entry in self.successResultOf(self.spool.list()):
            message = self.load(entry.queue_id)
            if message is not None and message.kind is MessageKind.NOTICE:
                found.append(message)
        return found

    def start_runner(self) -> None:
        self.runner.startService()
        self.addCleanup(self.runner.stopService)


class LeasesTests(SynchronousTestCase):
    """L{Leases}: one holder per message."""

    def test_one_holder(self) -> None:
        """A lease taken by one holder is refused to another until given back."""
        leases = Leases()
        self.assertTrue(leases.take("q1", "a"))
        self.assertTrue(leases.take("q1", "a"))
        self.assertFalse(leases.take("q1", "b"))
        leases.give_back("q1", "b")
        self.assertEqual(leases.holder("q1"), "a")
        leases.give_back("q1", "a")
        self.assertTrue(leases.take("q1", "b"))

    def test_give_back_all(self) -> None:
        """Everything of one holder is given back at once, nothing of another."""
        leases = Leases()
        leases.take("q1", "a")
        leases.take("q2", "a")
        leases.take("q3", "b")
        self.assertEqual(sorted(leases.give_back_all("a")), ["q1", "q2"])
        self.assertEqual(leases.holder("q3"), "b")
        self.assertIsNone(leases.holder("q1"))

    def test_when_free(self) -> None:
        """
        A free lease calls back at once; a taken one when its holder gives it back (alone or
        with all its leases), in order, and a callback may take the lease again.
        """
        leases = Leases()
        called: list[str] = []
        leases.when_free("q1", lambda: called.append("free"))
        self.assertEqual(called, ["free"])
        leases.take("q1", "a")
        leases.take("q2", "a")

        def first() -> None:
            called.append("first")
            leases.take("q1", "b")

        leases.when_free("q1", first)
        leases.when_free("q1", lambda: called.append("second"))
        leases.when_free("q2", lambda: called.append("q2"))
        leases.give_back("q1", "someone else")
        self.assertEqual(called, ["free"])
        leases.give_back("q1", "a")
        self.assertEqual(called, ["free", "first", "second"])
        self.assertEqual(leases.holder("q1"), "b")
        leases.give_back_all("a")
        self.assertEqual(called, ["free", "first", "second", "q2"])


class GroupHeldTests(SynchronousTestCase):
    """L{group_held}."""

    def test_group(self) -> None:
        """Held rows of the asked domains group by message, in row order."""
        rows = [("q1", 0, GATE), ("q1", 2, OTHER), ("q1", 3, GATE), ("q2", 1, OTHER)]
        self.assertEqual(group_held(rows, {GATE}), [HeldMessage("q1", (0, 3))])
        self.assertEqual(
            group_held(rows, {GATE, OTHER}),
            [HeldMessage("q1", (0, 2, 3)), HeldMessage("q2", (1,))],
        )


class RunnerHoldTests(_Setup):
    """The queue runner and held recipients."""

    def test_never_delivered_and_no_delay_notice(self) -> None:
        """
        The runner delivers the local recipient and leaves the held one pending, past the
        point where a delay notice would go out: no notice about the held recipient.
        """
        queue_id = self.enqueue("alice@example.com", held(f"carol@{GATE}"))
        self.start_runner()
        self.assertEqual(self.states(queue_id), ["delivered", "pending"])
        for _ in range(30):
            self.clock.advance(3600)
        self.assertEqual(self.states(queue_id), ["delivered", "pending"])
        self.assertEqual(self.notices(), [])
        self.assertEqual(self.remote.calls, [])

    def test_kept_for_hold_time_then_bounced(self) -> None:
        """
        A held recipient outlives the queue's lifetime (2 days) and fails with 4.4.7 once the
        gateway's hold time (7 days) is over; the sender gets one failure notice.
        """
        queue_id = self.enqueue(held(f"carol@{GATE}"))
        self.start_runner()
        self.clock.advance(3 * DAY)
        self.assertEqual(self.states(queue_id), ["pending"])
        self.clock.advance(4 * DAY + 3600)
        self.assertIsNone(self.load(queue_id))
        notices = self.notices()
        self.assertEqual(len(notices), 1)
        assert notices[0].body is not None
        self.assertIn(b"4.4.7", notices[0].body)
        self.assertIn(b"not released", notices[0].body)

    def test_runner_skips_leased_message(self) -> None:
        """A message leased by a release is not attempted by the runner until it is free."""
        queue_id = self.enqueue("alice@example.com")
        self.leases.take(queue_id, "atrn-1")
        self.start_runner()
        self.assertEqual(self.states(queue_id), ["pending"])
        self.leases.give_back(queue_id, "atrn-1")
        self.runner.run_now()
        self.assertIsNone(self.load(queue_id))


class ClaimRecordTests(_Setup):
    """L{HeldMail.claim}, L{HeldMail.record}, L{HeldMail.give_back}."""

    def test_claim_is_exclusive(self) -> None:
        """
        A claim leases the held messages of the domains; a second holder gets none of them
        (after waiting L{CLAIM_WAIT} seconds for them), a claim for another domain only its own.
        """
        first = self.enqueue(held(f"a@{GATE}"), held(f"b@{OTHER}"))
        second = self.enqueue(held(f"c@{OTHER}"))
        claimed = self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1")))
        self.assertEqual(claimed, [HeldMessage(first, (0,))])
        again = Deferred.fromCoroutine(self.held.claim([GATE, OTHER], "atrn-2"))
        self.clock.advance(CLAIM_WAIT)
        self.assertEqual(self.successResultOf(again), [HeldMessage(second, (0,))])

    def test_record_results(self) -> None:
        """
        250 removes, 5xx bounces (one DSN), 4xx keeps it held; the lease is given back.
        """
        queue_id = self.enqueue(held(f"a@{GATE}"), held(f"b@{GATE}"), held(f"c@{GATE}"))
        self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1")))
        results = [
            RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "250 ok"),
            RecipientResult(1, RecipientState.FAILED, "5.1.1", "550 5.1.1 no such user"),
            RecipientResult(2, RecipientState.PENDING, "4.2.0", "450 4.2.0 later"),
        ]
        removed = self.successResultOf(
            Deferred.fromCoroutine(self.held.record(queue_id, "atrn-1", results))
        )
        self.assertFalse(removed)
        self.assertEqual(self.states(queue_id), ["delivered", "failed", "pending"])
        self.assertIsNone(self.leases.holder(queue_id))
        self.assertEqual(len(self.notices()), 1)

    def test_record_without_lease_ignored(self) -> None:
        """Results from a holder without the lease are not recorded."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        results = [RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "250 ok")]
        self.assertFalse(
            self.successResultOf(Deferred.fromCoroutine(self.held.record(queue_id, "x", results)))
        )
        self.assertEqual(self.states(queue_id), ["pending"])

    def test_claim_waits_for_a_short_lease(self) -> None:
        """
        A message the queue runner has leased just now is claimed as soon as the runner gives
        it back; one still leased after L{CLAIM_WAIT} seconds is left out.
        """
        first = self.enqueue(held(f"a@{GATE}"))
        second = self.enqueue(held(f"b@{GATE}"))
        self.leases.take(first, "queue-runner")
        self.leases.take(second, "operator")
        claimed = Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1"))
        self.assertNoResult(claimed)
        self.leases.give_back(first, "queue-runner")
        self.assertNoResult(claimed)
        self.clock.advance(CLAIM_WAIT)
        self.assertEqual(self.successResultOf(claimed), [HeldMessage(first, (0,))])
        self.assertEqual(self.leases.holder(first), "atrn-1")
        self.assertEqual(self.leases.holder(second), "operator")

    def test_give_back_keeps_held(self) -> None:
        """Given back, the messages are claimable again and unchanged."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1")))
        self.held.give_back("atrn-1")
        again = self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-2")))
        self.assertEqual(again, [HeldMessage(queue_id, (0,))])
        self.assertEqual(self.states(queue_id), ["pending"])


class EtrnReleaseTests(_Setup):
    """L{HeldMail.etrn}: counted at once, delivered in the background over new connections."""

    def test_release_to_target(self) -> None:
        """
        ETRN counts the held messages and hands their held recipients, with the target route,
        to remote delivery; the local recipient is not touched; delivered, the message leaves.
        """
        queue_id = self.enqueue(held(f"a@{GATE}"), held(f"b@{OTHER}"))
        target = Route.sharing_peer("[192.0.2.9]:2525")
        count = self.successResultOf(self.held.etrn([GATE], {GATE: target}))
        self.assertEqual(count, 1)
        message, positions, _ = self.remote.calls[0]
        self.assertEqual(list(positions), [0])
        self.assertEqual(message.envelope.recipients[0].route, target)
        self.assertEqual(message.envelope.recipients[1].route, Route.gateway_hold(OTHER))
        self.remote.answer()
        self.assertEqual(self.states(queue_id), ["delivered", "pending"])
        self.assertIsNone(self.leases.holder(queue_id))

    def test_nothing_waiting(self) -> None:
        """No held mail: the count is 0 and nothing is delivered."""
        self.enqueue(held(f"b@{OTHER}"))
        self.assertEqual(self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()})), 0)
        self.assertEqual(self.remote.calls, [])

    def test_repeated_etrn_sends_once(self) -> None:
        """
        An ETRN while the first one's delivery still runs counts the message again but does
        not send it a second time.
        """
        self.enqueue(held(f"a@{GATE}"))
        route = {GATE: Route.remote()}
        self.assertEqual(self.successResultOf(self.held.etrn([GATE], route)), 1)
        self.assertEqual(self.successResultOf(self.held.etrn([GATE], route)), 1)
        self.assertEqual(len(self.remote.calls), 1)
        self.remote.answer()
        self.assertEqual(self.remote.calls, [])

    def test_repeated_etrn_after_a_temporary_failure(self) -> None:
        """
        An ETRN that came while the first one's delivery ran, which then failed for now, sends
        the message once more when the first gives it back.
        """
        queue_id = self.enqueue(held(f"a@{GATE}"))
        route = {GATE: Route.remote()}
        self.successResultOf(self.held.etrn([GATE], route))
        self.successResultOf(self.held.etrn([GATE], route))
        self.remote.answer(RecipientState.PENDING, "4.4.1")
        self.assertEqual(len(self.remote.calls), 1)
        self.remote.answer()
        self.assertIsNone(self.load(queue_id))

    def test_released_after_the_runner_gives_it_back(self) -> None:
        """
        A message the queue runner is looking at when the ETRN comes is released as soon as the
        runner gives its lease back, not left held.
        """
        queue_id = self.enqueue(held(f"a@{GATE}"))
        self.leases.take(queue_id, "queue-runner")
        self.assertEqual(self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()})), 1)
        self.assertEqual(self.remote.calls, [])
        self.leases.give_back(queue_id, "queue-runner")
        self.assertEqual(len(self.remote.calls), 1)
        self.remote.answer()
        self.assertIsNone(self.load(queue_id))

    def test_temporary_failure_stays_held(self) -> None:
        """A 4xx from the gateway's host keeps the recipient held, with no notice."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()}))
        self.remote.answer(RecipientState.PENDING, "4.4.1")
        message = self.load(queue_id)
        assert message is not None
        self.assertEqual(message.envelope.recipients[0].state, RecipientState.PENDING)
        self.assertEqual(message.envelope.recipients[0].route.kind, RouteKind.GATEWAY_HOLD)  # type: ignore[union-attr]
        self.assertEqual(self.notices(), [])

    def test_no_route_stays_held(self) -> None:
        """
        A permanent failure that is our own routing decision (the domain's MX is this server)
        keeps the recipient held, with no notice; a 5xx reply of the gateway's host bounces.
        """
        queue_id = self.enqueue(held(f"a@{GATE}"), held(f"b@{GATE}"))
        self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()}))
        _, _, d = self.remote.calls.pop(0)
        d.callback(
            [
                RecipientResult(0, RecipientState.FAILED, "5.4.6", "mail loops back to myself"),
                RecipientResult(1, RecipientState.FAILED, "5.1.1", "550 5.1.1 no such user"),
            ]
        )
        self.assertEqual(self.states(queue_id), ["pending", "failed"])
        self.assertEqual(len(self.notices()), 1)

    def test_not_while_atrn_holds_it(self) -> None:
        """A message leased to an ATRN session is not released by ETRN meanwhile."""
        self.enqueue(held(f"a@{GATE}"))
        self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1")))
        self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()}))
        self.assertEqual(self.remote.calls, [])

    def test_wait(self) -> None:
        """L{HeldMail.wait} fires once the background releases have ended."""
        self.enqueue(held(f"a@{GATE}"))
        self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()}))
        waiting = self.held.wait()
        self.assertNoResult(waiting)
        self.remote.answer()
        self.successResultOf(waiting)
        self.assertIsNone(self.successResultOf(succeed(None)))


class HeldMailLogTests(_Setup):
    """
    Releases of held mail (ETRN over a new connection, ATRN over the turned one) are in the
    mail log like the queue runner's own deliveries.
    """

    def test_etrn_release_logged(self) -> None:
        """
        Each released recipient gets its delivery line (relay, DSN code, status, reply).
        """
        events = capture_logs(self)
        queue_id = self.enqueue(held(f"a@{GATE}"))
        self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()}))
        self.remote.answer()
        lines = [
            formatEvent(e)
            for e in events
            if e.get("log_namespace") == "mdtwist.maillog" and e.get("queue_id") == queue_id
        ]
        self.assertEqual(
            lines,
            [
                f"{queue_id}: to=<a@{GATE}> mailbox=<a@{GATE}> relay=gw.example[-] delay=0.00"
                " attempt=1 dsn=2.0.0 status=sent (2.0.0 reply) next=-",
                f"{queue_id}: removed",
            ],
        )

    def test_atrn_results_logged(self) -> None:
        """
        Results recorded for an ATRN session get their lines too: a bounce, a deferral.
        """
        events = capture_logs(self)
        queue_id = self.enqueue(held(f"a@{GATE}"), held(f"b@{GATE}"))
        self.successResultOf(Deferred.fromCoroutine(self.held.claim([GATE], "atrn-1")))
        results = [
            RecipientResult(0, RecipientState.FAILED, "5.1.1", "550 5.1.1 no such user"),
            RecipientResult(1, RecipientState.PENDING, "4.2.0", "450 4.2.0 later"),
        ]
        self.successResultOf(Deferred.fromCoroutine(self.held.record(queue_id, "atrn-1", results)))
        statuses = [
            e["status"]
            for e in events
            if e.get("log_namespace") == "mdtwist.maillog" and "status" in e
        ]
        self.assertEqual(statuses, ["bounced", "deferred"])
