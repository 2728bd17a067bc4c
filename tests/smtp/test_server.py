"""Tests for L{mdtwist.smtp.server}: the Twisted glue around the server core."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.config import ListenerMode
from mdtwist.envelope import Envelope
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory, IReceivePolicy, ISpool
from mdtwist.login_limits import LoginLimits
from mdtwist.portal import build_login_portal
from mdtwist.secret import Secret
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.server import SessionLimits, SMTPServerFactory, SMTPServerProtocol
from tests.smtp.core.helpers import parse_replies
from tests.smtp.fakes import (
    FakeDirectory,
    FakePolicy,
    FakeSpool,
    TLSStringTransport,
    spool_error,
)
from tests.support.logs import capture_logs

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"
PLAIN_ALICE = b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"
PLAIN_WRONG = b"AUTH PLAIN AGFsaWNlAHdyb25n\r\n"
TLS_CONTEXT = object()
#: Most conversations here send the client's side in one segment (ENVELOPE alone holds EHLO and
#: the body-less DATA), so they run without command synchronisation; SyncTests checks it.
PIPELINING_UNCHECKED = ServerSettings(hostname="mx.example", forbid_unauth_pipelining=False)


class GlueTestsBase(SynchronousTestCase):
    """
    Shared set-up: a factory with fakes and a clock.

    @cvar bytewise: when true, every C{dataReceived} of a connected protocol is fed one byte
        at a time, so each conversation also runs with the worst possible framing.
    """

    bytewise = False

    def setUp(self) -> None:
        """Make the fakes and the clock."""
        self.clock = Clock()
        self.policy = FakePolicy()
        self.spool = FakeSpool()
        self.directory = FakeDirectory()
        self.login_limits = LoginLimits()

    def factory(
        self,
        mode: ListenerMode = ListenerMode.MX,
        tls: object = None,
        limits: SessionLimits | None = None,
        settings: ServerSettings = PIPELINING_UNCHECKED,
    ) -> SMTPServerFactory:
        """Make a factory around the fakes."""
        return SMTPServerFactory(
            settings=settings,
            mode=mode,
            policy=self.policy,
            spool=self.spool,
            portal=build_login_portal(self.directory, self.clock, limits=self.login_limits),
            clock=self.clock,
            tls=tls,  # type: ignore[arg-type]
            limits=limits,
        )

    def connect(
        self, factory: SMTPServerFactory, host: str = "192.0.2.1"
    ) -> tuple[SMTPServerProtocol, TLSStringTransport]:
        """Connect a new protocol from C{host} to a fresh transport."""
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 1234))
        transport = TLSStringTransport(peerAddress=IPv4Address("TCP", host, 1234))
        protocol.makeConnection(transport)
        if self.bytewise:
            whole = protocol.dataReceived

            def one_byte_at_a_time(data: bytes) -> None:
                for i in range(len(data)):
                    whole(data[i : i + 1])

            protocol.dataReceived = one_byte_at_a_time  # type: ignore[method-assign]
        return protocol, transport

    def replies(self, transport: TLSStringTransport) -> list[tuple[int, str | None]]:
        """Return code and enhanced code of each reply written so far."""
        return [(r.code, r.enhanced) for r in parse_replies(transport.value())]

    def all_replies(self, transport: TLSStringTransport) -> list[Reply]:
        """Return each reply written so far."""
        return parse_replies(transport.value())


class FakesTests(SynchronousTestCase):
    """The fakes provide the interfaces they stand in for."""

    def test_verify(self) -> None:
        """Each fake passes C{verifyObject} for its interface."""
        self.assertTrue(verifyObject(IReceivePolicy, FakePolicy()))
        self.assertTrue(verifyObject(ISpool, FakeSpool()))
        self.assertTrue(verifyObject(IDirectory, FakeDirectory()))


class TransactionTests(GlueTestsBase):
    """Mail transactions through the glue."""

    def test_message_queued_with_received_header(self) -> None:
        """
        A message is stored with a C{Received:} line prepended.

        The envelope is built from the session; C{250 2.0.0 Ok: queued as <id>} follows.
        """
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (250, "2.0.0"))
        self.assertEqual(self.all_replies(transport)[-1].lines, ("Ok: queued as Q1",))
        [(envelope, body)] = self.spool.messages
        self.assertEqual(envelope.sender, "a@c.example")
        self.assertEqual([r.address for r in envelope.recipients], ["b@example.com"])
        self.assertEqual(envelope.client.address, "192.0.2.1")
        self.assertEqual(envelope.client.helo, "c.example")
        self.assertTrue(body.startswith(b"Received: from c.example ([192.0.2.1])\r\n"))
        self.assertIn(b"with ESMTP\r\n\tfor <b@example.com>; ", body)
        self.assertTrue(body.endswith(b"\r\nSubject: hi\r\n\r\nbody\r\n"))

    def test_pipelined_commands_wait_for_slow_policy(self) -> None:
        """
        With the policy's answer pending, pipelined RCPT, DATA and body wait.

        Once it fires, the replies come out in command order and the message is queued.
        """
        self.policy.hold = True
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"hello\r\n.\r\nQUIT\r\n")
        self.assertEqual([c for c, _ in self.replies(transport)], [220, 250])
        self.assertEqual(len(self.policy.held), 1)
        self.policy.held.pop(0).callback(Reply(250, "2.1.0", ("Ok",)))
        self.assertEqual([c for c, _ in self.replies(transport)], [220, 250, 250])
        self.policy.held.pop(0).callback(Reply(250, "2.1.5", ("Ok",)))
        self.assertEqual(
            [c for c, _ in self.replies(transport)], [220, 250, 250, 250, 354, 250, 221]
        )
        self.assertEqual(len(self.spool.messages), 1)
        self.assertTrue(transport.disconnecting)

    def test_reply_only_after_spool_commit(self) -> None:
        """The 250 after DATA goes out only when the spool's Deferred fires."""
        self.spool.hold = True
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"x\r\n.\r\nNOOP\r\n")
        self.assertEqual(self.replies(transport)[-1], (354, None))
        self.spool.held[0].callback("ABC")
        self.assertEqual(self.replies(transport)[-2:], [(250, "2.0.0"), (250, "2.0.0")])
        self.assertIn(b"queued as ABC", transport.value())

    def test_spool_failure(self) -> None:
        """A L{SpoolError} gives C{452 4.3.1}; nothing is queued."""
        self.spool.error = spool_error()
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"x\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (452, "4.3.1"))
        self.assertEqual(self.spool.messages, [])

    def test_unexpected_spool_failure(self) -> None:
        """Any other spool exception gives C{451 4.3.0} and is logged."""
        self.spool.error = RuntimeError("bug")
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"x\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (451, "4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_policy_failures_are_temporary(self) -> None:
        """
        L{DirectoryUnavailable} from the policy gives C{451 4.3.0}.

        So does an unexpected exception, which is also logged.
        """
        self.policy.error = DirectoryUnavailable("down")
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@c.example>\r\n")
        self.assertEqual(self.replies(transport)[-1], (451, "4.3.0"))
        self.policy.error = ValueError("bug")
        protocol.dataReceived(b"MAIL FROM:<a@c.example>\r\n")
        self.assertEqual(self.replies(transport)[-1], (451, "4.3.0"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_hop_limit(self) -> None:
        """101 C{Received:} lines are refused with C{554 5.4.6}; 100 pass."""
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"Received: x\r\n" * 101 + b"\r\nb\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (554, "5.4.6"))
        self.assertEqual(self.spool.messages, [])
        protocol.dataReceived(ENVELOPE[16:] + b"Received: x\r\n" * 100 + b"\r\nb\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (250, "2.0.0"))
        self.assertEqual(self.spool.messages[0][1].count(b"Received: "), 101)

    def test_smuggled_transaction_not_queued(self) -> None:
        """
        A second transaction hidden behind LF.LF is part of the refused message.

        Nothing is queued and the policy saw one sender only.
        """
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(
            ENVELOPE + b"x\n.\nMAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@example.com>\r\n"
            b"DATA\r\nforged\r\n.\r\n"
        )
        self.assertEqual(self.replies(transport)[-1], (550, "5.5.2"))
        self.assertEqual(self.spool.messages, [])
        self.assertEqual(len([c for c in self.policy.calls if c[0] == "sender"]), 1)

    def test_body_over_size(self) -> None:
        """A message over the size limit is refused with C{552 5.3.4} and nothing is queued."""
        factory = SMTPServerFactory(
            settings=ServerSettings(
                hostname="mx.example", max_message_size=50, forbid_unauth_pipelining=False
            ),
            mode=ListenerMode.MX,
            policy=self.policy,
            spool=self.spool,
            portal=build_login_portal(self.directory, self.clock),
            clock=self.clock,
        )
        protocol, transport = self.connect(factory)
        protocol.dataReceived(ENVELOPE + b"x" * 60 + b"\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (552, "5.3.4"))
        self.assertEqual(self.spool.messages, [])


class TLSAndAuthTests(GlueTestsBase):
    """STARTTLS and AUTH through the glue."""

    def test_starttls_injection(self) -> None:
        """
        A command pipelined after STARTTLS in the same segment is discarded.

        TLS starts with the configured context and the session must say EHLO again.
        """
        protocol, transport = self.connect(self.factory(ListenerMode.SUBMISSION, TLS_CONTEXT))
        # The injection is one TCP segment by definition: fed whole even in bytewise runs
        # (byte by byte, the RSET would arrive after the switch, as a legitimate command).
        SMTPServerProtocol.dataReceived(protocol, b"EHLO c\r\nSTARTTLS\r\nRSET\r\n")
        self.assertEqual([c for c, _ in self.replies(transport)], [220, 250, 220])
        self.assertIs(transport.tls_context, TLS_CONTEXT)
        self.assertTrue(protocol.core.tls_active)
        protocol.dataReceived(b"MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(self.replies(transport)[-1], (503, "5.5.1"))

    def test_no_tls_context(self) -> None:
        """Without a TLS context STARTTLS is not advertised and is refused."""
        protocol, transport = self.connect(self.factory(ListenerMode.SUBMISSION))
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        self.assertNotIn("STARTTLS", self.all_replies(transport)[1].lines)
        self.assertEqual(self.replies(transport)[-1], (502, "5.5.1"))

    def test_auth_before_tls_refused_on_submission(self) -> None:
        """
        On submission, AUTH before TLS gets C{538 5.7.11} and MAIL C{530 5.7.0}.

        The directory is never asked.
        """
        protocol, transport = self.connect(self.factory(ListenerMode.SUBMISSION, TLS_CONTEXT))
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE + b"MAIL FROM:<a@example.com>\r\n")
        self.assertEqual(self.replies(transport)[-2:], [(538, "5.7.11"), (530, "5.7.0")])
        self.assertEqual(self.directory.logins, [])

    def test_auth_after_starttls(self) -> None:
        """
        After STARTTLS and EHLO, AUTH succeeds.

        The client info given to the policy carries the account's login and the Received line says
        ESMTPSA.
        """
        protocol, transport = self.connect(self.factory(ListenerMode.SUBMISSION, TLS_CONTEXT))
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE + ENVELOPE[16:] + b"x\r\n.\r\n")
        self.assertIn((235, "2.7.0"), self.replies(transport))
        client = self.policy.calls[0][1]
        self.assertEqual(client.user, "alice")  # type: ignore[attr-defined]
        self.assertEqual(client.tls, "TLS")  # type: ignore[attr-defined]
        self.assertIn(b"with ESMTPSA", self.spool.messages[0][1])

    def test_smtps_starts_with_tls(self) -> None:
        """On an smtps listener TLS is active from the start: AUTH is offered, STARTTLS is not."""
        protocol, transport = self.connect(self.factory(ListenerMode.SMTPS))
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_WRONG)
        lines = self.all_replies(transport)[1].lines
        self.assertIn("AUTH PLAIN LOGIN", lines)
        self.assertNotIn("STARTTLS", lines)
        self.assertEqual(self.replies(transport)[-1], (535, "5.7.8"))

    def test_directory_unavailable(self) -> None:
        """When the directory cannot answer, AUTH gets C{454 4.7.0}."""
        self.directory.unavailable = True
        protocol, transport = self.connect(self.factory(ListenerMode.SMTPS))
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE)
        self.assertEqual(self.replies(transport)[-1], (454, "4.7.0"))

    def test_auth_failures_block_address(self) -> None:
        """
        Too many AUTH failures block the address for a while (the portal's limit).

        Further AUTH is delayed and refused with C{454 4.7.0} without asking the directory;
        the block expires with the window.
        """
        self.login_limits = LoginLimits(max_failures=2, window=60, delay=5)
        factory = self.factory(ListenerMode.SMTPS)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_WRONG + PLAIN_WRONG + PLAIN_ALICE)
        self.assertEqual(self.replies(transport)[-2:], [(535, "5.7.8"), (535, "5.7.8")])
        self.clock.advance(4)
        self.assertEqual(len(self.replies(transport)), 4)
        self.clock.advance(1)
        self.assertEqual(self.replies(transport)[-1], (454, "4.7.0"))
        self.assertEqual(self.directory.logins, ["alice", "alice"])
        self.clock.advance(60)
        protocol.dataReceived(PLAIN_ALICE)
        self.assertEqual(self.replies(transport)[-1], (235, "2.7.0"))

    def test_auth_failures_block_login_across_addresses(self) -> None:
        """
        Failures of one login from several addresses block that login from a further
        address with C{454 4.7.0}: the limit is the portal's, per login name too.
        """
        self.login_limits = LoginLimits(max_failures=2, window=60, delay=5)
        factory = self.factory(ListenerMode.SMTPS)
        for host in ("192.0.2.1", "192.0.2.2"):
            protocol, transport = self.connect(factory, host)
            protocol.dataReceived(b"EHLO c\r\n" + PLAIN_WRONG)
            self.assertEqual(self.replies(transport)[-1], (535, "5.7.8"))
        protocol, transport = self.connect(factory, "192.0.2.3")
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE)
        self.clock.advance(5)
        self.assertEqual(self.replies(transport)[-1], (454, "4.7.0"))
        self.assertEqual(self.directory.logins, ["alice", "alice"])

    def test_authzid_of_another_user(self) -> None:
        """Asking to act as another user gets C{535 5.7.8} without asking the directory."""
        protocol, transport = self.connect(self.factory(ListenerMode.SMTPS))
        protocol.dataReceived(b"EHLO c\r\nAUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==\r\n")
        self.assertEqual(self.replies(transport)[-1], (535, "5.7.8"))
        self.assertEqual(self.directory.logins, [])

    def test_cram_md5_for_directory_accounts(self) -> None:
        """
        Even when offered, a CRAM-MD5 login of a directory account fails with C{535 5.7.8}:
        the directory holds no cleartext secret to check it with.
        """
        settings = ServerSettings(
            hostname="mx.example",
            forbid_unauth_pipelining=False,
            auth_mechanisms=("PLAIN", "CRAM-MD5"),
        )
        protocol, transport = self.connect(self.factory(ListenerMode.SMTPS, settings=settings))
        protocol.dataReceived(b"EHLO c\r\nAUTH CRAM-MD5\r\n")
        challenge = base64.b64decode(self.all_replies(transport)[-1].lines[0])
        digest = hmac.new(b"secret", challenge, hashlib.md5).hexdigest()
        protocol.dataReceived(base64.b64encode(b"alice " + digest.encode()) + b"\r\n")
        self.assertEqual(self.replies(transport)[-1], (535, "5.7.8"))
        self.assertEqual(self.directory.logins, [])

    def test_cram_md5_for_gateways(self) -> None:
        """
        A listener whose logins go to the C{gateway} service can offer CRAM-MD5: a response
        made with the gateway's secret gets C{235}, each session its own challenge.
        """
        settings = ServerSettings(
            hostname="mx.example",
            forbid_unauth_pipelining=False,
            auth_mechanisms=("CRAM-MD5",),
        )
        factory = SMTPServerFactory(
            settings=settings,
            mode=ListenerMode.SMTPS,
            policy=self.policy,
            spool=self.spool,
            portal=build_login_portal(
                self.directory, self.clock, gateway_secrets={"relay": Secret("gw")}
            ),
            clock=self.clock,
            login_service="gateway",
        )
        challenges = []
        for secret, answer in ((b"guess", (535, "5.7.8")), (b"gw", (235, "2.7.0"))):
            protocol, transport = self.connect(factory)
            protocol.dataReceived(b"EHLO c\r\nAUTH CRAM-MD5\r\n")
            self.assertIn("AUTH CRAM-MD5", self.all_replies(transport)[1].lines)
            challenges.append(base64.b64decode(self.all_replies(transport)[-1].lines[0]))
            digest = hmac.new(secret, challenges[-1], hashlib.md5).hexdigest()
            protocol.dataReceived(base64.b64encode(b"relay " + digest.encode()) + b"\r\n")
            self.assertEqual(self.replies(transport)[-1], answer)
        self.assertNotEqual(challenges[0], challenges[1])

    def test_password_not_logged(self) -> None:
        """No log event of an AUTH exchange contains the password or the SASL payload."""
        from twisted.logger import ILogObserver, globalLogPublisher

        events: list[dict[str, object]] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        protocol, _ = self.connect(self.factory(ListenerMode.SMTPS))
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_WRONG + PLAIN_ALICE)
        self.assertTrue(events)
        for event in events:
            self.assertNotIn("secret", repr(event))
            self.assertNotIn("AGFsaWNl", repr(event))


class SyncTests(GlueTestsBase):
    """Command synchronisation through the glue, with the default settings."""

    def test_body_before_go_ahead(self) -> None:
        """
        A message sent before the 354 ends the session with C{554 5.5.0}; nothing is queued,
        and the log says after which command and from whom.
        """
        events = capture_logs(self)
        factory = self.factory(settings=ServerSettings(hostname="mx.example"))
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\n")
        protocol.dataReceived(ENVELOPE[len(b"EHLO c.example\r\n") :] + b"hi\r\n.\r\n")
        self.assertEqual(self.replies(transport)[-1], (554, "5.5.0"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spool.messages, [])
        [warning] = [e for e in events if e.get("log_format", "").startswith("improper")]
        self.assertEqual((warning["command"], warning["peer"]), ("DATA", "192.0.2.1"))


class LimitTests(GlueTestsBase):
    """Per-address session limits and timeouts."""

    def test_concurrent_sessions(self) -> None:
        """
        Sessions over the per-address limit get C{421 4.7.0} and are closed.

        Closing one frees a place.
        """
        factory = self.factory(limits=SessionLimits(max_sessions_per_ip=2))
        first, _ = self.connect(factory)
        self.connect(factory)
        third, transport = self.connect(factory)
        self.assertEqual(self.replies(transport), [(421, "4.7.0")])
        self.assertTrue(transport.disconnecting)
        _, other = self.connect(factory, host="192.0.2.2")
        self.assertEqual(self.replies(other), [(220, None)])
        third.connectionLost()
        first.connectionLost()
        _, fourth = self.connect(factory)
        self.assertEqual(self.replies(fourth), [(220, None)])
        self.assertEqual(factory.sessions("192.0.2.1"), 2)

    def test_idle_timeout(self) -> None:
        """
        Without a command for the idle timeout the session gets C{421 4.4.2} and is closed.

        Each command restarts the wait.
        """
        protocol, transport = self.connect(self.factory())
        self.clock.advance(299)
        protocol.dataReceived(b"NOOP\r\n")
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.replies(transport)[-1], (421, "4.4.2"))
        self.assertTrue(transport.disconnecting)

    def test_data_timeout(self) -> None:
        """In DATA the wait is the data timeout (10 minutes), not the command timeout."""
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"partial")
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spool.messages, [])

    def test_chunk_timeout(self) -> None:
        """While a BDAT chunk is read, the wait is the data timeout too."""
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE.replace(b"DATA\r\n", b"BDAT 10 LAST\r\nabc"))
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spool.messages, [])

    def test_no_timeout_while_we_are_busy(self) -> None:
        """
        While our own answer is pending, the client is not timed out; after the answer the
        idle timeout counts afresh.
        """
        self.spool.hold = True
        protocol, transport = self.connect(self.factory())
        protocol.dataReceived(ENVELOPE + b"x\r\n.\r\n")
        self.clock.advance(3601)
        self.assertFalse(transport.disconnecting)
        self.spool.held[0].callback("Q9")
        self.assertEqual(self.replies(transport)[-1], (250, "2.0.0"))
        self.clock.advance(299)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.replies(transport)[-1], (421, "4.4.2"))
        self.assertTrue(transport.disconnecting)

    def test_pause_when_buffer_grows(self) -> None:
        """
        While an answer is pending, a large pipelined backlog pauses the transport.

        It resumes when the answer is sent.
        """
        self.policy.hold = True
        protocol, transport = self.connect(self.factory(limits=SessionLimits(max_buffer=100)))
        protocol.dataReceived(b"EHLO c\r\nMAIL FROM:<a@c.example>\r\n" + b"NOOP\r\n" * 50)
        self.assertEqual(transport.producerState, "paused")
        self.policy.held[0].callback(Reply(250, "2.1.0", ("Ok",)))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(self.replies(transport).count((250, "2.0.0")), 50)


class TransactionBytewiseTests(TransactionTests):
    """L{TransactionTests}, every input fed one byte at a time."""

    bytewise = True


class TLSAndAuthBytewiseTests(TLSAndAuthTests):
    """L{TLSAndAuthTests}, every input fed one byte at a time."""

    bytewise = True


class LimitBytewiseTests(LimitTests):
    """L{LimitTests}, every input fed one byte at a time."""

    bytewise = True


class KeptPasswordTests(GlueTestsBase):
    """
    The AUTH password travels with the messages only when the listener is told to keep it.
    """

    def send_after_auth(self, keep: bool) -> Envelope:
        factory = self.factory(ListenerMode.MX, TLS_CONTEXT)
        factory.keep_auth_password = keep
        protocol, _ = self.connect(factory)
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE + ENVELOPE[16:] + b"x\r\n.\r\n")
        [(envelope, _)] = self.spool.messages
        return envelope

    def test_not_kept_by_default(self) -> None:
        """
        By default the envelope carries the login but no password.
        """
        envelope = self.send_after_auth(keep=False)
        self.assertIsNotNone(envelope.client.user)
        self.assertIsNone(envelope.client.password)

    def test_kept_when_asked(self) -> None:
        """
        With keep_auth_password, the envelope carries the password as a Secret, and no log
        event shows it.
        """
        events = capture_logs(self)
        envelope = self.send_after_auth(keep=True)
        assert envelope.client.password is not None
        self.assertEqual(envelope.client.password.reveal(), "secret")
        self.assertNotIn("secret", repr(envelope))
        self.assertFalse(any("secret" in repr(event) for event in events))
