# -*- test-case-name: tests.dequeue.test_client -*-
"""
The dequeue signal client: ask the host that holds our mail to release it (MDaemon's Domain
Manager > Dequeuing), by ETRN, ATRN (ODMR, RFC 2645), QSND, any other line, or a bare connect.

Theory of operation: L{Signaller.signal} opens one connection per signal and never fails; its
L{Signal} says what happened (a L{SignalResult}) and when the connection is gone.

 - SMTP mode runs an L{SMTPClientProtocol} with no transaction: greeting, EHLO (unless turned
   off), STARTTLS when offered (unless turned off), AUTH when a login is set (CRAM-MD5 first;
   PLAIN or LOGIN only over TLS or when allowed), then, once the session is idle, the text as
   one command, and C{QUIT} after its whole reply. An empty text says C{QUIT} at once. An
   ATRN is not sent when the EHLO reply lacks the C{ATRN} keyword. A single-line C{250} to
   ATRN turns the connection round: the client detaches, and the SMTP server protocol built
   for the released domains (L{ReleasedDomainsPolicy} in front of the normal receive policy,
   the normal spool) greets the provider on the same connection and takes its mail.
 - Raw mode (L{RawSignal}) writes the text and CRLF (when there is text), reads until the
   host closes or C{timeout} seconds pass, and closes; what was read is only logged.

Every wait has a timeout on the injected clock (the ATRN reply: C{ClientTimeouts.command},
10 minutes), so a silent or never-closing host costs one connection until it expires; a
refused, unresolvable or silent host is a L{SignalStatus.FAILED} result, and the next due
queue run signals again. Nothing here logs a password or a message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mdtwist.address import parse_address
from mdtwist.config import DequeueSignalConfig
from mdtwist.dequeue.signal import (
    SignalMode,
    SignalResult,
    SignalStatus,
    atrn_domains,
    judge,
    verb,
)
from mdtwist.envelope import ClientInfo
from mdtwist.interfaces import IReceivePolicy
from mdtwist.logging import escape_text
from mdtwist.smtp.client import ClientTimeouts, Destination, SMTPClientProtocol
from mdtwist.smtp.core.client import (
    SUPPORTED_CLIENT_MECHANISMS,
    ClientCore,
    ClientSettings,
    Credentials,
    SessionOutcome,
    SessionStatus,
    StartTLSPolicy,
)
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.decision import RecipientDecision
from mdtwist.smtp.switch import SwitchingProtocol

log = Logger()

#: How many bytes of a raw signal's answer are read before closing.
RAW_READ_LIMIT = 65536

#: Builds the SMTP server protocol that takes the released mail after an accepted ATRN, given
#: the released domains (for a bare ATRN: the signal's own domain).
TurnedServer = Callable[[frozenset[str]], IProtocol]

#: Connects to a host and port.
Connect = Callable[[str, int], IStreamClientEndpoint]


def not_released(recipient: str) -> Reply:
    """
    @param recipient: a refused forward-path.
    @return: the refusal of a recipient outside the domains an ATRN released.
    """
    return Reply(
        550, "5.7.1", (f"<{escape_text(recipient)}>: not in a domain released by our ATRN",)
    )


@implementer(IReceivePolicy)
class ReleasedDomainsPolicy:
    """
    The receive policy of the SMTP server an accepted ATRN turns our connection into: a
    recipient must be in one of the released domains (exactly; no subdomain), and then the
    normal policy decides it (an existing mailbox, the same checks as for any inbound mail).
    """

    def __init__(self, policy: IReceivePolicy, domains: frozenset[str]) -> None:
        """
        @param policy: the normal receive policy of an MX listener.
        @param domains: the released domains, lower case.
        """
        self._policy = policy
        self.domains = frozenset(d.lower().rstrip(".") for d in domains)

    def check_sender(self, client: ClientInfo, sender: str) -> Deferred[Reply]:
        """
        @param client: the provider.
        @param sender: the reverse-path.
        @return: the normal policy's reply.
        """
        return self._policy.check_sender(client, sender)

    def check_recipient(
        self, client: ClientInfo, sender: str, recipient: str
    ) -> Deferred[RecipientDecision]:
        """
        @param client: the provider.
        @param sender: the reverse-path.
        @param recipient: the forward-path.
        @return: C{550 5.7.1} outside the released domains, else the normal policy's decision.
        """
        address = parse_address(recipient)
        if address is None or address.domain not in self.domains:
            return succeed(RecipientDecision.refuse(not_released(recipient)))
        return self._policy.check_recipient(client, sender, recipient)


class _Watched(SwitchingProtocol):
    # The switching protocol of a signal's connection: says when the connection is gone,
    # whichever protocol (client, or the server after ATRN) runs inside it.

    def __init__(self, factory: WrappingFactory[Any], wrapped: IProtocol) -> None:
        super().__init__(factory, wrapped)
        self.gone: Deferred[None] = Deferred()

    @override
    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        try:
            super().connectionLost(reason)
        finally:
            if not self.gone.called:
                self.gone.callback(None)


class _WatchedFactory(WrappingFactory[_Watched]):
    protocol = _Watched
    noisy = False


def _watched_factory(protocol: IProtocol) -> _WatchedFactory:
    factory = _WatchedFactory(Factory.forProtocol(lambda: protocol))
    factory.wrappedFactory.noisy = False
    return factory


class Signal:
    """
    One signal in progress.

    @ivar result: fires with the L{SignalResult} once it is known: when the connection is gone,
        or at once when an ATRN turned it (the released mail then comes in over it).
    @ivar finished: fires when the connection is gone (or could not be made).
    """

    def __init__(self) -> None:
        self.result: Deferred[SignalResult] = Deferred()
        self.finished: Deferred[None] = Deferred()
        self._close: Callable[[], object] | None = None

    def close(self) -> None:
        """End the signal now (at shutdown): cancel the connection attempt or close it."""
        if self._close is not None:
            self._close()

    def _settle(self, result: SignalResult) -> None:
        if not self.result.called:
            self.result.callback(result)

    def _done(self) -> None:
        self._close = None
        if not self.finished.called:
            self.finished.callback(None)


class RawSignal(Protocol):
    """
    A raw signal (FINGER, TELNET, a bare connect): write the text and CRLF when there is
    text, read until the host closes, C{timeout} seconds pass or L{RAW_READ_LIMIT} bytes came,
    then close.

    @ivar received: the bytes read (up to the limit).
    @ivar timed_out: whether the host was still open when the timeout came.
    """

    def __init__(self, text: str, clock: IReactorTime, timeout: float) -> None:
        """
        @param text: the text, or C{""} to send nothing.
        @param clock: runs the timeout.
        @param timeout: seconds to read.
        """
        self._text = text
        self._clock = clock
        self._timeout = timeout
        self._timer: IDelayedCall | None = None
        self.received = b""
        self.timed_out = False

    @override
    def connectionMade(self) -> None:
        assert self.transport is not None
        if self._text:
            self.transport.write(self._text.encode("ascii") + b"\r\n")
        self._timer = self._clock.callLater(self._timeout, self._expired)

    @override
    def dataReceived(self, data: bytes) -> None:
        room = RAW_READ_LIMIT - len(self.received)
        self.received += data[:room]
        if len(self.received) >= RAW_READ_LIMIT:
            self._close()

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expired(self) -> None:
        self.timed_out = True
        self._close()
        # A host that does not take our close (a full send buffer) is cut off after as long.
        self._timer = self._clock.callLater(self._timeout, self._abort)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._timer = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def first_line(self) -> str:
        """
        @return: the first line read, escaped and cut to 200 characters, for the log.
        """
        line = self.received.split(b"\n", 1)[0].rstrip(b"\r")
        return escape_text(line.decode("utf-8", "replace"))[:200]


class _SMTPSignal:
    # Drives one SMTP-mode signal: what to send when the session is idle, and what it means.

    def __init__(
        self,
        target: DequeueSignalConfig,
        signal: Signal,
        turned_server: TurnedServer | None,
    ) -> None:
        self.target = target
        self.signal = signal
        self.verb = verb(target.text)
        domains = atrn_domains(target.text)
        self.atrn = domains is not None
        self.released = frozenset(domains or (target.domain,))
        self.turned_server = turned_server
        self.sent = False
        self.result: SignalResult | None = None

    def idle(self, protocol: SMTPClientProtocol) -> None:
        # First idle: after EHLO/AUTH, send the text; the next one: after its reply, QUIT.
        if self.sent or not self.target.text:
            self.sent = True
            protocol.quit()
            return
        self.sent = True
        capabilities = protocol.core.capabilities
        if self.atrn and (capabilities is None or "ATRN" not in capabilities.keywords):
            self.result = self._result(
                SignalStatus.REFUSED, None, "the host does not offer ATRN in its EHLO reply"
            )
            protocol.quit()
            return
        turn_to = self._turn if self.atrn else None
        protocol.command(self.target.text, turn_to=turn_to).addCallback(self._replied)

    def _turn(self) -> IProtocol:
        assert self.turned_server is not None
        log.info(
            "ATRN accepted by {mx}: receiving the mail of {domains}",
            mx=f"{self.target.host}:{self.target.port}",
            domain=self.target.domain,
            domains=",".join(sorted(self.released)),
        )
        return self.turned_server(self.released)

    def _replied(self, answer: Reply | None) -> None:
        if answer is None:
            return  # the session ended first; the outcome says why
        status = judge(self.verb, answer.code, len(answer.lines) == 1)
        detail = _reply_text(answer)
        if self.atrn and answer.code == 250 and len(answer.lines) > 1:
            detail = "a multi-line 250 to ATRN (RFC 2645 wants one line): not turning"
        self.result = self._result(status, answer.code, detail)
        if status is SignalStatus.RELEASED:
            self.signal._settle(self.result)

    def ended(self, outcome: SessionOutcome) -> None:
        # The client session is over (QUIT, a failure, or handed over after ATRN).
        if self.result is not None:
            return
        if outcome.ok:
            self.result = self._result(SignalStatus.SENT, None, "connected")
            return
        code = outcome.reply.code if outcome.reply is not None else None
        detail = f"{outcome.status.value} at {outcome.phase.value}"
        if outcome.reply is not None:
            detail += ": " + _reply_text(outcome.reply)
        elif outcome.detail:
            detail += ": " + escape_text(outcome.detail)[:200]
        refused = outcome.status in (
            SessionStatus.GREETING_REFUSED,
            SessionStatus.AUTH_FAILED,
            SessionStatus.SERVICE_CLOSING,
            SessionStatus.TLS_REQUIRED,
        )
        status = SignalStatus.REFUSED if refused else SignalStatus.FAILED
        self.result = self._result(status, code, detail)

    def _result(self, status: SignalStatus, code: int | None, detail: str) -> SignalResult:
        return SignalResult(self.target.domain, status, code, detail)


def _reply_text(answer: Reply) -> str:
    # The reply's enhanced code and lines on one line, escaped and cut, for the log.
    text = " ".join(answer.lines)
    if answer.enhanced:
        text = f"{answer.enhanced} {text}"
    return escape_text(text)[:200]


class Signaller:
    """
    Sends dequeue signals, one connection each.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        connect: Connect,
        hostname: str,
        turned_server: TurnedServer | None = None,
        timeouts: ClientTimeouts | None = None,
        tls_options: Callable[[], IOpenSSLClientConnectionCreator] | None = None,
    ) -> None:
        """
        @param clock: runs every timeout.
        @param connect: makes the endpoint of a host and port.
        @param hostname: our name, for EHLO.
        @param turned_server: builds the SMTP server for mail released by ATRN; without it
            no ATRN is sent.
        @param timeouts: the SMTP timeouts; RFC 5321 defaults (10 minutes for the ATRN
            reply) when L{None}.
        @param tls_options: the STARTTLS options; opportunistic (nothing checked) by default.
        """
        self._clock = clock
        self._connect = connect
        self._hostname = hostname
        self._turned_server = turned_server
        self._timeouts = timeouts or ClientTimeouts()
        self._tls_options = tls_options or (
            lambda: cast(IOpenSSLClientConnectionCreator, ssl.CertificateOptions())
        )

    def signal(self, target: DequeueSignalConfig) -> Signal:
        """
        Send one signal.

        @param target: the signal's settings.
        @return: the signal in progress; its Deferreds never fail.
        """
        signal = Signal()
        if target.mode is SignalMode.RAW:
            self._raw(target, signal)
        else:
            self._smtp(target, signal)
        return signal

    def _open(
        self,
        target: DequeueSignalConfig,
        signal: Signal,
        protocol: IProtocol,
        failed: Callable[[Failure], None],
        gone: Callable[[], None],
    ) -> None:
        # Connect within the connect timeout; when connected, watch the connection end.
        connecting = self._connect(target.host, target.port).connect(_watched_factory(protocol))
        timer = self._clock.callLater(self._timeouts.connect, connecting.cancel)

        def connected(outer: _Watched) -> None:
            if timer.active():
                timer.cancel()
            signal._close = lambda: outer.transport.loseConnection()  # type: ignore[union-attr]

            def lost(_: object) -> None:
                gone()
                signal._done()

            outer.gone.addCallback(lost)

        def not_connected(reason: Failure) -> None:
            if timer.active():
                timer.cancel()
            failed(reason)
            signal._done()

        signal._close = connecting.cancel
        connecting.addCallbacks(connected, not_connected)

    def _cannot_connect(self, target: DequeueSignalConfig, reason: Failure) -> SignalResult:
        detail = f"cannot connect to {target.host}:{target.port}: {reason.getErrorMessage()}"
        return SignalResult(target.domain, SignalStatus.FAILED, None, escape_text(detail))

    def _smtp(self, target: DequeueSignalConfig, signal: Signal) -> None:
        credentials = None
        if target.login and target.password is not None:
            credentials = Credentials(target.login, target.password)
        settings = ClientSettings(
            hostname=self._hostname,
            starttls=StartTLSPolicy.IF_OFFERED if target.starttls else StartTLSPolicy.NEVER,
            credentials=credentials,
            auth_without_tls=target.allow_plaintext_auth,
            auth_mechanisms=SUPPORTED_CLIENT_MECHANISMS,
            hello=target.ehlo,
        )
        session = _SMTPSignal(target, signal, self._turned_server)
        if session.atrn and self._turned_server is None:
            detail = "ATRN cannot be used here: no SMTP server to take the mail"
            signal._settle(SignalResult(target.domain, SignalStatus.FAILED, None, detail))
            signal._done()
            return
        protocol = SMTPClientProtocol(
            ClientCore(settings),
            Destination(target.host, target.port),
            self._clock,
            self._timeouts,
            self._tls_options,
            on_idle=session.idle,
        )
        protocol.ended.addCallback(session.ended)

        def failed(reason: Failure) -> None:
            protocol.connection_failed(reason)
            signal._settle(self._cannot_connect(target, reason))

        def gone() -> None:
            assert session.result is not None
            signal._settle(session.result)

        self._open(target, signal, protocol, failed, gone)

    def _raw(self, target: DequeueSignalConfig, signal: Signal) -> None:
        protocol = RawSignal(target.text, self._clock, target.timeout)

        def failed(reason: Failure) -> None:
            signal._settle(self._cannot_connect(target, reason))

        def gone() -> None:
            read = len(protocol.received)
            detail = f"{read} bytes read" + (f": {protocol.first_line()}" if read else "")
            if protocol.timed_out:
                detail += " (closed after the timeout)"
            signal._settle(SignalResult(target.domain, SignalStatus.SENT, None, detail))

        self._open(target, signal, protocol, failed, gone)
