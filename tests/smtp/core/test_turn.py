"""
Tests for the parts of the sans-IO cores that let a connection change hands: single commands
and the turn in L{mdtwist.smtp.core.client}, extension commands and C{detach} in
L{mdtwist.smtp.core.server}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.envelope import Recipient
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientSettings,
    ClientState,
    CommandReplied,
    Idle,
    Phase,
    RecipientStatus,
    SessionStatus,
    StartTLSPolicy,
    Transaction,
    Turned,
)
from mdtwist.smtp.core.errors import LocalProtocolError
from mdtwist.smtp.core.events import Event, ExtensionCommand, Quit, Sentinel
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.server import ServerCore, ServerSettings, SessionState
from tests.smtp.core.helpers import Chunker, ScriptedGlue, bytewise, default_answer, whole
from tests.smtp.core.test_client import Driver

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object

GREETING = b"220 provider.example ESMTP\r\n"
EHLO = b"250-provider.example\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"
TURNING = b"250 2.0.0 OK now reversing the connection\r\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n"


def tx(*recipients: str) -> Transaction:
    """A transaction from s@c.example."""
    return Transaction("s@c.example", tuple(Recipient(r) for r in recipients), BODY)


class ClientCommandTestsMixin(_Base):
    """Commands outside transactions, and the turn, in the client core."""

    chunk: Chunker

    def start(self, *, commands: tuple[tuple[str, bool], ...] = ()) -> Driver:
        """A core past its greeting and EHLO, with commands queued before it started."""
        core = ClientCore(
            ClientSettings(hostname="customer.example", starttls=StartTLSPolicy.NEVER)
        )
        for text, turns in commands:
            core.add_command(text, turns=turns)
        driver = Driver(core, self.chunk)
        driver.pump()
        driver.server(GREETING)
        self.assertEqual(driver.take(), b"EHLO customer.example\r\n")
        driver.server(EHLO)
        return driver

    def test_turn(self) -> None:
        """
        A single-line 250 to a turning command is L{Turned}; the core then reads nothing,
        expects no reply, and C{detach} gives exactly the bytes after the 250.
        """
        driver = self.start(commands=(("ATRN example.org", True),))
        self.assertEqual(driver.take(), b"ATRN example.org\r\n")
        self.assertEqual(driver.core.waiting_for, Phase.COMMAND)
        driver.server(TURNING + b"EHLO provider.example\r\n")
        self.assertEqual(
            driver.events,
            [Turned("ATRN example.org", reply(250, "2.0.0", "OK now reversing the connection"))],
        )
        self.assertIs(driver.core.state, ClientState.TURNED)
        self.assertIsNone(driver.core.waiting_for)
        self.assertEqual(driver.take(), b"")
        self.assertEqual(driver.core.detach(), b"EHLO provider.example\r\n")
        driver.pump()
        session = driver.session()
        assert session is not None
        self.assertEqual(session.status, SessionStatus.COMPLETED)
        self.assertIs(driver.core.state, ClientState.CLOSED)
        self.assertEqual(driver.take(), b"")

    def test_nothing_after_turn(self) -> None:
        """Nothing can be queued behind a turning command, nor after the turn; QUIT is moot."""
        driver = self.start(commands=(("ATRN", True),))
        self.assertRaises(LocalProtocolError, driver.core.add_transaction, tx("a@b.example"))
        self.assertRaises(LocalProtocolError, driver.core.add_command, "NOOP")
        driver.server(TURNING)
        self.assertRaises(LocalProtocolError, driver.core.add_command, "NOOP")
        driver.core.quit()
        driver.pump()
        self.assertEqual(driver.take(), b"ATRN\r\n")

    def test_multiline_250_is_no_turn(self) -> None:
        """A 250 of several lines is only a reply; the session goes on, idle."""
        driver = self.start(commands=(("ATRN", True),))
        driver.take()
        driver.server(b"250-OK\r\n250 reversing\r\n")
        self.assertEqual(
            driver.events[-2:],
            [
                CommandReplied("ATRN", Reply(250, None, ("OK", "reversing"))),
                Idle(driver.core.capabilities),  # type: ignore[arg-type]
            ],
        )
        self.assertIs(driver.core.state, ClientState.IDLE)
        driver.core.add_command("QUIT-LIKE")
        driver.pump()
        self.assertEqual(driver.take(), b"QUIT-LIKE\r\n")

    def test_refused_turn_then_quit(self) -> None:
        """A 450 to a turning command is a reply; C{quit()} then says QUIT."""
        driver = self.start(commands=(("ATRN", True),))
        driver.take()
        driver.server(b"450 4.7.0 ATRN request refused\r\n")
        self.assertIsInstance(driver.events[0], CommandReplied)
        driver.core.quit()
        driver.pump()
        self.assertEqual(driver.take(), b"QUIT\r\n")

    def test_commands_in_order_with_transactions(self) -> None:
        """
        Commands and transactions run in the order queued; a command is never pipelined and
        gets no RSET on a reused connection (and, having just been answered, spares the
        transaction after it that RSET), only after a failed transaction.
        """
        driver = self.start()
        self.assertIsInstance(driver.events[-1], Idle)
        driver.core.add_command("ETRN example.org")
        driver.pump()
        self.assertEqual(driver.take(), b"ETRN example.org\r\n")
        driver.core.add_transaction(tx("a@provider.example"))
        driver.core.add_command("ETRN #queue")
        driver.pump()
        driver.server(b"250 2.0.0 Queuing started\r\n")
        self.assertEqual(
            driver.take(),
            b"MAIL FROM:<s@c.example>\r\nRCPT TO:<a@provider.example>\r\nDATA\r\n",
        )
        driver.server(b"250 2.1.0 Ok\r\n550 5.1.1 No such user\r\n")
        driver.server(b"554 5.5.1 No valid recipients\r\n")
        self.assertEqual(driver.take(), b"RSET\r\n")
        driver.server(b"250 2.0.0 Ok\r\n")
        self.assertEqual(driver.take(), b"ETRN #queue\r\n")
        driver.server(b"459 4.0.0 Queue unknown\r\n")
        replied = [e for e in driver.events if isinstance(e, CommandReplied)]
        self.assertEqual(
            [(e.command, e.reply.code) for e in replied],
            [("ETRN example.org", 250), ("ETRN #queue", 459)],
        )
        self.assertEqual([s[1] for s in driver.statuses()], [RecipientStatus.PERMANENT])

    def test_detach_decides_what_is_open(self) -> None:
        """
        Detaching in the middle of a transaction ends the session without a word: undecided
        recipients are temporary and nothing queued is written.
        """
        driver = self.start()
        driver.core.add_transaction(tx("a@provider.example"))
        driver.pump()
        driver.take()
        driver.server(b"250 2.0.0 Ok\r\n250 2.1")
        self.assertEqual(driver.core.detach(), b"250 2.1")
        driver.pump()
        self.assertEqual([s[1] for s in driver.statuses()], [RecipientStatus.TEMPORARY])
        self.assertEqual(driver.take(), b"")
        self.assertIs(driver.core.state, ClientState.CLOSED)

    def test_bad_command_text(self) -> None:
        """A command must be one line of printable ASCII."""
        core = ClientCore(ClientSettings(hostname="customer.example"))
        for text in ("", "ATRN a\r\nMAIL", "ATRN caf\u00e9"):
            self.assertRaises(ValueError, core.add_command, text)


class ClientCommandWholeTests(ClientCommandTestsMixin, SynchronousTestCase):
    """Server bytes fed in one piece."""

    chunk = staticmethod(whole)


class ClientCommandByteTests(ClientCommandTestsMixin, SynchronousTestCase):
    """Server bytes fed one at a time."""

    chunk = staticmethod(bytewise)


def answer_turn(event: Event) -> Reply:
    """Answer extension commands with 250, everything else as usual."""
    if isinstance(event, ExtensionCommand):
        return reply(250, "2.0.0", "OK now reversing the connection")
    return default_answer(event)


class ServerExtensionTestsMixin(_Base):
    """Extension commands and C{detach} in the server core."""

    chunk: Chunker

    def settings(self, **kwargs: object) -> ServerSettings:
        return ServerSettings(hostname="provider.example", commands=("atrn", "Etrn"), **kwargs)  # type: ignore[arg-type]

    def test_advertised_and_handed_over(self) -> None:
        """The verbs are EHLO keywords, and each command is an event with its argument."""
        glue = ScriptedGlue(ServerCore(self.settings()), answer_turn)
        glue.feed(self.chunk(b"EHLO c.example\r\n"))
        ehlo = glue.replies()[1]
        self.assertEqual(ehlo.lines[-2:], ("ATRN", "ETRN"))
        glue.feed(self.chunk(b"etrn @example.org\r\nATRN\r\n"))
        self.assertEqual(
            glue.events, [ExtensionCommand("ETRN", "@example.org"), ExtensionCommand("ATRN", "")]
        )
        self.assertEqual([r.code for r in glue.replies()], [220, 250, 250, 250])

    def test_unknown_without_settings(self) -> None:
        """A verb not in C{commands} is unrecognized."""
        settings = ServerSettings(hostname="provider.example", forbid_unauth_pipelining=False)
        glue = ScriptedGlue(ServerCore(settings), answer_turn)
        glue.feed(self.chunk(b"EHLO c.example\r\nATRN\r\n"))
        self.assertEqual(glue.codes()[-1], (500, "5.5.1"))
        self.assertNotIn("ATRN", glue.replies()[1].lines)

    def test_detach_returns_unread(self) -> None:
        """
        After the reply to ATRN, C{detach} gives the bytes pipelined after it, exactly, and
        the core is closed with nothing more to say.
        """
        core = ServerCore(self.settings(forbid_unauth_pipelining=False))
        core.start()
        events: list[Event | Sentinel] = []
        for piece in self.chunk(b"EHLO c.example\r\nATRN\r\n220 customer.example\r\n250"):
            core.receive_data(piece)
            if not events:
                event = core.next_event()
                if not isinstance(event, Sentinel):
                    events.append(event)
        self.assertEqual(events, [ExtensionCommand("ATRN", "")])
        core.data_to_send()
        core.send(reply(250, "2.0.0", "OK now reversing the connection"))
        self.assertEqual(core.data_to_send(), b"250 2.0.0 OK now reversing the connection\r\n")
        self.assertEqual(core.detach(), b"220 customer.example\r\n250")
        self.assertIs(core.state, SessionState.CLOSED)
        self.assertIs(core.next_event(), Sentinel.CLOSE)
        core.receive_data(b"more")
        self.assertEqual(core.detach(), b"")
        self.assertEqual(core.data_to_send(), b"")

    def test_reply_must_fit(self) -> None:
        """An extension command takes a 2xx, 4xx or 5xx with an enhanced status code."""
        core = ServerCore(self.settings())
        core.start()
        core.receive_data(b"EHLO c.example\r\n")
        core.next_event()
        core.receive_data(b"ATRN\r\n")
        self.assertIsInstance(core.next_event(), ExtensionCommand)
        self.assertRaises(LocalProtocolError, core.send, reply(354, None, "go ahead"))
        self.assertRaises(LocalProtocolError, core.send, reply(250, None, "no code"))
        core.send(reply(453, "4.3.0", "You have no mail"))
        core.receive_data(b"QUIT\r\n")
        self.assertEqual(core.next_event(), Quit())

    def test_sync_error_names_the_verb(self) -> None:
        """An extension verb sent before EHLO with more behind it is named as the culprit."""
        core = ServerCore(self.settings())
        core.start()
        core.receive_data(b"ATRN\r\nQUIT\r\n")
        self.assertIs(core.next_event(), Sentinel.CLOSE)
        self.assertEqual(core.sync_error, "ATRN")

    def test_settings_checked(self) -> None:
        """Built-in verbs and names that are not words cannot be extension commands."""
        for verb in ("MAIL", "X-ATRN", ""):
            self.assertRaises(
                ValueError, ServerSettings, hostname="provider.example", commands=(verb,)
            )


class ServerExtensionWholeTests(ServerExtensionTestsMixin, SynchronousTestCase):
    """Client bytes fed in one piece."""

    chunk = staticmethod(whole)


class ServerExtensionByteTests(ServerExtensionTestsMixin, SynchronousTestCase):
    """Client bytes fed one at a time."""

    chunk = staticmethod(bytewise)
