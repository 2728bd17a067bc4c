"""
Our ATRN client in the real daemon against a scripted ODMR provider (RFC 2645): the office
authenticates with CRAM-MD5, sends ATRN for its two domains, and after the provider's
single-line 250 takes the held mail over the same connection, into its mailboxes.

No ODMR provider other than mdtwist's own can be installed here (the dequeue notes, section
5), so the provider side is a short script following RFC 2645's example; the test against
mdtwist's own provider is in L{tests.integration.test_odmr_end_to_end}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import threading
from pathlib import Path
from typing import BinaryIO, cast

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.passwords import hash_password
from tests.integration.daemon import Daemon
from tests.integration.peers import free_port
from tests.integration.test_smtp_daemon import wait_for

SECRET = "tanstaaftanstaaf"
CHALLENGE = b"<1896.697170952@provider.test>"
HELD = [
    ("alice@office.test", b"Subject: one\r\n\r\n.a line that starts with a dot\r\n..\r\nend\r\n"),
    ("bob@branch.test", b"Subject: two\r\n\r\nplain\r\n"),
]


def stuffed(body: bytes) -> bytes:
    """Dot-stuff a message and end it."""
    lines = body.split(b"\r\n")
    return (
        b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"
    )


class ScriptedProvider:
    """
    An ODMR provider for one session, in a thread: greeting, EHLO with AUTH CRAM-MD5 and
    ATRN, CRAM-MD5 checked, then a single-line 250 to ATRN, and then the SMTP client that
    delivers the held messages on the same connection.

    @ivar port: its port on 127.0.0.1.
    @ivar transcript: every line received, in order.
    @ivar replies: the customer's replies after the turn, one per command.
    @ivar error: what went wrong in the thread, or L{None}.
    """

    def __init__(self, answer: bytes = b"250 OK now reversing the connection") -> None:
        self.port = free_port()
        self.answer = answer
        self.transcript: list[bytes] = []
        self.replies: list[bytes] = []
        self.error: BaseException | None = None
        self.refused = b""
        self.done = threading.Event()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(60)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket and wait for the thread."""
        self._server.close()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            connection, _ = self._server.accept()
            with connection:
                connection.settimeout(60)
                self._session(cast(BinaryIO, connection.makefile("rwb", buffering=0)))
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.done.set()

    def _line(self, stream: BinaryIO) -> bytes:
        line: bytes = stream.readline()
        self.transcript.append(line)
        return line

    def _reply(self, stream: BinaryIO) -> bytes:
        # A whole (possibly multi-line) reply of the customer.
        lines = b""
        while True:
            line = stream.readline()
            lines += line
            if len(line) < 4 or line[3:4] != b"-":
                self.replies.append(lines)
                return lines

    def _session(self, stream: BinaryIO) -> None:
        write = stream.write
        write(b"220 provider.test ODMR service ready\r\n")
        assert self._line(stream).startswith(b"EHLO ")
        write(b"250-provider.test\r\n250-AUTH CRAM-MD5\r\n250 ATRN\r\n")
        assert self._line(stream) == b"AUTH CRAM-MD5\r\n"
        write(b"334 " + base64.b64encode(CHALLENGE) + b"\r\n")
        login, digest = base64.b64decode(self._line(stream).strip()).split(b" ")
        expected = hmac.new(SECRET.encode(), CHALLENGE, hashlib.md5).hexdigest().encode()
        if (login, digest) != (b"office.test", expected):
            write(b"535 5.7.8 Authentication failed\r\n")
            return
        write(b"235 2.7.0 Authentication successful\r\n")
        assert self._line(stream) == b"ATRN office.test,branch.test\r\n"
        write(self.answer + b"\r\n")
        if not self.answer.startswith(b"250 "):
            assert self._line(stream) == b"QUIT\r\n"
            write(b"221 2.0.0 Bye\r\n")
            return
        # The roles have swapped: the customer greets, we deliver.
        assert self._reply(stream).startswith(b"220 ")
        write(b"EHLO provider.test\r\n")
        assert self._reply(stream).startswith(b"250")
        for recipient, body in HELD:
            write(b"MAIL FROM:<held@remote.test>\r\n")
            assert self._reply(stream).startswith(b"250")
            write(b"RCPT TO:<" + recipient.encode() + b">\r\n")
            assert self._reply(stream).startswith(b"250")
            write(b"DATA\r\n")
            assert self._reply(stream).startswith(b"354")
            write(stuffed(body))
            assert self._reply(stream).startswith(b"250")
        write(b"MAIL FROM:<held@remote.test>\r\n")
        self._reply(stream)
        write(b"RCPT TO:<carol@elsewhere.test>\r\n")
        self.refused = self._reply(stream)
        write(b"QUIT\r\n")
        assert self._reply(stream).startswith(b"221")


class ATRNClientDaemonTests(SynchronousTestCase):
    """The office daemon as an ODMR customer of a scripted provider."""

    def office(self, provider: ScriptedProvider) -> Daemon:
        daemon = Daemon(
            Path(self.mktemp()),
            domain="office.test",
            extra=f"""
[dequeue]
every = 100000

[[dequeue.signal]]
domain = "office.test"
host = "127.0.0.1"
port = {provider.port}
text = "ATRN office.test,branch.test"
login = "office.test"
password = "{SECRET}"
""",
        )
        # Two local domains, a mailbox in each.
        (daemon.directory / "accounts.toml").write_text(
            'domains = ["office.test", "branch.test"]\n'
            + "".join(
                f'[[account]]\naddress = "{address}"\npassword = "{hash_password("pw")}"\n'
                for address in ("alice@office.test", "bob@branch.test")
            )
        )
        self.addCleanup(daemon.stop)
        return daemon

    def test_released_mail_arrives(self) -> None:
        """
        The first queue run sends ATRN; after the 250 the provider delivers one message per
        domain on the same connection, dot-stuffed lines arrive intact, a recipient outside
        the released domains is refused with 550 5.7.1, and the provider's QUIT is answered.
        """
        provider = ScriptedProvider()
        self.addCleanup(provider.stop)
        office = self.office(provider)
        office.start()
        self.assertTrue(provider.done.wait(60), office.log())
        self.assertIsNone(provider.error, office.log())
        self.assertTrue(provider.refused.startswith(b"550 5.7.1 "), provider.replies)
        self.assertTrue(
            wait_for(
                lambda: (
                    office.messages("alice@office.test") and office.messages("bob@branch.test")
                ),
                timeout=30.0,
            ),
            office.log(),
        )
        [alice] = office.messages("alice@office.test")
        self.assertTrue(
            alice.replace(b"\r\n", b"\n").endswith(b"\n.a line that starts with a dot\n..\nend\n")
        )
        self.assertIn("released", office.log())

    def test_nothing_waiting(self) -> None:
        """A 453 is no error: the office says QUIT and logs that nothing is waiting."""
        provider = ScriptedProvider(b"453 You have no mail")
        self.addCleanup(provider.stop)
        office = self.office(provider)
        office.start()
        self.assertTrue(provider.done.wait(60), office.log())
        self.assertIsNone(provider.error, office.log())
        self.assertTrue(wait_for(lambda: "no-mail" in office.log()), office.log())
