# -*- test-case-name: tests.spool.test_lock -*-
"""
One server per spool: an exclusive lock on a file in the spool directory.

Two servers running queue runners on one spool would deliver its messages twice. At start-up,
before the spool database is opened, the server takes an exclusive C{flock} on C{lock} in its
spool directory (each shard of C{server.processes} has a directory, and so a lock, of its own)
and writes its process id into the file. The lock goes with the process: the kernel releases it
when the process ends, however it ends, so a crash never leaves a stale lock behind. A second
server finds the lock taken and refuses to start, naming the spool and the holder's PID.

The lock is taken before twistd goes into the background, so the refusal reaches the terminal;
the daemon keeps the lock across the fork (the open file is shared) and writes its own PID when
it starts.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from twisted.application.service import Service
from typing_extensions import override

#: The name of the lock file in a spool directory.
LOCK_NAME = "lock"


class SpoolLocked(Exception):
    """
    Another process holds the lock of a spool directory.

    @ivar directory: the spool directory.
    @ivar holder: the PID written in the lock file, or L{None} when none can be read.
    """

    def __init__(self, directory: Path, holder: int | None) -> None:
        self.directory = directory
        self.holder = holder
        who = "another process" if holder is None else f"another process (PID {holder})"
        super().__init__(f"{directory} is in use by {who}")


class SpoolLock(Service):
    """
    The exclusive lock of one spool directory, held for the life of the process.

    L{acquire} takes it (at once, before the service tree starts); the service writes the PID
    of the process that runs it when it starts, and lets the lock go when it stops.
    """

    def __init__(self, directory: Path) -> None:
        """
        @param directory: the spool directory (it must exist).
        """
        self.directory = directory
        self.path = directory / LOCK_NAME
        self._fd: int | None = None
        self.setName("spool-lock")

    def acquire(self) -> None:
        """
        Take the lock and write our PID into it.

        @raise SpoolLocked: when another process holds it.
        @raise OSError: when the lock file cannot be opened.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise SpoolLocked(self.directory, holder) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_pid()

    def _write_pid(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode("ascii"), 0)

    @override
    def startService(self) -> None:
        # twistd may have forked into the background since acquire(): the PID is the daemon's.
        super().startService()
        if self._fd is not None:
            self._write_pid()

    @override
    def stopService(self) -> None:
        super().stopService()
        self.release()

    def release(self) -> None:
        """
        Let the lock go (the file stays: removing it could race with a new server's lock).
        """
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    # The PID a lock holder wrote, if it is readable.
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
