"""
Inbound SMTP against the real daemon, with real clients: swaks, smtplib and raw sockets.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.peers import find_program

ALICE = "alice@example.test"
BOB = "bob@example.test"


def wait_for(predicate: Callable[[], object], timeout: float = 15.0) -> bool:
    """
    Poll a condition ten times a second until it holds or the time is up.

    @param predicate: a callable without arguments.
    @return: whether it held.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


class Conversation:
    """
    A raw SMTP connection: send exact bytes, read replies.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """
        @return: the next complete reply (all its lines).
        """
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r} {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


class SMTPDaemonTests(SynchronousTestCase):
    """
    Mail reaches the Maildir through the real daemon, and the safety rules hold on the wire.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()))
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.swaks_path = find_program("swaks")

    def swaks(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.swaks_path, "--server", "127.0.0.1", "--timeout", "20", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def submit(
        self,
        *extra: str,
        tls: bool = True,
        mechanism: str = "PLAIN",
        password: str = PASSWORDS[ALICE],
        to: str = BOB,
    ) -> subprocess.CompletedProcess[str]:
        """
        Run swaks on the submission listener, logging in as alice, sending from her.
        """
        return self.swaks(
            "--port",
            str(self.daemon.submission_port),
            *(["--tls"] if tls else []),
            "--auth",
            mechanism,
            "--auth-user",
            ALICE,
            "--auth-password",
            password,
            "--from",
            ALICE,
            "--to",
            to,
            *extra,
        )

    def delivered(self, address: str, count: int = 1) -> list[bytes]:
        self.assertTrue(
            wait_for(lambda: len(self.daemon.messages(address)) >= count),
            f"{address} did not get {count} messages; log:\n{self.daemon.log()[-3000:]}",
        )
        return self.daemon.messages(address)

    def settled(self) -> None:
        """
        Wait until everything sent before now has been dealt with: a marker message to alice
        is sent on a new connection, and this returns once it is in her Maildir and the queue
        is empty. Mail queued earlier (by a session that ended before the marker's began) has
        then been delivered or bounced too, so what is absent now stays absent.
        """
        before = len(self.daemon.messages(ALICE))
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=20) as client:
            client.sendmail("marker@elsewhere.test", [ALICE], b"Subject: marker\r\n\r\nm\r\n")
        self.delivered(ALICE, before + 1)
        self.assertTrue(
            wait_for(lambda: self.daemon.queue_ids() == []),
            f"queue not empty: {self.daemon.log()[-3000:]}",
        )

    def unmarked(self, address: str) -> list[bytes]:
        """
        @return: the messages of an address, without the markers of L{settled}.
        """
        return [m for m in self.daemon.messages(address) if b"Subject: marker" not in m]

    def test_swaks_to_local_mailbox(self) -> None:
        """
        The swaks client delivers through the mx listener without AUTH; the message lands once
        in the Maildir with a Received line of ours on top of the original headers.
        """
        result = self.swaks(
            "--port",
            str(self.daemon.mx_port),
            "--from",
            "someone@elsewhere.test",
            "--to",
            ALICE,
            "--header",
            "Subject: hello",
            "--body",
            "first message",
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        [message] = self.delivered(ALICE)
        self.assertIn(b"Subject: hello", message)
        self.assertIn(b"first message", message)
        self.assertIn(b"by mail.example.test (mdtwist) with ESMTP", message)
        self.settled()
        self.assertEqual(len(self.unmarked(ALICE)), 1)

    def test_swaks_submission_starttls_auth(self) -> None:
        """
        On submission, swaks does STARTTLS, then AUTH PLAIN or LOGIN, and the message is
        delivered; the Received line says ESMTPSA with the TLS version.
        """
        for mechanism in ("PLAIN", "LOGIN"):
            result = self.submit("--header", f"Subject: via {mechanism}", mechanism=mechanism)
            self.assertEqual(result.returncode, 0, result.stdout)
        messages = self.delivered(BOB, 2)
        self.assertEqual(len(messages), 2)
        for message in messages:
            self.assertIn(b"with ESMTPSA", message)
            self.assertIn(b"TLS", message.split(b"\r\n\r\n")[0])

    def test_swaks_submission_refuses_plaintext_auth_and_anonymous_mail(self) -> None:
        """
        Without TLS the submission listener offers no AUTH (swaks exits 28: auth failed), and
        MAIL without AUTH is refused (swaks exits 23); nothing is queued.
        """
        result = self.submit(tls=False)
        self.assertEqual(result.returncode, 28, result.stdout)
        result = self.swaks(
            "--port", str(self.daemon.submission_port), "--from", ALICE, "--to", BOB
        )
        self.assertEqual(result.returncode, 23, result.stdout)
        self.assertIn("530 5.7.0", result.stdout)
        self.assertEqual(self.daemon.queue_ids(), [])

    def test_swaks_wrong_password(self) -> None:
        """
        A wrong password gets 535 5.7.8 (swaks exits 28) and the password is not logged.
        """
        result = self.submit(password="not-the-password-xyz")
        self.assertEqual(result.returncode, 28, result.stdout)
        self.assertIn("535 5.7.8", result.stdout)
        self.assertNotIn("not-the-password-xyz", self.daemon.log())

    def test_swaks_pipelining(self) -> None:
        """
        With PIPELINING, swaks sends MAIL, RCPT and DATA together; each recipient gets a copy.
        """
        result = self.swaks(
            "--port",
            str(self.daemon.mx_port),
            "--pipeline",
            "--from",
            "x@elsewhere.test",
            "--to",
            f"{ALICE},{BOB}",
            "--header",
            "Subject: pipelined",
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertIn("PIPELINING", result.stdout)
        self.delivered(ALICE)
        self.delivered(BOB)

    def test_smtplib_unknown_and_known_recipients(self) -> None:
        """
        smtplib: an unknown local user is refused at RCPT with 550 5.1.1 while the known ones
        get the message.
        """
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=20) as client:
            refused = client.sendmail(
                "x@elsewhere.test",
                [ALICE, "nobody@example.test", BOB],
                b"Subject: mixed\r\n\r\nbody\r\n",
            )
        self.assertEqual(list(refused), ["nobody@example.test"])
        self.assertEqual(refused["nobody@example.test"][0], 550)
        self.assertIn(b"5.1.1", refused["nobody@example.test"][1])
        self.delivered(ALICE)
        self.delivered(BOB)

    def test_relay_battery_refused_for_strangers(self) -> None:
        """
        The classic relay probes from an untrusted, unauthenticated client are all refused at
        RCPT, and no message for a foreign domain is ever queued.
        """
        target, victim, host = "foreign.test", "victim", "mail.example.test"
        local, literal = "example.test", "[127.0.0.1]"
        probes = [
            (b"<>", f"<{victim}@{target}>"),
            (f"<s@{target}>".encode(), f"<{victim}@{target}>"),
            (f"<s@{host}>".encode(), f"<{victim}@{target}>"),
            (f"<s@{literal}>".encode(), f"<{victim}@{target}>"),
            (f"<s@{local}>".encode(), f"<{victim}@{target}>"),
        ]
        tricks = [
            f"<{victim}%{target}@{literal}>",
            f"<{victim}%{target}@{host}>",
            f'<"{victim}@{target}">',
            f'<"{victim}%{target}">',
            f"<{victim}@{target}@{literal}>",
            f'<"{victim}@{target}"@{literal}>',
            f"<{victim}@{target}@{host}>",
            f"<@{literal}:{victim}@{target}>",
            f"<@{host}:{victim}@{target}>",
            f"<{target}!{victim}>",
            f"<{target}!{victim}@{literal}>",
            f"<{target}!{victim}@{host}>",
            f"<{victim}@{target}.>",
            f"<{victim.upper()}@{target.upper()}>",
            f"<{victim}@[192.0.2.9]>",
            f"<{victim}@[IPv6:2001:db8::1]>",
            f"<{victim}@localhost>",
            f"<{victim}@evil{local}>",
            f"<{victim}@{local}.{target}>",
            f"<@a.test,@b.test,@c.test:{victim}@{target}>",
            f"{victim}@{target}",
        ]
        probes += [(f"<s@{literal}>".encode(), rcpt) for rcpt in tricks]
        local_tricks = [
            f"<{victim}%{target}@{local}>",
            f'<"{victim}@{target}"@{local}>',
            f"<{target}!{victim}@{local}>",
        ]
        probes += [(b"<s@elsewhere.test>", rcpt) for rcpt in local_tricks]
        accepted = []
        for sender, rcpt in probes:
            # A session per probe: refusals count towards the error limit (421 after 10).
            conversation = Conversation(self.daemon.mx_port)
            try:
                conversation.reply()
                conversation.command(b"EHLO prober.test")
                mail = conversation.command(b"MAIL FROM:" + sender)
                self.assertTrue(mail.startswith(b"250"), (sender, mail))
                answer = conversation.command(b"RCPT TO:" + rcpt.encode())
            finally:
                conversation.close()
            if not answer.startswith(b"5"):
                accepted.append((rcpt, answer))
        self.assertEqual(accepted, [])
        self.assertEqual(self.daemon.queue_ids(), [])

    def test_relay_allowed_after_auth(self) -> None:
        """
        The same foreign recipient is accepted after AUTH: the refusal above is a rule, not a
        blanket "no" (the message stays queued for remote delivery).
        """
        result = self.submit(to="victim@foreign.test")
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertEqual(len(self.daemon.queue_ids()), 1)

    def test_smuggling_probes_inject_nothing(self) -> None:
        """
        A body with a bare-LF or bare-CR end-of-data marker followed by a whole second
        transaction is one message, refused with 550 5.5.2; the second transaction never
        runs and nothing is delivered.
        """
        markers = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r"]
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        conversation.reply()
        conversation.command(b"EHLO prober.test")
        for marker in markers:
            self.assertTrue(
                conversation.command(b"MAIL FROM:<a@elsewhere.test>").startswith(b"250")
            )
            self.assertTrue(
                conversation.command(b"RCPT TO:<" + ALICE.encode() + b">").startswith(b"250")
            )
            self.assertTrue(conversation.command(b"DATA").startswith(b"354"))
            conversation.send(
                b"Subject: first\r\n\r\nhello"
                + marker
                + b"MAIL FROM:<ceo@bank.test>\r\nRCPT TO:<"
                + BOB.encode()
                + b">\r\nDATA\r\n"
                + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
            )
            answer = conversation.reply()
            self.assertTrue(answer.startswith(b"550 5.5.2"), (marker, answer))
        self.assertTrue(conversation.command(b"NOOP").startswith(b"250"))
        self.assertTrue(conversation.command(b"QUIT").startswith(b"221"))
        self.settled()
        self.assertEqual(self.unmarked(ALICE), [])
        self.assertEqual(self.daemon.messages(BOB), [])

    def test_bdat_chunks_reach_the_maildir(self) -> None:
        """
        A message sent in pipelined BDAT chunks (RFC 3030), one of them holding what looks like
        an end-of-data marker and a second transaction, arrives whole as one message.
        """
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        conversation.reply()
        self.assertIn(b"CHUNKING", conversation.command(b"EHLO chunker.test"))
        first = b"Subject: chunked\r\n\r\nhello\r\n.\r\nMAIL FROM:<ceo@bank.test>\r\n"
        last = b"bye\r\n"
        conversation.send(
            b"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<" + ALICE.encode() + b">\r\n"
            b"BDAT %d\r\n" % len(first) + first + b"BDAT %d LAST\r\n" % len(last) + last
        )
        replies = [conversation.reply() for _ in range(4)]
        self.assertEqual([r[:9] for r in replies[:3]], [b"250 2.1.0", b"250 2.1.5", b"250 2.0.0"])
        self.assertTrue(replies[3].startswith(b"250 2.0.0 Ok: queued as "), replies[3])
        [stored] = self.delivered(ALICE)
        self.assertIn(b"\nhello\n.\nMAIL FROM:<ceo@bank.test>\nbye\n", stored)
        self.assertTrue(conversation.command(b"QUIT").startswith(b"221"))

    def test_starttls_injection(self) -> None:
        """
        A command pipelined after STARTTLS in the same packet is discarded: after the
        handshake the first reply answers our EHLO, and the session needs a new EHLO.
        """
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        conversation.reply()
        conversation.command(b"EHLO prober.test")
        conversation.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        self.assertTrue(conversation.reply().startswith(b"220 2.0.0"))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conversation.sock = context.wrap_socket(conversation.sock)
        self.assertTrue(conversation.command(b"MAIL FROM:<a@b.test>").startswith(b"503 5.5.1"))
        ehlo = conversation.command(b"EHLO prober.test")
        self.assertTrue(ehlo.startswith(b"250-mail.example.test"), ehlo)
        self.assertNotIn(b"STARTTLS", ehlo)
        self.assertTrue(conversation.command(b"STARTTLS").startswith(b"503 5.5.1"))

    def test_client_that_does_not_wait_is_cut_off(self) -> None:
        """
        A client that sends its message before the 354 gets C{554 5.5.0} and is disconnected;
        nothing is delivered, and the log names the command and the client.
        """
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        conversation.reply()
        conversation.command(b"EHLO hasty.test")
        conversation.send(
            b"MAIL FROM:<a@elsewhere.test>\r\nRCPT TO:<" + ALICE.encode() + b">\r\nDATA\r\n"
            b"Subject: too soon\r\n\r\nhello\r\n.\r\n"
        )
        replies = [conversation.reply() for _ in range(3)]
        self.assertEqual([r[:9] for r in replies], [b"250 2.1.0", b"250 2.1.5", b"554 5.5.0"])
        self.assertEqual(conversation.sock.recv(4096), b"")
        self.settled()
        self.assertEqual(self.unmarked(ALICE), [])
        self.assertTrue(
            wait_for(
                lambda: (
                    "improper command pipelining after DATA from 127.0.0.1" in self.daemon.log()
                )
            ),
            self.daemon.log()[-3000:],
        )

    def test_bad_command_lines(self) -> None:
        """
        A bare LF command, an over-long line and an unknown command each get a reply with an
        enhanced status code, and the session goes on.
        """
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        conversation.reply()
        conversation.send(b"EHLO bare.test\n")
        self.assertTrue(conversation.command(b"").startswith(b"500 5.5.2"))
        self.assertTrue(conversation.command(b"X" * 600).startswith(b"500 5.5.6"))
        self.assertTrue(conversation.command(b"FROB").startswith(b"500 5.5.1"))
        self.assertTrue(conversation.command(b"VRFY alice").startswith(b"252 2.1.5"))
        self.assertTrue(conversation.command(b"NOOP").startswith(b"250 2.0.0"))


class TrustedNetworkTests(SynchronousTestCase):
    """
    A client in a configured trusted network may relay without AUTH.
    """

    def test_trusted_client_relays(self) -> None:
        """
        From 127.0.0.0/8, listed as trusted, a foreign recipient is accepted and queued.
        """
        daemon = Daemon(Path(self.mktemp()), trusted_networks=["127.0.0.0/8"])
        daemon.start()
        self.addCleanup(daemon.stop)
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
            refused = client.sendmail(
                "a@example.test", ["victim@foreign.test"], b"Subject: x\r\n\r\ny\r\n"
            )
        self.assertEqual(refused, {})
        reader = SpoolReader(daemon.spool)
        self.addCleanup(reader.close)
        [entry] = reader.list()
        self.assertEqual(entry.sender, "a@example.test")
