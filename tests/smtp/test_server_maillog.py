"""
Tests for the mail-log lines of L{mdtwist.smtp.server}: connect, TLS, login, each refused
command, each accepted message, disconnect.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent
from zope.interface import directlyProvides

from mdtwist.envelope import ClientInfo
from mdtwist.smtp.core.replies import reply
from mdtwist.smtp.decision import RecipientDecision
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.server import REVERSE_NAME_TIMEOUT, SMTPServerFactory, new_session_id
from tests.smtp.test_server import ENVELOPE, PLAIN_ALICE, TLS_CONTEXT, GlueTestsBase
from tests.support.logs import capture_logs

NO_SUCH_USER = reply(550, "5.1.1", "No such user here")


class _Handle:
    # What an OpenSSL connection tells of its TLS parameters.

    def get_protocol_version_name(self) -> str:
        return "TLSv1.3"

    def get_cipher_name(self) -> str:
        return "TLS_AES_128_GCM_SHA256"


class MailLogTests(GlueTestsBase):
    """
    The session's mail-log lines, in order, with their fields.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events = capture_logs(self)
        accept = self.policy.check_recipient

        def check(client: ClientInfo, sender: str, rcpt: str) -> Deferred[RecipientDecision]:
            if rcpt.startswith("nobody@"):
                return succeed(RecipientDecision(NO_SUCH_USER))
            return accept(client, sender, rcpt)

        self.policy.check_recipient = check  # type: ignore[method-assign, assignment]

    def mail_log(self) -> list[LogEvent]:
        """
        @return: the events of the mail log so far.
        """
        return [e for e in self.events if e.get("log_namespace") == "mdtwist.maillog"]

    def lines(self) -> list[str]:
        """
        @return: the text of each mail-log event so far.
        """
        return [formatEvent(e) for e in self.mail_log()]

    def test_message_session(self) -> None:
        """
        A session with a refused recipient and one message logs connect, the refusal (a
        warning, with code, address and reason), the accepted message (queue id, session,
        client, size, sender, recipients, Message-ID) and the disconnect with its counts.
        """
        protocol, _ = self.connect(self.factory())
        session = protocol.session
        body = b"Message-ID: <m1@c.example>\r\nSubject: hi\r\n\r\nbody\r\n"
        protocol.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<nobody@example.com>\r\n"
            b"RCPT TO:<b@example.com>\r\nDATA\r\n" + body + b".\r\nQUIT\r\n"
        )
        protocol.connectionLost(None)
        client = "192.0.2.1[192.0.2.1]"
        self.assertEqual(
            self.lines(),
            [
                f"{session}: connect from {client} listener=mx",
                f"{session}: reject RCPT from {client}: 550 5.1.1 No such user here;"
                " from=<a@c.example> to=<nobody@example.com> helo=c.example",
                f"Q1: accepted session={session} client={client} from=<a@c.example>"
                f" size={len(body)} nrcpt=1 message_id=<m1@c.example> user=-",
                f"{session}: disconnect from {client} tls=- cipher=- user=- messages=1 rejects=1",
            ],
        )
        connect, refused, accepted, _ = self.mail_log()
        self.assertEqual(refused["log_level"], LogLevel.warn)
        self.assertEqual(
            {k: refused[k] for k in ("session", "peer", "command", "code", "enhanced", "rcpt")},
            {
                "session": session,
                "peer": "192.0.2.1",
                "command": "RCPT",
                "code": 550,
                "enhanced": "5.1.1",
                "rcpt": "nobody@example.com",
            },
        )
        self.assertEqual(
            {k: accepted[k] for k in ("queue_id", "session", "nrcpt", "msg_size", "mail_from")},
            {
                "queue_id": "Q1",
                "session": session,
                "nrcpt": 1,
                "msg_size": len(body),
                "mail_from": "a@c.example",
            },
        )
        self.assertEqual(connect["listener"], "mx")

    def test_core_refusals(self) -> None:
        """
        Commands the core refuses by itself are logged too: a syntax error names its command,
        an unknown verb is logged escaped, a command out of sequence names the sender.
        """
        protocol, _ = self.connect(self.factory())
        session = protocol.session
        protocol.dataReceived(
            b"EHLO c.example\r\nMAIL FROM:a@c.example\r\nFOO\x1b[1m\r\n"
            b"MAIL FROM:<a@c.example>\r\nMAIL FROM:<b@c.example>\r\n"
        )
        client = "192.0.2.1[192.0.2.1]"
        self.assertEqual(
            self.lines()[1:],
            [
                f"{session}: reject MAIL from {client}: 501 5.5.4 Syntax: FROM:<address>"
                " [parameters];"
                " from=<> to=<> helo=c.example",
                f"{session}: reject FOO\\x1b[1M from {client}: 500 5.5.1 Command unrecognized;"
                " from=<> to=<> helo=c.example",
                f"{session}: reject MAIL from {client}: 503 5.5.1 Nested MAIL command;"
                " from=<a@c.example> to=<> helo=c.example",
            ],
        )

    def test_tls_and_login(self) -> None:
        """
        The TLS handshake's end logs the version and cipher; a successful AUTH logs the login
        and mechanism; the disconnect line repeats both. No line holds the password.
        """
        protocol, transport = self.connect(self.factory(ListenerMode.SUBMISSION, TLS_CONTEXT))
        session = protocol.session
        transport.getHandle = _Handle  # type: ignore[attr-defined]
        protocol.dataReceived(b"EHLO c\r\nSTARTTLS\r\n")
        protocol.handshakeCompleted()
        protocol.dataReceived(b"EHLO c\r\n" + PLAIN_ALICE + ENVELOPE[16:] + b"x\r\n.\r\n")
        protocol.connectionLost(None)
        client = "192.0.2.1[192.0.2.1]"
        lines = self.lines()
        self.assertEqual(
            lines[1:3],
            [
                f"{session}: TLS from {client} tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256",
                f"{session}: login from {client} user=alice method=PLAIN",
            ],
        )
        self.assertEqual(
            lines[-1],
            f"{session}: disconnect from {client} tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256"
            " user=alice messages=1 rejects=0",
        )
        self.assertEqual(self.spool.messages[0][0].client.tls, "TLSv1.3 TLS_AES_128_GCM_SHA256")
        everything = " ".join(str(e) for e in self.events)
        self.assertNotIn("secret", everything)

    def test_refused_message_and_timeout(self) -> None:
        """
        A message refused at the end of DATA (a loop) is a reject of DATA with the sender;
        a client that goes quiet gets a timeout line naming where the session was.
        """
        protocol, _ = self.connect(self.factory())
        session = protocol.session
        protocol.dataReceived(ENVELOPE + b"Received: x\r\n" * 101 + b"\r\nbody\r\n.\r\n")
        protocol.dataReceived(
            b"MAIL FROM:<b@c.example>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhalf a message\r\n"
        )
        self.clock.advance(600)
        client = "192.0.2.1[192.0.2.1]"
        self.assertEqual(
            self.lines()[1:],
            [
                f"{session}: reject DATA from {client}: 554 5.4.6 Too many hops, mail loop"
                " detected; from=<a@c.example> to=<> helo=c.example",
                f"{session}: timeout in DATA from {client}",
            ],
        )

    def test_turned_inside_tls(self) -> None:
        """
        A session that starts on a connection encrypted already (turned round inside TLS)
        knows its TLS version and cipher without a handshake of its own.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
        directlyProvides(transport, ISSLTransport)
        transport.getHandle = _Handle  # type: ignore[attr-defined]
        protocol = self.factory().buildProtocol(None)
        protocol.makeConnection(transport)
        protocol.connectionLost(None)
        self.assertIn(" tls=TLSv1.3 cipher=TLS_AES_128_GCM_SHA256 ", self.lines()[-1])

    def test_refused_connection(self) -> None:
        """
        A connection refused for too many sessions from its address still has its connect
        and disconnect lines.
        """
        from mdtwist.smtp.server import SessionLimits

        factory = self.factory(limits=SessionLimits(max_sessions_per_ip=1))
        self.connect(factory)
        protocol, _ = self.connect(factory)
        protocol.connectionLost(None)
        mine = [line for line in self.lines() if line.startswith(f"{protocol.session}: ")]
        self.assertEqual([line.split(" ")[1] for line in mine], ["connect", "disconnect"])


class MailLogBytewiseTests(MailLogTests):
    """L{MailLogTests}, every input fed one byte at a time."""

    bytewise = True


class SessionIdTests(GlueTestsBase):
    """
    Session ids name one session in the log of the whole process.
    """

    def test_unique_across_listeners(self) -> None:
        """
        Sessions of two listeners get different ids, each a process mark and a count.
        """
        first, _ = self.connect(self.factory())
        second, _ = self.connect(self.factory(ListenerMode.SUBMISSION))
        self.assertNotEqual(first.session, second.session)
        for session in (first.session, second.session, new_session_id()):
            self.assertRegex(session, r"^[0-9a-f]{4}-[0-9a-f]+$")
        marks: set[Any] = {re.sub(r"-.*", "", s) for s in (first.session, second.session)}
        self.assertEqual(len(marks), 1)


class ClientNameTests(GlueTestsBase):
    """
    With a name lookup, the connect line waits for the client's name (the greeting does not),
    and the session's lines name the client once the name is known.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events = capture_logs(self)
        self.lookups: list[tuple[str, Deferred[str | None]]] = []

    def named_factory(self) -> SMTPServerFactory:
        factory = self.factory()

        def reverse_name(address: str) -> Deferred[str | None]:
            d: Deferred[str | None] = Deferred()
            self.lookups.append((address, d))
            return d

        factory.reverse_name = reverse_name
        return factory

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_namespace") == "mdtwist.maillog"]

    def test_named(self) -> None:
        """
        The greeting goes out at once; the connect line comes when the name is known, and
        every later line has it.
        """
        protocol, transport = self.connect(self.named_factory())
        session = protocol.session
        self.assertEqual(self.replies(transport), [(220, None)])
        self.assertEqual(self.lines(), [])
        [(address, lookup)] = self.lookups
        self.assertEqual(address, "192.0.2.1")
        lookup.callback("c.example")
        protocol.dataReceived(b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nDATA\r\n")
        protocol.connectionLost(None)
        client = "c.example[192.0.2.1]"
        self.assertEqual(
            self.lines(),
            [
                f"{session}: connect from {client} listener=mx",
                f"{session}: reject DATA from {client}: 554 5.5.1 No valid recipients;"
                " from=<a@c.example> to=<> helo=c.example",
                f"{session}: disconnect from {client} tls=- cipher=- user=- messages=0 rejects=1",
            ],
        )

    def test_line_before_the_name(self) -> None:
        """
        A line of the session before the name is known brings the connect line first,
        without the name; a name found later is not logged again.
        """
        protocol, _ = self.connect(self.named_factory())
        session = protocol.session
        protocol.dataReceived(b"BOGUS\r\n")
        [(_, lookup)] = self.lookups
        lookup.callback("c.example")
        self.assertEqual([line.split(" ")[1] for line in self.lines()], ["connect", "reject"])
        self.assertEqual(
            self.lines()[0], f"{session}: connect from 192.0.2.1[192.0.2.1] listener=mx"
        )

    def test_no_answer(self) -> None:
        """
        A lookup that takes too long is given up: the connect line comes without the name;
        a connection lost during the lookup cancels it and still logs connect and
        disconnect.
        """
        protocol, _ = self.connect(self.named_factory())
        self.clock.advance(REVERSE_NAME_TIMEOUT)
        self.assertEqual(
            self.lines(), [f"{protocol.session}: connect from 192.0.2.1[192.0.2.1] listener=mx"]
        )
        second, _ = self.connect(self.named_factory())
        second.connectionLost(None)
        lookup = self.lookups[-1][1]
        self.assertTrue(lookup.called)
        self.assertEqual(
            [line.split(" ")[1] for line in self.lines() if line.startswith(second.session)],
            ["connect", "disconnect"],
        )


class ClientNameBytewiseTests(ClientNameTests):
    """L{ClientNameTests}, every input fed one byte at a time."""

    bytewise = True
