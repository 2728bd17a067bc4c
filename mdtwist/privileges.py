# -*- test-case-name: tests.test_privileges -*-
"""
Running unprivileged after binding privileged ports: C{twistd --uid USER --gid GROUP}.

twistd started as root opens the listeners (ports 25, 465, 587, 366) in
C{privilegedStartService}, then switches to the given user and group before the services
start. mdtwist builds its service tree before that switch: the spool directory, its database,
lock and caches and the Maildir root are made then, as root. L{hand_over} gives what start-up
made as root to the user the server will run as, so that the server can still write its spool
and deliver after the switch.

What the unprivileged server must be able to read after the switch (each reload reads them
again): the accounts file, the TLS certificate and key, the client-settings directory.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator, Mapping
from pathlib import Path

import attrs

from mdtwist.config import Config


@attrs.frozen
class Owner:
    """
    The user and group the server runs as after twistd's switch.

    @ivar uid: the user id.
    @ivar gid: the group id.
    """

    uid: int
    gid: int


def service_owner(twistd_options: Mapping[str, object] | None, euid: int) -> Owner | None:
    """
    Find whom twistd will switch to.

    @param twistd_options: twistd's own options (C{uid} and C{gid} as numbers, as twistd
        has already converted them), or L{None} when not run by twistd.
    @param euid: our effective user id now.
    @return: the owner, or L{None} when no switch happens (no C{--uid}, or not root).
    """
    if twistd_options is None or euid != 0:
        return None
    uid = twistd_options.get("uid")
    gid = twistd_options.get("gid")
    if not isinstance(uid, int) or uid == 0:
        return None
    if not isinstance(gid, int):
        gid = pwd.getpwuid(uid).pw_gid
    return Owner(uid, gid)


def _walk(root: Path) -> Iterator[Path]:
    # The directory and everything below it, symbolic links not followed.
    yield root
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            yield Path(directory) / name


def hand_over(config: Config, owner: Owner) -> list[Path]:
    """
    Give the files start-up made as root to the server's user and group: everything in the
    spool directory that root owns (the spool directory belongs to mdtwist alone), and the
    Maildir root when root owns it and it is empty (just made; mailboxes below it are made
    later, by the server as its user). A Maildir root that root owns and that holds anything
    is left alone: give it to the server's user yourself.

    @param config: the configuration.
    @param owner: the user and group.
    @return: the paths whose owner was changed.
    """
    candidates: list[Path] = list(_walk(config.spool.directory))
    root = config.delivery.maildir_root
    if root is not None and root.is_dir() and not any(root.iterdir()):
        candidates.append(root)
    changed: list[Path] = []
    for path in candidates:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if info.st_uid != 0:
            continue
        os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
        changed.append(path)
    return changed
