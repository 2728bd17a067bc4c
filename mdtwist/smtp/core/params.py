# -*- test-case-name: tests.smtp.core.test_params -*-
"""
Parsing of the arguments of C{MAIL FROM} and C{RCPT TO}: the path and the ESMTP parameters.

Paths follow RFC 5321 4.1.2: C{<>} (the null sender, MAIL only), C{<postmaster>} (RCPT only,
any case), C{<local@domain>} with a dot-string or quoted-string local part and a domain or an
address literal, and an optional source route C{<@a,@b:local@domain>}, which is accepted and
dropped (RFC 5321 section 3.6.1). The local part is never interpreted: C{%}, C{!} and a quoted
C{@} stay in it.

Parameters are C{KEYWORD} or C{KEYWORD=value}, separated by spaces. Each is checked against the
set the caller allows (what the server advertised); an unknown one is C{555 5.5.4}, a repeated or
malformed one C{501 5.5.4}. C{BODY=BINARYMIME} (RFC 3030) is C{555 5.5.4}: BINARYMIME is never
advertised.

Every parse function returns either the parsed command or the L{Reply} to refuse it with.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import re

import attrs

from mdtwist.smtp.core.replies import Reply, reply

#: The longest path accepted, brackets excluded (RFC 5321 4.5.3.1.3).
MAX_PATH = 256

#: The ESMTP parameters of C{MAIL FROM} this module knows.
MAIL_PARAMETERS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "AUTH"})

#: The ESMTP parameters of C{RCPT TO} this module knows.
RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})

# Non-ASCII text (SMTPUTF8) starts at U+00A0: the C1 controls U+0080-U+009F are no part of
# Net-Unicode (RFC 5198), and an address never carries a control character into a log line.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u00a0-\U0010ffff]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u00a0-\U0010ffff]|\\[\x20-\x7e])*"')
_LETDIG = r"[A-Za-z0-9\u00a0-\U0010ffff]"
_LABEL = rf"(?:{_LETDIG}(?:[A-Za-z0-9\-\u00a0-\U0010ffff]*{_LETDIG})?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_LITERAL = re.compile(
    r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+|[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+")
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")

_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})
_NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})


@attrs.frozen
class MailParameters:
    """
    The ESMTP parameters of C{MAIL FROM}.

    @ivar size: C{SIZE=}, the size the client declares, or L{None}.
    @ivar body: C{BODY=} in upper case (C{7BIT} or C{8BITMIME}), or L{None}.
    @ivar smtputf8: whether C{SMTPUTF8} was given.
    @ivar ret: C{RET=} in upper case (C{FULL} or C{HDRS}), or L{None}.
    @ivar envid: C{ENVID=} as xtext, or L{None}.
    @ivar auth: C{AUTH=} as given (xtext or C{<>}), or L{None}.
    """

    size: int | None = None
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    auth: str | None = None


@attrs.frozen
class RcptParameters:
    """
    The ESMTP parameters of C{RCPT TO}.

    @ivar notify: C{NOTIFY=} values in upper case, or L{None}.
    @ivar orcpt: C{ORCPT=} as given (C{addr-type;xtext}), or L{None}.
    """

    notify: frozenset[str] | None = None
    orcpt: str | None = None


@attrs.frozen
class MailCommand:
    """
    A parsed C{MAIL FROM}.

    @ivar sender: the reverse-path without brackets or source route; C{""} for C{<>}.
    @ivar parameters: its parameters.
    """

    sender: str
    parameters: MailParameters


@attrs.frozen
class RcptCommand:
    """
    A parsed C{RCPT TO}.

    @ivar recipient: the forward-path without brackets or source route.
    @ivar parameters: its parameters.
    """

    recipient: str
    parameters: RcptParameters


def _split_path(text: str) -> tuple[str, str] | None:
    """
    Split C{<path> rest} at the closing bracket, honouring quoted strings.

    @return: the text between the brackets and what follows, or L{None} on bad syntax.
    """
    if not text.startswith("<"):
        return None
    if '"' not in text:
        # Nothing is quoted (the usual case): the first closing bracket ends the path.
        end = text.find(">")
        return None if end < 0 else (text[1:end], text[end + 1 :])
    quoted = escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return text[1:index], text[index + 1 :]
    return None


def parse_mailbox(text: str) -> str | None:
    """
    Check a mailbox (C{local@domain}) and give it in its canonical form.

    A quoted local part whose content is a plain dot-string loses its quotes; otherwise it is
    kept as written. The domain keeps its case (comparisons are the caller's job).

    @param text: the mailbox, without brackets or route.
    @return: the mailbox, or L{None} when the syntax is wrong.
    """
    if text.startswith('"'):
        match = _QUOTED.match(text)
        if match is None:
            return None
        local = match.group()
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_STRING.fullmatch(inner):
            local = inner
        rest = text[match.end() :]
    else:
        local, at, domain = text.partition("@")
        if not at or not _DOT_STRING.fullmatch(local):
            return None
        rest = at + domain
    if not rest.startswith("@"):
        return None
    domain = rest[1:]
    if not (_DOMAIN.fullmatch(domain) or _LITERAL.fullmatch(domain)):
        return None
    return f"{local}@{domain}"


def is_domain_or_literal(text: str) -> bool:
    """
    Tell whether a text is a domain name or an address literal (RFC 5321 section 4.1.2).

    @param text: the text, such as a HELO/EHLO argument.
    @return: whether it is C{Domain} or C{address-literal}.
    """
    return bool(_DOMAIN.fullmatch(text) or _LITERAL.fullmatch(text))


def _parse_path(text: str, *, null_ok: bool, postmaster_ok: bool) -> str | None:
    if len(text) > MAX_PATH:
        return None
    if text == "":
        return "" if null_ok else None
    if postmaster_ok and text.lower() == "postmaster":
        return text
    if text.startswith("@"):
        route, colon, text = text.partition(":")
        if not colon:
            return None
        for hop in route.split(","):
            if not hop.startswith("@") or not (
                _DOMAIN.fullmatch(hop[1:]) or _LITERAL.fullmatch(hop[1:])
            ):
                return None
    return parse_mailbox(text)


def _split_parameters(text: str) -> dict[str, str | None] | Reply:
    result: dict[str, str | None] = {}
    for word in text.split(" "):
        if not word:
            continue
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.fullmatch(keyword) or (equals and not _VALUE.fullmatch(value)):
            return reply(501, "5.5.4", "Malformed parameter")
        keyword = keyword.upper()
        if keyword in result:
            return reply(501, "5.5.4", f"Repeated parameter {keyword}")
        result[keyword] = value if equals else None
    return result


def _bad(keyword: str) -> Reply:
    return reply(501, "5.5.4", f"Bad value for {keyword}")


def _mail_parameter(keyword: str, value: str | None, fields: dict[str, object]) -> Reply | None:
    if keyword == "SMTPUTF8":
        if value is not None:
            return _bad(keyword)
        fields["smtputf8"] = True
        return None
    if value is None:
        return _bad(keyword)
    if keyword == "SIZE":
        if not value.isascii() or not value.isdigit() or len(value) > 20:
            return _bad(keyword)
        fields["size"] = int(value)
    elif keyword == "BODY":
        if value.upper() == "BINARYMIME":
            # Not offered (no BINARYMIME in the EHLO reply): an unsupported value.
            return reply(555, "5.5.4", "BODY=BINARYMIME not supported")
        if value.upper() not in _BODY_TYPES:
            return _bad(keyword)
        fields["body"] = value.upper()
    elif keyword == "RET":
        if value.upper() not in {"FULL", "HDRS"}:
            return _bad(keyword)
        fields["ret"] = value.upper()
    elif keyword == "ENVID":
        if len(value) > 100 or not _XTEXT.fullmatch(value):
            return _bad(keyword)
        fields["envid"] = value
    elif keyword == "AUTH":
        if value != "<>" and not _XTEXT.fullmatch(value):
            return _bad(keyword)
        fields["auth"] = value
    return None


def _rcpt_parameter(keyword: str, value: str | None, fields: dict[str, object]) -> Reply | None:
    if value is None:
        return _bad(keyword)
    if keyword == "NOTIFY":
        values = frozenset(v.upper() for v in value.split(","))
        if values != {"NEVER"} and not (values and values <= _NOTIFY_VALUES):
            return _bad(keyword)
        if len(values) != len(value.split(",")):
            return _bad(keyword)
        fields["notify"] = values
    elif keyword == "ORCPT":
        addr_type, semicolon, address = value.partition(";")
        if (
            not semicolon
            or not _ADDR_TYPE.fullmatch(addr_type)
            or not address
            or len(value) > 500
            or not _XTEXT.fullmatch(address)
        ):
            return _bad(keyword)
        fields["orcpt"] = value
    return None


def _syntax(prefix: str) -> Reply:
    return reply(501, "5.5.4", f"Syntax: {prefix}<address> [parameters]")


def _parse(
    text: str, prefix: str, allowed: frozenset[str], *, mail: bool
) -> tuple[str, dict[str, object]] | Reply:
    head = text[: len(prefix)]
    if head.upper() != prefix:
        return _syntax(prefix)
    text = text[len(prefix) :].lstrip(" ")
    split = _split_path(text)
    if split is None:
        return _syntax(prefix)
    path_text, rest = split
    if rest and not rest.startswith(" "):
        return _syntax(prefix)
    path = _parse_path(path_text, null_ok=mail, postmaster_ok=not mail)
    if path is None:
        return reply(501, "5.1.7" if mail else "5.1.3", "Bad address syntax")
    parameters = _split_parameters(rest)
    if isinstance(parameters, Reply):
        return parameters
    fields: dict[str, object] = {}
    for keyword, value in parameters.items():
        if keyword not in allowed:
            return reply(555, "5.5.4", f"Unsupported parameter {keyword}")
        check = _mail_parameter if mail else _rcpt_parameter
        problem = check(keyword, value, fields)
        if problem is not None:
            return problem
    return path, fields


def parse_mail(text: str, allowed: frozenset[str] = MAIL_PARAMETERS) -> MailCommand | Reply:
    """
    Parse the arguments of C{MAIL}.

    @param text: everything after C{"MAIL "}, for example C{"FROM:<a@b.example> SIZE=100"}.
    @param allowed: the parameter keywords (upper case) the client may use here: those the
        server advertised. A keyword not in L{MAIL_PARAMETERS} is never accepted.
    @return: the command, or the reply to refuse it with.
    """
    parsed = _parse(text, "FROM:", allowed & MAIL_PARAMETERS, mail=True)
    if isinstance(parsed, Reply):
        return parsed
    path, fields = parsed
    return MailCommand(path, MailParameters(**fields))  # type: ignore[arg-type]


def parse_rcpt(text: str, allowed: frozenset[str] = RCPT_PARAMETERS) -> RcptCommand | Reply:
    """
    Parse the arguments of C{RCPT}.

    @param text: everything after C{"RCPT "}, for example C{"TO:<a@b.example> NOTIFY=NEVER"}.
    @param allowed: the parameter keywords (upper case) the client may use here.
    @return: the command, or the reply to refuse it with.
    """
    parsed = _parse(text, "TO:", allowed & RCPT_PARAMETERS, mail=False)
    if isinstance(parsed, Reply):
        return parsed
    path, fields = parsed
    return RcptCommand(path, RcptParameters(**fields))  # type: ignore[arg-type]
