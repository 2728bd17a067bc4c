# -*- test-case-name: tests.sharing.test_cache -*-
"""
The Domain Sharing cache: addresses a peer has confirmed, kept for five days.

It lives in one SQLite database beside the spool (C{<spool>/sharing.sqlite3}), shared by every
process of the server and kept across restarts: WAL mode and a busy timeout let several
processes read and write it at once. Only positive answers are stored; a failure is never
cached. An entry older than the time to live counts as absent and is deleted by the next write.

L{CacheStore} is the synchronous store (used on a thread pool, and by C{mdtwistctl} directly);
L{SharingCache} runs it on a thread pool and reads the time from an injected clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

#: The file name of the cache in the spool directory.
CACHE_NAME = "sharing.sqlite3"
#: How long (seconds) a confirmed address is trusted: five days, as in MDaemon.
CACHE_TTL = 5 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    address TEXT PRIMARY KEY,
    peer TEXT NOT NULL,
    verified REAL NOT NULL
) WITHOUT ROWID
"""


@attrs.frozen
class CacheEntry:
    """
    One confirmed address.

    @ivar address: the address, lower-case.
    @ivar peer: the SMTP C{host:port} of the peer that hosts it.
    @ivar verified: when the peer confirmed it, in seconds since the epoch.
    """

    address: str
    peer: str
    verified: float


class CacheStore:
    """
    The cache database, used synchronously (one thread at a time).
    """

    def __init__(self, path: Path, *, ttl: float = CACHE_TTL, busy_timeout: float = 5.0):
        """
        Open (and create when missing) the database.

        @param path: the database file.
        @param ttl: seconds an entry is trusted.
        @param busy_timeout: seconds to wait for another process's write lock.
        @raise sqlite3.Error: when the database cannot be opened or created.
        """
        self.path = path
        self.ttl = ttl
        self._db = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise

    def get(self, address: str, now: float) -> str | None:
        """
        @param address: an address (any case).
        @param now: the current time, in seconds since the epoch.
        @return: the peer that hosts it, or L{None} when it is not cached or has expired.
        """
        row = self._db.execute(
            "SELECT peer FROM verified WHERE address = ? AND verified > ?",
            (address.lower(), now - self.ttl),
        ).fetchone()
        return None if row is None else str(row[0])

    def put(self, address: str, peer: str, now: float) -> None:
        """
        Record that a peer confirmed an address, and delete expired entries.

        @param address: the address (any case).
        @param peer: the peer's SMTP C{host:port}.
        @param now: the current time, in seconds since the epoch.
        """
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO verified (address, peer, verified) VALUES (?, ?, ?)",
                (address.lower(), peer, now),
            )
            self._db.execute("DELETE FROM verified WHERE verified <= ?", (now - self.ttl,))

    def drop(self, address: str) -> bool:
        """
        Forget an address.

        @param address: the address (any case).
        @return: whether it was cached.
        """
        cursor = self._db.execute("DELETE FROM verified WHERE address = ?", (address.lower(),))
        return cursor.rowcount > 0

    def entries(self, now: float) -> list[CacheEntry]:
        """
        @param now: the current time, in seconds since the epoch.
        @return: the entries that have not expired, by address.
        """
        rows = self._db.execute(
            "SELECT address, peer, verified FROM verified WHERE verified > ? ORDER BY address",
            (now - self.ttl,),
        ).fetchall()
        return [CacheEntry(str(a), str(p), float(v)) for a, p, v in rows]

    def close(self) -> None:
        """
        Close the database.
        """
        self._db.close()


class SharingCache:
    """
    The cache for the reactor thread: every call runs on a thread pool.
    """

    def __init__(
        self, store: CacheStore, run: Callable[..., Deferred[Any]], clock: IReactorTime
    ) -> None:
        """
        @param store: the open store; from now on used only through C{run}.
        @param run: runs a blocking call on the cache's thread pool (one thread).
        @param clock: gives the time entries are stamped and expired with.
        """
        self._store = store
        self._run = run
        self._clock = clock

    def get(self, address: str) -> Deferred[str | None]:
        """
        @param address: an address.
        @return: a Deferred firing with the peer that hosts it, or L{None}; it fails with
            L{sqlite3.Error} when the database cannot be read.
        """
        d: Deferred[str | None] = self._run(self._store.get, address, self._clock.seconds())
        return d

    def put(self, address: str, peer: str) -> Deferred[None]:
        """
        @param address: an address a peer confirmed.
        @param peer: the peer's SMTP C{host:port}.
        @return: a Deferred firing once it is stored.
        """
        d: Deferred[None] = self._run(self._store.put, address, peer, self._clock.seconds())
        return d

    def drop(self, address: str) -> Deferred[bool]:
        """
        @param address: an address to forget (a peer said 5.1.1, or a local account appeared).
        @return: a Deferred firing with whether it was cached.
        """
        d: Deferred[bool] = self._run(self._store.drop, address)
        return d

    def list(self) -> Deferred[list[CacheEntry]]:
        """
        @return: a Deferred firing with the entries that have not expired.
        """
        d: Deferred[list[CacheEntry]] = self._run(self._store.entries, self._clock.seconds())
        return d

    def close(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the database is closed.
        """
        d: Deferred[None] = self._run(self._store.close)
        return d
