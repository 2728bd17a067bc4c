# -*- test-case-name: tests.sharing.test_service -*-
"""
The answer of a Domain Sharing lookup, as the receive policy sees it. Pure.

The policy turns it into the RCPT reply: L{SharingOutcome.FOUND} is C{250} and the recipient's
stored route is the peer's C{host:port}; L{SharingOutcome.NOT_FOUND} is C{550 5.1.1};
L{SharingOutcome.UNAVAILABLE} is C{451 4.4.3}.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mdtwist.envelope import ClientInfo


class SharingOutcome(enum.Enum):
    """
    What the sharing peers said about an address.
    """

    #: A peer hosts it: accept, and route the recipient to that peer.
    FOUND = "found"
    #: Every peer said it has no such address: refuse for good.
    NOT_FOUND = "not-found"
    #: No peer confirmed it and at least one could not say: refuse for now.
    UNAVAILABLE = "unavailable"


@attrs.frozen
class SharingAnswer:
    """
    The answer of a Domain Sharing lookup.

    @ivar outcome: what the peers said.
    @ivar peer: for L{SharingOutcome.FOUND}, the peer's SMTP address as C{host:port}
        (C{[address]:port} for an IPv6 address); else L{None}.
    """

    outcome: SharingOutcome
    peer: str | None = None

    @classmethod
    def found(cls, peer: str) -> SharingAnswer:
        """
        @param peer: the peer's SMTP C{host:port}.
        @return: a FOUND answer.
        """
        return cls(SharingOutcome.FOUND, peer)

    @classmethod
    def not_found(cls) -> SharingAnswer:
        """
        @return: a NOT_FOUND answer.
        """
        return cls(SharingOutcome.NOT_FOUND)

    @classmethod
    def unavailable(cls) -> SharingAnswer:
        """
        @return: an UNAVAILABLE answer.
        """
        return cls(SharingOutcome.UNAVAILABLE)


class SharingLookup(Protocol):
    """
    What the receive policy calls for a local-domain address that has no local account (the
    shape of the planned C{ISharingLookup} interface).
    """

    def lookup(self, address: str, client: ClientInfo) -> Deferred[SharingAnswer]:
        """
        @param address: the recipient address.
        @param client: the SMTP client that gave it.
        @return: a Deferred firing with the answer; it never fails.
        """
