# -*- test-case-name: tests.delivery.test_local -*-
"""
Writing one copy of a message into a Maildir, durably: the blocking half of
L{mdtwist.delivery.local.MaildirDelivery}, run off the reactor thread (on a delivery thread,
or in a delivery worker process: L{mdtwist.delivery.workers}).

The file is written under a name no other delivery uses in C{tmp/}, fsynced, renamed (or
linked, for a copy with a fixed name) into C{new/}, and C{new/} is fsynced, so a message is
either complete in C{new/} or absent. Directories created on the way are fsynced into their
parents. Nothing here imports Twisted, or even C{pathlib} (paths are C{str}), so a worker
process stays small.
"""

from __future__ import annotations

import os
from os.path import isdir, join

from mdtwist.durable import fsync_directory, remove_file, write_new_file


class KnownMaildirs(set[str]):
    """
    The Maildirs a process knows to exist (see L{write_maildir_message}), shared by its
    delivery threads (set operations are atomic). Sent to a worker process
    (L{mdtwist.delivery.workers}) it arrives as that process's own set, which then outlives the
    call: the worker checks a Maildir once, not at every write.
    """

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (process_known_maildirs, ())


_process_known = KnownMaildirs()


def process_known_maildirs() -> KnownMaildirs:
    """
    @return: the Maildirs known to exist in this process, for the writes sent to it.
    """
    return _process_known


def _parent(path: str) -> str:
    # The directory holding path ("." for a name without a directory, as pathlib has it).
    return os.path.dirname(path) or os.curdir


def _make_directories(path: str, stop: str) -> None:
    # Create path and its missing parents below stop, fsyncing each into its parent.
    missing = []
    current = path
    while current != stop and not isdir(current):
        missing.append(current)
        parent = _parent(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        fsync_directory(_parent(directory))


def write_maildir_message(
    root: str,
    maildir: str,
    name: str,
    content: bytes,
    known: set[str] | None = None,
    *,
    final_name: str | None = None,
) -> None:
    """
    Write one message into a Maildir, durably; blocking.

    @param root: the mail root; created when absent, but only its own subdirectories are
        fsynced into their parents.
    @param maildir: the Maildir (holding C{tmp}, C{new} and C{cur}), below C{root}; created
        when absent.
    @param name: the unique file name.
    @param content: the file content.
    @param known: Maildirs known to exist, which are not checked again; this one is added once
        it exists, and dropped again when it turns out to be gone (then it is made anew).
    @param final_name: the name in C{new/} when it differs from C{name} (the name in
        C{tmp/}); the file is then linked, never renamed, into C{new/}, so that a file of that
        name already there stays as it is (and counts as this message).
    @raise OSError: when the message could not be written; then no part of it is left behind.
    """
    if known is not None and maildir in known:
        try:
            _write_into(maildir, name, content, final_name)
            return
        except FileNotFoundError:
            known.discard(maildir)
    os.makedirs(root, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        _make_directories(join(maildir, sub), root)
    _write_into(maildir, name, content, final_name)
    if known is not None:
        known.add(maildir)


def _write_into(maildir: str, name: str, content: bytes, final_name: str | None) -> None:
    temporary = join(maildir, "tmp", name)
    new = join(maildir, "new")
    final = join(new, name if final_name is None else final_name)
    write_new_file(temporary, content)
    try:
        if final_name is None:
            os.rename(temporary, final)
        else:
            try:
                os.link(temporary, final)
            except FileExistsError:
                pass  # delivered by an earlier attempt: that file is the copy
            finally:
                os.unlink(temporary)
    except BaseException:
        remove_file(temporary)
        raise
    try:
        fsync_directory(new)
    except BaseException:
        remove_file(final)
        raise


def choose_maildir(maildir: str, former: tuple[str, ...], known: set[str]) -> str:
    """
    Pick the Maildir a copy goes to (blocking: it may look at the disk).

    @param maildir: the account's Maildir.
    @param former: Maildirs of an earlier naming (L{MaildirDelivery.former_maildirs}).
    @param known: Maildirs known to exist.
    @return: C{maildir} when it exists or no former one does; else the first former one that
        exists.
    """
    if maildir in known or not former or isdir(maildir):
        return maildir
    for path in former:
        if isdir(path):  # looked at each time: a former Maildir may be moved away
            return path
    return maildir


def write_copy(
    root: str,
    maildir: str,
    former: tuple[str, ...],
    name: str,
    final_name: str | None,
    header: bytes,
    body: bytes,
    known: set[str],
) -> bool:
    """
    Write one copy of a message (blocking).

    @param root: the mail root.
    @param maildir: the account's Maildir.
    @param former: Maildirs of an earlier naming, used when the account's does not exist.
    @param name: the unique file name in C{tmp/}.
    @param final_name: the fixed name in C{new/} (see L{write_maildir_message}), or L{None}.
    @param header: the lines put before the message (Unix line ends).
    @param body: the message with CRLF line ends, stored with LF.
    @param known: Maildirs known to exist (see L{write_maildir_message}).
    @return: whether the copy was written: C{False} when a copy of C{final_name} is there
        already (delivered by an attempt the spool did not record).
    @raise OSError: when it could not be written; then no part of it is left behind.
    """
    target = choose_maildir(maildir, former, known)
    if final_name is not None and os.path.exists(join(target, "new", final_name)):
        return False  # delivered by an attempt the spool did not record
    content = header + body.replace(b"\r\n", b"\n")
    write_maildir_message(root, target, name, content, known, final_name=final_name)
    return True
