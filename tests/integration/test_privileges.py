"""
The real daemon started as root with C{twistd --uid nobody --gid nogroup}: it binds a
privileged port, runs as that user, and its spool and mailboxes belong to it.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import smtplib
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import _ROOT, Daemon
from tests.integration.peers import start_process, stop_process

_WAIT = 30.0


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _free_privileged_port() -> int:
    # A port below 1024 that nothing listens on now (only root may bind it).
    for port in range(900, 1024):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue
                raise
            return port
    raise AssertionError("no free port below 1024")


def _ids(pid: int) -> tuple[list[int], list[int]]:
    # The real, effective, saved and file-system user and group ids of a process.
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid"):
            fields[name] = [int(v) for v in value.split()]
    return fields["Uid"], fields["Gid"]


class PrivilegeDropTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise AssertionError("this test starts the daemon as root and must run as root")
        self.user = pwd.getpwnam("nobody")
        self.group = grp.getgrnam("nogroup")
        self.port = _free_privileged_port()
        # A directory every user can reach (the test's own temporary directories need not be).
        directory = Path(tempfile.mkdtemp(prefix="mdtwist-privileges-"))
        self.addCleanup(shutil.rmtree, directory, ignore_errors=True)
        directory.chmod(0o755)
        self.daemon = Daemon(
            directory / "daemon",
            extra=(
                f'[[smtp.listen]]\nendpoint = "tcp:{self.port}:interface=127.0.0.1"\nmode = "mx"'
            ),
        )
        self.addCleanup(self.daemon.stop)
        # The control socket's own private directory must be the server user's.
        os.chown(self.daemon.control_socket.parent, self.user.pw_uid, self.group.gr_gid)

    def test_runs_as_the_user(self) -> None:
        """
        The port below 1024 accepts mail; the process's every user and group id is
        nobody's; the spool files and the delivered message belong to nobody.
        """
        command = self.daemon.command()
        at = command.index("--pidfile=") + 1
        command[at:at] = ["--uid", "nobody", "--gid", "nogroup"]
        process = start_process(
            command,
            self.daemon.log_path,
            ports=(self.port, self.daemon.mx_port),
            env=dict(os.environ, PYTHONPATH=str(_ROOT)),
            cwd=_ROOT,
            timeout=_WAIT,
        )
        self.addCleanup(stop_process, process, 20.0)
        _wait_for(lambda: "set uid/gid" in self.daemon.log(), "the switch of user")
        uids, gids = _ids(process.pid)
        self.assertEqual(uids, [self.user.pw_uid] * 4)
        self.assertEqual(gids, [self.group.gr_gid] * 4)

        with smtplib.SMTP("127.0.0.1", self.port, timeout=_WAIT) as client:
            client.sendmail(
                "someone@elsewhere.test",
                ["alice@example.test"],
                "Subject: unprivileged\r\n\r\nhello\r\n",
            )
        _wait_for(lambda: self.daemon.messages("alice@example.test"), "the delivery")
        owned = [
            self.daemon.spool,
            *self.daemon.spool.rglob("*"),
            *(self.daemon.directory / "mail").rglob("*"),
        ]
        self.assertGreater(len(owned), 5)
        for path in owned:
            info = path.lstat()
            self.assertEqual((info.st_uid, info.st_gid), (self.user.pw_uid, self.group.gr_gid))
        self.assertNotIn("Traceback", self.daemon.log())
