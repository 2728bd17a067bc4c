"""
The real daemon on its CPUs (C{server.pin_cpus}): each server process keeps to one CPU, its
Maildir workers to the others. The test machines have two cores at least: these tests are
about them, and fail on a machine with one.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.affinity import Split, split
from tests.integration.daemon import Daemon
from tests.integration.peers import command_line, descendants
from tests.integration.test_load import WORKERS, spool_count
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"


def _affinities(pid: int) -> set[frozenset[int]]:
    # The CPU sets of every thread of a process; a thread that ends while they are read (a
    # thread pool's, a resolver's) is left out.
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found.add(frozenset(os.sched_getaffinity(int(task))))
        except ProcessLookupError:
            continue
    return found


def _split(shard: int) -> Split:
    where = split(os.sched_getaffinity(0), shard)
    assert where is not None, "a machine with two CPUs or more"
    return where


class AffinityTests(SynchronousTestCase):
    """
    Where the daemon's processes and threads run.
    """

    def start(self, delivery: str = "", server: str = "") -> Daemon:
        # A daemon that has delivered ten messages (so its workers, if any, have started).
        daemon = Daemon(Path(self.mktemp()), delivery=delivery, server_extra=server)
        daemon.start()
        self.addCleanup(daemon.stop)
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=30) as smtp:
            for number in range(10):
                smtp.sendmail("sender@client.test", [ALICE], f"Subject: {number}\r\n\r\nhi\r\n")
        self.assertTrue(wait_for(lambda: spool_count(daemon) == 0, 30), "an empty spool")
        return daemon

    def workers(self, daemon: Daemon) -> list[int]:
        assert daemon.process is not None
        found = descendants(daemon.process.pid)
        self.assertTrue(found)
        for pid in found:
            self.assertIn(b"mdtwist.delivery.worker_process", command_line(pid))
        return found

    def test_with_workers(self) -> None:
        """
        Every thread of the server runs on its first CPU and every thread of its workers on
        the others, and the log says so.
        """
        where = _split(0)
        daemon = self.start(WORKERS)
        assert daemon.process is not None
        self.assertEqual(_affinities(daemon.process.pid), {where.server})
        for pid in self.workers(daemon):
            self.assertEqual(_affinities(pid), {where.workers})
        self.assertIn(
            f"Server process on CPU {min(where.server)}, its Maildir workers on CPUs",
            daemon.log(),
        )

    def test_without_workers(self) -> None:
        """
        A server that writes its Maildir files itself keeps all its threads on its CPU too.
        """
        where = _split(0)
        daemon = self.start()
        assert daemon.process is not None
        self.assertEqual(_affinities(daemon.process.pid), {where.server})
        self.assertIn(f"Server process on CPU {min(where.server)}\n", daemon.log())

    def test_switched_off(self) -> None:
        """
        With C{pin_cpus = false} the server and its workers run wherever the test may.
        """
        mine = frozenset(os.sched_getaffinity(0))
        daemon = self.start(WORKERS, "pin_cpus = false")
        assert daemon.process is not None
        for pid in [daemon.process.pid, *self.workers(daemon)]:
            self.assertEqual(_affinities(pid), {mine})
        self.assertNotIn("Server process on CPU", daemon.log())

    def test_two_processes(self) -> None:
        """
        With C{server.processes = 2} the second process runs on the second CPU, although the
        first, which started it, runs on the first only.
        """
        first, second = _split(0), _split(1)
        daemon = Daemon(Path(self.mktemp()), delivery=WORKERS, server_extra="processes = 2")
        daemon.start()
        self.addCleanup(daemon.stop)
        assert daemon.process is not None
        parent = daemon.process.pid
        children: list[int] = []

        def started() -> bool:
            # The parent starts its child after its own listeners are up: wait for it.
            below = descendants(parent)
            children[:] = [pid for pid in below if b"twistd" in command_line(pid)]
            return len(children) == 1

        self.assertTrue(wait_for(started, 30), children)
        child = children[0]
        self.assertTrue(
            wait_for(lambda: _affinities(child) == {second.server}, 30), _affinities(child)
        )
        self.assertEqual(_affinities(parent), {first.server})
