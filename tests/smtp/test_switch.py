"""
Tests for L{mdtwist.smtp.switch} and the role change of the SMTP glue: our client and server
paired in memory, the roles swapped mid-connection, and what each side gives back when it
detaches.
"""

from __future__ import annotations

from typing import cast

from twisted.cred.error import UnauthorizedLogin
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvides, implementer

from mdtwist.config import ListenerMode
from mdtwist.envelope import Recipient
from mdtwist.login_limits import LoginLimits
from mdtwist.portal import build_login_portal
from mdtwist.smtp.client import (
    ClientTimeouts,
    DeliveryReport,
    Destination,
    SMTPClient,
    SMTPClientProtocol,
)
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientSettings,
    RecipientStatus,
    SessionOutcome,
    SessionStatus,
    StartTLSPolicy,
    Transaction,
)
from mdtwist.smtp.core.events import ExtensionCommand
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.server import (
    CommandAnswer,
    SessionLimits,
    SMTPServerFactory,
    SMTPServerProtocol,
)
from mdtwist.smtp.switch import SwitchingProtocol, switcher_of, switching, switching_for
from tests.smtp.core.helpers import parse_replies
from tests.smtp.fakes import FakeDirectory, FakePolicy, FakeSpool
from tests.support.logs import capture_logs

CUSTOMER_ADDRESS = IPv4Address("TCP", "192.0.2.7", 40000)
PROVIDER_ADDRESS = IPv4Address("TCP", "192.0.2.1", 366)
#: The message the customer sends before the turn.
BODY_OUT = b"Subject: to the provider\r\n\r\nfirst direction\r\n"
#: The message the provider sends back after the turn: dot-stuffing must survive the swap.
BODY_BACK = b"Subject: held mail\r\n\r\n.a line that starts with a dot\r\n..\r\n.\r\nend\r\n"
TURNING = reply(250, "2.0.0", "OK now reversing the connection")


class Recorder(Protocol):
    """A protocol that keeps what it receives."""

    def __init__(self) -> None:
        self.received = b""
        self.made = 0
        self.lost: list[Failure] = []

    def connectionMade(self) -> None:  # noqa: N802
        """Count the connection."""
        self.made += 1

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        """Keep the bytes."""
        self.received += data

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008, N802
        """Keep the reason."""
        self.lost.append(reason)


def no_tls() -> IOpenSSLClientConnectionCreator:
    """TLS options for sessions that never start TLS."""
    raise AssertionError("TLS not expected")


def bytewise(protocol: IProtocol) -> None:
    """Make a protocol take every C{dataReceived} one byte at a time."""
    whole = protocol.dataReceived

    def one_byte_at_a_time(data: bytes) -> None:
        for i in range(len(data)):
            whole(data[i : i + 1])

    protocol.dataReceived = one_byte_at_a_time  # type: ignore[method-assign]


class Sides:
    """
    A provider and a customer, as in ATRN: the customer connects, sends a message, then a
    C{TURN} command; the provider answers C{250} and becomes the SMTP client on the same
    connection, delivering a message to the customer's SMTP server.
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        tls_active: bool = False,
        provider_tls: IOpenSSLServerConnectionCreator | None = None,
    ) -> None:
        self.clock = clock
        self.provider_spool = FakeSpool()
        self.customer_spool = FakeSpool()
        self.tls_active = tls_active
        self.back: Deferred[DeliveryReport] | None = None
        self.provider_client: SMTPClientProtocol | None = None
        self.turn_answer = TURNING
        self.provider = SMTPServerFactory(
            settings=ServerSettings(hostname="provider.example"),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=self.provider_spool,
            portal=build_login_portal(FakeDirectory(), clock),
            clock=clock,
            tls=provider_tls,
            commands={"turn": self.turn},
        )
        self.customer_server = SMTPServerFactory(
            settings=ServerSettings(hostname="customer.example", tls_active=tls_active),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=self.customer_spool,
            portal=build_login_portal(FakeDirectory(), clock),
            clock=clock,
        )

    def client(
        self,
        hostname: str,
        destination: str,
        *,
        starttls: StartTLSPolicy = StartTLSPolicy.NEVER,
        tls_options: object = no_tls,
        tls_active: bool = False,
    ) -> SMTPClientProtocol:
        """An SMTP client protocol that says QUIT once idle."""
        core = ClientCore(
            ClientSettings(hostname=hostname, starttls=starttls, tls_active=tls_active)
        )
        return SMTPClientProtocol(
            core,
            Destination(destination),
            self.clock,
            ClientTimeouts(),
            tls_options,  # type: ignore[arg-type]
            on_idle=lambda p: p.quit(),
        )

    def turn(self, session: SMTPServerProtocol, command: ExtensionCommand) -> CommandAnswer:
        """The provider's handler of C{TURN}: answer and become the client."""
        return CommandAnswer(self.turn_answer, turn_to=self.become_client)

    def become_client(self) -> IProtocol:
        """The provider's SMTP client role, with the held message queued."""
        protocol = self.client("provider.example", "customer.example", tls_active=self.tls_active)
        back = Transaction(
            "held@provider.example", (Recipient("bob@customer.example"),), BODY_BACK
        )
        self.back = protocol.run([back])
        self.provider_client = protocol
        return protocol

    def customer(self, **kwargs: object) -> tuple[SMTPClientProtocol, Deferred[Reply | None]]:
        """The customer's client role: one message out, then C{TURN}."""
        protocol = self.client("customer.example", "provider.example", **kwargs)  # type: ignore[arg-type]
        self.out = protocol.run(
            [
                Transaction(
                    "carol@customer.example", (Recipient("dave@provider.example"),), BODY_OUT
                )
            ]
        )
        turned = protocol.command(
            "TURN", turn_to=lambda: self.customer_server.buildProtocol(PROVIDER_ADDRESS)
        )
        return protocol, turned


class TurnInMemoryTests(SynchronousTestCase):
    """
    Our client and server glue over iosim swap roles mid-connection, and a whole transaction
    goes the other way.
    """

    bytewise = False

    def connect(
        self, sides: Sides, customer: SMTPClientProtocol
    ) -> tuple[SwitchingProtocol, SwitchingProtocol, iosim.IOPump]:
        client, server, pump = iosim.connectedServerAndClient(
            lambda: switching(sides.provider).buildProtocol(CUSTOMER_ADDRESS),
            lambda: switching_for(customer).buildProtocol(PROVIDER_ADDRESS),
            greet=False,
        )
        if self.bytewise:
            bytewise(client)
            bytewise(server)
        return client, server, pump

    def test_turn_and_deliver_back(self) -> None:
        """
        The customer delivers a message, sends TURN and gets the single-line 250; both sides
        switch on the same byte: the customer's SMTP server greets, the provider's SMTP client
        delivers the held message (dot-stuffed lines intact) and says QUIT. Each outer
        protocol stayed the one its transport knows and switched once.
        """
        clock = Clock()
        sides = Sides(clock)
        customer, turned = sides.customer()
        client, server, pump = self.connect(sides, customer)
        pump.flush()

        out = self.successResultOf(sides.out)
        self.assertEqual(out.transactions[0].recipients[0].status, RecipientStatus.DELIVERED)
        self.assertEqual(self.successResultOf(turned), TURNING)
        self.assertEqual(len(sides.provider_spool.messages), 1)
        self.assertTrue(sides.provider_spool.messages[0][1].endswith(BODY_OUT))

        assert sides.back is not None
        back = self.successResultOf(sides.back)
        self.assertEqual(back.transactions[0].recipients[0].status, RecipientStatus.DELIVERED)
        self.assertEqual(len(sides.customer_spool.messages), 1)
        envelope, stored = sides.customer_spool.messages[0]
        self.assertEqual(envelope.sender, "held@provider.example")
        self.assertEqual([r.address for r in envelope.recipients], ["bob@customer.example"])
        self.assertTrue(stored.endswith(BODY_BACK))
        self.assertEqual(envelope.client.helo, "provider.example")

        assert sides.provider_client is not None
        self.assertEqual(
            self.successResultOf(sides.provider_client.ended).status, SessionStatus.COMPLETED
        )
        self.assertEqual((client.switches, server.switches), (1, 1))
        self.assertEqual(sides.provider.sessions(CUSTOMER_ADDRESS.host), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_refused_turn_keeps_roles(self) -> None:
        """
        A C{453} to TURN (nothing to release) turns nothing: the customer learns the reply,
        stays the client and says QUIT.
        """
        sides = Sides(Clock())
        sides.turn_answer = reply(453, "4.3.0", "You have no mail")
        customer, turned = sides.customer()
        client, server, pump = self.connect(sides, customer)
        pump.flush()
        answer = self.successResultOf(turned)
        assert answer is not None
        self.assertEqual(answer.code, 453)
        self.assertEqual((client.switches, server.switches), (0, 0))
        self.assertIsNone(sides.back)
        self.assertEqual(self.successResultOf(customer.ended).status, SessionStatus.COMPLETED)


class TurnInMemoryBytewiseTests(TurnInMemoryTests):
    """The same conversations, every byte delivered on its own."""

    bytewise = True


class ServerDetachTests(SynchronousTestCase):
    """L{SMTPServerProtocol.detach} gives the connection back cleanly."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.policy = FakePolicy()
        self.answers: list[Deferred[CommandAnswer]] = []

    def factory(
        self, login_limits: LoginLimits | None = None, **kwargs: object
    ) -> SMTPServerFactory:
        def hold(session: SMTPServerProtocol, command: ExtensionCommand) -> object:
            d: Deferred[CommandAnswer] = Deferred()
            self.answers.append(d)
            return d

        return SMTPServerFactory(
            settings=ServerSettings(
                hostname="provider.example",
                forbid_unauth_pipelining=False,
                auth_without_tls=True,
            ),
            mode=ListenerMode.MX,
            policy=self.policy,
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock, limits=login_limits),
            clock=self.clock,
            commands={"TURN": hold},  # type: ignore[dict-item]
            **kwargs,  # type: ignore[arg-type]
        )

    def connect(self, factory: SMTPServerFactory) -> tuple[SMTPServerProtocol, StringTransport]:
        protocol = factory.buildProtocol(CUSTOMER_ADDRESS)
        transport = StringTransport(peerAddress=CUSTOMER_ADDRESS)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_timer_and_counter_released_once(self) -> None:
        """
        Detaching clears the idle deadline and uncounts the session at once; the
        C{connectionLost} that may follow uncounts nothing more (another session from the same
        address is still counted).
        """
        factory = self.factory()
        self.connect(factory)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\n")
        self.assertEqual(factory.sessions(CUSTOMER_ADDRESS.host), 2)
        self.assertEqual(len(factory.deadlines), 2)
        self.assertEqual(protocol.detach(), b"")
        self.assertEqual(factory.sessions(CUSTOMER_ADDRESS.host), 1)
        self.assertEqual(len(factory.deadlines), 1)
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(factory.sessions(CUSTOMER_ADDRESS.host), 1)
        self.assertFalse(transport.disconnecting)

    def test_auth_delay_cancelled(self) -> None:
        """A refusal delayed for a blocked address is cancelled; nothing is written later."""
        factory = self.factory(login_limits=LoginLimits(max_failures=1))
        self.failureResultOf(
            factory.portal.login(CUSTOMER_ADDRESS.host, "alice", "wrong", service="smtp"),
            UnauthorizedLogin,
        )
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)  # idle timer, AUTH delay
        written = transport.value()
        protocol.detach()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertEqual(transport.value(), written)

    def test_unread_bytes_exact(self) -> None:
        """
        Detaching while an answer is pending returns exactly the bytes pipelined after the
        pending command; the late answer writes nothing.
        """
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<partial")
        written = transport.value()
        self.assertEqual(protocol.detach(), b"MAIL FROM:<a@b.example>\r\nRCPT TO:<partial")
        self.answers[0].callback(CommandAnswer(reply(250, "2.0.0", "Ok")))
        self.assertEqual(transport.value(), written)
        self.assertFalse(transport.disconnecting)

    def test_paused_transport_resumed(self) -> None:
        """A transport paused because too much was buffered is resumed for the next protocol."""
        factory = self.factory(limits=SessionLimits(max_buffer=10))
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN\r\n" + b"x" * 100)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(protocol.detach(), b"x" * 100)
        self.assertEqual(transport.producerState, "producing")

    def test_detach_twice(self) -> None:
        """A second detach gives nothing and releases nothing."""
        factory = self.factory()
        self.connect(factory)
        protocol, _ = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\nTURN\r\nleft")
        self.assertEqual(protocol.detach(), b"left")
        self.assertEqual(protocol.detach(), b"")
        self.assertEqual(factory.sessions(CUSTOMER_ADDRESS.host), 1)


class ServerTurnTests(SynchronousTestCase):
    """An extension command's handler turns the server session round, or does not."""

    bytewise = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.answer = CommandAnswer(TURNING, turn_to=self.recorder)
        self.recorders: list[Recorder] = []
        self.commands: list[ExtensionCommand] = []

    def recorder(self) -> IProtocol:
        recorder = Recorder()
        self.recorders.append(recorder)
        return recorder

    def handler(self, session: SMTPServerProtocol, command: ExtensionCommand) -> CommandAnswer:
        self.commands.append(command)
        return self.answer

    def factory(self) -> SMTPServerFactory:
        return SMTPServerFactory(
            settings=ServerSettings(hostname="provider.example"),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock),
            clock=self.clock,
            commands={"Turn": self.handler},
        )

    def connect(self, wrap: bool = True) -> tuple[IProtocol, StringTransport]:
        factory = self.factory()
        self.smtp_factory = factory
        protocol: IProtocol = (
            switching(factory).buildProtocol(CUSTOMER_ADDRESS)
            if wrap
            else factory.buildProtocol(CUSTOMER_ADDRESS)
        )
        transport = StringTransport(peerAddress=CUSTOMER_ADDRESS)
        protocol.makeConnection(transport)
        if self.bytewise:
            bytewise(protocol)
        return protocol, transport

    def test_advertised(self) -> None:
        """The verb is an EHLO keyword (upper case)."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO c.example\r\n")
        ehlo = parse_replies(transport.value())[1]
        self.assertIn("TURN", ehlo.lines)

    def test_turn_after_reply(self) -> None:
        """
        The 250 is written, then the next protocol is connected on the same transport and
        gets exactly the bytes that followed the command, and every later byte.
        """
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN example.org,example.com\r\n220 customer.example")
        protocol.dataReceived(b" ESMTP\r\n")
        self.assertEqual(self.commands, [ExtensionCommand("TURN", "example.org,example.com")])
        self.assertEqual(parse_replies(transport.value())[-1], TURNING)
        [recorder] = self.recorders
        self.assertEqual(
            (recorder.made, recorder.received), (1, b"220 customer.example ESMTP\r\n")
        )
        self.assertIs(recorder.transport, protocol)
        self.assertIs(cast(SwitchingProtocol, protocol).inner, recorder)
        self.assertEqual(self.smtp_factory.sessions(CUSTOMER_ADDRESS.host), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(len(recorder.lost), 1)

    def test_no_turn_without_250(self) -> None:
        """A 4xx with C{turn_to} turns nothing; the session goes on."""
        self.answer = CommandAnswer(reply(453, "4.3.0", "You have no mail"), turn_to=self.recorder)
        protocol, transport = self.connect()
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN\r\n")
        protocol.dataReceived(b"QUIT\r\n")
        self.assertEqual([r.code for r in parse_replies(transport.value())], [220, 250, 453, 221])
        self.assertEqual(self.recorders, [])

    def test_no_switching_protocol(self) -> None:
        """Without a switching protocol the turn is refused with a 451 and logged."""
        protocol, transport = self.connect(wrap=False)
        events = capture_logs(self)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN\r\n")
        self.assertEqual(parse_replies(transport.value())[-1].code, 451)
        self.assertEqual(self.recorders, [])
        self.assertIn(
            "cannot turn the connection round: no switching protocol",
            [e["log_format"] for e in events],
        )

    def test_handler_failure(self) -> None:
        """A failing handler is logged and answered with a 451."""

        def broken(session: SMTPServerProtocol, command: ExtensionCommand) -> CommandAnswer:
            raise RuntimeError("boom")

        self.handler = broken  # type: ignore[method-assign]
        protocol, transport = self.connect()
        capture_logs(self)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"TURN\r\n")
        self.assertEqual(parse_replies(transport.value())[-1].code, 451)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_encrypted_connection_known(self) -> None:
        """
        A session started on a connection that is already encrypted (turned round inside TLS)
        offers no STARTTLS and records TLS for its messages.
        """
        factory = SMTPServerFactory(
            settings=ServerSettings(hostname="customer.example"),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock),
            clock=self.clock,
            tls=object(),  # type: ignore[arg-type]
        )
        transport = StringTransport(peerAddress=CUSTOMER_ADDRESS)
        protocol = factory.buildProtocol(CUSTOMER_ADDRESS)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO c.example\r\n")
        self.assertIn("STARTTLS", parse_replies(transport.value())[1].lines)

        secure = StringTransport(peerAddress=CUSTOMER_ADDRESS)
        directlyProvides(secure, ISSLTransport)
        protocol = factory.buildProtocol(CUSTOMER_ADDRESS)
        protocol.makeConnection(secure)
        protocol.dataReceived(b"EHLO c.example\r\n")
        self.assertNotIn("STARTTLS", parse_replies(secure.value())[1].lines)
        self.assertTrue(protocol.core.tls_active)

    def test_verb_without_handler(self) -> None:
        """A verb named in the settings but given no handler gets a 502."""
        factory = SMTPServerFactory(
            settings=ServerSettings(hostname="provider.example", commands=("ETRN",)),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock),
            clock=self.clock,
        )
        protocol = factory.buildProtocol(CUSTOMER_ADDRESS)
        transport = StringTransport(peerAddress=CUSTOMER_ADDRESS)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(b"ETRN example.org\r\n")
        self.assertEqual(parse_replies(transport.value())[-1].code, 502)


class ServerTurnBytewiseTests(ServerTurnTests):
    """The same, every byte delivered on its own."""

    bytewise = True


class ClientTurnTests(SynchronousTestCase):
    """A command that turns the connection, from the client side, over a string transport."""

    bytewise = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.recorders: list[Recorder] = []

    def recorder(self) -> IProtocol:
        recorder = Recorder()
        self.recorders.append(recorder)
        return recorder

    def connect(
        self, wrap: bool = True
    ) -> tuple[SMTPClientProtocol, IProtocol, StringTransport, Deferred[Reply | None]]:
        core = ClientCore(
            ClientSettings(hostname="customer.example", starttls=StartTLSPolicy.NEVER)
        )
        protocol = SMTPClientProtocol(
            core, Destination("provider.example"), self.clock, ClientTimeouts(), no_tls
        )
        turned = protocol.command("TURN example.org", turn_to=self.recorder)
        outer: IProtocol = (
            switching_for(protocol).buildProtocol(PROVIDER_ADDRESS) if wrap else protocol
        )
        transport = StringTransport()
        outer.makeConnection(transport)
        if self.bytewise:
            bytewise(outer)
        outer.dataReceived(b"220 provider.example ESMTP\r\n")
        outer.dataReceived(b"250-provider.example\r\n250 PIPELINING\r\n")
        self.assertEqual(transport.value(), b"EHLO customer.example\r\nTURN example.org\r\n")
        return protocol, outer, transport, turned

    def test_turn_hands_over_unread_bytes(self) -> None:
        """
        After a single-line 250 the protocol detaches (timer cancelled, producer
        unregistered, L{SMTPClientProtocol.ended} fired) and the next protocol gets exactly the
        bytes that came after the 250, before the command's Deferred fires.
        """
        protocol, outer, transport, turned = self.connect()
        self.assertIs(transport.producer, protocol)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        seen: list[bytes] = []

        def when_fired(answer: Reply | None) -> Reply | None:
            seen.append(self.recorders[0].received)
            return answer

        turned.addCallback(when_fired)
        outer.dataReceived(b"250 2.0.0 OK now reversing the connection\r\nEHLO provider.exa")
        outer.dataReceived(b"mple\r\n")
        self.assertEqual(self.successResultOf(turned), TURNING)
        # What followed the 250 in the same segment (nothing when bytes come one by one).
        self.assertEqual(seen, [b"" if self.bytewise else b"EHLO provider.exa"])
        [recorder] = self.recorders
        self.assertEqual(recorder.received, b"EHLO provider.example\r\n")
        self.assertIs(switcher_of(recorder), outer)
        self.assertIsNone(transport.producer)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        outcome = self.successResultOf(protocol.ended)
        self.assertEqual(outcome.status, SessionStatus.COMPLETED)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(transport.value(), b"EHLO customer.example\r\nTURN example.org\r\n")

    def test_multiline_250_does_not_turn(self) -> None:
        """A 250 of several lines is not the turn: the reply is given, the roles stay."""
        protocol, outer, transport, turned = self.connect()
        outer.dataReceived(b"250-OK\r\n250 reversing\r\n")
        answer = self.successResultOf(turned)
        assert answer is not None
        self.assertEqual(answer.lines, ("OK", "reversing"))
        self.assertEqual(self.recorders, [])
        protocol.quit()
        self.assertTrue(transport.value().endswith(b"QUIT\r\n"))

    def test_refusal_does_not_turn(self) -> None:
        """A 450 is the answer; nothing switches."""
        _, outer, _, turned = self.connect()
        outer.dataReceived(b"450 4.7.0 ATRN request refused\r\n")
        answer = self.successResultOf(turned)
        assert answer is not None
        self.assertEqual(answer.code, 450)
        self.assertEqual(self.recorders, [])

    def test_session_ends_first(self) -> None:
        """A connection lost before the reply fires the command's Deferred with None."""
        _, outer, _, turned = self.connect()
        outer.connectionLost(Failure(ConnectionError()))
        self.assertIsNone(self.successResultOf(turned))

    def test_no_switching_protocol(self) -> None:
        """Without a switching protocol the turn is logged as an error; the connection closes."""
        _, outer, transport, turned = self.connect(wrap=False)
        events = capture_logs(self)
        outer.dataReceived(b"250 2.0.0 OK now reversing the connection\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.recorders, [])
        self.assertIn(
            "cannot turn the connection to {mx} round: no switching protocol",
            [e["log_format"] for e in events],
        )
        self.assertEqual(self.successResultOf(turned), TURNING)


class ClientTurnBytewiseTests(ClientTurnTests):
    """The same, every byte delivered on its own."""

    bytewise = True


class ClientDetachTests(SynchronousTestCase):
    """L{SMTPClientProtocol.detach} gives the connection back and frees its place."""

    def test_detach_frees_the_connection_place(self) -> None:
        """
        Detaching a connection of an L{SMTPClient} in the middle of a batch decides the batch
        (undecided recipients temporary), frees its place in the per-host count, cancels the
        timer, unregisters the producer and returns the unread bytes; the connectionLost
        that follows changes nothing.
        """
        clock = Clock()
        client = SMTPClient(clock=clock, hostname="client.example")
        transport = StringTransport()
        made: list[SMTPClientProtocol] = []

        class Endpoint:
            def connect(self, factory: object) -> Deferred[object]:
                protocol = factory.buildProtocol(PROVIDER_ADDRESS)  # type: ignore[attr-defined]
                protocol.makeConnection(transport)
                made.append(protocol)
                d: Deferred[object] = Deferred()
                d.callback(protocol)
                return d

        destination = Destination("mx.example")
        transaction = Transaction("a@c.example", (Recipient("b@mx.example"),), b"x\r\n")
        report = client.deliver(Endpoint(), destination, [transaction])  # type: ignore[arg-type]
        [protocol] = made
        protocol.dataReceived(b"220 mx.example ESMTP\r\n250 mx.ex")
        self.assertEqual(client.open_connections(destination), 1)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        self.assertIs(transport.producer, protocol)

        self.assertEqual(protocol.detach(), b"250 mx.ex")
        self.assertEqual(client.open_connections(destination), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertIsNone(transport.producer)
        result = self.successResultOf(report)
        self.assertEqual(result.transactions[0].recipients[0].status, RecipientStatus.TEMPORARY)
        self.assertEqual(
            self.successResultOf(protocol.ended),
            result.session,
        )
        self.assertIsInstance(result.session, SessionOutcome)
        written = transport.value()
        protocol.dataReceived(b"250 more\r\n")
        protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(client.open_connections(destination), 0)
        self.assertEqual(transport.value(), written)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(protocol.detach(), b"")


class SwitchingProtocolTests(SynchronousTestCase):
    """L{SwitchingProtocol} on its own, with recording protocols."""

    def test_forwards_to_the_current_inner(self) -> None:
        """
        Bytes and the loss of the connection go to the current inner protocol only; each
        inner writes through the switching protocol to the one transport.
        """
        first, second = Recorder(), Recorder()
        outer = switching_for(first).buildProtocol(PROVIDER_ADDRESS)
        transport = StringTransport()
        outer.makeConnection(transport)
        outer.dataReceived(b"one")
        outer.switch_to(second, b"left over")
        outer.dataReceived(b"two")
        assert second.transport is not None
        second.transport.write(b"written")
        outer.connectionLost(Failure(ConnectionError()))
        self.assertEqual((first.received, first.made, first.lost), (b"one", 1, []))
        self.assertEqual((second.received, second.made, len(second.lost)), (b"left overtwo", 1, 1))
        self.assertIs(second.transport, outer)
        self.assertEqual(transport.value(), b"written")
        self.assertEqual(outer.switches, 1)
        self.assertIsNone(outer.inner)

    def test_no_switch_on_a_lost_connection(self) -> None:
        """Switching after the connection is lost is an error."""
        outer = switching_for(Recorder()).buildProtocol(PROVIDER_ADDRESS)
        outer.makeConnection(StringTransport())
        outer.connectionLost(Failure(ConnectionError()))
        self.assertRaises(RuntimeError, outer.switch_to, Recorder())

    def test_switcher_of(self) -> None:
        """A protocol's switcher is its transport when that is a switching protocol."""
        inner = Recorder()
        outer = switching_for(inner).buildProtocol(PROVIDER_ADDRESS)
        self.assertIsNone(switcher_of(inner))
        outer.makeConnection(StringTransport())
        self.assertIs(switcher_of(inner), outer)
        bare = Recorder()
        bare.makeConnection(StringTransport())
        self.assertIsNone(switcher_of(bare))


@implementer(IHandshakeListener)
class _Listener(Recorder):
    """A recorder that counts TLS handshakes."""

    handshakes = 0

    def handshakeCompleted(self) -> None:  # noqa: N802
        """Count the handshake."""
        self.handshakes += 1


class HandshakeTests(SynchronousTestCase):
    """
    The end of a TLS handshake reaches the inner protocol through the switching protocol.
    """

    def test_forwarded(self) -> None:
        """
        An inner protocol that listens for the handshake hears of it; one that does not is
        left alone.
        """
        listener = _Listener()
        wrapper = switching(Factory.forProtocol(lambda: listener)).buildProtocol(CUSTOMER_ADDRESS)
        self.assertTrue(IHandshakeListener.providedBy(wrapper))
        wrapper.makeConnection(StringTransport())
        wrapper.handshakeCompleted()
        self.assertEqual(listener.handshakes, 1)
        plain = switching(Factory.forProtocol(Recorder)).buildProtocol(CUSTOMER_ADDRESS)
        plain.makeConnection(StringTransport())
        plain.handshakeCompleted()
