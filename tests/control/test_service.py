"""
Tests for L{mdtwist.control.service}: the control socket's mode, directory and failures.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.registry import ControlDispatcher, ControlFactory, ControlRegistry
from mdtwist.control.service import ControlService
from tests.support.logs import capture_logs


class ControlServiceTests(SynchronousTestCase):
    """
    L{ControlService} on a fake reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.events = capture_logs(self)
        self.dispatcher = ControlDispatcher(ControlRegistry())
        # A short directory: the paths of UNIX sockets are limited to 107 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="mdtwist-test-"))
        self.addCleanup(shutil.rmtree, self.directory)

    def test_listens_owner_only(self) -> None:
        """
        The socket is made with mode 0600 and a lock file (a stale socket is replaced), in a
        directory made with mode 0700; stopping closes it.
        """
        path = self.directory / "run" / "control.sock"
        service = ControlService(self.reactor, path, self.dispatcher)
        service.startService()
        [(address, factory, _, mode, want_pid)] = self.reactor.unixServers
        self.assertEqual((address, mode, want_pid), (str(path), 0o600, True))
        self.assertIsInstance(factory, ControlFactory)
        self.assertEqual(stat.S_IMODE(path.parent.stat().st_mode), 0o700)
        self.assertIn("Control socket {path} is open", [e["log_format"] for e in self.events])
        service.stopService()
        self.assertFalse(service.running)

    def test_path_too_long(self) -> None:
        """
        A path too long for a UNIX socket is logged and nothing listens.
        """
        path = Path("/tmp") / ("x" * 110) / "control.sock"
        ControlService(self.reactor, path, self.dispatcher).startService()
        self.assertEqual(self.reactor.unixServers, [])
        [event] = [e for e in self.events if "longer than" in e["log_format"]]
        self.assertEqual(event["path"], str(path))

    def test_directory_unusable(self) -> None:
        """
        A directory that cannot be made is logged and nothing listens.
        """
        blocker = self.directory / "file"
        blocker.write_text("a file, not a directory")
        path = blocker / "control.sock"
        ControlService(self.reactor, path, self.dispatcher).startService()
        self.assertEqual(self.reactor.unixServers, [])
        [event] = [e for e in self.events if "Cannot open" in e["log_format"]]
        self.assertEqual(event["error"], f"cannot make {blocker}: File exists")
