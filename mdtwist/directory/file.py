# -*- test-case-name: tests.directory.test_file -*-
"""
The embedded account directory: accounts in a TOML file.

The file looks like this::

    domains = ["example.test"]

    [[account]]
    address = "alice@example.test"
    password = "$argon2id$v=19$m=65536,t=3,p=4$..."   # mdtwistctl hash-password
    name = "Alice Example"
    first_name = "Alice"
    last_name = "Example"
    aliases = ["a.example@example.test"]
    enabled = true              # optional, default true
    login = "alice"             # optional; the address always works as a login too
    smarthost_login = "..."     # optional, this account's own smart-host login
    smarthost_password = "..."  # optional
    gateway_login = "..."       # optional, ODMR/ATRN login

Passwords are stored only as hashes (argon2id, or C{{SSHA}} from an LDIF export).

Theory of operation: the file is parsed into an immutable L{AccountTable}. Every
C{check_interval} seconds (on the injected clock) L{AccountsWatch} has L{FileDirectory.check}
compare the file's size, modification time and inode with those of the last load; when they
changed the file is parsed again, and on success the directory's cache is emptied so that the
edit applies at once, not at the next cache miss. A file that no longer parses is logged, one
line per problem, and the last good table stays in force, so a typo never takes every mailbox
offline; the same broken file is not reported again until it changes.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from mdtwist.address import address_key, parse_address
from mdtwist.directory.model import Account
from mdtwist.directory.passwords import hash_password, is_supported_hash, verify_password
from mdtwist.errors import ConfigError
from mdtwist.interfaces import IDirectory
from mdtwist.secret import Secret

_ACCOUNT_KEYS = {
    "address",
    "password",
    "name",
    "first_name",
    "last_name",
    "aliases",
    "enabled",
    "login",
    "smarthost_login",
    "smarthost_password",
    "gateway_login",
}


@attrs.frozen
class AccountTable:
    """
    The parsed contents of an accounts file.

    @ivar domains: the local domains, lower-case.
    @ivar by_address: every address (primary and aliases, lookup keys) to its account.
    @ivar by_login: every login name (lower-case) to its account.
    @ivar hashes: the password hash of each account, by primary address.
    """

    domains: frozenset[str]
    by_address: dict[str, Account]
    by_login: dict[str, Account]
    hashes: dict[str, str]


def parse_accounts(data: bytes, source: Path) -> AccountTable:
    """
    Parse an accounts file.

    @param data: the file's bytes.
    @param source: its path, named in problems.
    @return: the accounts.
    @raise ConfigError: with one line per problem (C{file: key: reason}).
    """
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None
    problems: list[str] = []

    def problem(key: str, reason: str) -> None:
        problems.append(f"{source}: {key}: {reason}")

    for key in sorted(set(doc) - {"domains", "account"}):
        problem(key, "unknown key")
    raw_domains = doc.get("domains", [])
    if not isinstance(raw_domains, list) or not all(isinstance(d, str) for d in raw_domains):
        problem("domains", "expected an array of strings")
        raw_domains = []
    domains = frozenset(d.lower().rstrip(".") for d in raw_domains)
    raw_accounts = doc.get("account", [])
    if not isinstance(raw_accounts, list):
        problem("account", "expected an array of tables ([[account]])")
        raw_accounts = []
    by_address: dict[str, Account] = {}
    by_login: dict[str, Account] = {}
    # The entry (account[i]) each account came from, to name it in a duplicate's problem.
    entries: dict[int, str] = {}
    hashes: dict[str, str] = {}
    for i, entry in enumerate(raw_accounts):
        key = f"account[{i}]"
        if not isinstance(entry, dict):
            problem(key, "expected a table")
            continue
        account, stored = _parse_account(entry, key, domains, problem)
        if account is None:
            continue
        entries[id(account)] = key
        for addr in account.addresses:
            addr_key = address_key(addr)
            assert addr_key is not None  # checked by _parse_account
            if addr_key in by_address:
                other = by_address[addr_key]
                problem(
                    key,
                    f"address {addr} is already used by {entries[id(other)]} ({other.address})",
                )
                continue
            by_address[addr_key] = account
        login_key = account.login.lower()
        if login_key in by_login and by_login[login_key] is not account:
            other = by_login[login_key]
            problem(
                f"{key}.login",
                f"login {account.login} is already used by {entries[id(other)]} ({other.address})",
            )
        else:
            by_login[login_key] = account
        hashes[account.address] = stored
    if problems:
        raise ConfigError(problems)
    return AccountTable(domains, by_address, by_login, hashes)


def _text(entry: dict[str, Any], name: str, key: str, problem: Any, default: str = "") -> str:
    value = entry.get(name, default)
    if not isinstance(value, str):
        problem(f"{key}.{name}", "expected a string")
        return default
    return value


def _parse_account(
    entry: dict[str, Any], key: str, domains: frozenset[str], problem: Any
) -> tuple[Account | None, str]:
    ok = True

    def bad(subkey: str, reason: str) -> None:
        nonlocal ok
        ok = False
        problem(f"{key}.{subkey}" if subkey else key, reason)

    for name in sorted(set(entry) - _ACCOUNT_KEYS):
        bad(name, "unknown key")
    primary = parse_address(_text(entry, "address", key, bad))
    if primary is None:
        bad("address", "required, and must be an address such as user@example.com")
    elif primary.domain not in domains:
        bad("address", f"domain {primary.domain} is not in domains")
    stored = _text(entry, "password", key, bad)
    if not stored:
        bad("password", "required (a hash made by 'mdtwistctl hash-password')")
    elif not is_supported_hash(stored):
        bad("password", "not an argon2id or {SSHA} hash (plain text passwords are not stored)")
    aliases_raw = entry.get("aliases", [])
    aliases: list[str] = []
    if not isinstance(aliases_raw, list) or not all(isinstance(a, str) for a in aliases_raw):
        bad("aliases", "expected an array of strings")
    else:
        for alias in aliases_raw:
            parsed = parse_address(alias)
            if parsed is None:
                bad("aliases", f"{alias!r} is not an address")
            elif parsed.domain not in domains:
                bad("aliases", f"domain {parsed.domain} of {alias} is not in domains")
            else:
                aliases.append(str(parsed))
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        bad("enabled", "expected true or false")
    smarthost_password = _text(entry, "smarthost_password", key, bad)
    if not ok or primary is None:
        return None, ""
    account = Account(
        address=str(primary),
        mailbox=primary.local,
        domain=primary.domain,
        login=_text(entry, "login", key, bad) or str(primary),
        aliases=tuple(aliases),
        display_name=_text(entry, "name", key, bad),
        first_name=_text(entry, "first_name", key, bad),
        last_name=_text(entry, "last_name", key, bad),
        enabled=enabled,
        smarthost_login=_text(entry, "smarthost_login", key, bad) or None,
        smarthost_password=Secret(smarthost_password) if smarthost_password else None,
        gateway_login=_text(entry, "gateway_login", key, bad) or None,
    )
    return account, stored


@implementer(IDirectory)
class FileDirectory:
    """
    L{IDirectory} over an accounts file that is re-read when it changes.
    """

    log = Logger()

    def __init__(
        self,
        path: Path,
        run: Callable[..., Deferred[Any]],
    ) -> None:
        """
        Load the file now; L{check} or L{reload} read it again.

        @param path: the accounts file.
        @param run: runs a blocking function (password hashing) off the reactor thread and
            returns a Deferred of its result.
        @raise ConfigError: when the file cannot be read or has problems.
        """
        self._path = path
        self._run = run
        # Checked when the login is unknown, so that an unknown login costs as much time as a
        # wrong password and timing does not tell which logins exist.
        self._dummy_hash = hash_password(os.urandom(16).hex())
        self._signature = self._stat()
        self._table = parse_accounts(self._read(), path)

    def _stat(self) -> tuple[int, int, int]:
        try:
            info = os.stat(self._path)
        except OSError as e:
            raise ConfigError([f"{self._path}: cannot read: {e.strerror}"]) from None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def _read(self) -> bytes:
        try:
            return self._path.read_bytes()
        except OSError as e:
            raise ConfigError([f"{self._path}: cannot read: {e.strerror}"]) from None

    def _current(self) -> AccountTable:
        return self._table

    def _not_reloaded(self, problems: list[str]) -> None:
        for problem in problems:
            self.log.error(
                "accounts file {path} not reloaded, keeping the last good accounts: {problem}",
                path=str(self._path),
                problem=problem,
            )

    def _reloaded(self) -> None:
        self.log.info(
            "accounts file {path} reloaded: {count} addresses",
            path=str(self._path),
            count=len(self._table.by_address),
        )

    def check(self) -> bool:
        """
        Read the file again if it changed since it was last read (L{AccountsWatch} calls this
        every C{directory.file.check_interval} seconds).

        A file that changed but does not read is logged, one line per problem, and not
        reported again until it changes once more; the last good accounts stay in use.

        @return: whether new accounts are now in use.
        """
        try:
            signature = self._stat()
            if signature == self._signature:
                return False
            self._signature = signature
            self._table = parse_accounts(self._read(), self._path)
        except ConfigError as e:
            self._not_reloaded(list(e.problems))
            return False
        self._reloaded()
        return True

    def reload(self) -> list[str]:
        """
        Read the accounts file again now (C{mdtwistctl reload}, SIGHUP), changed or not.

        @return: the problems that kept the file from being used (the last good accounts stay
            in use); empty when it was reloaded.
        """
        try:
            signature = self._stat()
            table = parse_accounts(self._read(), self._path)
        except ConfigError as e:
            self._not_reloaded(list(e.problems))
            return list(e.problems)
        self._signature, self._table = signature, table
        self._reloaded()
        return []

    def find(self, address: str) -> Deferred[Account | None]:
        """
        See L{IDirectory.find}.
        """
        key = address_key(address)
        return succeed(None if key is None else self._current().by_address.get(key))

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        """
        See L{IDirectory.authenticate}; the login is the login name or any address.
        """
        table = self._current()
        account = table.by_login.get(login.lower())
        if account is None:
            key = address_key(login)
            account = table.by_address.get(key) if key is not None else None
        stored = table.hashes[account.address] if account is not None else self._dummy_hash
        checked: Deferred[bool] = self._run(verify_password, stored, password)

        def decide(ok: bool) -> Account | None:
            return account if ok and account is not None and account.enabled else None

        return checked.addCallback(decide)

    def domains(self) -> Deferred[frozenset[str]]:
        """
        See L{IDirectory.domains}.
        """
        return succeed(self._current().domains)


class AccountsWatch(Service):
    """
    Checks the accounts file for changes on a timer, and empties the cache in front of the
    directory when new accounts are in use.
    """

    def __init__(
        self,
        check: Callable[[], bool],
        changed: Callable[[], object],
        clock: IReactorTime,
        interval: float,
    ) -> None:
        """
        @param check: reads the file again when it changed (L{FileDirectory.check}); returns
            whether new accounts are in use.
        @param changed: called when they are (the cache's C{forget}).
        @param clock: the clock of the timer.
        @param interval: seconds between checks.
        """
        self._check = check
        self._changed = changed
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock
        self._interval = interval
        self.setName("accounts-watch")

    def _tick(self) -> None:
        if self._check():
            self._changed()

    def startService(self) -> None:  # noqa: N802 - the name Twisted calls
        """
        Start checking, the first time one interval from now.
        """
        super().startService()
        self._loop.start(self._interval, now=False)

    def stopService(self) -> None:  # noqa: N802 - the name Twisted calls
        """
        Stop checking.
        """
        super().stopService()
        if self._loop.running:
            self._loop.stop()
