"""
Tests for L{mdtwist.sharing.cache}.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.sharing.cache import CACHE_TTL, CacheEntry, CacheStore, SharingCache
from tests.support.runners import run_inline

DAY = 86400.0


class CacheTests(SynchronousTestCase):
    """
    The shared five-day cache.
    """

    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.mkdir()
        self.file = self.path / "sharing.sqlite3"
        self.clock = Clock()
        self.clock.advance(1_700_000_000.0)

    def open(self) -> SharingCache:
        cache = SharingCache(CacheStore(self.file), run_inline, self.clock)
        self.addCleanup(cache.close)
        return cache

    def test_ttl(self) -> None:
        """
        Entries are trusted for five days.
        """
        self.assertEqual(CACHE_TTL, 5 * DAY)

    def test_put_get(self) -> None:
        """
        A stored address is found again, in any case; others are not.
        """
        cache = self.open()
        self.successResultOf(cache.put("Bob@Example.com", "mail2.example.com:25"))
        self.assertEqual(
            self.successResultOf(cache.get("bob@example.COM")), "mail2.example.com:25"
        )
        self.assertIsNone(self.successResultOf(cache.get("carol@example.com")))

    def test_survives_reopen(self) -> None:
        """
        Entries are kept across a restart (a new store on the same file).
        """
        cache = self.open()
        self.successResultOf(cache.put("bob@example.com", "mail2.example.com:25"))
        self.successResultOf(cache.close())
        again = self.open()
        self.assertEqual(
            self.successResultOf(again.get("bob@example.com")), "mail2.example.com:25"
        )

    def test_shared(self) -> None:
        """
        Two stores on one file (two processes) see each other's writes and drops.
        """
        first, second = self.open(), self.open()
        self.successResultOf(first.put("bob@example.com", "mail2.example.com:25"))
        self.assertEqual(
            self.successResultOf(second.get("bob@example.com")), "mail2.example.com:25"
        )
        self.assertTrue(self.successResultOf(second.drop("bob@example.com")))
        self.assertIsNone(self.successResultOf(first.get("bob@example.com")))

    def test_expiry(self) -> None:
        """
        An entry expires five days after it was confirmed; a later write deletes it.
        """
        cache = self.open()
        self.successResultOf(cache.put("bob@example.com", "mail2.example.com:25"))
        self.clock.advance(5 * DAY - 1)
        self.assertEqual(
            self.successResultOf(cache.get("bob@example.com")), "mail2.example.com:25"
        )
        self.clock.advance(1)
        self.assertIsNone(self.successResultOf(cache.get("bob@example.com")))
        self.assertEqual(self.successResultOf(cache.list()), [])
        self.successResultOf(cache.put("carol@example.com", "mail3.example.com:25"))
        with contextlib.closing(sqlite3.connect(self.file)) as db:
            rows = db.execute("SELECT address FROM verified").fetchall()
        self.assertEqual(rows, [("carol@example.com",)])

    def test_refresh(self) -> None:
        """
        Confirming an address again restarts its five days.
        """
        cache = self.open()
        self.successResultOf(cache.put("bob@example.com", "mail2.example.com:25"))
        self.clock.advance(4 * DAY)
        self.successResultOf(cache.put("bob@example.com", "mail3.example.com:25"))
        self.clock.advance(4 * DAY)
        self.assertEqual(
            self.successResultOf(cache.get("bob@example.com")), "mail3.example.com:25"
        )

    def test_list_and_drop(self) -> None:
        """
        The live entries are listed by address; a drop forgets one and says whether it
        was there.
        """
        cache = self.open()
        self.successResultOf(cache.put("zed@example.com", "b:25"))
        now = self.clock.seconds()
        self.successResultOf(cache.put("amy@example.com", "a:2525"))
        self.assertEqual(
            self.successResultOf(cache.list()),
            [
                CacheEntry("amy@example.com", "a:2525", now),
                CacheEntry("zed@example.com", "b:25", now),
            ],
        )
        self.assertTrue(self.successResultOf(cache.drop("ZED@example.com")))
        self.assertFalse(self.successResultOf(cache.drop("zed@example.com")))
        self.assertEqual(len(self.successResultOf(cache.list())), 1)

    def test_wal(self) -> None:
        """
        The database is in WAL mode, so readers in other processes do not block writers.
        """
        self.open()
        with contextlib.closing(sqlite3.connect(self.file)) as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, ("wal",))

    def test_unusable(self) -> None:
        """
        A path that cannot hold a database raises at open.
        """
        self.assertRaises(sqlite3.Error, CacheStore, self.path / "missing" / "x.sqlite3")
