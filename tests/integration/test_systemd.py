"""
The systemd side: the example units in C{etc/systemd/} pass C{systemd-analyze verify}, and the
daemon serves sockets handed over by socket activation (C{systemd:} endpoints), started by
C{systemd-socket-activate} as systemd would.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import _ROOT, Daemon
from tests.integration.peers import find_program, start_process, stop_process

_WAIT = 30.0
_UNITS = _ROOT / "etc" / "systemd"


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


class UnitFileTests(SynchronousTestCase):
    """
    The example units are valid for this machine's systemd.
    """

    def test_verify(self) -> None:
        """
        C{systemd-analyze verify} accepts both units without a word about them, once their
        C{twistd} path points at an installed one (this checkout's).
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        twistd = str(Path(sys.executable).parent / "twistd")
        for name in ("mdtwist.service", "mdtwist.socket"):
            text = (_UNITS / name).read_text().replace("/opt/mdtwist/.venv/bin/twistd", twistd)
            (directory / name).write_text(text)
        result = subprocess.run(
            [
                find_program("systemd-analyze"),
                "verify",
                str(directory / "mdtwist.socket"),
                str(directory / "mdtwist.service"),
            ],
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
        )
        about_ours = [
            line for line in (result.stdout + result.stderr).splitlines() if "mdtwist" in line
        ]
        self.assertEqual((result.returncode, about_ours), (0, []))

    def test_service_runs_the_check_first(self) -> None:
        """
        The service checks the configuration before it starts, reloads with SIGHUP, and
        gives the drain more time than its default bound.
        """
        text = (_UNITS / "mdtwist.service").read_text()
        self.assertIn("mdtwist --config /etc/mdtwist/mdtwist.toml --check", text)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", text)
        self.assertIn("TimeoutStopSec=60", text)


class SocketActivationTests(SynchronousTestCase):
    """
    The daemon on sockets handed over the systemd way (C{LISTEN_FDS}, C{LISTEN_PID}).
    """

    def test_systemd_endpoints(self) -> None:
        """
        With C{systemd:domain=INET:index=0} and C{index=1} endpoints, mail sent to the ports
        systemd-socket-activate opened is received and delivered.
        """
        daemon = Daemon(Path(self.mktemp()))
        self.addCleanup(daemon.stop)
        text = daemon.config.read_text()
        text = text.replace(
            f"tcp:{daemon.mx_port}:interface=127.0.0.1", "systemd:domain=INET:index=0"
        ).replace(
            f"tcp:{daemon.submission_port}:interface=127.0.0.1", "systemd:domain=INET:index=1"
        )
        daemon.config.write_text(text)
        command = [
            find_program("systemd-socket-activate"),
            "--listen",
            f"127.0.0.1:{daemon.mx_port}",
            "--listen",
            f"127.0.0.1:{daemon.submission_port}",
            # systemd names every socket (after its unit when FileDescriptorName is not set);
            # Twisted uses the sockets only when the names are there too.
            "--fdname=mdtwist.socket:mdtwist.socket",
            *daemon.command(),
        ]
        process = start_process(
            command,
            daemon.log_path,
            ports=(daemon.mx_port,),
            env=dict(os.environ, PYTHONPATH=str(_ROOT)),
            cwd=_ROOT,
            timeout=_WAIT,
        )
        self.addCleanup(stop_process, process, 20.0)
        _wait_for(lambda: "Control socket" in daemon.log(), "the start-up")
        self.assertNotIn("Not starting", daemon.log())
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=_WAIT) as client:
            client.sendmail(
                "someone@elsewhere.test",
                ["alice@example.test"],
                "Subject: activated\r\n\r\nhello\r\n",
            )
        with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=_WAIT) as client:
            self.assertIn("STARTTLS", client.ehlo()[1].decode())
        messages = _wait_for(lambda: daemon.messages("alice@example.test"), "the delivery")
        assert isinstance(messages, list)
        self.assertIn(b"Subject: activated", messages[0])
