# -*- test-case-name: tests.test_address -*-
"""
Pure helpers for mail addresses: splitting and the one normalised form used as a lookup key.

Lookups compare addresses without regard to case, in the domain (RFC 5321 section 2.4) and, as
MDaemon and LDAP's C{mail} attribute do, in the local part too.
"""

from __future__ import annotations

import functools

import attrs

#: Characters that never occur in an address we look up: controls, spaces, and the characters
#: that other syntaxes (LDAP filters, source routes) give a meaning to.
_FORBIDDEN = frozenset(chr(c) for c in range(0x21)) | {"\x7f", "(", ")", "<", ">", ",", ";", "\\"}


@attrs.frozen
class Address:
    """
    A mail address split at its last C{@}.

    @ivar local: the local part, as written.
    @ivar domain: the domain, lower-case, without a trailing dot.
    """

    local: str
    domain: str

    @property
    def key(self) -> str:
        """
        The form used to compare and look up addresses: all lower-case.
        """
        return f"{self.local.lower()}@{self.domain}"

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> Address | None:
    """
    Split a plain address (no angle brackets, no comments) into local part and domain.

    @param text: the address.
    @return: the parts, or L{None} when C{text} is not a plausible address: no C{@}, an empty
        side, a character from the forbidden set, or more than 254 characters.
    """
    if len(text) > 254 or any(c in _FORBIDDEN for c in text):
        return None
    local, at, domain = text.rpartition("@")
    domain = domain.rstrip(".").lower()
    if not at or not local or not domain:
        return None
    return Address(local, domain)


def address_key(text: str) -> str | None:
    """
    @param text: an address.
    @return: its lookup key (see L{Address.key}), or L{None} if it is not a plausible address.
    """
    parsed = parse_address(text)
    return None if parsed is None else parsed.key
