"""
The real daemon's service life: SIGTERM drains the SMTP sessions, SIGHUP and C{mdtwistctl
reload} under load lose no session, and an edit of the accounts file applies without waiting
for the directory cache.
"""

from __future__ import annotations

import signal
import smtplib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon

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


class _Session:
    """
    A raw SMTP client session on a socket: what the server sends is read line by line.
    """

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=_WAIT)
        self.file = self.socket.makefile("rb")

    def reply(self) -> tuple[int, str]:
        """
        @return: the code and the last line of the next reply; C{(0, "")} at the end.
        """
        while True:
            line = self.file.readline()
            if not line:
                return 0, ""
            if line[3:4] != b"-":
                return int(line[:3]), line.decode("ascii", "replace").strip()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def command(self, line: str) -> tuple[int, str]:
        self.send(line.encode("ascii") + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.socket.close()


class DrainTests(SynchronousTestCase):
    """
    SIGTERM: a session between messages gets C{421 4.3.2} at once; a session in the middle
    of a message finishes it (C{250}, the message is kept), then gets the C{421}; the
    daemon then stops cleanly.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), server_extra="drain_timeout = 25.0")
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_sigterm_drains(self) -> None:
        """
        See the class docstring.
        """
        busy = _Session(self.daemon.mx_port)
        self.addCleanup(busy.close)
        idle = _Session(self.daemon.mx_port)
        self.addCleanup(idle.close)
        for session in (busy, idle):
            self.assertEqual(session.reply()[0], 220)
            self.assertEqual(session.command("EHLO client.example")[0], 250)
        self.assertEqual(busy.command("MAIL FROM:<someone@elsewhere.test>")[0], 250)
        self.assertEqual(busy.command("RCPT TO:<alice@example.test>")[0], 250)
        self.assertEqual(busy.command("DATA")[0], 354)
        busy.send(b"Subject: drained\r\n\r\nfirst half\r\n")
        assert self.daemon.process is not None
        self.daemon.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: "Shutting down: waiting up to" in self.daemon.log(), "the drain")
        code, text = idle.reply()
        self.assertEqual((code, text[4:9]), (421, "4.3.2"))
        busy.send(b"second half\r\n.\r\n")
        self.assertEqual(busy.reply()[0], 250)
        code, text = busy.reply()
        self.assertEqual((code, text[4:9]), (421, "4.3.2"))
        # twistd ends a clean stop by re-raising the signal that asked for it.
        self.assertEqual(self.daemon.process.wait(_WAIT), -signal.SIGTERM)
        self.assertIn("Main loop terminated.", self.daemon.log())
        # The acknowledged message was kept: the next start delivers it.
        self.daemon.start()
        messages = _wait_for(
            lambda: self.daemon.messages("alice@example.test"), "the delivery after restart"
        )
        assert isinstance(messages, list)
        self.assertIn(b"second half", messages[0])


class ProcessesDrainTests(SynchronousTestCase):
    """
    With two processes, SIGTERM to the first drains the sessions of both at once: every
    message in progress is finished and acknowledged.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(
            Path(self.mktemp()), server_extra="processes = 2\ndrain_timeout = 25.0"
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()
        _wait_for(lambda: "Started process" in self.daemon.log(), "the child")

    def test_sigterm_drains_every_process(self) -> None:
        """
        See the class docstring.
        """
        sessions = []
        for _ in range(6):
            session = _Session(self.daemon.mx_port)
            self.addCleanup(session.close)
            self.assertEqual(session.reply()[0], 220)
            self.assertEqual(session.command("EHLO client.example")[0], 250)
            self.assertEqual(session.command("MAIL FROM:<someone@elsewhere.test>")[0], 250)
            self.assertEqual(session.command("RCPT TO:<alice@example.test>")[0], 250)
            self.assertEqual(session.command("DATA")[0], 354)
            session.send(b"Subject: drained\r\n\r\nfirst half\r\n")
            sessions.append(session)
        assert self.daemon.process is not None
        self.daemon.process.send_signal(signal.SIGTERM)
        _wait_for(lambda: "Shutting down: waiting up to" in self.daemon.log(), "the drain")
        for session in sessions:
            session.send(b"second half\r\n.\r\n")
            self.assertEqual(session.reply()[0], 250)
            code, text = session.reply()
            self.assertEqual((code, text[4:9]), (421, "4.3.2"))
        self.assertEqual(self.daemon.process.wait(_WAIT), -signal.SIGTERM)


class ReloadTests(SynchronousTestCase):
    """
    Reloads while clients send mail, and the accounts file watched on its timer.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()))
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_reload_under_load_loses_no_session(self) -> None:
        """
        Four clients each send ten messages over one session while the server is reloaded
        with SIGHUP and C{mdtwistctl reload} again and again: every message is accepted,
        no session is dropped, and every reload is logged.
        """
        failures: list[BaseException] = []
        accepted: list[int] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(number: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as smtp:
                    for i in range(10):
                        smtp.sendmail(
                            "someone@elsewhere.test",
                            ["alice@example.test"],
                            f"Subject: load {number}.{i}\r\n\r\nbody\r\n",
                        )
                        with lock:
                            accepted.append(number)
                        time.sleep(0.05)
            except BaseException as e:
                with lock:
                    failures.append(e)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        reloads = 0
        assert self.daemon.process is not None
        while any(thread.is_alive() for thread in threads) and not stop.is_set():
            if reloads % 2:
                self.assertEqual(self.daemon.ctl("reload").returncode, 0)
            else:
                self.daemon.process.send_signal(signal.SIGHUP)
            reloads += 1
            time.sleep(0.1)
        for thread in threads:
            thread.join(_WAIT)
        self.assertEqual(failures, [])
        self.assertEqual(len(accepted), 40)
        self.assertGreaterEqual(reloads, 2)
        _wait_for(
            lambda: (
                self.daemon.log().count("Reloaded the accounts, the TLS certificate") >= reloads
            ),
            "every reload",
        )
        self.assertNotIn("Traceback", self.daemon.log())

    def test_accounts_edit_applies_before_the_cache_expires(self) -> None:
        """
        Renaming an account in the accounts file takes effect within seconds although the
        old address was just looked up (and the cache keeps answers for 60 seconds); a
        broken edit is logged one line per problem and the last good accounts stay.
        """

        def rcpt(address: str) -> int:
            with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as smtp:
                smtp.ehlo("client.example")
                smtp.mail("someone@elsewhere.test")
                code, _ = smtp.rcpt(address)
                return int(code)

        self.assertEqual(rcpt("bob@example.test"), 250)
        accounts = self.daemon.directory / "accounts.toml"
        text = accounts.read_text()
        accounts.write_text(text.replace("bob@example.test", "robert@example.test"))
        _wait_for(lambda: rcpt("bob@example.test") == 550, "the renamed account")
        self.assertEqual(rcpt("robert@example.test"), 250)

        accounts.write_text(text + '[[account]]\naddress = "x@elsewhere.test"\nenabled = "yes"\n')
        _wait_for(lambda: "not reloaded" in self.daemon.log(), "the broken edit's log")
        lines = [line for line in self.daemon.log().splitlines() if "not reloaded" in line]
        self.assertEqual(len(lines), 3, lines)  # address, password, enabled
        self.assertEqual(rcpt("robert@example.test"), 250)
