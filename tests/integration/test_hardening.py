"""
The hardening rules against the real daemon: what it refuses on the wire, what it records, and
what it sends back.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.peers import alive
from tests.integration.test_smtp_daemon import Conversation, wait_for

ALICE = "alice@example.test"
BOB = "bob@example.test"


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class WireTests(SynchronousTestCase):
    """
    One daemon with the default settings; alice has the alias C{al@example.test}.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), server_extra=f'postmaster = "{ALICE}"')
        accounts = self.daemon.directory / "accounts.toml"
        accounts.write_text(
            accounts.read_text().replace(
                f'address = "{ALICE}"', f'address = "{ALICE}"\naliases = ["al@example.test"]'
            )
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)

    def conversation(self, port: int | None = None) -> Conversation:
        conversation = Conversation(port or self.daemon.mx_port)
        self.addCleanup(conversation.close)
        self.assertTrue(conversation.reply().startswith(b"220 "))
        return conversation

    def delivered(self, address: str, count: int = 1) -> list[bytes]:
        self.assertTrue(
            wait_for(lambda: len(self.daemon.messages(address)) >= count),
            f"{address} did not get {count} messages; log:\n{self.daemon.log()[-3000:]}",
        )
        return self.daemon.messages(address)

    def submission(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.daemon.submission_port, timeout=20)
        self.addCleanup(client.close)
        client.ehlo("laptop.example.test")
        client.starttls(context=_no_verify())
        client.ehlo("laptop.example.test")
        client.login(ALICE, PASSWORDS[ALICE])
        return client

    def test_binarymime_refused(self) -> None:
        """
        C{MAIL FROM ... BODY=BINARYMIME} gets C{555 5.5.4}: BINARYMIME is not in the EHLO
        reply.
        """
        conversation = self.conversation()
        ehlo = conversation.command(b"EHLO client.test")
        self.assertNotIn(b"BINARYMIME", ehlo)
        answer = conversation.command(b"MAIL FROM:<a@elsewhere.test> BODY=BINARYMIME")
        self.assertTrue(answer.startswith(b"555 5.5.4"), answer)

    def test_nul_refused(self) -> None:
        """
        A message holding a NUL byte, in DATA or in BDAT, gets C{550 5.6.0} at its end and is
        not queued; the session goes on and a clean message after it is delivered.
        """
        conversation = self.conversation()
        conversation.command(b"EHLO client.test")
        conversation.command(b"MAIL FROM:<a@elsewhere.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        self.assertTrue(conversation.command(b"DATA").startswith(b"354"))
        answer = conversation.command(b"Subject: nul\r\n\r\nbin\x00ary\r\n.")
        self.assertTrue(answer.startswith(b"550 5.6.0"), answer)
        conversation.command(b"MAIL FROM:<a@elsewhere.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        conversation.send(b"BDAT 5 LAST\r\na\x00b\r\n")
        answer = conversation.reply()
        self.assertTrue(answer.startswith(b"550 5.6.0"), answer)
        self.assertEqual(self.daemon.queue_ids(), [])
        conversation.command(b"MAIL FROM:<a@elsewhere.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        conversation.command(b"DATA")
        answer = conversation.command(b"Subject: clean\r\n\r\ntext\r\n.")
        self.assertTrue(answer.startswith(b"250 2.0.0"), answer)
        [message] = self.delivered(ALICE)
        self.assertIn(b"Subject: clean", message)

    def test_ehlo_argument_in_trace(self) -> None:
        """
        An EHLO argument that is not a domain (C{x;y=z}) does not go into the C{Received:}
        field as sent: the client's address literal takes its place and the name follows in a
        comment, with C{;} and C{=} written as C{%3B} and C{%3D}.
        """
        conversation = self.conversation()
        conversation.command(b"EHLO x;y=z")
        conversation.command(b"MAIL FROM:<a@elsewhere.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        conversation.command(b"DATA")
        answer = conversation.command(b"Subject: trace\r\n\r\ntext\r\n.")
        self.assertTrue(answer.startswith(b"250 2.0.0"), answer)
        [message] = self.delivered(ALICE)
        self.assertIn(b"\nReceived: from [127.0.0.1] (invalid HELO x%3By%3Dz)\n", message)

    def test_delivered_to_loop(self) -> None:
        """
        A message that already says C{Delivered-To: alice@example.test} came back to alice in
        a loop: it is not delivered again, and its sender (bob, local) gets a failure notice
        with C{5.4.6} and "mail forwarding loop".
        """
        conversation = self.conversation()
        conversation.command(b"EHLO forwarder.test")
        conversation.command(b"MAIL FROM:<bob@example.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        conversation.command(b"DATA")
        answer = conversation.command(
            b"Delivered-To: alice@example.test\r\nSubject: looping\r\n\r\nround again\r\n."
        )
        self.assertTrue(answer.startswith(b"250 2.0.0"), answer)
        [notice] = self.delivered(BOB)
        self.assertIn(b"Status: 5.4.6", notice)
        self.assertIn(b"mail forwarding loop for alice@example.test", notice)
        self.assertEqual(self.daemon.messages(ALICE), [])

    def test_notice_size_limit(self) -> None:
        """
        A failure notice returns the whole original up to 50 000 bytes and only its header
        section beyond that (Postfix's bounce_size_limit), even for a logged-in sender whose
        DSN requests are honoured in full; the failures here are forwarding loops.
        """
        client = self.submission()
        loop = b"Delivered-To: alice@example.test\r\n"
        small = loop + b"Subject: small\r\n\r\n" + b"small-body-line\r\n" * 10
        big = loop + b"Subject: big\r\n\r\n" + (b"big-body-line " + b"y" * 70 + b"\r\n") * 800
        self.assertGreater(len(big), 50_000)
        client.sendmail(ALICE, [ALICE], small, mail_options=["RET=FULL"])
        client.sendmail(ALICE, [ALICE], big, mail_options=["RET=FULL"])
        notices = self.delivered(ALICE, 2)
        by_subject = {b"small" if b"Subject: small" in n else b"big": n for n in notices}
        self.assertIn(b"message/rfc822", by_subject[b"small"])
        self.assertIn(b"small-body-line", by_subject[b"small"])
        self.assertIn(b"text/rfc822-headers", by_subject[b"big"])
        self.assertIn(b"Subject: big", by_subject[b"big"])
        self.assertNotIn(b"big-body-line", by_subject[b"big"])
        self.assertLess(len(by_subject[b"big"]), 10_000)

    def test_existing_maildir_stays_reachable(self) -> None:
        """
        A Maildir named after another address of the account (as an LDAP account's Maildir
        was when that value came back first) keeps getting the account's mail while the
        account's own Maildir does not exist.
        """
        former = self.daemon.directory / "mail" / "example.test" / "al" / "Maildir"
        for folder in ("new", "cur", "tmp"):
            (former / folder).mkdir(parents=True)
        conversation = self.conversation()
        conversation.command(b"EHLO client.test")
        conversation.command(b"MAIL FROM:<a@elsewhere.test>")
        conversation.command(b"RCPT TO:<alice@example.test>")
        conversation.command(b"DATA")
        answer = conversation.command(b"Subject: old home\r\n\r\ntext\r\n.")
        self.assertTrue(answer.startswith(b"250 2.0.0"), answer)
        self.assertTrue(wait_for(lambda: len(list((former / "new").iterdir())) == 1))
        self.assertEqual(self.daemon.messages(ALICE), [])

    def test_sender_must_match_login(self) -> None:
        """
        On the submission listener, alice may send as herself and as her alias, and with the
        null sender; bob's address and a foreign one get C{553 5.7.1}.
        """
        client = self.submission()
        for sender in [ALICE, "al@example.test", ""]:
            code, text = client.mail(sender)
            self.assertEqual(code, 250, (sender, text))
            client.rset()
        for sender in [BOB, "ceo@bank.test"]:
            code, text = client.mail(sender)
            self.assertEqual(code, 553, (sender, text))
            self.assertTrue(text.startswith(b"5.7.1 "), text)
        self.assertIn(
            "sender ceo@bank.test refused: not owned by alice@example.test", self.daemon.log()
        )

    def test_control_characters_escaped_in_log(self) -> None:
        """
        A login holding CR LF and a forged log line fails, and reaches the log escaped on
        the line of its own event: no line of the log starts with the forged text.
        """
        forged = "x\r\n2026-12-05T00:00:00+0000 [mdtwist#info] AUTH succeeded for root"
        smtp = smtplib.SMTP("127.0.0.1", self.daemon.submission_port, timeout=20)
        self.addCleanup(smtp.close)
        smtp.ehlo("laptop.example.test")
        smtp.starttls(context=_no_verify())
        smtp.ehlo("laptop.example.test")
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            smtp.login(forged, "wrong")
        self.assertTrue(wait_for(lambda: "x\\x0d\\x0a2026" in self.daemon.log()))
        for line in self.daemon.log().splitlines():
            self.assertFalse(line.startswith("2026-12-05T00:00:00"), line)

    def test_dsn_requests_of_strangers_limited(self) -> None:
        """
        A stranger on the mx listener asks for C{NOTIFY=SUCCESS} and C{RET=FULL} with a
        forged sender: the message is delivered, and no success notice is made (the queue
        ends empty). alice, logged in, gets the success notice she asks for.
        """
        conversation = self.conversation()
        conversation.command(b"EHLO stranger.test")
        conversation.command(b"MAIL FROM:<victim@foreign.test> RET=FULL")
        answer = conversation.command(b"RCPT TO:<alice@example.test> NOTIFY=SUCCESS")
        self.assertTrue(answer.startswith(b"250 "), answer)
        conversation.command(b"DATA")
        answer = conversation.command(
            b"Subject: reflect me\r\n\r\n" + b"x" * 50 + b"\r\n" * 100 + b"."
        )
        self.assertTrue(answer.startswith(b"250 2.0.0"), answer)
        self.delivered(ALICE)
        self.assertTrue(wait_for(lambda: self.daemon.queue_ids() == []), self.daemon.queue_ids())
        self.assertNotIn(": notice to=<", self.daemon.log())
        client = self.submission()
        client.sendmail(
            ALICE,
            [BOB],
            b"Subject: tell me\r\n\r\nbody\r\n",
            rcpt_options=["NOTIFY=SUCCESS"],
        )
        self.delivered(BOB)
        # Maildir names follow the queue id, not the arrival order: tell the two apart.
        delivered = self.delivered(ALICE, 2)
        notices = [m for m in delivered if b"Successful Mail Delivery Report" in m]
        self.assertEqual(len(notices), 1, delivered)
        self.assertIn(b"Subject: reflect me", next(m for m in delivered if m not in notices))


class SessionCapTests(SynchronousTestCase):
    """
    C{smtp.max_sessions}: the sessions of one process over every listener.
    """

    def test_over_the_cap(self) -> None:
        """
        With C{max_sessions = 3}, three sessions (on both listeners) are served and the fourth
        connection is greeted with C{421 4.3.2} and closed; when one ends, a new one is served.
        """
        daemon = Daemon(Path(self.mktemp()), smtp_extra="max_sessions = 3")
        daemon.start()
        self.addCleanup(daemon.stop)
        # The connections that found each listener open count until the server has seen
        # them closed: wait for their disconnect lines.
        self.assertTrue(wait_for(lambda: daemon.log().count(": disconnect from ") == 2))
        open_sessions = []
        for port in [daemon.mx_port, daemon.submission_port, daemon.mx_port]:
            conversation = Conversation(port)
            self.addCleanup(conversation.close)
            greeting = conversation.reply()
            self.assertTrue(greeting.startswith(b"220 "), greeting)
            open_sessions.append(conversation)
        refused = Conversation(daemon.submission_port)
        self.addCleanup(refused.close)
        self.assertTrue(refused.reply().startswith(b"421 4.3.2 "))
        self.assertEqual(refused.sock.recv(100), b"")
        self.assertTrue(open_sessions[0].command(b"QUIT").startswith(b"221"))

        def served() -> bool:
            conversation = Conversation(daemon.mx_port)
            try:
                return conversation.reply().startswith(b"220 ")
            finally:
                conversation.close()

        self.assertTrue(wait_for(served))
        self.assertIn("too many sessions in this process, refused 127.0.0.1", daemon.log())


class TimeoutTests(SynchronousTestCase):
    """
    The real daemon ends sessions whose client says nothing for the command or data timeout
    (the sessions' deadlines are checked once a second), and keeps nothing of a message cut
    off in DATA.
    """

    def test_idle_and_data_timeouts(self) -> None:
        """
        With both timeouts at 2 seconds, an idle session after EHLO and one that stopped in the
        middle of its message get C{421 4.4.2} and are closed; a session that keeps talking
        is not; no message is queued, and the mail log says where each one timed out.
        """
        daemon = Daemon(
            Path(self.mktemp()), smtp_extra="command_timeout = 2.0\ndata_timeout = 2.0"
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        idle, cut_off, busy = (Conversation(daemon.mx_port) for _ in range(3))
        for conversation in (idle, cut_off, busy):
            self.addCleanup(conversation.close)
            self.assertTrue(conversation.reply().startswith(b"220 "))
            self.assertTrue(conversation.command(b"EHLO client.test").startswith(b"250"))
        self.assertTrue(cut_off.command(b"MAIL FROM:<carol@client.test>").startswith(b"250"))
        self.assertTrue(cut_off.command(f"RCPT TO:<{ALICE}>".encode()).startswith(b"250"))
        self.assertTrue(cut_off.command(b"DATA").startswith(b"354"))
        cut_off.send(b"Subject: cut off\r\n\r\nhalf a li")
        for _ in range(20):  # 5 seconds of NOOPs, each well within the timeout
            self.assertTrue(busy.command(b"NOOP").startswith(b"250"))
            time.sleep(0.25)
        for conversation in (idle, cut_off):
            self.assertTrue(conversation.reply().startswith(b"421 4.4.2 "))
            self.assertEqual(conversation.sock.recv(100), b"")
        self.assertTrue(busy.command(b"QUIT").startswith(b"221"))
        log = daemon.log()
        self.assertIn("timeout in COMMAND from", log)
        self.assertIn("timeout in DATA from", log)
        reader = SpoolReader(daemon.spool)
        self.addCleanup(reader.close)
        self.assertEqual(list(reader.list()), [])


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
        check=False,
    )


class StartupTests(SynchronousTestCase):
    """
    Start-up fails safely: every listener opens or the server does not start, --check names
    every bad listener, and one spool serves one server.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), server_extra=f'postmaster = "{ALICE}"')
        self.addCleanup(self.daemon.stop)

    def occupy(self, port: int) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)

    def test_listener_in_use_foreground(self) -> None:
        """
        With the submission port taken, twistd in the foreground exits 1 with one line naming
        the listener and the reason, and no traceback.
        """
        self.occupy(self.daemon.submission_port)
        result = _run(self.daemon.command())
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        endpoint = f"tcp:{self.daemon.submission_port}:interface=127.0.0.1"
        line = f"smtp.listen[1].endpoint: cannot listen on {endpoint}: Address already in use"
        self.assertEqual(result.stderr, f"mdtwist: {line}\n")
        self.assertIn(f"Not starting: {line}", result.stdout)
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_listener_in_use_with_processes(self) -> None:
        """
        With C{server.processes = 2} (SO_REUSEPORT sockets opened by the first process), a
        taken port stops start-up the same way, before any child process starts.
        """
        daemon = Daemon(Path(self.mktemp()), server_extra="processes = 2")
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", daemon.mx_port))
        taken.listen(1)
        result = _run(daemon.command())
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertEqual(
            result.stderr,
            f"mdtwist: smtp.listen[0].endpoint: cannot listen on 127.0.0.1 port"
            f" {daemon.mx_port}: Address already in use\n",
        )
        self.assertNotIn("shard-1", result.stdout)

    def test_listener_in_use_daemonised(self) -> None:
        """
        In the background, twistd exits 1 (not 0), says why, and leaves no pidfile; the log
        file has the line.
        """
        self.occupy(self.daemon.mx_port)
        pidfile = self.daemon.directory / "twistd.pid"
        logfile = self.daemon.directory / "twistd.log"
        command = [
            part
            for part in self.daemon.command()
            if part
            not in ("--nodaemon", "--pidfile=", "--logger", "mdtwist.logging.text_observer")
        ]
        command[1:1] = [f"--pidfile={pidfile}", f"--logfile={logfile}"]
        result = _run(command)
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        self.assertIn("An error has occurred", result.stderr)
        self.assertIn("cannot listen on tcp:", result.stderr)
        # twistd's daemon reports the error to the waiting parent before it removes its
        # pidfile and exits, so the parent can return first: wait for the daemon to end.
        try:
            daemon_pid = int(pidfile.read_text())
        except FileNotFoundError:
            daemon_pid = None
        if daemon_pid is not None:
            self.assertTrue(wait_for(lambda: not alive(daemon_pid)), f"pid {daemon_pid} runs")
        self.assertFalse(pidfile.exists())
        self.assertIn(
            "smtp.listen[0].endpoint: cannot listen on "
            f"tcp:{self.daemon.mx_port}:interface=127.0.0.1: Address already in use",
            logfile.read_text(),
        )

    def test_check_refuses_bad_listeners(self) -> None:
        """
        --check refuses port 99999, port -5 and interface 999.1.1.1, one
        C{file: key: reason} line each.
        """
        config = self.daemon.config
        text = config.read_text()
        for endpoint, reason in [
            ("tcp:99999", "port 99999 is out of range (0 to 65535)"),
            ("tcp:-5", "port -5 is out of range (0 to 65535)"),
            ("tcp:2525:interface=999.1.1.1", "interface 999.1.1.1 is not an IP address"),
        ]:
            config.write_text(
                text.replace(f"tcp:{self.daemon.mx_port}:interface=127.0.0.1", endpoint)
            )
            result = _run(self.daemon.command("--check"))
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(result.stderr, f"{config}: smtp.listen[0].endpoint: {reason}\n")

    def test_check_messages(self) -> None:
        """
        --check says "configuration is valid" on standard output; a missing accounts file is
        named by its key; a duplicate account names the entry it duplicates.
        """
        result = _run(self.daemon.command("--check"))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, f"{self.daemon.config}: configuration is valid\n")
        accounts = self.daemon.directory / "accounts.toml"
        good = accounts.read_text()
        duplicate = good + good[good.index("[[account]]") :]
        accounts.write_text(duplicate)
        result = _run(self.daemon.command("--check"))
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            f"{accounts}: account[2]: address {ALICE} is already used by account[0] ({ALICE})",
            result.stderr,
        )
        accounts.unlink()
        result = _run(self.daemon.command("--check"))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            f"{self.daemon.config}: directory.file.path: cannot read {accounts}:"
            " No such file or directory\n",
        )

    def test_second_server_on_one_spool(self) -> None:
        """
        A second server on the same spool is refused with one line naming the spool and the
        PID of the running one, which goes on serving.
        """
        self.daemon.start()
        assert self.daemon.process is not None
        second = _run(self.daemon.command())
        self.assertEqual(second.returncode, 1, second.stdout + second.stderr)
        self.assertEqual(
            second.stderr,
            f"{self.daemon.config}: spool.directory: {self.daemon.spool} is in use by another"
            f" process (PID {self.daemon.process.pid})\n",
        )
        conversation = Conversation(self.daemon.mx_port)
        self.addCleanup(conversation.close)
        self.assertTrue(conversation.reply().startswith(b"220 "))
