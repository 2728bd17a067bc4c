"""
twistd in the background with mdtwist's own log observers writes its log where C{--logfile}
says, the child processes' lines included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon

#: Seconds to wait for the background server to start or stop.
_WAIT = 60.0


def _wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class BackgroundLogFileTests(SynchronousTestCase):
    """
    C{twistd --logfile FILE --logger mdtwist.logging.text_observer mdtwist ...}, daemonised.
    """

    def test_logfile_with_the_fast_logger(self) -> None:
        """
        The daemonised server and its child write their lines (the version line first, the
        child's tagged C{shard-1}) into the file C{--logfile} names; nothing goes to the
        terminal it was started from.
        """
        directory = Path(self.mktemp()).absolute()
        daemon = Daemon(directory, server_extra="processes = 2")
        logfile = directory / "mdtwist.log"
        pidfile = directory / "twistd.pid"
        twistd = str(Path(sys.executable).parent / "twistd")
        result = subprocess.run(
            [
                twistd,
                f"--pidfile={pidfile}",
                f"--logfile={logfile}",
                "--logger",
                "mdtwist.logging.text_observer",
                "mdtwist",
                "--config",
                str(daemon.config),
            ],
            capture_output=True,
            text=True,
            timeout=_WAIT,
            cwd=directory,
        )
        self.assertEqual((result.returncode, result.stdout), (0, ""), result.stderr)
        _wait_for(pidfile.exists, "the pid file")
        pid = int(pidfile.read_text().strip())

        def stop() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            _wait_for(lambda: not _alive(pid), "the server to stop")

        self.addCleanup(stop)

        def text() -> str:
            return logfile.read_text(errors="replace") if logfile.exists() else ""

        _wait_for(lambda: "[shard-1 " in text(), "a line of the child process")
        lines = text().splitlines()
        self.assertIn("mdtwist.maillog#info] mdtwist ", lines[0])
        self.assertIn(" starting (Python ", lines[0])
        stop()
        self.assertFalse((directory / "twistd.log").exists())
