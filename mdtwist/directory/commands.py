# -*- test-case-name: tests.directory.test_commands -*-
"""
C{mdtwistctl account}: the accounts of the file directory (C{[directory] backend = "file"}).

  - C{account list [--domain DOMAIN] [--json]}: one line per account;
  - C{account add ADDRESS [--name ...] [--alias ADDRESS ...] [--login NAME] [--disabled]
    [--force]}: a new account; its password is read as C{hash-password} reads one;
  - C{account disable ADDRESS}, C{account enable ADDRESS}: refuse or accept its mail and logins
    again;
  - C{account passwd ADDRESS}: a new password.

Every change is checked as the server would read the file (L{parse_accounts}), so a change the
server would refuse is never written; the file is rewritten through C{tomlkit}, which keeps
its comments and layout, and replaced atomically (a new file beside it, flushed to disk, then
renamed over it, with the old file's mode). The running server is then asked to reload its
accounts (C{--no-reload}: it finds the change itself within C{directory.file.check_interval}).

With Domain Sharing on (C{[sharing] enable}), C{account add} first asks every peer about the
new address and each alias (L{mdtwist.sharing.commands.ask_peers}, as C{sharing check} does):
it goes ahead only when every peer says it has no such address. A peer that has one refuses
the account; a peer that cannot be asked refuses it too, unless C{--force}.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, TextIO

import tomlkit
from tomlkit.items import AoT, Table

from mdtwist.address import address_key, parse_address
from mdtwist.config import Config, DirectoryBackend
from mdtwist.console import CommandError, Locations, plural, read_new_password, write_json
from mdtwist.control.client import ControlClientError, call
from mdtwist.control.commands import Reload
from mdtwist.directory.file import parse_accounts
from mdtwist.directory.passwords import hash_password
from mdtwist.durable import fsync_directory
from mdtwist.errors import ConfigError
from mdtwist.minger.client import Result
from mdtwist.sharing.commands import ask_peers


def add_parser(commands: Any) -> None:
    """
    Add C{account} and its subcommands to C{mdtwistctl}'s parser.

    @param commands: the top-level subparsers.
    """
    account = commands.add_parser(
        "account",
        help="list, add, disable accounts or change their passwords (accounts file)",
        description="Manage the accounts of the file directory (directory.file.path). Changes"
        " are checked, written atomically and reloaded by the running server.",
    )
    sub = account.add_subparsers(dest="account_command", metavar="ACCOUNT-COMMAND")
    listing = sub.add_parser(
        "list", help="list the accounts", description="List the accounts of the file."
    )
    listing.add_argument("--domain", metavar="DOMAIN", help="only this domain's accounts")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    add = sub.add_parser(
        "add",
        help="add an account",
        description="Add an account. Its password is read twice on a terminal, else as one"
        " line of standard input. With Domain Sharing on, every peer is asked first.",
    )
    add.add_argument("address", metavar="ADDRESS", help="its address, in a local domain")
    add.add_argument("--name", default="", help="its display name")
    add.add_argument("--first-name", default="", help="its first name")
    add.add_argument("--last-name", default="", help="its last name")
    add.add_argument(
        "--alias", action="append", default=[], metavar="ADDRESS", help="another address of it"
    )
    add.add_argument("--login", help="a login name besides the address")
    add.add_argument("--disabled", action="store_true", help="add it disabled")
    add.add_argument(
        "--force",
        action="store_true",
        help="go ahead when a Domain Sharing peer cannot be asked (never when one has it)",
    )
    for name, text in (
        ("disable", "refuse an account's mail (550 5.2.1) and logins"),
        ("enable", "accept an account's mail and logins again"),
        ("passwd", "give an account a new password"),
    ):
        parser = sub.add_parser(name, help=text, description=text.capitalize() + ".")
        parser.add_argument("address", metavar="ADDRESS", help="the account's address")
    for parser in sub.choices.values():
        if parser is not listing:
            parser.add_argument(
                "--no-reload",
                action="store_true",
                help="do not ask the running server to reload its accounts",
            )


def run(
    options: argparse.Namespace, locations: Locations, stdin: TextIO, out: TextIO, err: TextIO
) -> int:
    """
    Run an C{account} command.

    @param options: the parsed command line.
    @param locations: where the configuration is.
    @param stdin: where a password is read.
    @param out: where results go.
    @param err: where notes go.
    @return: the exit status.
    @raise CommandError: when the command fails.
    """
    config = locations.config()
    path = _accounts_file(config)
    name = options.account_command
    if name == "list":
        _list(path, options.domain, options.json, out)
        return 0
    document = _load(path)
    if name == "add":
        _add(config, path, document, options, stdin, out)
        what = f"Added {options.address}"
    else:
        entry = _find(document, options.address)
        if name == "passwd":
            entry["password"] = hash_password(read_new_password(stdin))
            what = f"New password for {entry['address']}"
        elif name == "disable":
            entry["enabled"] = False
            what = f"Disabled {entry['address']}"
        else:
            if "enabled" in entry:
                del entry["enabled"]
            what = f"Enabled {entry['address']}"
    _save(path, document)
    out.write(what + "\n")
    if not options.no_reload:
        _reload(locations, out, err)
    return 0


def _accounts_file(config: Config) -> Path:
    directory = config.directory
    if directory.backend is not DirectoryBackend.FILE or directory.file is None:
        raise CommandError(
            f"{config.path}: directory.backend: the accounts are in {directory.backend.value},"
            " not in an accounts file; manage them there"
        )
    return directory.file.path


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"{path}: cannot read: {e}") from None


def _check(path: Path, text: str) -> None:
    try:
        parse_accounts(text.encode("utf-8"), path)
    except ConfigError as e:
        raise CommandError("\n".join(e.problems)) from None


def _list(path: Path, domain: str | None, as_json: bool, out: TextIO) -> None:
    text = _read(path)
    _check(path, text)
    entries = _entries(tomlkit.parse(text))
    rows: list[dict[str, Any]] = []
    for entry in entries:
        address = str(entry["address"])
        parsed = parse_address(address)
        if domain is not None and (parsed is None or parsed.domain != domain.lower()):
            continue
        rows.append(
            {
                "address": address,
                "name": str(entry.get("name", "")),
                "login": str(entry.get("login", "")) or address,
                "aliases": [str(alias) for alias in entry.get("aliases", [])],
                "enabled": bool(entry.get("enabled", True)),
            }
        )
    if as_json:
        write_json(out, rows)
        return
    for row in rows:
        state = "enabled " if row["enabled"] else "disabled"
        aliases = f"  aliases: {', '.join(row['aliases'])}" if row["aliases"] else ""
        name = f"  {row['name']}" if row["name"] else ""
        out.write(f"{row['address']}  {state}{name}{aliases}\n")
    out.write(f"{plural(len(rows), 'account')}\n")


def _load(path: Path) -> tomlkit.TOMLDocument:
    text = _read(path)
    try:
        _check(path, text)
    except CommandError as e:
        raise CommandError(f"{e}\n{path}: has problems; fix them before changing it") from None
    return tomlkit.parse(text)


def _entries(document: tomlkit.TOMLDocument) -> list[Table]:
    accounts = document.get("account")
    if accounts is None:
        return []
    return list(accounts)


def _find(document: tomlkit.TOMLDocument, address: str) -> Table:
    key = address_key(address)
    for entry in _entries(document):
        addresses = [str(entry["address"]), *(str(a) for a in entry.get("aliases", []))]
        if key is not None and key in (address_key(a) for a in addresses):
            if address_key(str(entry["address"])) != key:
                raise CommandError(f"{address} is an alias of {entry['address']}; name that")
            return entry
    raise CommandError(f"no account {address}")


def _add(
    config: Config,
    path: Path,
    document: tomlkit.TOMLDocument,
    options: argparse.Namespace,
    stdin: TextIO,
    out: TextIO,
) -> None:
    parsed = parse_address(options.address)
    if parsed is None:
        raise CommandError(f"{options.address!r} is not an address such as user@example.com")
    addresses = [str(parsed)]
    for alias in options.alias:
        parsed_alias = parse_address(alias)
        if parsed_alias is None:
            raise CommandError(f"{alias!r} is not an address")
        addresses.append(str(parsed_alias))
    table = tomlkit.table()
    table["address"] = addresses[0]
    table["password"] = ""  # set below, once the peers have been asked
    for key, value in (
        ("name", options.name),
        ("first_name", options.first_name),
        ("last_name", options.last_name),
    ):
        if value:
            table[key] = value
    if options.alias:
        table["aliases"] = addresses[1:]
    if options.login:
        table["login"] = options.login
    if options.disabled:
        table["enabled"] = False
    accounts = document.get("account")
    if accounts is None:
        accounts = AoT([])
        document["account"] = accounts
    # Check the new file before asking anybody: a duplicate or a foreign domain is refused
    # here (with a placeholder hash that parses).
    accounts.append(table)
    table["password"] = hash_password(os.urandom(8).hex())
    _check(path, tomlkit.dumps(document))
    if config.sharing.enable and config.sharing.peers:
        _ask_peers(config, addresses, options.force, out)
    table["password"] = hash_password(read_new_password(stdin))


def _ask_peers(config: Config, addresses: list[str], force: bool, out: TextIO) -> None:
    unreachable: list[str] = []
    for address in addresses:
        try:
            check = ask_peers(config, address)
        except ValueError as e:
            raise CommandError(str(e)) from None
        for peer, result in check.answers:
            out.write(f"{address}: {peer.route}  {result.value}\n")
            if result in (Result.ACTIVE, Result.INACTIVE):
                raise CommandError(
                    f"{address} exists on the Domain Sharing peer {peer.route}; not added"
                )
            if result is not Result.UNKNOWN:
                unreachable.append(f"{peer.route} ({result.value})")
    if unreachable and not force:
        raise CommandError(
            "cannot verify that no Domain Sharing peer has the address: "
            + ", ".join(unreachable)
            + "; not added (--force adds it anyway)"
        )


def _save(path: Path, document: tomlkit.TOMLDocument) -> None:
    text = tomlkit.dumps(document)
    _check(path, text)
    try:
        mode = path.stat().st_mode & 0o7777
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        temporary = Path(name)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, mode)
            info = path.stat()
            if os.geteuid() == 0:
                os.chown(temporary, info.st_uid, info.st_gid)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        fsync_directory(path.parent)
    except OSError as e:
        raise CommandError(f"{path}: cannot write: {e.strerror or e}") from None


def _reload(locations: Locations, out: TextIO, err: TextIO) -> None:
    try:
        answer = call(locations.socket(), Reload)
    except ControlClientError as e:
        out.write(f"Not reloaded: {e}; the server reads the file when it starts\n")
        return
    for problem in answer["problems"]:
        err.write(f"mdtwistctl: not reloaded: {problem}\n")
    if not answer["problems"]:
        out.write(
            f"The server reloaded its accounts"
            f" ({plural(len(answer['shards']), 'process', 'processes')})\n"
        )
