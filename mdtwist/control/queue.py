# -*- test-case-name: tests.control.test_queue -*-
"""
The queue commands of the control channel: hold, release, retry, requeue, delete and bounce
messages by queue id (C{mdtwistctl queue ...}).

The command line chooses the messages (reading the spool, L{mdtwist.spool.admin.select}) and
sends their ids in batches, so it can show its progress. Every process receives every batch
and acts on the ids of its own spool shard (a queue id names its shard); the answers are
combined.

Delete and bounce take each message's lease (L{mdtwist.delivery.leases}), so a message that the
queue runner or a gateway release is delivering right now is refused ("being delivered now; try
again") rather than removed under it. The other actions need no lease: an attempt that is under
way when a message is held, released or retried is still recorded as usual (a retry it
overlaps is then simply superseded by the attempt's own schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp

from mdtwist.control.commands import ControlCommand, ControlError
from mdtwist.control.registry import Answer, ControlRegistry
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.runner import QueueRunner
from mdtwist.envelope import RecipientState
from mdtwist.errors import SpoolError
from mdtwist.spool.admin import Action, Refusal, administer
from mdtwist.spool.model import Queue, RecipientResult
from mdtwist.spool.store import SQLiteSpool, shard_of

_log = Logger()

T = TypeVar("T")

#: The enhanced status code and the reason of a recipient bounced by the operator.
BOUNCE_STATUS = "5.0.0"
BOUNCE_REASON = "delivery cancelled by the postmaster"

#: The most ids one command carries (AMP values are at most 64 KiB).
BATCH = 200

#: The lease holder name of the operator's actions.
_OPERATOR = "operator"

_REFUSED = amp.AmpList([(b"queue_id", amp.Unicode()), (b"reason", amp.Unicode())])


class QueueAct(ControlCommand):
    """
    Carry an action out on queued messages: C{action} is an L{Action} value, C{ids} at most
    L{BATCH} queue ids.

    Response: C{done}, the ids it was done to; C{refused}, the others that a process holds,
    each with its reason; C{shards}, the shards that answered, and C{missing}, those whose
    process did not (their ids are in neither list).
    """

    commandName = b"queue-act"  # noqa: N815 - the name AMP reads
    arguments = [  # noqa: RUF012 - the name AMP reads
        (b"action", amp.Unicode()),
        (b"ids", amp.ListOf(amp.Unicode())),
    ]
    response = [  # noqa: RUF012 - the name AMP reads
        (b"done", amp.ListOf(amp.Unicode())),
        (b"refused", _REFUSED),
        (b"shards", amp.ListOf(amp.Integer())),
        (b"missing", amp.ListOf(amp.Integer())),
    ]


def register_queue_commands(
    registry: ControlRegistry,
    *,
    shard: int,
    spool: SQLiteSpool,
    runner: QueueRunner,
    clock: IReactorTime,
    leases: Leases | None = None,
    forget_dead_hosts: Callable[[], object] | None = None,
) -> None:
    """
    Register L{QueueAct} for one process.

    @param registry: where.
    @param shard: this process's spool shard.
    @param spool: its spool.
    @param runner: its queue runner (woken after a release, retry or requeue; makes the
        notices of a bounce).
    @param clock: the time of the changes.
    @param leases: the message leases of its shard (shared with the runner).
    @param forget_dead_hosts: empties remote delivery's dead-host cache, before a retry,
        release or requeue wakes the runner (the operator wants the attempt made now).
    """
    act = QueueActions(shard, spool, runner, clock, leases, forget_dead_hosts)
    registry.register(QueueAct, act.act, combine=combine_queue_act)


class QueueActions:
    """
    Carries the operator's actions out on one process's spool shard.
    """

    def __init__(
        self,
        shard: int,
        spool: SQLiteSpool,
        runner: QueueRunner,
        clock: IReactorTime,
        leases: Leases | None = None,
        forget_dead_hosts: Callable[[], object] | None = None,
    ) -> None:
        """
        @param shard: this process's spool shard.
        @param spool: its spool.
        @param runner: its queue runner.
        @param clock: the time of the changes.
        @param leases: the message leases of the shard; L{None}: none are taken.
        @param forget_dead_hosts: empties the dead-host cache before the runner is woken.
        """
        self._shard = shard
        self._spool = spool
        self._runner = runner
        self._clock = clock
        self._leases = leases
        self._forget_dead_hosts = forget_dead_hosts

    def act(self, action: str, ids: list[str]) -> Deferred[Answer]:
        """
        The handler of L{QueueAct}.

        @param action: an L{Action} value.
        @param ids: queue ids; those of other shards are left to their processes.
        @return: a Deferred of this process's answer.
        @raise ControlError: for an unknown action or too many ids.
        """
        try:
            chosen = Action(action)
        except ValueError:
            raise ControlError(f"unknown queue action {action!r}") from None
        if len(ids) > BATCH:
            raise ControlError(f"at most {BATCH} queue ids at a time")
        mine = [queue_id.upper() for queue_id in ids if shard_of(queue_id) == self._shard]
        busy = [Refusal(queue_id, "being delivered now; try again") for queue_id in mine]
        if self._leases is not None and chosen in (Action.DELETE, Action.BOUNCE):
            taken = [queue_id for queue_id in mine if self._leases.take(queue_id, _OPERATOR)]
            busy = [refusal for refusal in busy if refusal.queue_id not in taken]
            mine = taken
        else:
            busy = []
        if chosen is Action.BOUNCE:
            d = Deferred.fromCoroutine(self._bounce_all(mine))
        else:
            now = self._clock.seconds()
            limit = self._spool.inline_limit
            d = self._spool.administer(
                lambda db, bodies: administer(db, bodies, chosen, mine, now, inline_limit=limit)
            )

        def done(outcome: tuple[list[str], list[Refusal]]) -> tuple[list[str], list[Refusal]]:
            return outcome[0], outcome[1] + busy

        if self._leases is not None and chosen in (Action.DELETE, Action.BOUNCE):
            d.addBoth(self._give_back, mine)
        d.addCallback(done)
        return d.addCallbacks(self._answer, self._failed, callbackArgs=(chosen,))

    def _give_back(self, result: T, ids: list[str]) -> T:
        # The leases taken for an action, given back whatever its outcome.
        if self._leases is not None:
            for queue_id in ids:
                self._leases.give_back(queue_id, _OPERATOR)
        return result

    def _answer(self, outcome: tuple[list[str], list[Refusal]], action: Action) -> Answer:
        done, refused = outcome
        for queue_id in done:
            _log.info(
                "Queue {queue_id}: {action} by the operator",
                queue_id=queue_id,
                action=action.value,
            )
        if done and action in (Action.RELEASE, Action.RETRY, Action.REQUEUE):
            if self._forget_dead_hosts is not None:
                self._forget_dead_hosts()
            self._runner.wake()
        return {
            "done": done,
            "refused": [{"queue_id": r.queue_id, "reason": r.reason} for r in refused],
            "shards": [self._shard],
            "missing": [],
        }

    @staticmethod
    def _failed(reason: Any) -> Answer:
        raise ControlError(f"the spool failed: {reason.getErrorMessage()}")

    async def _bounce_all(self, ids: list[str]) -> tuple[list[str], list[Refusal]]:
        done: list[str] = []
        refused: list[Refusal] = []
        for queue_id in ids:
            problem = await self._bounce(queue_id)
            if problem is None:
                done.append(queue_id)
            else:
                refused.append(Refusal(queue_id, problem))
        return done, refused

    async def _bounce(self, queue_id: str) -> str | None:
        # Every pending recipient fails now; the runner's rules decide the notice (none for
        # a notice of ours or the null sender: such a message just goes).
        message = await self._spool.load(queue_id)
        if message is None:
            return "no such message"
        if message.queue is Queue.BAD:
            return "in the bad queue (delete or requeue it)"
        results = [
            RecipientResult(position, RecipientState.FAILED, BOUNCE_STATUS, BOUNCE_REASON)
            for position, recipient in enumerate(message.envelope.recipients)
            if recipient.state is RecipientState.PENDING
        ]
        if not results:
            return "no recipient is pending"
        now = self._clock.seconds()
        outcome = self._runner.conclude(message, results, now)
        try:
            await self._spool.record(
                queue_id,
                outcome.results,
                outcome.next_attempt,
                now=now,
                notices=outcome.notices,
                delay_notified=outcome.delay_notified,
            )
        except SpoolError as e:
            return f"not bounced: {e}"
        return None


def combine_queue_act(answers: Mapping[int, Answer | None]) -> Answer:
    """
    Every process's part of a L{QueueAct}, in shard order.

    @param answers: each process's answer by shard; L{None} for one that did not answer.
    @return: the combined answer.
    """
    done: list[str] = []
    refused: list[dict[str, str]] = []
    for shard in sorted(answers):
        answer = answers[shard]
        if answer is not None:
            done += answer["done"]
            refused += answer["refused"]
    return {
        "done": done,
        "refused": refused,
        "shards": [shard for shard in sorted(answers) if answers[shard] is not None],
        "missing": [shard for shard in sorted(answers) if answers[shard] is None],
    }
