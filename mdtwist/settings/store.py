# -*- test-case-name: tests.settings.test_store -*-
"""
Where client settings live: TOML files beside the configuration, and the clients' receipts.

Layout of the settings directory::

    global.toml                 the global document
    domains/example.com.toml    one document per domain that has its own settings

Each file holds C{revision}, C{modified}, for a domain C{inherit}, and the screens' tables
(see L{mdtwist.settings.model}). Files are written whole to a temporary name, flushed to disk
and renamed, so a reader never sees half a file. Hand edits are welcome: L{SettingsStore.refresh}
notices changed files (size, modification time, inode) and reads them again; a file that no
longer reads keeps the last good documents in force and its problems are returned, one
C{file: path: reason} line each.

The receipts (L{ReceiptStore}) are a small SQLite database (WAL) beside the spool: the version
each account was last served, and the version each client says it applied, so that
C{mdtwistctl settings status} can list the clients that are behind while the server runs.
"""

from __future__ import annotations

import os
import re
import sqlite3
import tomllib
from collections.abc import Mapping
from pathlib import Path

import attrs
import tomli_w
from zope.interface import implementer

from mdtwist.interfaces import ISettingsSource
from mdtwist.settings.model import (
    GLOBAL,
    Merged,
    ServerFacts,
    SettingsDocument,
    SettingsError,
    Value,
    defaults,
    document_from_mapping,
    document_to_mapping,
    merge,
)

_DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62})(?:\.[a-z0-9](?:[a-z0-9-]{0,62}))*")


def check_domain(domain: str) -> str:
    """
    @param domain: a domain name as typed.
    @return: the domain, lower-case, without a final dot.
    @raise SettingsError: when it is not a plain domain name (it becomes a file name).
    """
    name = domain.strip().lower().rstrip(".")
    if not _DOMAIN.fullmatch(name) or len(name) > 253:
        raise SettingsError([f"{domain!r}: not a domain name"])
    return name


_Signature = tuple[int, int, int] | None


def _signature(path: Path) -> _Signature:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return (info.st_size, info.st_mtime_ns, info.st_ino)


class SettingsStore:
    """
    The settings documents in one directory.

    Reading and writing are blocking file operations on small files.
    """

    def __init__(self, directory: Path) -> None:
        """
        @param directory: the settings directory (it need not exist yet).
        """
        self.directory = directory
        self._documents: dict[str, SettingsDocument] = {}
        self._signatures: dict[Path, _Signature] = {}

    def path_of(self, scope: str) -> Path:
        """
        @param scope: C{global} or a domain.
        @return: the file of that document.
        """
        if scope == GLOBAL:
            return self.directory / "global.toml"
        return self.directory / "domains" / f"{check_domain(scope)}.toml"

    def _files(self) -> dict[str, Path]:
        files = {GLOBAL: self.directory / "global.toml"}
        domains = self.directory / "domains"
        if domains.is_dir():
            for path in sorted(domains.glob("*.toml")):
                files[path.stem.lower()] = path
        return files

    def load(self) -> None:
        """
        Read every document.

        @raise SettingsError: with one C{file: path: reason} line per problem; then nothing
            changes.
        """
        problems: list[str] = []
        documents: dict[str, SettingsDocument] = {}
        signatures: dict[Path, _Signature] = {}
        files = self._files()
        for scope, path in files.items():
            signatures[path] = _signature(path)
            if signatures[path] is None:
                continue
            try:
                documents[scope] = self.read(scope, path)
            except SettingsError as e:
                problems += e.problems
        if problems:
            raise SettingsError(problems)
        self._documents = documents
        self._signatures = signatures

    def read(self, scope: str, path: Path) -> SettingsDocument:
        """
        Read one document file.

        @param scope: C{global} or the domain.
        @param path: the file.
        @return: the document.
        @raise SettingsError: naming the file, when it cannot be read or is wrong.
        """
        try:
            if scope != GLOBAL:
                check_domain(scope)
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            return document_from_mapping(scope, data)
        except SettingsError as e:
            raise SettingsError(f"{path}: {line}" for line in e.problems) from None
        except OSError as e:
            raise SettingsError([f"{path}: cannot read: {e.strerror or e}"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError([f"{path}: not valid TOML: {e}"]) from None

    def changed(self) -> bool:
        """
        @return: whether any file appeared, disappeared or changed since the last L{load}.
        """
        files = set(self._files().values())
        if files != set(self._signatures):
            return True
        return any(_signature(path) != sig for path, sig in self._signatures.items())

    def refresh(self) -> tuple[str, ...]:
        """
        Read the documents again if a file changed.

        @return: the problems of a failed reload (the last good documents stay in force), or
            C{()}.
        """
        if not self.changed():
            return ()
        try:
            self.load()
        except SettingsError as e:
            return e.problems
        return ()

    def document(self, scope: str) -> SettingsDocument | None:
        """
        @param scope: C{global} or a domain.
        @return: the document as last loaded, or L{None} when there is none.
        """
        return self._documents.get(scope if scope == GLOBAL else scope.lower())

    def document_or_empty(self, scope: str) -> SettingsDocument:
        """
        @param scope: C{global} or a domain.
        @return: the document, or an empty one (revision 0) to start from.
        """
        found = self.document(scope)
        return found if found is not None else SettingsDocument(scope=scope)

    def scopes(self) -> list[str]:
        """
        @return: C{global} (if it has a document) and the domains with documents, sorted.
        """
        return sorted(self._documents, key=lambda s: (s != GLOBAL, s))

    def save(self, document: SettingsDocument) -> None:
        """
        Write a document durably (temporary file, fsync, rename) and keep it in force.

        @param document: the document.
        @raise SettingsError: when the file cannot be written.
        """
        path = self.path_of(document.scope)
        text = tomli_w.dumps(document_to_mapping(document))
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as stream:
                stream.write(text)
                stream.flush()
                os.fsync(stream.fileno())
            temporary.replace(path)
        except OSError as e:
            raise SettingsError([f"{path}: cannot write: {e.strerror or e}"]) from None
        self._documents[document.scope] = document
        self._signatures[path] = _signature(path)

    def delete(self, scope: str) -> bool:
        """
        Remove a domain's document, so the domain follows the global settings again.

        @param scope: the domain.
        @return: whether there was one.
        """
        path = self.path_of(scope)
        self._documents.pop(scope, None)
        self._signatures.pop(path, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True


@attrs.frozen
class Policy:
    """
    The configuration's switches, the lowest layer above the code defaults.

    @ivar push_enabled: push client settings to users (off by default).
    @ivar allow_override: users may change pushed settings (off: everything locked).
    """

    push_enabled: bool = False
    allow_override: bool = False


@implementer(ISettingsSource)
class SettingsSource:
    """
    The merged settings of each domain: code defaults from the server's own services, the
    configuration's switches, the global document and the domain's document.
    """

    def __init__(self, store: SettingsStore, facts: ServerFacts, policy: Policy) -> None:
        """
        @param store: the documents (already loaded).
        @param facts: what the server offers.
        @param policy: the configuration's switches.
        """
        self.store = store
        self.facts = facts
        self.policy = policy

    def base(self) -> dict[str, Value]:
        """
        @return: the code defaults with the configuration's switches.
        """
        values = defaults(self.facts)
        values["policy.push_enabled"] = self.policy.push_enabled
        values["policy.allow_override"] = self.policy.allow_override
        return values

    def merged(self, domain: str) -> Merged:
        """
        @param domain: a domain (lower-case).
        @return: its settings before macros.
        """
        return merge(self.base(), self.store.document(GLOBAL), self.store.document(domain.lower()))

    def push_anywhere(self) -> bool:
        """
        @return: whether the push is on for any domain (by the configuration or a document).
        """
        if self.policy.push_enabled:
            return True
        return any(
            (document := self.store.document(scope)) is not None
            and document.values.get("policy.push_enabled") is True
            for scope in self.store.scopes()
        )

    def refresh(self) -> tuple[str, ...]:
        """
        Read changed documents again.

        @return: the problems of a failed reload (the last good documents stay), or C{()}.
        """
        return self.store.refresh()


@attrs.frozen
class Receipt:
    """
    One client's receipt, with what its account was last served.

    @ivar account: the account's address.
    @ivar client: the client's own name for itself.
    @ivar applied_version: the version the client says it applied.
    @ivar client_version: the client's software version.
    @ivar applied_at: when it said so (seconds since the epoch).
    @ivar served_version: the version the account was last served (or C{""}).
    @ivar served_source: the hash of the domain's merged settings then.
    @ivar served_at: when (or 0).
    """

    account: str
    client: str
    applied_version: str
    client_version: str
    applied_at: float
    served_version: str
    served_source: str
    served_at: float


#: The file name of the receipt database, in the spool directory.
RECEIPTS_NAME = "client-settings.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS served (
    account TEXT PRIMARY KEY, version TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS applied (
    account TEXT NOT NULL, client TEXT NOT NULL, version TEXT NOT NULL,
    client_version TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (account, client));
"""


class ReceiptStore:
    """
    What each account was served and what each client applied, in SQLite (WAL).

    Every method blocks: the server calls them on a thread pool, C{mdtwistctl} directly.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """
        @param path: the database file.
        @param read_only: open an existing database for reading only.
        @raise SettingsError: when the database cannot be opened.
        """
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                self._db = sqlite3.connect(str(path), check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA busy_timeout=5000")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise SettingsError([f"{path}: cannot open: {e}"]) from None

    def record_served(self, account: str, version: str, source: str, at: float) -> None:
        """
        Note the version an account was just served.

        @param account: the address.
        @param version: the version served (or confirmed by a 304).
        @param source: the hash of the domain's merged settings.
        @param at: the time.
        """
        with self._db:
            self._db.execute(
                "INSERT INTO served (account, version, source, at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account) DO UPDATE SET version = excluded.version,"
                " source = excluded.source, at = excluded.at",
                (account, version, source, at),
            )

    def record_applied(
        self, account: str, client: str, version: str, client_version: str, at: float
    ) -> None:
        """
        Note the version a client applied.

        @param account: the address.
        @param client: the client's name for itself.
        @param version: the version applied.
        @param client_version: the client software's version.
        @param at: the time.
        """
        with self._db:
            self._db.execute(
                "INSERT INTO applied (account, client, version, client_version, at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, client) DO UPDATE SET"
                " version = excluded.version, client_version = excluded.client_version,"
                " at = excluded.at",
                (account, client, version, client_version, at),
            )

    def receipts(self) -> list[Receipt]:
        """
        @return: every client's receipt, by account and client.
        """
        rows = self._db.execute(
            "SELECT a.account, a.client, a.version, a.client_version, a.at,"
            " coalesce(s.version, ''), coalesce(s.source, ''), coalesce(s.at, 0)"
            " FROM applied a LEFT JOIN served s ON s.account = a.account"
            " ORDER BY a.account, a.client"
        ).fetchall()
        return [Receipt(*row) for row in rows]

    def close(self) -> None:
        """
        Close the database.
        """
        self._db.close()


def behind(receipt: Receipt, current_sources: Mapping[str, str]) -> str:
    """
    Say why a client is behind, if it is.

    @param receipt: its receipt.
    @param current_sources: per domain, the hash of its merged settings now.
    @return: C{""} when the client applied what it was last served and nothing changed since;
        else a short reason.
    """
    if receipt.served_version and receipt.applied_version != receipt.served_version:
        return "has not applied the version it was served"
    domain = receipt.account.rpartition("@")[2].lower()
    current = current_sources.get(domain)
    if current is not None and receipt.served_source and current != receipt.served_source:
        return "settings changed since it last asked"
    return ""
