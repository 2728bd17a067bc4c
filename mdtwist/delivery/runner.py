# -*- test-case-name: tests.delivery.test_runner,tests.delivery.test_runner_notices -*-
"""
The queue runner: takes messages from the spool to their mailboxes.

Theory of operation: a I{pass} asks the spool for due messages (a batch at a time), delivers
each through L{QueueRunner._process} with at most C{concurrency} messages in delivery at once,
and asks again until no message it has not seen yet is due. Only one pass runs at a time, so a
message is never in two deliveries at once. A pass starts:
  - when the service starts (this resumes whatever a crash or a stop left queued) and then every
    C{interval} seconds: these passes are the I{queue runs}, counted in L{QueueRunner.run_count}
    and reported to run observers;
  - when the spool reports newly committed messages (L{QueueRunner.wake}): new mail goes out at
    once, without waiting for the next queue run. These passes are not counted.
A trigger that comes while a pass runs starts another pass after it.

For one message, each pending recipient goes where its stored route says (L{mdtwist.route}; a
recipient queued before routes were stored is classified by L{mdtwist.route.classify} when it
is loaded, and an invalid address fails with C{5.1.3}): a C{LOCAL} recipient's mailbox is
looked up in the directory (L{mdtwist.directory.mailbox.find_mailbox}) and delivered through
the L{ILocalDelivery} seam, or fails when no account has it (C{5.1.1}) or it is disabled
(C{5.2.1}); C{REMOTE} and C{SHARING_PEER} recipients go to the remote-delivery collaborator
(which acts on the route), or stay queued when there is none; C{GATEWAY_HOLD} recipients are
never attempted here: they stay pending until the gateway dequeues them (L{mdtwist.dequeue}),
get no delay notice, and fail after their gateway's hold time. A directory that
cannot answer keeps the recipient pending (C{4.4.3}). All results of the attempt are recorded
in one spool transaction; the message leaves the spool when no recipient is left pending.
Temporary failures are retried on the schedule of L{mdtwist.delivery.schedule.QueuePolicy},
until the message expires; then every recipient still pending fails with C{4.4.7}.

Notices (L{mdtwist.delivery.dsn}): after each attempt the runner makes at most one DSN about
the message, reporting the recipients that failed in this attempt, the pending recipients the
sender is told about once as the message enters the retry queue, and the recipients delivered
when C{NOTIFY=SUCCESS} (or, when enabled, after a delay notice); each only as C{NOTIFY} allows,
and never for a message from the null sender. The DSN is queued by the same spool transaction
that records the attempt, so it can be neither lost nor sent twice, and is then delivered like
any other message. A DSN we made that fails or expires is parked in the bad queue (or dropped),
never answered by another DSN. A message that carries more trace lines than the hop limit is a
loop: it is parked in the bad queue before any attempt.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from typing_extensions import override

from mdtwist import maillog, metrics
from mdtwist.delivery.dsn import (
    Action,
    RecipientReport,
    build_dsn,
    notice_envelope,
    split_header_section,
    wants_notice,
)
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.local import CopyId, DeliveryStatus, ILocalDelivery
from mdtwist.delivery.schedule import (
    QueuePolicy,
    expired,
    give_up_time,
    in_retry_phase,
    next_attempt,
)
from mdtwist.directory.mailbox import find_mailbox
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory
from mdtwist.route import Route, RouteKind, classify
from mdtwist.spool.model import (
    MessageKind,
    Notice,
    Queue,
    QueuedMessage,
    RecipientProgress,
    RecipientResult,
)
from mdtwist.spool.store import SQLiteSpool

#: Delivers the given recipients (by position) of a message to other hosts; returns one result
#: per recipient it attempted. Recipients it gives no result for stay pending.
RemoteDelivery = Callable[[QueuedMessage, Sequence[int]], Awaitable[Sequence[RecipientResult]]]

log = Logger()

#: The lease holder name of the queue runner (see L{Leases}).
_RUNNER = "queue-runner"

_PENDING = RecipientState.PENDING
_FAILED = RecipientState.FAILED
_DELIVERED = RecipientState.DELIVERED
_SMTP_REPLY = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")
_TRACE = re.compile(rb"(?i)(received|delivered-to):")


@attrs.frozen
class AttemptOutcome:
    """
    What one delivery attempt leads to, ready for L{SQLiteSpool.record}.

    @ivar results: the results to record, expired recipients included.
    @ivar next_attempt: when to try the recipients still pending.
    @ivar notices: the DSN to queue with the results, if any.
    @ivar delay_notified: positions of the recipients the DSN tells of a delay.
    @ivar park: the reason to park the message in the bad queue, or L{None}.
    @ivar expired: positions of the recipients that failed because the message was queued
        too long.
    @ivar reported: the action (C{failed}, C{delayed}, C{delivered}) of each recipient the
        notice reports, for the mail log.
    """

    results: tuple[RecipientResult, ...]
    next_attempt: float
    notices: tuple[Notice, ...] = ()
    delay_notified: tuple[int, ...] = ()
    park: str | None = None
    expired: tuple[int, ...] = ()
    reported: tuple[str, ...] = ()


@attrs.frozen
class Where:
    """
    Where a local copy went, for the mail log.

    @ivar relay: the local delivery agent.
    @ivar mailbox: the address of the account the copy went to, or L{None}.
    """

    relay: str
    mailbox: str | None = None


def count_hops(message: bytes) -> int:
    """
    Count the trace lines of a message, for loop detection.

    @param message: the message, CRLF line ends.
    @return: how many lines of its header section start with C{Received:} or
        C{Delivered-To:}, in any case.
    """
    headers, _ = split_header_section(message)
    return sum(1 for line in headers.split(b"\r\n") if _TRACE.match(line))


class QueueRunner(Service):
    """
    Delivers queued messages and retries them until every recipient is final.

    @ivar run_count: how many queue runs have finished.
    """

    def __init__(
        self,
        spool: SQLiteSpool,
        directory: IDirectory,
        local: ILocalDelivery,
        clock: IReactorTime,
        *,
        interval: float = 300.0,
        concurrency: int = 20,
        batch: int = 100,
        policy: QueuePolicy | None = None,
        remote: RemoteDelivery | None = None,
        hostname: str = "localhost",
        postmaster: str | None = None,
        hold_time: Callable[[str], float | None] | None = None,
        leases: Leases | None = None,
    ) -> None:
        """
        Make a queue runner; nothing happens until the service starts.

        @param spool: the spool to deliver from.
        @param directory: the account directory.
        @param local: delivers to local mailboxes.
        @param clock: the clock for the schedule and the periodic runs.
        @param interval: seconds between queue runs.
        @param concurrency: the most messages in delivery at once.
        @param batch: the most due messages asked for at a time.
        @param policy: the retry schedule, notice switches and hop limit; the defaults of
            L{QueuePolicy} when L{None}.
        @param remote: delivers to other hosts; when L{None} remote recipients stay queued.
        @param hostname: our host name, the reporting MTA of our notices.
        @param postmaster: the mailbox that receives postmaster's mail (see
            L{mdtwist.directory.mailbox.find_mailbox}), or L{None}.
        @param hold_time: for a gateway domain, how long its held recipients are kept before
            they fail (L{None} for a domain that is no longer a gateway: the queue's lifetime
            applies). Held recipients get no delay notice. Without it the queue's lifetime
            applies to them too.
        @param leases: the message leases of this shard, shared with the gateway releases
            (L{mdtwist.dequeue.held}); a message leased by a release is skipped.
        """
        self.setName("queue-runner")
        self._spool = spool
        self._directory = directory
        self._local = local
        self._clock = clock
        self._interval = interval
        self._batch = batch
        self._policy = QueuePolicy() if policy is None else policy
        self._remote = remote
        self._hostname = hostname
        self._postmaster = postmaster
        self._hold_time = hold_time
        self._leases = leases
        self._semaphore = DeferredSemaphore(concurrency)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._unsubscribe: Callable[[], None] | None = None
        self._pass: Deferred[None] | None = None
        self._wanted = False
        self._run_wanted = False
        self._flush_wanted = False
        self._stop_waiters: list[Deferred[None]] = []
        self._run_observers: list[Callable[[int], object]] = []
        self._told_remote: set[str] = set()
        self.run_count = 0

    @override
    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self._spool.subscribe(lambda ids: self.wake())
        self._loop.start(self._interval, now=True)

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._pass is None:
            return None
        d: Deferred[None] = Deferred()
        self._stop_waiters.append(d)
        return d

    def wake(self) -> None:
        """
        Deliver newly due messages now, without waiting for the next queue run.

        The spool calls this after each commit. A call while a pass runs starts one more pass
        after it.
        """
        if not self.running:
            return
        if self._pass is None:
            self._start_pass(counted=False)
        else:
            self._wanted = True

    def run_now(self) -> None:
        """
        Attempt every message that has pending recipients now, whatever its schedule
        (C{mdtwistctl queue run}); a pass that is running finishes first.
        """
        if not self.running:
            return
        self._flush_wanted = True
        if self._pass is None:
            self._start_pass(counted=False)
        else:
            self._wanted = True

    def add_run_observer(self, observer: Callable[[int], object]) -> Callable[[], None]:
        """
        Be told when each queue run finishes (the dequeue service acts every Nth run).

        @param observer: called with the new L{run_count}.
        @return: a function that removes the observer.
        """
        self._run_observers.append(observer)
        return lambda: self._run_observers.remove(observer)

    def _tick(self) -> None:
        if self._pass is None:
            self._start_pass(counted=True)
        else:
            self._run_wanted = True

    def _start_pass(self, counted: bool) -> None:
        self._wanted = False
        d = Deferred.fromCoroutine(self._run_pass())
        self._pass = d
        d.addErrback(lambda f: log.failure("Queue pass failed", f))
        d.addBoth(lambda _: self._pass_done(counted))

    def _pass_done(self, counted: bool) -> None:
        self._pass = None
        if counted:
            self.run_count += 1
            log.debug("Queue run {count} finished", count=self.run_count)
            for observer in list(self._run_observers):
                try:
                    observer(self.run_count)
                except Exception:
                    log.failure("Queue run observer failed")
        if not self.running:
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        elif self._run_wanted:
            self._run_wanted = False
            self._start_pass(counted=True)
        elif self._wanted:
            self._start_pass(counted=False)

    async def _run_pass(self) -> None:
        seen: set[str] = set()
        flush, self._flush_wanted = self._flush_wanted, False
        after: str | None = None
        while self.running:
            if flush:
                # Everything pending, whatever its schedule, page by page in queue-id order.
                due = await self._spool.pending(after, self._batch)
                after = due[-1] if due else after
            else:
                due = await self._spool.due(self._clock.seconds(), self._batch)
            fresh = [queue_id for queue_id in due if queue_id not in seen]
            if not fresh:
                return
            seen.update(fresh)
            await gatherResults(
                [self._semaphore.run(self._process_deferred, queue_id) for queue_id in fresh],
                consumeErrors=True,
            )

    def _process_deferred(self, queue_id: str) -> Deferred[None]:
        if not self.running:
            return succeed(None)
        return Deferred.fromCoroutine(self._process(queue_id))

    async def _process(self, queue_id: str) -> None:
        leases = self._leases
        if leases is not None and not leases.take(queue_id, _RUNNER):
            return  # a gateway release has it; it comes back when that is done
        try:
            await self._process_leased(queue_id)
        finally:
            if leases is not None:
                leases.give_back(queue_id, _RUNNER)

    async def _process_leased(self, queue_id: str) -> None:
        try:
            message = await self._spool.load(queue_id)
            if message is None or message.queue is not Queue.ACTIVE:
                return
            assert message.body is not None
            hops = count_hops(message.body)
            if hops > self._policy.hop_limit + 1:
                reason = (
                    f"mail loop: {hops} Received/Delivered-To lines, more than the hop limit"
                    f" of {self._policy.hop_limit}"
                )
                maillog.parked(queue_id=queue_id, reason=reason)
                await self._spool.park(queue_id, reason)
                return
            where: dict[int, Where] = {}
            results = await self.attempt(message, where)
            now = self._clock.seconds()
            outcome = self.conclude(message, results, now)
            self.log_attempt(message, results, outcome, now, where)
            if outcome.park is not None:
                maillog.parked(queue_id=queue_id, reason=outcome.park)
            removed = await self._spool.record(
                queue_id,
                outcome.results,
                outcome.next_attempt,
                now=now,
                notices=outcome.notices,
                delay_notified=outcome.delay_notified,
                park=outcome.park,
            )
            metrics.attempt_recorded(message, outcome.results, now)
        except Exception:
            log.failure("Delivery attempt for {queue_id} failed", queue_id=queue_id)
            return
        if removed:
            self._told_remote.discard(queue_id)
            maillog.removed(queue_id=queue_id)

    async def attempt(
        self, message: QueuedMessage, where: dict[int, Where]
    ) -> list[RecipientResult]:
        """
        Try each pending recipient of a message once, recording nothing: for the runner's own
        attempts, and for a message delivered before its reply (L{mdtwist.delivery.direct}).

        @param message: the message, with its body.
        @param where: filled in with where each local copy went, for L{log_attempt}.
        @return: a result per recipient attempted; a held recipient gets none.
        """
        pending = [
            (position, recipient)
            for position, recipient in enumerate(message.envelope.recipients)
            if recipient.state is _PENDING
        ]
        try:
            domains = await self._directory.domains()
        except DirectoryUnavailable:
            log.warn("Directory unavailable; {queue_id} stays queued", queue_id=message.queue_id)
            return [_directory_down(position) for position, _ in pending]
        results: list[RecipientResult] = []
        remote: list[int] = []
        classified: dict[int, Route] = {}
        for position, recipient in pending:
            # The route stored when the recipient was accepted; one queued before routes were
            # stored is classified now, by the same function the receive policy uses.
            route = recipient.route
            if route is None:
                route = classify(recipient.address, domains)
                if route is not None:
                    classified[position] = route
            if route is None:
                results.append(RecipientResult(position, _FAILED, "5.1.3", "bad address syntax"))
            elif route.kind is RouteKind.LOCAL:
                assert route.target is not None
                results.append(
                    await self._deliver_local(
                        message, position, recipient, route.target, domains, where
                    )
                )
            elif route.kind is RouteKind.GATEWAY_HOLD:
                # Held until the gateway dequeues it: no attempt, it stays pending.
                continue
            else:
                remote.append(position)
        if remote:
            if classified:
                message = _with_routes(message, classified)
            results.extend(await self._deliver_remote(message, remote))
        return results

    async def _deliver_local(
        self,
        message: QueuedMessage,
        position: int,
        recipient: Recipient,
        mailbox: str,
        domains: frozenset[str],
        where: dict[int, Where],
    ) -> RecipientResult:
        try:
            account = await find_mailbox(
                self._directory, mailbox, postmaster=self._postmaster, local_domains=domains
            )
        except DirectoryUnavailable:
            result = _directory_down(position)
        else:
            if account is None:
                result = RecipientResult(position, _FAILED, "5.1.1", "no such mailbox")
            elif not account.enabled:
                result = RecipientResult(position, _FAILED, "5.2.1", "mailbox disabled")
            else:
                assert message.body is not None
                if account.address.lower() != recipient.address.lower():
                    where[position] = Where("none", account.address)
                try:
                    delivery = await self._local.deliver(
                        account,
                        recipient.address,
                        message.body,
                        message.envelope.sender,
                        CopyId(message.queue_id, position, message.envelope.arrival),
                    )
                except Exception:
                    log.failure(
                        "Local delivery of {queue_id} to {rcpt} failed",
                        queue_id=message.queue_id,
                        rcpt=recipient.address,
                    )
                    result = RecipientResult(position, _PENDING, "4.3.0", "local delivery error")
                else:
                    state = {
                        DeliveryStatus.DELIVERED: RecipientState.DELIVERED,
                        DeliveryStatus.TEMPORARY: _PENDING,
                        DeliveryStatus.PERMANENT: _FAILED,
                    }[delivery.status]
                    result = RecipientResult(position, state, delivery.enhanced, delivery.reason)
                    where[position] = Where(delivery.relay, account.address)
        return result

    async def _deliver_remote(
        self, message: QueuedMessage, positions: list[int]
    ) -> Sequence[RecipientResult]:
        if self._remote is None:
            if message.queue_id not in self._told_remote:
                self._told_remote.add(message.queue_id)
                log.info(
                    "No remote delivery; {count} recipients of {queue_id} stay queued",
                    count=len(positions),
                    queue_id=message.queue_id,
                )
            return []
        try:
            return await self._remote(message, positions)
        except Exception:
            log.failure("Remote delivery of {queue_id} failed", queue_id=message.queue_id)
            return [
                RecipientResult(position, _PENDING, "4.3.0", "remote delivery error")
                for position in positions
            ]

    def conclude(
        self, message: QueuedMessage, results: Sequence[RecipientResult], now: float
    ) -> AttemptOutcome:
        """
        Work out what an attempt leads to: expiry, the next attempt, the notice, parking.

        @param message: the message as it was before the attempt.
        @param results: the results of the attempt.
        @param now: the time after the attempt.
        @return: what to record.
        """
        policy = self._policy
        envelope = message.envelope
        is_notice = message.kind is MessageKind.NOTICE
        by_position = {result.position: result for result in results}
        expired_now: list[int] = []
        queue_expired = expired(policy, envelope.arrival, now, notice=is_notice)
        hold_ends: list[float] = []
        for position, recipient in enumerate(envelope.recipients):
            result = by_position.get(position)
            if recipient.state is not _PENDING or (
                result is not None and result.state is not _PENDING
            ):
                continue
            hold_end = self._hold_end(recipient, envelope.arrival)
            if hold_end is None:
                if queue_expired:
                    by_position[position] = self._expire(message, position, result)
                    expired_now.append(position)
            elif now >= hold_end:
                by_position[position] = self._expire(message, position, result, held=True)
                expired_now.append(position)
            else:
                hold_ends.append(hold_end)
        final = tuple(by_position[position] for position in sorted(by_position))
        pending = [
            position
            for position, recipient in enumerate(envelope.recipients)
            if recipient.state is _PENDING
            and (position not in by_position or by_position[position].state is _PENDING)
        ]
        retry_after = max(
            (r.retry_after for r in final if r.state is _PENDING and r.retry_after is not None),
            default=None,
        )
        when = next_attempt(
            policy, envelope.arrival, now, retry_after=retry_after, notice=is_notice
        )
        if hold_ends:
            # Come back when the first hold ends, to bounce what was not released.
            when = min(when, max(now, min(hold_ends)))
        failed = [result for result in final if result.state is _FAILED]
        park = None
        if failed and (is_notice or not envelope.sender):
            first = failed[0]
            what = envelope.recipients[first.position].address
            detail = f"<{what}>: {first.status} {first.diagnostic}".strip()
            if is_notice and policy.bad_queue_undeliverable_notices:
                park = f"undeliverable delivery status notification: {detail}"
            else:
                log.warn(
                    "No notice about {queue_id} from the null sender: {detail}",
                    queue_id=message.queue_id,
                    detail=detail,
                )
        reports, delay_notified = self._reports(message, final, pending, now)
        notices: tuple[Notice, ...] = ()
        if reports:
            notices = (self._notice(message, reports, now),)
        return AttemptOutcome(
            final,
            when,
            notices,
            tuple(delay_notified),
            park,
            tuple(expired_now),
            tuple(r.action.value for r in reports),
        )

    def _reports(
        self,
        message: QueuedMessage,
        final: Sequence[RecipientResult],
        pending: Sequence[int],
        now: float,
    ) -> tuple[list[RecipientReport], list[int]]:
        policy = self._policy
        envelope = message.envelope
        sender = envelope.sender
        by_position = {result.position: result for result in final}
        reports: list[RecipientReport] = []
        for result in final:
            recipient = envelope.recipients[result.position]
            progress = _progress(message, result.position)
            if result.state is _FAILED:
                wanted = wants_notice(sender, recipient, Action.FAILED)
                action = Action.FAILED
            elif result.state is _DELIVERED:
                wanted = wants_notice(sender, recipient, Action.DELIVERED) or (
                    policy.delivered_after_delay_notice and progress.delay_notified
                )
                action = Action.DELIVERED
            else:
                continue
            if wanted:
                reports.append(
                    RecipientReport(
                        recipient,
                        action,
                        result.status,
                        result.diagnostic,
                        result.remote_mta or progress.remote_mta,
                        now,
                    )
                )
        delay_notified: list[int] = []
        if policy.delay_notice and in_retry_phase(policy, envelope.arrival, now):
            until = give_up_time(policy, envelope.arrival)
            for position in pending:
                recipient = envelope.recipients[position]
                progress = _progress(message, position)
                if self._hold_end(recipient, envelope.arrival) is not None:
                    continue  # held for its gateway: stored as meant, not delayed
                if progress.delay_notified or not wants_notice(sender, recipient, Action.DELAYED):
                    continue
                latest = by_position.get(position)
                reports.append(
                    RecipientReport(
                        recipient,
                        Action.DELAYED,
                        recipient.status if latest is None else latest.status,
                        recipient.diagnostic if latest is None else latest.diagnostic,
                        progress.remote_mta if latest is None else latest.remote_mta,
                        progress.last_attempt if latest is None else now,
                        until,
                    )
                )
                delay_notified.append(position)
        return reports, delay_notified

    def _notice(
        self, message: QueuedMessage, reports: Sequence[RecipientReport], now: float
    ) -> Notice:
        assert message.body is not None
        body = build_dsn(
            self._hostname,
            message.envelope,
            reports,
            message.body,
            now,
            f"<{uuid.uuid4().hex}@{self._hostname}>",
            texts=self._policy.texts,
        )
        return Notice(notice_envelope(message.envelope, self._hostname, now, body), body)

    def _hold_end(self, recipient: Recipient, arrival: float) -> float | None:
        # When a held recipient's hold ends; None when it is not held (or its gateway is gone).
        route = recipient.route
        if self._hold_time is None or route is None or route.kind is not RouteKind.GATEWAY_HOLD:
            return None
        assert route.target is not None
        hold = self._hold_time(route.target)
        return None if hold is None else arrival + hold

    def _expire(
        self,
        message: QueuedMessage,
        position: int,
        result: RecipientResult | None,
        *,
        held: bool = False,
    ) -> RecipientResult:
        recipient = message.envelope.recipients[position]
        status = recipient.status if result is None else result.status
        diagnostic = recipient.diagnostic if result is None else result.diagnostic
        remote_mta = None if result is None else result.remote_mta
        if held:
            return RecipientResult(
                position,
                _FAILED,
                "4.4.7",
                "delivery time expired; held for its gateway domain and not released",
                remote_mta,
            )
        if not _SMTP_REPLY.match(diagnostic):
            last = f"{status} {diagnostic}".strip() or "none"
            diagnostic = f"delivery time expired; last error: {last}"
        return RecipientResult(position, _FAILED, "4.4.7", diagnostic, remote_mta)

    def log_attempt(
        self,
        message: QueuedMessage,
        results: Sequence[RecipientResult],
        outcome: AttemptOutcome,
        now: float,
        where: dict[int, Where] | None = None,
    ) -> None:
        """
        Write the mail-log lines of an attempt (L{mdtwist.maillog.delivery} per recipient,
        then the notice, if any): for the queue runner's own attempts, and for deliveries made
        elsewhere and concluded with L{conclude} (a gateway's ETRN or ATRN).

        @param message: the message as it was before the attempt.
        @param results: the results of the attempt, as given to L{conclude}.
        @param outcome: what L{conclude} made of them.
        @param now: the time after the attempt.
        @param where: for local copies, the agent and the mailbox an address led to.
        """
        # A recipient that expired without being attempted now (held, no remote delivery)
        # counts no attempt.
        attempted = {r.position for r in results}
        where = {} if where is None else where
        recipients = message.envelope.recipients
        delay = now - message.envelope.arrival
        for result in outcome.results:
            recipient = recipients[result.position]
            place = where.get(result.position)
            if result.remote_mta is not None:
                relay = result.remote_mta
            else:
                relay = place.relay if place is not None else "none"
            if result.position in outcome.expired:
                status = maillog.Status.EXPIRED
            elif result.state is _DELIVERED:
                status = maillog.Status.SENT
            elif result.state is _PENDING:
                status = maillog.Status.DEFERRED
            else:
                status = maillog.Status.BOUNCED
            maillog.delivery(
                queue_id=message.queue_id,
                rcpt=recipient.address,
                mailbox=None if place is None else place.mailbox,
                relay=relay,
                relay_address=result.relay_address,
                delay=delay,
                attempt=recipient.attempts + (1 if result.position in attempted else 0),
                enhanced=result.status,
                status=status,
                reason=result.diagnostic,
                next_attempt=outcome.next_attempt,
            )
        if outcome.reported:
            maillog.notice(
                queue_id=message.queue_id,
                mail_from=message.envelope.sender,
                actions=outcome.reported,
                nrcpt=len(outcome.reported),
            )


def _progress(message: QueuedMessage, position: int) -> RecipientProgress:
    if position < len(message.progress):
        return message.progress[position]
    return RecipientProgress()


def _with_routes(message: QueuedMessage, routes: dict[int, Route]) -> QueuedMessage:
    # The message with the routes found for recipients queued before routes were stored.
    recipients = tuple(
        attrs.evolve(recipient, route=routes[position]) if position in routes else recipient
        for position, recipient in enumerate(message.envelope.recipients)
    )
    return attrs.evolve(message, envelope=attrs.evolve(message.envelope, recipients=recipients))


def _directory_down(position: int) -> RecipientResult:
    return RecipientResult(position, _PENDING, "4.4.3", "directory unavailable")
