# -*- test-case-name: tests.delivery.test_mx -*-
"""
Next-hop data shared by the MX resolver and the router, and the memory of hosts that failed.

This module imports neither Twisted nor the clock: L{mdtwist.delivery.router} (a pure core)
reads the result types from here, and L{FailedHosts} is given the time by its caller.

Theory of operation of L{FailedHosts}, the dead-host cache: when a connection to
C{(address, port)} fails, the address is "down" for C{base} seconds. A further failure within
C{remember} seconds after that period ended doubles the period (times C{factor}, at most
C{maximum}); a success, or a quiet C{remember} seconds, forgets the host. Callers filter
candidate addresses with L{FailedHosts.filter_up}, which skips down hosts and returns nothing
when all of them are down: then the message is deferred at once, without a connection, until
the first of them may be tried again (L{FailedHosts.all_down_until}). So while the next hop is
dead, one message probes it when its period ends, and the others wait (as Postfix's queue
manager does with a dead destination) instead of each trying the dead host again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

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


@attrs.define
class _Failure:
    # One remembered host: how many failures in a row, until when it is down.
    count: int
    down_until: float


@attrs.define
class FailedHosts:
    """
    The dead-host cache: hosts that recently failed to connect, each down for a while that
    grows on repeats. Every method takes the current time as a parameter.

    @ivar base: seconds a host is down after its first failure.
    @ivar factor: how much the period grows on each further failure.
    @ivar maximum: the longest period, in seconds.
    @ivar remember: seconds after the end of a down period during which a new failure still
        counts as a repeat; after that the host is forgotten.
    """

    base: float = 300.0
    factor: float = 2.0
    maximum: float = 3600.0
    remember: float = 3600.0
    _hosts: dict[tuple[str, int], _Failure] = attrs.field(factory=dict, init=False)

    def mark_failed(self, address: str, port: int, now: float) -> float:
        """
        Remember that a connection to C{address} failed.

        A failure while the host is already down (another message tried it at the same time)
        does not lengthen the period again.

        @param address: the IP address.
        @param port: the TCP port.
        @param now: the current time, seconds since the epoch.
        @return: the time until which the host is now considered down.
        """
        self._forget_old(now)
        key = (address, port)
        previous = self._hosts.get(key)
        if previous is not None and now < previous.down_until:
            return previous.down_until
        count = 1 if previous is None else previous.count + 1
        period = min(self.base * self.factor ** (count - 1), self.maximum)
        until = now + period
        self._hosts[key] = _Failure(count, until)
        return until

    def mark_ok(self, address: str, port: int) -> None:
        """
        Forget a host because a connection to it worked.

        @param address: the IP address.
        @param port: the TCP port.
        """
        self._hosts.pop((address, port), None)

    def forget_all(self) -> None:
        """
        Forget every failure, so that each host is tried again at once (an operator's queue
        run, as Postfix's C{postqueue -f} revives dead destinations).
        """
        self._hosts.clear()

    def down_until(self, address: str, port: int, now: float) -> float | None:
        """
        @param address: the IP address.
        @param port: the TCP port.
        @param now: the current time, seconds since the epoch.
        @return: the end of the host's down period, or L{None} when it is not down at C{now}.
        """
        failure = self._hosts.get((address, port))
        if failure is None or now >= failure.down_until:
            return None
        return failure.down_until

    def is_down(self, address: str, port: int, now: float) -> bool:
        """
        @param address: the IP address.
        @param port: the TCP port.
        @param now: the current time, seconds since the epoch.
        @return: whether the host failed recently and its down period has not ended.
        """
        return self.down_until(address, port, now) is not None

    def filter_up(self, addresses: Iterable[str], port: int, now: float) -> tuple[str, ...]:
        """
        Drop the addresses that are down, keeping the order of the rest.

        @param addresses: candidate addresses in the order to try.
        @param port: the TCP port they would be tried on.
        @param now: the current time, seconds since the epoch.
        @return: the addresses that are not down; empty when every one is down (then the
            caller defers until L{all_down_until} without connecting).
        """
        candidates = tuple(addresses)
        if not self._hosts:
            return candidates
        return tuple(a for a in candidates if not self.is_down(a, port, now))

    def all_down_until(self, addresses: Iterable[str], port: int, now: float) -> float | None:
        """
        Tell until when a whole host is down: every one of its addresses.

        @param addresses: the host's addresses.
        @param port: the TCP port.
        @param now: the current time, seconds since the epoch.
        @return: the earliest end of their down periods (when the first of them may be tried
            again), or L{None} when some address is up (or there is none).
        """
        ends = [self.down_until(a, port, now) for a in addresses]
        if not ends or None in ends:
            return None
        return min(e for e in ends if e is not None)

    def filter_hosts(self, hosts: Sequence[MXHost], port: int, now: float) -> tuple[MXHost, ...]:
        """
        Drop down addresses from a list of hosts, and hosts left without addresses.

        @param hosts: hosts in the order to try.
        @param port: the TCP port.
        @param now: the current time, seconds since the epoch.
        @return: the hosts with their up addresses; empty when every address is down.
        """
        kept = []
        for host in hosts:
            up = self.filter_up(host.addresses, port, now)
            if up:
                kept.append(attrs.evolve(host, addresses=up))
        return tuple(kept)

    def _forget_old(self, now: float) -> None:
        # Drop hosts whose down period ended more than `remember` seconds ago.
        stale = [k for k, f in self._hosts.items() if f.down_until + self.remember <= now]
        for key in stale:
            del self._hosts[key]
