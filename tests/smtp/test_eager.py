"""
Tests for L{mdtwist.smtp.eager}: writes sent at once on a real loopback TCP connection.
"""

from __future__ import annotations

from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mdtwist.smtp.eager import write_now


class _Collect(Protocol):
    """
    Collects what it receives; C{arrived} fires once C{expected} bytes are in.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = b""
        self.arrived: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's name
        self.received += data
        if len(self.received) >= self.expected and not self.arrived.called:
            self.arrived.callback(self.received)


class WriteNowTests(TestCase):
    """
    On a plain TCP connection with nothing buffered, L{write_now} sends without registering
    the socket for writing; otherwise it queues behind what is buffered.
    """

    @inlineCallbacks
    def _connect(self, expected: int):  # type: ignore[no-untyped-def]
        # A server end (tcp.Server) connected to a collecting client; returns both.
        accepted: Deferred[Protocol] = Deferred()

        class Accept(ServerFactory):
            def buildProtocol(self, addr: object) -> Protocol:  # noqa: N802
                protocol = Protocol()
                reactor.callLater(0, accepted.callback, protocol)
                return protocol

        collector = _Collect(expected)

        class Connect(ClientFactory):
            def buildProtocol(self, addr: object) -> Protocol:  # noqa: N802
                return collector

        port = reactor.listenTCP(0, Accept(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = port.getHost()
        assert isinstance(address, IPv4Address)
        connector = reactor.connectTCP("127.0.0.1", address.port, Connect())
        self.addCleanup(connector.disconnect)
        server = yield accepted
        self.addCleanup(server.transport.loseConnection)
        return server.transport, collector

    @inlineCallbacks
    def test_sent_at_once(self):  # type: ignore[no-untyped-def]
        """
        An idle server transport gets the bytes onto the socket in the call itself: it is
        not registered for writing and holds nothing, and the peer receives them.
        """
        transport, collector = yield self._connect(len(b"220 ready\r\n"))
        self.assertIsInstance(transport, tcp.Server)
        write_now(transport, b"220 ready\r\n")
        self.assertNotIn(transport, reactor.getWriters())
        self.assertEqual(transport._tempDataLen, 0)
        received = yield collector.arrived
        self.assertEqual(received, b"220 ready\r\n")

    @inlineCallbacks
    def test_queued_behind_buffer(self):  # type: ignore[no-untyped-def]
        """
        When bytes written before are still buffered, the new bytes queue behind them (the
        transport writes both, in order, on its next turn).
        """
        transport, collector = yield self._connect(len(b"first second"))
        transport.write(b"first ")
        write_now(transport, b"second")
        self.assertIn(transport, reactor.getWriters())
        received = yield collector.arrived
        self.assertEqual(received, b"first second")

    @inlineCallbacks
    def test_large_write_rest_queued(self):  # type: ignore[no-untyped-def]
        """
        What the kernel does not take at once is handed to the transport: the peer gets every
        byte of a write far larger than a socket buffer, in order.
        """
        data = bytes(range(256)) * 40_000  # 10 MB
        transport, collector = yield self._connect(len(data))
        write_now(transport, data)
        self.assertIn(transport, reactor.getWriters())
        received = yield collector.arrived
        self.assertEqual(received, data)


class FallbackTests(SynchronousTestCase):
    """
    Anything but an idle plain TCP transport gets an ordinary C{write}.
    """

    def test_other_transport(self) -> None:
        """
        A transport that is not Twisted's TCP connection (here a string transport, as a TLS
        layer or a wrapper would be) receives the bytes through its C{write}.
        """
        transport = StringTransport()
        write_now(transport, b"250 OK\r\n")
        self.assertEqual(transport.value(), b"250 OK\r\n")
