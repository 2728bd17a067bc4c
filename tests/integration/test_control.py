"""
C{mdtwistctl} against the real daemon over its control socket: status, queue run, reload (and
SIGHUP), with one and with two processes, and the answer when no server runs.
"""

from __future__ import annotations

import json
import signal
import smtplib
import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage
from functools import partial
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist import __version__
from mdtwist.directory.passwords import hash_password
from tests.integration.daemon import Daemon
from tests.integration.sink import Sink

#: The most seconds a test waits for something the daemon does.
_WAIT = 30.0


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _can_log_in(daemon: Daemon, login: str, password: str) -> bool:
    # AUTH on the submission port after STARTTLS; False when the server says 535.
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


def _add_account(daemon: Daemon, address: str, password: str) -> None:
    accounts = daemon.directory / "accounts.toml"
    text = accounts.read_text()
    text += f'[[account]]\naddress = "{address}"\npassword = "{hash_password(password)}"\n'
    accounts.write_text(text)


class OneProcessTests(SynchronousTestCase):
    """
    The daemon with one process; the accounts file is checked for changes only hourly, so
    only a reload makes an edit count.
    """

    def setUp(self) -> None:
        self.sink = Sink()
        self.addCleanup(self.sink.stop)
        self.daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            accounts_extra="check_interval = 3600.0",
            queue="remote_interval = 3600.0",
            outbound=(
                'mode = "smarthost"\n'
                f'smarthost = "[127.0.0.1]:{self.sink.port}"\n'
                'smarthost_tls = "none"'
            ),
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_status(self) -> None:
        """
        C{status} names the version, the processes, the listeners and the queue counts;
        C{--json} says the same as data, with this process's id.
        """
        result = self.daemon.ctl("status")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"mdtwist {__version__}, 1 process")
        self.assertIn(f"Listening: mx tcp:{self.daemon.mx_port}:interface=127.0.0.1", lines)
        self.assertEqual(lines[-1].split(), ["Total", "0", "0", "0"])
        result = self.daemon.ctl("status", "--json")
        self.assertEqual(result.returncode, 0)
        status = json.loads(result.stdout)
        assert self.daemon.process is not None
        self.assertEqual(status["processes"], 1)
        self.assertEqual(
            status["shards"],
            [{"shard": 0, "pid": self.daemon.process.pid, "active": 0, "held": 0, "bad": 0}],
        )
        self.assertEqual(status["missing"], [])

    def test_queue_run_delivers_held_mail(self) -> None:
        """
        A message deferred for an hour (the smart host did not listen) leaves at once after
        C{queue run} once the smart host is up.
        """
        message = EmailMessage()
        message["From"] = "alice@example.test"
        message["To"] = "someone@remote.example"
        message["Subject"] = "held"
        message.set_content("hello\n")
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
            client.send_message(message)
        _wait_for(lambda: "No connection to [127.0.0.1]" in self.daemon.log(), "the first attempt")
        status = json.loads(self.daemon.ctl("status", "--json").stdout)
        self.assertEqual(status["active"], 1)
        self.sink.start()
        result = self.daemon.ctl("queue", "run")
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, "Queue run started in 1 process\n", ""),
        )
        received = _wait_for(self.sink.messages, "the delivery to the smart host")
        assert isinstance(received, list)
        self.assertIn(b"Subject: held", received[0])

    def test_reload_and_sighup_read_the_accounts_again(self) -> None:
        """
        An account added to the accounts file can log in after C{reload}, and another one
        after SIGHUP; before, it cannot.
        """
        _add_account(self.daemon, "carol@example.test", "carol-pw")
        self.assertFalse(_can_log_in(self.daemon, "carol@example.test", "carol-pw"))
        result = self.daemon.ctl("reload")
        self.assertEqual((result.returncode, result.stdout), (0, "Reloaded in 1 process\n"))
        self.assertTrue(_can_log_in(self.daemon, "carol@example.test", "carol-pw"))

        _add_account(self.daemon, "dave@example.test", "dave-pw")
        self.assertFalse(_can_log_in(self.daemon, "dave@example.test", "dave-pw"))
        assert self.daemon.process is not None
        self.daemon.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: "SIGHUP: reloading" in self.daemon.log(), "the SIGHUP reload")
        _wait_for(
            lambda: (
                self.daemon.log().count(
                    "Reloaded the accounts, the TLS certificate and the client settings"
                )
                == 2
            ),
            "the second reload",
        )
        self.assertTrue(_can_log_in(self.daemon, "dave@example.test", "dave-pw"))

    def test_reload_reports_a_broken_file(self) -> None:
        """
        A broken accounts file is not used: C{reload} says why and exits with status 1, and
        the old accounts still log in.
        """
        (self.daemon.directory / "accounts.toml").write_text("this is not TOML [\n")
        result = self.daemon.ctl("reload")
        self.assertEqual(result.returncode, 1)
        self.assertIn("mdtwistctl: not reloaded: ", result.stderr)
        self.assertIn("accounts.toml", result.stderr)
        self.assertTrue(_can_log_in(self.daemon, "alice@example.test", "alice-pw"))


class NotRunningTests(SynchronousTestCase):
    """
    Without a running server, the commands for it say so in one line.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()))
        self.addCleanup(self.daemon.stop)

    def _assert_not_running(self) -> None:
        for command in (("status",), ("queue", "run"), ("reload",)):
            result = self.daemon.ctl(*command)
            self.assertEqual((result.returncode, result.stdout), (1, ""), command)
            self.assertEqual(
                result.stderr,
                "mdtwistctl: the server is not running (no server on"
                f" {self.daemon.control_socket})\n",
            )

    def test_never_started(self) -> None:
        """
        No socket at all: not running.
        """
        self._assert_not_running()

    def test_killed_then_started_again(self) -> None:
        """
        After a crash the socket file is left behind, but nobody answers on it: not running.
        The next start replaces the socket and answers again.
        """
        self.daemon.start()
        self.assertEqual(self.daemon.ctl("status").returncode, 0)
        self.daemon.kill()
        self.assertTrue(self.daemon.control_socket.exists())
        self._assert_not_running()
        self.daemon.start()
        _wait_for(lambda: self.daemon.ctl("status").returncode == 0, "the new control socket")


class TwoProcessesTests(SynchronousTestCase):
    """
    With two processes, the first passes commands on to the other and sums up.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), server_extra="processes = 2")
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def _status(self) -> dict[str, object]:
        result = self.daemon.ctl("status", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        status: dict[str, object] = json.loads(result.stdout)
        return status

    def test_every_process_answers(self) -> None:
        """
        C{status} lists both shards with their own process ids; C{queue run} and C{reload}
        reach both.
        """
        # The child links up shortly after the parent listens.
        status = _wait_for(lambda: (s := self._status())["missing"] == [] and s, "the child")
        assert isinstance(status, dict)
        self.assertEqual(status["processes"], 2)
        shards = status["shards"]
        assert isinstance(shards, list) and self.daemon.process is not None
        self.assertEqual([entry["shard"] for entry in shards], [0, 1])
        self.assertEqual(shards[0]["pid"], self.daemon.process.pid)
        self.assertNotEqual(shards[1]["pid"], self.daemon.process.pid)
        result = self.daemon.ctl("status")
        self.assertIn("mdtwist", result.stdout)
        self.assertEqual(result.stdout.splitlines()[0], f"mdtwist {__version__}, 2 processes")
        result = self.daemon.ctl("queue", "run")
        self.assertEqual(
            (result.returncode, result.stdout), (0, "Queue run started in 2 processes\n")
        )
        result = self.daemon.ctl("reload")
        self.assertEqual((result.returncode, result.stdout), (0, "Reloaded in 2 processes\n"))
        # The child itself carried both out.
        for line in ("Queue run requested through the control socket", "Reloaded the accounts"):
            _wait_for(partial(self._child_logged, line), f"the child's line {line!r}")

    def _child_logged(self, text: str) -> bool:
        # Whether shard 1's process logged a line holding text.
        for entry in self.daemon.log().splitlines():
            if entry.partition(" ")[2].startswith("[shard-1 ") and text in entry:
                return True
        return False
