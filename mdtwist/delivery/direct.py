# -*- test-case-name: tests.delivery.test_direct -*-
"""
Local mail delivered before the reply to DATA (C{delivery.direct_max_recipients}).

Theory of operation. L{DeliverFirst} stands in front of the spool as the SMTP listeners'
L{ISpool}. A message that qualifies (L{qualifies}: every recipient routes to a local mailbox,
there are at most C{max_recipients} of them, and none asks for a notice of its delivery) goes
through the queue runner's own attempt (L{QueueRunner.attempt}: the same directory lookups,
local delivery agent and results as a queued message) before the SMTP server answers:
  - when every copy is delivered, each is durable in its mailbox (the agent syncs it before it
    reports success), so the message is never written to the spool: the 250 answers for the
    mailbox files as it answers for the spool's commit otherwise. Its id is one of
    L{DirectIds}, never a spool id, and the mail log has the same lines as for a queued
    message delivered at its first attempt (accepted, one per copy, removed);
  - otherwise the message is queued, with the copies that were delivered recorded as
    delivered (they are not made twice) and the rest pending, exactly as they were accepted:
    the queue runner then tries, retries, bounces and notifies as for any queued message.
A message that does not qualify, is larger than L{MAX_SIZE}, or comes while C{limit} of these
deliveries are under way (a slow disk then fills the spool, not the sessions' wait) or while
the queue runner is stopped, is queued at once.

Why: a queued message to a local mailbox costs the spool's write, its read back, the runner's
wake-up and the commit of its outcome besides the mailbox file; all of it but the file is
work the server's single core does for every message (bench/README, 2026-12-07).
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from mdtwist import maillog, metrics
from mdtwist.delivery.runner import AttemptOutcome, QueueRunner, Where
from mdtwist.envelope import Envelope, Recipient, RecipientState
from mdtwist.interfaces import ISpool
from mdtwist.route import RouteKind
from mdtwist.spool.model import QueuedMessage, RecipientResult

log = Logger()

_DELIVERED = RecipientState.DELIVERED

#: The largest message (bytes) delivered before its reply. A larger one is queued first: the
#: spool keeps its body in a file that the Maildir worker reads, which costs less than sending
#: the body through the worker's pipe. Measured on a 2-core machine on 2026-12-07 (wall time
#: per message, delivered first against queued first, two runs): 0.85-0.92 at 512 KiB,
#: 1.04-1.14 at 1 MiB, 1.65-1.95 at 10 MiB.
MAX_SIZE = 512 * 1024


def qualifies(envelope: Envelope, max_recipients: int) -> bool:
    """
    Whether a message may be delivered before its 250.

    @param envelope: the envelope as accepted.
    @param max_recipients: the most recipients such a message may have (0: none may).
    @return: whether it has 1 to C{max_recipients} recipients, each routed to a local mailbox
        and none with C{NOTIFY=SUCCESS} (that notice is queued mail of its own).
    """
    recipients = envelope.recipients
    if not 0 < len(recipients) <= max_recipients:
        return False
    for recipient in recipients:
        route = recipient.route
        if route is None or route.kind is not RouteKind.LOCAL:
            return False
        if recipient.notify is not None and "SUCCESS" in recipient.notify:
            return False
    return True


class DirectIds:
    """
    The ids of messages delivered without being queued: C{L}, the microseconds since the epoch
    in hexadecimal, C{-}, the process's shard. Never a spool id (C{L} is not a hexadecimal
    digit), and unique on the host while its clock does not go back.
    """

    def __init__(self, shard: int) -> None:
        """
        @param shard: the process's spool shard.
        """
        self._shard = shard
        self._last = 0

    def next(self, now: float) -> str:
        """
        @param now: the time, seconds since the epoch.
        @return: a new id, later than every id before it.
        """
        self._last = max(self._last + 1, int(now * 1_000_000))
        return f"L{self._last:X}-{self._shard}"


def _with_results(envelope: Envelope, delivered: list[RecipientResult]) -> Envelope:
    # The envelope to queue: the copies delivered recorded so, the others as accepted.
    done = {result.position: result for result in delivered}
    recipients: list[Recipient] = []
    for position, recipient in enumerate(envelope.recipients):
        result = done.get(position)
        if result is not None:
            recipient = attrs.evolve(
                recipient,
                state=_DELIVERED,
                attempts=1,
                status=result.status,
                diagnostic=result.diagnostic,
            )
        recipients.append(recipient)
    return attrs.evolve(envelope, recipients=tuple(recipients))


@implementer(ISpool)
class DeliverFirst:
    """
    An L{ISpool} that delivers local mail before it answers and queues the rest in C{spool}.

    @ivar in_flight: how many messages are in delivery before their reply now.
    """

    def __init__(
        self,
        spool: ISpool,
        runner: QueueRunner,
        clock: IReactorTime,
        *,
        max_recipients: int,
        limit: int,
        shard: int = 0,
    ) -> None:
        """
        @param spool: the spool, for the messages that are queued.
        @param runner: the queue runner whose attempt delivers.
        @param clock: the clock of arrival and delivery times.
        @param max_recipients: the most recipients of a message delivered before its reply.
        @param limit: the most such messages in delivery at once.
        @param shard: the process's spool shard, in the ids (L{DirectIds}).
        """
        self._spool = spool
        self._runner = runner
        self._clock = clock
        self._max_recipients = max_recipients
        self._limit = limit
        self._ids = DirectIds(shard)
        self.in_flight = 0

    def enqueue(self, envelope: Envelope, body: bytes) -> Deferred[str]:
        """
        Deliver a message to its local mailboxes, or queue it.

        @param envelope: the envelope.
        @param body: the message, trace field included.
        @return: a Deferred firing with the message's id once every copy is in its mailbox or
            the message is queued; it fails only as L{ISpool.enqueue} does, and then nothing
            is kept but copies already delivered (the client sends the message again).
        """
        if (
            len(body) > MAX_SIZE
            or not self._runner.running
            or not qualifies(envelope, self._max_recipients)
        ):
            return self._spool.enqueue(envelope, body)
        if self.in_flight >= self._limit:
            metrics.delivered_first("busy")
            return self._spool.enqueue(envelope, body)
        self.in_flight += 1
        answered: Deferred[str] = Deferred()
        done = Deferred.fromCoroutine(self._deliver(envelope, body, answered))
        done.addErrback(lambda f: log.failure("Delivery before the reply failed", f))
        return answered

    async def _deliver(self, envelope: Envelope, body: bytes, answered: Deferred[str]) -> None:
        message = QueuedMessage(
            queue_id=self._ids.next(self._clock.seconds()),
            envelope=envelope,
            size=len(body),
            attempts=0,
            next_attempt=envelope.arrival,
            body=body,
        )
        runner = self._runner
        where: dict[int, Where] = {}
        delivered: list[RecipientResult] = []
        try:
            results = await runner.attempt(message, where)
        except Exception:
            # Not expected (the attempt turns failures into results): the runner tries it all.
            log.failure(
                "Delivery of {queue_id} before the reply failed", queue_id=message.queue_id
            )
        else:
            delivered = [result for result in results if result.state is _DELIVERED]
        finally:
            self.in_flight -= 1
        now = self._clock.seconds()
        if delivered and len(delivered) == len(envelope.recipients):
            # No notice can follow (L{qualifies}): the message is done. The reply (and the
            # mail log's "accepted") first, then the copies' lines.
            answered.callback(message.queue_id)
            self._log(message, delivered, runner.conclude(message, delivered, now), now, where)
            maillog.removed(queue_id=message.queue_id)
            metrics.delivered_first("delivered")
            return
        metrics.delivered_first("queued")
        try:
            queue_id = await self._spool.enqueue(_with_results(envelope, delivered), body)
        except Exception:
            answered.errback()
            return
        answered.callback(queue_id)
        if delivered:
            outcome = AttemptOutcome(tuple(delivered), now)
            self._log(attrs.evolve(message, queue_id=queue_id), delivered, outcome, now, where)

    def _log(
        self,
        message: QueuedMessage,
        delivered: list[RecipientResult],
        outcome: AttemptOutcome,
        now: float,
        where: dict[int, Where],
    ) -> None:
        self._runner.log_attempt(message, delivered, outcome, now, where)
        metrics.attempt_recorded(message, delivered, now)
