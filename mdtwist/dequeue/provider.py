# -*- test-case-name: tests.dequeue.test_provider -*-
"""
The provider side of dequeuing: ETRN on the SMTP listeners and the ODMR listener, ATRN on the
ODMR listener (RFC 1985, RFC 2645).

ETRN (L{GatewayProvider.etrn_handler}) checks the request and answers at once: the held mail
of the domains is counted in every shard and released there in the background over new
connections (L{mdtwist.dequeue.release}); C{251} when nothing is held, C{253} with the count
otherwise.

ATRN (L{GatewayProvider.atrn}, ODMR listener only, first process only): after a gateway login
(CRAM-MD5), the requested domains (or all of the login's) are checked, the held messages of
every shard are leased to the session, the first one is loaded, and the single-line C{250} turns
the connection round (L{mdtwist.smtp.switch}). We are then an SMTP client on the same
connection (L{TurnedSession}): one transaction per message with only its released recipients;
after each message its results go to the shard that owns it (C{2xx} delivered, C{5xx} bounced
with a DSN, C{4xx} kept held), then the next one is loaded; at the end we say QUIT. A customer
that closes, refuses the greeting or goes silent (every wait has a timeout) ends the session:
the messages not finished stay held, with no bounce, and every lease is given back.
"""

from __future__ import annotations

import itertools
import weakref
from collections import deque
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IReactorTime,
)
from twisted.logger import Logger

from mdtwist import metrics
from mdtwist.dequeue.gateways import EtrnTarget, Gateway, GatewayBook, ProviderSettings
from mdtwist.dequeue.held import HeldMessage
from mdtwist.dequeue.release import Release, Shards
from mdtwist.dequeue.requests import (
    ATRN_AUTH_REQUIRED,
    ATRN_BUSY,
    ATRN_IN_TRANSACTION,
    ATRN_NO_MAIL,
    ATRN_REFUSED,
    ATRN_TURNING,
    ETRN_AUTH_REQUIRED,
    ETRN_FAILED,
    ETRN_NOT_IN_TRANSACTION,
    ETRN_TOO_MANY,
    atrn_domains,
    etrn_refused,
    etrn_started,
    parse_atrn,
    parse_etrn,
)
from mdtwist.envelope import RecipientState
from mdtwist.interfaces import IReceivePolicy, ISpool
from mdtwist.logging import escape_text
from mdtwist.portal import GATEWAY, LoginPortal
from mdtwist.route import Route, RouteKind
from mdtwist.smtp.client import ClientTimeouts, DeliveryReport, Destination, SMTPClientProtocol
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientSettings,
    RecipientOutcome,
    RecipientStatus,
    SessionOutcome,
    StartTLSPolicy,
    Transaction,
)
from mdtwist.smtp.core.events import ExtensionCommand
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.server import (
    CommandAnswer,
    CommandHandler,
    SessionLimits,
    SMTPServerFactory,
    SMTPServerProtocol,
)
from mdtwist.smtp.switch import SwitchingFactory, switching
from mdtwist.spool.model import Queue, QueuedMessage, RecipientResult

log = Logger()

#: Loads a message with its body from a shard (read-only): C{(shard, queue_id)}.
Loader = Callable[[int, str], Deferred["QueuedMessage | None"]]

#: The verbs the ODMR listener accepts before the turn (RFC 2645 section 5.4: others get 502).
ODMR_COMMANDS = ("EHLO", "STARTTLS", "AUTH", "ATRN", "ETRN", "QUIT")


def _answer(reply: Reply) -> CommandAnswer:
    return CommandAnswer(reply)


def _counted(answer: CommandAnswer, kind: str) -> CommandAnswer:
    # Count a dequeue request by its reply's class (mdtwist_dequeue_signals_total).
    metrics.dequeue_signal(kind, "accepted" if answer.reply.is_positive else "refused")
    return answer


def etrn_route(gateway: Gateway, requester: str) -> Route:
    """
    Where ETRN sends a gateway's mail.

    @param gateway: the gateway.
    @param requester: the address the ETRN came from.
    @return: the route its held recipients take for this release.
    """
    if gateway.etrn_target is EtrnTarget.HOST:
        return Route.sharing_peer(gateway.etrn_host)
    if gateway.etrn_target is EtrnTarget.REQUESTER:
        return Route.sharing_peer(f"[{requester}]:{gateway.etrn_port}")
    return Route.remote()


class GatewayProvider:
    """
    Answers ETRN and ATRN for the configured gateways.
    """

    def __init__(
        self,
        book: GatewayBook,
        settings: ProviderSettings,
        clock: IReactorTime,
        *,
        release: Release,
        shards: Shards | None = None,
        load: Loader | None = None,
        hostname: str = "localhost",
    ) -> None:
        """
        @param book: the gateways.
        @param settings: the provider settings.
        @param clock: drives every timeout.
        @param release: releases domains in every process (ETRN).
        @param shards: the held mail of every shard (ATRN; the first process only).
        @param load: reads a held message of a shard (ATRN).
        @param hostname: our name, in EHLO after the turn.
        """
        self.book = book
        self.settings = settings
        self.clock = clock
        self._release = release
        self._shards = shards
        self._load = load
        self._hostname = hostname
        self._etrn_counts: weakref.WeakKeyDictionary[SMTPServerProtocol, int] = (
            weakref.WeakKeyDictionary()
        )
        self._ids = itertools.count(1)
        #: The ATRN sessions running: lease name -> (login, domains).
        self.active: dict[str, tuple[str, frozenset[str]]] = {}

    def release_targets(self, domains: Sequence[str]) -> tuple[dict[str, Route], list[str]]:
        """
        Where an operator's release sends each gateway's mail (C{gateway-release}).

        @param domains: gateway domains, lower case; empty for every gateway.
        @return: the route of each domain that can be released so, and the domains skipped
            (not gateways, or delivered to the requester's address, which an operator's
            release does not have).
        """
        names = list(domains) or [g.domain for g in self.book.gateways]
        routes: dict[str, Route] = {}
        skipped: list[str] = []
        for name in names:
            gateway = self.book.find(name)
            if gateway is None or gateway.etrn_target is EtrnTarget.REQUESTER:
                skipped.append(name)
            else:
                routes[name] = etrn_route(gateway, "")
        return routes, skipped

    # -- ETRN --

    def etrn_handler(self, gateway_auth: bool) -> CommandHandler:
        """
        The ETRN handler of one listener.

        @param gateway_auth: whether the listener's AUTH is a gateway login (the ODMR
            listener); on the others no session is authenticated as a gateway.
        @return: the handler.
        """

        def handle(
            session: SMTPServerProtocol, command: ExtensionCommand
        ) -> Deferred[CommandAnswer]:
            d = Deferred.fromCoroutine(self._etrn(session, command, gateway_auth))
            return d.addCallback(_counted, "etrn-received")

        return handle

    async def _etrn(
        self, session: SMTPServerProtocol, command: ExtensionCommand, gateway_auth: bool
    ) -> CommandAnswer:
        if session.core.sender is not None:
            return _answer(ETRN_NOT_IN_TRANSACTION)
        request = parse_etrn(command.argument)
        if isinstance(request, Reply):
            return _answer(request)
        count = self._etrn_counts.get(session, 0) + 1
        self._etrn_counts[session] = count
        if count > self.settings.etrn_per_session:
            return _answer(ETRN_TOO_MANY)
        node = command.argument
        client = session.client
        if request.queue:
            return _answer(etrn_refused(node, "unknown queue"))
        matched = [
            g for g in self.book.etrn_matches(request.domain, request.subdomains) if g.honour_etrn
        ]
        if not matched:
            return _answer(etrn_refused(node, "not a gateway domain we release by ETRN"))
        login = client.user.lower() if gateway_auth and client.user else None
        allowed: list[Gateway] = []
        refusal: Reply | None = None
        for gateway in matched:
            authed = login == gateway.login
            if gateway.etrn_requires_auth and not authed:
                refusal = refusal or (
                    ETRN_AUTH_REQUIRED
                    if login is None
                    else etrn_refused(node, "authenticated as another gateway")
                )
            elif not gateway.address_allowed(client.address, authed):
                refusal = refusal or etrn_refused(node, "not allowed from your address")
            else:
                allowed.append(gateway)
        if not allowed:
            assert refusal is not None
            log.info(
                "ETRN {node} from {peer} refused: {code}",
                node=escape_text(node),
                peer=client.address,
                code=refusal.code,
            )
            return _answer(refusal)
        targets = {g.domain: etrn_route(g, client.address) for g in allowed}
        try:
            found = await self._release([g.domain for g in allowed], targets)
        except Exception:
            log.failure("ETRN {node}: the release failed", node=escape_text(node))
            return _answer(ETRN_FAILED)
        log.info(
            "ETRN {node} from {peer}: {count} held messages released",
            node=escape_text(node),
            peer=client.address,
            count=found,
        )
        return _answer(etrn_started(node, found))

    # -- ATRN --

    def atrn(
        self, session: SMTPServerProtocol, command: ExtensionCommand
    ) -> Deferred[CommandAnswer]:
        """
        The ATRN handler of the ODMR listener.

        @param session: the session.
        @param command: the command.
        @return: the answer; with C{250} it turns the connection round.
        """
        d = Deferred.fromCoroutine(self._atrn(session, command))
        return d.addCallback(_counted, "atrn-received")

    async def _atrn(self, session: SMTPServerProtocol, command: ExtensionCommand) -> CommandAnswer:
        client = session.client
        if client.user is None:
            return _answer(ATRN_AUTH_REQUIRED)
        if session.core.sender is not None:
            return _answer(ATRN_IN_TRANSACTION)
        requested = parse_atrn(command.argument)
        if isinstance(requested, Reply):
            return _answer(requested)
        login = client.user.lower()
        domains = atrn_domains(self.book, login, requested)
        gateways = [self.book.find(d) for d in domains or ()]
        if domains is None or not all(
            g is not None and g.address_allowed(client.address, True) for g in gateways
        ):
            log.info(
                "ATRN {request} by {login} from {peer} refused",
                request=escape_text(command.argument),
                login=login,
                peer=client.address,
            )
            return _answer(ATRN_REFUSED)
        wanted = frozenset(domains)
        one_session = any(g is not None and g.one_atrn_session for g in gateways)
        for other_login, other in self.active.values():
            if other & wanted or (one_session and other_login == login):
                return _answer(ATRN_BUSY)
        if self._shards is None or self._load is None:
            return _answer(ATRN_BUSY)
        holder = f"atrn-{next(self._ids)}"
        self.active[holder] = (login, wanted)
        turned = TurnedSession(self, holder, self._shards, self._load, wanted, client.address)
        try:
            claims = await turned.claim()
            ready = claims and await turned.load_next()
        except Exception:
            log.failure("ATRN by {login}: claiming held mail failed", login=login)
            await turned.finish()
            return _answer(ATRN_BUSY)
        if not ready:
            await turned.finish()
            log.info("ATRN by {login}: no mail for {domains}", login=login, domains=sorted(wanted))
            return _answer(ATRN_NO_MAIL)
        turned.expect_turn()
        log.info(
            "ATRN by {login} from {peer}: turning the connection for {count} messages",
            login=login,
            peer=client.address,
            count=claims,
        )
        return CommandAnswer(ATRN_TURNING, turn_to=turned.build)

    def client_protocol(
        self, peer: str, on_ended: Callable[[SessionOutcome], object]
    ) -> SMTPClientProtocol:
        """
        The SMTP client of a turned connection: no STARTTLS, no AUTH, every wait limited to
        C{turned_timeout}.

        @param peer: the customer's address, for the logs and the results.
        @param on_ended: called with the session's outcome when the connection ends.
        @return: the protocol.
        """
        t = self.settings.turned_timeout
        timeouts = attrs.evolve(
            ClientTimeouts(),
            greeting=t,
            helo=t,
            mail=t,
            rcpt=t,
            data=t,
            data_block=t,
            data_end=t,
            rset=t,
            quit=t,
        )
        core = ClientCore(ClientSettings(hostname=self._hostname, starttls=StartTLSPolicy.NEVER))
        protocol = SMTPClientProtocol(core, Destination(peer), self.clock, timeouts, _no_tls)
        protocol.ended.addCallback(on_ended)
        return protocol


def _no_tls() -> IOpenSSLClientConnectionCreator:
    # The turned session never starts TLS (StartTLSPolicy.NEVER): never called.
    raise RuntimeError("no TLS after the ATRN turn")


class TurnedSession:
    """
    One ATRN session's release: the leases it holds, and the SMTP client after the turn.
    """

    def __init__(
        self,
        provider: GatewayProvider,
        holder: str,
        shards: Shards,
        load: Loader,
        domains: frozenset[str],
        peer: str,
    ) -> None:
        self._provider = provider
        self._holder = holder
        self._shards = shards
        self._load = load
        self._domains = domains
        self._peer = peer
        self._claims: deque[tuple[int, HeldMessage]] = deque()
        self._next: tuple[int, QueuedMessage, tuple[int, ...]] | None = None
        self._protocol: SMTPClientProtocol | None = None
        self._ended = False
        self._finished = False
        self._recording: Deferred[None] | None = None
        self._turn_timer: IDelayedCall | None = None
        self.delivered = 0

    async def claim(self) -> int:
        """
        Lease the held messages of the domains in every shard.

        @return: how many messages were leased.
        """
        for shard in self._shards.shards():
            try:
                found = await self._shards.claim(shard, sorted(self._domains), self._holder)
            except Exception as e:
                log.warn(
                    "ATRN: shard {shard} did not hand over its held mail: {error}",
                    shard=shard,
                    error=str(e),
                )
                continue
            self._claims.extend((shard, held) for held in found)
        return len(self._claims)

    async def load_next(self) -> bool:
        """
        Load the next leased message that still has released recipients.

        @return: whether there is one.
        """
        while self._claims:
            shard, held = self._claims.popleft()
            try:
                message = await self._load(shard, held.queue_id)
            except Exception:
                log.failure("ATRN: cannot read {queue_id}", queue_id=held.queue_id)
                continue
            if message is None or message.queue is not Queue.ACTIVE or message.body is None:
                continue
            positions = tuple(p for p in held.positions if self._released(message, p))
            if positions:
                self._next = (shard, message, positions)
                return True
        return False

    def _released(self, message: QueuedMessage, position: int) -> bool:
        recipient = message.envelope.recipients[position]
        route = recipient.route
        return (
            recipient.state is RecipientState.PENDING
            and route is not None
            and route.kind is RouteKind.GATEWAY_HOLD
            and route.target in self._domains
        )

    def expect_turn(self) -> None:
        """
        The 250 is on its way: when the session is not turned in time (the customer went
        away meanwhile), give everything back.
        """
        self._turn_timer = self._provider.clock.callLater(
            self._provider.settings.turned_timeout, self._not_turned
        )

    def _not_turned(self) -> None:
        self._turn_timer = None
        if self._protocol is None:
            Deferred.fromCoroutine(self.finish())

    def build(self) -> IProtocol:
        """
        Build the SMTP client that takes the connection over after the 250, and start sending.

        @return: the protocol.
        """
        if self._turn_timer is not None and self._turn_timer.active():
            self._turn_timer.cancel()
        self._turn_timer = None
        protocol = self._provider.client_protocol(self._peer, self._session_ended)
        self._protocol = protocol
        self._send()
        return protocol

    def _send(self) -> None:
        assert self._protocol is not None and self._next is not None
        shard, message, positions = self._next
        self._next = None
        envelope = message.envelope
        assert message.body is not None
        transaction = Transaction(
            sender=envelope.sender,
            recipients=tuple(envelope.recipients[p] for p in positions),
            body=message.body,
            body_type=envelope.body_type,
            smtputf8=envelope.smtputf8,
            ret=envelope.ret,
            envid=envelope.envid,
        )
        d = self._protocol.run([transaction], message.queue_id)
        recorded = Deferred.fromCoroutine(self._sent(d, shard, message, positions))
        self._recording = recorded
        recorded.addErrback(lambda f: log.failure("ATRN: sending failed", f))

    async def _sent(
        self,
        batch: Deferred[DeliveryReport],
        shard: int,
        message: QueuedMessage,
        positions: Sequence[int],
    ) -> None:
        report = await batch
        outcome = report.transactions[0]
        results = [
            _result(position, recipient, self._peer)
            for position, recipient in zip(positions, outcome.recipients, strict=True)
        ]
        self.delivered += sum(r.state is RecipientState.DELIVERED for r in results)
        try:
            await self._shards.record(shard, message.queue_id, self._holder, results)
        except Exception:
            log.failure(
                "ATRN: recording the results of {queue_id} failed", queue_id=message.queue_id
            )
        more = not self._ended and report.session.ok and await self.load_next()
        if more and not self._ended:
            self._send()
            return
        self._recording = None
        if self._protocol is not None and not self._ended:
            self._protocol.quit()
        if self._ended:
            await self.finish()

    def _session_ended(self, outcome: SessionOutcome) -> None:
        self._ended = True
        log.info(
            "ATRN session {holder} to {peer} ended: {status} {detail}",
            holder=self._holder,
            peer=self._peer,
            status=outcome.status.value,
            detail=outcome.detail,
        )
        if self._recording is None:
            Deferred.fromCoroutine(self.finish())

    async def finish(self) -> None:
        """
        Give back every lease the session still holds, in every shard; its messages stay held.
        """
        if self._finished:
            return
        self._finished = True
        for shard in self._shards.shards():
            try:
                await self._shards.give_back(shard, self._holder)
            except Exception as e:
                log.warn(
                    "ATRN: shard {shard} did not take back the leases of {holder}: {error}",
                    shard=shard,
                    holder=self._holder,
                    error=str(e),
                )
        self._provider.active.pop(self._holder, None)


def _result(position: int, outcome: RecipientOutcome, peer: str) -> RecipientResult:
    # What one recipient's outcome on the turned connection means for the held recipient.
    diagnostic = (
        f"{outcome.code} {outcome.enhanced} {outcome.text}".strip()
        if outcome.code is not None
        else outcome.text
    )
    if outcome.status is RecipientStatus.DELIVERED:
        state = RecipientState.DELIVERED
    elif outcome.status is RecipientStatus.PERMANENT:
        state = RecipientState.FAILED
    else:
        state = RecipientState.PENDING
    return RecipientResult(position, state, outcome.enhanced, diagnostic, remote_mta=peer)


def odmr_settings(base: ServerSettings) -> ServerSettings:
    """
    The core settings of the ODMR listener.

    @param base: the SMTP listeners' settings.
    @return: the same limits, with CRAM-MD5 the only AUTH mechanism (offered with or without
        TLS: the password never crosses the wire), and only EHLO, STARTTLS (when the listener
        has a TLS context), AUTH, ATRN, ETRN and QUIT accepted.
    """
    return attrs.evolve(
        base,
        auth_mechanisms=("CRAM-MD5",),
        auth_without_tls=True,
        require_auth=False,
        only_commands=frozenset(ODMR_COMMANDS),
    )


def odmr_factory(
    provider: GatewayProvider,
    *,
    settings: ServerSettings,
    policy: IReceivePolicy,
    spool: ISpool,
    portal: LoginPortal,
    clock: IReactorTime,
    limits: SessionLimits,
    tls: IOpenSSLServerConnectionCreator | None = None,
) -> SwitchingFactory:
    """
    Build the ODMR listener's factory (port 366; the first process only).

    @param provider: answers ETRN and ATRN.
    @param settings: the SMTP listeners' core settings (see L{odmr_settings}).
    @param policy: never asked (MAIL is refused before it), given for the factory's sake.
    @param spool: likewise.
    @param portal: the login portal; AUTH logs in as a gateway (service C{"gateway"}).
    @param clock: the clock.
    @param limits: the session limits, with the ODMR idle timeout.
    @param tls: the C{[tls]} context: STARTTLS is offered with it, so that the mail on the
        turned connection is encrypted too.
    @return: the factory, whose connections can turn round.
    """
    factory = SMTPServerFactory(
        settings=odmr_settings(settings),
        mode=ListenerMode.MX,
        policy=policy,
        spool=spool,
        portal=portal,
        clock=clock,
        limits=limits,
        tls=tls,
        login_service=GATEWAY,
        listener="odmr",
        commands={"ATRN": provider.atrn, "ETRN": provider.etrn_handler(True)},
    )
    return switching(factory)
