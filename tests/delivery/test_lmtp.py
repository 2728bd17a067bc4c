"""
Tests for L{mdtwist.delivery.lmtp} on an in-memory transport.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdtwist.delivery.lmtp import LMTPDelivery, LMTPSession
from mdtwist.delivery.local import DeliveryResult, DeliveryStatus, ILocalDelivery
from mdtwist.directory.model import Account
from tests.spool.fakes import make_account

BODY = b"Subject: hi\r\n\r\n.leading dot\r\nlast line"


class LMTPSessionTests(SynchronousTestCase):
    """
    One LMTP session delivers one copy and reports the recipient's own reply.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.session = LMTPSession(
            "mx.example.test", "s@elsewhere.test", "alice@example.test", BODY, self.clock, 60.0
        )
        self.transport = StringTransport()
        self.session.makeConnection(self.transport)

    def exchange(self, reply: bytes) -> bytes:
        self.transport.clear()
        self.session.dataReceived(reply)
        written: bytes = self.transport.value()
        return written

    def run_to_data(self) -> None:
        self.assertEqual(self.exchange(b"220 lmtp ready\r\n"), b"LHLO mx.example.test\r\n")
        self.assertEqual(
            self.exchange(b"250-lmtp\r\n250 8BITMIME\r\n"), b"MAIL FROM:<s@elsewhere.test>\r\n"
        )
        self.assertEqual(self.exchange(b"250 2.1.0 OK\r\n"), b"RCPT TO:<alice@example.test>\r\n")
        self.assertEqual(self.exchange(b"250 2.1.5 OK\r\n"), b"DATA\r\n")
        self.assertEqual(
            self.exchange(b"354 go\r\n"),
            b"Subject: hi\r\n\r\n..leading dot\r\nlast line\r\n.\r\n",
        )

    def result(self) -> DeliveryResult:
        result: DeliveryResult = self.successResultOf(self.session.result)
        return result

    def test_delivered(self) -> None:
        """
        The whole conversation, with dot-stuffing and a final CRLF added, ends delivered;
        the result names the LMTP server as its relay (for the mail log).
        """
        self.run_to_data()
        self.assertNoResult(self.session.result)
        self.assertEqual(self.exchange(b"250 2.0.0 <alice@example.test> Saved\r\n"), b"QUIT\r\n")
        self.assertEqual(
            self.result(),
            DeliveryResult(
                DeliveryStatus.DELIVERED, "2.0.0", "delivered over LMTP", "lmtp:server"
            ),
        )
        self.assertFalse(self.transport.disconnecting)
        self.exchange(b"221 2.0.0 Bye\r\n")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_pipelined(self) -> None:
        """
        When the server offers PIPELINING, MAIL, RCPT and DATA leave in one write.
        """
        self.exchange(b"220 lmtp ready\r\n")
        self.assertEqual(
            self.exchange(b"250-lmtp\r\n250 PIPELINING\r\n"),
            b"MAIL FROM:<s@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n",
        )
        self.exchange(b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go\r\n")
        self.exchange(b"250 2.0.0 Saved\r\n")
        self.assertEqual(self.result().status, DeliveryStatus.DELIVERED)

    def test_delivered_fed_byte_by_byte(self) -> None:
        """
        Replies split into single bytes give the same conversation.
        """
        for reply in (
            b"220 x\r\n",
            b"250 x\r\n",
            b"250 2.1.0 ok\r\n",
            b"250 2.1.5 ok\r\n",
            b"354 go\r\n",
            b"250 2.0.0 ok\r\n",
        ):
            for i in range(len(reply)):
                self.session.dataReceived(reply[i : i + 1])
        self.assertEqual(self.result().status, DeliveryStatus.DELIVERED)
        self.assertIn(b"..leading dot\r\n", self.transport.value())

    def test_unknown_user_is_permanent(self) -> None:
        """
        A 550 at RCPT is a permanent failure with the server's enhanced code.
        """
        self.exchange(b"220 x\r\n")
        self.exchange(b"250 x\r\n")
        self.exchange(b"250 2.1.0 ok\r\n")
        self.assertEqual(
            self.exchange(b"550 5.1.1 <alice@example.test> User doesn't exist\r\n"), b"QUIT\r\n"
        )
        result = self.result()
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.PERMANENT, "5.1.1"))
        self.assertEqual(result.reason, "LMTP rcpt: 550 <alice@example.test> User doesn't exist")

    def test_final_4xx_is_temporary(self) -> None:
        """
        A 452 after the data (mailbox full) is temporary.
        """
        self.run_to_data()
        self.exchange(b"452 4.2.2 Quota exceeded\r\n")
        result = self.result()
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.TEMPORARY, "4.2.2"))
        self.assertEqual(result.reason, "LMTP message: 452 Quota exceeded")

    def test_garbage_is_temporary(self) -> None:
        """
        A malformed reply ends the session with a temporary result.
        """
        self.exchange(b"hello there\r\n")
        result = self.result()
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.TEMPORARY, "4.5.0"))
        self.assertTrue(self.transport.disconnecting)

    def test_connection_lost(self) -> None:
        """
        A connection that drops before the final reply is a temporary failure.
        """
        self.run_to_data()
        self.session.connectionLost(Failure(ConnectionError("reset")))
        result = self.result()
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.TEMPORARY, "4.4.2"))

    def test_timeout(self) -> None:
        """
        A server that never answers is given up after the timeout, temporarily.
        """
        self.clock.advance(59)
        self.assertNoResult(self.session.result)
        self.clock.advance(1)
        self.assertEqual(self.result().reason, "LMTP greeting: timeout waiting for greeting")
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ResultTests(SynchronousTestCase):
    """
    The result of a session is a plain value; the Deferred never fails.
    """

    def test_never_fails(self) -> None:
        """
        Whatever ends the session, the result Deferred fires with a value.
        """
        session = LMTPSession("h", "", "a@b.test", b"", Clock(), 1.0)
        session.makeConnection(StringTransport())
        session.connectionLost(Failure(ConnectionError()))
        d: Deferred[DeliveryResult] = session.result
        self.assertIsInstance(self.successResultOf(d), DeliveryResult)


class LMTPDeliveryTests(SynchronousTestCase):
    """
    L{LMTPDelivery} runs one session per copy and never fails its Deferred.
    """

    def deliver(self, endpoint: IStreamClientEndpoint, address: str) -> DeliveryResult:
        delivery = LMTPDelivery(lambda: endpoint, Clock(), "mx.example.test", server="tcp:x:24")
        verifyObject(ILocalDelivery, delivery)
        account = Account(address, "alice", "example.test", address)
        d = delivery.deliver(account, "alice@example.test", BODY, "s@elsewhere.test")
        result: DeliveryResult = self.successResultOf(d)
        return result

    def test_unreachable(self) -> None:
        """
        A server that cannot be reached is a temporary failure, with the server as its relay.
        """
        endpoint = _FailingEndpoint()
        result = self.deliver(endpoint, "alice@example.test")
        self.assertEqual(
            result,
            DeliveryResult(
                DeliveryStatus.TEMPORARY, "4.4.1", "LMTP server unreachable", "lmtp:tcp:x:24"
            ),
        )

    def test_unsafe_address(self) -> None:
        """
        An address that cannot be written in an LMTP command fails permanently, unsent.
        """
        endpoint = _FailingEndpoint()
        result = self.deliver(endpoint, "al ice@example.test")
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.PERMANENT, "5.1.3"))
        self.assertEqual(endpoint.attempts, 0)


@implementer(IStreamClientEndpoint)
class _FailingEndpoint:
    attempts = 0

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        return fail(ConnectionRefusedError("refused"))


class LoopTests(SynchronousTestCase):
    """
    L{LMTPDelivery} refuses a forwarding loop without asking the LMTP server.
    """

    def test_loop(self) -> None:
        """
        A copy whose C{Delivered-To:} names the account fails with C{5.4.6}; no connection
        is made.
        """
        connects: list[object] = []

        def endpoint() -> IStreamClientEndpoint:
            connects.append(1)
            raise AssertionError("no connection expected")

        delivery = LMTPDelivery(endpoint, Clock(), "mx.example")
        body = b"Delivered-To: alice@example.com\r\n\r\nbody\r\n"
        result = self.successResultOf(
            delivery.deliver(make_account("alice@example.com"), "alice@example.com", body)
        )
        self.assertEqual((result.status, result.enhanced), (DeliveryStatus.PERMANENT, "5.4.6"))
        self.assertEqual(connects, [])
