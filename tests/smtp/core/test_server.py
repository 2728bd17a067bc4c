"""Tests for L{mdtwist.smtp.core.server}: conversations, each run whole and one byte at a time."""

from __future__ import annotations

import base64
import hashlib
import hmac

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.errors import LocalProtocolError
from mdtwist.smtp.core.events import (
    Authenticate,
    Event,
    MailFrom,
    MessageReceived,
    RcptTo,
    Sentinel,
    StartTLS,
)
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.server import ServerCore, ServerSettings, SessionState
from tests.smtp.core.helpers import (
    ConversationMixin,
    ScriptedGlue,
    bytewise,
    default_answer,
    whole,
)

# The conversations below send the client's whole side at once, so they switch command
# synchronisation off; SyncTests checks it with the default settings.
MX = ServerSettings(hostname="mx.example", forbid_unauth_pipelining=False)
SUBMISSION = ServerSettings(
    hostname="mx.example", starttls=True, require_auth=True, forbid_unauth_pipelining=False
)
TLS_SUBMISSION = attrs.evolve(SUBMISSION, starttls=False, tls_active=True)
CRAM_SUBMISSION = ServerSettings(
    hostname="mx.example",
    tls_active=True,
    require_auth=True,
    forbid_unauth_pipelining=False,
    auth_mechanisms=("PLAIN", "CRAM-MD5"),
)

ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"
BDAT_ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@mx.example>\r\n"


def _messages(glue: ScriptedGlue) -> list[MessageReceived]:
    return [e for e in glue.events if isinstance(e, MessageReceived)]


class ServerConversationTestsMixin(ConversationMixin):
    """Conversations with a plain MX core."""

    def test_refusals_taken(self) -> None:
        """
        The 4xx and 5xx replies the core gives by itself can be taken, each with the verb of
        its command (for the mail log); the glue's own refusals are not among them, and each
        refusal is taken once.
        """

        def answer(event: Event) -> Reply:
            if isinstance(event, RcptTo) and event.recipient.startswith("no@"):
                return reply(550, "5.1.1", "No such user")
            return default_answer(event)

        glue = self.converse(
            b"EHLO c.example\r\nMAIL FROM:a@c.example\r\nBogus\r\nRCPT TO:<b@mx.example>\r\n"
            b"MAIL FROM:<a@c.example>\r\nRCPT TO:<no@mx.example>\r\n",
            answer=answer,
        )
        self.assertEqual(
            [(verb, r.code, r.enhanced) for verb, r in glue.core.take_refusals()],
            [("MAIL", 501, "5.5.4"), ("BOGUS", 500, "5.5.1"), ("RCPT", 503, "5.5.1")],
        )
        self.assertEqual(glue.core.take_refusals(), [])
        self.assertEqual(glue.codes()[-1], (550, "5.1.1"))

    def test_greeting_without_enhanced_code(self) -> None:
        """The greeting is C{220 <hostname> ESMTP ready}, without an enhanced code (RFC 2034)."""
        glue = self.converse(b"")
        [greeting] = glue.replies()
        self.assertEqual((greeting.code, greeting.enhanced), (220, None))
        self.assertEqual(greeting.lines, ("mx.example ESMTP ready",))

    def test_ehlo_advertises_extensions(self) -> None:
        """
        EHLO lists PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, DSN, SMTPUTF8 and CHUNKING.

        STARTTLS only when configured; AUTH not before TLS by default.
        """
        glue = self.converse(b"EHLO c.example\r\n")
        ehlo = glue.replies()[1]
        self.assertEqual(ehlo.code, 250)
        self.assertEqual(
            ehlo.lines,
            (
                "mx.example",
                "PIPELINING",
                f"SIZE {MX.max_message_size}",
                "8BITMIME",
                "ENHANCEDSTATUSCODES",
                "DSN",
                "SMTPUTF8",
                "CHUNKING",
            ),
        )
        glue = self.converse(b"EHLO c.example\r\n", SUBMISSION)
        self.assertIn("STARTTLS", glue.replies()[1].lines)
        self.assertNotIn("AUTH PLAIN LOGIN", glue.replies()[1].lines)
        glue = self.converse(b"EHLO c.example\r\n", TLS_SUBMISSION)
        self.assertIn("AUTH PLAIN LOGIN", glue.replies()[1].lines)
        self.assertNotIn("STARTTLS", glue.replies()[1].lines)

    def test_full_transaction(self) -> None:
        """
        A whole transaction yields its events and the replies in order.

        The events are MailFrom, RcptTo and MessageReceived with the unstuffed body.
        """
        glue = self.converse(ENVELOPE + b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n")
        self.assertEqual([code for code, _ in glue.codes()], [220, 250, 250, 250, 354, 250, 221])
        mail, rcpt, message, _ = glue.events
        assert isinstance(mail, MailFrom)
        self.assertEqual(mail.sender, "a@c.example")
        self.assertIsInstance(rcpt, RcptTo)
        assert isinstance(message, MessageReceived)
        self.assertEqual(message.body, b"Subject: x\r\n\r\n.dot\r\nline\r\n")
        self.assertEqual(message.sender, "a@c.example")
        self.assertEqual([r.recipient for r in message.recipients], ["b@mx.example"])
        self.assertTrue(glue.closed)

    def test_pipelined_commands_wait_for_pending_event(self) -> None:
        """
        Pipelined commands wait, buffered, while an event waits for its reply.

        C{next_event} returns C{PAUSED}; nothing is answered or lost.
        """
        core = ServerCore(MX)
        core.start()
        core.data_to_send()
        for chunk in self.chunk(b"EHLO c\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@x>\r\nNOOP\r\n"):
            core.receive_data(chunk)
        self.assertIsInstance(core.next_event(), MailFrom)
        self.assertEqual(core.next_event(), Sentinel.PAUSED)
        self.assertEqual([r.code for r in _parse(core.data_to_send())], [250])
        core.send(reply(250, "2.1.0", "Ok"))
        rcpt = core.next_event()
        self.assertIsInstance(rcpt, RcptTo)
        core.send(reply(250, "2.1.5", "Ok"))
        self.assertEqual(core.next_event(), Sentinel.NEED_DATA)
        self.assertEqual([r.code for r in _parse(core.data_to_send())], [250, 250, 250])

    def test_mail_before_helo_is_refused(self) -> None:
        """MAIL before HELO/EHLO gets C{503 5.5.1} and no event."""
        glue = self.converse(b"MAIL FROM:<a@c.example>\r\n")
        self.assertEqual(glue.codes()[1:], [(503, "5.5.1")])
        self.assertEqual(glue.events, [])

    def test_rcpt_without_mail_and_data_without_rcpt(self) -> None:
        """RCPT without MAIL is C{503 5.5.1}; DATA without recipients is C{554 5.5.1}."""
        glue = self.converse(b"EHLO c\r\nRCPT TO:<b@x.example>\r\nMAIL FROM:<>\r\nDATA\r\n")
        self.assertEqual(glue.codes()[2:], [(503, "5.5.1"), (250, "2.1.0"), (554, "5.5.1")])

    def test_refused_mail_leaves_no_transaction(self) -> None:
        """When the glue refuses MAIL, the following RCPT is out of sequence."""

        def answer(event: Event) -> Reply:
            if isinstance(event, MailFrom):
                return reply(550, "5.7.1", "No")
            return default_answer(event)

        glue = self.converse(b"EHLO c\r\nMAIL FROM:<a@c>\r\nRCPT TO:<b@x>\r\n", answer=answer)
        self.assertEqual(glue.codes()[2:], [(550, "5.7.1"), (503, "5.5.1")])

    def test_simple_commands(self) -> None:
        """
        The core answers the simple commands itself.

        NOOP, RSET, HELP, VRFY (252, never confirming), EXPN (502), unknown commands (500).
        """
        glue = self.converse(
            b"NOOP\r\nRSET\r\nHELP\r\nVRFY root\r\nEXPN staff\r\nFOO\r\nVRFY\r\nRSET x\r\n"
        )
        self.assertEqual(
            glue.codes()[1:],
            [
                (250, "2.0.0"),
                (250, "2.0.0"),
                (214, "2.0.0"),
                (252, "2.1.5"),
                (502, "5.5.1"),
                (500, "5.5.1"),
                (501, "5.5.4"),
                (501, "5.5.4"),
            ],
        )

    def test_rset_ends_transaction(self) -> None:
        """After RSET the transaction is gone: RCPT is out of sequence."""
        glue = self.converse(b"EHLO c\r\nMAIL FROM:<>\r\nRSET\r\nRCPT TO:<b@x>\r\n")
        self.assertEqual(glue.codes()[-1], (503, "5.5.1"))

    def test_nested_mail(self) -> None:
        """A second MAIL inside a transaction is C{503 5.5.1}."""
        glue = self.converse(b"EHLO c\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n")
        self.assertEqual(glue.codes()[-1], (503, "5.5.1"))

    def test_bad_parameters(self) -> None:
        """Unknown MAIL parameters are C{555 5.5.4}; parameters after HELO (not EHLO) too."""
        glue = self.converse(b"EHLO c\r\nMAIL FROM:<> FOO=1\r\nHELO c\r\nMAIL FROM:<> SIZE=1\r\n")
        self.assertEqual(glue.codes()[2], (555, "5.5.4"))
        self.assertEqual(glue.codes()[4], (555, "5.5.4"))
        self.assertEqual(glue.events, [])

    def test_declared_size_over_limit(self) -> None:
        """C{MAIL FROM} with a C{SIZE=} over the limit is C{552 5.3.4}."""
        settings = attrs.evolve(MX, max_message_size=1000)
        glue = self.converse(
            b"EHLO c\r\nMAIL FROM:<> SIZE=1001\r\nMAIL FROM:<> SIZE=1000\r\n", settings
        )
        self.assertEqual(glue.codes()[2:], [(552, "5.3.4"), (250, "2.1.0")])
        self.assertIn("SIZE 1000", glue.replies()[1].lines)

    def test_message_over_size_limit(self) -> None:
        """
        A message over the limit is read to its end and refused with C{552 5.3.4}.

        Nothing is delivered and the session goes on.
        """
        settings = attrs.evolve(MX, max_message_size=100)
        glue = self.converse(
            ENVELOPE + b"x" * 90 + b"\r\n" + b"y" * 20 + b"\r\n.\r\nNOOP\r\n", settings
        )
        self.assertEqual(glue.codes()[-2:], [(552, "5.3.4"), (250, "2.0.0")])
        self.assertEqual(_messages(glue), [])

    def test_recipient_limit(self) -> None:
        """Recipients beyond the limit get C{452 4.5.3}; the accepted ones stay."""
        settings = attrs.evolve(MX, max_recipients=2)
        glue = self.converse(
            b"EHLO c\r\nMAIL FROM:<>\r\n"
            + b"".join(b"RCPT TO:<u%d@mx.example>\r\n" % i for i in range(3))
            + b"DATA\r\nhi\r\n.\r\n",
            settings,
        )
        self.assertEqual(glue.codes()[3:6], [(250, "2.1.5"), (250, "2.1.5"), (452, "4.5.3")])
        [message] = _messages(glue)
        self.assertEqual(len(message.recipients), 2)

    def test_smuggling_probes_do_not_end_data(self) -> None:
        """
        LF.LF, CR.CR, CRLF.LF, LF.CRLF and the like never end DATA.

        The commands after them are part of the message, which is refused at the real end with
        C{550 5.5.2}.
        """
        for probe in [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"]:
            glue = self.converse(
                ENVELOPE
                + b"text"
                + probe
                + b"MAIL FROM:<ceo@bank.example>\r\nRCPT TO:<v@mx.example>\r\nDATA\r\n"
                + b"forged\r\n.\r\nNOOP\r\n"
            )
            self.assertEqual(len([e for e in glue.events if isinstance(e, MailFrom)]), 1, probe)
            self.assertEqual(_messages(glue), [], probe)
            self.assertEqual(glue.codes()[-2:], [(550, "5.5.2"), (250, "2.0.0")], probe)

    def test_nul_around_dot_is_content(self) -> None:
        """
        CRLF NUL . CRLF and CRLF . NUL CRLF are content, not the end of DATA: the message
        goes on to the real end marker and is refused there for its NULs; the line after the
        real end is a command again.
        """
        glue = self.converse(ENVELOPE + b"a\r\n\x00.\r\nb\r\n.\x00\r\nNOOP\r\n.\r\nRSET\r\n")
        self.assertEqual(_messages(glue), [])
        self.assertEqual(glue.codes()[-3:], [(354, None), (550, "5.6.0"), (250, "2.0.0")])

    def test_long_line_in_data_stays_in_data(self) -> None:
        """
        An over-long line in DATA does not leave DATA.

        Command-like lines after it are content, and the message is refused with C{500 5.5.6} at
        its real end.
        """
        glue = self.converse(
            ENVELOPE + b"x" * 2000 + b"\r\nRSET\r\nMAIL FROM:<ceo@bank.example>\r\n.\r\nNOOP\r\n"
        )
        self.assertEqual(glue.codes()[-2:], [(500, "5.5.6"), (250, "2.0.0")])
        self.assertEqual(len([e for e in glue.events if isinstance(e, MailFrom)]), 1)
        self.assertEqual(_messages(glue), [])

    def test_long_command_line(self) -> None:
        """An over-long command line gets C{500 5.5.6} and is not executed; the session lives."""
        glue = self.converse(b"EHLO c\r\nMAIL FROM:<" + b"a" * 600 + b"@x>\r\nNOOP\r\n")
        self.assertEqual(glue.codes()[2:], [(500, "5.5.6"), (250, "2.0.0")])
        self.assertEqual(glue.events, [])

    def test_bare_lf_command_not_executed(self) -> None:
        """Commands separated by a bare LF are refused with C{500 5.5.2}; neither runs."""
        glue = self.converse(b"EHLO c\r\nMAIL FROM:<a@c>\nRCPT TO:<b@x>\r\nNOOP\r\n")
        self.assertEqual(glue.codes()[2:], [(500, "5.5.2"), (250, "2.0.0")])
        self.assertEqual(glue.events, [])

    def test_too_many_errors(self) -> None:
        """
        After C{max_errors} 5xx replies the core adds C{421 4.7.0} and closes.

        Later input is ignored.
        """
        settings = attrs.evolve(MX, max_errors=3)
        glue = self.converse(b"FOO\r\nBAR\r\nNOOP\r\nBAZ\r\nNOOP\r\n", settings)
        self.assertEqual(
            glue.codes()[1:],
            [(500, "5.5.1"), (500, "5.5.1"), (250, "2.0.0"), (500, "5.5.1"), (421, "4.7.0")],
        )
        self.assertTrue(glue.closed)

    def test_starttls_resets_session(self) -> None:
        """
        After STARTTLS the HELO name and transaction are gone.

        MAIL needs a new EHLO, and EHLO no longer offers STARTTLS; a second STARTTLS is C{503
        5.5.1}.
        """
        glue = self.converse(
            b"EHLO c\r\nMAIL FROM:<>\r\nSTARTTLS\r\n", SUBMISSION, answer=_accept_mail
        )
        glue.feed(self.chunk(b"MAIL FROM:<>\r\nEHLO c\r\nSTARTTLS\r\n"))
        self.assertTrue(glue.core.tls_active)
        codes = glue.codes()
        self.assertEqual(codes[3], (220, "2.0.0"))
        self.assertEqual(codes[4], (503, "5.5.1"))
        self.assertNotIn("STARTTLS", glue.replies()[5].lines)
        self.assertIn("AUTH PLAIN LOGIN", glue.replies()[5].lines)
        self.assertEqual(codes[6], (503, "5.5.1"))

    def test_auth_before_tls_refused(self) -> None:
        """On submission without TLS, AUTH is C{538 5.7.11} and MAIL is C{530 5.7.0}."""
        glue = self.converse(
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<>\r\n", SUBMISSION
        )
        self.assertEqual(glue.codes()[2:], [(538, "5.7.11"), (530, "5.7.0")])
        self.assertEqual(glue.events, [])

    def test_auth_plain_initial_response(self) -> None:
        """
        AUTH PLAIN with an initial response yields the credentials.

        C{235} authenticates and MAIL is then allowed.
        """
        glue = self.converse(
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nMAIL FROM:<alice@mx.example>\r\n",
            TLS_SUBMISSION,
        )
        self.assertEqual(glue.events[0], Authenticate("PLAIN", "", "alice", "secret"))
        self.assertEqual(glue.codes()[2:], [(235, "2.7.0"), (250, "2.1.0")])
        self.assertTrue(glue.core.authenticated)

    def test_auth_login_exchange(self) -> None:
        """
        AUTH LOGIN asks for user name and password with C{334}.

        A wrong password gets C{535 5.7.8} and the session stays unauthenticated.
        """
        glue = self.converse(b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd3Jvbmc=\r\n", TLS_SUBMISSION)
        replies = glue.replies()
        self.assertEqual([r.code for r in replies[2:]], [334, 334, 535])
        self.assertEqual(replies[2].lines, ("VXNlcm5hbWU6",))
        self.assertEqual(replies[3].lines, ("UGFzc3dvcmQ6",))
        self.assertEqual(glue.events, [Authenticate("LOGIN", "", "alice", "wrong")])
        self.assertFalse(glue.core.authenticated)

    def test_auth_cancel_and_bad_base64(self) -> None:
        """
        C{*} cancels an exchange with C{501 5.0.0}.

        Bad base64 gets C{501 5.5.2}; an unknown mechanism C{504 5.5.4}.
        """
        glue = self.converse(
            b"EHLO c\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN\r\n!!!\r\nAUTH CRAM-MD5\r\n", TLS_SUBMISSION
        )
        self.assertEqual(
            glue.codes()[2:],
            [(334, None), (501, "5.0.0"), (334, None), (501, "5.5.2"), (504, "5.5.4")],
        )

    def test_auth_cram_md5(self) -> None:
        """
        CRAM-MD5, when configured and given a session nonce, is advertised and sends a
        challenge made of the nonce, a counter and the hostname; the client's login and digest
        come back in L{Authenticate} with the challenge they answer.
        """
        glue = ScriptedGlue(ServerCore(CRAM_SUBMISSION, auth_nonce="f00d"))
        glue.feed(self.chunk(b"EHLO c\r\nAUTH CRAM-MD5\r\n"))
        self.assertIn("AUTH PLAIN CRAM-MD5", glue.replies()[1].lines)
        challenge = base64.b64decode(glue.replies()[2].lines[0])
        self.assertEqual(challenge, b"<f00d.1@mx.example>")
        digest = hmac.new(b"tanstaaftanstaaf", challenge, hashlib.md5).hexdigest()
        glue.feed(self.chunk(base64.b64encode(b"tim " + digest.encode()) + b"\r\n"))
        self.assertEqual(
            glue.events, [Authenticate("CRAM-MD5", "", "tim", digest, challenge=challenge)]
        )
        self.assertEqual(glue.codes()[-1], (535, "5.7.8"))
        glue.feed(self.chunk(b"AUTH CRAM-MD5\r\n"))
        self.assertEqual(base64.b64decode(glue.replies()[-1].lines[0]), b"<f00d.2@mx.example>")

    def test_auth_cram_md5_needs_nonce(self) -> None:
        """Without a session nonce, a configured CRAM-MD5 is refused as unknown."""
        glue = ScriptedGlue(ServerCore(CRAM_SUBMISSION))
        glue.feed(self.chunk(b"EHLO c\r\nAUTH CRAM-MD5\r\n"))
        self.assertEqual(glue.codes()[-1], (504, "5.5.4"))

    def test_second_auth_refused(self) -> None:
        """After a successful AUTH, another AUTH is C{503 5.5.1}."""
        glue = self.converse(
            b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            TLS_SUBMISSION,
        )
        self.assertEqual(glue.codes()[-1], (503, "5.5.1"))

    def test_non_ascii_address_needs_smtputf8(self) -> None:
        """A UTF-8 address is refused with C{553 5.6.7} unless MAIL carries C{SMTPUTF8}."""
        glue = self.converse(
            "EHLO c\r\nMAIL FROM:<jörg@c.example>\r\nMAIL FROM:<jörg@c.example> SMTPUTF8\r\n"
            "RCPT TO:<zoë@mx.example>\r\n".encode()
        )
        self.assertEqual(glue.codes()[2:], [(553, "5.6.7"), (250, "2.1.0"), (250, "2.1.5")])
        mail = glue.events[0]
        assert isinstance(mail, MailFrom)
        self.assertTrue(mail.parameters.smtputf8)

    def test_binarymime_refused(self) -> None:
        """
        C{BODY=BINARYMIME} is C{555 5.5.4}: BINARYMIME is not offered, so no transaction opens
        and the DATA after it has no MAIL.
        """
        glue = self.converse(
            b"EHLO c\r\nMAIL FROM:<> BODY=BINARYMIME\r\nRCPT TO:<b@x>\r\nDATA\r\n"
        )
        self.assertEqual(glue.codes()[2:], [(555, "5.5.4"), (503, "5.5.1"), (503, "5.5.1")])
        self.assertNotIn("BINARYMIME", glue.replies()[1].lines)

    def test_nul_in_data_refused(self) -> None:
        """
        A message with a NUL byte is read to its end and refused with C{550 5.6.0}; the
        session goes on.
        """
        glue = self.converse(ENVELOPE + b"Subject: x\r\n\r\na\x00b\r\n.\r\nNOOP\r\n")
        self.assertEqual(glue.codes()[-3:], [(354, None), (550, "5.6.0"), (250, "2.0.0")])
        self.assertEqual(_messages(glue), [])


class ChunkingTestsMixin(ConversationMixin):
    """BDAT (RFC 3030), each conversation fed whole and one byte at a time."""

    def test_chunks_make_one_message(self) -> None:
        """
        Pipelined chunks are each answered with C{250} and joined; C{LAST} ends the message.

        Chunk bytes that look like SMTP (a dot line, commands) are message content.
        """
        first = b"Subject: x\r\n\r\n.\r\nMAIL FROM:<ceo@bank.example>\r\n"
        last = b"DATA\r\nend\r\n"
        glue = self.converse(
            BDAT_ENVELOPE
            + b"BDAT %d\r\n" % len(first)
            + first
            + b"BDAT %d LAST\r\n" % len(last)
            + last
            + b"NOOP\r\n"
        )
        self.assertEqual(
            glue.codes()[1:],
            [(250, None), (250, "2.1.0"), (250, "2.1.5"), (250, "2.0.0"), (250, "2.0.0"),
             (250, "2.0.0")],
        )  # fmt: skip
        self.assertEqual(glue.replies()[4].text, f"{len(first)} octets received")
        [message] = _messages(glue)
        self.assertEqual(message.body, first + last)
        self.assertEqual(len([e for e in glue.events if isinstance(e, MailFrom)]), 1)

    def test_bdat_zero_last_and_final_crlf(self) -> None:
        """
        C{BDAT 0 LAST} ends a message; a message that lacks a final CRLF gets one.
        """
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 4\r\nab\r\nBDAT 2\r\ncdBDAT 0 LAST\r\n")
        [message] = _messages(glue)
        self.assertEqual(message.body, b"ab\r\ncd\r\n")

    def test_refused_bdat_chunk_is_still_read(self) -> None:
        """
        BDAT without MAIL, or without an accepted recipient, is refused after its chunk is
        read: nothing in the chunk is run as a command.
        """
        chunk = b"RSET\r\nMAIL FROM:<ceo@bank.example>\r\n"
        glue = self.converse(b"EHLO c\r\nBDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
        self.assertEqual(glue.codes()[2:], [(503, "5.5.1"), (250, "2.0.0")])
        self.assertEqual(glue.events, [])
        glue = self.converse(
            b"EHLO c\r\nMAIL FROM:<a@c>\r\nBDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"
        )
        self.assertEqual(glue.codes()[3:], [(554, "5.5.1"), (250, "2.0.0")])
        self.assertEqual(len(glue.events), 1)

    def test_chunks_over_size_limit(self) -> None:
        """
        A chunk that takes the message over the limit is read and refused with C{552 5.3.4};
        the transaction ends, so later chunks get C{503 5.5.1}.
        """
        settings = attrs.evolve(MX, max_message_size=10)
        glue = self.converse(
            BDAT_ENVELOPE + b"BDAT 6\r\n123456BDAT 6\r\n7890abBDAT 1 LAST\r\nxNOOP\r\n",
            settings,
        )
        self.assertEqual(
            glue.codes()[4:], [(250, "2.0.0"), (552, "5.3.4"), (503, "5.5.1"), (250, "2.0.0")]
        )
        self.assertEqual(_messages(glue), [])

    def test_bad_line_ends_in_chunks(self) -> None:
        """
        A message whose chunks hold a bare LF, a NUL or an over-long line is refused as in
        DATA; a CRLF split across two chunks is fine.
        """
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 5 LAST\r\na\nb\r\nNOOP\r\n")
        self.assertEqual(glue.codes()[-2:], [(550, "5.5.2"), (250, "2.0.0")])
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 5 LAST\r\na\x00b\r\nNOOP\r\n")
        self.assertEqual(glue.codes()[-2:], [(550, "5.6.0"), (250, "2.0.0")])
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 1002 LAST\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(glue.codes()[-1], (500, "5.5.6"))
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 2\r\na\rBDAT 1 LAST\r\n\n")
        [message] = _messages(glue)
        self.assertEqual(message.body, b"a\r\n")

    def test_bdat_syntax_error_closes(self) -> None:
        """A BDAT whose size cannot be read gets C{501 5.5.4} and the session ends."""
        for command in [b"BDAT", b"BDAT x", b"BDAT -1", b"BDAT 1 FIRST", b"BDAT 1 LAST more"]:
            glue = self.converse(BDAT_ENVELOPE + command + b"\r\nNOOP\r\n")
            self.assertEqual(glue.codes()[-1], (501, "5.5.4"), command)
            self.assertTrue(glue.closed, command)

    def test_data_after_bdat_refused(self) -> None:
        """DATA in a transaction that began with BDAT is C{503 5.5.1}; RSET starts afresh."""
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 3\r\nab\nDATA\r\nRSET\r\nMAIL FROM:<a@c>\r\n")
        self.assertEqual(
            glue.codes()[-4:], [(250, "2.0.0"), (503, "5.5.1"), (250, "2.0.0"), (250, "2.1.0")]
        )

    def test_not_offered_when_disabled(self) -> None:
        """
        Without CHUNKING, EHLO does not list it and BDAT is refused after its chunk is read.
        """
        settings = attrs.evolve(MX, chunking=False)
        glue = self.converse(BDAT_ENVELOPE + b"BDAT 4 LAST\r\nQUITNOOP\r\n", settings)
        self.assertNotIn("CHUNKING", glue.replies()[1].lines)
        self.assertEqual(glue.codes()[-2:], [(502, "5.5.1"), (250, "2.0.0")])


class ChunkingWholeTests(ChunkingTestsMixin, SynchronousTestCase):
    """BDAT conversations fed in one piece."""

    chunk = staticmethod(whole)


class ChunkingByteTests(ChunkingTestsMixin, SynchronousTestCase):
    """BDAT conversations fed one byte at a time."""

    chunk = staticmethod(bytewise)


def _accept_mail(event: Event) -> Reply:
    return default_answer(event)


def _parse(data: bytes) -> list[Reply]:
    from tests.smtp.core.helpers import parse_replies

    return parse_replies(data)


class ServerConversationWholeTests(ServerConversationTestsMixin, SynchronousTestCase):
    """Conversations fed in one piece."""

    chunk = staticmethod(whole)


class ServerConversationByteTests(ServerConversationTestsMixin, SynchronousTestCase):
    """Conversations fed one byte at a time."""

    chunk = staticmethod(bytewise)


class SyncTests(SynchronousTestCase):
    """
    Command synchronisation (RFC 2920 section 3.1), on by default: each list item below is one
    TCP segment, as the glue would receive it.
    """

    def talk(self, segments: list[bytes], settings: ServerSettings | None = None) -> ScriptedGlue:
        glue = ScriptedGlue(ServerCore(settings or ServerSettings(hostname="mx.example")))
        glue.feed(segments)
        return glue

    def test_body_before_go_ahead(self) -> None:
        """
        A message sent with DATA, before the 354, gets C{554 5.5.0}: no 354, no message, closed.
        """
        glue = self.talk(
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<a@c>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n"
                b"Subject: x\r\n\r\nhi\r\n.\r\n",
            ]
        )
        self.assertEqual(
            glue.codes()[1:], [(250, None), (250, "2.1.0"), (250, "2.1.5"), (554, "5.5.0")]
        )
        self.assertTrue(glue.closed)
        self.assertFalse([e for e in glue.events if isinstance(e, MessageReceived)])
        self.assertEqual(glue.core.sync_error, "DATA")

    def test_more_after_ehlo(self) -> None:
        """
        A command in the same segment as EHLO is not executed: the session ends with 554.
        """
        glue = self.talk([b"EHLO c\r\nMAIL FROM:<a@c>\r\n"])
        self.assertEqual(glue.codes()[1:], [(554, "5.5.0")])
        self.assertEqual(glue.events, [])
        self.assertEqual(glue.core.sync_error, "EHLO")

    def test_more_after_noop(self) -> None:
        """
        NOOP must end a group too.
        """
        glue = self.talk([b"EHLO c\r\n", b"NOOP\r\nMAIL FROM:<a@c>\r\n"])
        self.assertEqual(glue.codes()[-1], (554, "5.5.0"))
        self.assertEqual(glue.core.sync_error, "NOOP")

    def test_no_pipelining_after_helo(self) -> None:
        """
        HELO offers no PIPELINING: two commands in one segment end the session.
        """
        glue = self.talk([b"HELO c\r\n", b"MAIL FROM:<a@c>\r\nRCPT TO:<b@mx.example>\r\n"])
        self.assertEqual(glue.codes()[1:], [(250, None), (554, "5.5.0")])
        self.assertEqual(glue.events, [])
        self.assertEqual(glue.core.sync_error, "MAIL")

    def test_unknown_command_not_named(self) -> None:
        """
        A verb we do not know is not repeated (it would go into the log).
        """
        glue = self.talk([b"HELO c\r\n", b"XYZZY\r\nQUIT\r\n"])
        self.assertEqual(glue.codes()[-1], (554, "5.5.0"))
        self.assertEqual(glue.core.sync_error, "an unknown command")

    def test_legal_pipelining(self) -> None:
        """
        After EHLO, MAIL, RCPT and DATA may share a segment; the message follows the 354, and
        QUIT may follow the final dot at once.
        """
        glue = self.talk(
            [
                b"EHLO c\r\n",
                b"MAIL FROM:<a@c>\r\nRCPT TO:<b@mx.example>\r\nDATA\r\n",
                b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n",
            ]
        )
        self.assertEqual([c for c, _ in glue.codes()], [220, 250, 250, 250, 354, 250, 221])
        self.assertEqual(len([e for e in glue.events if isinstance(e, MessageReceived)]), 1)
        self.assertIsNone(glue.core.sync_error)

    def test_helo_session_one_command_at_a_time(self) -> None:
        """
        Without PIPELINING, a client that waits for every reply delivers its message.
        """
        segments = [b"HELO c\r\n", b"MAIL FROM:<a@c>\r\n", b"RCPT TO:<b@mx.example>\r\n"]
        glue = self.talk([*segments, b"DATA\r\n", b"hi\r\n.\r\nQUIT\r\n"])
        self.assertEqual([c for c, _ in glue.codes()], [220, 250, 250, 250, 354, 250, 221])
        self.assertIsNone(glue.core.sync_error)

    def test_switched_off(self) -> None:
        """
        With C{forbid_unauth_pipelining=False}, a command after EHLO in one segment is executed.
        """
        glue = self.talk(
            [b"EHLO c\r\nMAIL FROM:<a@c>\r\n"],
            ServerSettings(hostname="mx.example", forbid_unauth_pipelining=False),
        )
        self.assertEqual([c for c, _ in glue.codes()], [220, 250, 250])
        self.assertIsNone(glue.core.sync_error)


class ServerCoreTests(SynchronousTestCase):
    """Direct tests of the L{ServerCore} API."""

    def test_starttls_injection_discarded(self) -> None:
        r"""
        C{STARTTLS\\r\\nRSET\\r\\n} in one segment.

        The RSET is discarded with the plaintext buffer and never answered.
        """
        core = ServerCore(SUBMISSION)
        glue = ScriptedGlue(core)
        glue.feed([b"EHLO c\r\n", b"STARTTLS\r\nRSET\r\nMAIL FROM:<a@b>\r\n"])
        self.assertEqual([r.code for r in glue.replies()], [220, 250, 220])
        self.assertEqual(core.state, SessionState.COMMAND)
        self.assertTrue(core.tls_active)
        self.assertIsNone(core.helo)
        self.assertEqual(core.buffered, 0)

    def test_reply_must_fit_event(self) -> None:
        """A reply that is not due, or does not fit, raises L{LocalProtocolError}."""
        core = ServerCore(MX)
        core.start()
        self.assertRaises(LocalProtocolError, core.send, reply(250, "2.0.0", "Ok"))
        core.receive_data(b"EHLO c\r\nMAIL FROM:<>\r\n")
        self.assertIsInstance(core.next_event(), MailFrom)
        self.assertRaises(LocalProtocolError, core.send, reply(235, "2.7.0", "Ok"))
        self.assertRaises(LocalProtocolError, core.send, reply(250, None, "Ok"))
        core.send(reply(250, "2.1.0", "Ok"))

    def test_only_commands(self) -> None:
        """
        With C{only_commands}, other known verbs get C{502 5.5.1} (the ODMR listener), the
        EHLO reply lists only ENHANCEDSTATUSCODES, AUTH and the extension verbs, and an
        unknown verb is still C{500}.
        """
        settings = attrs.evolve(
            MX,
            auth_without_tls=True,
            commands=("ATRN",),
            only_commands=("ehlo", "auth", "atrn", "quit"),
        )
        core = ServerCore(settings)
        glue = ScriptedGlue(core)
        glue.feed([b"EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP\r\nFOO\r\n"])
        ehlo, mail, noop, foo = glue.replies()[1:]
        self.assertEqual(ehlo.lines[1:], ("ENHANCEDSTATUSCODES", "AUTH PLAIN LOGIN", "ATRN"))
        self.assertEqual((mail.code, mail.enhanced), (502, "5.5.1"))
        self.assertEqual(noop.code, 502)
        self.assertEqual(foo.code, 500)

    def test_only_commands_starttls(self) -> None:
        """
        With STARTTLS among C{only_commands} and offered, the EHLO reply lists it until TLS is
        active; left out of C{only_commands}, it is neither listed nor accepted.
        """
        settings = attrs.evolve(
            MX, starttls=True, commands=("ATRN",), only_commands=("ehlo", "starttls", "atrn")
        )
        glue = ScriptedGlue(ServerCore(settings))
        glue.feed([b"EHLO c\r\n"])
        self.assertEqual(glue.replies()[1].lines[1:], ("ENHANCEDSTATUSCODES", "STARTTLS", "ATRN"))
        glue = ScriptedGlue(ServerCore(attrs.evolve(settings, only_commands=("ehlo", "atrn"))))
        glue.feed([b"EHLO c\r\nSTARTTLS\r\n"])
        ehlo, starttls = glue.replies()[1:]
        self.assertEqual(ehlo.lines[1:], ("ENHANCEDSTATUSCODES", "ATRN"))
        self.assertEqual((starttls.code, starttls.enhanced), (502, "5.5.1"))

    def test_start_tls_needs_220(self) -> None:
        """C{start_tls} without a C{220} to STARTTLS raises L{LocalProtocolError}."""
        core = ServerCore(SUBMISSION)
        core.start()
        self.assertRaises(LocalProtocolError, core.start_tls)

    def test_refused_starttls_keeps_plaintext(self) -> None:
        """A 4xx to STARTTLS leaves the session in plaintext and the next command is processed."""
        core = ServerCore(SUBMISSION)
        core.start()
        core.receive_data(b"STARTTLS\r\nNOOP\r\n")
        self.assertIsInstance(core.next_event(), StartTLS)
        core.send(reply(454, "4.7.0", "TLS not available"))
        self.assertEqual(core.next_event(), Sentinel.NEED_DATA)
        self.assertFalse(core.tls_active)
        self.assertIn(b"250 2.0.0", core.data_to_send())

    def test_starttls_not_configured(self) -> None:
        """Without STARTTLS in the settings, STARTTLS is C{502 5.5.1}."""
        glue = ScriptedGlue(ServerCore(MX))
        glue.feed([b"STARTTLS\r\n"])
        self.assertEqual(glue.codes()[1:], [(502, "5.5.1")])

    def test_busy_greeting_closes(self) -> None:
        """A C{421} greeting closes the session at once."""
        core = ServerCore(MX)
        core.start(reply(421, "4.7.0", "Too many connections"))
        self.assertEqual(core.next_event(), Sentinel.CLOSE)
        self.assertEqual(core.data_to_send(), b"421 4.7.0 Too many connections\r\n")

    def test_abort(self) -> None:
        """C{abort} sends its reply and closes, even while an event is pending."""
        core = ServerCore(MX)
        core.start()
        core.data_to_send()
        core.receive_data(b"EHLO c\r\nMAIL FROM:<>\r\n")
        core.next_event()
        core.abort(reply(421, "4.4.2", "Timeout"))
        self.assertEqual(core.next_event(), Sentinel.CLOSE)
        self.assertTrue(core.data_to_send().endswith(b"421 4.4.2 Timeout\r\n"))

    def test_before_start_paused(self) -> None:
        """Before C{start}, C{next_event} is C{PAUSED}; C{start} twice raises."""
        core = ServerCore(MX)
        core.receive_data(b"NOOP\r\n")
        self.assertEqual(core.next_event(), Sentinel.PAUSED)
        core.start()
        self.assertRaises(LocalProtocolError, core.start)

    def test_settings_validation(self) -> None:
        """Unknown SASL mechanisms and non-positive limits are refused."""
        self.assertRaises(
            ValueError, ServerSettings, hostname="h", auth_mechanisms=("DIGEST-MD5",)
        )
        self.assertRaises(ValueError, ServerSettings, hostname="h", max_recipients=0)


class DuplicateRecipientTests(SynchronousTestCase):
    """
    The glue can accept a recipient without adding it (the same mailbox again).
    """

    def test_not_added(self) -> None:
        """
        A recipient answered 250 with C{add_recipient=False} is not in the message, but it
        counts towards the recipient limit, so duplicates cannot make a transaction endless.
        """
        core = ServerCore(attrs.evolve(MX, max_recipients=3))
        core.start()
        core.receive_data(
            b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@x>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\n"
            b"RCPT TO:<c@x>\r\nDATA\r\nhi\r\n.\r\n"
        )
        events = []
        adds = iter([True, False, True])
        while True:
            event = core.next_event()
            if not isinstance(event, Event):
                break
            events.append(event)
            if isinstance(event, RcptTo):
                core.send(reply(250, "2.1.5", "Ok"), add_recipient=next(adds))
            else:
                core.send(reply(250, "2.0.0", "Ok"))
        [message] = [e for e in events if isinstance(e, MessageReceived)]
        self.assertEqual([r.recipient for r in message.recipients], ["a@x", "b@x"])
        self.assertIn(b"452 4.5.3", core.data_to_send())
