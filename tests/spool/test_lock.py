"""
Tests for L{mdtwist.spool.lock}.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.lock import LOCK_NAME, SpoolLock, SpoolLocked


class SpoolLockTests(SynchronousTestCase):
    """
    One holder at a time; the holder's PID is in the lock file.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()

    def lock(self) -> SpoolLock:
        lock = SpoolLock(self.directory)
        self.addCleanup(lock.release)
        return lock

    def test_second_holder_refused(self) -> None:
        """
        While one lock holds the directory, another is refused with the directory and the
        holder's PID; once it is let go, the other can take it.
        """
        first = self.lock()
        first.acquire()
        self.assertEqual((self.directory / LOCK_NAME).read_text(), f"{os.getpid()}\n")
        second = self.lock()
        error = self.assertRaises(SpoolLocked, second.acquire)
        self.assertEqual((error.directory, error.holder), (self.directory, os.getpid()))
        self.assertEqual(
            str(error), f"{self.directory} is in use by another process (PID {os.getpid()})"
        )
        first.release()
        second.acquire()

    def test_unreadable_holder(self) -> None:
        """
        When the holder's PID cannot be read, the refusal says so without a number.
        """
        first = self.lock()
        first.acquire()
        (self.directory / LOCK_NAME).write_text("garbage")
        error = self.assertRaises(SpoolLocked, self.lock().acquire)
        self.assertIsNone(error.holder)
        self.assertEqual(str(error), f"{self.directory} is in use by another process")

    def test_service(self) -> None:
        """
        Started, the service writes the PID again (twistd may have forked since the lock was
        taken); stopped, it lets the lock go and empties the file.
        """
        lock = self.lock()
        lock.acquire()
        (self.directory / LOCK_NAME).write_text("1\n")
        lock.startService()
        self.assertEqual((self.directory / LOCK_NAME).read_text(), f"{os.getpid()}\n")
        lock.stopService()
        self.assertEqual((self.directory / LOCK_NAME).read_text(), "")
        self.lock().acquire()
