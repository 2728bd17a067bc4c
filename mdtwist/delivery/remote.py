# -*- test-case-name: tests.delivery.test_remote -*-
"""
Remote delivery: the queue runner's C{RemoteDelivery} for recipients in other domains.

Theory of operation: each recipient goes where its stored route (L{mdtwist.route.Route}) says:
C{REMOTE} to its domain's servers (or the smart host), C{SHARING_PEER} to that Domain Sharing
peer (its address records on its port, never MX, never the smart host). The recipients of one
attempt are grouped as the router says (one group per domain or peer when delivering directly;
one group for every C{REMOTE} recipient when all mail goes to the smart host). For each group
a fresh L{Progress} starts and L{route} is asked for the next step until it gives a final
answer:
  - L{Resolve}: ask the L{MXResolver} (MX lookup, or address records for C{[host]} and
    sharing peers) and put the result into the progress;
  - L{Connect}: try the hops in order. A hop is one host; its addresses are tried until one
    takes a connection (addresses that refuse are remembered in L{FailedHosts}, the dead-host
    cache; a host whose every address is down there is not connected to at all, and its
    recipients wait until the first of them may be tried again). After each
    host L{judge_recipient} decides every recipient still open: delivered, bounced, deferred,
    next host, or unreachable. When every host was unreachable for some recipients, the
    progress says so and the router decides between the smart-host fallback and a deferral;
  - L{Bounce}, L{Defer}, L{Hold}: the final result of the recipients still open.
Smart-host sessions use the configured credentials (or the sending account's own smart-host
login, with per-account AUTH) and, with POP-before-SMTP, a POP3 login first; a failed POP
login defers. A temporary result that came from an SMTP reply asks the queue to wait at least
C{delay_after_temp_error} before the next attempt (MDaemon's "delay after a 4xx").
A C{SHARING_PEER} recipient that fails with C{5.1.1} (the peer has no such mailbox any more)
bounces like any other, and its address is handed to C{forget_peer_address} so that the Domain
Sharing cache stops routing it to that peer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from mdtwist.address import parse_address
from mdtwist.delivery.hosts import FailedHosts, MXResult
from mdtwist.delivery.mx import MXResolver
from mdtwist.delivery.router import (
    Bounce,
    Connect,
    Defer,
    Destination,
    DomainKind,
    Hop,
    HostOutcome,
    HostSpecError,
    Lookup,
    Progress,
    Resolve,
    RoutingPolicy,
    Verdict,
    group_recipients,
    judge_recipient,
    parse_host_spec,
    route,
)
from mdtwist.envelope import RecipientState
from mdtwist.interfaces import IDirectory
from mdtwist.route import Route, RouteKind
from mdtwist.smtp.client import Destination as SMTPDestination
from mdtwist.smtp.client import SMTPClient
from mdtwist.smtp.core.client import (
    Credentials,
    RecipientOutcome,
    RecipientStatus,
    SessionStatus,
    Transaction,
)
from mdtwist.smtp.modes import TLSMode
from mdtwist.spool.model import QueuedMessage, RecipientResult

log = Logger()

_PENDING = RecipientState.PENDING


@attrs.frozen
class SmartHostAccess:
    """
    How to get the smart host to take our mail.

    @ivar tls: TLS towards the smart host.
    @ivar credentials: the global AUTH login, or L{None}.
    @ivar plaintext_auth: whether AUTH may be sent before TLS.
    @ivar per_account: use the sending account's own smart-host login when it has one.
    @ivar mailbox_password: with C{per_account}, send the password the sender authenticated
        with (kept with the message) instead of the account's smart-host password (MDaemon's
        C{ISPAUTHUsePasswords}).
    @ivar pop_login: logs in to the POP3 server before a smart-host session and fires with
        whether that worked (POP-before-SMTP), or L{None}.
    """

    tls: TLSMode = TLSMode.VERIFIED
    credentials: Credentials | None = None
    plaintext_auth: bool = False
    per_account: bool = False
    mailbox_password: bool = False
    pop_login: Callable[[], Deferred[bool]] | None = None


class RemoteDelivery:
    """
    Delivers recipients of queued messages to other hosts; see the module docstring.
    """

    def __init__(
        self,
        *,
        policy: RoutingPolicy,
        resolver: MXResolver,
        client: SMTPClient,
        failed_hosts: FailedHosts,
        connect: Callable[[str, int], IStreamClientEndpoint],
        directory: IDirectory,
        smart_host: SmartHostAccess,
        mx_tls: TLSMode = TLSMode.OPPORTUNISTIC,
        abort_on_rcpt_5xx: bool = False,
        delay_after_temp_error: float = 0.0,
        forget_peer_address: Callable[[str], object] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param policy: the routing settings.
        @param resolver: resolves MX hosts and smart hosts.
        @param client: the SMTP client.
        @param failed_hosts: remembers addresses that refused connections.
        @param connect: makes the client endpoint for an address and port.
        @param directory: finds the sending account for per-account smart-host AUTH.
        @param smart_host: how to use the smart host.
        @param mx_tls: TLS towards MX hosts.
        @param abort_on_rcpt_5xx: MDaemon's "abort delivery if a RCPT gets 5xx".
        @param delay_after_temp_error: the least wait, in seconds, after an SMTP 4xx.
        @param forget_peer_address: called with the address of a sharing-peer recipient the
            peer refused with C{5.1.1} (L{mdtwist.sharing.service.SharingService.drop}).
        @param clock: the time for the dead-host cache; without one, C{failed_hosts} is not
            used (every address is tried).
        """
        self._policy = policy
        self._resolver = resolver
        self._client = client
        self._failed = failed_hosts
        self._connect = connect
        self._directory = directory
        self._smart = smart_host
        self._mx_tls = mx_tls
        self._abort = abort_on_rcpt_5xx
        self._delay_after_4xx = delay_after_temp_error
        self._forget = forget_peer_address
        self._clock = clock

    def forget_failed_hosts(self) -> None:
        """
        Forget the dead-host cache, so that the next attempts try every host again (an
        operator's queue run).
        """
        self._failed.forget_all()

    async def __call__(
        self, message: QueuedMessage, positions: Sequence[int]
    ) -> Sequence[RecipientResult]:
        """
        Attempt delivery of the given recipients (by position in the envelope).

        A coroutine: the queue runner awaits it in its own coroutine, without a Deferred in
        between (this runs once per message).

        @return: one result per recipient.
        """
        recipients = message.envelope.recipients
        labelled = []
        results: list[RecipientResult] = []
        for position in positions:
            recipient = recipients[position]
            try:
                destination = _destination(recipient.address, recipient.route)
            except HostSpecError as e:
                log.warn(
                    "Bad sharing peer for {rcpt} of {queue_id}: {error}",
                    rcpt=recipient.address,
                    queue_id=message.queue_id,
                    error=str(e),
                )
                results.append(RecipientResult(position, _PENDING, "4.3.5", "bad sharing peer"))
                continue
            # The router groups opaque labels; the position is ours to get back.
            labelled.append((str(position), destination))
        for group in group_recipients(self._policy, labelled):
            members = [int(label) for label in group.recipients]
            results.extend(await self._deliver_group(message, group.destination, members))
        if self._forget is not None:
            self._forget_unknown(message, results)
        return results

    def _forget_unknown(self, message: QueuedMessage, results: Sequence[RecipientResult]) -> None:
        # A sharing peer that says "no such user" for an address it was routed for.
        assert self._forget is not None
        recipients = message.envelope.recipients
        for result in results:
            recipient = recipients[result.position]
            route = recipient.route
            if (
                result.state is RecipientState.FAILED
                and result.status == "5.1.1"
                and route is not None
                and route.kind is RouteKind.SHARING_PEER
            ):
                log.info(
                    "sharing peer {peer} has no {rcpt} ({queue_id}): forgotten",
                    peer=route.target,
                    rcpt=recipient.address,
                    queue_id=message.queue_id,
                )
                self._forget(recipient.address)

    async def _deliver_group(
        self, message: QueuedMessage, destination: Destination, members: list[int]
    ) -> list[RecipientResult]:
        progress = Progress()
        results: dict[int, RecipientResult] = {}
        last: dict[int, RecipientResult] = {}
        open_ = list(members)
        while open_:
            decision = route(self._policy, destination, progress)
            if isinstance(decision, Resolve):
                found = await self._resolve(decision)
                progress = (
                    attrs.evolve(progress, relay=found)
                    if decision.relay
                    else attrs.evolve(progress, direct=found)
                )
            elif isinstance(decision, Connect):
                open_ = await self._connect_hops(message, decision, open_, results, last)
                if open_:
                    status = _last_status(last, open_)
                    progress = (
                        attrs.evolve(progress, relay_failed=True, relay_status=status)
                        if decision.relay
                        else attrs.evolve(progress, direct_failed=True, direct_status=status)
                    )
            else:
                for position in open_:
                    results[position] = self._final(decision, position, last.get(position))
                open_ = []
        return [results[position] for position in members]

    async def _resolve(self, step: Resolve) -> MXResult:
        if step.lookup is Lookup.ADDRESS:
            return await self._resolver.resolve_address(step.name)
        return await self._resolver.resolve(step.name)

    def _final(
        self, decision: object, position: int, last: RecipientResult | None
    ) -> RecipientResult:
        if isinstance(decision, Bounce):
            diagnostic = (
                last.diagnostic if last is not None and last.diagnostic else decision.reason
            )
            return RecipientResult(position, RecipientState.FAILED, decision.status, diagnostic)
        if isinstance(decision, Defer):
            if last is not None and last.state is _PENDING:
                return last
            return RecipientResult(position, _PENDING, decision.status, decision.reason)
        reason = getattr(decision, "reason", "not deliverable from here")
        return RecipientResult(position, _PENDING, "4.4.0", str(reason))

    async def _connect_hops(
        self,
        message: QueuedMessage,
        step: Connect,
        open_: list[int],
        results: dict[int, RecipientResult],
        last: dict[int, RecipientResult],
    ) -> list[int]:
        # Try the hops in order; return the recipients every host was unreachable for.
        outcomes: dict[int, list[HostOutcome]] = {position: [] for position in open_}
        for index, hop in enumerate(step.hops):
            more = index < len(step.hops) - 1
            answers = await self._try_hop(message, hop, open_)
            still_open = []
            for position in open_:
                outcome, result = answers[position]
                outcomes[position].append(outcome)
                last[position] = result
                verdict = judge_recipient(self._policy, outcomes[position], more)
                if verdict is Verdict.DELIVERED:
                    results[position] = result
                elif verdict is Verdict.BOUNCE:
                    results[position] = attrs.evolve(result, state=RecipientState.FAILED)
                elif verdict is Verdict.DEFER:
                    results[position] = attrs.evolve(result, state=_PENDING)
                else:
                    still_open.append(position)
            open_ = still_open
            if not open_:
                break
        return open_

    async def _try_hop(
        self, message: QueuedMessage, hop: Hop, positions: list[int]
    ) -> dict[int, tuple[HostOutcome, RecipientResult]]:
        clock = self._clock
        if clock is not None and not self._failed.filter_up(
            hop.addresses, hop.port, clock.seconds()
        ):
            # Every address of the hop failed recently (the dead-host cache): no POP-before-SMTP
            # login, no credentials, no connection; the recipients wait as after a failure.
            return self._unreachable(hop, positions, tried=False)
        destination = await self._destination(message, hop)
        if destination is None:
            result = (HostOutcome.TEMPORARY, "4.7.0", "POP-before-SMTP login failed")
            return {
                p: (result[0], RecipientResult(p, _PENDING, result[1], result[2]))
                for p in positions
            }
        envelope = message.envelope
        assert message.body is not None
        pending = list(positions)
        answers: dict[int, tuple[HostOutcome, RecipientResult]] = {}
        # With "abort on RCPT 5xx", the recipients that were not refused are sent again at
        # once in a new transaction (at most once per refused recipient).
        for _ in range(len(positions) + 1):
            transaction = Transaction(
                sender=envelope.sender,
                recipients=tuple(envelope.recipients[p] for p in pending),
                body=message.body,
                body_type=envelope.body_type,
                smtputf8=envelope.smtputf8,
                ret=envelope.ret,
                envid=envelope.envid,
            )
            report = None
            addresses = (
                hop.addresses
                if clock is None
                else self._failed.filter_up(hop.addresses, hop.port, clock.seconds())
            )
            for address in addresses:
                report = await self._client.deliver(
                    self._connect(address, hop.port),
                    destination,
                    [transaction],
                    queue_id=message.queue_id,
                )
                if report.session.status is SessionStatus.CONNECTION_FAILED:
                    if clock is not None:
                        self._failed.mark_failed(address, hop.port, clock.seconds())
                    log.info(
                        "No connection to {mx} ({address}) for {queue_id}",
                        mx=hop.host,
                        address=address,
                        queue_id=message.queue_id,
                    )
                    continue
                self._failed.mark_ok(address, hop.port)
                break
            if report is None or report.session.status is SessionStatus.CONNECTION_FAILED:
                return self._unreachable(hop, pending, tried=report is not None)
            refused = report.session.status is SessionStatus.GREETING_REFUSED
            retry = []
            outcome_list = report.transactions[0].recipients if report.transactions else ()
            for p, outcome in zip(pending, outcome_list, strict=True):
                if outcome.status is RecipientStatus.RETRY_NOW:
                    retry.append(p)
                    continue
                answers[p] = self._answer(p, outcome, hop, refused, address)
            if not retry or len(retry) == len(pending):
                for p in retry:
                    answers[p] = (
                        HostOutcome.TEMPORARY,
                        RecipientResult(p, _PENDING, "4.0.0", "transaction aborted"),
                    )
                return answers
            pending = retry
        return answers

    def _unreachable(
        self, hop: Hop, positions: list[int], tried: bool
    ) -> dict[int, tuple[HostOutcome, RecipientResult]]:
        # No address of the hop took a connection (tried now, or known down): the recipients
        # wait at least until the first of its addresses may be tried again.
        text = f"no connection to {hop.host}"
        retry_after = None
        if self._clock is not None:
            now = self._clock.seconds()
            until = self._failed.all_down_until(hop.addresses, hop.port, now)
            if until is not None:
                retry_after = until - now
                if not tried:
                    text = f"{text} (failed recently; not tried again for {retry_after:.0f} s)"
        return {
            p: (
                HostOutcome.UNREACHABLE,
                RecipientResult(p, _PENDING, "4.4.1", text, retry_after=retry_after),
            )
            for p in positions
        }

    def _answer(
        self,
        position: int,
        outcome: RecipientOutcome,
        hop: Hop,
        greeting_refused: bool,
        address: str,
    ) -> tuple[HostOutcome, RecipientResult]:
        diagnostic = (
            f"{outcome.code} {outcome.enhanced} {outcome.text}".strip()
            if outcome.code is not None
            else outcome.text
        )
        if outcome.status is RecipientStatus.DELIVERED:
            state, kind = RecipientState.DELIVERED, HostOutcome.ACCEPTED
        elif outcome.status is RecipientStatus.PERMANENT:
            state, kind = RecipientState.FAILED, HostOutcome.PERMANENT
        else:
            state = _PENDING
            kind = HostOutcome.GREETING_REFUSED if greeting_refused else HostOutcome.TEMPORARY
        retry_after = (
            self._delay_after_4xx
            if state is _PENDING and outcome.code is not None and 400 <= outcome.code < 500
            else None
        )
        return kind, RecipientResult(
            position,
            state,
            outcome.enhanced,
            diagnostic,
            remote_mta=hop.host,
            retry_after=retry_after,
            relay_address=address,
        )

    async def _destination(self, message: QueuedMessage, hop: Hop) -> SMTPDestination | None:
        # How to talk to this hop; None when POP-before-SMTP failed.
        if not hop.smart_host:
            return SMTPDestination(
                host=_bare(hop.host),
                port=hop.port,
                tls=self._mx_tls,
                abort_on_rcpt_5xx=self._abort,
            )
        if self._smart.pop_login is not None:
            try:
                if not await self._smart.pop_login():
                    log.warn(
                        "POP-before-SMTP login refused; {queue_id} deferred",
                        queue_id=message.queue_id,
                    )
                    return None
            except Exception as e:
                log.warn(
                    "POP-before-SMTP failed: {error}; {queue_id} deferred",
                    error=str(e),
                    queue_id=message.queue_id,
                )
                return None
        return SMTPDestination(
            host=_bare(hop.host),
            port=hop.port,
            tls=self._smart.tls,
            credentials=await self._credentials(message),
            allow_plain_auth_without_tls=self._smart.plaintext_auth,
            abort_on_rcpt_5xx=self._abort,
        )

    async def _credentials(self, message: QueuedMessage) -> Credentials | None:
        if not self._smart.per_account:
            return self._smart.credentials
        client = message.envelope.client
        account = None
        for who in (client.user, message.envelope.sender):
            if who:
                try:
                    account = await self._directory.find(who)
                except Exception:
                    account = None
                if account is not None:
                    break
        if self._smart.mailbox_password and client.user and client.password is not None:
            login = account.smarthost_login if account and account.smarthost_login else client.user
            return Credentials(login, client.password)
        if account is not None and account.smarthost_login and account.smarthost_password:
            return Credentials(account.smarthost_login, account.smarthost_password)
        return self._smart.credentials


def _destination(address: str, route: Route | None) -> Destination:
    # The router's view of a recipient's stored route (the queue runner has classified any
    # recipient queued before routes were stored, so None only comes from other callers).
    parsed = parse_address(address)
    domain = parsed.domain if parsed is not None else ""
    if route is None or route.kind is RouteKind.REMOTE:
        return Destination(domain)
    if route.kind is RouteKind.SHARING_PEER:
        assert route.target is not None
        return Destination(domain, DomainKind.SHARING_PEER, parse_host_spec(route.target))
    if route.kind is RouteKind.GATEWAY_HOLD:
        return Destination(domain, DomainKind.GATEWAY)
    return Destination(domain, DomainKind.LOCAL)


def _bare(host: str) -> str:
    # The name to verify a certificate against: an address literal without its brackets.
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        return host[5:] if host.lower().startswith("ipv6:") else host
    return host


def _last_status(last: dict[int, RecipientResult], positions: Sequence[int]) -> str:
    for position in reversed(positions):
        result = last.get(position)
        if result is not None and result.status:
            return result.status
    return ""
