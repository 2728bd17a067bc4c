# -*- test-case-name: tests.dequeue.test_held -*-
"""
The held mail of one spool shard: found, leased, released and recorded by the process that
owns the shard.

Theory of operation. Recipients of gateway domains are stored with the route C{GATEWAY_HOLD}
and the queue runner never attempts them (L{mdtwist.delivery.runner}). A release asks every
shard's process (L{mdtwist.dequeue.release}) to act on its own messages, so that only the owner
ever writes a shard's spool and leases its messages:

  - ETRN: L{HeldMail.etrn} counts the held messages of the domains and, in the background,
    delivers their held recipients through remote delivery over new connections, to the
    gateway's ETRN target (its MX, a configured host, or the requester's address). A message
    whose lease is taken (the queue runner looking at it, another release sending it) is
    released when its lease is given back, if it is still queued and held then; a repeated
    ETRN sends nothing twice, as a sent message has left the queue by then.
  - ATRN: the process with the ODMR session claims the held messages of every shard
    (L{HeldMail.claim} leases them to the session, waiting up to L{CLAIM_WAIT} seconds for
    the leases someone else has now), reads them from the shard's database
    read-only, sends them over the turned connection, and hands each message's results to its
    owner (L{HeldMail.record}); what the session did not finish is given back
    (L{HeldMail.give_back}) and stays held, with no bounce.

Results are concluded as the queue runner concludes its own attempts
(L{QueueRunner.conclude}): a delivered recipient leaves the queue, a permanent failure bounces
with a DSN, a temporary one stays held.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mdtwist import maillog
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.runner import QueueRunner, RemoteDelivery
from mdtwist.envelope import RecipientState
from mdtwist.route import Route, RouteKind
from mdtwist.spool.model import Queue, QueuedMessage, RecipientResult
from mdtwist.spool.store import SQLiteSpool

log = Logger()

#: Seconds an ATRN claim waits for a message whose lease someone else has (the queue runner
#: looking at it, an operator's command, an ETRN release sending it) before leaving it out.
CLAIM_WAIT = 5.0


@attrs.frozen
class HeldMessage:
    """
    A message with recipients held for some gateway domains.

    @ivar queue_id: the message.
    @ivar positions: the held recipients of the domains asked for, by position.
    """

    queue_id: str
    positions: tuple[int, ...]


def group_held(
    rows: Iterable[tuple[str, int, str]], domains: Collection[str]
) -> list[HeldMessage]:
    """
    @param rows: C{(queue_id, position, domain)} of held recipients (L{SQLiteSpool.held}).
    @param domains: the gateway domains released.
    @return: the messages with held recipients in those domains, in the order of the rows.
    """
    grouped: dict[str, list[int]] = {}
    for queue_id, position, domain in rows:
        if domain in domains:
            grouped.setdefault(queue_id, []).append(position)
    return [HeldMessage(q, tuple(p)) for q, p in grouped.items()]


class HeldMail:
    """
    The held mail of this process's shard.
    """

    def __init__(
        self,
        spool: SQLiteSpool,
        runner: QueueRunner,
        leases: Leases,
        clock: IReactorTime,
        remote: RemoteDelivery | None,
    ) -> None:
        """
        @param spool: this process's spool shard.
        @param runner: its queue runner (whose L{QueueRunner.conclude} judges results).
        @param leases: the shard's leases, shared with the runner.
        @param clock: the clock.
        @param remote: delivers over new connections (ETRN); L{None} when there is none.
        """
        self._spool = spool
        self._runner = runner
        self._leases = leases
        self._clock = clock
        self._remote = remote
        self._running: set[Deferred[None]] = set()
        self._releases = itertools.count(1)

    async def rows(self) -> list[tuple[str, int, str]]:
        """
        @return: every held recipient of the shard as C{(queue_id, position, domain)}.
        """
        return await self._spool.held()

    async def find(self, domains: Collection[str]) -> list[HeldMessage]:
        """
        @param domains: gateway domains, lower case.
        @return: the messages with held recipients in them.
        """
        return group_held(await self._spool.held(), domains)

    async def claim(self, domains: Collection[str], holder: str) -> list[HeldMessage]:
        """
        Lease the held messages of some domains to an ATRN session.

        @param domains: the domains released.
        @param holder: the session's lease name.
        @return: the messages now leased to it; one leased by someone else is waited for up
            to L{CLAIM_WAIT} seconds, and left out when its lease is still taken then.
        """
        found = await self.find(domains)
        busy = [m.queue_id for m in found if not self._leases.take(m.queue_id, holder)]
        if busy:
            await gatherResults([self._free(queue_id) for queue_id in busy])
            for queue_id in busy:
                self._leases.take(queue_id, holder)
        return [m for m in found if self._leases.holder(m.queue_id) == holder]

    def _free(self, queue_id: str) -> Deferred[None]:
        # Fires when the message's lease is free, or after CLAIM_WAIT seconds.
        d: Deferred[None] = Deferred()

        def fire() -> None:
            if not d.called:
                d.callback(None)

        self._leases.when_free(queue_id, fire)
        return d.addTimeout(CLAIM_WAIT, self._clock, onTimeoutCancel=lambda _, __: None)

    def give_back(self, holder: str, queue_ids: Sequence[str] | None = None) -> None:
        """
        Give back leases of an ATRN session; the messages stay held as they were.

        @param holder: the session's lease name.
        @param queue_ids: the messages, or L{None} for all of the holder's.
        """
        if queue_ids is None:
            self._leases.give_back_all(holder)
        else:
            for queue_id in queue_ids:
                self._leases.give_back(queue_id, holder)

    async def record(self, queue_id: str, holder: str, results: Sequence[RecipientResult]) -> bool:
        """
        Record what happened to a leased message's recipients, then give its lease back.

        @param queue_id: the message.
        @param holder: the lease name it was claimed with.
        @param results: a result per recipient attempted.
        @return: whether the message left the queue.
        """
        try:
            if self._leases.holder(queue_id) != holder:
                log.warn(
                    "Results for {queue_id} from {holder}, which has no lease; not recorded",
                    queue_id=queue_id,
                    holder=holder,
                )
                return False
            message = await self._spool.load(queue_id)
            if message is None or message.queue is not Queue.ACTIVE:
                return False
            return await self._conclude(message, results)
        finally:
            self._leases.give_back(queue_id, holder)

    def etrn(self, domains: Collection[str], targets: dict[str, Route]) -> Deferred[int]:
        """
        Count the held messages of some domains and release them over new connections, in
        the background; a message whose lease is taken is released once it is given back.

        @param domains: the domains released.
        @param targets: per domain, the route its recipients take now (remote, or a host as a
            C{SHARING_PEER} route: address records on its port, never MX).
        @return: a Deferred firing with the number of held messages found.
        """
        return Deferred.fromCoroutine(self._etrn(domains, targets))

    async def _etrn(self, domains: Collection[str], targets: dict[str, Route]) -> int:
        found = await self.find(domains)
        for held in found:
            self._start_when_free(held, targets)
        return len(found)

    def _start_when_free(self, held: HeldMessage, targets: dict[str, Route]) -> None:
        holder = f"etrn-{next(self._releases)}"
        if self._leases.take(held.queue_id, holder):
            self._start(held, holder, targets)
        else:
            # The runner is looking at it, or a release is sending it: try again when it is
            # given back (a message sent by then is gone, or no longer held).
            self._leases.when_free(held.queue_id, lambda: self._start_when_free(held, targets))

    def _start(self, held: HeldMessage, holder: str, targets: dict[str, Route]) -> None:
        d = Deferred.fromCoroutine(self._release(held, holder, targets))
        self._running.add(d)

        def failed(failure: Failure) -> None:
            log.failure("ETRN release of {queue_id} failed", failure, queue_id=held.queue_id)

        def done(_: object) -> None:
            self._running.discard(d)

        d.addErrback(failed).addBoth(done)

    async def _release(self, held: HeldMessage, holder: str, targets: dict[str, Route]) -> None:
        try:
            message = await self._spool.load(held.queue_id)
            if message is None or message.queue is not Queue.ACTIVE or self._remote is None:
                return
            routes: dict[int, Route] = {}
            for position in held.positions:
                recipient = message.envelope.recipients[position]
                route = recipient.route
                if (
                    recipient.state is RecipientState.PENDING
                    and route is not None
                    and route.kind is RouteKind.GATEWAY_HOLD
                    and route.target in targets
                ):
                    routes[position] = targets[route.target]
            if not routes:
                return
            positions = sorted(routes)
            log.info(
                "ETRN: releasing {count} recipients of {queue_id}",
                count=len(positions),
                queue_id=held.queue_id,
            )
            try:
                results = list(await self._remote(_rerouted(message, routes), positions))
            except Exception:
                log.failure("ETRN delivery of {queue_id} failed", queue_id=held.queue_id)
                results = [
                    RecipientResult(p, RecipientState.PENDING, "4.3.0", "remote delivery error")
                    for p in positions
                ]
            await self._conclude(message, [_kept_unless_refused(message, r) for r in results])
        finally:
            self._leases.give_back(held.queue_id, holder)

    async def _conclude(self, message: QueuedMessage, results: Sequence[RecipientResult]) -> bool:
        now = self._clock.seconds()
        outcome = self._runner.conclude(message, results, now)
        removed: bool = await self._spool.record(
            message.queue_id,
            outcome.results,
            outcome.next_attempt,
            now=now,
            notices=outcome.notices,
            delay_notified=outcome.delay_notified,
            park=outcome.park,
        )
        self._runner.log_attempt(message, results, outcome, now)
        if removed:
            maillog.removed(queue_id=message.queue_id)
        return removed

    def wait(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the ETRN releases running now have ended (tests).
        """
        return gatherResults(list(self._running), consumeErrors=True).addCallback(lambda _: None)


def _rerouted(message: QueuedMessage, routes: dict[int, Route]) -> QueuedMessage:
    # The message with some recipients' routes replaced, for remote delivery.
    recipients = tuple(
        attrs.evolve(r, route=routes[i]) if i in routes else r
        for i, r in enumerate(message.envelope.recipients)
    )
    return attrs.evolve(message, envelope=attrs.evolve(message.envelope, recipients=recipients))


#: A diagnostic that is an SMTP reply (a remote server's answer).
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")


def _kept_unless_refused(message: QueuedMessage, result: RecipientResult) -> RecipientResult:
    # A permanent failure the gateway's host did not give itself (our routing found no way
    # there: the domain's MX is this server, no address, a null MX) keeps the recipient held
    # rather than bouncing it: the owner can still fetch it with ATRN or a better ETRN target.
    if result.state is not RecipientState.FAILED or _SMTP_REPLY.match(result.diagnostic):
        return result
    log.warn(
        "ETRN release of {queue_id} to {rcpt} found no way there ({reason}); kept held",
        queue_id=message.queue_id,
        rcpt=message.envelope.recipients[result.position].address,
        reason=result.diagnostic,
    )
    return attrs.evolve(result, state=RecipientState.PENDING)
