# -*- test-case-name: tests.smtp.core.test_trace -*-
"""
Trace headers (RFC 5321 section 4.4).

Counting the C{Received:} lines of a message for loop detection, and building the one we
prepend.

Pure: standard library and attrs only; the time is a parameter.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import ipaddress
import re

from mdtwist.smtp.core.params import is_domain_or_literal

_RECEIVED = b"received:"

#: The characters a HELO name that is not a domain or address literal keeps as they are in the
#: trace; every other one is written as C{%XX} (its UTF-8 bytes), so no C{;}, parenthesis,
#: backslash, quote or control character of the client's reaches the header.
_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")


def count_received(message: bytes) -> int:
    """
    Count the C{Received:} fields in the header section of a message.

    @param message: the message, CRLF line ends.
    @return: how many header lines (not continuation lines) start with C{Received:}, in any
        case, before the first empty line.
    """
    if message.startswith(b"\r\n"):
        return 0
    end = message.find(b"\r\n\r\n")
    # Only the header section is split into lines: the body may be megabytes.
    header = message if end < 0 else message[: end + 2]
    return sum(1 for line in header.split(b"\r\n") if line[:9].lower() == _RECEIVED)


def with_protocol(*, extended: bool, tls: bool, authenticated: bool) -> str:
    """
    The C{with} keyword of RFC 3848.

    @param extended: whether the client said EHLO (not HELO).
    @param tls: whether the session was encrypted.
    @param authenticated: whether the client authenticated.
    @return: C{SMTP}, C{ESMTP}, C{ESMTPS}, C{ESMTPA} or C{ESMTPSA}.
    """
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


@functools.lru_cache(maxsize=4)
def date_time(seconds: int) -> str:
    """
    Write a time as RFC 5322 does (in UTC). Remembered for the last few seconds: the messages
    received in one second share one stamp.

    @param seconds: whole seconds since the epoch.
    @return: such as C{Sat, 05 Dec 2026 10:00:00 +0000}.
    """
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


@functools.lru_cache(maxsize=4096)
def address_literal(address: str) -> str:
    """
    Write an IP address as an address literal. Remembered for the last few thousand
    addresses: a client that connects often is written once, not at every message.

    @param address: an IPv4 or IPv6 address (anything else is used as it is).
    @return: C{[192.0.2.1]} or C{[IPv6:2001:db8::1]}.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return f"[{address}]"
    if parsed.version == 6:
        return f"[IPv6:{parsed.compressed}]"
    return f"[{parsed}]"


def _percent(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))


def trace_from(helo: str, client_address: str) -> str:
    """
    The C{from} clause of our C{Received:} field.

    A HELO name that is an ASCII domain or an address literal is recorded as sent, followed by
    the client's address: C{from c.example ([192.0.2.1])}. Anything else (C{EHLO x;y=z}) is not
    a domain the clause may hold: the client's address stands in its place and the name is
    kept, in a safe form, in a comment: C{from [192.0.2.1] (invalid HELO x%3By%3Dz)}.

    @param helo: the HELO/EHLO argument, as sent.
    @param client_address: the client's IP address.
    @return: the clause, without the C{Received:} name.
    """
    literal = address_literal(client_address)
    if helo.isascii() and is_domain_or_literal(helo):
        return f"from {helo} ({literal})"
    return f"from {literal} (invalid HELO {_UNSAFE.sub(_percent, helo) or '(none)'})"


def received_header(
    *,
    helo: str,
    client_address: str,
    hostname: str,
    protocol: str,
    when: float,
    tls: str | None = None,
    recipient: str | None = None,
) -> bytes:
    """
    Build a C{Received:} field, folded, ending in CRLF.

    @param helo: the HELO/EHLO name (see L{trace_from} for one that is not a domain).
    @param client_address: the client's IP address.
    @param hostname: our host name.
    @param protocol: the C{with} keyword (see L{with_protocol}).
    @param when: the time of receipt, seconds since the epoch.
    @param tls: the TLS protocol and cipher, for a comment, or L{None}.
    @param recipient: the single recipient for the C{for} clause, or L{None} (never list more
        than one: that would disclose Bcc recipients).
    @return: the header field.
    """
    stamp = date_time(int(when))
    lines = [f"Received: {trace_from(helo, client_address)}"]
    lines.append(f"\tby {hostname} (mdtwist) with {protocol}")
    if tls is not None:
        lines.append(f"\t({tls})")
    clause = f"\tfor <{recipient}>; " if recipient is not None else "\t; "
    lines.append(clause + stamp)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
