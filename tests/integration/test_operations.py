"""
C{mdtwistctl queue} and C{mdtwistctl account} against the real daemon: every queue action
changes what the server does (a held message stays while others leave, a released or retried
one leaves at once, a deleted one never leaves, a bounced one brings its sender a notice, a
requeued one leaves the bad queue and is delivered), and account changes take effect in the
running server. Also: a closed pipe ends the program quietly.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.sink import Sink

#: The most seconds a test waits for something the daemon does.
_WAIT = 30.0

_ROOT = Path(__file__).resolve().parents[2]


def _wait_for(condition: Callable[[], object], what: str) -> Any:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _send(port: int, sender: str, recipient: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=_WAIT) as client:
        client.send_message(message, from_addr=sender, to_addrs=[recipient])


def _can_log_in(daemon: Daemon, login: str, password: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=_WAIT) as client:
        client.starttls(context=context)
        try:
            client.login(login, password)
        except smtplib.SMTPAuthenticationError:
            return False
    return True


class QueueActionTests(SynchronousTestCase):
    """
    Mail to other domains goes to a smart host that is down at first; a deferred message
    is retried only after an hour, so only the operator's actions move it sooner.
    """

    def setUp(self) -> None:
        self.sink = Sink()
        self.addCleanup(self.sink.stop)
        self.daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            queue="remote_interval = 3600.0\ndelay_notice = false",
            outbound=(
                'mode = "smarthost"\n'
                f'smarthost = "[127.0.0.1]:{self.sink.port}"\n'
                'smarthost_tls = "none"'
            ),
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def ctl(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        program = str(Path(sys.executable).parent / "mdtwistctl")
        return subprocess.run(
            [program, "--config", str(self.daemon.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
            cwd=_ROOT,
        )

    def listing(self, *args: str) -> list[dict[str, Any]]:
        result = self.ctl("queue", "list", "--json", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        entries: list[dict[str, Any]] = json.loads(result.stdout)
        return entries

    def deferred(self, subject: str, sender: str = "s@remote.example") -> str:
        """
        Send a message to another domain and wait until its first attempt failed.

        @return: its queue id.
        """
        # The first message to the stopped sink fails to connect; later ones are deferred
        # by the dead-host cache without a connection. Either is a recorded attempt.
        _send(self.daemon.mx_port, sender, f"{subject}@remote.example", subject)
        entries = self.listing("--recipient", f"{subject}@remote.example")
        self.assertEqual(len(entries), 1)
        entry = _wait_for(
            lambda: [
                e
                for e in self.listing()
                if e["attempts"] > 0 and e["queue_id"] == entries[0]["queue_id"]
            ],
            "the recorded attempt",
        )
        return str(entry[0]["queue_id"])

    def sink_subjects(self) -> list[str]:
        return [
            line.split(b":", 1)[1].strip().decode()
            for message in self.sink.messages()
            for line in message.split(b"\n")
            if line.startswith(b"Subject:")
        ]

    def test_hold_and_release(self) -> None:
        """
        A held message stays in the queue while a retried one leaves; once released it leaves
        too.
        """
        held = self.deferred("held")
        other = self.deferred("other")
        result = self.ctl("queue", "hold", held)
        self.assertEqual((result.returncode, result.stdout), (0, "1 message held\n"))
        self.assertEqual(
            [(e["queue_id"], e["queue"]) for e in self.listing("--queue", "hold")],
            [(held, "hold")],
        )
        status = json.loads(self.ctl("status", "--json").stdout)
        self.assertEqual((status["active"], status["held"]), (1, 1))
        self.sink.start()
        result = self.ctl("queue", "run")
        self.assertEqual(result.returncode, 0, result.stderr)
        _wait_for(lambda: "other" in self.sink_subjects(), "the other message")
        self.assertEqual([e["queue_id"] for e in self.listing()], [held])
        self.assertNotIn(other, [e["queue_id"] for e in self.listing()])
        # Holding it again, or releasing what is not held, is refused with the reason.
        again = self.ctl("queue", "hold", held)
        self.assertEqual(again.returncode, 1)
        self.assertEqual(again.stderr, f"mdtwistctl: {held}: already held\n")
        result = self.ctl("queue", "release", "--all")
        self.assertEqual((result.returncode, result.stdout), (0, "1 message released\n"))
        _wait_for(lambda: "held" in self.sink_subjects(), "the released message")
        _wait_for(lambda: not self.listing(), "an empty queue")

    def test_retry_by_domain(self) -> None:
        """
        C{queue retry --domain} attempts the matching messages at once instead of in an hour.
        """
        self.deferred("first")
        self.sink.start()
        result = self.ctl("queue", "retry", "--domain", "REMOTE.example")
        self.assertEqual((result.returncode, result.stdout), (0, "1 message retried\n"))
        _wait_for(lambda: "first" in self.sink_subjects(), "the retried message")
        # Nothing left to retry: said so, status 0.
        _wait_for(lambda: not self.listing(), "an empty queue")
        result = self.ctl("queue", "retry", "--domain", "remote.example")
        self.assertEqual((result.returncode, result.stdout), (0, "No message matches\n"))

    def test_delete(self) -> None:
        """
        C{queue delete} asks first; with C{--yes} the message is gone and is never delivered,
        while another one is.
        """
        doomed = self.deferred("doomed")
        self.deferred("kept")
        refused = self.ctl("queue", "delete", doomed)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("Delete 1 message? Give --yes", refused.stderr)
        self.assertEqual(len(self.listing()), 2)
        result = self.ctl("queue", "delete", doomed, "--yes")
        self.assertEqual((result.returncode, result.stdout), (0, "1 message deleted\n"))
        self.sink.start()
        self.ctl("queue", "run")
        _wait_for(lambda: "kept" in self.sink_subjects(), "the kept message")
        _wait_for(lambda: not self.listing(), "an empty queue")
        self.assertNotIn("doomed", self.sink_subjects())
        self.assertIn(f"Queue {doomed}: delete by the operator", self.daemon.log())

    def test_bounce(self) -> None:
        """
        C{queue bounce} gives up on a message: its local sender gets a failure notice naming
        the operator's reason, and the message leaves the queue.
        """
        self.deferred("bounced", sender="alice@example.test")
        result = self.ctl("queue", "bounce", "--sender", "alice@example.test", "--yes")
        self.assertEqual((result.returncode, result.stdout), (0, "1 message bounced\n"))
        notices = _wait_for(
            lambda: self.daemon.messages("alice@example.test"), "the notice to alice"
        )
        self.assertIn(b"delivery cancelled by the postmaster", notices[0])
        self.assertIn(b"bounced@remote.example", notices[0])
        _wait_for(lambda: not self.listing(), "an empty queue")

    def test_unknown_id_and_no_selection(self) -> None:
        """
        An id that is not queued is named with status 1; an action without ids, conditions or
        --all is refused; bad ids are refused before anything is sent.
        """
        result = self.ctl("queue", "hold", "0000000000FF")
        self.assertEqual(
            (result.returncode, result.stderr), (1, "mdtwistctl: 0000000000FF: no such message\n")
        )
        result = self.ctl("queue", "hold")
        self.assertEqual(result.returncode, 1)
        self.assertIn("say which messages", result.stderr)
        result = self.ctl("queue", "hold", "nonsense!")
        self.assertEqual(result.returncode, 1)
        self.assertIn("'nonsense!' is not a queue id", result.stderr)


class RequeueTests(SynchronousTestCase):
    """
    A notice that cannot be delivered is parked in the bad queue; C{queue requeue} takes it
    out and it is delivered once the smart host accepts mail.
    """

    def setUp(self) -> None:
        self.refusing = Sink(options=("-f", "RCPT", "-B", "550 5.1.1 no such user"))
        self.addCleanup(self.refusing.stop)
        self.daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            outbound=(
                'mode = "smarthost"\n'
                f'smarthost = "[127.0.0.1]:{self.refusing.port}"\n'
                'smarthost_tls = "none"'
            ),
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_requeue(self) -> None:
        """
        The parked notice is listed in the bad queue; requeued, it is delivered, without the
        bad-queue header.
        """
        self.refusing.start()
        _send(self.daemon.mx_port, "s@remote.example", "r@remote.example", "lost")

        def parked() -> list[dict[str, Any]]:
            result = self.daemon.ctl("queue", "list", "--json", "--queue", "bad")
            entries: list[dict[str, Any]] = json.loads(result.stdout)
            return entries

        entries = _wait_for(parked, "the parked notice")
        self.assertEqual(entries[0]["kind"], "notice")
        self.assertIn("undeliverable delivery status notification", entries[0]["reason"])
        port = self.refusing.port
        self.refusing.stop()
        accepting = Sink()
        accepting.port = port
        self.addCleanup(accepting.stop)
        accepting.start()
        result = self.daemon.ctl("queue", "requeue", "--all")
        self.assertEqual((result.returncode, result.stdout), (0, "1 message requeued\n"))
        received = _wait_for(accepting.messages, "the requeued notice")
        self.assertIn(b"lost", received[0])
        self.assertNotIn(b"X-Mdtwist-Bad-Queue-Reason", received[0])
        _wait_for(lambda: not parked(), "an empty bad queue")


class AccountTests(SynchronousTestCase):
    """
    C{mdtwistctl account} changes the accounts file and the running server follows at once
    (its own check of the file is hourly here).
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), accounts_extra="check_interval = 3600.0")
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def ctl(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        program = str(Path(sys.executable).parent / "mdtwistctl")
        return subprocess.run(
            [program, "--config", str(self.daemon.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
            cwd=_ROOT,
        )

    def test_add_disable_passwd(self) -> None:
        """
        An added account can log in; a disabled one cannot and its mail is refused; a new
        password replaces the old one.
        """
        result = self.ctl(
            "account", "add", "carol@example.test", "--name", "Carol", stdin="c-pw\n"
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(
            result.stdout,
            "Added carol@example.test\nThe server reloaded its accounts (1 process)\n",
        )
        self.assertTrue(_can_log_in(self.daemon, "carol@example.test", "c-pw"))
        listing = json.loads(self.ctl("account", "list", "--json").stdout)
        self.assertEqual(
            [(a["address"], a["enabled"]) for a in listing],
            [
                ("alice@example.test", True),
                ("bob@example.test", True),
                ("carol@example.test", True),
            ],
        )

        result = self.ctl("account", "disable", "carol@example.test")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertFalse(_can_log_in(self.daemon, "carol@example.test", "c-pw"))
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
            client.ehlo("client.example")
            client.mail("s@remote.example")
            code, text = client.rcpt("carol@example.test")
        self.assertEqual(code, 550)
        self.assertIn(b"5.2.1", text)

        result = self.ctl("account", "passwd", "alice@example.test", stdin="new-alice\n")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertTrue(_can_log_in(self.daemon, "alice@example.test", "new-alice"))
        self.assertFalse(_can_log_in(self.daemon, "alice@example.test", "alice-pw"))

    def test_add_refused(self) -> None:
        """
        An address that exists, or of a domain that is not local, is refused and the file is
        left as it was.
        """
        before = (self.daemon.directory / "accounts.toml").read_bytes()
        result = self.ctl("account", "add", "alice@example.test", stdin="x\n")
        self.assertEqual(result.returncode, 1)
        self.assertIn("address alice@example.test is already used", result.stderr)
        result = self.ctl("account", "add", "x@elsewhere.example", stdin="x\n")
        self.assertEqual(result.returncode, 1)
        self.assertIn("domain elsewhere.example is not in domains", result.stderr)
        self.assertEqual((self.daemon.directory / "accounts.toml").read_bytes(), before)


class ClosedPipeTests(SynchronousTestCase):
    """
    A reader that stops early (C{| head}) ends the program quietly.
    """

    def test_head(self) -> None:
        """
        Long output into a pipe closed after its first line: status 0, nothing on standard
        error.
        """
        directory = Path(self.mktemp())
        daemon = Daemon(directory)
        accounts = directory / "accounts.toml"
        text = accounts.read_text()
        password = text.split('password = "', 1)[1].split('"', 1)[0]
        text += "".join(
            f'[[account]]\naddress = "user{i}@example.test"\npassword = "{password}"\n'
            for i in range(3000)
        )
        accounts.write_text(text)
        program = str(Path(sys.executable).parent / "mdtwistctl")
        process = subprocess.Popen(
            [program, "--config", str(daemon.config), "account", "list"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=_ROOT,
            env=dict(os.environ, PYTHONPATH=str(_ROOT)),
        )
        assert process.stdout is not None and process.stderr is not None
        self.assertTrue(process.stdout.readline().startswith(b"alice@example.test"))
        process.stdout.close()
        errors = process.stderr.read()
        process.stderr.close()
        self.assertEqual((process.wait(timeout=60), errors), (0, b""))


class AccountSharingTests(SynchronousTestCase):
    """
    C{account add} with Domain Sharing on asks a real peer (our daemon with its Minger server)
    before it adds an address.
    """

    def setUp(self) -> None:
        from tests.integration.test_minger_daemon import SECRET, free_udp_port

        minger_port = free_udp_port()
        self.peer = Daemon(
            Path(self.mktemp()),
            extra=f"""
[minger]
enable = true
port = {minger_port}
secret = "{SECRET}"
allowed_sources = ["127.0.0.0/8"]
""",
        )
        self.addCleanup(self.peer.stop)
        with (self.peer.directory / "accounts.toml").open("a") as accounts:
            accounts.write(
                f'[[account]]\naddress = "erin@example.test"\npassword = "{_password_hash()}"\n'
            )
        self.peer.start()
        self.here = Daemon(
            Path(self.mktemp()),
            extra=f"""
[sharing]
enable = true
timeout = 0.5
attempts = 2

[[sharing.peers]]
host = "127.0.0.1:{self.peer.mx_port}"
minger_port = {minger_port}
password = "{SECRET}"
""",
        )

    def add(self, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
        program = str(Path(sys.executable).parent / "mdtwistctl")
        return subprocess.run(
            [program, "--config", str(self.here.config), "account", "add", address, *extra],
            input="pw\n",
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
            cwd=_ROOT,
        )

    def test_peer_decides(self) -> None:
        """
        An address the peer has is refused; one it does not know is added; while the peer
        cannot be asked, only C{--force} adds one.
        """
        route = f"127.0.0.1:{self.peer.mx_port}"
        result = self.add("erin@example.test")
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"erin@example.test: {route}  active\n", result.stdout)
        self.assertIn("erin@example.test exists on the Domain Sharing peer", result.stderr)
        result = self.add("frank@example.test")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(f"frank@example.test: {route}  unknown\n", result.stdout)
        self.assertIn("Added frank@example.test\n", result.stdout)
        self.peer.stop()
        result = self.add("gina@example.test")
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot verify that no Domain Sharing peer has the address", result.stderr)
        result = self.add("gina@example.test", "--force")
        self.assertEqual(result.returncode, 0, result.stderr)
        accounts = (self.here.directory / "accounts.toml").read_text()
        self.assertIn('"frank@example.test"', accounts)
        self.assertIn('"gina@example.test"', accounts)
        self.assertNotIn('"erin@example.test"', accounts)


def _password_hash() -> str:
    from mdtwist.directory.passwords import hash_password

    return hash_password("erin-pw")


class TwoProcessQueueTests(SynchronousTestCase):
    """
    With two processes every process acts on its own spool shard, and the answers add up.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            server_extra="processes = 2",
            queue="remote_interval = 3600.0\ndelay_notice = false",
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def listing(self) -> list[dict[str, Any]]:
        result = self.daemon.ctl("queue", "list", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        entries: list[dict[str, Any]] = json.loads(result.stdout)
        return entries

    def test_hold_and_delete_across_shards(self) -> None:
        """
        Mail queued by both processes is held by one command, counted per shard by
        C{status}, and deleted by another.
        """
        _wait_for(
            lambda: json.loads(self.daemon.ctl("status", "--json").stdout)["missing"] == [],
            "the child",
        )
        sent = 0
        while {entry["queue_id"][:2] for entry in self.listing()} != {"00", "01"}:
            _send(self.daemon.mx_port, "s@remote.example", f"r{sent}@remote.example", "x")
            sent += 1
            self.assertLess(sent, 100, "no message reached the second process")
        entries = _wait_for(lambda: len(e := self.listing()) == sent and e, "every message queued")
        result = self.daemon.ctl("queue", "hold", "--all")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, f"{sent} messages held\n")
        status = json.loads(self.daemon.ctl("status", "--json").stdout)
        self.assertEqual(status["held"], sent)
        self.assertEqual([shard["held"] > 0 for shard in status["shards"]], [True, True])
        # An attempt that started before the hold may still be under way: such a message is
        # refused ("being delivered now") until it ends.
        deleted: list[str] = []

        def delete() -> bool:
            result = self.daemon.ctl("queue", "delete", "--all", "--yes", "--json")
            deleted.extend(json.loads(result.stdout)["done"])
            return result.returncode == 0

        _wait_for(delete, "every message deleted")
        self.assertEqual(len(deleted), sent)
        self.assertEqual(self.listing(), [])
        self.assertEqual(len(entries), sent)
