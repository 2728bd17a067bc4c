"""Tests for L{mdtwist.spool.schema}."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.schema import SCHEMA_VERSION, immediate, open_database, upgrade


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


class UpgradeTests(SynchronousTestCase):
    """
    Tests for L{upgrade}: a new database gets the current schema, an unknown one is refused.
    """

    def open(self) -> sqlite3.Connection:
        """
        @return: a new database in a temporary directory, closed when the test ends.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        db = open_database(directory / "spool.sqlite3")
        self.addCleanup(db.close)
        return db

    def test_new_database(self) -> None:
        """
        An empty database gets every table and the current version; that is no migration.
        """
        db = self.open()
        self.assertFalse(upgrade(db, 0))
        self.assertEqual(db.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))
        self.assertIn("client_password", _columns(db, "message"))
        self.assertIn("delay_notified", _columns(db, "recipient"))

    def test_current_again(self) -> None:
        """
        Upgrading a current database again changes nothing.
        """
        db = self.open()
        upgrade(db, 0)
        self.assertFalse(upgrade(db, SCHEMA_VERSION))
        self.assertEqual(db.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))

    def test_unknown_version(self) -> None:
        """
        A version newer than this code, or a negative one, is refused.
        """
        db = self.open()
        self.assertRaises(ValueError, upgrade, db, SCHEMA_VERSION + 1)
        self.assertRaises(ValueError, upgrade, db, -1)

    def test_immediate_rolls_back(self) -> None:
        """
        A block that raises inside L{immediate} leaves nothing behind.
        """
        db = self.open()
        upgrade(db, 0)
        with self.assertRaises(RuntimeError), immediate(db):
            db.execute("UPDATE sqlite_sequence SET seq = 1")
            db.execute(
                "INSERT INTO message (sender, arrival, body_type, smtputf8, size,"
                " client_address, client_helo, next_attempt) VALUES ('', 0, '7BIT', 0, 0,"
                " '192.0.2.1', 'h', 0)"
            )
            raise RuntimeError("undo")
        self.assertEqual(db.execute("SELECT count(*) FROM message").fetchone(), (0,))
        self.assertFalse(db.in_transaction)
