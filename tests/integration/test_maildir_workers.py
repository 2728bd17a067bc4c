"""
The real daemon with C{delivery.maildir_processes}: Maildir files written by worker
processes, which end with the server however it ends.
"""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.affinity import split
from tests.integration.daemon import Daemon
from tests.integration.peers import alive, descendants
from tests.integration.test_load import WORKERS, spool_count
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"


def _command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class MaildirWorkersTests(SynchronousTestCase):
    """
    Mail delivered through worker processes, and the workers' end.
    """

    def start(self, delivery: str = WORKERS) -> tuple[Daemon, list[int]]:
        # A daemon with workers, ten messages delivered through them, and its workers.
        daemon = Daemon(Path(self.mktemp()), delivery=delivery)
        daemon.start()
        self.addCleanup(daemon.stop)
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=30) as smtp:
            for number in range(10):
                smtp.sendmail(
                    "sender@client.test", [ALICE], f"Subject: {number}\r\n\r\nhi\r\n".encode()
                )
        folder = daemon.maildir(ALICE)
        self.assertTrue(
            wait_for(lambda: folder.is_dir() and len(list(folder.iterdir())) == 10, 30), "10 files"
        )
        self.assertTrue(wait_for(lambda: spool_count(daemon) == 0, 30), "an empty spool")
        assert daemon.process is not None
        workers = descendants(daemon.process.pid)
        # Two workers, each started at its first turn, and nothing else.
        self.assertEqual(len(workers), 2, workers)
        for pid in workers:
            self.assertIn(b"mdtwist.delivery.worker_process", _command(pid))
        return daemon, workers

    def test_delivered_by_workers_that_stop_with_the_server(self) -> None:
        """
        Each message lands once; the daemon's two workers are its only descendants, and
        neither is left once it has stopped.
        """
        daemon, workers = self.start()
        subjects = sorted(m.split(b"Subject: ")[1].split(b"\n")[0] for m in daemon.messages(ALICE))
        self.assertEqual(subjects, sorted(str(n).encode() for n in range(10)))
        self.assertEqual(daemon.stop(), -signal.SIGTERM)
        self.assertTrue(
            wait_for(lambda: not any(alive(pid) for pid in workers), 30), "the workers to end"
        )

    def test_workers_end_when_the_server_is_killed(self) -> None:
        """
        After C{kill -9} of the daemon its workers end too: their input has ended.
        """
        daemon, workers = self.start()
        daemon.kill()
        self.assertTrue(
            wait_for(lambda: not any(alive(pid) for pid in workers), 30), "the workers to end"
        )

    def test_cpus(self) -> None:
        """
        By default every thread of the server runs on its first CPU and every thread of its
        workers on the others, and the log says so; with C{pin_cpus = false} all run where
        the test may.
        """
        mine = os.sched_getaffinity(0)
        where = split(mine, 0)
        # The test machines have two cores at least: this test is about them.
        assert where is not None, mine
        daemon, workers = self.start()
        assert daemon.process is not None
        self.assertEqual(_affinities(daemon.process.pid), {where.server})
        for pid in workers:
            self.assertEqual(_affinities(pid), {where.workers})
        self.assertIn(
            f"Server process on CPU {min(where.server)}, its Maildir workers on CPUs",
            daemon.log(),
        )
        daemon.stop()
        daemon, workers = self.start(f"{WORKERS}\npin_cpus = false")
        assert daemon.process is not None
        for pid in [daemon.process.pid, *workers]:
            self.assertEqual(_affinities(pid), {frozenset(mine)})
        self.assertNotIn("Server process on CPU", daemon.log())

    def test_cpus_of_two_processes(self) -> None:
        """
        With C{server.processes = 2} the second process runs on the second CPU, although the
        first, which started it, runs on the first only.
        """
        first, second = (split(os.sched_getaffinity(0), shard) for shard in (0, 1))
        assert first is not None and second is not None
        daemon = Daemon(Path(self.mktemp()), delivery=WORKERS, server_extra="processes = 2")
        daemon.start()
        self.addCleanup(daemon.stop)
        assert daemon.process is not None
        children = [pid for pid in descendants(daemon.process.pid) if b"twistd" in _command(pid)]
        self.assertEqual(len(children), 1, children)
        child = children[0]
        self.assertTrue(
            wait_for(lambda: _affinities(child) == {second.server}, 30), _affinities(child)
        )
        self.assertEqual(_affinities(daemon.process.pid), {first.server})


def _affinities(pid: int) -> set[frozenset[int]]:
    # The CPU sets of every thread of a process.
    return {frozenset(os.sched_getaffinity(int(task))) for task in os.listdir(f"/proc/{pid}/task")}
