"""
Tests for L{mdtwist.durable}.
"""

from __future__ import annotations

import stat
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.durable import fsync_directory, write_new_file


class DurableTests(SynchronousTestCase):
    """
    Files are created once, privately, with their content; directories can be synced.
    """

    def test_write_new_file(self) -> None:
        """
        A new file gets the content and mode 0600; an existing one is never overwritten.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "f"
        write_new_file(path, b"data")
        self.assertEqual(path.read_bytes(), b"data")
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertRaises(FileExistsError, write_new_file, path, b"other")
        self.assertEqual(path.read_bytes(), b"data")
        fsync_directory(directory)

    def test_fsync_missing_directory(self) -> None:
        """
        Syncing a directory that does not exist raises.
        """
        self.assertRaises(FileNotFoundError, fsync_directory, Path(self.mktemp()))
