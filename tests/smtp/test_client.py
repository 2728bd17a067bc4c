"""Tests for L{mdtwist.smtp.client}: the outbound glue, run against our own server glue."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mdtwist.config import ListenerMode
from mdtwist.envelope import ClientInfo, Recipient
from mdtwist.portal import build_login_portal
from mdtwist.secret import Secret
from mdtwist.smtp.client import (
    ClientTimeouts,
    DeliveryReport,
    Destination,
    SMTPClient,
    SMTPClientProtocol,
    TLSMode,
    client_tls_options,
)
from mdtwist.smtp.core.client import (
    Credentials,
    Phase,
    RecipientStatus,
    SessionStatus,
    Transaction,
)
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.server import SMTPServerFactory
from tests.smtp.fakes import FakeDirectory, FakePolicy, FakeSpool
from tests.support.logs import capture_logs

BODY = b"Subject: test\r\n\r\n.dot line\r\nbody text 4711\r\n"


class FakeTLS:
    """A TLS context for iosim: the handshake succeeds when C{ok}."""

    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    def iosimVerify(self, other: object) -> bool:  # noqa: N802
        """Tell iosim whether the handshake works."""
        return self.ok


@implementer(IStreamClientEndpoint)
class ServerEndpoint:
    """
    Connects the client to a fresh L{SMTPServerProtocol} over iosim, or fails, or hangs.

    @ivar pumps: one pump per connection made.
    @ivar connects: how many connections were asked for.
    """

    def __init__(self, server: SMTPServerFactory, mode: str = "ok") -> None:
        self.server = server
        self.mode = mode
        self.pumps: list[iosim.IOPump] = []
        self.connects = 0
        self.transports: list[StringTransport] = []
        self.protocols: list[IProtocol] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect according to the mode."""
        self.connects += 1
        if self.mode == "refuse":
            return fail(ConnectionRefusedError())
        if self.mode == "hang":
            return Deferred()
        client = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 25))
        assert client is not None
        if self.mode == "silent":
            transport = StringTransport()
            client.makeConnection(transport)
            self.transports.append(transport)
            self.protocols.append(client)
            return succeed(client)
        server = self.server.buildProtocol(IPv4Address("TCP", "192.0.2.1", 4000))
        pump = iosim.connect(
            server,
            iosim.makeFakeServer(server),
            client,
            iosim.makeFakeClient(client),
            greet=False,
        )
        self.pumps.append(pump)
        return succeed(client)

    def flush(self) -> None:
        """Move every byte between the peers until both are quiet."""
        for pump in self.pumps:
            pump.flush()


def tx(*recipients: str, body: bytes = BODY) -> Transaction:
    """A transaction to the given recipients."""
    return Transaction("sender@c.example", tuple(Recipient(r) for r in recipients), body)


class SMTPClientTests(SynchronousTestCase):
    """The client delivers to our own server in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.spool = FakeSpool()
        self.policy = FakePolicy()
        self.tls_contexts: list[tuple[Destination, FakeTLS]] = []

    def server(self, tls: FakeTLS | None = None) -> SMTPServerFactory:
        return SMTPServerFactory(
            settings=ServerSettings(hostname="mx.example"),
            mode=ListenerMode.MX,
            policy=self.policy,
            spool=self.spool,
            portal=build_login_portal(FakeDirectory(), self.clock),
            clock=self.clock,
            tls=tls,  # type: ignore[arg-type]
        )

    def client(self, tls_ok: bool = True, **kwargs: Any) -> SMTPClient:
        def options(destination: Destination) -> IOpenSSLClientConnectionCreator:
            context = FakeTLS(tls_ok)
            self.tls_contexts.append((destination, context))
            return context  # type: ignore[return-value]

        return SMTPClient(
            clock=self.clock, hostname="client.example", tls_options=options, **kwargs
        )

    def report(self, d: Deferred[DeliveryReport]) -> DeliveryReport:
        result: DeliveryReport = self.successResultOf(d)
        return result

    def test_delivers_end_to_end(self) -> None:
        """
        Two transactions on one connection reach the server's spool with the message intact;
        every recipient is delivered and the session completed.
        """
        endpoint = ServerEndpoint(self.server())
        client = self.client()
        d = client.deliver(
            endpoint,
            Destination("mx.example"),
            [tx("a@example.com", "b@example.com"), tx("c@example.com")],
            queue_id="Q42",
        )
        endpoint.flush()
        report = self.report(d)
        self.assertEqual(report.session.status, SessionStatus.COMPLETED)
        self.assertEqual(
            [[r.status for r in t.recipients] for t in report.transactions],
            [[RecipientStatus.DELIVERED] * 2, [RecipientStatus.DELIVERED]],
        )
        self.assertEqual(report.transactions[0].recipients[0].code, 250)
        self.assertTrue(report.transactions[0].dsn_passed_on)
        self.assertEqual(len(self.spool.messages), 2)
        envelope, stored = self.spool.messages[0]
        self.assertEqual(
            [r.address for r in envelope.recipients], ["a@example.com", "b@example.com"]
        )
        self.assertTrue(stored.endswith(BODY))

    def test_idle_connection_reused_then_closed(self) -> None:
        """
        After a batch the connection stays open for reuse; the next batch to the same
        destination runs on it; after the idle time it is closed with QUIT.
        """
        endpoint = ServerEndpoint(self.server())
        client = self.client(idle_time=30.0)
        destination = Destination("mx.example")
        first = client.deliver(endpoint, destination, [tx("a@example.com")])
        endpoint.flush()
        self.report(first)
        self.assertEqual(
            (client.open_connections(destination), client.idle_connections(destination)), (1, 1)
        )
        second = client.deliver(endpoint, destination, [tx("b@example.com")])
        endpoint.flush()
        self.assertEqual(
            self.report(second).transactions[0].recipients[0].status, RecipientStatus.DELIVERED
        )
        self.assertEqual(endpoint.connects, 1)
        self.assertEqual(len(self.spool.messages), 2)
        self.clock.advance(30)
        endpoint.flush()
        self.assertEqual(client.open_connections(destination), 0)

    def test_per_host_limit(self) -> None:
        """
        With one connection allowed per host, a second batch waits for the first and then
        runs on the same connection.
        """
        endpoint = ServerEndpoint(self.server())
        client = self.client(max_per_host=1)
        destination = Destination("mx.example")
        first = client.deliver(endpoint, destination, [tx("a@example.com")])
        second = client.deliver(endpoint, destination, [tx("b@example.com")])
        self.assertEqual(endpoint.connects, 1)
        self.assertNoResult(second)
        endpoint.flush()
        self.report(first)
        self.report(second)
        self.assertEqual(endpoint.connects, 1)
        self.assertEqual(len(self.spool.messages), 2)

    def test_other_settings_do_not_share(self) -> None:
        """
        An idle connection opened with other settings is closed to free the slot, and a new
        connection is opened.
        """
        endpoint = ServerEndpoint(self.server())
        client = self.client(max_per_host=1)
        first = client.deliver(endpoint, Destination("mx.example"), [tx("a@example.com")])
        endpoint.flush()
        self.report(first)
        plain = Destination("mx.example", tls=TLSMode.NONE)
        second = client.deliver(endpoint, plain, [tx("b@example.com")])
        endpoint.flush()
        self.report(second)
        self.assertEqual(endpoint.connects, 2)

    def test_connection_refused(self) -> None:
        """
        A refused connection is a report with CONNECTION_FAILED and temporary 4.4.1
        recipients; the slot is freed.
        """
        client = self.client()
        destination = Destination("mx.example")
        report = self.report(
            client.deliver(
                ServerEndpoint(self.server(), "refuse"), destination, [tx("a@example.com")]
            )
        )
        self.assertEqual(report.session.status, SessionStatus.CONNECTION_FAILED)
        recipient = report.transactions[0].recipients[0]
        self.assertEqual(
            (recipient.status, recipient.enhanced), (RecipientStatus.TEMPORARY, "4.4.1")
        )
        self.assertEqual(client.open_connections(destination), 0)

    def test_connect_timeout(self) -> None:
        """
        A connection attempt that hangs is cancelled after the connect timeout.
        """
        client = self.client(timeouts=ClientTimeouts(connect=10.0))
        d = client.deliver(
            ServerEndpoint(self.server(), "hang"), Destination("mx.example"), [tx("a@example.com")]
        )
        self.clock.advance(9)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.report(d).session.status, SessionStatus.CONNECTION_FAILED)

    def test_greeting_timeout(self) -> None:
        """
        A server that never greets times out after the greeting timeout; the connection is
        closed and the recipients are temporary.
        """
        endpoint = ServerEndpoint(self.server(), "silent")
        client = self.client(timeouts=ClientTimeouts(greeting=300.0))
        d = client.deliver(endpoint, Destination("mx.example"), [tx("a@example.com")])
        self.clock.advance(299)
        self.assertNoResult(d)
        self.clock.advance(1)
        report = self.report(d)
        self.assertEqual(
            (report.session.status, report.session.phase), (SessionStatus.TIMEOUT, Phase.GREETING)
        )
        self.assertEqual(report.transactions[0].recipients[0].status, RecipientStatus.TEMPORARY)
        self.assertTrue(endpoint.transports[0].disconnecting)

    def test_rcpt_and_data_timeouts(self) -> None:
        """
        Each step has its own timeout: the RCPT timeout applies while waiting for RCPT, the
        data-end timeout after the message.
        """
        endpoint = ServerEndpoint(self.server(), "silent")
        client = self.client(timeouts=ClientTimeouts(rcpt=50.0, data_end=70.0))
        d = client.deliver(endpoint, Destination("mx.example"), [tx("a@example.com")])
        protocol = endpoint.protocols[0]
        assert isinstance(protocol, SMTPClientProtocol)
        protocol.dataReceived(b"220 mx\r\n250 mx\r\n250 2.1.0 Ok\r\n")
        self.clock.advance(49)
        self.assertNoResult(d)
        protocol.dataReceived(b"250 2.1.5 Ok\r\n354 Go\r\n")
        self.assertTrue(endpoint.transports[0].value().endswith(b"\r\n.\r\n"))
        self.clock.advance(69)
        self.assertNoResult(d)
        self.clock.advance(1)
        report = self.report(d)
        self.assertEqual(
            (report.session.status, report.session.phase), (SessionStatus.TIMEOUT, Phase.MESSAGE)
        )
        self.assertEqual(report.transactions[0].recipients[0].enhanced, "4.4.2")

    def test_data_block_timeout(self) -> None:
        """
        While the transport does not take the message (producer paused), the data-block
        timeout runs.
        """
        endpoint = ServerEndpoint(self.server(), "silent")
        client = self.client(timeouts=ClientTimeouts(data_block=20.0))
        d = client.deliver(endpoint, Destination("mx.example"), [tx("a@example.com")])
        protocol = endpoint.protocols[0]
        assert isinstance(protocol, SMTPClientProtocol)
        protocol.dataReceived(b"220 mx\r\n250 mx\r\n250 Ok\r\n250 Ok\r\n")
        protocol.pauseProducing()
        protocol.dataReceived(b"354 Go\r\n")
        self.assertFalse(endpoint.transports[0].value().endswith(b"\r\n.\r\n"))
        self.clock.advance(20)
        self.assertEqual(self.report(d).session.status, SessionStatus.TIMEOUT)

    def test_starttls_and_auth(self) -> None:
        """
        With the server offering STARTTLS, the client starts TLS with the options made for
        the destination, then authenticates over TLS and delivers; no log event holds the
        password or the message body.
        """
        logs = capture_logs(self)
        endpoint = ServerEndpoint(self.server(tls=FakeTLS()))
        client = self.client()
        destination = Destination("mx.example", credentials=Credentials("alice", Secret("secret")))
        d = client.deliver(endpoint, destination, [tx("a@example.com")], queue_id="Q1")
        endpoint.flush()
        report = self.report(d)
        self.assertEqual(report.transactions[0].recipients[0].status, RecipientStatus.DELIVERED)
        self.assertEqual([c[0] for c in self.tls_contexts], [destination])
        client_info = self.policy.calls[0][1]
        assert isinstance(client_info, ClientInfo)
        self.assertEqual(client_info.user, "alice")
        self.assertIsNotNone(client_info.tls)
        text = repr(list(logs))
        self.assertNotIn("secret", text.replace("Secret('***')", ""))
        self.assertNotIn("4711", text)
        self.assertIn("Q1", text)

    def test_verified_tls_not_offered(self) -> None:
        """
        In VERIFIED mode a server without STARTTLS gets no message: TLS_REQUIRED.
        """
        endpoint = ServerEndpoint(self.server())
        client = self.client()
        d = client.deliver(
            endpoint, Destination("mx.example", tls=TLSMode.VERIFIED), [tx("a@example.com")]
        )
        endpoint.flush()
        report = self.report(d)
        self.assertEqual(report.session.status, SessionStatus.TLS_REQUIRED)
        self.assertEqual(self.spool.messages, [])

    def test_tls_handshake_fails(self) -> None:
        """
        A failed handshake (a certificate that does not verify) is TLS_FAILED, temporary.
        """
        endpoint = ServerEndpoint(self.server(tls=FakeTLS()))
        client = self.client(tls_ok=False)
        d = client.deliver(
            endpoint, Destination("mx.example", tls=TLSMode.VERIFIED), [tx("a@example.com")]
        )
        endpoint.flush()
        report = self.report(d)
        self.assertEqual(report.session.status, SessionStatus.TLS_FAILED)
        self.assertEqual(report.transactions[0].recipients[0].status, RecipientStatus.TEMPORARY)
        self.assertEqual(self.spool.messages, [])


class TLSOptionsTests(SynchronousTestCase):
    """The TLS options chosen per mode."""

    def test_verified_checks_host_name(self) -> None:
        """
        VERIFIED builds client options for the destination's host name.
        """
        options = client_tls_options(Destination("mx.example", tls=TLSMode.VERIFIED))
        self.assertTrue(IOpenSSLClientConnectionCreator.providedBy(options))
        self.assertEqual(getattr(options, "_hostname", None), "mx.example")

    def test_opportunistic_checks_nothing(self) -> None:
        """
        OPPORTUNISTIC builds options that do not verify the peer.
        """
        options = client_tls_options(Destination("mx.example"))
        self.assertFalse(getattr(options, "verify", True))
