# -*- test-case-name: tests.test_durable -*-
"""
Blocking helpers for writing files that survive a crash. Call them off the reactor thread.
They take paths as C{str} or C{os.PathLike} and import no C{pathlib}: a Maildir worker process
(L{mdtwist.delivery.workers}) stays small.
"""

from __future__ import annotations

import contextlib
import os


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """
    Make the entries of a directory (new files, renames) durable.

    @param path: the directory.
    @raise OSError: when it cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_file(path: str | os.PathLike[str], data: bytes) -> None:
    """
    Create a file that must not exist yet (mode 0600), write it and fsync it.

    The directory entry is not synced: call L{fsync_directory} once for a batch of files.

    @param path: the new file.
    @param data: its content.
    @raise OSError: when it exists already or cannot be written; a partly written file is
        removed again.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        remove_file(path)
        raise


def remove_file(path: str | os.PathLike[str]) -> None:
    """
    Remove a file that may be gone already (cleaning up after a failed write).

    @param path: the file.
    @raise OSError: when it exists and cannot be removed.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
