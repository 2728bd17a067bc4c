# -*- test-case-name: tests.delivery.test_mx -*-
"""
Next-hop data shared by the MX resolver and the router, and the memory of hosts that failed.

This module imports neither Twisted nor the clock: L{mdtwist.delivery.router} (a pure core)
reads the result types from here, and L{FailedHosts} asks an injected clock for the time.

Theory of operation of L{FailedHosts}: when a connection to C{(address, port)} fails, the
address is "down" for C{base} seconds. A further failure within C{remember} seconds after that
period ended doubles the period (times C{factor}, at most C{maximum}); a success, or a quiet
C{remember} seconds, forgets the host. Callers filter candidate addresses with
L{FailedHosts.filter_up}, which skips down hosts but returns every address when all of them
are down, so that a message is never held back by the memory alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Protocol

import attrs


class MXResultKind(enum.Enum):
    """
    What resolving a mail domain (or one host name) came to.

    @cvar MX: MX records exist; C{hosts} are the usable ones, in the order to try.
    @cvar IMPLICIT_MX: no MX records (NODATA); C{hosts} is the domain itself at preference 0
        with its own addresses (RFC 5321 section 5.1).
    @cvar LITERAL: the domain was an address literal (C{[192.0.2.1]}, C{[IPv6:...]}); no
        lookup was made.
    @cvar ADDRESS: a host name resolved without MX lookup (a bracketed smart host, a sharing
        peer).
    @cvar NULL_MX: the domain publishes a null MX (RFC 7505): it accepts no mail (5.1.10).
    @cvar NO_DOMAIN: the domain does not exist (NXDOMAIN), or is not a usable name (5.1.2).
    @cvar NO_ADDRESS: the domain exists but has neither MX nor address records.
    @cvar UNUSABLE_MX: MX records exist, but none of their hosts has an address.
    @cvar SELF_BEST: this server is the best MX of the domain: sending would loop (5.4.6).
    @cvar TEMPORARY: a DNS failure (timeout, SERVFAIL, refusal, CNAME loop); try later.
    """

    MX = "mx"
    IMPLICIT_MX = "implicit-mx"
    LITERAL = "literal"
    ADDRESS = "address"
    NULL_MX = "null-mx"
    NO_DOMAIN = "no-domain"
    NO_ADDRESS = "no-address"
    UNUSABLE_MX = "unusable-mx"
    SELF_BEST = "self-best"
    TEMPORARY = "temporary"


#: The kinds whose C{hosts} can be connected to.
USABLE_KINDS = frozenset(
    {MXResultKind.MX, MXResultKind.IMPLICIT_MX, MXResultKind.LITERAL, MXResultKind.ADDRESS}
)


@attrs.frozen
class MXHost:
    """
    One host to try, with its addresses.

    @ivar name: the host name (lower-case, no trailing dot), or the literal as written.
    @ivar preference: its MX preference; 0 for implicit MX, literals and plain hosts.
    @ivar addresses: its IP addresses in the order to try; never empty in a usable result.
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


@attrs.frozen
class MXResult:
    """
    The outcome of resolving a destination.

    @ivar kind: what happened.
    @ivar hosts: the hosts to try in order; empty unless C{kind} is in L{USABLE_KINDS}.
    @ivar detail: a human-readable explanation for logs and bounce messages.
    @ivar own_preference: the preference at which this server itself appears in the MX list,
        or L{None} when it does not. Mail for such a domain must never go to a smart host
        (the smart host might send it straight back).
    """

    kind: MXResultKind
    hosts: tuple[MXHost, ...] = ()
    detail: str = ""
    own_preference: int | None = None

    @property
    def usable(self) -> bool:
        """
        Whether there is at least one host to connect to.
        """
        return self.kind in USABLE_KINDS and bool(self.hosts)


class Clock(Protocol):
    """
    The one thing L{FailedHosts} needs from a clock (Twisted's C{IReactorTime} has it).
    """

    def seconds(self) -> float:
        """
        @return: the current time in seconds.
        """


@attrs.define
class _Failure:
    # One remembered host: how many failures in a row, until when it is down.
    count: int
    down_until: float


@attrs.define
class FailedHosts:
    """
    The hosts that recently failed to connect, each down for a while that grows on repeats.

    @ivar clock: gives the current time (C{seconds()}).
    @ivar base: seconds a host is down after its first failure.
    @ivar factor: how much the period grows on each further failure.
    @ivar maximum: the longest period, in seconds.
    @ivar remember: seconds after the end of a down period during which a new failure still
        counts as a repeat; after that the host is forgotten.
    """

    clock: Clock
    base: float = 300.0
    factor: float = 2.0
    maximum: float = 3600.0
    remember: float = 3600.0
    _hosts: dict[tuple[str, int], _Failure] = attrs.field(factory=dict, init=False)

    def mark_failed(self, address: str, port: int = 25) -> float:
        """
        Remember that a connection to C{address} failed.

        @param address: the IP address.
        @param port: the TCP port.
        @return: the time until which the host is now considered down.
        """
        now = self.clock.seconds()
        self._forget_old(now)
        key = (address, port)
        previous = self._hosts.get(key)
        count = 1 if previous is None else previous.count + 1
        period = min(self.base * self.factor ** (count - 1), self.maximum)
        until = now + period
        self._hosts[key] = _Failure(count, until)
        return until

    def mark_ok(self, address: str, port: int = 25) -> None:
        """
        Forget a host because a connection to it worked.

        @param address: the IP address.
        @param port: the TCP port.
        """
        self._hosts.pop((address, port), None)

    def is_down(self, address: str, port: int = 25) -> bool:
        """
        @param address: the IP address.
        @param port: the TCP port.
        @return: whether the host failed recently and its down period has not ended.
        """
        failure = self._hosts.get((address, port))
        return failure is not None and self.clock.seconds() < failure.down_until

    def filter_up(self, addresses: Iterable[str], port: int = 25) -> tuple[str, ...]:
        """
        Drop the addresses that are down, keeping the order of the rest.

        @param addresses: candidate addresses in the order to try.
        @param port: the TCP port they would be tried on.
        @return: the addresses that are not down; all of them when every one is down (trying
            a probably dead host beats never delivering).
        """
        candidates = tuple(addresses)
        if not self._hosts:
            return candidates
        up = tuple(a for a in candidates if not self.is_down(a, port))
        return up or candidates

    def filter_hosts(self, hosts: Sequence[MXHost], port: int = 25) -> tuple[MXHost, ...]:
        """
        Drop down addresses from a list of hosts, and hosts left without addresses.

        @param hosts: hosts in the order to try.
        @param port: the TCP port.
        @return: the hosts with their up addresses; the hosts unchanged when every address of
            every host is down.
        """
        kept = []
        for host in hosts:
            up = tuple(a for a in host.addresses if not self.is_down(a, port))
            if up:
                kept.append(attrs.evolve(host, addresses=up))
        return tuple(kept) if kept else tuple(hosts)

    def _forget_old(self, now: float) -> None:
        # Drop hosts whose down period ended more than `remember` seconds ago.
        stale = [k for k, f in self._hosts.items() if f.down_until + self.remember <= now]
        for key in stale:
            del self._hosts[key]
