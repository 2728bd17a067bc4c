"""Tests for L{mdtwist.delivery.popauth}: POP-before-SMTP on an in-memory transport."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mdtwist.delivery.popauth import POPUnavailable, pop_before_smtp
from mdtwist.secret import Secret


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """Connects to a StringTransport at once, or fails, or never answers."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.transport = StringTransport()
        self.protocol: IProtocol | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect, fail or hang according to the mode."""
        if self.mode == "refuse":
            return fail(ConnectionRefusedError())
        if self.mode == "hang":
            return Deferred()
        protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 110))
        assert protocol is not None
        protocol.makeConnection(self.transport)
        self.protocol = protocol
        return succeed(protocol)


class POPBeforeSMTPTests(SynchronousTestCase):
    """A POP3 login decides whether the smart host will relay."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = FakeEndpoint()

    def start(self) -> Deferred[bool]:
        return pop_before_smtp(self.endpoint, "alice", Secret("s3cret"), self.clock, 30.0)

    def say(self, data: bytes) -> bytes:
        """Feed the server's bytes, return what the client wrote."""
        assert self.endpoint.protocol is not None
        self.endpoint.transport.clear()
        self.endpoint.protocol.dataReceived(data)
        written: bytes = self.endpoint.transport.value()
        return written

    def test_login_ok(self) -> None:
        """
        +OK to PASS fires True; the client says USER, PASS, then QUIT and closes.
        """
        d = self.start()
        self.assertEqual(self.say(b"+OK POP3 ready\r\n"), b"USER alice\r\n")
        self.assertEqual(self.say(b"+OK\r\n"), b"PASS s3cret\r\n")
        self.assertNoResult(d)
        self.assertEqual(self.say(b"+OK logged in\r\n"), b"QUIT\r\n")
        self.assertTrue(self.successResultOf(d))
        self.assertTrue(self.endpoint.transport.disconnecting)

    def test_wrong_password(self) -> None:
        """
        -ERR to PASS fires False.
        """
        d = self.start()
        self.say(b"+OK POP3 ready\r\n")
        self.say(b"+OK\r\n")
        self.assertEqual(self.say(b"-ERR [AUTH] bad password\r\n"), b"QUIT\r\n")
        self.assertFalse(self.successResultOf(d))

    def test_unknown_user(self) -> None:
        """
        -ERR to USER fires False without sending the password.
        """
        d = self.start()
        self.say(b"+OK POP3 ready\r\n")
        self.assertEqual(self.say(b"-ERR no such user\r\n"), b"QUIT\r\n")
        self.assertFalse(self.successResultOf(d))

    def test_byte_at_a_time(self) -> None:
        """
        Responses split into single bytes work the same.
        """
        d = self.start()
        for data in (b"+OK hi\r\n", b"+OK\r\n", b"+OK\r\n"):
            for i in range(len(data)):
                self.say(data[i : i + 1])
        self.assertTrue(self.successResultOf(d))

    def test_bare_lf_is_malformed(self) -> None:
        """
        A response ended by a bare LF is not a line; a malformed line fails.
        """
        d = self.start()
        self.assertEqual(self.say(b"+OK ready\n"), b"")
        self.say(b"\r\nbogus\r\n")
        self.failureResultOf(d, POPUnavailable)

    def test_greeting_refused(self) -> None:
        """
        A -ERR greeting fails with POPUnavailable (the caller defers).
        """
        d = self.start()
        self.say(b"-ERR busy\r\n")
        self.failureResultOf(d, POPUnavailable)

    def test_connection_refused(self) -> None:
        """
        A refused connection fails with POPUnavailable.
        """
        self.endpoint.mode = "refuse"
        self.failureResultOf(self.start(), POPUnavailable)

    def test_connect_timeout(self) -> None:
        """
        A connection that never completes fails with POPUnavailable after the timeout.
        """
        self.endpoint.mode = "hang"
        d = self.start()
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.failureResultOf(d, POPUnavailable)

    def test_session_timeout(self) -> None:
        """
        A server that goes silent fails with POPUnavailable after the timeout.
        """
        d = self.start()
        self.say(b"+OK ready\r\n")
        self.clock.advance(30)
        self.failureResultOf(d, POPUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_lost(self) -> None:
        """
        A connection lost before the answer fails with POPUnavailable.
        """
        d = self.start()
        assert self.endpoint.protocol is not None
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, POPUnavailable)
