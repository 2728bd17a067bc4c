"""
The real daemon with C{delivery.maildir_processes}: Maildir files written by worker
processes, which end with the server however it ends.
"""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.peers import alive, command_line, descendants
from tests.integration.test_load import WORKERS, spool_count
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"


class MaildirWorkersTests(SynchronousTestCase):
    """
    Mail delivered through worker processes, and the workers' end.
    """

    def start(self) -> tuple[Daemon, list[int]]:
        # A daemon with workers, ten messages delivered through them, and its workers.
        daemon = Daemon(Path(self.mktemp()), delivery=WORKERS)
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
            self.assertIn(b"mdtwist.delivery.worker_process", command_line(pid))
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
