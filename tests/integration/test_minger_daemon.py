"""
Our real daemon with C{[minger]} enabled answers C{mdtwistctl minger query} and
C{mdtwistctl sharing check}, both real processes talking UDP over loopback.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
_ROOT = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    """
    @return: a UDP port on 127.0.0.1 that nothing is bound to now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MingerDaemonTests(SynchronousTestCase):
    """
    C{twistd mdtwist} with the Minger server, asked by C{mdtwistctl}.
    """

    def setUp(self) -> None:
        self.port = free_udp_port()
        self.daemon = Daemon(
            Path(self.mktemp()),
            extra=f"""
[minger]
enable = true
port = {self.port}
secret = "{SECRET}"
allowed_sources = ["127.0.0.0/8"]
""",
        )
        self.addCleanup(self.daemon.stop)
        self.secret_file = self.daemon.directory / "minger.secret"
        self.secret_file.write_text(SECRET + "\n")
        os.chmod(self.secret_file, 0o600)
        self.daemon.start()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        program = str(Path(sys.executable).parent / "mdtwistctl")
        return subprocess.run(
            [program, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(_ROOT)),
            cwd=_ROOT,
            check=False,
        )

    def query(self, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
        server = f"127.0.0.1:{self.port}"
        return self.ctl("minger", "query", server, address, "--timeout", "5", *extra)

    def test_local_and_unknown(self) -> None:
        """
        A local account is 5 (active), an unknown address 3 (unknown); both exit 0.
        """
        secret = ("--secret-file", str(self.secret_file))
        alice = self.query("alice@example.test", *secret)
        self.assertEqual((alice.returncode, alice.stdout), (0, "5 active\n"), alice.stderr)
        nobody = self.query("nobody@example.test", *secret)
        self.assertEqual((nobody.returncode, nobody.stdout), (0, "3 unknown\n"), nobody.stderr)
        answer = self.query("bob@example.test", *secret, "--json")
        self.assertEqual(answer.returncode, 0, answer.stderr)
        self.assertEqual(
            json.loads(answer.stdout),
            {
                "server": "127.0.0.1",
                "port": self.port,
                "address": "bob@example.test",
                "status": 5,
                "result": "active",
            },
        )

    def test_refusals(self) -> None:
        """
        Without the secret, or with a wrong one, the answer is 2 and the exit status 1.
        """
        anonymous = self.query("alice@example.test")
        self.assertEqual((anonymous.returncode, anonymous.stdout), (1, "2 bad credentials\n"))
        wrong = self.daemon.directory / "wrong.secret"
        wrong.write_text("a different secret, long enough")
        refused = self.query("alice@example.test", "--secret-file", str(wrong))
        self.assertEqual((refused.returncode, refused.stdout), (1, "2 bad credentials\n"))
        self.assertNotIn(SECRET, self.daemon.log())

    def test_sharing_check(self) -> None:
        """
        C{sharing check} asks every configured peer: an address the daemon hosts is taken, a
        new one is free, and a peer that does not answer blocks the check.
        """
        peer = f'{{ host = "127.0.0.1", minger_port = {self.port}, password = "{SECRET}" }}'
        silent = f'{{ host = "127.0.0.1:2526", minger_port = {free_udp_port()} }}'
        base = self.daemon.config.read_text()
        config = self.daemon.directory / "ctl.toml"
        config.write_text(base + f"\n[sharing]\ntimeout = 0.5\nattempts = 2\npeers = [{peer}]\n")
        free = self.ctl("sharing", "check", "newbie@example.test", "--config", str(config))
        self.assertEqual(free.returncode, 0, free.stderr)
        self.assertEqual(
            free.stdout, "127.0.0.1:25  unknown\nnewbie@example.test: no peer has it\n"
        )
        taken = self.ctl("sharing", "check", "alice@example.test", "--config", str(config))
        self.assertEqual(taken.returncode, 1)
        self.assertIn("alice@example.test: already exists on a peer", taken.stdout)
        config.write_text(
            base + f"\n[sharing]\ntimeout = 0.5\nattempts = 2\npeers = [{peer}, {silent}]\n"
        )
        blocked = self.ctl("sharing", "check", "newbie@example.test", "--config", str(config))
        self.assertEqual(blocked.returncode, 1)
        self.assertEqual(
            blocked.stdout,
            "127.0.0.1:25  unknown\n127.0.0.1:2526  timeout\n"
            "newbie@example.test: cannot verify that no peer has it\n",
        )
