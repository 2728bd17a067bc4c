# -*- test-case-name: tests.test_check,tests.integration.test_check_ldap -*-
"""
C{mdtwistctl check [--ldap]}: check a configuration the way the server would use it.

Without C{--ldap}: the configuration file (every problem as C{file: key: reason}, then the
warnings of C{--check}), the accounts file of the file backend, and the TLS certificate and
key. With C{--ldap}, also the configured directory, over the network, as the server's bind DN:

  - connect (and StartTLS), bind;
  - the base DN exists;
  - every attribute the configuration names (C{[directory.ldap.attributes]}, and those in
    C{filter} and C{auth_filter}) and every object class in the filters is in the server's
    schema; a missing one is a problem, because the server would never find those values
    (an alias attribute missing from the schema makes every alias answer 550);
  - an entry matches the filter (with every address), and which configured attributes the bind
    DN could read in it;
  - C{auth_method = "compare"} against hashed C{userPassword} values: OpenLDAP compares the
    stored value as it is, so a password never equals its C{{SSHA}} hash.

Each finding is one line: C{ok: ...}, C{warning: ...}, or a problem (C{file: key: reason}).
The exit status is 1 when there is a problem, else 0.
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import attrs
import ldap3
from ldap3.core.exceptions import LDAPException, LDAPOperationResult

from mdtwist.config import (
    Config,
    DirectoryBackend,
    LDAPAuthMethod,
    LDAPConfig,
    config_warnings,
    load_config,
)
from mdtwist.directory.file import parse_accounts
from mdtwist.errors import ConfigError

#: Stock OpenLDAP schema files that hold attributes often configured, for the hint of a
#: missing one.
_HINTS = {
    "mailalternateaddress": "not in any stock OpenLDAP schema; misc.schema has mailLocalAddress",
    "maillocaladdress": "in OpenLDAP's misc.schema (objectClass inetLocalMailRecipient)",
    "employeetype": "in inetorgperson.schema",
}


class Report:
    """
    The findings of a check.

    @ivar problems: the lines of problems.
    @ivar lines: every line in order.
    """

    def __init__(self, source: Path) -> None:
        """
        @param source: the configuration file, named in problems.
        """
        self.source = source
        self.problems: list[str] = []
        self.lines: list[str] = []

    def ok(self, text: str) -> None:
        """
        @param text: what was found to be right.
        """
        self.lines.append(f"ok: {text}")

    def warning(self, key: str, text: str) -> None:
        """
        @param key: the configuration key concerned.
        @param text: what is allowed but probably wrong.
        """
        self.lines.append(f"{self.source}: {key}: warning: {text}")

    def problem(self, key: str, text: str) -> None:
        """
        @param key: the configuration key concerned.
        @param text: what is wrong.
        """
        line = f"{self.source}: {key}: {text}"
        self.problems.append(line)
        self.lines.append(line)


def check(path: Path, *, ldap: bool, connect: Callable[[LDAPConfig], Any] | None = None) -> Report:
    """
    Check a configuration.

    @param path: the configuration file.
    @param ldap: also check the LDAP directory over the network.
    @param connect: opens and binds the LDAP connection (for tests); L{open_ldap} by default.
    @return: the findings.
    """
    report = Report(path)
    try:
        config = load_config(path)
    except ConfigError as e:
        report.problems += e.problems
        report.lines += e.problems
        return report
    report.ok(f"{path}: configuration is valid")
    for line in config_warnings(config):
        report.lines.append(line)
    _check_accounts(config, report)
    _check_tls(config, report)
    if ldap:
        if config.directory.ldap is None:
            report.problem("directory.backend", "--ldap: the directory backend is not 'ldap'")
        else:
            check_ldap(config.directory.ldap, report, connect or open_ldap)
    return report


def _check_accounts(config: Config, report: Report) -> None:
    settings = config.directory.file
    if config.directory.backend is not DirectoryBackend.FILE or settings is None:
        return
    try:
        table = parse_accounts(settings.path.read_bytes(), settings.path)
    except OSError as e:
        report.problem("directory.file.path", f"cannot read {settings.path}: {e.strerror}")
        return
    except ConfigError as e:
        report.problems += e.problems
        report.lines += e.problems
        return
    accounts = len(table.hashes)
    report.ok(f"{settings.path}: {accounts} account{'' if accounts == 1 else 's'}")


def _check_tls(config: Config, report: Report) -> None:
    if config.tls is None:
        return
    from mdtwist.smtp.tls import server_tls_options

    try:
        server_tls_options(config.tls.certificate, config.tls.private_key)
    except ConfigError as e:
        report.problems += e.problems
        report.lines += e.problems
        return
    report.ok(f"{config.tls.certificate}: the certificate and its key load")


def open_ldap(config: LDAPConfig) -> ldap3.Connection:
    """
    Open a connection to the configured directory as the server would (TLS verified as
    configured), with the server's schema read, and bind as the bind DN (or anonymously).

    @param config: the LDAP settings.
    @return: the bound connection (C{SYNC} strategy).
    @raise LDAPException: when the server cannot be reached or refuses the bind.
    """
    parts = urlsplit(config.url)
    host = parts.hostname or ""
    use_ssl = parts.scheme == "ldaps"
    tls = None
    if use_ssl or config.start_tls:
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=None if config.ca_file is None else str(config.ca_file),
        )
    server = ldap3.Server(
        host,
        port=parts.port or (636 if use_ssl else 389),
        use_ssl=use_ssl,
        tls=tls,
        get_info=ldap3.ALL,
        connect_timeout=config.connect_timeout,
    )
    password = None if config.bind_password is None else config.bind_password.reveal()
    connection = ldap3.Connection(
        server,
        user=config.bind_dn or None,
        password=password,
        receive_timeout=max(1, math.ceil(config.receive_timeout)),
        auto_referrals=False,
        read_only=True,
        raise_exceptions=True,
    )
    connection.open()
    if config.start_tls:
        connection.start_tls()
    connection.bind()
    return connection


_NAME = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*)\s*[~<>]?=")
_OBJECT_CLASS = re.compile(r"\(\s*objectClass\s*=\s*([A-Za-z][A-Za-z0-9-]*)\s*\)", re.IGNORECASE)


def _filter_attributes(text: str) -> list[str]:
    # The attribute names a filter template tests.
    return sorted({name for name in _NAME.findall(text)}, key=str.lower)


def check_ldap(
    config: LDAPConfig, report: Report, connect: Callable[[LDAPConfig], Any] = open_ldap
) -> None:
    """
    Check the directory over the network (see the module docstring).

    @param config: the LDAP settings.
    @param report: gets the findings.
    @param connect: opens and binds the connection.
    """
    who = config.bind_dn or "anonymous"
    try:
        connection = connect(config)
    except LDAPOperationResult as e:
        # The server answered: the bind (or StartTLS) was refused.
        report.problem("directory.ldap.bind_dn", f"cannot bind as {who}: {e.description}")
        return
    except LDAPException as e:
        report.problem("directory.ldap.url", f"cannot connect to {config.url}: {e}")
        return
    try:
        report.ok(f"{config.url}: bound as {who}")
        _check_base(config, connection, report)
        _check_schema(config, connection, report)
        _check_entries(config, connection, report)
    except LDAPException as e:
        report.problem("directory.ldap", f"the directory failed: {e}")
    finally:
        connection.unbind()


def _check_base(config: LDAPConfig, connection: Any, report: Report) -> None:
    try:
        connection.search(config.base_dn, "(objectClass=*)", search_scope=ldap3.BASE)
    except LDAPException as e:
        report.problem("directory.ldap.base_dn", f"cannot read {config.base_dn}: {e}")
        return
    report.ok(f"{config.base_dn}: exists")


def _check_schema(config: LDAPConfig, connection: Any, report: Report) -> None:
    schema = connection.server.schema
    if schema is None or not schema.attribute_types:
        report.warning(
            "directory.ldap",
            f"the server's schema cannot be read as {connection.user or 'anonymous'}",
        )
        return
    known = {name.lower() for name in schema.attribute_types}
    classes = {name.lower() for name in schema.object_classes}
    named: list[tuple[str, str]] = [
        (f"directory.ldap.attributes.{field}", value)
        for field, value in attrs.asdict(config.attributes).items()
        if value
    ]
    for key in ("filter", "auth_filter"):
        template = getattr(config, key)
        named += [(f"directory.ldap.{key}", name) for name in _filter_attributes(template)]
        for name in _OBJECT_CLASS.findall(template):
            if name.lower() not in classes:
                report.problem(
                    f"directory.ldap.{key}", f"the server's schema has no object class {name}"
                )
    missing = 0
    for key, name in named:
        if name.lower() not in known:
            missing += 1
            hint = _HINTS.get(name.lower())
            report.problem(
                key,
                f"the server's schema has no attribute {name}" + (f" ({hint})" if hint else ""),
            )
    if not missing:
        report.ok("every configured attribute is in the server's schema")


def _check_entries(config: LDAPConfig, connection: Any, report: Report) -> None:
    names = config.attributes
    wanted = sorted({v for v in attrs.asdict(names).values() if v} - {names.password})
    query = config.filter.replace("{address}", "*")
    try:
        connection.search(
            config.base_dn,
            query,
            search_scope=ldap3.SUBTREE,
            attributes=[*wanted, names.password] if names.password else wanted,
            size_limit=20,
        )
    except LDAPException as e:
        if "sizeLimitExceeded" not in type(e).__name__ and "size" not in str(e).lower():
            report.problem("directory.ldap.filter", f"the search failed: {e}")
            return
    entries = [
        entry for entry in connection.response or [] if entry.get("type") == "searchResEntry"
    ]
    if not entries:
        report.warning(
            "directory.ldap.filter",
            f"no entry under {config.base_dn} matches {query}: no account would be found (or"
            " the bind DN may not read the entries)",
        )
        return
    read: set[str] = set()
    hashed = False
    for entry in entries:
        attributes = entry.get("attributes") or {}
        read |= {name.lower() for name, value in attributes.items() if value not in (None, [], "")}
        for value in _as_list(attributes.get(names.password)):
            text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
            hashed = hashed or text.startswith("{")
    report.ok(
        f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} match the filter; the bind DN"
        f" read: {', '.join(sorted(n for n in wanted if n.lower() in read)) or 'nothing'}"
    )
    never = [name for name in wanted if name.lower() not in read]
    if names.mail in never:
        report.problem(
            "directory.ldap.attributes.mail",
            f"the bind DN read no {names.mail} value in the matching entries (check the ACL)",
        )
    elif never:
        report.warning(
            "directory.ldap.attributes",
            f"none of these entries had a readable {', '.join(never)} (not set, or the ACL"
            " hides it from the bind DN)",
        )
    if config.auth_method is LDAPAuthMethod.COMPARE:
        text = (
            f"'compare' compares the password as typed with the stored {names.password};"
            " OpenLDAP stores it hashed ({SSHA}, {CRYPT}, ...), and a compare with a hashed"
            " value never matches: use auth_method = 'bind'"
        )
        if hashed:
            report.problem("directory.ldap.auth_method", text + " (hashed values found)")
        else:
            report.warning("directory.ldap.auth_method", text)


def _as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run(path: Path, ldap: bool, out: TextIO) -> int:
    """
    Run C{mdtwistctl check}: print the findings.

    @param path: the configuration file.
    @param ldap: also check the LDAP directory.
    @param out: where the lines go.
    @return: the exit status (1 when there is a problem).
    """
    report = check(path, ldap=ldap)
    for line in report.lines:
        out.write(line + "\n")
    return 1 if report.problems else 0
