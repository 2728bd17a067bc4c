"""
C{[server] processes = 2} with the real daemon: a child twistd shares the listeners and owns
spool shard 1; it is restarted when it dies, stops with its parent, and a shard left over
from a larger setting is drained.
"""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from twisted.internet.defer import execute
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SQLiteSpool, shard_directory
from tests.integration.daemon import Daemon
from tests.integration.peers import alive, children
from tests.spool.fakes import make_envelope

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


def _send(port: int, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "sender@remote.example"
    message["To"] = "alice@example.test"
    message["Subject"] = subject
    message.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=_WAIT) as client:
        client.send_message(message)


class ProcessesTests(SynchronousTestCase):
    """
    The daemon with two processes.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()), server_extra="processes = 2")
        self.addCleanup(self._stop_all)
        self.daemon.start()
        assert self.daemon.process is not None
        self.parent = self.daemon.process.pid
        self.child = self._child()
        # The listeners accept before twistd runs its reactor (and installs its signal
        # handlers); a control command answered means the reactor runs.
        _wait_for(lambda: self.daemon.ctl("status").returncode == 0, "the running server")

    def _child(self) -> int:
        pids = _wait_for(lambda: children(self.parent), "the child process")
        assert isinstance(pids, list)
        self.assertEqual(len(pids), 1, pids)
        return int(pids[0])

    def _stop_all(self) -> None:
        if self.daemon.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.parent, signal.SIGCONT)
        self.daemon.stop()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child, signal.SIGKILL)

    def _send_and_check(self, count: int) -> None:
        # Send count messages over as many connections; each must land exactly once.
        for i in range(count):
            _send(self.daemon.mx_port, f"message {i}")
        _wait_for(
            lambda: len(self.daemon.messages("alice@example.test")) >= count, "the deliveries"
        )
        subjects = sorted(
            line
            for m in self.daemon.messages("alice@example.test")
            for line in m.decode().splitlines()
            if line.startswith("Subject: ")
        )
        self.assertEqual(subjects, sorted(f"Subject: message {i}" for i in range(count)))

    def test_both_processes_serve_and_deliver_everything_once(self) -> None:
        """
        Twenty messages over twenty connections each land in the Maildir exactly once, and
        both processes took some: the kernel spreads connections over the two SO_REUSEPORT
        sockets by their addresses (all twenty on one side would happen about twice in a
        million runs). Local mail goes to its mailbox before its reply, so its ids name the
        process's shard (C{L...-1}) instead of a queue id of that shard. The child's log lines
        say so; the parent's look as with one process.
        """
        self._send_and_check(20)
        log = self.daemon.log()
        self.assertRegex(log, r"\[mdtwist\.maillog#info\] L[0-9A-F]+-0: accepted session=")
        self.assertRegex(log, r"\[shard-1 mdtwist\.maillog#info\] L[0-9A-F]+-1: accepted session=")
        self.assertTrue((self.daemon.spool / "shard-1").is_dir())

    def test_child_that_dies_is_started_again(self) -> None:
        """
        A child killed with SIGKILL is replaced by a new one. The parent keeps the child's
        socket open, so connections that arrive meanwhile wait for the new child instead of
        being refused: messages sent right after the kill are all delivered.
        """
        old = self.child
        os.kill(old, signal.SIGKILL)
        self._send_and_check(20)
        pids = _wait_for(
            lambda: [pid for pid in children(self.parent) if pid != old and alive(pid)],
            "a new child",
        )
        assert isinstance(pids, list)
        self.child = pids[0]
        log = self.daemon.log()
        ended = "The process of spool shard 1 ended (signal SIGKILL)"
        self.assertIn(ended, log)
        self.assertRegex(
            log.partition(ended)[2],
            r" L[0-9A-F]+-1: accepted session=\S+ client=\S+ from=<sender@",
        )

    def test_stopping_the_parent_stops_the_child(self) -> None:
        """
        SIGTERM to the parent stops the child too before the parent exits.
        """
        self.assertEqual(self.daemon.stop(), -signal.SIGTERM)
        self.assertFalse(alive(self.child))

    def test_child_stops_when_the_parent_is_killed(self) -> None:
        """
        A parent killed with SIGKILL cannot stop its child; the child notices and stops.
        """
        self.daemon.kill()
        _wait_for(lambda: not alive(self.child), "the child to stop")
        self.assertIn("The parent process is gone; stopping", self.daemon.log())


class LeftoverShardTests(SynchronousTestCase):
    """
    A spool shard beyond C{processes} that still holds mail.
    """

    def test_leftover_shard_is_drained(self) -> None:
        """
        Mail left in shard 1 by an earlier two-process run is delivered by a draining child
        when the server runs with one process; the child then ends and is not restarted.
        """
        daemon = Daemon(Path(self.mktemp()))
        self.addCleanup(daemon.stop)
        spool = SQLiteSpool(shard_directory(daemon.spool, 1), execute, shard=1)
        spool.open()
        body = b"Subject: left over\r\n\r\nhello\r\n"
        queued = self.successResultOf(spool.enqueue(make_envelope("alice@example.test"), body))
        spool.close()
        self.assertTrue(queued.startswith("01"), queued)
        daemon.start()
        _wait_for(lambda: daemon.messages("alice@example.test"), "the delivery")
        self.assertIn(b"Subject: left over", daemon.messages("alice@example.test")[0])
        self.assertIn("for spool shard 1 (draining: no listeners)", daemon.log())
        _wait_for(lambda: "Spool shard 1 is drained" in daemon.log(), "the child to end")
        assert daemon.process is not None
        self.assertEqual(children(daemon.process.pid), [])
