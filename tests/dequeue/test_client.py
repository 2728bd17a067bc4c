"""
Tests for L{mdtwist.dequeue.client}: the dequeue signal in SMTP and raw mode, and the turn
into an SMTP server after an accepted ATRN, against scripted hosts over fake transports.

Each case of the client side of the dequeue notes' edge-case list (11 to 15, 30 to 35) is a
named test here (11 is in L{tests.dequeue.test_signal} and L{tests.dequeue.test_service}).
Every conversation runs twice: with each write of the host fed at once, and one byte at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from mdtwist.config import DequeueSignalConfig, ListenerMode
from mdtwist.dequeue.client import RAW_READ_LIMIT, ReleasedDomainsPolicy, Signal, Signaller
from mdtwist.dequeue.signal import SignalMode, SignalResult, SignalStatus
from mdtwist.directory.model import Account
from mdtwist.envelope import ClientInfo
from mdtwist.portal import build_login_portal
from mdtwist.secret import Secret
from mdtwist.smtp.client import ClientTimeouts
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.policy import ReceivePolicy
from mdtwist.smtp.server import SMTPServerFactory
from tests.smtp.fakes import FakeSpool, TLSStringTransport
from tests.support.directory import FakeDirectory

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

PROVIDER = IPv4Address("TCP", "192.0.2.1", 366)
GREETING = b"220 provider.test ESMTP\r\n"
EHLO_ETRN = b"250-provider.test\r\n250-ETRN\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_ODMR = b"250-provider.test\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n"
CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
#: base64 of CHALLENGE.
CHALLENGE_B64 = b"PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+"
#: base64 of "office.example" and HMAC-MD5(tanstaaftanstaaf, CHALLENGE) in hex.
CRAM_ANSWER = b"b2ZmaWNlLmV4YW1wbGUgYjkxM2E2MDJjN2VkYTdhNDk1YjRlNmU3MzM0ZDM4OTA="
#: A held message with lines that start with a dot (dot-stuffed on the wire).
HELD = b"Subject: held\r\n\r\n.a line with a dot\r\n..\r\nend\r\n"
HELD_STUFFED = b"Subject: held\r\n\r\n..a line with a dot\r\n...\r\nend\r\n.\r\n"


def target(**kwargs: Any) -> DequeueSignalConfig:
    """A signal for office.example to provider.test (ETRN unless told otherwise)."""
    settings: dict[str, Any] = {"text": "ETRN office.example"}
    settings.update(kwargs)
    return DequeueSignalConfig(domain="office.example", host="provider.test", **settings)


def atrn(
    text: str = "ATRN office.example,office.example.org", **kwargs: Any
) -> DequeueSignalConfig:
    """An ATRN signal with CRAM-MD5 credentials."""
    settings: dict[str, Any] = {
        "text": text,
        "port": 366,
        "login": "office.example",
        "password": Secret("tanstaaftanstaaf"),
    }
    settings.update(kwargs)
    return target(**settings)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint that connects at once over a fake transport, fails, or never answers.

    @ivar failure: the failure to connect with, or L{None}.
    @ivar pending: never answer (the Deferred is kept in L{attempt}).
    @ivar protocol: the connected (outer) protocol.
    @ivar transport: its transport.
    @ivar tls: give a transport that can start TLS.
    """

    def __init__(self, failure: Exception | None = None, *, pending: bool = False) -> None:
        self.failure = failure
        self.pending = pending
        self.tls = False
        self.attempt: Deferred[IProtocol] | None = None
        self.protocol: IProtocol | None = None
        self.transport: StringTransport | None = None
        self.cancelled = False

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """Connect, fail or hang as configured."""
        if self.failure is not None:
            return fail(self.failure)
        if self.pending:

            def cancel(d: Deferred[IProtocol]) -> None:
                self.cancelled = True

            self.attempt = Deferred(cancel)
            return self.attempt
        protocol = factory.buildProtocol(PROVIDER)
        assert protocol is not None
        kind = TLSStringTransport if self.tls else StringTransport
        transport = kind(peerAddress=PROVIDER)
        protocol.makeConnection(transport)
        self.protocol, self.transport = protocol, transport
        return succeed(protocol)


@attrs.define
class Rig:
    """A signaller, its clock and endpoint, and what the turned server stores."""

    clock: Clock
    endpoint: FakeEndpoint
    signaller: Signaller
    spool: FakeSpool
    connected_to: list[tuple[str, int]]
    released: list[frozenset[str]]


def directory() -> FakeDirectory:
    """Mailboxes in the two released domains and in a third local domain."""
    accounts = [
        Account(address=a, mailbox=a.split("@")[0], domain=a.split("@")[1], login=a)
        for a in ("carol@office.example", "dave@office.example.org", "erin@other.example")
    ]
    return FakeDirectory(
        accounts, domains=("office.example", "office.example.org", "other.example")
    )


def rig(endpoint: FakeEndpoint | None = None) -> Rig:
    """Build a signaller over a fake endpoint, with an SMTP server for ATRN."""
    clock = Clock()
    endpoint = endpoint or FakeEndpoint()
    spool = FakeSpool()
    connected_to: list[tuple[str, int]] = []
    released: list[frozenset[str]] = []

    def connect(host: str, port: int) -> IStreamClientEndpoint:
        connected_to.append((host, port))
        return endpoint

    def turned(domains: frozenset[str]) -> IProtocol:
        released.append(domains)
        factory = SMTPServerFactory(
            settings=ServerSettings(hostname="office.example"),
            mode=ListenerMode.MX,
            policy=ReleasedDomainsPolicy(ReceivePolicy(directory()), domains),
            spool=spool,
            portal=build_login_portal(directory(), clock),
            clock=clock,
        )
        return factory.buildProtocol(PROVIDER)

    signaller = Signaller(
        clock=clock, connect=connect, hostname="office.example", turned_server=turned
    )
    return Rig(clock, endpoint, signaller, spool, connected_to, released)


class SignalTestsMixin(_Base):
    """The conversations; L{bytewise} says how the host's bytes are fed."""

    bytewise: bool

    def start(self, settings: DequeueSignalConfig, r: Rig | None = None) -> tuple[Rig, Signal]:
        """Send a signal; return the rig and the signal."""
        r = r or rig()
        return r, r.signaller.signal(settings)

    def host(self, r: Rig, data: bytes) -> None:
        """The host writes C{data}."""
        protocol = r.endpoint.protocol
        assert protocol is not None
        if self.bytewise:
            for i in range(len(data)):
                protocol.dataReceived(data[i : i + 1])
        else:
            protocol.dataReceived(data)

    def sent(self, r: Rig) -> bytes:
        """Take what we wrote."""
        transport = r.endpoint.transport
        assert transport is not None
        data: bytes = transport.value()
        transport.clear()
        return data

    def close(self, r: Rig) -> None:
        """The connection closes (after our close, or the host's)."""
        protocol = r.endpoint.protocol
        assert protocol is not None
        protocol.connectionLost(Failure(ConnectionDone()))

    def result(self, signal: Signal) -> SignalResult:
        """The signal's result, which must be there."""
        return self.successResultOf(signal.result)

    def quit(self, r: Rig) -> None:
        """We say QUIT; the host answers and closes."""
        self.assertEqual(self.sent(r), b"QUIT\r\n")
        self.host(r, b"221 2.0.0 Bye\r\n")
        assert r.endpoint.transport is not None
        self.assertTrue(r.endpoint.transport.disconnecting)
        self.close(r)

    # -- ETRN, QSND, any text (edge cases 12 and 13) --

    def test_etrn(self) -> None:
        """
        Greeting, EHLO, the text, its reply, QUIT: sent, with the code; the host and port
        are the configured ones; the result comes once the connection is gone.
        """
        r, signal = self.start(target(port=2525))
        self.assertEqual(r.connected_to, [("provider.test", 2525)])
        self.host(r, GREETING)
        self.assertEqual(self.sent(r), b"EHLO office.example\r\n")
        self.host(r, EHLO_ETRN)
        self.assertEqual(self.sent(r), b"ETRN office.example\r\n")
        self.host(r, b"250 2.0.0 Queuing for node office.example started\r\n")
        self.assertNoResult(signal.result)
        self.quit(r)
        result = self.result(signal)
        self.assertEqual(
            result,
            SignalResult(
                "office.example",
                SignalStatus.SENT,
                250,
                "2.0.0 Queuing for node office.example started",
            ),
        )
        self.successResultOf(signal.finished)

    def test_multiline_reply(self) -> None:
        """The whole multi-line reply is read before QUIT."""
        r, signal = self.start(target())
        self.host(r, GREETING + EHLO_ETRN)
        self.sent(r)
        self.host(r, b"253-2.0.0 OK, 3 pending messages\r\n253 2.0.0 for office.example\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.SENT, 253))
        self.assertIn("for office.example", result.detail)

    def test_no_mail(self) -> None:
        """251 to ETRN: nothing is waiting, which is no error."""
        r, signal = self.start(target())
        self.host(r, GREETING + EHLO_ETRN)
        self.sent(r)
        self.host(r, b"251 2.0.0 No mail waiting\r\n")
        self.quit(r)
        self.assertEqual(self.result(signal).status, SignalStatus.NO_MAIL)

    def test_refused_is_logged(self) -> None:
        """A 459 is a refusal; the session still ends with QUIT."""
        r, signal = self.start(target())
        self.host(r, GREETING + EHLO_ETRN)
        self.sent(r)
        self.host(r, b"459 4.7.1 office.example: not allowed\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, 459))

    def test_no_ehlo(self) -> None:
        """With ehlo off the text follows the greeting at once."""
        r, signal = self.start(target(text="QSND office.example", ehlo=False))
        self.host(r, GREETING)
        self.assertEqual(self.sent(r), b"QSND office.example\r\n")
        self.host(r, b"250 OK\r\n")
        self.quit(r)
        self.assertEqual(self.result(signal).status, SignalStatus.SENT)

    def test_ehlo_rejected(self) -> None:
        """A 5xx to EHLO falls back to HELO, then the text."""
        r, signal = self.start(target())
        self.host(r, GREETING)
        self.sent(r)
        self.host(r, b"502 5.5.1 EHLO not implemented\r\n")
        self.assertEqual(self.sent(r), b"HELO office.example\r\n")
        self.host(r, b"250 provider.test\r\n")
        self.assertEqual(self.sent(r), b"ETRN office.example\r\n")
        self.host(r, b"250 OK\r\n")
        self.quit(r)
        self.assertEqual(self.result(signal).status, SignalStatus.SENT)

    def test_etrn_not_advertised(self) -> None:
        """A host without ETRN in its EHLO reply gets the text anyway (as MDaemon does)."""
        r, signal = self.start(target())
        self.host(r, GREETING + b"250 provider.test\r\n")
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nETRN office.example\r\n")
        self.host(r, b"502 5.5.2 Command not recognized\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, 502))

    def test_greeting_refused(self) -> None:
        """A 554 greeting: nothing sent but QUIT; refused with that code."""
        r, signal = self.start(target())
        self.host(r, b"554 5.3.2 Not now\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, 554))

    def test_greeting_421(self) -> None:
        """A 421 greeting: closed without QUIT; refused."""
        r, signal = self.start(target())
        self.host(r, b"421 4.3.2 Busy\r\n")
        self.assertEqual(self.sent(r), b"")
        self.close(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, 421))

    def test_empty_text(self) -> None:
        """An empty text: connect, EHLO, QUIT."""
        r, signal = self.start(target(text=""))
        self.host(r, GREETING)
        self.assertEqual(self.sent(r), b"EHLO office.example\r\n")
        self.host(r, EHLO_ETRN)
        self.quit(r)
        self.assertEqual(
            self.result(signal),
            SignalResult("office.example", SignalStatus.SENT, None, "connected"),
        )

    # -- AUTH (edge cases 12 and 30) --

    def test_auth_cram_md5_first(self) -> None:
        """CRAM-MD5 is chosen over PLAIN and needs no TLS; the text follows 235."""
        r, signal = self.start(atrn(text="ETRN office.example", port=25))
        self.host(r, GREETING)
        self.sent(r)
        self.host(r, b"250-provider.test\r\n250-AUTH PLAIN LOGIN CRAM-MD5\r\n250 ETRN\r\n")
        self.assertEqual(self.sent(r), b"AUTH CRAM-MD5\r\n")
        self.host(r, b"334 " + CHALLENGE_B64 + b"\r\n")
        self.assertEqual(self.sent(r), CRAM_ANSWER + b"\r\n")
        self.host(r, b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(self.sent(r), b"ETRN office.example\r\n")
        self.host(r, b"250 OK\r\n")
        self.quit(r)
        self.assertEqual(self.result(signal).status, SignalStatus.SENT)

    def test_auth_failure_sends_no_text(self) -> None:
        """A 535: the text is not sent; QUIT; refused with 535."""
        r, signal = self.start(atrn(text="ETRN office.example"))
        self.host(r, GREETING + EHLO_ODMR)
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nAUTH CRAM-MD5\r\n")
        self.host(r, b"334 " + CHALLENGE_B64 + b"\r\n")
        self.sent(r)
        self.host(r, b"535 5.7.8 Authentication failed\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, 535))

    def test_no_plain_auth_without_tls(self) -> None:
        """Only PLAIN offered, no TLS: no password goes out; refused, no text sent."""
        r, signal = self.start(atrn(text="ETRN office.example"))
        self.host(r, GREETING + b"250-provider.test\r\n250 AUTH PLAIN LOGIN\r\n")
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nQUIT\r\n")
        self.host(r, b"221 Bye\r\n")
        self.close(r)
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.REFUSED)
        self.assertIn("tls-required", result.detail)

    def test_plain_auth_when_allowed(self) -> None:
        """PLAIN over plaintext when explicitly allowed."""
        r, _signal = self.start(atrn(text="ETRN office.example", allow_plaintext_auth=True))
        self.host(r, GREETING + b"250-provider.test\r\n250 AUTH PLAIN LOGIN\r\n")
        self.assertEqual(
            self.sent(r),
            b"EHLO office.example\r\nAUTH PLAIN AG9mZmljZS5leGFtcGxlAHRhbnN0YWFmdGFuc3RhYWY=\r\n",
        )
        self.host(r, b"235 2.7.0 OK\r\n")
        self.assertEqual(self.sent(r), b"ETRN office.example\r\n")

    def test_starttls_then_plain(self) -> None:
        """STARTTLS when offered; then PLAIN may go over TLS."""
        endpoint = FakeEndpoint()
        endpoint.tls = True
        r, _signal = self.start(atrn(text="ETRN office.example"), rig(endpoint))
        self.host(r, GREETING + b"250-provider.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nSTARTTLS\r\n")
        self.host(r, b"220 2.0.0 Go ahead\r\n")
        assert isinstance(endpoint.transport, TLSStringTransport)
        self.assertIsNotNone(endpoint.transport.tls_context)
        self.assertEqual(self.sent(r), b"EHLO office.example\r\n")
        self.host(r, b"250-provider.test\r\n250 AUTH PLAIN\r\n")
        self.assertTrue(self.sent(r).startswith(b"AUTH PLAIN "))

    # -- unreachable, silent, never closing --

    def test_connection_refused(self) -> None:
        """A refused connection: failed, said why; the signal is over."""
        _r, signal = self.start(target(), rig(FakeEndpoint(ConnectionRefusedError())))
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.FAILED)
        self.assertIn("cannot connect to provider.test:25", result.detail)
        self.successResultOf(signal.finished)

    def test_unresolvable(self) -> None:
        """A name that does not resolve: failed."""
        _r, signal = self.start(target(), rig(FakeEndpoint(DNSLookupError("provider.test"))))
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.FAILED)
        self.assertIn("DNS lookup failed", result.detail)

    def test_connect_timeout(self) -> None:
        """A connection that is never made is given up after the connect timeout."""
        endpoint = FakeEndpoint(pending=True)
        r, signal = self.start(target(), rig(endpoint))
        r.clock.advance(ClientTimeouts().connect - 1)
        self.assertNoResult(signal.result)
        r.clock.advance(1)
        self.assertTrue(endpoint.cancelled)
        self.assertEqual(self.result(signal).status, SignalStatus.FAILED)

    def test_silent_host(self) -> None:
        """No greeting: the connection is closed after the greeting timeout; failed."""
        r, signal = self.start(target())
        r.clock.advance(ClientTimeouts().greeting)
        assert r.endpoint.transport is not None
        self.assertTrue(r.endpoint.transport.disconnecting)
        self.close(r)
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.FAILED)
        self.assertIn("timeout at greeting", result.detail)

    def test_never_closes_after_quit(self) -> None:
        """No 221 and no close after QUIT: we close after the QUIT timeout; still sent."""
        r, signal = self.start(target())
        self.host(r, GREETING + EHLO_ETRN)
        self.sent(r)
        self.host(r, b"250 OK\r\n")
        self.assertEqual(self.sent(r), b"QUIT\r\n")
        r.clock.advance(ClientTimeouts().quit)
        assert r.endpoint.transport is not None
        self.assertTrue(r.endpoint.transport.disconnecting)
        self.close(r)
        self.assertEqual(self.result(signal).status, SignalStatus.SENT)

    def test_lost_before_reply(self) -> None:
        """The host closes before answering the text: failed."""
        r, signal = self.start(target())
        self.host(r, GREETING + EHLO_ETRN)
        self.close(r)
        self.assertEqual(self.result(signal).status, SignalStatus.FAILED)

    # -- ATRN (edge cases 30 to 35) --

    def authenticate(self, r: Rig) -> None:
        """Greeting, EHLO with ATRN, CRAM-MD5 accepted."""
        self.host(r, GREETING)
        self.host(r, EHLO_ODMR)
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nAUTH CRAM-MD5\r\n")
        self.host(r, b"334 " + CHALLENGE_B64 + b"\r\n")
        self.assertEqual(self.sent(r), CRAM_ANSWER + b"\r\n")
        self.host(r, b"235 2.7.0 Authentication successful\r\n")

    def test_atrn_not_offered(self) -> None:
        """No ATRN in the EHLO reply: no ATRN sent, QUIT; refused."""
        r, signal = self.start(atrn())
        self.host(r, GREETING + b"250-provider.test\r\n250 AUTH CRAM-MD5\r\n")
        self.sent(r)
        self.host(r, b"334 " + CHALLENGE_B64 + b"\r\n")
        self.sent(r)
        self.host(r, b"235 2.7.0 OK\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.REFUSED)
        self.assertIn("does not offer ATRN", result.detail)

    def test_atrn_auth_not_offered(self) -> None:
        """No AUTH in the EHLO reply: neither credentials nor ATRN are sent; QUIT; refused."""
        r, signal = self.start(atrn())
        self.host(r, GREETING + b"250-provider.test\r\n250 ATRN\r\n")
        self.assertEqual(self.sent(r), b"EHLO office.example\r\nQUIT\r\n")
        self.host(r, b"221 Bye\r\n")
        self.close(r)
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.REFUSED)
        self.assertIn("no usable AUTH mechanism", result.detail)

    def test_atrn_nothing_waiting(self) -> None:
        """453: nothing waiting, no error; QUIT."""
        r, signal = self.start(atrn())
        self.authenticate(r)
        self.assertEqual(self.sent(r), b"ATRN office.example,office.example.org\r\n")
        self.host(r, b"453 4.3.0 You have no mail\r\n")
        self.quit(r)
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.NO_MAIL, 453))
        self.assertEqual(r.released, [])

    def test_atrn_refusals(self) -> None:
        """450, 451, 502 and 530 are refusals, each ended with QUIT."""
        for code in (450, 451, 502, 530):
            with self.subTest(code=code):
                r, signal = self.start(atrn())
                self.authenticate(r)
                self.sent(r)
                self.host(r, b"%d 4.0.0 No\r\n" % code)
                self.quit(r)
                result = self.result(signal)
                self.assertEqual((result.status, result.code), (SignalStatus.REFUSED, code))
                self.assertEqual(r.released, [])

    def test_atrn_waits_ten_minutes(self) -> None:
        """The ATRN reply is awaited for 10 minutes, then the connection is closed."""
        r, signal = self.start(atrn())
        self.authenticate(r)
        self.sent(r)
        r.clock.advance(599)
        assert r.endpoint.transport is not None
        self.assertFalse(r.endpoint.transport.disconnecting)
        r.clock.advance(1)
        self.assertTrue(r.endpoint.transport.disconnecting)
        self.close(r)
        self.assertEqual(self.result(signal).status, SignalStatus.FAILED)

    def test_atrn_multiline_250(self) -> None:
        """A multi-line 250 does not turn the connection: QUIT; refused."""
        r, signal = self.start(atrn())
        self.authenticate(r)
        self.sent(r)
        self.host(r, b"250-OK\r\n250 now reversing\r\n")
        self.quit(r)
        self.assertEqual(self.result(signal).status, SignalStatus.REFUSED)
        self.assertEqual(r.released, [])

    def deliver(self, r: Rig) -> None:
        """The provider, now the client, delivers one message with three recipients."""
        self.host(r, b"EHLO provider.test\r\n")
        self.assertTrue(self.sent(r).startswith(b"250-office.example"))
        self.host(r, b"MAIL FROM:<held@remote.example>\r\n")
        self.assertTrue(self.sent(r).startswith(b"250 "))
        self.host(r, b"RCPT TO:<carol@office.example>\r\n")
        self.assertTrue(self.sent(r).startswith(b"250 "))
        self.host(r, b"RCPT TO:<Dave@Office.Example.org>\r\n")
        self.assertTrue(self.sent(r).startswith(b"250 "))
        self.host(r, b"RCPT TO:<erin@other.example>\r\n")
        self.assertEqual(
            self.sent(r),
            b"550 5.7.1 <erin@other.example>: not in a domain released by our ATRN\r\n",
        )
        self.host(r, b"RCPT TO:<nobody@office.example>\r\n")
        self.assertTrue(self.sent(r).startswith(b"550 5.1.1 "))
        self.host(r, b"DATA\r\n")
        self.assertTrue(self.sent(r).startswith(b"354 "))
        self.host(r, HELD_STUFFED)
        self.assertTrue(self.sent(r).startswith(b"250 "))

    def test_atrn_turns_and_receives(self) -> None:
        """
        A single-line 250: our 220 goes out at once, we are the SMTP server for the released
        domains only (others get 550 5.7.1; the normal checks still apply inside them), the
        message is stored intact (dot-stuffed lines included), and the provider's QUIT ends
        it. The result comes at the turn; the signal finishes when the connection is gone.
        """
        r, signal = self.start(atrn())
        self.authenticate(r)
        self.assertEqual(self.sent(r), b"ATRN office.example,office.example.org\r\n")
        self.host(r, b"250 OK now reversing the connection\r\n")
        self.assertTrue(self.sent(r).startswith(b"220 office.example "))
        self.assertEqual(r.released, [frozenset({"office.example", "office.example.org"})])
        result = self.result(signal)
        self.assertEqual((result.status, result.code), (SignalStatus.RELEASED, 250))
        self.assertNoResult(signal.finished)
        self.deliver(r)
        self.host(r, b"QUIT\r\n")
        self.assertTrue(self.sent(r).startswith(b"221 "))
        self.close(r)
        self.successResultOf(signal.finished)
        [(envelope, stored)] = r.spool.messages
        self.assertEqual(envelope.sender, "held@remote.example")
        self.assertEqual(
            [rc.address for rc in envelope.recipients],
            ["carol@office.example", "Dave@Office.Example.org"],
        )
        self.assertTrue(stored.endswith(HELD))

    def test_atrn_bytes_after_250(self) -> None:
        """Bytes that came with the 250 go to the server role, after its greeting."""
        r, _signal = self.start(atrn())
        self.authenticate(r)
        self.sent(r)
        self.host(r, b"250 OK now reversing the connection\r\nEHLO provider.test\r\n")
        greeting, _, ehlo = self.sent(r).partition(b"\r\n")
        self.assertTrue(greeting.startswith(b"220 office.example"))
        self.assertTrue(ehlo.startswith(b"250-office.example"))

    def test_bare_atrn_releases_own_domain(self) -> None:
        """A bare ATRN: the server accepts the signal's own domain."""
        r, _signal = self.start(atrn(text="ATRN"))
        self.authenticate(r)
        self.assertEqual(self.sent(r), b"ATRN\r\n")
        self.host(r, b"250 OK\r\n")
        self.assertEqual(r.released, [frozenset({"office.example"})])

    def test_provider_drops_mid_message(self) -> None:
        """
        The provider closes without QUIT in the middle of a second message: the first is
        kept, the partial one is not.
        """
        r, signal = self.start(atrn())
        self.authenticate(r)
        self.sent(r)
        self.host(r, b"250 OK\r\n")
        self.sent(r)
        self.deliver(r)
        self.host(r, b"MAIL FROM:<more@remote.example>\r\nRCPT TO:<carol@office.example>\r\n")
        self.host(r, b"DATA\r\n")
        self.host(r, b"Subject: cut\r\n\r\nhalf")
        self.close(r)
        self.assertEqual(len(r.spool.messages), 1)
        self.successResultOf(signal.finished)

    def test_no_atrn_without_server(self) -> None:
        """Without an SMTP server to turn into, an ATRN is not even attempted."""
        clock = Clock()
        endpoint = FakeEndpoint()
        signaller = Signaller(
            clock=clock, connect=lambda h, p: endpoint, hostname="office.example"
        )
        signal = signaller.signal(atrn())
        self.assertEqual(self.result(signal).status, SignalStatus.FAILED)
        self.assertIsNone(endpoint.protocol)

    # -- raw mode --

    def test_raw_reads_until_eof(self) -> None:
        """No greeting awaited: the text and CRLF go out at once; read until the host closes."""
        r, signal = self.start(target(mode=SignalMode.RAW, port=79, text="office"))
        self.assertEqual(r.connected_to, [("provider.test", 79)])
        self.assertEqual(self.sent(r), b"office\r\n")
        self.host(r, b"Login: office\x1b[2J\r\nNo mail.\r\n")
        self.close(r)
        result = self.result(signal)
        self.assertEqual(result.status, SignalStatus.SENT)
        self.assertEqual(result.detail, "29 bytes read: Login: office\\x1b[2J")

    def test_raw_empty_text(self) -> None:
        """An empty text: connect, send nothing."""
        r, signal = self.start(target(mode=SignalMode.RAW, text=""))
        self.assertEqual(self.sent(r), b"")
        self.close(r)
        self.assertEqual(self.result(signal).detail, "0 bytes read")

    def test_raw_timeout(self) -> None:
        """
        A host that never closes is closed after the timeout, and cut off when it does not
        let go after as long again.
        """
        r, signal = self.start(target(mode=SignalMode.RAW, text="x", timeout=5.0))
        transport = r.endpoint.transport
        assert transport is not None
        r.clock.advance(4.9)
        self.assertFalse(transport.disconnecting)
        r.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertFalse(transport.disconnected)
        r.clock.advance(5.0)
        self.assertTrue(transport.disconnected)  # abortConnection
        self.close(r)
        self.assertIn("closed after the timeout", self.result(signal).detail)

    def test_raw_read_limit(self) -> None:
        """A host that talks without end is closed after the read limit."""
        r, _signal = self.start(target(mode=SignalMode.RAW, text=""))
        self.host(r, b"x" * (RAW_READ_LIMIT + 10))
        assert r.endpoint.transport is not None
        self.assertTrue(r.endpoint.transport.disconnecting)

    def test_raw_refused(self) -> None:
        """A refused raw connection: failed."""
        _r, signal = self.start(
            target(mode=SignalMode.RAW), rig(FakeEndpoint(ConnectionRefusedError()))
        )
        self.assertEqual(self.result(signal).status, SignalStatus.FAILED)


class SignalWholeTests(SignalTestsMixin, SynchronousTestCase):
    """The conversations, each write of the host fed at once."""

    bytewise = False


class SignalBytewiseTests(SignalTestsMixin, SynchronousTestCase):
    """The conversations, the host's bytes fed one at a time."""

    bytewise = True


class ReleasedDomainsPolicyTests(SynchronousTestCase):
    """The policy of the server an ATRN turns our connection into."""

    def test_domains(self) -> None:
        """
        Only the released domains, in any case, with or without a trailing dot; not their
        subdomains, not a bare name.
        """
        policy = ReleasedDomainsPolicy(ReceivePolicy(directory()), frozenset({"Office.Example."}))
        client = ClientInfo(address="192.0.2.1", helo="provider.test")
        decided = self.successResultOf(policy.check_recipient(client, "", "carol@OFFICE.example."))
        self.assertEqual(decided.reply.code, 250)
        for refused in ("x@sub.office.example", "postmaster", "erin@other.example"):
            decided = self.successResultOf(policy.check_recipient(client, "", refused))
            self.assertEqual((decided.reply.code, decided.reply.enhanced), (550, "5.7.1"))
        self.assertEqual(
            self.successResultOf(policy.check_sender(client, "a@b.example")).code, 250
        )
