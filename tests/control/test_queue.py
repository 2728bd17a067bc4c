"""Tests for L{mdtwist.control.queue}: the operator's queue actions in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.commands import ControlError
from mdtwist.control.queue import (
    BOUNCE_REASON,
    QueueAct,
    QueueActions,
    combine_queue_act,
    register_queue_commands,
)
from mdtwist.control.registry import ControlDispatcher, ControlRegistry
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.local import MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.spool.model import MessageKind, Queue
from mdtwist.spool.store import SQLiteSpool
from tests.spool.fakes import FakeDirectory, make_account, make_envelope, run_now

BODY = b"Subject: hi\r\n\r\nhello\r\n"


class WakeCounter(QueueRunner):
    """A queue runner that counts its wake-ups instead of delivering."""

    wakes = 0

    def wake(self) -> None:
        """Count."""
        self.wakes += 1


class QueueActionsTests(SynchronousTestCase):
    """
    Shard 0's actions on a real spool; the runner only makes notices.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(5000)
        self.spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(self.spool.close)
        root = Path(self.mktemp())
        root.mkdir()
        directory = FakeDirectory([make_account("alice@example.com")], ["example.com"])
        self.runner = WakeCounter(
            self.spool,
            directory,
            MaildirDelivery(root, run_now, self.clock),
            self.clock,
            hostname="mx.example",
        )
        self.actions = QueueActions(0, self.spool, self.runner, self.clock)

    def enqueue(self, *recipients: str, sender: str = "s@remote.example") -> str:
        envelope = make_envelope(*recipients, sender=sender)
        return self.successResultOf(self.spool.enqueue(envelope, BODY))

    def act(self, action: str, *ids: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.successResultOf(self.actions.act(action, list(ids)))
        return answer

    def test_hold_release_wakes(self) -> None:
        """
        Hold and release answer with what they did; a release wakes the runner, a hold does
        not. Ids of other shards are left alone (not even refused).
        """
        queue_id = self.enqueue("r@remote.example")
        other_shard = "010000000001"
        self.assertEqual(
            self.act("hold", queue_id, other_shard),
            {"done": [queue_id], "refused": [], "shards": [0], "missing": []},
        )
        self.assertEqual(self.runner.wakes, 0)
        answer = self.act("release", queue_id, "0000000000FF")
        self.assertEqual(answer["done"], [queue_id])
        self.assertEqual(
            answer["refused"], [{"queue_id": "0000000000FF", "reason": "no such message"}]
        )
        self.assertEqual(self.runner.wakes, 1)

    def test_leases(self) -> None:
        """
        A message whose lease another holder has (the runner delivering it) is not deleted or
        bounced; the operator's own leases are given back after the action.
        """
        leases = Leases()
        actions = QueueActions(0, self.spool, self.runner, self.clock, leases)
        busy = self.enqueue("r@remote.example")
        free = self.enqueue("q@remote.example")
        self.assertTrue(leases.take(busy, "queue-runner"))
        answer = self.successResultOf(actions.act("delete", [busy, free.lower()]))
        self.assertEqual(answer["done"], [free])
        self.assertEqual(
            answer["refused"], [{"queue_id": busy, "reason": "being delivered now; try again"}]
        )
        self.assertEqual((leases.holder(busy), leases.holder(free)), ("queue-runner", None))
        # Holding needs no lease: an attempt under way is recorded on the held message.
        self.assertEqual(self.successResultOf(actions.act("hold", [busy]))["done"], [busy])
        leases.give_back(busy, "queue-runner")
        self.assertEqual(self.successResultOf(actions.act("bounce", [busy]))["done"], [busy])
        self.assertIsNone(leases.holder(busy))

    def test_bounce(self) -> None:
        """
        A bounced message leaves the queue and its sender gets a failure notice with the
        operator's reason for every pending recipient.
        """
        queue_id = self.enqueue("r@remote.example", "q@remote.example")
        self.assertEqual(self.act("bounce", queue_id)["done"], [queue_id])
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        [entry] = self.successResultOf(self.spool.list())
        self.assertIs(entry.kind, MessageKind.NOTICE)
        notice = self.successResultOf(self.spool.load(entry.queue_id))
        assert notice is not None and notice.body is not None
        self.assertEqual([r.address for r in notice.envelope.recipients], ["s@remote.example"])
        self.assertIn(BOUNCE_REASON.encode(), notice.body)
        self.assertIn(b"Status: 5.0.0", notice.body)

    def test_bounce_without_notice(self) -> None:
        """
        A message from the null sender, or a notice of ours, is simply gone: nobody to tell,
        and nothing parked.
        """
        queue_id = self.enqueue("r@remote.example", sender="")
        self.assertEqual(self.act("bounce", queue_id)["done"], [queue_id])
        self.assertEqual(self.successResultOf(self.spool.list()), [])

    def test_bounce_held_and_refusals(self) -> None:
        """
        A held message can be bounced; a parked one and an unknown one are refused.
        """
        held = self.enqueue("r@remote.example", sender="")
        parked = self.enqueue("r@remote.example")
        self.act("hold", held)
        self.successResultOf(self.spool.park(parked, "mail loop"))
        answer = self.act("bounce", held, parked, "0000000000FF")
        self.assertEqual(answer["done"], [held])
        self.assertEqual(
            answer["refused"],
            [
                {"queue_id": parked, "reason": "in the bad queue (delete or requeue it)"},
                {"queue_id": "0000000000FF", "reason": "no such message"},
            ],
        )
        [entry] = self.successResultOf(self.spool.list())
        self.assertIs(entry.queue, Queue.BAD)

    def test_bad_requests(self) -> None:
        """
        An unknown action or too many ids is a refusal for the operator.
        """
        with self.assertRaises(ControlError):
            self.actions.act("frobnicate", [])
        with self.assertRaises(ControlError):
            self.actions.act("hold", ["000000000001"] * 201)

    def test_registered(self) -> None:
        """
        The command is registered to be combined over the processes, and runs through a
        dispatcher.
        """
        registry = ControlRegistry()
        register_queue_commands(
            registry, shard=0, spool=self.spool, runner=self.runner, clock=self.clock
        )
        found = registry.find(QueueAct.commandName)
        assert found is not None
        self.assertIs(found.combine, combine_queue_act)
        queue_id = self.enqueue("r@remote.example")
        dispatcher = ControlDispatcher(registry, shard=0)
        answer = self.successResultOf(
            dispatcher.call(QueueAct, {"action": "delete", "ids": [queue_id]})
        )
        self.assertEqual(answer["done"], [queue_id])
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))


class CombineTests(SynchronousTestCase):
    """
    L{combine_queue_act}.
    """

    def test_combine(self) -> None:
        """
        Done and refused ids are joined in shard order; a silent process is missing.
        """
        answers: dict[int, dict[str, Any] | None] = {
            1: {
                "done": ["010000000001"],
                "refused": [{"queue_id": "010000000002", "reason": "not held"}],
                "shards": [1],
                "missing": [],
            },
            0: {"done": ["000000000001"], "refused": [], "shards": [0], "missing": []},
            2: None,
        }
        self.assertEqual(
            combine_queue_act(answers),
            {
                "done": ["000000000001", "010000000001"],
                "refused": [{"queue_id": "010000000002", "reason": "not held"}],
                "shards": [0, 1],
                "missing": [2],
            },
        )
