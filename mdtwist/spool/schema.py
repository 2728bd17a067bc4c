# -*- test-case-name: tests.spool.test_schema -*-
"""
The spool database: its schema, its migrations and how it is opened.

Pure C{sqlite3}: no Twisted. The store (L{mdtwist.spool.store}) calls L{upgrade} once when it
opens a database, in one write transaction.

Versions: 1 had no queues, notices or delay marks; 2 added the kept password (MDaemon's
C{ISPAUTHUsePasswords}); 3 is the release before routes; 4 stores each recipient's route
(L{mdtwist.route.Route}), NULL for recipients queued under version 3.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

#: The schema version this mdtwist writes (C{PRAGMA user_version}).
SCHEMA_VERSION = 4

#: The current schema, for a new database.
SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender TEXT NOT NULL,
    arrival REAL NOT NULL,
    body_type TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL,
    ret TEXT,
    envid TEXT,
    declared_size INTEGER,
    size INTEGER NOT NULL,
    client_address TEXT NOT NULL,
    client_helo TEXT NOT NULL,
    client_user TEXT,
    client_tls TEXT,
    client_password TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    body BLOB,
    body_file TEXT,
    kind TEXT NOT NULL DEFAULT 'message',
    queue TEXT NOT NULL DEFAULT 'active',
    reason TEXT
);
CREATE TABLE IF NOT EXISTS recipient (
    message_id INTEGER NOT NULL REFERENCES message (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    notify TEXT,
    orcpt TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT '',
    diagnostic TEXT NOT NULL DEFAULT '',
    delay_notified INTEGER NOT NULL DEFAULT 0,
    remote_mta TEXT,
    last_attempt REAL,
    route_kind TEXT,
    route_target TEXT,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS message_next_attempt ON message (next_attempt);
"""

#: From version 1: queues, message kinds, per-recipient delay marks.
MIGRATE_FROM_1 = (
    "ALTER TABLE message ADD COLUMN kind TEXT NOT NULL DEFAULT 'message'",
    "ALTER TABLE message ADD COLUMN queue TEXT NOT NULL DEFAULT 'active'",
    "ALTER TABLE message ADD COLUMN reason TEXT",
    "ALTER TABLE recipient ADD COLUMN delay_notified INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE recipient ADD COLUMN remote_mta TEXT",
    "ALTER TABLE recipient ADD COLUMN last_attempt REAL",
)

#: From version 2: the password kept for MDaemon's ISPAUTHUsePasswords.
MIGRATE_FROM_2 = ("ALTER TABLE message ADD COLUMN client_password TEXT",)

#: From version 3: each recipient's route. Recipients queued before keep NULL there and are
#: classified when the queue runner loads them.
MIGRATE_FROM_3 = (
    "ALTER TABLE recipient ADD COLUMN route_kind TEXT",
    "ALTER TABLE recipient ADD COLUMN route_target TEXT",
)


def open_database(
    path: Path,
    *,
    read_only: bool = False,
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> sqlite3.Connection:
    """
    Open a spool database.

    @param path: the database file.
    @param read_only: open it with C{mode=ro}, for tools that look while the server runs; the
        file must exist.
    @param factory: the connection class (tests pass a subclass that fails on purpose).
    @return: a connection in autocommit mode (transactions are explicit), usable from any one
        thread at a time.
    @raise sqlite3.Error: when the database cannot be opened.
    """
    if read_only:
        target = path.resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(
            target, uri=True, isolation_level=None, check_same_thread=False, factory=factory
        )
    else:
        db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, factory=factory
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


@contextlib.contextmanager
def immediate(db: sqlite3.Connection) -> Iterator[None]:
    """
    Run the block in one explicit write transaction (C{BEGIN IMMEDIATE}).

    @param db: a connection in autocommit mode.
    @return: a context manager that commits when the block ends and rolls back when it raises.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _migrate(db: sqlite3.Connection, statements: Sequence[str]) -> None:
    with immediate(db):
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def upgrade(db: sqlite3.Connection, version: int) -> bool:
    """
    Bring a database of a known schema version to the current one.

    @param db: the open database, in autocommit mode.
    @param version: its C{PRAGMA user_version} (0 for a new database).
    @return: whether an older schema was migrated (as opposed to created or already current).
    @raise ValueError: for a version this mdtwist does not know.
    """
    if version > SCHEMA_VERSION or version < 0:
        raise ValueError(version)
    if 0 < version < SCHEMA_VERSION:
        steps = {1: MIGRATE_FROM_1, 2: MIGRATE_FROM_2, 3: MIGRATE_FROM_3}
        _migrate(db, tuple(s for v in range(version, SCHEMA_VERSION) for s in steps[v]))
        return True
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return False
