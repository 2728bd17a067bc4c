# -*- test-case-name: tests.dequeue.test_signal -*-
"""
The decisions of the dequeue signal (MDaemon's "signal the remote host to release held mail"),
without I/O: when to signal, what the configured text asks for, and what a reply means.

The signal is sent on queue runs 1, N+1, 2N+1 ... of the running process (C{every = N}; 0 or
1: every run), so a server that has just started asks for its mail at once. The count is the
queue runner's and starts again with the process.

Reply codes (RFC 1985 for ETRN, RFC 2645 for ATRN): C{250}, C{252} and C{253} to ETRN mean the
provider started a queue run, C{251} and (ATRN) C{453} that nothing is waiting, neither of
them an error. Any other reply, a connection that cannot be made or a session that breaks is
logged; nothing is kept between runs, so the next due run simply signals again.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum
import re

import attrs


class SignalMode(enum.Enum):
    """
    How the text is sent.

    @cvar SMTP: read the C{220}, EHLO and AUTH when configured, send the text, read the whole
        reply, C{QUIT} (or, after an accepted ATRN, turn the connection round).
    @cvar RAW: no SMTP: send the text and CRLF (when not empty), read until the server closes
        or a short timeout, close (FINGER on port 79, TELNET, a bare connect).
    """

    SMTP = "smtp"
    RAW = "raw"


class SignalStatus(enum.Enum):
    """
    What became of one signal.

    @cvar SENT: the text was accepted (a 2xx; in raw mode: sent, or just connected).
    @cvar NO_MAIL: the provider says nothing is waiting (C{251} to ETRN, C{453} to ATRN).
    @cvar RELEASED: the provider accepted ATRN (a single-line C{250}) and the connection turned
        round: the held mail comes in over it.
    @cvar REFUSED: the provider refused (a 4xx or 5xx to the text, to AUTH, or at the greeting),
        or lacks ATRN; signalled again on a later run.
    @cvar FAILED: no answer: the host could not be reached or resolved, stayed silent, or broke
        the protocol; signalled again on a later run.
    @cvar BUSY: the previous signal for the domain is still running, so none was sent.
    """

    SENT = "sent"
    NO_MAIL = "no-mail"
    RELEASED = "released"
    REFUSED = "refused"
    FAILED = "failed"
    BUSY = "busy"


@attrs.frozen
class SignalResult:
    """
    The outcome of one signal, for the log and C{mdtwistctl dequeue run}.

    @ivar domain: the domain the signal is configured for.
    @ivar status: what happened.
    @ivar code: the reply code that decided it, or L{None}.
    @ivar detail: a short explanation (the reply text, or what went wrong), escaped.
    """

    domain: str
    status: SignalStatus
    code: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the signal did its job (sent, nothing waiting, or released)."""
        return self.status in (SignalStatus.SENT, SignalStatus.NO_MAIL, SignalStatus.RELEASED)


def due(run_count: int, every: int) -> bool:
    """
    Whether a queue run signals.

    @param run_count: the number of the run that just finished, from 1.
    @param every: signal every this many runs; 0 (and 1) mean every run.
    @return: L{True} on runs 1, N+1, 2N+1 ...
    """
    if every <= 1:
        return True
    return (run_count - 1) % every == 0


def verb(text: str) -> str:
    """
    @param text: a signal text.
    @return: its first word, upper case (C{ETRN}, C{ATRN}, C{QSND} ...); empty for an empty text.
    """
    words = text.split(None, 1)
    return words[0].upper() if words else ""


_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def atrn_domains(text: str) -> tuple[str, ...] | None:
    """
    Read the domains an ATRN text asks for (RFC 2645: C{ATRN [domain *("," domain)]}).

    @param text: a signal text.
    @return: L{None} when the text is not an ATRN; the domains, lower case, without a
        trailing dot and without repeats, in order; empty for a bare C{ATRN} (every domain
        of the login).
    @raise ValueError: an ATRN whose list is malformed (an empty element, a space after a
        comma, something that is not a domain name).
    """
    words = text.strip().split(" ")
    if words[0].upper() != "ATRN":
        return None
    if len(words) == 1:
        return ()
    if len(words) > 2:
        raise ValueError("ATRN takes one comma-separated list of domains, without spaces")
    domains: list[str] = []
    for item in words[1].split(","):
        name = item.rstrip(".").lower() if item not in ("", ".") else ""
        if not name or not _DOMAIN.match(name):
            raise ValueError(f"{item!r} is not a domain name")
        if name not in domains:
            domains.append(name)
    return tuple(domains)


def judge(command: str, code: int, single_line: bool = True) -> SignalStatus:
    """
    What a reply to the signal text means.

    @param command: the verb of the text (see L{verb}).
    @param code: the reply code.
    @param single_line: whether the reply had one line (an ATRN turns only on a single-line
        C{250}).
    @return: L{SignalStatus.SENT}, L{SignalStatus.NO_MAIL}, L{SignalStatus.RELEASED} or
        L{SignalStatus.REFUSED}.
    """
    if command == "ATRN":
        if code == 250 and single_line:
            return SignalStatus.RELEASED
        if code == 453:
            return SignalStatus.NO_MAIL
        return SignalStatus.REFUSED
    if command == "ETRN" and code == 251:
        return SignalStatus.NO_MAIL
    if 200 <= code < 300:
        return SignalStatus.SENT
    return SignalStatus.REFUSED
