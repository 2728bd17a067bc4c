"""
Tests for L{mdtwist.smtp.server} with the real receive policy and a Domain Sharing lookup that
answers when the test says: the session keeps its reply order and its timeouts while a lookup
is pending, and each session has its own budget of lookups.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mdtwist.envelope import ClientInfo
from mdtwist.interfaces import ISharingLookup
from mdtwist.portal import build_login_portal
from mdtwist.route import LookupBudget, Route, SharingAnswer
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.policy import ReceivePolicy
from mdtwist.smtp.server import SessionLimits, SMTPServerFactory, SMTPServerProtocol
from tests.smtp.core.helpers import parse_replies
from tests.smtp.fakes import FakeDirectory, FakeSpool, TLSStringTransport
from tests.support.logs import capture_logs


@implementer(ISharingLookup)
class HeldSharing:
    """
    A Domain Sharing lookup whose answers the test gives: every lookup that gets past the
    session's budget waits in C{held}.

    @ivar held: the pending lookups: address and the Deferred to fire.
    @ivar asked: every address asked about.
    """

    def __init__(self) -> None:
        self.held: list[tuple[str, Deferred[SharingAnswer]]] = []
        self.asked: list[str] = []

    def lookup(
        self, address: str, client: ClientInfo, budget: LookupBudget | None = None
    ) -> Deferred[SharingAnswer]:
        self.asked.append(address)
        d: Deferred[SharingAnswer] = Deferred()
        if budget is not None and not budget.spend(address):
            d.callback(SharingAnswer.unavailable())
            return d
        self.held.append((address, d))
        return d

    def local_account(self, address: str) -> None:
        pass


class PendingLookupTests(SynchronousTestCase):
    """
    An SMTP session whose recipient waits on a Domain Sharing lookup.
    """

    bytewise = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.sharing = HeldSharing()
        self.spool = FakeSpool()
        directory = FakeDirectory()
        policy = ReceivePolicy(directory, sharing=self.sharing, sharing_lookups_per_session=2)
        self.factory = SMTPServerFactory(
            settings=ServerSettings(hostname="mx.example.com"),
            mode=ListenerMode.MX,
            policy=policy,
            spool=self.spool,
            portal=build_login_portal(directory, self.clock),
            clock=self.clock,
            limits=SessionLimits(idle_timeout=300.0),
        )

    def connect(self) -> tuple[SMTPServerProtocol, TLSStringTransport]:
        address = IPv4Address("TCP", "192.0.2.1", 1234)
        protocol = self.factory.buildProtocol(address)
        transport = TLSStringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        return protocol, transport

    def send(self, protocol: SMTPServerProtocol, data: bytes) -> None:
        if self.bytewise:
            for i in range(len(data)):
                protocol.dataReceived(data[i : i + 1])
        else:
            protocol.dataReceived(data)

    def codes(self, transport: TLSStringTransport) -> list[tuple[int, str | None]]:
        return [(r.code, r.enhanced) for r in parse_replies(transport.value())]

    def test_order_and_timeout(self) -> None:
        """
        Pipelined commands after a recipient that waits on a lookup are answered only once it
        is decided, in order; no idle timeout strikes while we are the ones waiting; once
        answered, the idle timeout counts afresh; the message keeps the peer's route.
        """
        protocol, transport = self.connect()
        self.send(protocol, b"EHLO client.example\r\n")
        self.send(
            protocol,
            b"MAIL FROM:<s@client.example>\r\nRCPT TO:<carol@example.com>\r\n"
            b"RCPT TO:<alice@example.com>\r\nDATA\r\n",
        )
        self.assertEqual(self.codes(transport), [(220, None), (250, None), (250, "2.1.0")])
        [(address, pending)] = self.sharing.held
        self.assertEqual(address, "carol@example.com")
        self.clock.advance(3601)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(self.codes(transport)), 3)
        pending.callback(SharingAnswer.found("peer.example.com:2525"))
        self.assertEqual(self.codes(transport)[3:], [(250, "2.1.5"), (250, "2.1.5"), (354, None)])
        self.send(protocol, b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(self.codes(transport)[-1], (250, "2.0.0"))
        [(envelope, _)] = self.spool.messages
        self.assertEqual(
            [r.route for r in envelope.recipients],
            [Route.sharing_peer("peer.example.com:2525"), Route.local("alice@example.com")],
        )
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.codes(transport)[-1], (421, "4.4.2"))
        self.assertTrue(transport.disconnecting)

    def test_session_budget(self) -> None:
        """
        A session that has had two distinct addresses asked about gets C{451 4.4.3} for a
        third without waiting on the peers; the next session has a budget of its own.
        """
        capture_logs(self)
        protocol, transport = self.connect()
        self.send(protocol, b"EHLO client.example\r\n")
        self.send(protocol, b"MAIL FROM:<s@client.example>\r\n")
        for name, answer in (
            (b"one", SharingAnswer.not_found()),
            (b"two", SharingAnswer.unavailable()),
        ):
            self.send(protocol, b"RCPT TO:<" + name + b"@example.com>\r\n")
            self.sharing.held[-1][1].callback(answer)
        self.send(protocol, b"RCPT TO:<three@example.com>\r\n")
        self.assertEqual(
            self.codes(transport)[-3:], [(550, "5.1.1"), (451, "4.4.3"), (451, "4.4.3")]
        )
        self.assertEqual(len(self.sharing.held), 2)
        protocol, transport = self.connect()
        self.send(protocol, b"EHLO client.example\r\n")
        self.send(protocol, b"MAIL FROM:<s@client.example>\r\n")
        self.send(protocol, b"RCPT TO:<three@example.com>\r\n")
        self.assertEqual(len(self.sharing.held), 3)
        self.sharing.held[-1][1].callback(SharingAnswer.found("peer.example.com:25"))
        self.assertEqual(self.codes(transport)[-1], (250, "2.1.5"))


class PendingLookupBytewiseTests(PendingLookupTests):
    """
    L{PendingLookupTests}, every input fed one byte at a time.
    """

    bytewise = True
