# -*- test-case-name: tests.test_route -*-
"""
The route of one recipient: where the queue takes it, decided once when it is accepted.

The receive policy decides each recipient's route at C{RCPT TO} time; the SMTP glue keeps it
with the recipient in the envelope, the spool stores it, and the queue runner and remote
delivery act on the stored route without working it out again. L{classify} is the one function
that tells a recipient's kind from its domain: the policy starts from it, and the queue runner
uses it for recipients queued before routes were stored.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum
from collections.abc import Collection

import attrs

from mdtwist.address import parse_address

#: The local part that names the postmaster (RFC 5321 section 4.5.1), compared without case.
POSTMASTER = "postmaster"


class RouteKind(enum.Enum):
    """
    Where a recipient's mail goes next.

    @cvar LOCAL: a mailbox of ours; the target is the account's primary address.
    @cvar REMOTE: another domain's servers (MX, or the smart host); no target.
    @cvar SHARING_PEER: one of our domains whose mailbox lives on a Domain Sharing peer; the
        target is the peer as C{host:port} (address records on that port, never MX).
    @cvar GATEWAY_HOLD: a gateway domain we keep mail for until it is dequeued (ETRN/ATRN);
        the target is the gateway domain. Never delivered by the queue runner.
    """

    LOCAL = "local"
    REMOTE = "remote"
    SHARING_PEER = "sharing-peer"
    GATEWAY_HOLD = "gateway-hold"


def _check_target(route: Route, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if route.kind is RouteKind.REMOTE:
        if value is not None:
            raise ValueError(f"a remote route has no target, not {value!r}")
    elif not value:
        raise ValueError(f"a {route.kind.value} route needs a target")


@attrs.frozen
class Route:
    """
    The route of one recipient.

    @ivar kind: where it goes.
    @ivar target: for L{RouteKind.LOCAL} the mailbox (the account's primary address), for
        L{RouteKind.SHARING_PEER} the peer as C{host:port}, for L{RouteKind.GATEWAY_HOLD} the
        gateway domain; L{None} for L{RouteKind.REMOTE}.
    @raise ValueError: when the target does not fit the kind.
    """

    kind: RouteKind
    target: str | None = attrs.field(default=None, validator=_check_target)

    @classmethod
    def local(cls, mailbox: str) -> Route:
        """
        @param mailbox: the account's primary address.
        @return: the route to that local mailbox.
        """
        return cls(RouteKind.LOCAL, mailbox)

    @classmethod
    def remote(cls) -> Route:
        """
        @return: the route to another domain's servers.
        """
        return cls(RouteKind.REMOTE)

    @classmethod
    def sharing_peer(cls, peer: str) -> Route:
        """
        @param peer: the Domain Sharing peer as C{host:port}.
        @return: the route to that peer.
        """
        return cls(RouteKind.SHARING_PEER, peer)

    @classmethod
    def gateway_hold(cls, domain: str) -> Route:
        """
        @param domain: the gateway domain.
        @return: the route that holds mail for that gateway.
        """
        return cls(RouteKind.GATEWAY_HOLD, domain)


def is_postmaster(address: str, local_domains: Collection[str]) -> bool:
    """
    Tell whether an address names our postmaster.

    @param address: a forward-path without brackets.
    @param local_domains: our local domains, lower-case.
    @return: whether it is a bare C{postmaster} or C{postmaster} at a local domain (any case).
    """
    if address.lower() == POSTMASTER:
        return True
    parsed = parse_address(address)
    return (
        parsed is not None
        and parsed.local.lower() == POSTMASTER
        and parsed.domain in local_domains
    )


def classify(
    address: str,
    local_domains: Collection[str],
    gateway_domains: Collection[str] = frozenset(),
) -> Route | None:
    """
    Tell a recipient's route from its address: the one place that does.

    Only the domain after the last C{@} decides, so address tricks (C{%}, C{!}, quoted C{@})
    never take mail off the server. A local recipient's target is the address itself (local
    part as written, domain lower-case); the receive policy replaces it with the mailbox the
    directory finds for it, and the queue runner looks the target up in the directory again.

    @param address: a forward-path without brackets; a bare C{postmaster} is allowed.
    @param local_domains: our local domains, lower-case.
    @param gateway_domains: the gateway domains we hold mail for, lower-case.
    @return: L{RouteKind.LOCAL} for a bare C{postmaster} or an address in a local domain,
        L{RouteKind.GATEWAY_HOLD} for one in a gateway domain, else L{RouteKind.REMOTE};
        L{None} when C{address} is not an address at all.
    """
    if address.lower() == POSTMASTER:
        return Route.local(POSTMASTER)
    parsed = parse_address(address)
    if parsed is None:
        return None
    if parsed.domain in gateway_domains:
        return Route.gateway_hold(parsed.domain)
    if parsed.domain in local_domains:
        return Route.local(str(parsed))
    return Route.remote()


def duplicate_key(address: str, route: Route) -> tuple[str, str]:
    """
    The key under which two recipients of one transaction are the same destination.

    Two recipients are the same when they reach the same local mailbox (so the aliases of one
    account, and any case of its address, are one recipient), or are the same address outside
    (its domain compared without case, its local part as written).

    @param address: the recipient as given.
    @param route: its route.
    @return: a key; equal keys deliver to the same place.
    """
    if route.kind is RouteKind.LOCAL:
        assert route.target is not None
        return (route.kind.value, route.target.lower())
    parsed = parse_address(address)
    return (route.kind.value, address if parsed is None else str(parsed))


class SharingStatus(enum.Enum):
    """
    What a Domain Sharing lookup found.

    @cvar FOUND: a peer has the mailbox.
    @cvar NOT_FOUND: every peer answered and none has it.
    @cvar UNAVAILABLE: some peer could not answer, so the lookup cannot say "no".
    """

    FOUND = "found"
    NOT_FOUND = "not-found"
    UNAVAILABLE = "unavailable"


def _check_peer(
    answer: SharingAnswer, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if (answer.status is SharingStatus.FOUND) != bool(value):
        raise ValueError("a sharing answer has a peer exactly when it is FOUND")


@attrs.frozen
class SharingAnswer:
    """
    The answer of a Domain Sharing lookup for an address of a local domain that has no local
    account (L{mdtwist.interfaces.ISharingLookup}).

    @ivar status: what was found.
    @ivar peer: with L{SharingStatus.FOUND}, the peer that has the mailbox, as C{host:port};
        else L{None}.
    @raise ValueError: when the peer does not fit the status.
    """

    status: SharingStatus
    peer: str | None = attrs.field(default=None, validator=_check_peer)

    @classmethod
    def found(cls, peer: str) -> SharingAnswer:
        """
        @param peer: the peer that has the mailbox, as C{host:port}.
        @return: the answer "that peer has it".
        """
        return cls(SharingStatus.FOUND, peer)

    @classmethod
    def not_found(cls) -> SharingAnswer:
        """
        @return: the answer "no peer has it".
        """
        return cls(SharingStatus.NOT_FOUND)

    @classmethod
    def unavailable(cls) -> SharingAnswer:
        """
        @return: the answer "cannot tell now".
        """
        return cls(SharingStatus.UNAVAILABLE)


class LookupBudget:
    """
    How many distinct addresses one SMTP session may have looked up at the Domain Sharing
    peers (cache hits are free): past the limit the session cannot use this server to sweep
    the peers for valid addresses.

    It belongs to one session and is changed in place as the session goes on.

    @ivar limit: the most distinct addresses asked about.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most distinct addresses asked about (0: none).
        """
        self.limit = limit
        self._spent: set[str] = set()

    def spend(self, address: str) -> bool:
        """
        Count a lookup at the peers.

        @param address: the address about to be asked about (any case).
        @return: whether it may be asked: the same address again always may; a new one only
            while fewer than C{limit} were asked about.
        """
        key = address.lower()
        if key in self._spent:
            return True
        if len(self._spent) >= self.limit:
            return False
        self._spent.add(key)
        return True

    @property
    def spent(self) -> int:
        """
        The number of distinct addresses asked about so far.
        """
        return len(self._spent)
