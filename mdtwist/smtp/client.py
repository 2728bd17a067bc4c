# -*- test-case-name: tests.smtp.test_client -*-
"""
The outbound SMTP glue: one L{SMTPClientProtocol} per connection around a sans-IO
L{ClientCore}, and L{SMTPClient}, which opens, reuses and limits those connections.

Theory of operation: L{SMTPClient.deliver} queues a batch of transactions for a destination
(host and port). When a connection to that destination is idle and was opened with the same
settings, the batch runs on it (the core starts with C{RSET} to check it is alive); otherwise a
new connection is opened, unless C{max_per_host} connections to that host and port are open, in
which case the batch waits for one to come free. The protocol feeds received bytes to the core,
writes its commands, streams the message as a push producer, starts TLS when asked, and arms one
timer on the injected clock for whatever the core waits for (RFC 5321 4.5.3.2 defaults). When
every transaction of the batch is decided, the batch's Deferred fires with a L{DeliveryReport};
an idle connection is kept for C{idle_time} seconds, then closed with C{QUIT}.

A protocol also sends single commands (L{SMTPClientProtocol.command}: ETRN, ATRN ...). One that
turns the connection round (ATRN) is given C{turn_to}: after a single-line C{250} the protocol
detaches (L{SMTPClientProtocol.detach}) and the L{mdtwist.smtp.switch.SwitchingProtocol} it runs
in continues with the protocol C{turn_to} builds, fed the bytes that followed the C{250}.

Nothing here ever logs a password or a message body.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

import attrs
from twisted.internet import ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mdtwist.logging import quiet
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientEvent,
    ClientSettings,
    ClientState,
    CommandReplied,
    Credentials,
    Idle,
    Phase,
    RecipientStatus,
    SessionEnded,
    SessionOutcome,
    SessionStatus,
    StartTLSPolicy,
    TLSRequested,
    Transaction,
    TransactionDone,
    TransactionOutcome,
    Turned,
)
from mdtwist.smtp.core.events import Sentinel
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.modes import TLSMode as TLSMode  # re-exported: its home before smtp.modes
from mdtwist.smtp.switch import switcher_of

log = Logger()

#: How many message bytes are taken from the core per write.
BODY_BLOCK = 65536


_POLICIES = {
    TLSMode.NONE: StartTLSPolicy.NEVER,
    TLSMode.OPPORTUNISTIC: StartTLSPolicy.IF_OFFERED,
    TLSMode.VERIFIED: StartTLSPolicy.REQUIRED,
}


@attrs.frozen
class ClientTimeouts:
    """
    Seconds to wait for each step (RFC 5321 4.5.3.2 gives the minimums used as defaults).

    @ivar connect: for the connection to be made.
    @ivar greeting: for the C{220}.
    @ivar helo: for the reply to EHLO/HELO.
    @ivar starttls: for the reply to STARTTLS.
    @ivar auth: for each reply during AUTH.
    @ivar mail: for the reply to MAIL.
    @ivar rcpt: for the reply to RCPT.
    @ivar data: for the C{354}.
    @ivar data_block: for the transport to take the next block of the message.
    @ivar data_end: for the reply to the end of the message.
    @ivar rset: for the reply to RSET.
    @ivar quit: for the reply to QUIT.
    @ivar command: for the reply to a single command (ETRN, ATRN: the provider may search its
        queue first, so 10 minutes).
    """

    connect: float = 60.0
    greeting: float = 300.0
    helo: float = 300.0
    starttls: float = 120.0
    auth: float = 120.0
    mail: float = 300.0
    rcpt: float = 300.0
    data: float = 120.0
    data_block: float = 180.0
    data_end: float = 600.0
    rset: float = 120.0
    quit: float = 60.0
    command: float = 600.0

    def for_phase(self, phase: Phase) -> float:
        """
        The timeout for a reply.

        @param phase: what the reply answers.
        @return: seconds.
        """
        seconds: float = getattr(self, _TIMEOUT_FIELDS[phase])
        return seconds


#: The L{Timeouts} field for the reply to each phase.
_TIMEOUT_FIELDS = {
    Phase.CONNECT: "connect",
    Phase.GREETING: "greeting",
    Phase.EHLO: "helo",
    Phase.HELO: "helo",
    Phase.STARTTLS: "starttls",
    Phase.AUTH: "auth",
    Phase.MAIL: "mail",
    Phase.RCPT: "rcpt",
    Phase.DATA: "data",
    Phase.MESSAGE: "data_end",
    Phase.RSET: "rset",
    Phase.QUIT: "quit",
    Phase.COMMAND: "command",
}


@attrs.frozen
class Destination:
    """
    Where and how to deliver; connections are shared only between equal destinations.

    @ivar host: the host name: for the certificate check, the logs and the connection cache.
    @ivar port: the port.
    @ivar tls: the TLS mode.
    @ivar credentials: the login for AUTH, or L{None}.
    @ivar allow_plain_auth_without_tls: whether credentials may go over plaintext.
    @ivar abort_on_rcpt_5xx: MDaemon's "abort delivery if RCPT gets a 5xx".
    """

    host: str
    port: int = 25
    tls: TLSMode = TLSMode.OPPORTUNISTIC
    credentials: Credentials | None = None
    allow_plain_auth_without_tls: bool = False
    abort_on_rcpt_5xx: bool = False

    @property
    def key(self) -> tuple[str, int]:
        """The host (lower case) and port, for the per-host limit."""
        return (self.host.lower().rstrip("."), self.port)

    @property
    def label(self) -> str:
        """C{host:port}, for logs."""
        return f"{self.host}:{self.port}"


@attrs.frozen
class DeliveryReport:
    """
    The result of one batch.

    @ivar transactions: one outcome per transaction, in the order given.
    @ivar session: how the session went: L{SessionStatus.COMPLETED} when it ran to the end
        (the connection may have been kept for reuse), or why it ended early.
    """

    transactions: tuple[TransactionOutcome, ...]
    session: SessionOutcome


def trust_root_from_pem(path: Path) -> IOpenSSLTrustRoot:
    """
    Trust the CA certificates of a PEM file (instead of the platform store).

    @param path: the file.
    @return: the trust root.
    """
    certificate = ssl.Certificate.loadPEM(path.read_bytes())
    root: IOpenSSLTrustRoot = ssl.trustRootFromCertificates([certificate])
    return root


def client_tls_options(
    destination: Destination, trust_root: IOpenSSLTrustRoot | None = None
) -> IOpenSSLClientConnectionCreator:
    """
    The TLS options for STARTTLS to a destination.

    @param destination: the destination.
    @param trust_root: the CAs for L{TLSMode.VERIFIED}; the platform store when L{None}.
    @return: options for C{ITLSTransport.startTLS}: checked for the host name with
        service-identity in L{TLSMode.VERIFIED}, unchecked otherwise.
    """
    if destination.tls is TLSMode.VERIFIED:
        return ssl.optionsForClientTLS(
            destination.host,
            trustRoot=trust_root if trust_root is not None else ssl.platformTrust(),
        )
    # Opportunistic TLS: encrypt, check nothing (RFC 7435); startTLS takes context factories.
    return cast(IOpenSSLClientConnectionCreator, ssl.CertificateOptions())


@implementer(IPushProducer)
class SMTPClientProtocol(Protocol):
    """
    One outbound SMTP connection.

    @ivar core: the protocol core.
    @ivar destination: where it goes.
    @ivar ended: fires with the L{SessionOutcome} when the connection is gone.
    @ivar batches: how many batches ran on this connection.
    """

    def __init__(
        self,
        core: ClientCore,
        destination: Destination,
        clock: IReactorTime,
        timeouts: ClientTimeouts,
        tls_options: Callable[[], IOpenSSLClientConnectionCreator],
        on_idle: Callable[[SMTPClientProtocol], None] | None = None,
    ) -> None:
        """
        @param core: a new core, for this connection only.
        @param destination: where the connection goes.
        @param clock: drives every timeout.
        @param timeouts: the timeouts.
        @param tls_options: makes the TLS options when the server agrees to STARTTLS.
        @param on_idle: called when a batch is done and the connection is idle.
        """
        self.core = core
        self.destination = destination
        self.ended: Deferred[SessionOutcome] = Deferred()
        self.batches = 0
        self._clock = clock
        self._timeouts = timeouts
        self._tls_options = tls_options
        self._on_idle = on_idle
        self._timer: IDelayedCall | None = None
        self._processing = False
        self._paused = False
        self._gone = False
        self._batch: Deferred[DeliveryReport] | None = None
        self._outcomes: list[TransactionOutcome] = []
        self._queue_id: str | None = None
        self._started = 0.0
        self._outcome: SessionOutcome | None = None
        self._commands: deque[tuple[Deferred[Reply | None], Callable[[], IProtocol] | None]] = (
            deque()
        )
        self._producing = False
        self._detached = False

    def command(
        self, text: str, *, turn_to: Callable[[], IProtocol] | None = None
    ) -> Deferred[Reply | None]:
        """
        Send one command outside any transaction, after what was queued before it.

        @param text: the command line without CRLF (printable ASCII), e.g. C{ETRN example.com}.
        @param turn_to: for a command that turns the connection round (ATRN): builds the
            protocol that takes the connection over when the reply is a single-line C{250}.
            This protocol then detaches and the new one is connected and fed the bytes that
            followed the reply, before the Deferred fires. The connection must run inside a
            L{mdtwist.smtp.switch.SwitchingProtocol} (L{mdtwist.smtp.switch.switching_for}).
        @return: fires with the reply, or with L{None} when the session ended first.
        @raise ValueError: the text is not printable ASCII.
        @raise mdtwist.smtp.core.errors.LocalProtocolError: the session is ending, or turns.
        """
        self.core.add_command(text, turns=turn_to is not None)
        d: Deferred[Reply | None] = Deferred()
        self._commands.append((d, turn_to))
        self._process()
        return d

    def detach(self) -> bytes:
        """
        Let go of the connection without closing it, for another protocol to take it over:
        the timer is cancelled, the producer unregistered, nothing more is written or read,
        an unfinished batch is decided (undecided recipients temporary), pending commands fire
        with L{None}, and L{ended} fires (so L{SMTPClient} frees the connection's place); a
        later C{connectionLost} changes nothing.

        @return: the bytes received and not yet read by the core.
        """
        if self._detached:
            return b""
        self._detached = True
        self._gone = True
        self._cancel_timer()
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()  # type: ignore[union-attr]
        unread = self.core.detach()
        while not isinstance(event := self.core.next_event(), Sentinel):
            self._handle(event)
        self._fire_ended()
        log.info("SMTP connection to {mx} handed over", mx=self.destination.label)
        return unread

    def run(
        self, transactions: Sequence[Transaction], queue_id: str | None = None
    ) -> Deferred[DeliveryReport]:
        """
        Send a batch of transactions on this connection.

        @param transactions: the transactions, at least one.
        @param queue_id: the queue id, for logs.
        @return: fires with the report when every transaction is decided.
        """
        if self._batch is not None:
            raise RuntimeError("a batch is already running on this connection")
        batch: Deferred[DeliveryReport] = Deferred()
        self._batch = batch
        self._outcomes = []
        self._queue_id = queue_id
        self._started = self._clock.seconds()
        self.batches += 1
        for transaction in transactions:
            self.core.add_transaction(transaction)
        self._process()
        return batch

    def quit(self) -> None:
        """Say QUIT (once the running batch is done) and close."""
        self.core.quit()
        self._process()

    def connection_failed(self, reason: Failure) -> None:
        """
        The connection could not be made: decide the batch and fire L{ended}.

        @param reason: why.
        """
        self.core.connection_failed(reason.getErrorMessage())
        self._gone = True
        self._process()
        self._fire_ended()

    # -- Twisted callbacks --

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        self._producing = True
        self._process()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.core.receive_data(data)
        self._process()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._producing = False
        if self._detached:
            return
        self._cancel_timer()
        if not self._gone:
            self._gone = True
            self.core.connection_lost(reason.getErrorMessage())
            self._process()
        self._fire_ended()

    def pauseProducing(self) -> None:  # noqa: N802
        """
        The transport's buffer is full: stop writing the message (the data-block timeout runs).
        """
        self._paused = True
        self._schedule()

    def resumeProducing(self) -> None:  # noqa: N802
        """
        The transport's buffer drained: go on writing the message.
        """
        self._paused = False
        self._process()

    def stopProducing(self) -> None:  # noqa: N802
        """
        The connection is going away: write nothing more.
        """
        self._paused = True

    # -- the event loop --

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while True:
                event = self.core.next_event()
                self._flush()
                if not isinstance(event, Sentinel):
                    self._handle(event)
                    continue
                if self.core.sending_body and not self._gone:
                    self._write_body()
                    if self.core.sending_body:
                        break
                    continue
                if event is Sentinel.CLOSE and not self._gone:
                    self._gone = True
                    self.transport.loseConnection()  # type: ignore[union-attr]
                break
        finally:
            self._processing = False
        self._schedule()

    def _flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self._gone and self.transport is not None:
            self.transport.write(data)

    def _write_body(self) -> None:
        assert self.transport is not None
        while self.core.sending_body and not self._paused:
            self.transport.write(self.core.body_to_send(BODY_BLOCK))

    def _handle(self, event: ClientEvent) -> None:
        if isinstance(event, TLSRequested):
            self._start_tls()
        elif isinstance(event, TransactionDone):
            self._log_outcome(event.outcome)
            self._outcomes.append(event.outcome)
        elif isinstance(event, CommandReplied):
            self._commands.popleft()[0].callback(event.reply)
        elif isinstance(event, Turned):
            self._turn(event)
        elif isinstance(event, Idle):
            self._finish_batch(SessionOutcome(SessionStatus.COMPLETED, Phase.QUIT, None, "idle"))
            if self._on_idle is not None:
                self._on_idle(self)
        else:
            assert isinstance(event, SessionEnded)
            self._outcome = event.outcome
            if not event.outcome.ok:
                log.warn(
                    "SMTP session to {mx} ended: {detail}",
                    mx=self.destination.label,
                    queue_id=self._queue_id,
                    code=None if event.outcome.reply is None else event.outcome.reply.code,
                    detail=f"{event.outcome.status.value} at {event.outcome.phase.value}"
                    + (f": {event.outcome.detail}" if event.outcome.detail else ""),
                )
            self._finish_batch(event.outcome)
            while self._commands:
                self._commands.popleft()[0].callback(None)

    def _turn(self, event: Turned) -> None:
        d, turn_to = self._commands.popleft()
        switcher = switcher_of(self)
        assert turn_to is not None
        if switcher is None:
            log.error(
                "cannot turn the connection to {mx} round: no switching protocol",
                mx=self.destination.label,
            )
            self.detach()
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            log.info("connection to {mx} turned round", mx=self.destination.label)
            unread = self.detach()
            switcher.switch_to(turn_to(), unread)
        d.callback(event.reply)

    def _finish_batch(self, outcome: SessionOutcome) -> None:
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.callback(DeliveryReport(tuple(self._outcomes), outcome))

    def _fire_ended(self) -> None:
        if not self.ended.called:
            outcome = self._outcome or SessionOutcome(SessionStatus.CONNECTION_LOST, Phase.QUIT)
            self.ended.callback(outcome)

    def _start_tls(self) -> None:
        try:
            options = self._tls_options()
            ITLSTransport(self.transport).startTLS(options)
        except Exception as e:
            log.failure("STARTTLS to {mx} failed", mx=self.destination.label)
            self.core.tls_failed(f"cannot start TLS: {e.__class__.__name__}")
            return
        self.core.tls_started()

    def _log_outcome(self, outcome: TransactionOutcome) -> None:
        elapsed_ms = int((self._clock.seconds() - self._started) * 1000)
        for r in outcome.recipients:
            fields = {
                "mx": self.destination.label,
                "rcpt": r.address,
                "code": r.code,
                "enhanced": r.enhanced,
                "queue_id": self._queue_id,
                "elapsed_ms": elapsed_ms,
            }
            # Debug only: the mail log has one line per recipient and attempt, with the reply.
            if r.status is RecipientStatus.DELIVERED:
                log.debug("delivered to {rcpt} via {mx}", **fields)
            else:
                log.debug(
                    "not delivered to {rcpt} via {mx}: {status}",
                    status=r.status.value,
                    **fields,
                )

    # -- timeouts --

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self) -> None:
        if self._gone or self.core.state is ClientState.CLOSED:
            self._cancel_timer()
            return
        if self.core.sending_body:
            delay = self._timeouts.data_block
        else:
            phase = self.core.waiting_for
            if phase is None:
                self._cancel_timer()
                return
            delay = self._timeouts.for_phase(phase)
        # Moving a running timer is much cheaper than cancelling it and making a new one.
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self._clock.callLater(delay, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        self.core.timed_out()
        self._process()
        if self.transport is not None:
            self._gone = True
            self.transport.loseConnection()


class _Pending:
    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        destination: Destination,
        transactions: Sequence[Transaction],
        queue_id: str | None,
    ) -> None:
        self.endpoint = endpoint
        self.destination = destination
        self.transactions = transactions
        self.queue_id = queue_id
        self.result: Deferred[DeliveryReport] = Deferred()


class SMTPClient:
    """
    Delivers batches of transactions, with a connection cache and a per-host limit.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        hostname: str,
        timeouts: ClientTimeouts | None = None,
        max_per_host: int = 5,
        idle_time: float = 30.0,
        max_batches_per_connection: int = 100,
        trust_root: IOpenSSLTrustRoot | None = None,
        tls_options: Callable[[Destination], IOpenSSLClientConnectionCreator] | None = None,
    ) -> None:
        """
        @param clock: drives every timeout.
        @param hostname: our name, for EHLO.
        @param timeouts: the timeouts; RFC 5321 defaults when L{None}.
        @param max_per_host: open connections per host and port, at most.
        @param idle_time: seconds an idle connection is kept for reuse (0: never kept).
        @param max_batches_per_connection: batches after which a connection is closed.
        @param trust_root: the CAs for L{TLSMode.VERIFIED}; the platform store when L{None}.
        @param tls_options: makes the TLS options for a destination; L{client_tls_options}
            with C{trust_root} by default (tests replace it).
        """
        if max_per_host < 1:
            raise ValueError("max_per_host must be at least 1")
        self._clock = clock
        self._hostname = hostname
        self._timeouts = timeouts or ClientTimeouts()
        self._max_per_host = max_per_host
        self._idle_time = idle_time
        self._max_batches = max_batches_per_connection
        self._tls_options = tls_options or (lambda d: client_tls_options(d, trust_root))
        self._open: defaultdict[tuple[str, int], int] = defaultdict(int)
        self._idle: defaultdict[tuple[str, int], list[SMTPClientProtocol]] = defaultdict(list)
        self._idle_timers: dict[SMTPClientProtocol, IDelayedCall] = {}
        self._waiting: defaultdict[tuple[str, int], deque[_Pending]] = defaultdict(deque)

    def deliver(
        self,
        endpoint: IStreamClientEndpoint,
        destination: Destination,
        transactions: Sequence[Transaction],
        *,
        queue_id: str | None = None,
    ) -> Deferred[DeliveryReport]:
        """
        Deliver transactions to one destination.

        @param endpoint: how to connect to the destination's host and port (used only when
            no idle connection can be reused).
        @param destination: the destination.
        @param transactions: the transactions, at least one.
        @param queue_id: the queue id, for logs.
        @return: fires with the report; never fails (a failed connection is a report with
            L{SessionStatus.CONNECTION_FAILED} and temporary recipients).
        """
        if not transactions:
            raise ValueError("nothing to deliver")
        key = destination.key
        if key not in self._waiting:
            # Nobody waits before us: an idle connection, if there is one, is ours at once.
            reusable = self._idle_for(key, destination)
            if reusable is not None:
                self._take_idle(reusable)
                return reusable.run(transactions, queue_id)
        pending = _Pending(endpoint, destination, transactions, queue_id)
        self._waiting[key].append(pending)
        self._dispatch(key)
        return pending.result

    def open_connections(self, destination: Destination) -> int:
        """
        Count the open connections (busy and idle) to a destination's host and port.

        @param destination: the destination.
        @return: the count.
        """
        return self._open.get(destination.key, 0)

    def idle_connections(self, destination: Destination) -> int:
        """
        Count the idle connections to a destination's host and port.

        @param destination: the destination.
        @return: the count.
        """
        return len(self._idle.get(destination.key, ()))

    def close_idle(self) -> None:
        """Say QUIT on every idle connection (at shutdown)."""
        for connections in list(self._idle.values()):
            for protocol in list(connections):
                self._retire(protocol)

    # -- internals --

    def _dispatch(self, key: tuple[str, int]) -> None:
        waiting = self._waiting[key]
        while waiting:
            pending = waiting[0]
            reusable = self._idle_for(key, pending.destination)
            if reusable is not None:
                waiting.popleft()
                self._take_idle(reusable)
                reusable.run(pending.transactions, pending.queue_id).chainDeferred(pending.result)
                continue
            if self._open[key] < self._max_per_host:
                waiting.popleft()
                self._connect(key, pending)
                continue
            if self._idle[key]:
                # Idle connections with other settings hold the slots: free one.
                self._retire(self._idle[key][0])
                continue
            break
        if not waiting:
            self._waiting.pop(key, None)

    def _idle_for(
        self, key: tuple[str, int], destination: Destination
    ) -> SMTPClientProtocol | None:
        # An idle connection to this host and port made with the same settings.
        idle = self._idle.get(key)
        if idle:
            for protocol in idle:
                if protocol.destination == destination:
                    return protocol
        return None

    def _connect(self, key: tuple[str, int], pending: _Pending) -> None:
        destination = pending.destination
        settings = ClientSettings(
            hostname=self._hostname,
            starttls=_POLICIES[destination.tls],
            credentials=destination.credentials,
            auth_without_tls=destination.allow_plain_auth_without_tls,
            abort_on_rcpt_5xx=destination.abort_on_rcpt_5xx,
        )
        protocol = SMTPClientProtocol(
            ClientCore(settings),
            destination,
            self._clock,
            self._timeouts,
            lambda: self._tls_options(destination),
            self._became_idle,
        )
        self._open[key] += 1
        protocol.ended.addCallback(self._ended, key, protocol)
        protocol.run(pending.transactions, pending.queue_id).chainDeferred(pending.result)
        log.debug("connecting to {mx}", mx=destination.label, queue_id=pending.queue_id)
        connecting = pending.endpoint.connect(quiet(Factory.forProtocol(lambda: protocol)))
        timer = self._clock.callLater(self._timeouts.connect, connecting.cancel)

        def connected(result: object) -> None:
            if timer.active():
                timer.cancel()

        def failed(reason: Failure) -> None:
            if timer.active():
                timer.cancel()
            log.warn(
                "cannot connect to {mx}: {detail}",
                mx=destination.label,
                queue_id=pending.queue_id,
                detail=reason.getErrorMessage(),
            )
            protocol.connection_failed(reason)

        connecting.addCallbacks(connected, failed)

    def _became_idle(self, protocol: SMTPClientProtocol) -> None:
        key = protocol.destination.key
        if self._idle_time <= 0 or protocol.batches >= self._max_batches:
            protocol.quit()
            return
        self._idle[key].append(protocol)
        self._idle_timers[protocol] = self._clock.callLater(
            self._idle_time, self._retire, protocol
        )
        self._dispatch(key)

    def _take_idle(self, protocol: SMTPClientProtocol) -> None:
        key = protocol.destination.key
        if protocol in self._idle[key]:
            self._idle[key].remove(protocol)
        timer = self._idle_timers.pop(protocol, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _retire(self, protocol: SMTPClientProtocol) -> None:
        self._take_idle(protocol)
        protocol.quit()

    def _ended(
        self, outcome: SessionOutcome, key: tuple[str, int], protocol: SMTPClientProtocol
    ) -> SessionOutcome:
        self._take_idle(protocol)
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
        if key in self._waiting:
            self._dispatch(key)
        return outcome
