# -*- test-case-name: tests.delivery.test_mx -*-
"""
Finding the hosts that take mail for a domain: MX lookup with C{twisted.names}.

Theory of operation (RFC 5321 section 5.1, RFC 7505), for L{MXResolver.resolve}:

    1. An address literal (C{[192.0.2.1]}, C{[IPv6:2001:db8::1]}) needs no lookup.
    2. Query MX. NXDOMAIN -> L{MXResultKind.NO_DOMAIN}. Any other DNS failure (timeout,
       SERVFAIL, REFUSED) -> L{MXResultKind.TEMPORARY}; only the MDaemon compatibility switch
       C{a_on_mx_timeout} turns a timeout into an implicit-MX lookup.
    3. An MX record with the root name as exchange (C{0 .}) -> L{MXResultKind.NULL_MX}, even
       if other records are present (as Postfix does).
    4. No MX records (NODATA) -> implicit MX: the domain's own A/AAAA records at preference 0
       (L{MXResultKind.IMPLICIT_MX}), or L{MXResultKind.NO_ADDRESS} when it has none.
    5. Otherwise every MX host is resolved to addresses (A, AAAA or both, in the configured
       order), in parallel. A host without addresses is skipped.
    6. If one of the hosts is this server (by name or by address), only hosts with a lower
       preference value are kept; none left -> L{MXResultKind.SELF_BEST}.
    7. The hosts are sorted by preference; hosts of equal preference are shuffled with the
       injected random source.
    8. No host left -> L{MXResultKind.UNUSABLE_MX}, or L{MXResultKind.TEMPORARY} when some
       host's lookup failed temporarily.

CNAMEs are followed: the server usually puts the target's records in the same answer; when it
gives only the CNAME, the target is queried again, up to L{MAX_CNAME_HOPS} times. A CNAME loop
or a longer chain is a temporary failure (a DNS configuration error that can be fixed).

Every query has a deadline on the injected clock in addition to C{twisted.names}' own
retransmission timeouts, so a dead server cannot hold a delivery forever.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import random
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import AuthoritativeDomainError, DNSNameError, DomainError

from mdtwist.delivery.hosts import MXHost, MXResult, MXResultKind

__all__ = [
    "MAX_CNAME_HOPS",
    "MAX_PTR_NAMES",
    "AddressPolicy",
    "MXHost",
    "MXResolver",
    "MXResult",
    "MXResultKind",
    "make_resolver",
    "parse_address_literal",
    "read_resolv_conf",
]

log = Logger()

#: How many CNAMEs are followed before the chain counts as broken.
MAX_CNAME_HOPS = 8

#: How many names of a client's PTR records L{MXResolver.reverse_name} checks at most.
MAX_PTR_NAMES = 4

#: The default retransmission timeouts (seconds) of one query, as C{twisted.names} takes them.
DEFAULT_TIMEOUT = (1, 3, 5)


class AddressPolicy(enum.Enum):
    """
    Which address families an MX host is resolved to, and which come first.
    """

    IPV4_ONLY = "ipv4"
    IPV4_FIRST = "ipv4-first"
    IPV6_FIRST = "ipv6-first"
    IPV6_ONLY = "ipv6"


class _NoDomain(Exception):
    # NXDOMAIN: the name does not exist.
    pass


class _Temporary(Exception):
    # Any failure that may go away: timeout, SERVFAIL, refusal, CNAME loop.
    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timeout = timeout


def read_resolv_conf(path: str = "/etc/resolv.conf") -> list[tuple[str, int]]:
    """
    Read the C{nameserver} lines of a C{resolv.conf(5)} file.

    We read the file once instead of letting C{twisted.names} re-read it every minute: that
    loop leaves a timed call on the reactor for as long as the resolver lives.

    @param path: the file.
    @return: C{(address, 53)} for each name server; C{[("127.0.0.1", 53)]} when there is none
        or the file cannot be read (what the C library does).
    """
    servers: list[tuple[str, int]] = []
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    servers.append((fields[1], dns.PORT))
    except OSError:
        pass
    return servers or [("127.0.0.1", dns.PORT)]


def make_resolver(
    servers: Sequence[tuple[str, int]] | None,
    reactor: Any,
    timeout: Sequence[int] = DEFAULT_TIMEOUT,
    resolv_conf: str = "/etc/resolv.conf",
) -> IResolver:
    """
    Build the DNS client that L{MXResolver} asks.

    @param servers: C{(address, port)} of each name server, tried in order; L{None} or empty
        for the ones in C{resolv_conf}.
    @param reactor: provides C{IReactorUDP}, C{IReactorTCP} and C{IReactorTime}.
    @param timeout: the retransmission timeouts of one query in seconds; the query fails after
        their sum (each value is used once per server).
    @param resolv_conf: the file read when C{servers} is empty.
    @return: a C{twisted.names} resolver (no cache, no hosts file, no search list).
    @raise ValueError: when C{timeout} is empty or holds a non-positive value.
    """
    if not timeout or any(t <= 0 for t in timeout):
        raise ValueError(f"DNS timeouts must be positive seconds, got {tuple(timeout)!r}")
    chosen = list(servers) if servers else read_resolv_conf(resolv_conf)
    resolver: IResolver = client.Resolver(
        servers=chosen, timeout=tuple(timeout), reactor=_QuietUDP(reactor)
    )
    return resolver


class _QuietUDP:
    # The reactor as the DNS client sees it: the datagram protocol it starts for each query
    # does not log "Starting protocol" and "Stopping protocol".

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenUDP(  # noqa: N802 - IReactorUDP's name
        self, port: int, protocol: Any, interface: str = "", max_packet_size: int = 8192
    ) -> Any:
        protocol.noisy = False
        return self._reactor.listenUDP(port, protocol, interface, max_packet_size)


@functools.lru_cache(maxsize=1024)
def parse_address_literal(domain: str) -> str | None:
    """
    Read an address literal (RFC 5321 section 4.1.3).

    @param domain: the domain part of an address, such as C{[192.0.2.1]} or
        C{[IPv6:2001:db8::1]}.
    @return: the IP address in its normal text form, or L{None} when C{domain} is not a valid
        literal.
    """
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


def _name(value: object) -> str:
    # A DNS name as we compare it: text, lower-case, no trailing dot.
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return text.rstrip(".").lower()


def _names(names: Iterable[str]) -> frozenset[str]:
    # Host names as we compare them.
    return frozenset(_name(n) for n in names)


@attrs.frozen
class MXResolver:
    """
    Resolve mail domains to the ordered hosts to deliver to.

    @ivar resolver: the DNS client (see L{make_resolver}).
    @ivar clock: drives the per-query deadline.
    @ivar rng: shuffles hosts of equal preference; inject a seeded C{random.Random} in tests.
    @ivar addresses: which address families to use, in which order.
    @ivar own_names: the names of this server (lower-case, no trailing dot).
    @ivar own_addresses: the IP addresses of this server.
    @ivar query_timeout: the most seconds one DNS query may take, whatever the resolver does.
    @ivar implicit_mx: whether a domain without MX records gets its own A/AAAA records as
        implicit MX; off gives L{MXResultKind.NO_ADDRESS} at once (MDaemon's "bounce if no
        MX", the v13 reading).
    @ivar a_on_mx_timeout: the MDaemon compatibility switch: when the MX query times out, use
        the domain's address records. Off by default: RFC 5321 wants a retry.
    """

    resolver: IResolver
    clock: IReactorTime
    rng: random.Random = attrs.field(factory=random.SystemRandom)
    addresses: AddressPolicy = AddressPolicy.IPV4_FIRST
    own_names: frozenset[str] = attrs.field(default=frozenset(), converter=_names)
    own_addresses: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    query_timeout: float = 20.0
    implicit_mx: bool = True
    a_on_mx_timeout: bool = False

    def resolve(self, domain: str) -> Deferred[MXResult]:
        """
        Find the hosts that take mail for C{domain}.

        @param domain: the domain of a recipient address, or an address literal.
        @return: a Deferred that fires with the result; it does not fail (a DNS failure is a
            L{MXResultKind.TEMPORARY} result).
        """
        return Deferred.fromCoroutine(self._resolve(domain))

    def resolve_address(self, name: str) -> Deferred[MXResult]:
        """
        Resolve one host name (or literal) to its addresses, without MX lookup.

        This is for bracketed smart hosts (C{[host]}) and for Domain Sharing peers.

        @param name: the host name, C{[host]}, or an address literal.
        @return: a Deferred that fires with an L{MXResultKind.ADDRESS} or
            L{MXResultKind.LITERAL} result with one host, or L{MXResultKind.NO_DOMAIN},
            L{MXResultKind.NO_ADDRESS} or L{MXResultKind.TEMPORARY}.
        """
        literal = self._literal(name)
        if literal is not None:
            return succeed(literal)  # a smart host given as [address]: once per message
        return Deferred.fromCoroutine(self._resolve_address(name))

    def reverse_name(self, address: str) -> Deferred[str | None]:
        """
        The name of a client address, for the mail log: the first name of its PTR records
        whose own address records include the address (forward-confirmed, as Postfix does;
        a name that does not lead back is not trusted). At most L{MAX_PTR_NAMES} names are
        checked.

        @param address: an IPv4 or IPv6 address.
        @return: a Deferred that fires with the name (lower case, no trailing dot), or with
            L{None} when there is none, it does not lead back, or DNS cannot answer; it does
            not fail.
        """
        return Deferred.fromCoroutine(self._reverse_name(address))

    async def _reverse_name(self, address: str) -> str | None:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        kind = dns.A if ip.version == 4 else dns.AAAA
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        try:
            pointers = await self._records(ip.reverse_pointer, dns.PTR)
        except (_NoDomain, _Temporary):
            return None
        for record in pointers[:MAX_PTR_NAMES]:
            name = _name(record.name.name)
            try:
                forward = await self._records(name, kind)
            except (_NoDomain, _Temporary):
                continue
            if any(socket.inet_ntop(family, r.address) == ip.compressed for r in forward):
                return name
        return None

    async def _resolve_address(self, name: str) -> MXResult:
        host = _name(name.strip("[]"))
        if not host:
            return MXResult(MXResultKind.NO_DOMAIN, detail="empty host name")
        try:
            addresses = await self._addresses(host)
        except _NoDomain:
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"host {host} does not exist")
        except _Temporary as e:
            return MXResult(MXResultKind.TEMPORARY, detail=f"looking up {host}: {e.reason}")
        if not addresses:
            return MXResult(MXResultKind.NO_ADDRESS, detail=f"host {host} has no address")
        return MXResult(MXResultKind.ADDRESS, (MXHost(host, 0, addresses),))

    def _literal(self, text: str) -> MXResult | None:
        # The result for an address literal, or None when `text` is not bracketed.
        if not (text.startswith("[") and text.endswith("]")):
            return None
        address = parse_address_literal(text)
        if address is None:
            # "[host]" is not a literal: the caller treats it as a name.
            inner = text[1:-1]
            if inner and ":" not in inner and not inner.replace(".", "").isdigit():
                return None
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"bad address literal {text}")
        if address in self.own_addresses:
            return MXResult(
                MXResultKind.SELF_BEST, detail=f"{text} is this server", own_preference=0
            )
        return MXResult(MXResultKind.LITERAL, (MXHost(text, 0, (address,)),))

    async def _resolve(self, domain: str) -> MXResult:
        if domain.startswith("["):
            literal = self._literal(domain)
            if literal is not None:
                return literal
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"bad address literal {domain}")
        name = _name(domain)
        if not name or ".." in name:
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"bad domain name {domain!r}")
        try:
            records = await self._records(name, dns.MX)
        except _NoDomain:
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"domain {name} does not exist")
        except _Temporary as e:
            if not (e.timeout and self.a_on_mx_timeout):
                return MXResult(MXResultKind.TEMPORARY, detail=f"MX lookup: {e.reason}")
            log.info("MX lookup for {domain} timed out; using its addresses", domain=name)
            records = []
        if not records:
            return await self._implicit(name)
        mx = [(int(r.preference), _name(r.name.name)) for r in records]
        if any(exchange == "" for _, exchange in mx):
            return MXResult(MXResultKind.NULL_MX, detail=f"domain {name} accepts no mail")
        return await self._from_mx(name, mx)

    async def _implicit(self, name: str) -> MXResult:
        # No MX records: the domain's own addresses at preference 0.
        if not self.implicit_mx:
            return MXResult(MXResultKind.NO_ADDRESS, detail=f"domain {name} has no MX record")
        try:
            addresses = await self._addresses(name)
        except _NoDomain:
            return MXResult(MXResultKind.NO_DOMAIN, detail=f"domain {name} does not exist")
        except _Temporary as e:
            return MXResult(MXResultKind.TEMPORARY, detail=f"address lookup: {e.reason}")
        if not addresses:
            return MXResult(
                MXResultKind.NO_ADDRESS, detail=f"domain {name} has no MX and no address record"
            )
        if name in self.own_names or self.own_addresses.intersection(addresses):
            return MXResult(
                MXResultKind.SELF_BEST,
                detail=f"domain {name} has no MX and points at this server",
                own_preference=0,
            )
        return MXResult(MXResultKind.IMPLICIT_MX, (MXHost(name, 0, addresses),))

    async def _from_mx(self, domain: str, mx: list[tuple[int, str]]) -> MXResult:
        # Resolve every exchange, drop ourselves and worse, order the rest.
        unique: dict[str, int] = {}
        for preference, exchange in mx:
            if exchange not in unique or preference < unique[exchange]:
                unique[exchange] = preference
        names = list(unique)
        lookups = await gatherResults([Deferred.fromCoroutine(self._host(n)) for n in names])
        resolved: list[MXHost] = []
        temporary: list[str] = []
        own: int | None = None
        for exchange, outcome in zip(names, lookups, strict=True):
            preference = unique[exchange]
            if isinstance(outcome, _Temporary):
                temporary.append(f"{exchange}: {outcome.reason}")
                addresses: tuple[str, ...] = ()
            else:
                addresses = outcome
            if exchange in self.own_names or self.own_addresses.intersection(addresses):
                own = preference if own is None else min(own, preference)
            elif addresses:
                resolved.append(MXHost(exchange, preference, addresses))
        if own is not None:
            resolved = [h for h in resolved if h.preference < own]
            if not any(p < own for p in unique.values()):
                return MXResult(
                    MXResultKind.SELF_BEST,
                    detail=f"this server is the best MX for {domain} (preference {own})",
                    own_preference=own,
                )
        if not resolved:
            if temporary:
                return MXResult(
                    MXResultKind.TEMPORARY,
                    detail="no MX host address: " + "; ".join(temporary),
                    own_preference=own,
                )
            return MXResult(
                MXResultKind.UNUSABLE_MX,
                detail=f"no MX host of {domain} has an address",
                own_preference=own,
            )
        return MXResult(MXResultKind.MX, self._order(resolved), own_preference=own)

    def _order(self, hosts: Iterable[MXHost]) -> tuple[MXHost, ...]:
        # Sort by preference; shuffle each group of equal preference.
        groups: dict[int, list[MXHost]] = {}
        for host in hosts:
            groups.setdefault(host.preference, []).append(host)
        ordered: list[MXHost] = []
        for preference in sorted(groups):
            group = sorted(groups[preference], key=lambda h: h.name)
            self.rng.shuffle(group)
            ordered.extend(group)
        return tuple(ordered)

    async def _host(self, name: str) -> tuple[str, ...] | _Temporary:
        # The addresses of one MX host; none when it does not exist.
        try:
            return await self._addresses(name)
        except _NoDomain:
            return ()
        except _Temporary as e:
            return e

    async def _addresses(self, name: str) -> tuple[str, ...]:
        # A and/or AAAA records of `name` in the configured order. NXDOMAIN only when every
        # family said so; a temporary failure only when no family gave an address.
        families: list[int] = {
            AddressPolicy.IPV4_ONLY: [dns.A],
            AddressPolicy.IPV4_FIRST: [dns.A, dns.AAAA],
            AddressPolicy.IPV6_FIRST: [dns.AAAA, dns.A],
            AddressPolicy.IPV6_ONLY: [dns.AAAA],
        }[self.addresses]

        async def one(kind: int) -> list[str] | Exception:
            try:
                records = await self._records(name, kind)
            except (_NoDomain, _Temporary) as e:
                return e
            family = socket.AF_INET if kind == dns.A else socket.AF_INET6
            return [socket.inet_ntop(family, r.address) for r in records]

        outcomes = await gatherResults([Deferred.fromCoroutine(one(k)) for k in families])
        addresses: list[str] = []
        for outcome in outcomes:
            if isinstance(outcome, list):
                addresses.extend(a for a in outcome if a not in addresses)
        if addresses:
            return tuple(addresses)
        for outcome in outcomes:
            if isinstance(outcome, _Temporary):
                raise outcome
        if outcomes and all(isinstance(o, _NoDomain) for o in outcomes):
            raise _NoDomain(name)
        return ()

    async def _records(self, name: str, kind: int) -> list[Any]:
        # The payloads of type `kind` for `name`, following CNAMEs.
        lookup = self._lookup_function(kind)
        seen = {name}
        current = name
        for _ in range(MAX_CNAME_HOPS + 1):
            answers = await self._query(lookup, current)
            aliases = {
                owner: _name(payload.name.name)
                for owner, rtype, payload in answers
                if rtype == dns.CNAME
            }
            target = current
            while target in aliases:
                target = aliases[target]
                if target in seen:
                    raise _Temporary(f"CNAME loop at {target}")
                seen.add(target)
                if len(seen) > MAX_CNAME_HOPS + 1:
                    raise _Temporary(f"CNAME chain from {name} too long")
            records = [
                payload for owner, rtype, payload in answers if rtype == kind and owner == target
            ]
            if records or target == current:
                return records
            current = target
        raise _Temporary(f"CNAME chain from {name} too long")

    def _lookup_function(self, kind: int) -> Callable[..., Deferred[Any]]:
        # The IResolver method that asks for records of type `kind`.
        resolver: Any = self.resolver
        method: Callable[..., Deferred[Any]]
        if kind == dns.MX:
            method = resolver.lookupMailExchange
        elif kind == dns.PTR:
            method = resolver.lookupPointer
        elif kind == dns.A:
            method = resolver.lookupAddress
        else:
            method = resolver.lookupIPV6Address
        return method

    async def _query(
        self, lookup: Callable[..., Deferred[Any]], name: str
    ) -> list[tuple[str, int, Any]]:
        # One query with a deadline: (owner name, type, payload) of each answer record. DNS
        # failures become _NoDomain or _Temporary.
        d: Deferred[Any] = lookup(name)
        d.addTimeout(self.query_timeout, self.clock)
        try:
            answers, _authority, _additional = await _awaitable(d)
        except (DNSNameError, AuthoritativeDomainError) as e:
            raise _NoDomain(name) from e
        except (TimeoutError, CancelledError) as e:
            raise _Temporary(f"no answer for {name}", timeout=True) from e
        except (DomainError, OSError) as e:
            raise _Temporary(f"{name}: {type(e).__name__}") from e
        except Exception as e:
            # Not a DNS answer: a bug or an odd resolver. Still only a temporary failure.
            log.failure("DNS query for {name} failed unexpectedly", name=name)
            raise _Temporary(f"{name}: {type(e).__name__}") from e
        return [(_name(rr.name.name), int(rr.type), rr.payload) for rr in answers]


def _awaitable(d: Deferred[Any]) -> Awaitable[Any]:
    # Deferreds are awaitable; this keeps mypy's view of the result simple.
    return d
