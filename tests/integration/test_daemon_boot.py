"""
The real daemon starts, serves, and stops cleanly on SIGTERM; --check reports problems.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon


class DaemonBootTests(SynchronousTestCase):
    """
    C{python -m twisted mdtwist --config FILE} as a real process.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(Path(self.mktemp()))
        self.addCleanup(self.daemon.stop)

    def test_starts_serves_and_stops(self) -> None:
        """
        The daemon opens both listeners, greets on them, and on SIGTERM stops its services
        and exits by that signal (twistd re-raises it after a clean shutdown), well before the
        fixture's grace period would have sent SIGKILL.
        """
        self.daemon.start()
        for port in (self.daemon.mx_port, self.daemon.submission_port):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                greeting = s.recv(512)
            self.assertTrue(greeting.startswith(b"220 mail.example.test "), greeting)
        self.assertEqual(self.daemon.stop(), -signal.SIGTERM)
        log = self.daemon.log()
        self.assertIn("Received SIGTERM, shutting down.", log)
        self.assertIn("Main loop terminated.", log)
        self.assertIn("Server Shut Down.", log)
        self.assertNotIn("Traceback", log)
        self.assertTrue((self.daemon.spool / "spool.sqlite3").exists())

    def test_check_good_config(self) -> None:
        """
        --check on a good configuration exits 0 without starting anything, through twistd and
        through the newer C{python -m twisted} runner.
        """
        newer = [sys.executable, "-m", "twisted", "mdtwist", "--config", str(self.daemon.config)]
        for command in (self.daemon.command("--check"), [*newer, "--check"]):
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
                check=False,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertIn("configuration is valid", result.stdout)

    def test_check_bad_config(self) -> None:
        """
        A bad configuration makes --check (and a normal start) exit 1 naming file and key.
        """
        config = self.daemon.config
        config.write_text(config.read_text().replace('mode = "mx"', 'mode = "mx"\nbacklog = 5'))
        for extra in (("--check",), ()):
            result = subprocess.run(
                self.daemon.command(*extra),
                capture_output=True,
                text=True,
                timeout=60,
                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])),
                check=False,
            )
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertIn(f"{config}: smtp.listen[0].backlog: unknown key", result.stderr)
