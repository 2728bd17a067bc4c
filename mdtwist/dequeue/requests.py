# -*- test-case-name: tests.dequeue.test_gateways -*-
"""
The grammar and the replies of ETRN (RFC 1985) and ATRN (RFC 2645) on the provider side.

Decisions recorded here (and in the README):
  - ETRN before an authentication that the gateway requires is answered C{530 5.7.0}
    (RFC 4954), the same code ATRN uses; a domain that is not ours, has ETRN off, or is asked
    for from an address that is not allowed gets C{459}.
  - A malformed ETRN or ATRN argument (none, several words, a bad domain, an empty element or
    spaces in an ATRN list) gets C{501 5.5.4}.
  - C{ETRN #queue} names a queue; we have no named queues, so it gets C{459}.
  - C{ETRN @domain} releases the gateway domains equal to or under C{domain}; without C{@}
    only the domain itself. Case and a trailing dot do not matter.
  - An ATRN list naming any domain the login does not own is refused whole with C{450}.

Pure: standard library and attrs only.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from mdtwist.dequeue.gateways import GatewayBook, normalise_domain
from mdtwist.smtp.core.replies import Reply, reply


@attrs.frozen
class EtrnRequest:
    """
    A parsed ETRN argument.

    @ivar domain: the node, lower case, without prefix or trailing dot.
    @ivar subdomains: whether it was written C{@domain}.
    @ivar queue: whether it was written C{#name} (a queue name, not a domain).
    """

    domain: str
    subdomains: bool = False
    queue: bool = False


BAD_ETRN = reply(501, "5.5.4", "Syntax: ETRN [@]domain")
BAD_ATRN = reply(501, "5.5.4", "Syntax: ATRN [domain[,domain]...]")


def parse_etrn(argument: str) -> EtrnRequest | Reply:
    """
    Read the argument of ETRN.

    @param argument: what follows C{ETRN }.
    @return: the request, or the C{501} reply for a missing, extra or malformed argument.
    """
    words = argument.split(" ")
    if len(words) != 1 or not words[0]:
        return BAD_ETRN
    word = words[0]
    if word.startswith("#"):
        name = word[1:]
        if not name or not name.isprintable():
            return BAD_ETRN
        return EtrnRequest(name, queue=True)
    subdomains = word.startswith("@")
    domain = normalise_domain(word[1:] if subdomains else word)
    if domain is None:
        return BAD_ETRN
    return EtrnRequest(domain, subdomains=subdomains)


def parse_atrn(argument: str) -> tuple[str, ...] | Reply:
    """
    Read the argument of ATRN: nothing, or domains separated by commas without spaces.

    @param argument: what follows C{ATRN } (C{""} for a bare ATRN).
    @return: the domains, lower case, without duplicates, in the order given (empty for a
        bare ATRN); or the C{501} reply for an empty element or a malformed domain.
    """
    if argument == "":
        return ()
    domains: list[str] = []
    for item in argument.split(","):
        domain = normalise_domain(item)
        if domain is None:
            return BAD_ATRN
        if domain not in domains:
            domains.append(domain)
    return tuple(domains)


# -- the replies --

ETRN_AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
ETRN_NOT_IN_TRANSACTION = reply(503, "5.5.1", "ETRN not allowed inside a mail transaction")
ETRN_TOO_MANY = reply(458, "4.7.0", "Too many ETRN commands in this session")
ETRN_FAILED = reply(458, "4.3.0", "Unable to queue messages now, try again later")


def etrn_refused(node: str, why: str) -> Reply:
    """
    @param node: the node as asked for.
    @param why: the reason, for the client.
    @return: C{459}: the node may not be released.
    """
    return reply(459, "4.7.1", f"<{node}> not allowed: {why}")


def etrn_started(node: str, count: int) -> Reply:
    """
    @param node: the node as asked for.
    @param count: how many held messages were found.
    @return: C{251} when none is held, else C{253} with the count (RFC 1985).
    """
    if count == 0:
        return reply(251, "2.0.0", f"No messages waiting for node {node}")
    return reply(253, "2.0.0", f"{count} pending messages for node {node} started")


ATRN_AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
ATRN_IN_TRANSACTION = reply(503, "5.5.1", "ATRN not allowed inside a mail transaction")
ATRN_REFUSED = reply(450, "4.7.1", "ATRN request refused")
ATRN_BUSY = reply(451, "4.3.0", "Unable to process ATRN request now")
ATRN_NO_MAIL = reply(453, "4.3.0", "You have no mail")
#: The turn: one line only (fetchmail reads exactly one).
ATRN_TURNING = reply(250, "2.0.0", "OK now reversing the connection")


def atrn_domains(
    book: GatewayBook, login: str, requested: Sequence[str]
) -> tuple[str, ...] | None:
    """
    Decide which domains an ATRN releases.

    @param book: the gateways.
    @param login: the authenticated gateway login.
    @param requested: the domains asked for (empty for a bare ATRN).
    @return: the domains to release (all of the login's ATRN domains for a bare ATRN), or
        L{None} when any requested domain is not the login's or has ATRN off (refuse all, 450).
    """
    owned = {g.domain for g in book.of_login(login) if g.honour_atrn}
    if not requested:
        return tuple(sorted(owned)) or None
    if any(domain not in owned for domain in requested):
        return None
    return tuple(requested)
