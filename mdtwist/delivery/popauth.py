# -*- test-case-name: tests.delivery.test_popauth -*-
"""
POP-before-SMTP: a POP3 login (RFC 1939, USER/PASS) that some smart hosts want before they relay.

Theory of operation: one short session on a client endpoint: the greeting, C{USER}, C{PASS},
then C{QUIT}. Lines end only at CRLF. C{+OK} to C{PASS} is a successful login (the Deferred
fires L{True}); C{-ERR} to C{USER} or C{PASS} means the server refused the credentials (L{False}).
Anything else (a refused greeting, a malformed line, a refused or lost connection, the timeout
on the injected clock) fails the Deferred with L{POPUnavailable}. Callers defer the message in
every case but L{True}. The password is never logged.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.errors import MdtwistError
from mdtwist.logging import quiet
from mdtwist.secret import Secret
from mdtwist.smtp.core.framing import LineBuffer

log = Logger()

#: The longest POP3 response line accepted, CRLF included (RFC 1939 allows 512; be lenient).
MAX_LINE = 2048


class POPUnavailable(MdtwistError):
    """
    The POP3 login could not be tried: connection, protocol or timeout problem (temporary).
    """


class POPLoginProtocol(Protocol):
    """
    One POP3 login.

    @ivar result: fires L{True} on a successful login, L{False} on refused credentials, or
        fails with L{POPUnavailable}.
    """

    def __init__(self, login: str, password: Secret, clock: IReactorTime, timeout: float) -> None:
        """
        @param login: the POP3 user name.
        @param password: the password.
        @param clock: drives the timeout.
        @param timeout: seconds the whole session may take.
        """
        self.result: Deferred[bool] = Deferred()
        self._login = login
        self._password = password
        self._clock = clock
        self._timeout = timeout
        self._lines = LineBuffer()
        self._step = "greeting"
        self._timer: IDelayedCall | None = None

    @override
    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timed_out)

    @override
    def dataReceived(self, data: bytes) -> None:
        self._lines.feed(data)
        while not self.result.called:
            line = self._lines.read_line(MAX_LINE)
            if line is None:
                return
            if line.overflow or line.has_bare_cr_or_lf:
                self._fail("malformed POP3 response")
                return
            self._answer(line.content)

    def _answer(self, content: bytes) -> None:
        positive = content == b"+OK" or content.startswith(b"+OK ")
        negative = content == b"-ERR" or content.startswith(b"-ERR ")
        if not (positive or negative):
            self._fail(f"malformed POP3 response to {self._step}")
            return
        step = self._step
        if step == "greeting":
            if not positive:
                self._fail("POP3 server refused the connection")
                return
            self._step = "user"
            self._send(b"USER " + self._login.encode("utf-8"))
        elif step == "user":
            if not positive:
                self._finish(False)
                return
            self._step = "pass"
            self._send(b"PASS " + self._password.reveal().encode("utf-8"))
        else:
            self._finish(positive)

    def _send(self, line: bytes) -> None:
        assert self.transport is not None
        self.transport.write(line + b"\r\n")

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _finish(self, ok: bool) -> None:
        self._stop_timer()
        self._step = "quit"
        self._send(b"QUIT")
        assert self.transport is not None
        self.transport.loseConnection()
        self.result.callback(ok)

    def _fail(self, reason: str) -> None:
        self._stop_timer()
        if self.transport is not None:
            self.transport.loseConnection()
        if not self.result.called:
            self.result.errback(POPUnavailable(reason))

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(f"POP3 timeout at {self._step}")
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._stop_timer()
        if not self.result.called:
            self.result.errback(POPUnavailable(f"POP3 connection lost at {self._step}"))


def pop_before_smtp(
    endpoint: IStreamClientEndpoint,
    login: str,
    password: Secret,
    clock: IReactorTime,
    timeout: float = 60.0,
) -> Deferred[bool]:
    """
    Log in to a POP3 server, then QUIT.

    @param endpoint: the POP3 server.
    @param login: the user name.
    @param password: the password.
    @param clock: drives the connection and session timeout.
    @param timeout: seconds for the whole exchange, connection included.
    @return: fires L{True} on success, L{False} when the credentials are refused; fails with
        L{POPUnavailable} on connection problems, protocol errors and the timeout.
    """
    protocol = POPLoginProtocol(login, password, clock, timeout)
    connecting = endpoint.connect(quiet(Factory.forProtocol(lambda: protocol)))
    timer = clock.callLater(timeout, connecting.cancel)

    def connected(_: object) -> Deferred[bool]:
        if timer.active():
            timer.cancel()
        return protocol.result

    def failed(reason: Failure) -> Deferred[bool]:
        if timer.active():
            timer.cancel()
        log.warn(
            "POP-before-SMTP connection for {user} failed: {detail}",
            user=login,
            detail=reason.getErrorMessage(),
        )
        result: Deferred[bool] = Deferred()
        result.errback(
            POPUnavailable(f"cannot connect to the POP3 server: {reason.getErrorMessage()}")
        )
        return result

    return connecting.addCallbacks(connected, failed)
