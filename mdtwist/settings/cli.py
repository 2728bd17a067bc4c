# -*- test-case-name: tests.settings.test_cli -*-
"""
C{mdtwistctl settings ...}: edit and inspect the client settings.

  - C{settings show [--domain D] [--merged]}: a document as TOML (C{--merged}: the settings
    in force for the domain, defaults included);
  - C{settings set [--domain D] PATH VALUE}: set one field (C{inherit true|false} for a
    domain: override the global document field by field, or replace it);
  - C{settings unset [--domain D] PATH}: remove a field, so it is inherited again;
  - C{settings import [--domain D] FILE}: take every field of a TOML or JSON document;
  - C{settings srv DOMAIN}: the DNS SRV records to publish (RFC 6186, RFC 8314);
  - C{settings status}: the clients that have not applied the settings in force;
  - C{settings fields}, C{settings macros}: the schema and the macro reference.

A save that changes nothing leaves the file and its revision alone. The running server reads
changed files within a second.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tomllib
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from mdtwist.config import Config, load_config
from mdtwist.settings import render
from mdtwist.settings.model import (
    GLOBAL,
    SettingsDocument,
    SettingsError,
    document_from_mapping,
    document_to_mapping,
    macro_reference,
    parse_text_value,
    schema_reference,
    source_hash,
    value_to_plain,
)
from mdtwist.settings.store import (
    RECEIPTS_NAME,
    Policy,
    ReceiptStore,
    SettingsSource,
    SettingsStore,
    behind,
    check_domain,
)


class CommandError(Exception):
    """
    A settings command failed; the message is for the user.
    """


def add_parser(commands: Any) -> None:
    """
    Add the C{settings} command to C{mdtwistctl}'s parser.

    @param commands: the sub-parsers object of the top parser.
    """
    settings = commands.add_parser("settings", help="edit and inspect the client settings")
    sub = settings.add_subparsers(dest="settings_command", metavar="SETTINGS-COMMAND")

    def command(name: str, text: str, *, domain: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=text)
        parser.add_argument(
            "--config", default="etc/mdtwist.toml", metavar="FILE", help="the configuration"
        )
        if domain:
            parser.add_argument(
                "--domain", metavar="DOMAIN", help="a domain's document (default: the global one)"
            )
        return parser

    show = command("show", "print a settings document")
    show.add_argument("--merged", action="store_true", help="the settings in force, defaults too")
    edit = command("set", "set one field")
    edit.add_argument("path", metavar="PATH", help="e.g. general.organization")
    edit.add_argument("value", metavar="VALUE")
    unset = command("unset", "remove one field so it is inherited")
    unset.add_argument("path", metavar="PATH")
    imported = command("import", "take every field of a TOML or JSON document")
    imported.add_argument("file", metavar="FILE")
    srv = command("srv", "print the SRV records to publish for a domain", domain=False)
    srv.add_argument("srv_domain", metavar="DOMAIN")
    srv.add_argument("--ttl", type=int, default=3600)
    command("status", "list clients that are behind", domain=False)
    command("fields", "list the fields of the settings", domain=False)
    command("macros", "list the macros", domain=False)


def run(options: argparse.Namespace, out: TextIO, *, now: float | None = None) -> None:
    """
    Run a C{settings} command.

    @param options: the parsed command line.
    @param out: where results go.
    @param now: the time of a change (seconds since the epoch); the clock when L{None}.
    @raise CommandError: when the command fails.
    """
    name = options.settings_command
    if name == "fields":
        for row in schema_reference():
            macros = " (macros)" if row["macros"] else ""
            choices = f" {'|'.join(row['choices'])}" if "choices" in row else ""  # type: ignore[arg-type]
            out.write(f"{row['path']}  {row['kind']}{choices}{macros}: {row['description']}\n")
        return
    if name == "macros":
        for macro in macro_reference():
            out.write(f"{macro['macro']}: {macro['meaning']}\n")
        return
    if name is None:
        raise CommandError("settings: say show, set, unset, import, srv, status, fields or macros")
    try:
        config = load_config(options.config)
    except Exception as e:  # ConfigError and whatever reading the file raised
        raise CommandError(str(e)) from None
    source = _source(config)
    try:
        if name == "show":
            _show(source, _scope(options), options.merged, out)
        elif name in ("set", "unset", "import"):
            _edit(source, _scope(options), options, out, now)
        elif name == "srv":
            _srv(config, source, options.srv_domain, options.ttl, out)
        elif name == "status":
            _status(config, source, out)
    except SettingsError as e:
        raise CommandError("\n".join(e.problems)) from None


def _source(config: Config) -> SettingsSource:
    from mdtwist.services import server_facts, settings_config

    settings = settings_config(config)
    store = SettingsStore(settings.directory)
    try:
        store.load()
    except SettingsError as e:
        raise CommandError("\n".join(e.problems)) from None
    policy = Policy(push_enabled=settings.push_enabled, allow_override=settings.allow_override)
    return SettingsSource(store, server_facts(config), policy)


def _scope(options: argparse.Namespace) -> str:
    return GLOBAL if options.domain is None else check_domain(options.domain)


def _show(source: SettingsSource, scope: str, merged: bool, out: TextIO) -> None:
    if merged:
        settings = source.merged(GLOBAL if scope == GLOBAL else scope)
        flat = {path: value_to_plain(value) for path, value in sorted(settings.values.items())}
        nested: dict[str, Any] = {"sources": list(settings.sources)}
        for path, value in flat.items():
            table = nested
            *parents, leaf = path.split(".")
            for part in parents:
                table = table.setdefault(part, {})
            table[leaf] = value
        out.write(tomli_w.dumps(nested))
        return
    out.write(f"# {source.store.path_of(scope)}\n")
    out.write(tomli_w.dumps(document_to_mapping(source.store.document_or_empty(scope))))


def _edit(
    source: SettingsSource,
    scope: str,
    options: argparse.Namespace,
    out: TextIO,
    now: float | None,
) -> None:
    moment = datetime.datetime.now(datetime.UTC) if now is None else None
    if now is not None:
        moment = datetime.datetime.fromtimestamp(now, datetime.UTC)
    assert moment is not None
    modified = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    document = source.store.document_or_empty(scope)
    command = options.settings_command
    if command == "import":
        changed = document.replaced(_read_document(scope, Path(options.file)), modified)
    elif options.path == "inherit":
        if scope == GLOBAL:
            raise CommandError("inherit: only a domain document can replace the global one")
        flag = True if command == "unset" else _flag(options.value)
        changed = document.with_inherit(flag, modified)
    elif command == "set":
        changed = document.with_value(
            options.path, parse_text_value(options.path, options.value), modified
        )
    else:
        if options.path not in {row["path"] for row in schema_reference()}:
            raise CommandError(f"{options.path}: unknown setting")
        changed = document.with_value(options.path, None, modified)
    name = "global" if scope == GLOBAL else scope
    if changed is document:
        out.write(f"{name}: unchanged (revision {document.revision})\n")
        return
    source.store.save(changed)
    out.write(f"{name}: saved revision {changed.revision} to {source.store.path_of(scope)}\n")


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "on", "1"):
        return True
    if lowered in ("false", "no", "off", "0"):
        return False
    raise CommandError(f"inherit: expected true or false, got {text!r}")


def _read_document(scope: str, path: Path) -> SettingsDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise CommandError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise CommandError(f"{path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise CommandError(f"{path}: expected a table of settings")
    for key in ("revision", "modified"):
        data.pop(key, None)
    try:
        return document_from_mapping(scope, data)
    except SettingsError as e:
        raise CommandError("\n".join(f"{path}: {line}" for line in e.problems)) from None


def _srv(config: Config, source: SettingsSource, domain: str, ttl: int, out: TextIO) -> None:
    from mdtwist.shards import listen_spec

    domain = check_domain(domain)
    https_port = None
    for listen in config.http.listen:
        spec = listen_spec(listen.endpoint)
        if spec is not None and (listen.tls or spec.tls is not None):
            https_port = spec.port
            break
    facts = source.facts
    profile = render.client_profile(
        source.merged(domain), domain, facts, render.placeholders(domain, facts)
    )
    for line in render.srv_records(profile, https_port=https_port, ttl=ttl):
        out.write(line + "\n")


def _status(config: Config, source: SettingsSource, out: TextIO) -> None:
    path = config.spool.directory / RECEIPTS_NAME
    if not path.is_file():
        out.write("no client has reported yet\n")
        return
    receipts = ReceiptStore(path, read_only=True)
    try:
        rows = receipts.receipts()
    finally:
        receipts.close()
    current: dict[str, str] = {}
    count = 0
    for receipt in rows:
        domain = receipt.account.rpartition("@")[2].lower()
        if domain not in current:
            current[domain] = source_hash(source.merged(domain))
        reason = behind(receipt, current)
        if not reason:
            continue
        count += 1
        when = datetime.datetime.fromtimestamp(receipt.applied_at, datetime.UTC)
        out.write(
            f"{receipt.account}  {receipt.client}  {receipt.client_version or '-'}"
            f"  applied {receipt.applied_version} at {when:%Y-%m-%dT%H:%M:%SZ}: {reason}\n"
        )
    out.write(f"{count} of {len(rows)} {'client' if len(rows) == 1 else 'clients'} behind\n")
