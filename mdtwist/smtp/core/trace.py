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
import ipaddress

_RECEIVED = b"received:"


def count_received(message: bytes) -> int:
    """
    Count the C{Received:} fields in the header section of a message.

    @param message: the message, CRLF line ends.
    @return: how many header lines (not continuation lines) start with C{Received:}, in any
        case, before the first empty line.
    """
    count = 0
    for line in message.split(b"\r\n"):
        if not line:
            break
        if line[:9].lower() == _RECEIVED:
            count += 1
    return count


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


def address_literal(address: str) -> str:
    """
    Write an IP address as an address literal.

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

    @param helo: the HELO/EHLO name.
    @param client_address: the client's IP address.
    @param hostname: our host name.
    @param protocol: the C{with} keyword (see L{with_protocol}).
    @param when: the time of receipt, seconds since the epoch.
    @param tls: the TLS protocol and cipher, for a comment, or L{None}.
    @param recipient: the single recipient for the C{for} clause, or L{None} (never list more
        than one: that would disclose Bcc recipients).
    @return: the header field.
    """
    stamp = email.utils.format_datetime(datetime.datetime.fromtimestamp(when, datetime.UTC))
    lines = [f"Received: from {helo} ({address_literal(client_address)})"]
    lines.append(f"\tby {hostname} (mdtwist) with {protocol}")
    if tls is not None:
        lines.append(f"\t({tls})")
    clause = f"\tfor <{recipient}>; " if recipient is not None else "\t; "
    lines.append(clause + stamp)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
