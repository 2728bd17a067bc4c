"""Tests for L{mdtwist.smtp.core.client}: the client role of the sans-IO SMTP core."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.envelope import BodyType, Recipient
from mdtwist.secret import Secret
from mdtwist.smtp.core.client import (
    Capabilities,
    ClientCore,
    ClientEvent,
    ClientSettings,
    ClientState,
    Credentials,
    Idle,
    Phase,
    RecipientOutcome,
    RecipientStatus,
    SessionEnded,
    SessionOutcome,
    SessionStatus,
    StartTLSPolicy,
    TLSRequested,
    Transaction,
    TransactionDone,
    TransactionOutcome,
)
from mdtwist.smtp.core.errors import LocalProtocolError
from mdtwist.smtp.core.events import MessageReceived, Sentinel
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.server import ServerCore, ServerSettings
from tests.smtp.core.helpers import Chunker, ScriptedGlue, bytewise, default_answer, whole

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

GREETING = b"220 mx.example ESMTP\r\n"
EHLO_FULL = (
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-SMTPUTF8\r\n250 AUTH PLAIN LOGIN\r\n"
)
EHLO_PLAIN = b"250-mx.example\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_TLS = b"250-mx.example\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_AUTH = b"250-mx.example\r\n250-AUTH LOGIN PLAIN\r\n250 ENHANCEDSTATUSCODES\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n"


def tx(*recipients: str, body: bytes = BODY, **kwargs: object) -> Transaction:
    """Build a transaction from s@c.example to the given recipients."""
    return Transaction(
        "s@c.example",
        tuple(Recipient(r) for r in recipients),
        body,
        **kwargs,  # type: ignore[arg-type]
    )


class Driver:
    """
    Drives a client core like the glue does, with the server's bytes cut by a chunker.

    @ivar core: the core.
    @ivar events: the events seen.
    @ivar wire: the bytes the client wrote and the test has not taken yet.
    """

    def __init__(self, core: ClientCore, chunk: Chunker) -> None:
        self.core = core
        self.events: list[ClientEvent] = []
        self.wire = bytearray()
        self._chunk = chunk
        self.all_sent = bytearray()

    def pump(self) -> Sentinel:
        """Process events until the core needs data, pauses or closes; write its output."""
        while True:
            event = self.core.next_event()
            wrote_body = self._write()
            if isinstance(event, Sentinel):
                if wrote_body:
                    continue
                return event
            self.events.append(event)

    def _write(self) -> bool:
        data = self.core.data_to_send()
        wrote_body = self.core.sending_body
        while self.core.sending_body:
            data += self.core.body_to_send(7)
        self.wire += data
        self.all_sent += data
        return wrote_body

    def server(self, data: bytes) -> None:
        """Feed what the server says, piece by piece."""
        for piece in self._chunk(data):
            self.core.receive_data(piece)
            self.pump()

    def take(self) -> bytes:
        """Take what the client wrote since the last call."""
        data = bytes(self.wire)
        self.wire.clear()
        return data

    def outcomes(self) -> list[TransactionOutcome]:
        """The transaction outcomes reported so far."""
        return [e.outcome for e in self.events if isinstance(e, TransactionDone)]

    def statuses(self) -> list[tuple[str, RecipientStatus, int | None, str, Phase]]:
        """Every recipient verdict reported so far, flattened."""
        return [
            (r.address, r.status, r.code, r.enhanced, r.phase)
            for outcome in self.outcomes()
            for r in outcome.recipients
        ]

    def session(self) -> SessionOutcome | None:
        """The session outcome, when the session ended."""
        ended = [e.outcome for e in self.events if isinstance(e, SessionEnded)]
        return ended[0] if ended else None


class ClientConversationTestsMixin(_Base):
    """Conversations of the client core with a scripted server."""

    chunk: Chunker

    def drive(self, *transactions: Transaction, **settings: object) -> Driver:
        """Make a core with the transactions queued and the greeting awaited."""
        core = ClientCore(ClientSettings("client.example", **settings))  # type: ignore[arg-type]
        for transaction in transactions:
            core.add_transaction(transaction)
        driver = Driver(core, self.chunk)
        self.assertIs(driver.pump(), Sentinel.NEED_DATA)
        self.assertEqual(core.waiting_for, Phase.GREETING)
        return driver

    def greet(self, driver: Driver, ehlo: bytes = EHLO_FULL) -> None:
        """Run greeting and EHLO."""
        driver.server(GREETING)
        self.assertEqual(driver.take(), b"EHLO client.example\r\n")
        driver.server(ehlo)

    def finish_quit(self, driver: Driver) -> None:
        """Idle, quit, and see the session complete."""
        self.assertIsInstance(driver.events[-1], Idle)
        driver.core.quit()
        driver.pump()
        self.assertEqual(driver.take(), b"QUIT\r\n")
        driver.server(b"221 2.0.0 Bye\r\n")
        session = driver.session()
        assert session is not None
        self.assertTrue(session.ok)
        self.assertIs(driver.pump(), Sentinel.CLOSE)

    def test_plain_delivery(self) -> None:
        """
        Without PIPELINING the client waits for each reply: MAIL, RCPT, DATA, the message, and
        the final reply delivers the recipient; the enhanced code is the server's.
        """
        d = self.drive(tx("r@d.example"))
        self.greet(d, EHLO_PLAIN)
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")
        d.server(b"250 2.1.0 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<r@d.example>\r\n")
        d.server(b"250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"DATA\r\n")
        self.assertEqual(d.core.waiting_for, Phase.DATA)
        d.server(b"354 go ahead\r\n")
        self.assertEqual(d.take(), BODY + b".\r\n")
        self.assertEqual(d.core.waiting_for, Phase.MESSAGE)
        self.assertEqual(d.outcomes(), [])
        d.server(b"250 2.0.0 queued as X\r\n")
        self.assertEqual(
            d.statuses(),
            [("r@d.example", RecipientStatus.DELIVERED, 250, "2.0.0", Phase.MESSAGE)],
        )
        self.assertFalse(d.outcomes()[0].dsn_passed_on)
        self.finish_quit(d)

    def test_pipelining_mixed_rcpt_replies(self) -> None:
        """
        With PIPELINING, MAIL, every RCPT and DATA leave in one write; the replies are matched
        in order: 250 is decided by the final reply, 450 is temporary, 550 permanent.
        """
        d = self.drive(tx("a@d.example", "b@d.example", "c@d.example"))
        self.greet(d)
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<a@d.example>\r\n"
            b"RCPT TO:<b@d.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        )
        d.server(
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 Try later\r\n550 Unknown\r\n354 Go\r\n"
        )
        self.assertEqual(d.take(), BODY + b".\r\n")
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(
            d.statuses(),
            [
                ("a@d.example", RecipientStatus.DELIVERED, 250, "2.0.0", Phase.MESSAGE),
                ("b@d.example", RecipientStatus.TEMPORARY, 450, "4.2.1", Phase.RCPT),
                ("c@d.example", RecipientStatus.PERMANENT, 550, "5.0.0", Phase.RCPT),
            ],
        )
        self.finish_quit(d)

    def test_no_recipient_accepted_no_data(self) -> None:
        """
        Without PIPELINING, when no recipient is accepted, DATA is never sent: RSET follows
        before the next transaction.
        """
        d = self.drive(tx("a@d.example"), tx("b@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<a@d.example>\r\n")
        d.server(b"550 5.1.1 No such user\r\n")
        self.assertEqual(d.take(), b"RSET\r\n")
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")
        self.assertNotIn(b"DATA", bytes(d.all_sent))
        self.assertEqual(
            d.statuses(),
            [("a@d.example", RecipientStatus.PERMANENT, 550, "5.1.1", Phase.RCPT)],
        )

    def test_pipelined_data_refused_without_recipients(self) -> None:
        """
        With PIPELINING and every RCPT refused, the DATA reply (503/554) is only read, no
        message is sent, and RSET follows, pipelined with the next transaction.
        """
        d = self.drive(tx("a@d.example"), tx("b@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n550 5.1.1 Nope\r\n554 5.5.1 No valid recipients\r\n")
        self.assertEqual(
            d.take(),
            b"RSET\r\nMAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<b@d.example>\r\nDATA\r\n",
        )
        self.assertEqual(
            d.statuses(),
            [("a@d.example", RecipientStatus.PERMANENT, 550, "5.1.1", Phase.RCPT)],
        )

    def test_pipelined_354_without_recipients_sends_empty_message(self) -> None:
        """
        A server that answers a pipelined DATA with 354 although it refused every recipient
        gets only the end marker, never the message; its reply is ignored.
        """
        d = self.drive(tx("a@d.example"), tx("b@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n550 5.1.1 Nope\r\n354 go\r\n")
        self.assertEqual(d.take(), b".\r\n")
        d.server(b"554 5.5.1 No recipients\r\n")
        self.assertTrue(d.take().startswith(b"RSET\r\nMAIL FROM:"))
        self.assertEqual(d.statuses()[0][1], RecipientStatus.PERMANENT)

    def test_mail_refused(self) -> None:
        """
        A 5xx to MAIL decides every recipient of the transaction, at the MAIL phase.
        """
        d = self.drive(tx("a@d.example", "b@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"553 5.7.1 Sender refused\r\n")
        self.assertEqual(d.take(), b"")
        self.assertEqual(
            [(s[1], s[2], s[4]) for s in d.statuses()],
            [(RecipientStatus.PERMANENT, 553, Phase.MAIL)] * 2,
        )
        self.assertIsInstance(d.events[-1], Idle)

    def test_too_many_recipients_continue(self) -> None:
        """
        A 452 4.5.3 to RCPT ends the RCPT loop; the recipients left go into a new transaction
        on the same connection, and the outcome covers them all.
        """
        d = self.drive(tx("a@d.example", "b@d.example", "c@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n")
        d.take()
        d.server(b"250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<b@d.example>\r\n")
        d.server(b"452 4.5.3 Too many recipients\r\n")
        self.assertEqual(d.take(), b"DATA\r\n")
        d.server(b"354 go\r\n")
        d.take()
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(d.outcomes(), [])
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")
        d.server(b"250 2.1.0 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<b@d.example>\r\n")
        d.server(b"250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<c@d.example>\r\n")
        d.server(b"250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"DATA\r\n")
        d.server(b"354 go\r\n")
        self.assertEqual(d.take(), BODY + b".\r\n")
        d.server(b"250 2.0.0 Ok again\r\n")
        self.assertEqual(
            [(s[0], s[1]) for s in d.statuses()],
            [
                ("a@d.example", RecipientStatus.DELIVERED),
                ("b@d.example", RecipientStatus.DELIVERED),
                ("c@d.example", RecipientStatus.DELIVERED),
            ],
        )
        self.assertEqual(len(d.outcomes()), 1)
        self.finish_quit(d)

    def test_too_many_recipients_pipelined(self) -> None:
        """
        With PIPELINING, every recipient answered "too many" is carried to the next
        transaction, which is itself pipelined.
        """
        d = self.drive(tx("a@d.example", "b@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many\r\n354 go\r\n")
        d.take()
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<b@d.example>\r\nDATA\r\n",
        )
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(
            [s[1] for s in d.statuses()],
            [RecipientStatus.DELIVERED, RecipientStatus.DELIVERED],
        )

    def test_452_without_accepted_is_temporary(self) -> None:
        """
        A 452 when nothing was accepted yet is an ordinary temporary failure, so that a
        full mailbox cannot loop forever.
        """
        d = self.drive(tx("a@d.example"), tx("b@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n452 4.5.3 Too many\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<a@d.example>\r\nRSET\r\n")
        self.assertEqual(d.statuses()[0][1:3], (RecipientStatus.TEMPORARY, 452))

    def test_data_final_temporary_and_permanent(self) -> None:
        """
        The final reply decides every accepted recipient: 451 makes them temporary, and a
        following transaction needs no RSET.
        """
        d = self.drive(tx("a@d.example", "b@d.example"), tx("c@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        d.take()
        d.server(b"451 4.3.0 Local error\r\n")
        self.assertTrue(d.take().startswith(b"MAIL FROM:"))
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        d.take()
        d.server(b"554 5.6.0 Content refused\r\n")
        self.assertEqual(
            [(s[1], s[2], s[4]) for s in d.statuses()],
            [
                (RecipientStatus.TEMPORARY, 451, Phase.MESSAGE),
                (RecipientStatus.TEMPORARY, 451, Phase.MESSAGE),
                (RecipientStatus.PERMANENT, 554, Phase.MESSAGE),
            ],
        )
        self.finish_quit(d)

    def test_data_command_refused(self) -> None:
        """
        A 4xx to the DATA command decides the accepted recipients at the DATA phase and is
        followed by RSET.
        """
        d = self.drive(tx("a@d.example"), tx("b@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<a@d.example>\r\nDATA\r\n")
        d.server(b"451 4.3.0 Not now\r\n")
        self.assertEqual(d.take(), b"RSET\r\n")
        self.assertEqual(
            d.statuses()[0][1:], (RecipientStatus.TEMPORARY, 451, "4.3.0", Phase.DATA)
        )

    def test_starttls_and_ehlo_again(self) -> None:
        """
        STARTTLS is sent when offered; after the handshake the client says EHLO again and
        only the new capabilities count.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d, EHLO_TLS)
        self.assertEqual(d.take(), b"STARTTLS\r\n")
        d.server(b"220 2.0.0 Go ahead\r\n")
        self.assertIsInstance(d.events[-1], TLSRequested)
        self.assertEqual(d.core.state, ClientState.TLS_PENDING)
        self.assertIsNone(d.core.waiting_for)
        d.core.tls_started()
        d.pump()
        self.assertEqual(d.take(), b"EHLO client.example\r\n")
        self.assertIsNone(d.core.capabilities)
        d.server(b"250-mx.example\r\n250 PIPELINING\r\n")
        self.assertTrue(d.core.tls_active)
        caps = d.core.capabilities
        assert caps is not None
        self.assertTrue(caps.pipelining)
        self.assertFalse(caps.starttls)
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\nRCPT TO:<a@d.example>\r\nDATA\r\n")

    def test_starttls_response_injection(self) -> None:
        """
        Bytes that follow the 220 to STARTTLS in plaintext are never read as replies: the
        session ends with a protocol error, TLS is not started, recipients are temporary.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d, EHLO_TLS)
        d.take()
        d.server(b"220 2.0.0 Go ahead\r\n250-mx.example\r\n250 AUTH PLAIN\r\n")
        self.assertFalse(d.core.tls_active)
        self.assertIsNone((d.core.capabilities and d.core.capabilities.auth) or None)
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.PROTOCOL_ERROR)
        self.assertEqual(session.phase, Phase.STARTTLS)
        self.assertEqual(d.take(), b"")
        self.assertEqual(d.statuses()[0][1:4], (RecipientStatus.TEMPORARY, None, "4.5.0"))
        self.assertIs(d.pump(), Sentinel.CLOSE)

    def test_starttls_required_not_offered(self) -> None:
        """
        With STARTTLS required and not offered, nothing is sent but QUIT, and the session
        says TLS was required.
        """
        d = self.drive(tx("a@d.example"), starttls=StartTLSPolicy.REQUIRED)
        self.greet(d, EHLO_FULL)
        self.assertEqual(d.take(), b"QUIT\r\n")
        d.server(b"221 2.0.0 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.TLS_REQUIRED)
        self.assertEqual(d.statuses()[0][1:4], (RecipientStatus.TEMPORARY, None, "4.7.4"))

    def test_starttls_refused_opportunistic(self) -> None:
        """
        When STARTTLS is only opportunistic, a 454 to it continues in plaintext.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d, EHLO_TLS)
        d.take()
        d.server(b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_starttls_refused_required(self) -> None:
        """
        When STARTTLS is required, a 454 to it ends the session as a TLS failure.
        """
        d = self.drive(tx("a@d.example"), starttls=StartTLSPolicy.REQUIRED)
        self.greet(d, EHLO_TLS)
        d.take()
        d.server(b"454 4.7.0 TLS not available\r\n")
        self.assertEqual(d.take(), b"QUIT\r\n")
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.TLS_FAILED)

    def test_never_starttls(self) -> None:
        """
        With STARTTLS off, an offered STARTTLS is not used.
        """
        d = self.drive(tx("a@d.example"), starttls=StartTLSPolicy.NEVER)
        self.greet(d, EHLO_TLS)
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def credentials(self, password: str = "secret") -> Credentials:
        """Alice's credentials."""
        return Credentials("alice", Secret(password))

    def test_auth_plain(self) -> None:
        """
        AUTH PLAIN sends the credentials in one initial response; 235 goes on to MAIL.
        """
        d = self.drive(tx("a@d.example"), credentials=self.credentials(), tls_active=True)
        self.greet(d, EHLO_AUTH)
        self.assertEqual(d.take(), b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        self.assertEqual(d.core.waiting_for, Phase.AUTH)
        d.server(b"235 2.7.0 Ok\r\n")
        self.assertTrue(d.core.authenticated)
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_auth_login(self) -> None:
        """
        AUTH LOGIN answers the two challenges with the login and the password.
        """
        d = self.drive(
            tx("a@d.example"),
            credentials=self.credentials(),
            tls_active=True,
            auth_mechanisms=("LOGIN",),
        )
        self.greet(d, EHLO_AUTH)
        self.assertEqual(d.take(), b"AUTH LOGIN\r\n")
        d.server(b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(d.take(), b"YWxpY2U=\r\n")
        d.server(b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(d.take(), b"c2VjcmV0\r\n")
        d.server(b"235 2.7.0 Ok\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_auth_failed(self) -> None:
        """
        A 535 ends the session as an authentication failure; recipients are temporary
        (a deferral, never a bounce).
        """
        d = self.drive(tx("a@d.example"), credentials=self.credentials(), tls_active=True)
        self.greet(d, EHLO_AUTH)
        d.take()
        d.server(b"535 5.7.8 Bad credentials\r\n")
        self.assertEqual(d.take(), b"QUIT\r\n")
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.AUTH_FAILED)
        self.assertEqual(d.statuses()[0][1:4], (RecipientStatus.TEMPORARY, None, "4.7.8"))

    def test_no_credentials_before_tls(self) -> None:
        """
        Credentials are not sent over plaintext: the session ends asking for TLS.
        """
        d = self.drive(tx("a@d.example"), credentials=self.credentials())
        self.greet(d, EHLO_AUTH)
        self.assertEqual(d.take(), b"QUIT\r\n")
        self.assertNotIn(b"AUTH", bytes(d.all_sent))
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual((session.status, session.phase), (SessionStatus.TLS_REQUIRED, Phase.AUTH))

    def test_credentials_over_plaintext_when_allowed(self) -> None:
        """
        With auth_without_tls, AUTH is sent over plaintext.
        """
        d = self.drive(tx("a@d.example"), credentials=self.credentials(), auth_without_tls=True)
        self.greet(d, EHLO_AUTH)
        self.assertTrue(d.take().startswith(b"AUTH PLAIN "))

    def test_auth_not_offered(self) -> None:
        """
        Credentials configured and no usable mechanism offered: an authentication failure.
        """
        d = self.drive(tx("a@d.example"), credentials=self.credentials(), tls_active=True)
        self.greet(d, EHLO_PLAIN)
        self.assertEqual(d.take(), b"QUIT\r\n")
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.AUTH_FAILED)

    def test_auth_cram_md5_without_tls(self) -> None:
        """
        CRAM-MD5, preferred when listed first, answers the challenge with the login and the
        HMAC-MD5 digest (RFC 2195's example) and needs no TLS, as no password is sent.
        """
        d = self.drive(
            tx("a@d.example"),
            credentials=Credentials("tim", Secret("tanstaaftanstaaf")),
            auth_mechanisms=("CRAM-MD5", "PLAIN", "LOGIN"),
        )
        self.greet(d, b"250-mx.example\r\n250 AUTH PLAIN LOGIN CRAM-MD5\r\n")
        self.assertEqual(d.take(), b"AUTH CRAM-MD5\r\n")
        # RFC 2195's challenge <1896.697170952@postoffice.reston.mci.net>.
        d.server(b"334 PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG9uLm1jaS5uZXQ+\r\n")
        self.assertEqual(d.take(), b"dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw\r\n")
        d.server(b"235 2.7.0 Ok\r\n")
        self.assertTrue(d.core.authenticated)
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_auth_cram_md5_not_offered_without_tls(self) -> None:
        """
        CRAM-MD5 allowed but not offered, no TLS: PLAIN is not used over plaintext either.
        """
        d = self.drive(
            tx("a@d.example"),
            credentials=self.credentials(),
            auth_mechanisms=("CRAM-MD5", "PLAIN", "LOGIN"),
        )
        self.greet(d, EHLO_AUTH)
        self.assertEqual(d.take(), b"QUIT\r\n")
        self.assertNotIn(b"AUTH", bytes(d.all_sent))
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.TLS_REQUIRED)

    def test_auth_cram_md5_bad_challenge(self) -> None:
        """
        A CRAM-MD5 challenge that is not base64 is a protocol error; nothing is answered.
        """
        d = self.drive(
            tx("a@d.example"),
            credentials=self.credentials(),
            auth_mechanisms=("CRAM-MD5",),
        )
        self.greet(d, b"250-mx.example\r\n250 AUTH CRAM-MD5\r\n")
        self.assertEqual(d.take(), b"AUTH CRAM-MD5\r\n")
        d.server(b"334 not*base64\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.PROTOCOL_ERROR)
        self.assertEqual(d.take(), b"")

    def test_no_hello(self) -> None:
        """
        With hello=False a queued command follows the greeting at once: no EHLO.
        """
        core = ClientCore(ClientSettings("client.example", hello=False))
        core.add_command("QSND office.example")
        d = Driver(core, self.chunk)
        d.pump()
        d.server(GREETING)
        self.assertEqual(d.take(), b"QSND office.example\r\n")
        d.server(b"250 OK\r\n")
        self.assertEqual(d.events[-1], Idle(Capabilities()))

    def test_keywords(self) -> None:
        """
        Every EHLO keyword is kept, upper case, known or not (ATRN, ETRN ...).
        """
        d = self.drive()
        self.greet(d, b"250-mx.example\r\n250-atrn\r\n250-AUTH CRAM-MD5\r\n250 ETRN\r\n")
        caps = d.core.capabilities
        assert caps is not None
        self.assertEqual(caps.keywords, frozenset({"ATRN", "AUTH", "ETRN"}))

    def test_size_over_limit(self) -> None:
        """
        A message bigger than the server's SIZE fails permanently with 5.3.4 without
        being offered.
        """
        d = self.drive(tx("a@d.example", body=b"x" * 1001 + b"\r\n"), tx("b@d.example"))
        self.greet(d)
        self.assertEqual(
            d.statuses(),
            [("a@d.example", RecipientStatus.PERMANENT, None, "5.3.4", Phase.MAIL)],
        )
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<b@d.example>\r\nDATA\r\n",
        )

    def test_eight_bit_with_8bitmime(self) -> None:
        """
        A message with 8-bit bytes goes with BODY=8BITMIME when the server offers it.
        """
        d = self.drive(tx("a@d.example", body=b"caf\xc3\xa9\r\n"))
        self.greet(d)
        self.assertTrue(d.take().startswith(b"MAIL FROM:<s@c.example> SIZE=7 BODY=8BITMIME\r\n"))

    def test_eight_bit_without_8bitmime(self) -> None:
        """
        A message with 8-bit bytes fails permanently with 5.6.3 when the server has no
        8BITMIME; a 7-bit message marked 8BITMIME is sent without BODY=.
        """
        d = self.drive(
            tx("a@d.example", body=b"caf\xc3\xa9\r\n"),
            tx("b@d.example", body_type=BodyType.EIGHT_BIT_MIME),
        )
        self.greet(d, EHLO_PLAIN)
        self.assertEqual(
            d.statuses(),
            [("a@d.example", RecipientStatus.PERMANENT, None, "5.6.3", Phase.MAIL)],
        )
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_smtputf8(self) -> None:
        """
        Non-ASCII addresses are sent UTF-8 with SMTPUTF8 when offered, and fail with 5.6.7
        when not.
        """
        d = self.drive(tx("j\u00f6rg@d.example"))
        self.greet(d)
        self.assertEqual(
            d.take(),
            "MAIL FROM:<s@c.example> SIZE=22 SMTPUTF8\r\nRCPT TO:<j\u00f6rg@d.example>\r\n"
            "DATA\r\n".encode(),
        )
        d = self.drive(tx("j\u00f6rg@d.example"), tx("a@d.example", smtputf8=True))
        self.greet(d, EHLO_PLAIN)
        self.assertEqual([s[3] for s in d.statuses()], ["5.6.7", "5.6.9"])

    def test_dsn_parameters_when_offered(self) -> None:
        """
        RET, ENVID, NOTIFY and ORCPT go out when the server offers DSN.
        """
        transaction = Transaction(
            "s@c.example",
            (
                Recipient(
                    "a@d.example", notify=frozenset({"FAILURE", "SUCCESS"}), orcpt="rfc822;a@x"
                ),
            ),
            BODY,
            ret="HDRS",
            envid="ID+2B1",
        )
        d = self.drive(transaction)
        self.greet(d)
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example> SIZE=22 RET=HDRS ENVID=ID+2B1\r\n"
            b"RCPT TO:<a@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@x\r\nDATA\r\n",
        )
        d.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok\r\n")
        self.assertTrue(d.outcomes()[0].dsn_passed_on)

    def test_dsn_parameters_not_offered(self) -> None:
        """
        Without DSN offered, no DSN parameter is sent, and the outcome says so.
        """
        transaction = Transaction(
            "s@c.example",
            (Recipient("a@d.example", notify=frozenset({"NEVER"}), orcpt="rfc822;a@x"),),
            BODY,
            ret="FULL",
            envid="ID",
        )
        d = self.drive(transaction)
        self.greet(d, EHLO_PLAIN)
        d.server(b"250 Ok\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\nRCPT TO:<a@d.example>\r\n")
        d.server(b"250 Ok\r\n354 go\r\n250 Ok\r\n")
        self.assertFalse(d.outcomes()[0].dsn_passed_on)

    def test_greeting_refused(self) -> None:
        """
        A 554 greeting is its own outcome; the client says QUIT and every recipient is
        temporary (another host may take the message).
        """
        d = self.drive(tx("a@d.example"))
        d.server(b"554 5.7.1 Go away\r\n")
        self.assertEqual(d.take(), b"QUIT\r\n")
        self.assertEqual(d.core.waiting_for, Phase.QUIT)
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.GREETING_REFUSED)
        self.assertEqual(session.reply, reply(554, "5.7.1", "Go away"))
        self.assertEqual(d.statuses()[0][1:4], (RecipientStatus.TEMPORARY, None, "4.4.1"))

    def test_ehlo_refused_falls_back_to_helo(self) -> None:
        """
        A 5xx to EHLO makes the client say HELO; then no extension is used.
        """
        d = self.drive(tx("a@d.example", body=b"\xff\r\n"), tx("b@d.example"))
        d.server(GREETING)
        d.take()
        d.server(b"500 5.5.1 What?\r\n")
        self.assertEqual(d.take(), b"HELO client.example\r\n")
        d.server(b"250 mx.example\r\n")
        self.assertEqual(d.core.capabilities, Capabilities())
        self.assertEqual(d.statuses()[0][3], "5.6.3")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_421_mid_session(self) -> None:
        """
        A 421 to a pipelined RCPT ends the session: recipients already accepted and the
        later transactions are temporary with the 421, and no QUIT is sent.
        """
        d = self.drive(tx("a@d.example", "b@d.example"), tx("c@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n421 4.3.2 Shutting down\r\n")
        self.assertEqual(d.take(), b"")
        session = d.session()
        assert session is not None
        self.assertEqual(
            (session.status, session.phase), (SessionStatus.SERVICE_CLOSING, Phase.RCPT)
        )
        self.assertEqual(
            [(s[1], s[2], s[3]) for s in d.statuses()],
            [(RecipientStatus.TEMPORARY, 421, "4.3.2")] * 3,
        )
        self.assertEqual(len(d.outcomes()), 2)
        self.assertIs(d.pump(), Sentinel.CLOSE)

    def test_abort_on_rcpt_5xx(self) -> None:
        """
        With abort_on_rcpt_5xx, DATA is not pipelined; a 5xx to RCPT ends the transaction
        with RSET: the refused recipient fails, the accepted one is "retry now".
        """
        d = self.drive(
            tx("a@d.example", "b@d.example", "c@d.example"),
            tx("e@d.example"),
            abort_on_rcpt_5xx=True,
        )
        self.greet(d)
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<a@d.example>\r\n"
            b"RCPT TO:<b@d.example>\r\nRCPT TO:<c@d.example>\r\n",
        )
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No\r\n450 4.2.1 Later\r\n")
        self.assertEqual(
            d.take(), b"RSET\r\nMAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<e@d.example>\r\n"
        )
        self.assertNotIn(b"DATA", bytes(d.all_sent))
        self.assertEqual(
            [(s[1], s[2]) for s in d.statuses()],
            [
                (RecipientStatus.RETRY_NOW, None),
                (RecipientStatus.PERMANENT, 550),
                (RecipientStatus.TEMPORARY, 450),
            ],
        )

    def test_abort_on_rcpt_5xx_without_pipelining(self) -> None:
        """
        Without PIPELINING the recipients not yet offered are "retry now" too.
        """
        d = self.drive(tx("a@d.example", "b@d.example"), tx("e@d.example"), abort_on_rcpt_5xx=True)
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n550 5.1.1 No\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<a@d.example>\r\nRSET\r\n")
        self.assertEqual(
            [s[1] for s in d.statuses()],
            [RecipientStatus.PERMANENT, RecipientStatus.RETRY_NOW],
        )

    def test_dot_stuffing(self) -> None:
        """
        Lines that start with a dot are doubled, a bare LF becomes CRLF, and a message without
        a final CRLF gets one before the end marker.
        """
        body = b".one\r\n..two\n.\r\nthree"
        d = self.drive(tx("a@d.example", body=body))
        self.greet(d, b"250-mx.example\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
        d.take()
        d.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        self.assertEqual(d.take(), b"..one\r\n...two\r\n..\r\nthree\r\n.\r\n")

    def test_connection_lost_after_message(self) -> None:
        """
        A connection lost after the message but before its reply leaves the recipients
        temporary (4.4.2), never delivered.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n")
        d.take()
        d.core.connection_lost()
        d.pump()
        session = d.session()
        assert session is not None
        self.assertEqual(
            (session.status, session.phase), (SessionStatus.CONNECTION_LOST, Phase.MESSAGE)
        )
        self.assertEqual(
            d.statuses()[0][1:5], (RecipientStatus.TEMPORARY, None, "4.4.2", Phase.MESSAGE)
        )

    def test_timeout(self) -> None:
        """
        A timeout ends the session; the recipients are temporary.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d)
        d.take()
        self.assertEqual(d.core.waiting_for, Phase.MAIL)
        d.core.timed_out()
        d.pump()
        session = d.session()
        assert session is not None
        self.assertEqual((session.status, session.phase), (SessionStatus.TIMEOUT, Phase.MAIL))
        self.assertEqual(d.statuses()[0][1], RecipientStatus.TEMPORARY)

    def test_malformed_reply(self) -> None:
        """
        A malformed reply ends the session with a protocol error.
        """
        d = self.drive(tx("a@d.example"))
        d.server(b"hello there\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.PROTOCOL_ERROR)

    def test_reuse_after_idle_starts_with_rset(self) -> None:
        """
        A transaction added to an idle session starts with RSET, which checks the connection;
        with PIPELINING the transaction follows in the same write.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok\r\n")
        self.assertIsInstance(d.events[-1], Idle)
        self.assertIs(d.pump(), Sentinel.PAUSED)
        d.take()
        d.core.add_transaction(tx("b@d.example"))
        d.pump()
        self.assertEqual(
            d.take(),
            b"RSET\r\nMAIL FROM:<s@c.example> SIZE=22\r\nRCPT TO:<b@d.example>\r\nDATA\r\n",
        )
        self.assertEqual(d.core.waiting_for, Phase.RSET)
        d.server(b"250 2.0.0 Ok\r\n250 Ok\r\n250 Ok\r\n354 go\r\n")
        self.assertTrue(d.take().endswith(b"\r\n.\r\n"))
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(
            [s[:2] for s in d.statuses()],
            [
                ("a@d.example", RecipientStatus.DELIVERED),
                ("b@d.example", RecipientStatus.DELIVERED),
            ],
        )

    def test_reuse_without_pipelining_waits_for_rset(self) -> None:
        """
        Without PIPELINING the RSET that opens a reused connection is answered before MAIL.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d, EHLO_PLAIN)
        d.take()
        d.server(b"250 Ok\r\n")
        d.take()
        d.server(b"250 Ok\r\n")
        d.take()
        d.server(b"354 go\r\n")
        d.take()
        d.server(b"250 Ok\r\n")
        self.assertIsInstance(d.events[-1], Idle)
        d.core.add_transaction(tx("b@d.example"))
        d.pump()
        self.assertEqual(d.take(), b"RSET\r\n")
        d.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")

    def test_reuse_closed_by_peer(self) -> None:
        """
        When the peer answers the RSET of a reused connection with 421, the transaction
        pipelined behind it is a temporary failure and the session ends.
        """
        d = self.drive(tx("a@d.example"))
        self.greet(d)
        d.take()
        d.server(b"250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok\r\n")
        d.core.add_transaction(tx("b@d.example"))
        d.pump()
        d.take()
        d.server(b"421 4.4.2 Idle too long\r\n")
        self.assertEqual(d.statuses()[1][:3], ("b@d.example", RecipientStatus.TEMPORARY, 421))
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.SERVICE_CLOSING)

    def test_421_while_idle(self) -> None:
        """
        A 421 that arrives while the session is idle ends it.
        """
        d = self.drive()
        self.greet(d)
        self.assertIsInstance(d.events[-1], Idle)
        d.server(b"421 4.4.2 Idle timeout\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.SERVICE_CLOSING)


LHLO_PIPELINING = (
    b"250-lmtp.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
)


class LMTPConversationTestsMixin(_Base):
    """Conversations of the client core in LMTP mode (RFC 2033) with a scripted server."""

    chunk: Chunker

    def drive(self, *transactions: Transaction, **settings: object) -> Driver:
        """Make an LMTP core with the transactions queued; run the greeting and LHLO."""
        core = ClientCore(
            ClientSettings("client.example", lmtp=True, **settings)  # type: ignore[arg-type]
        )
        for transaction in transactions:
            core.add_transaction(transaction)
        driver = Driver(core, self.chunk)
        driver.pump()
        driver.server(GREETING)
        self.assertEqual(driver.take(), b"LHLO client.example\r\n")
        return driver

    def test_one_reply_per_accepted_recipient(self) -> None:
        """
        After the end of the message the server answers once per accepted recipient, in RCPT
        order; each reply decides its own recipient, and a recipient refused at RCPT gets no
        reply after the data. The transaction is reported once the last reply is in.
        """
        d = self.drive(tx("a@d.example", "b@d.example", "c@d.example"))
        d.server(LHLO_PIPELINING)
        self.assertEqual(
            d.take(),
            b"MAIL FROM:<s@c.example>\r\nRCPT TO:<a@d.example>\r\n"
            b"RCPT TO:<b@d.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        )
        d.server(
            b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n250 2.1.5 Ok\r\n354 Go\r\n"
        )
        self.assertEqual(d.take(), BODY + b".\r\n")
        d.server(b"250 2.0.0 <a@d.example> Saved\r\n")
        self.assertEqual(d.outcomes(), [])
        self.assertEqual(d.core.waiting_for, Phase.MESSAGE)
        d.server(b"452 4.2.2 <c@d.example> Quota exceeded\r\n")
        self.assertEqual(
            d.statuses(),
            [
                ("a@d.example", RecipientStatus.DELIVERED, 250, "2.0.0", Phase.MESSAGE),
                ("b@d.example", RecipientStatus.PERMANENT, 550, "5.1.1", Phase.RCPT),
                ("c@d.example", RecipientStatus.TEMPORARY, 452, "4.2.2", Phase.MESSAGE),
            ],
        )
        self.assertIsInstance(d.events[-1], Idle)
        d.core.quit()
        d.pump()
        self.assertEqual(d.take(), b"QUIT\r\n")
        d.server(b"221 2.0.0 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertTrue(session.ok)

    def test_without_pipelining(self) -> None:
        """
        Without PIPELINING each command waits for its reply, and the one reply after the data
        decides the one recipient.
        """
        d = self.drive(tx("a@d.example"))
        d.server(b"250 lmtp.example\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\n")
        d.server(b"250 2.1.0 Ok\r\n")
        self.assertEqual(d.take(), b"RCPT TO:<a@d.example>\r\n")
        d.server(b"250 2.1.5 Ok\r\n")
        self.assertEqual(d.take(), b"DATA\r\n")
        d.server(b"354 Go\r\n")
        self.assertEqual(d.take(), BODY + b".\r\n")
        d.server(b"250 2.0.0 Saved\r\n")
        self.assertEqual(
            d.statuses(),
            [("a@d.example", RecipientStatus.DELIVERED, 250, "2.0.0", Phase.MESSAGE)],
        )

    def test_second_transaction_after_replies(self) -> None:
        """
        The next transaction starts only once every reply to the message is in.
        """
        d = self.drive(tx("a@d.example", "b@d.example"), tx("c@d.example"))
        d.server(LHLO_PIPELINING)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go\r\n")
        d.take()
        d.server(b"250 2.0.0 Saved\r\n")
        self.assertEqual(d.take(), b"")
        d.server(b"250 2.0.0 Saved\r\n")
        self.assertEqual(d.take(), b"MAIL FROM:<s@c.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
        self.assertEqual(len(d.outcomes()), 1)

    def test_lhlo_refused_no_helo(self) -> None:
        """
        LMTP has no HELO: a 5xx to LHLO refuses the session, which ends with QUIT and leaves
        the recipients temporary.
        """
        d = self.drive(tx("a@d.example"))
        d.server(b"500 5.5.1 Unknown command\r\n")
        self.assertEqual(d.take(), b"QUIT\r\n")
        self.assertEqual(
            [(r[1], r[4]) for r in d.statuses()], [(RecipientStatus.TEMPORARY, Phase.EHLO)]
        )
        d.server(b"221 Bye\r\n")
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.GREETING_REFUSED)

    def test_354_without_accepted_recipient(self) -> None:
        """
        A 354 to a pipelined DATA after every RCPT was refused breaks RFC 2033 (DATA must get
        503): the session ends as a protocol error and no message is sent.
        """
        d = self.drive(tx("a@d.example"))
        d.server(LHLO_PIPELINING)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n354 Go\r\n")
        self.assertEqual(d.take(), b"")
        session = d.session()
        assert session is not None
        self.assertEqual(
            (session.status, session.phase), (SessionStatus.PROTOCOL_ERROR, Phase.DATA)
        )
        self.assertEqual([r[1] for r in d.statuses()], [RecipientStatus.PERMANENT])

    def test_421_among_the_replies(self) -> None:
        """
        A 421 instead of a recipient's reply after the data ends the session: recipients
        already answered keep their verdict, the others are temporary.
        """
        d = self.drive(tx("a@d.example", "b@d.example"))
        d.server(LHLO_PIPELINING)
        d.take()
        d.server(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go\r\n")
        d.take()
        d.server(b"250 2.0.0 Saved\r\n421 4.3.2 Shutting down\r\n")
        self.assertEqual(
            d.statuses(),
            [
                ("a@d.example", RecipientStatus.DELIVERED, 250, "2.0.0", Phase.MESSAGE),
                ("b@d.example", RecipientStatus.TEMPORARY, 421, "4.3.2", Phase.MESSAGE),
            ],
        )
        session = d.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.SERVICE_CLOSING)

    def test_starttls_then_lhlo_again(self) -> None:
        """
        After STARTTLS the client says LHLO again, not EHLO.
        """
        d = self.drive(tx("a@d.example"))
        d.server(EHLO_TLS)
        self.assertEqual(d.take(), b"STARTTLS\r\n")
        d.server(b"220 2.0.0 Go ahead\r\n")
        d.core.tls_started()
        d.pump()
        self.assertEqual(d.take(), b"LHLO client.example\r\n")


class LMTPConversationWholeTests(LMTPConversationTestsMixin, SynchronousTestCase):
    """The LMTP conversations, with each server write fed at once."""

    chunk = staticmethod(whole)


class LMTPConversationByteTests(LMTPConversationTestsMixin, SynchronousTestCase):
    """The LMTP conversations, with each server write fed one byte at a time."""

    chunk = staticmethod(bytewise)


class ClientConversationWholeTests(ClientConversationTestsMixin, SynchronousTestCase):
    """The conversations, with each server write fed at once."""

    chunk = staticmethod(whole)


class ClientConversationByteTests(ClientConversationTestsMixin, SynchronousTestCase):
    """The conversations, with each server write fed one byte at a time."""

    chunk = staticmethod(bytewise)


def run_pair(
    client: ClientCore, server: ServerCore, chunk: Chunker, body_piece: int = 7
) -> tuple[list[ClientEvent], ScriptedGlue, bytes]:
    """
    Wire a client core to a server core in memory until neither has anything to say.

    @return: the client's events, the server's glue, and every byte the client sent.
    """
    glue = ScriptedGlue(server, default_answer)
    events: list[ClientEvent] = []
    sent = bytearray()
    to_client = bytes(glue.output)
    glue.output.clear()
    while True:
        for piece in chunk(to_client):
            client.receive_data(piece)
        outgoing = bytearray()
        while True:
            event = client.next_event()
            outgoing += client.data_to_send()
            wrote_body = client.sending_body
            while client.sending_body:
                outgoing += client.body_to_send(body_piece)
            if isinstance(event, Sentinel):
                if wrote_body:
                    continue
                break
            events.append(event)
            if isinstance(event, Idle):
                client.quit()
        sent += outgoing
        glue.feed(chunk(bytes(outgoing)))
        to_client = bytes(glue.output)
        glue.output.clear()
        if not to_client and not outgoing:
            return events, glue, bytes(sent)


class ClientServerTests(SynchronousTestCase):
    """The client core against the server core, in memory."""

    def test_message_arrives_identical(self) -> None:
        """
        A message with dot lines, sent in pieces of every size from 1 to 20 bytes, reaches
        the server identical, as one message, and the session completes.
        """
        body = b".\r\n..\r\nline\r\n.x\r\n\r\n.\r\n" * 3
        for piece in range(1, 21):
            client = ClientCore(ClientSettings("client.example"))
            client.add_transaction(tx("alice@example.com", body=body))
            events, glue, sent = run_pair(
                client, ServerCore(ServerSettings(hostname="mx.example")), whole, piece
            )
            received = [e for e in glue.events if isinstance(e, MessageReceived)]
            self.assertEqual([e.body for e in received], [body])
            outcome = next(e for e in events if isinstance(e, TransactionDone)).outcome
            self.assertEqual(outcome.recipients[0].status, RecipientStatus.DELIVERED)
            self.assertIsInstance(events[-1], SessionEnded)
            self.assertEqual(len(re.findall(rb"\r\n\.\r\n", sent)), 1)

    def test_no_bare_line_ends_on_wire(self) -> None:
        """
        A stored message with bare CR and bare LF reaches the wire with CRLF only.
        """
        body = b"a\rb\nc\r\r\n\n.\n"
        client = ClientCore(ClientSettings("client.example"))
        client.add_transaction(tx("alice@example.com", body=body))
        _, glue, sent = run_pair(
            client, ServerCore(ServerSettings(hostname="mx.example")), bytewise, 1
        )
        self.assertIsNone(re.search(rb"\r(?!\n)|(?<!\r)\n", sent))
        received = [e for e in glue.events if isinstance(e, MessageReceived)]
        self.assertEqual(received[0].body, b"a\r\nb\r\nc\r\n\r\n\r\n.\r\n")

    def test_server_limit_continuation(self) -> None:
        """
        Against a server that takes two recipients per transaction, five recipients go in
        three transactions and all are delivered.
        """
        client = ClientCore(ClientSettings("client.example"))
        client.add_transaction(tx(*(f"r{i}@example.com" for i in range(5))))
        server = ServerCore(ServerSettings(hostname="mx.example", max_recipients=2))
        events, glue, _ = run_pair(client, server, whole)
        received = [e for e in glue.events if isinstance(e, MessageReceived)]
        self.assertEqual([len(e.recipients) for e in received], [2, 2, 1])
        outcome = next(e for e in events if isinstance(e, TransactionDone)).outcome
        self.assertEqual({r.status for r in outcome.recipients}, {RecipientStatus.DELIVERED})


class ClientCoreTests(SynchronousTestCase):
    """Values and misuse."""

    def test_capabilities_from_ehlo(self) -> None:
        """
        Every keyword is read, in any case; old AUTH= lines count; unknown ones are only
        listed among the keywords.
        """
        answer = Reply(
            250,
            None,
            ("mx", "pipelining", "SIZE", "AUTH=LOGIN", "auth plain", "XFOO bar", "STARTTLS"),
        )
        caps = Capabilities.from_ehlo(answer)
        self.assertEqual(
            caps,
            Capabilities(
                extended=True,
                pipelining=True,
                size=0,
                starttls=True,
                auth=frozenset({"LOGIN", "PLAIN"}),
                keywords=frozenset({"PIPELINING", "SIZE", "AUTH", "XFOO", "STARTTLS"}),
            ),
        )

    def test_transaction_refuses_unsafe_addresses(self) -> None:
        """
        Addresses with CR, LF, spaces or brackets cannot make a transaction (no command
        injection), nor can an empty recipient list.
        """
        self.assertRaises(ValueError, Transaction, "a@b\r\nRSET", (Recipient("x@y"),), b"")
        self.assertRaises(ValueError, Transaction, "a@b", (Recipient("x@y> NOTIFY=NEVER"),), b"")
        self.assertRaises(ValueError, Transaction, "a@b", (), b"")
        self.assertRaises(ValueError, Transaction, "a@b", (Recipient("x@y"),), b"", envid="a b")

    def test_repr_hides_password_and_body(self) -> None:
        """
        The repr of settings and transactions shows neither the password nor the body.
        """
        settings = ClientSettings("c", credentials=Credentials("alice", Secret("hunter2")))
        self.assertNotIn("hunter2", repr(settings))
        self.assertNotIn("topsecretbody", repr(tx("a@b", body=b"topsecretbody")))

    def test_misuse(self) -> None:
        """
        tls_started() without a 220, and a transaction after quit(), are our own bugs.
        """
        core = ClientCore(ClientSettings("c"))
        self.assertRaises(LocalProtocolError, core.tls_started)
        core.quit()
        self.assertRaises(LocalProtocolError, core.add_transaction, tx("a@b"))

    def test_connection_failed(self) -> None:
        """
        A failed connection decides every queued recipient temporary with 4.4.1.
        """
        core = ClientCore(ClientSettings("c"))
        core.add_transaction(tx("a@b"))
        core.connection_failed("refused")
        first = core.next_event()
        assert isinstance(first, TransactionDone)
        self.assertEqual(
            first.outcome.recipients,
            (
                RecipientOutcome(
                    "a@b", RecipientStatus.TEMPORARY, None, "4.4.1", "refused", Phase.CONNECT
                ),
            ),
        )
        last = core.next_event()
        assert isinstance(last, SessionEnded)
        self.assertEqual(last.outcome.status, SessionStatus.CONNECTION_FAILED)
        self.assertIs(core.next_event(), Sentinel.CLOSE)
