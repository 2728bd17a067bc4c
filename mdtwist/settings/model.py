# -*- test-case-name: tests.settings.test_model -*-
"""
Client settings: the schema of the screens, the global and per-domain documents, their merge,
and the macros expanded for each user.

Theory of operation. The administrator keeps one global L{SettingsDocument} and one per domain.
A document is sparse: it holds only the fields it sets, as a flat mapping from a dotted path
(C{general.display_name}, C{advanced.imap.security}) to a typed value. Every path is declared
once in L{FIELDS}, with its kind, its default and whether it may hold macros; a document that
names an unknown path, holds a value of the wrong kind, a macro where the field takes none, or
a macro nobody knows is refused with one C{path: reason} line per problem
(L{SettingsError}), so a typo never reaches a client.

L{merge} layers the code defaults (which come from the server's own listeners, see
L{ServerFacts}), the global document and the domain's document: scalars and lists replace, the
add-in rules merge by name. A domain document with C{inherit = false} replaces the global one
(it is still filled from the defaults). L{expand} then replaces the macros of every text field
for one user in a single left-to-right pass (text that came from a macro is never scanned
again), and L{version_of} hashes the expanded content: the version changes when anything the
user would see changes (a rename included) and never on a save that changed nothing.

Nothing here does I/O or reads a clock: times are parameters.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

import attrs

from mdtwist.errors import MdtwistError

#: The schema name carried by every served document.
SCHEMA = "mdtwist.client-settings/1"

#: The oldest client that understands the settings, and the oldest that has the add-ins screen.
MIN_CLIENT_VERSION = (4, 0)
MIN_ADDINS_VERSION = (5, 0)

#: The screens, in the order of MDaemon's dialog.
SCREENS = (
    "general",
    "advanced",
    "folders",
    "send_receive",
    "misc",
    "database",
    "signature",
    "addins",
)


class Security(enum.Enum):
    """
    How a client protects a connection: never two SSL/TLS booleans.
    """

    IMPLICIT_TLS = "implicit-tls"
    STARTTLS = "starttls"
    NONE = "none"


class Kind(enum.Enum):
    """
    The type of a field's value.
    """

    TEXT = "text"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    TEXT_LIST = "text-list"
    RULES = "rules"


@attrs.frozen
class AddinRule:
    """
    What the client does with one Outlook add-in.

    @ivar name: the add-in's name as Outlook shows it.
    @ivar action: C{disable}, C{allow} or C{default} (the screen's default action).
    """

    name: str
    action: str


#: A field's value: text, a number, a flag, a list of texts or the add-in rules.
Value: TypeAlias = str | int | bool | tuple[str, ...] | tuple[AddinRule, ...]

_ADDIN_ACTIONS = ("disable", "allow", "default")


@attrs.frozen
class Field:
    """
    One setting on one screen.

    @ivar path: the dotted path; its first part is the screen (or C{policy}).
    @ivar kind: the type of its value.
    @ivar default: the value when no document sets it.
    @ivar description: one line for the administrator.
    @ivar macros: whether the text may hold macros.
    @ivar choices: the allowed values of a C{CHOICE} field.
    @ivar minimum: the smallest C{INTEGER}.
    @ivar maximum: the largest C{INTEGER}.
    """

    path: str
    kind: Kind
    default: Value
    description: str
    macros: bool = False
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 2**31 - 1

    @property
    def screen(self) -> str:
        """
        The screen the field is on (or C{policy}).
        """
        return self.path.partition(".")[0]


_SECURITY = tuple(s.value for s in Security)


def _text(path: str, default: str, description: str, *, macros: bool = False) -> Field:
    return Field(path, Kind.TEXT, default, description, macros=macros)


def _flag(path: str, default: bool, description: str) -> Field:
    return Field(path, Kind.BOOLEAN, default, description)


def _number(
    path: str, default: int, description: str, low: int = 0, high: int = 2**31 - 1
) -> Field:
    return Field(path, Kind.INTEGER, default, description, minimum=low, maximum=high)


def _choice(path: str, default: str, choices: tuple[str, ...], description: str) -> Field:
    return Field(path, Kind.CHOICE, default, description, choices=choices)


#: Every field. The advanced ports and securities given here are placeholders: the real
#: defaults come from the server's listeners (L{defaults}).
FIELDS: tuple[Field, ...] = (
    _flag("policy.push_enabled", False, "push client settings to users"),
    _flag("policy.allow_override", False, "users may change pushed settings"),
    _text("general.display_name", "$USERNAME$", "your name (From: header)", macros=True),
    _text("general.organization", "", "organization", macros=True),
    _text("general.email", "$EMAIL$", "email address (From: header)", macros=True),
    _text("general.account_name", "mdtwist Connector", "account label in the client", macros=True),
    _text("general.incoming_server", "$FQDN$", "incoming mail server (IMAP)", macros=True),
    _text("general.outgoing_server", "$FQDN$", "outgoing mail server (SMTP)", macros=True),
    _text("general.login_name", "$EMAIL$", "login name", macros=True),
    _choice("advanced.imap.security", "implicit-tls", _SECURITY, "IMAP connection security"),
    _number("advanced.imap.port", 993, "IMAP port", 1, 65535),
    _choice("advanced.smtp.security", "implicit-tls", _SECURITY, "SMTP connection security"),
    _number("advanced.smtp.port", 465, "SMTP port", 1, 65535),
    _flag("advanced.smtp_auth.required", True, "SMTP server requires authentication"),
    _flag("advanced.smtp_auth.same_as_incoming", True, "SMTP uses the IMAP login"),
    _text("advanced.smtp_auth.login_name", "", "separate SMTP login name", macros=True),
    _number("advanced.server_timeout_seconds", 60, "server timeout in seconds", 1, 3600),
    _choice(
        "folders.sync", "subscribed", ("all", "subscribed", "selected"), "folders to synchronise"
    ),
    Field("folders.selected", Kind.TEXT_LIST, (), "folders synchronised when sync = selected"),
    _text("folders.special_use.sent", "Sent", "folder of sent mail (RFC 6154 \\Sent)"),
    _text("folders.special_use.drafts", "Drafts", "folder of drafts (\\Drafts)"),
    _text("folders.special_use.trash", "Trash", "folder of deleted mail (\\Trash)"),
    _text("folders.special_use.junk", "Junk", "folder of junk mail (\\Junk)"),
    _flag("send_receive.headers_only", True, "download headers only"),
    _flag("send_receive.progress_indicator", True, "show a progress indicator"),
    _number("send_receive.progress_threshold", 50, "messages before the indicator shows", 1),
    _flag("send_receive.allow_download_cancel", True, "a download may be cancelled"),
    _choice("send_receive.check_folders", "all", ("all", "selected"), "folders checked"),
    Field("send_receive.selected_folders", Kind.TEXT_LIST, (), "folders checked when selected"),
    _text("misc.local_cache_path", "", "local cache directory (empty: default)", macros=True),
    _choice(
        "misc.read_receipt_response",
        "prompt",
        ("always", "never", "prompt"),
        "answer to read-receipt requests",
    ),
    _flag("database.purge_on_exit", True, "purge old message bodies when the client exits"),
    _number("database.purge_bodies_older_than_days", 30, "purge bodies older than (0 = never)"),
    _flag("database.compact_on_exit", True, "compact the local database on exit"),
    _flag("signature.enabled", False, "push a signature"),
    _text("signature.name", "", "signature name", macros=True),
    _text("signature.html", "", "signature (HTML)", macros=True),
    _text("signature.text", "", "signature (plain text)", macros=True),
    _flag("signature.use_for_new", True, "use for new messages"),
    _flag("signature.use_for_replies", False, "use for replies and forwards"),
    _choice("addins.default_action", "allow", ("allow", "disable"), "action for unlisted add-ins"),
    Field("addins.rules", Kind.RULES, (), "add-ins by name: disable, allow or default"),
)

FIELDS_BY_PATH: Mapping[str, Field] = {f.path: f for f in FIELDS}


class SettingsError(MdtwistError):
    """
    A document or a value was refused.

    @ivar problems: one line per problem, C{path: reason}.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


# --- macros -----------------------------------------------------------------------------------

#: A macro: C{$NAME$}; C{$$} is a literal dollar sign.
_MACRO = re.compile(r"\$\$|\$([A-Z][A-Z0-9_]*)\$")
_FIRST_CHARS = re.compile(r"MAILBOXFIRSTCHARS([1-9]|10)")


@attrs.frozen
class Macro:
    """
    One macro of the reference the API serves.

    @ivar name: the name between the dollar signs.
    @ivar meaning: what it expands to.
    @ivar per_user: whether its value depends on the user (not only the domain).
    """

    name: str
    meaning: str
    per_user: bool


MACROS: tuple[Macro, ...] = (
    Macro("USERNAME", "the full name: the display name, else first and last name", True),
    Macro("USERFIRSTNAME", "the first name", True),
    Macro("USERLASTNAME", "the last name", True),
    Macro("USERFIRSTINITIAL", "the first letter of the first name", True),
    Macro("USERLASTINITIAL", "the first letter of the last name", True),
    Macro("EMAIL", "the email address", True),
    Macro("MAILBOX", "the mailbox: the local part of the address", True),
    Macro("MAILBOXFIRSTCHARSn", "the first n characters of the mailbox, n = 1 to 10", True),
    Macro("DOMAIN", "the domain of the address", False),
    Macro("FQDN", "the host name of the mail server", False),
    Macro("DOMAINIP", "the IP address given for the domain (empty if none)", False),
    Macro("MACHINENAME", "the name of the server machine", False),
)

_KNOWN_MACROS = frozenset(m.name for m in MACROS if not m.name.endswith("n"))


def is_known_macro(name: str) -> bool:
    """
    @param name: a macro name without the dollar signs.
    @return: whether L{expand} knows it.
    """
    return name in _KNOWN_MACROS or _FIRST_CHARS.fullmatch(name) is not None


def macros_in(text: str) -> list[str]:
    """
    @param text: a field's text.
    @return: the names of the macros in it, in order (C{$$} is not a macro).
    """
    return [m.group(1) for m in _MACRO.finditer(text) if m.group(1) is not None]


@attrs.frozen
class MacroContext:
    """
    What the macros of one user expand to.

    @ivar address: the primary address.
    @ivar display_name: the full name from the directory ("" if none).
    @ivar first_name: the first name.
    @ivar last_name: the last name.
    @ivar fqdn: the mail server's host name.
    @ivar domain_ip: the domain's IP address, if one is configured.
    @ivar machine_name: the server machine's name.
    """

    address: str
    display_name: str = ""
    first_name: str = ""
    last_name: str = ""
    fqdn: str = ""
    domain_ip: str = ""
    machine_name: str = ""

    @property
    def mailbox(self) -> str:
        """
        The local part of the address.
        """
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        """
        The domain of the address, lower-case.
        """
        return self.address.rpartition("@")[2].lower()

    def value(self, name: str) -> str | None:
        """
        @param name: a macro name.
        @return: its value for this user, or L{None} for an unknown macro.
        """
        first_chars = _FIRST_CHARS.fullmatch(name)
        if first_chars is not None:
            return self.mailbox[: int(first_chars.group(1))]
        full = self.display_name or " ".join(p for p in (self.first_name, self.last_name) if p)
        values = {
            "USERNAME": full,
            "USERFIRSTNAME": self.first_name,
            "USERLASTNAME": self.last_name,
            "USERFIRSTINITIAL": self.first_name[:1],
            "USERLASTINITIAL": self.last_name[:1],
            "EMAIL": self.address,
            "MAILBOX": self.mailbox,
            "DOMAIN": self.domain,
            "FQDN": self.fqdn,
            "DOMAINIP": self.domain_ip,
            "MACHINENAME": self.machine_name,
        }
        return values.get(name)


def expand(text: str, context: MacroContext | Mapping[str, str]) -> str:
    """
    Replace the macros of a text in one left-to-right pass.

    Text that came from a macro (a user's name, say) is never scanned again, so a user called
    C{$EMAIL$} stays C{$EMAIL$}. An unknown macro (only possible in a document that bypassed
    validation) stays as it is.

    @param text: the field's text.
    @param context: the user's values, or a mapping from macro name to replacement (the names
        it lacks stay as they are).
    @return: the expanded text.
    """

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        value = context.value(name) if isinstance(context, MacroContext) else context.get(name)
        return match.group(0) if value is None else value

    return _MACRO.sub(replace, text)


# --- values and documents ---------------------------------------------------------------------


def check_value(path: str, raw: object) -> Value:
    """
    Check one value as it came from a TOML or JSON document.

    @param path: the field's dotted path.
    @param raw: the value.
    @return: the typed value.
    @raise SettingsError: naming the field, when the path is unknown or the value is wrong.
    """
    field = FIELDS_BY_PATH.get(path)
    if field is None:
        raise SettingsError([f"{path}: unknown setting"])
    problem = _problem(field, raw)
    if problem is not None:
        raise SettingsError([f"{path}: {problem}"])
    if field.kind is Kind.TEXT_LIST:
        return tuple(raw)  # type: ignore[arg-type]
    if field.kind is Kind.RULES:
        return _rules(raw)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def _problem(field: Field, raw: object) -> str | None:
    kind = field.kind
    if kind is Kind.BOOLEAN:
        return None if isinstance(raw, bool) else "expected true or false"
    if kind is Kind.INTEGER:
        if not isinstance(raw, int) or isinstance(raw, bool):
            return "expected an integer"
        if not field.minimum <= raw <= field.maximum:
            return f"must be from {field.minimum} to {field.maximum}"
        return None
    if kind is Kind.CHOICE:
        if raw not in field.choices:
            return "must be one of " + ", ".join(field.choices)
        return None
    if kind is Kind.TEXT:
        if not isinstance(raw, str):
            return "expected a string"
        return _text_problem(field, raw)
    if kind is Kind.TEXT_LIST:
        if not isinstance(raw, list | tuple) or not all(isinstance(i, str) for i in raw):
            return "expected a list of strings"
        for item in raw:
            problem = _text_problem(field, item)
            if problem is not None:
                return problem
        return None
    if not isinstance(raw, list | tuple):
        return "expected a list of {name, action} tables"
    for item in raw:
        if isinstance(item, AddinRule):
            item = {"name": item.name, "action": item.action}
        if not isinstance(item, Mapping) or set(item) != {"name", "action"}:
            return "each rule needs exactly a name and an action"
        if not isinstance(item["name"], str) or not item["name"].strip():
            return "a rule's name must be a non-empty string"
        if item["action"] not in _ADDIN_ACTIONS:
            return "a rule's action must be one of " + ", ".join(_ADDIN_ACTIONS)
    return None


def _text_problem(field: Field, text: str) -> str | None:
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        return "control characters are not allowed"
    names = macros_in(text)
    if names and not field.macros:
        return f"macros are not allowed in this field (found ${names[0]}$)"
    unknown = [n for n in names if not is_known_macro(n)]
    if unknown:
        return f"unknown macro ${unknown[0]}$ (see the macro reference)"
    return None


def _rules(raw: Iterable[Any]) -> tuple[AddinRule, ...]:
    rules = []
    for item in raw:
        if isinstance(item, AddinRule):
            rules.append(item)
        else:
            rules.append(AddinRule(name=item["name"].strip(), action=item["action"]))
    return tuple(rules)


def parse_text_value(path: str, text: str) -> Value:
    """
    Read a value typed on a command line.

    Booleans are C{true}/C{false} (also yes/no, on/off), integers are decimal, lists are
    comma-separated (C{""} for an empty list), add-in rules are C{NAME=ACTION} separated by
    commas.

    @param path: the field's dotted path.
    @param text: the text.
    @return: the typed value.
    @raise SettingsError: naming the field, when the text does not fit.
    """
    field = FIELDS_BY_PATH.get(path)
    if field is None:
        raise SettingsError([f"{path}: unknown setting"])
    raw: object = text
    if field.kind is Kind.BOOLEAN:
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            raw = True
        elif lowered in ("false", "no", "off", "0"):
            raw = False
    elif field.kind is Kind.INTEGER:
        try:
            raw = int(text.strip(), 10)
        except ValueError:
            raise SettingsError([f"{path}: expected an integer, got {text!r}"]) from None
    elif field.kind is Kind.TEXT_LIST:
        raw = [part.strip() for part in text.split(",") if part.strip()]
    elif field.kind is Kind.RULES:
        rules = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, equals, action = part.rpartition("=")
            if not equals:
                raise SettingsError([f"{path}: write each rule as NAME=ACTION, got {part!r}"])
            rules.append({"name": name.strip(), "action": action.strip().lower()})
        raw = rules
    return check_value(path, raw)


def value_to_plain(value: Value) -> object:
    """
    @param value: a typed value.
    @return: the value as JSON and TOML hold it (rules become tables, tuples lists).
    """
    if isinstance(value, tuple):
        return [
            {"name": item.name, "action": item.action} if isinstance(item, AddinRule) else item
            for item in value
        ]
    return value


@attrs.frozen
class SettingsDocument:
    """
    The global settings, or one domain's.

    @ivar scope: C{global} or the domain name (lower-case).
    @ivar values: the fields this document sets, by dotted path.
    @ivar revision: counts the saves that changed something.
    @ivar modified: when it last changed (ISO 8601 text), or C{""}.
    @ivar inherit: for a domain: C{True} to override the global document field by field,
        C{False} to replace it (the defaults still fill the fields it leaves out).
    """

    scope: str
    values: Mapping[str, Value] = attrs.field(factory=dict)
    revision: int = 0
    modified: str = ""
    inherit: bool = True

    @property
    def source(self) -> str:
        """
        The name of this document in a served document's C{sources}.
        """
        name = "global" if self.scope == GLOBAL else f"domain:{self.scope}"
        return f"{name}@{self.revision}"

    def with_value(self, path: str, value: Value | None, modified: str) -> SettingsDocument:
        """
        Set or remove one field.

        @param path: the dotted path (already checked).
        @param value: the new value; L{None} removes the field, so it is inherited again.
        @param modified: the time of the change, as text.
        @return: the new document; the same one when nothing changed (its revision unchanged).
        """
        values = dict(self.values)
        if value is None:
            values.pop(path, None)
        else:
            values[path] = value
        return self._changed(values, self.inherit, modified)

    def with_inherit(self, inherit: bool, modified: str) -> SettingsDocument:
        """
        @param inherit: whether this domain document overrides the global one field by field.
        @param modified: the time of the change, as text.
        @return: the new document; the same one when nothing changed.
        """
        return self._changed(dict(self.values), inherit, modified)

    def replaced(self, other: SettingsDocument, modified: str) -> SettingsDocument:
        """
        Take every field of another document (an import), keeping this one's revision history.

        @param other: the imported document.
        @param modified: the time of the change, as text.
        @return: the new document; the same one when nothing changed.
        """
        return self._changed(dict(other.values), other.inherit, modified)

    def _changed(self, values: dict[str, Value], inherit: bool, modified: str) -> SettingsDocument:
        if values == dict(self.values) and inherit == self.inherit:
            return self
        return attrs.evolve(
            self, values=values, inherit=inherit, revision=self.revision + 1, modified=modified
        )


#: The scope of the global document.
GLOBAL = "global"

_DOCUMENT_KEYS = {"revision", "modified", "inherit"}


def document_from_mapping(scope: str, data: Mapping[str, Any]) -> SettingsDocument:
    """
    Read a document from nested tables (a TOML file or an imported JSON document).

    @param scope: C{global} or the domain.
    @param data: C{revision}, C{modified}, C{inherit} (domains only) and the screens' tables.
    @return: the document.
    @raise SettingsError: with every problem, each naming its field.
    """
    problems: list[str] = []
    values: dict[str, Value] = {}
    for path, raw in _flatten(data, "", problems):
        if path in _DOCUMENT_KEYS:
            continue
        try:
            values[path] = check_value(path, raw)
        except SettingsError as e:
            problems += e.problems
    revision = data.get("revision", 0)
    if not isinstance(revision, int) or isinstance(revision, bool) or revision < 0:
        problems.append("revision: expected a non-negative integer")
        revision = 0
    modified = data.get("modified", "")
    if not isinstance(modified, str):
        modified = str(modified)
    inherit = data.get("inherit", True)
    if not isinstance(inherit, bool):
        problems.append("inherit: expected true or false")
        inherit = True
    if scope == GLOBAL and not inherit:
        problems.append("inherit: only a domain document can replace the global one")
    if problems:
        raise SettingsError(problems)
    return SettingsDocument(
        scope=scope, values=values, revision=revision, modified=modified, inherit=inherit
    )


def _flatten(data: Mapping[str, Any], prefix: str, problems: list[str]) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for key, raw in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if path in FIELDS_BY_PATH or path in _DOCUMENT_KEYS:
            if raw is not None:  # JSON null: inherit (the same as leaving it out)
                found.append((path, raw))
        elif isinstance(raw, Mapping) and any(p.startswith(path + ".") for p in FIELDS_BY_PATH):
            found += _flatten(raw, path, problems)
        else:
            problems.append(f"{path}: unknown setting")
    return found


def document_to_mapping(document: SettingsDocument) -> dict[str, Any]:
    """
    Write a document as nested tables (for a TOML file or C{settings show}).

    @param document: the document.
    @return: C{revision}, C{modified}, C{inherit} (domains) and the fields, nested by path.
    """
    data: dict[str, Any] = {"revision": document.revision}
    if document.modified:
        data["modified"] = document.modified
    if document.scope != GLOBAL:
        data["inherit"] = document.inherit
    _nest(data, {path: value_to_plain(v) for path, v in sorted(document.values.items())})
    return data


def _nest(into: dict[str, Any], flat: Mapping[str, object]) -> dict[str, Any]:
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        table = into
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    return into


# --- the server's own facts, defaults, merge ---------------------------------------------------


@attrs.frozen
class Service:
    """
    One way a client reaches a service: host, port and connection security.
    """

    host: str
    port: int
    security: Security


@attrs.frozen
class ServerFacts:
    """
    What the server itself offers, from its configuration: the source of the defaults.

    @ivar hostname: the host name clients use (C{$FQDN$}).
    @ivar imap: the IMAP service users read mail with.
    @ivar submission: the SMTP submission services, preferred first.
    @ivar domains: the hosted domains, lower-case.
    @ivar machine_name: the name of the server machine (C{$MACHINENAME$}).
    @ivar domain_ips: per domain, its IP address (C{$DOMAINIP$}).
    """

    hostname: str
    imap: Service
    submission: tuple[Service, ...]
    domains: frozenset[str] = frozenset()
    machine_name: str = ""
    domain_ips: Mapping[str, str] = attrs.field(factory=dict)


def defaults(facts: ServerFacts) -> dict[str, Value]:
    """
    The code defaults: every field, with the connection settings of the server's own services.

    @param facts: what the server offers.
    @return: a value for every path of L{FIELDS}.
    """
    values = {f.path: f.default for f in FIELDS}
    values["advanced.imap.security"] = facts.imap.security.value
    values["advanced.imap.port"] = facts.imap.port
    if facts.submission:
        values["advanced.smtp.security"] = facts.submission[0].security.value
        values["advanced.smtp.port"] = facts.submission[0].port
    return values


@attrs.frozen
class Merged:
    """
    The settings in force for one domain, before macros.

    @ivar values: a value for every field.
    @ivar sources: the layers applied, such as C{("defaults", "global@3", "domain:x@1")}.
    """

    values: Mapping[str, Value]
    sources: tuple[str, ...]

    def security(self, protocol: str) -> Security:
        """
        @param protocol: C{imap} or C{smtp}.
        @return: its connection security.
        """
        return Security(self.values[f"advanced.{protocol}.security"])

    def port(self, protocol: str) -> int:
        """
        @param protocol: C{imap} or C{smtp}.
        @return: its port.
        """
        port = self.values[f"advanced.{protocol}.port"]
        assert isinstance(port, int)
        return port

    @property
    def locked(self) -> bool:
        """
        Whether clients must not change the pushed settings.
        """
        return (
            bool(self.values["policy.push_enabled"]) and not self.values["policy.allow_override"]
        )


def merge(
    base: Mapping[str, Value],
    global_document: SettingsDocument | None,
    domain_document: SettingsDocument | None,
) -> Merged:
    """
    Layer the documents over the defaults.

    @param base: the defaults (L{defaults}, with the configuration's policy switches applied).
    @param global_document: the global document, if any.
    @param domain_document: the domain's document, if any.
    @return: the merged settings.
    """
    values = dict(base)
    sources = ["defaults"]
    layers = []
    if global_document is not None and (domain_document is None or domain_document.inherit):
        layers.append(global_document)
    if domain_document is not None:
        layers.append(domain_document)
    for document in layers:
        sources.append(document.source)
        for path, value in document.values.items():
            if path == "addins.rules":
                value = _merge_rules(values[path], value)  # type: ignore[arg-type]
            values[path] = value
    return Merged(values=values, sources=tuple(sources))


def _merge_rules(
    below: tuple[AddinRule, ...], above: tuple[AddinRule, ...]
) -> tuple[AddinRule, ...]:
    # By name, without regard to case: a domain can change one add-in's action.
    merged = {rule.name.casefold(): rule for rule in below}
    for rule in above:
        merged[rule.name.casefold()] = rule
    return tuple(merged.values())


# --- what a user gets ------------------------------------------------------------------------


def parse_client_version(text: str) -> tuple[int, ...] | None:
    """
    @param text: a version such as C{4.2.1} (anything after the numbers is ignored).
    @return: its numbers, or L{None} when it does not start with one.
    """
    match = re.match(r"\s*(\d+(?:\.\d+)*)", text)
    if match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def client_supported(client_version: tuple[int, ...] | None) -> bool:
    """
    @param client_version: the client's version, L{None} when it did not say.
    @return: whether it may get the settings at all (4.0 or later; unknown clients may).
    """
    return client_version is None or at_least(client_version, MIN_CLIENT_VERSION)


def at_least(version: tuple[int, ...], minimum: tuple[int, ...]) -> bool:
    """
    Compare versions with missing parts as zeros (C{5} is C{5.0}).

    @param version: a version.
    @param minimum: the least version.
    @return: whether C{version} is C{minimum} or later.
    """
    width = max(len(version), len(minimum))
    return version + (0,) * (width - len(version)) >= minimum + (0,) * (width - len(minimum))


def content(
    merged: Merged, context: MacroContext, client_version: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """
    The expanded settings of one user: the part of the served document that the version covers.

    @param merged: the settings of the user's domain.
    @param context: the user's macro values.
    @param client_version: the client's version; a client older than 5.0 gets no add-ins screen.
    @return: C{{"policy": ..., "screens": ...}}, ready for JSON.
    """
    screens: dict[str, Any] = {}
    for field in FIELDS:
        if field.screen == "policy":
            continue
        if (
            field.screen == "addins"
            and client_version is not None
            and not at_least(client_version, MIN_ADDINS_VERSION)
        ):
            continue
        value = merged.values[field.path]
        if field.macros and isinstance(value, str):
            value = expand(value, context)
        _nest(screens, {field.path: value_to_plain(value)})
    if "addins" in screens:
        screens["addins"]["min_client_version"] = _dotted(MIN_ADDINS_VERSION)
    policy = {
        "push_enabled": bool(merged.values["policy.push_enabled"]),
        "allow_override": bool(merged.values["policy.allow_override"]),
        "locked": merged.locked,
        "min_client_version": _dotted(MIN_CLIENT_VERSION),
    }
    return {"policy": policy, "screens": screens}


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


def version_of(expanded: Mapping[str, Any]) -> str:
    """
    The version of expanded settings: a hash of their canonical JSON.

    @param expanded: what L{content} returned.
    @return: C{v1-} and 22 characters of base64url SHA-256, usable as a strong ETag.
    """
    canonical = json.dumps(
        expanded, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).decode("ascii")
    return "v1-" + digest[:22]


def served_document(
    merged: Merged,
    context: MacroContext,
    client_version: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """
    The whole document C{GET /mc/v1/settings} returns to one user.

    @param merged: the settings of the user's domain.
    @param context: the user's macro values.
    @param client_version: the client's version, if it said.
    @return: C{schema}, C{version}, C{account}, C{sources}, C{policy} and C{screens}.
    """
    expanded = content(merged, context, client_version)
    return {
        "schema": SCHEMA,
        "version": version_of(expanded),
        "account": context.address,
        "sources": list(merged.sources),
        **expanded,
    }


def source_hash(merged: Merged) -> str:
    """
    A hash of a domain's merged settings before macros: it changes when an administrator's
    change reaches that domain (used to tell which clients are behind).

    @param merged: the merged settings.
    @return: a short text.
    """
    return version_of({path: value_to_plain(v) for path, v in merged.values.items()})


def macro_reference() -> list[dict[str, object]]:
    """
    @return: the macro reference the API serves: name (with dollar signs), meaning, per-user.
    """
    return [{"macro": f"${m.name}$", "meaning": m.meaning, "per_user": m.per_user} for m in MACROS]


def schema_reference() -> list[dict[str, object]]:
    """
    @return: every field: path, kind, default, whether it takes macros, its choices.
    """
    rows: list[dict[str, object]] = []
    for f in FIELDS:
        row: dict[str, object] = {
            "path": f.path,
            "kind": f.kind.value,
            "default": value_to_plain(f.default),
            "macros": f.macros,
            "description": f.description,
        }
        if f.choices:
            row["choices"] = list(f.choices)
        if f.kind is Kind.INTEGER:
            row["minimum"], row["maximum"] = f.minimum, f.maximum
        rows.append(row)
    return rows
