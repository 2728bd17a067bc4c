# -*- test-case-name: tests.delivery.test_router -*-
"""
The next hop of outbound mail: MDaemon's "Delivery" screen as a pure decision function.

This is a pure core: standard library and attrs only, no Twisted, no I/O, no clock. The queue
runner asks L{route} what to do next for one group of recipients, carries the step out (a DNS
lookup, or a series of connections), records the outcome in a L{Progress} and asks again,
until the answer is final (L{Bounce}, L{Defer}, L{Hold}, L{Local}, or the recipients were
delivered). Every delivery attempt starts with a fresh L{Progress}, so in
L{Mode.DIRECT_THEN_SMARTHOST} every retry tries direct delivery first again.

Decision table for a L{DomainKind.REMOTE} destination. "fallback" means: in
C{DIRECT_THEN_SMARTHOST} mode, hand the mail to the smart host, unless the MX list names this
server (C{own_preference} set), in which case defer; in C{DIRECT} mode see the DIRECT column.
Smart-host problems never bounce: they are our configuration, so they defer.

    ===================================  ======================  ==========================
    direct MX result (L{MXResultKind})   DIRECT                  DIRECT_THEN_SMARTHOST
    ===================================  ======================  ==========================
    MX, IMPLICIT_MX, LITERAL             connect to the hosts    connect to the hosts
    ... and every host failed (no 5xx)   defer (4.4.1 or last)   fallback
    NULL_MX                              bounce 5.1.10           bounce 5.1.10
    SELF_BEST (we are the best MX)       bounce 5.4.6            bounce 5.4.6
    NO_DOMAIN (NXDOMAIN)                 bounce 5.1.2            fallback; bounce 5.1.2 (a)
    NO_ADDRESS (no MX, no A/AAAA)        defer 4.4.4; (a) 5.4.4  fallback; bounce 5.4.4 (a)
    UNUSABLE_MX (no MX host address)     bounce 5.4.4 (b)        fallback; bounce 5.4.4 (a)
    UNUSABLE_MX and we are a worse MX    defer 4.4.4             defer 4.4.4
    TEMPORARY (timeout, SERVFAIL)        defer 4.4.3             fallback
    ===================================  ======================  ==========================

    (a) with L{RoutingPolicy.bounce_no_address} ("bounce if the domain has no A or MX
        record", default off).
    (b) L{RoutingPolicy.bounce_unusable_mx} (default on, RFC 5321 section 5.1 calls it an
        error; Postfix bounces too); off: defer 4.4.4.

In C{SMARTHOST} mode every remote recipient goes to the smart host, whatever its domain. The
smart host C{[host]} is resolved to addresses only, C{host} by MX lookup (falling back to its
address records as implicit MX), an IP address needs no lookup. Its result: usable -> connect;
every host failed -> defer (4.4.1 or the last status); anything else -> defer (4.4.3 DNS
failure, 4.4.6 when it points at this server, 4.4.4 otherwise).

Other kinds of destination never go to the smart host:

    - L{DomainKind.LOCAL}: L{Local}, delivered on this server.
    - L{DomainKind.GATEWAY}: L{Hold}, kept until the gateway dequeues it (ETRN/ATRN).
    - L{DomainKind.SHARING_PEER}: the peer server's address records (never MX), on its port;
      every failure defers (4.4.1, 4.4.3 or 4.4.4), unless
      L{RoutingPolicy.sharing_smarthost_fallback} is on and there is a smart host: then a peer
      that cannot be resolved or reached, or answers 4xx, hands the mail to the smart host
      (MDaemon with "do not send Domain Sharing mail to the smart host" unchecked). A 5xx
      from the peer bounces either way.

Within one connection series, L{judge_recipient} decides per recipient after each host: any
2xx -> delivered; a 5xx to MAIL, RCPT or DATA with L{RoutingPolicy.bounce_on_first_5xx}
-> bounce at once; more hosts left -> next host; otherwise any 4xx, connection failure or 5xx
greeting -> defer, and only 5xx answers -> bounce. A recipient that saw no 5xx at all is
L{Verdict.UNREACHABLE}: eligible for the smart-host fallback. 5xx greetings never bounce.

Grouping (L{group_recipients}): in C{SMARTHOST} mode all remote recipients of a message share
one transaction; otherwise one group per destination domain. Sharing-peer recipients group by
peer, gateway recipients by domain, local recipients together.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Collection, Iterable, Sequence

import attrs

from mdtwist.delivery.hosts import MXHost, MXResult, MXResultKind

#: A host name: dot-separated labels of letters, digits, hyphens (and underscores, which
#: real-world names contain), not starting or ending with a hyphen.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


class Mode(enum.Enum):
    """
    How remote mail leaves this server.

    @cvar DIRECT: to the MX hosts of each domain.
    @cvar SMARTHOST: all of it to one smart host.
    @cvar DIRECT_THEN_SMARTHOST: direct first; to the smart host when the destination cannot
        be resolved to an address or no host could be reached.
    """

    DIRECT = "direct"
    SMARTHOST = "smarthost"
    DIRECT_THEN_SMARTHOST = "direct_then_smarthost"


class DomainKind(enum.Enum):
    """
    What a recipient domain is to this server.

    @cvar REMOTE: somebody else's domain.
    @cvar LOCAL: one of ours, delivered to local mailboxes.
    @cvar SHARING_PEER: one of ours, but the mailbox lives on a Domain Sharing peer.
    @cvar GATEWAY: a domain we hold mail for until it is dequeued (ETRN/ATRN).
    """

    REMOTE = "remote"
    LOCAL = "local"
    SHARING_PEER = "sharing-peer"
    GATEWAY = "gateway"


class HostSpecError(ValueError):
    """
    A host specification (smart host, peer) cannot be read; the message says why.
    """


@attrs.frozen
class HostSpec:
    """
    A configured host to send to: C{host}, C{[host]}, C{host:port} or C{[host]:port}.

    @ivar host: the host name (lower-case, no trailing dot) or IP address.
    @ivar port: the TCP port.
    @ivar bracketed: whether it was written in brackets: skip the MX lookup.
    """

    host: str
    port: int = 25
    bracketed: bool = False

    @property
    def is_address(self) -> bool:
        """
        Whether C{host} is an IP address (then no lookup is needed at all).
        """
        return _ip(self.host) is not None

    @property
    def lookup_name(self) -> str:
        """
        The name to give the resolver: an address literal for an IP address, else the name.
        """
        address = _ip(self.host)
        if address is None:
            return self.host
        if address.version == 6:
            return f"[IPv6:{address}]"
        return f"[{address}]"

    @property
    def lookup(self) -> Lookup:
        """
        How to resolve it: address records only when bracketed or an IP, else MX.
        """
        return Lookup.ADDRESS if self.bracketed or self.is_address else Lookup.MX

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.bracketed or ":" in self.host else self.host
        return f"{host}:{self.port}"


@functools.lru_cache(maxsize=1024)
def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # The IP address `text` is, or None; remembered, since the same hosts come up for every
    # message.
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_host_spec(text: str, default_port: int = 25) -> HostSpec:
    """
    Read a host specification as MDaemon and Postfix write it.

    Accepted forms: C{host}, C{host:port}, C{[host]}, C{[host]:port}; C{host} may be a name,
    an IPv4 address, or (in brackets only) an IPv6 address, with or without C{IPv6:}.

    @param text: the specification.
    @param default_port: the port when none is given.
    @return: the parsed specification.
    @raise HostSpecError: for an empty value, unbalanced brackets, an unbracketed IPv6
        address, a bad port, or a bad host name.
    """
    value = text.strip()
    if not value:
        raise HostSpecError("empty host")
    bracketed = value.startswith("[")
    port_text: str | None = None
    if bracketed:
        end = value.find("]")
        if end < 0:
            raise HostSpecError(f"{text!r}: '[' without ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise HostSpecError(f"{text!r}: only ':port' may follow ']'")
            port_text = rest[1:]
        if host[:5].lower() == "ipv6:":
            host = host[5:]
            if _ip(host) is None or ":" not in host:
                raise HostSpecError(f"{text!r}: {host!r} is not an IPv6 address")
    else:
        if "]" in value:
            raise HostSpecError(f"{text!r}: ']' without '['")
        if value.count(":") > 1:
            raise HostSpecError(f"{text!r}: write an IPv6 address in brackets, as [{value}]")
        host, colon, port_text_raw = value.partition(":")
        port_text = port_text_raw if colon else None
    port = default_port if port_text is None else _port(text, port_text)
    return HostSpec(_host(text, host), port, bracketed)


def _port(text: str, port_text: str) -> int:
    # A port number in 1..65535.
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HostSpecError(f"{text!r}: port must be a number from 1 to 65535")
    return int(port_text)


def _host(text: str, host: str) -> str:
    # A host name or IP address, normalised.
    address = _ip(host)
    if address is not None:
        return str(address)
    name = host.rstrip(".").lower()
    if not name:
        raise HostSpecError(f"{text!r}: empty host name")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise HostSpecError(f"{text!r}: {host!r} is not a valid host name")
    return name


@attrs.frozen
class RoutingPolicy:
    """
    The routing settings (MDaemon's "Delivery" screen).

    @ivar mode: how remote mail leaves.
    @ivar smart_host: the smart host; required unless C{mode} is L{Mode.DIRECT}.
    @ivar port: the port of direct delivery.
    @ivar bounce_no_address: bounce at once when the domain does not exist or has no A or MX
        record (also in C{DIRECT_THEN_SMARTHOST} mode, instead of using the smart host).
    @ivar bounce_unusable_mx: in C{DIRECT} mode, bounce when MX records exist but none of
        their hosts has an address; off: defer.
    @ivar bounce_on_first_5xx: bounce at the first 5xx to MAIL, RCPT or DATA from an MX host;
        off: try the other hosts and bounce only when none answered 4xx.
    @ivar max_addresses: the most addresses tried in one connection series (at least 2).
    @ivar sharing_smarthost_fallback: hand Domain Sharing mail to the smart host when its
        peer fails (the inverse of C{sharing.no_smarthost_on_error}; off by default).
    @raise ValueError: when a smart host is needed and missing, or C{max_addresses} < 2.
    """

    mode: Mode = Mode.DIRECT
    smart_host: HostSpec | None = None
    port: int = 25
    bounce_no_address: bool = False
    bounce_unusable_mx: bool = True
    bounce_on_first_5xx: bool = False
    max_addresses: int = 5
    sharing_smarthost_fallback: bool = False

    def __attrs_post_init__(self) -> None:
        if self.mode is not Mode.DIRECT and self.smart_host is None:
            raise ValueError(f"delivery mode {self.mode.value} needs a smart host")
        if self.max_addresses < 2:
            raise ValueError("max_addresses must be at least 2 (RFC 5321 section 5.1)")


@attrs.frozen
class Destination:
    """
    Where a group of recipients is going, as the directory and the sharing lookup tell.

    @ivar domain: the recipient domain (lower-case), or an address literal.
    @ivar kind: what the domain is to us.
    @ivar peer: the Domain Sharing peer; required for L{DomainKind.SHARING_PEER}.
    @raise ValueError: when a sharing destination has no peer.
    """

    domain: str
    kind: DomainKind = DomainKind.REMOTE
    peer: HostSpec | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind is DomainKind.SHARING_PEER and self.peer is None:
            raise ValueError(f"sharing destination {self.domain} needs a peer")


class Lookup(enum.Enum):
    """
    Which lookup a L{Resolve} step asks for.

    @cvar MX: C{MXResolver.resolve}: MX records, implicit MX, null MX ...
    @cvar ADDRESS: C{MXResolver.resolve_address}: address records of one host.
    """

    MX = "mx"
    ADDRESS = "address"


@attrs.frozen
class Progress:
    """
    What has happened so far in this delivery attempt (start each attempt with a new one).

    @ivar direct: the result of resolving the destination domain (or the sharing peer),
        once done.
    @ivar direct_failed: every direct host was tried and none took the recipients, and none
        answered 5xx to them (L{Verdict.UNREACHABLE}).
    @ivar direct_status: the enhanced status of the last direct failure, if known.
    @ivar relay: the result of resolving the smart host, once done.
    @ivar relay_failed: every host of the smart host was tried without success.
    @ivar relay_status: the enhanced status of the last such failure, if known.
    """

    direct: MXResult | None = None
    direct_failed: bool = False
    direct_status: str = ""
    relay: MXResult | None = None
    relay_failed: bool = False
    relay_status: str = ""


@attrs.frozen
class Hop:
    """
    One host to connect to.

    @ivar host: its name (or literal), for logs and TLS name checks.
    @ivar port: the TCP port.
    @ivar addresses: its IP addresses in the order to try.
    @ivar preference: its MX preference (0 when not from an MX record).
    @ivar smart_host: whether this is the smart host (use its credentials).
    """

    host: str
    port: int
    addresses: tuple[str, ...]
    preference: int = 0
    smart_host: bool = False


@attrs.frozen
class Resolve:
    """
    Next step: resolve a name and put the result in L{Progress}.

    @ivar name: the domain or host name (or an address literal) to resolve.
    @ivar lookup: which lookup.
    @ivar relay: whether the result goes to L{Progress.relay} (the smart host);
        otherwise to L{Progress.direct}.
    """

    name: str
    lookup: Lookup
    relay: bool = False


@attrs.frozen
class Connect:
    """
    Next step: try these hosts in order; stop at the first that takes the recipients.

    @ivar hops: the hosts, never empty.
    @ivar relay: whether they are the smart host; the outcome goes to
        L{Progress.relay_failed} when every hop fails, else to L{Progress.direct_failed}.
    """

    hops: tuple[Hop, ...]
    relay: bool = False


@attrs.frozen
class Bounce:
    """
    Final: the recipients fail permanently; send a DSN.

    @ivar status: the enhanced status code (C{5.x.y}).
    @ivar reason: the explanation for the DSN and the log.
    """

    status: str
    reason: str


@attrs.frozen
class Defer:
    """
    Final for this attempt: keep the recipients and retry later.

    @ivar status: the enhanced status code (C{4.x.y}).
    @ivar reason: the explanation for the log and a delay DSN.
    """

    status: str
    reason: str


@attrs.frozen
class Hold:
    """
    Final: keep the mail for a gateway domain until it is dequeued.

    @ivar reason: the explanation for the log.
    """

    reason: str


@attrs.frozen
class Local:
    """
    Final: deliver on this server.
    """


#: What L{route} can answer.
Decision = Resolve | Connect | Bounce | Defer | Hold | Local


def route(
    policy: RoutingPolicy,
    destination: Destination,
    progress: Progress,
    down: Collection[tuple[str, int]] = frozenset(),
) -> Decision:
    """
    Decide the next step for a group of recipients (see the module docstring's table).

    @param policy: the routing settings.
    @param destination: where the recipients are going.
    @param progress: what happened so far in this attempt.
    @param down: C{(address, port)} pairs known to be down (see
        L{mdtwist.delivery.hosts.FailedHosts}); their addresses are left out of L{Connect}
        unless every address would be.
    @return: the next step, or the final decision.
    """
    if destination.kind is DomainKind.LOCAL:
        return Local()
    if destination.kind is DomainKind.GATEWAY:
        return Hold(f"held for gateway domain {destination.domain}")
    if destination.kind is DomainKind.SHARING_PEER:
        assert destination.peer is not None  # checked by Destination
        return _peer(policy, destination.peer, progress, down)
    if policy.mode is Mode.SMARTHOST:
        return _smart(policy, progress, down)
    return _direct(policy, destination, progress, down)


def _direct(
    policy: RoutingPolicy,
    destination: Destination,
    progress: Progress,
    down: Collection[tuple[str, int]],
) -> Decision:
    # Direct delivery, with the smart host as fallback in DIRECT_THEN_SMARTHOST mode.
    result = progress.direct
    if result is None:
        return Resolve(destination.domain, Lookup.MX)
    domain = destination.domain
    fallback = policy.mode is Mode.DIRECT_THEN_SMARTHOST and result.own_preference is None
    kind = result.kind
    detail = result.detail or kind.value
    if result.usable:
        if not progress.direct_failed:
            return Connect(_hops(result.hosts, policy.port, False, policy, down))
        if fallback:
            return _smart(policy, progress, down)
        status = progress.direct_status or "4.4.1"
        return Defer(status, f"no MX host of {domain} took the message")
    if kind is MXResultKind.NULL_MX:
        return Bounce("5.1.10", f"{domain} accepts no mail (null MX)")
    if kind is MXResultKind.SELF_BEST:
        return Bounce("5.4.6", f"mail for {domain} loops back to myself ({detail})")
    if kind is MXResultKind.TEMPORARY:
        return _smart(policy, progress, down) if fallback else Defer("4.4.3", detail)
    if result.own_preference is not None:
        # We are a worse MX and no better one can be used: wait for them (Postfix: 4.4.4).
        return Defer("4.4.4", detail)
    if policy.bounce_no_address:
        status = "5.1.2" if kind is MXResultKind.NO_DOMAIN else "5.4.4"
        return Bounce(status, detail)
    if fallback:
        return _smart(policy, progress, down)
    if kind is MXResultKind.NO_DOMAIN:
        return Bounce("5.1.2", detail)
    if kind is MXResultKind.UNUSABLE_MX and policy.bounce_unusable_mx:
        return Bounce("5.4.4", detail)
    return Defer("4.4.4", detail)


def _peer(
    policy: RoutingPolicy,
    peer: HostSpec,
    progress: Progress,
    down: Collection[tuple[str, int]],
) -> Decision:
    # A Domain Sharing peer: its address records on its port, tracked in the direct part of
    # the progress; when that fails, the smart host only with sharing_smarthost_fallback.
    spec = HostSpec(peer.host, peer.port, bracketed=True)
    result = progress.direct
    if result is None:
        return Resolve(spec.lookup_name, spec.lookup)
    if result.usable and not progress.direct_failed:
        return Connect(_hops(result.hosts, spec.port, False, policy, down))
    if policy.sharing_smarthost_fallback and policy.smart_host is not None:
        return _smart(policy, progress, down)
    if result.usable:
        return Defer(progress.direct_status or "4.4.1", f"sharing peer {spec} did not take it")
    status = {
        MXResultKind.TEMPORARY: "4.4.3",
        MXResultKind.SELF_BEST: "4.4.6",
    }.get(result.kind, "4.4.4")
    return Defer(status, f"sharing peer {spec}: {result.detail or result.kind.value}")


def _smart(
    policy: RoutingPolicy, progress: Progress, down: Collection[tuple[str, int]]
) -> Decision:
    # The smart host; its failures always defer.
    assert policy.smart_host is not None  # checked by RoutingPolicy
    return _relay(policy, policy.smart_host, progress, down, smart_host=True, what="smart host")


def _relay(
    policy: RoutingPolicy,
    spec: HostSpec,
    progress: Progress,
    down: Collection[tuple[str, int]],
    *,
    smart_host: bool,
    what: str,
) -> Decision:
    # One configured host (the smart host): resolve, connect, or defer.
    result = progress.relay
    if result is None:
        return Resolve(spec.lookup_name, spec.lookup, relay=True)
    if result.usable:
        if progress.relay_failed:
            return Defer(progress.relay_status or "4.4.1", f"{what} {spec} did not take it")
        return Connect(_hops(result.hosts, spec.port, smart_host, policy, down), relay=True)
    status = {
        MXResultKind.TEMPORARY: "4.4.3",
        MXResultKind.SELF_BEST: "4.4.6",
    }.get(result.kind, "4.4.4")
    return Defer(status, f"{what} {spec}: {result.detail or result.kind.value}")


def _hops(
    hosts: Sequence[MXHost],
    port: int,
    smart_host: bool,
    policy: RoutingPolicy,
    down: Collection[tuple[str, int]],
) -> tuple[Hop, ...]:
    # Hops from resolved hosts: down addresses left out (unless all are), at most
    # max_addresses addresses in all.
    up = [(h, tuple(a for a in h.addresses if (a, port) not in down)) for h in hosts]
    if not any(addresses for _, addresses in up):
        up = [(h, h.addresses) for h in hosts]
    hops: list[Hop] = []
    budget = policy.max_addresses
    for host, addresses in up:
        if budget <= 0:
            break
        if addresses:
            kept = addresses[:budget]
            budget -= len(kept)
            hops.append(Hop(host.name, port, kept, host.preference, smart_host))
    return tuple(hops)


class HostOutcome(enum.Enum):
    """
    What one host did with one recipient.

    @cvar ACCEPTED: 2xx after DATA (or the recipient's LMTP-style reply).
    @cvar TEMPORARY: a 4xx to MAIL, RCPT or DATA, a 421, a timeout or a lost connection.
    @cvar UNREACHABLE: no connection could be made.
    @cvar GREETING_REFUSED: a 5xx greeting, or a 5xx to EHLO/HELO: the host would not talk
        to us; never a reason to bounce.
    @cvar PERMANENT: a 5xx to MAIL, RCPT or DATA.
    """

    ACCEPTED = "accepted"
    TEMPORARY = "temporary"
    UNREACHABLE = "unreachable"
    GREETING_REFUSED = "greeting-refused"
    PERMANENT = "permanent"


class Verdict(enum.Enum):
    """
    What to do with one recipient after a host.

    @cvar DELIVERED: done.
    @cvar NEXT_HOST: try the next host.
    @cvar BOUNCE: fail it permanently.
    @cvar DEFER: retry later; a host did answer 5xx, so no smart-host fallback.
    @cvar UNREACHABLE: retry later, or fall back to the smart host: no host gave a 5xx.
    """

    DELIVERED = "delivered"
    NEXT_HOST = "next-host"
    BOUNCE = "bounce"
    DEFER = "defer"
    UNREACHABLE = "unreachable"


def judge_recipient(
    policy: RoutingPolicy, outcomes: Sequence[HostOutcome], more_hosts: bool
) -> Verdict:
    """
    Decide a recipient's fate from what the hosts tried so far did with it.

    @param policy: the routing settings (L{RoutingPolicy.bounce_on_first_5xx}).
    @param outcomes: one outcome per host tried so far in this series, in order.
    @param more_hosts: whether untried hosts remain in the series.
    @return: the verdict.
    """
    if HostOutcome.ACCEPTED in outcomes:
        return Verdict.DELIVERED
    if policy.bounce_on_first_5xx and HostOutcome.PERMANENT in outcomes:
        return Verdict.BOUNCE
    if more_hosts:
        return Verdict.NEXT_HOST
    if HostOutcome.PERMANENT not in outcomes:
        return Verdict.UNREACHABLE
    if all(o is HostOutcome.PERMANENT for o in outcomes):
        return Verdict.BOUNCE
    return Verdict.DEFER


@attrs.frozen
class Group:
    """
    Recipients of one message that share one transaction (per hop).

    @ivar destination: where they go; in C{SMARTHOST} mode the first remote recipient's
        domain stands for all of them.
    @ivar recipients: the recipient addresses, in their original order.
    @ivar domains: the distinct recipient domains in the group, in order of appearance.
    """

    destination: Destination
    recipients: tuple[str, ...]
    domains: tuple[str, ...]


def group_recipients(
    policy: RoutingPolicy, recipients: Iterable[tuple[str, Destination]]
) -> tuple[Group, ...]:
    """
    Split a message's recipients into transactions.

    @param policy: the routing settings (the mode).
    @param recipients: each recipient address with its destination.
    @return: the groups, in order of their first recipient.
    """
    order: list[tuple[object, ...]] = []
    members: dict[tuple[object, ...], list[tuple[str, Destination]]] = {}
    for address, destination in recipients:
        key = _group_key(policy, destination)
        if key not in members:
            order.append(key)
            members[key] = []
        members[key].append((address, destination))
    groups = []
    for key in order:
        entries = members[key]
        domains = tuple(dict.fromkeys(d.domain for _, d in entries))
        groups.append(Group(entries[0][1], tuple(a for a, _ in entries), domains))
    return tuple(groups)


def _group_key(policy: RoutingPolicy, destination: Destination) -> tuple[object, ...]:
    # Recipients with equal keys share a transaction.
    kind = destination.kind
    if kind is DomainKind.LOCAL:
        return (kind,)
    if kind is DomainKind.SHARING_PEER:
        return (kind, destination.peer)
    if kind is DomainKind.REMOTE and policy.mode is Mode.SMARTHOST:
        return (kind, policy.smart_host)
    return (kind, destination.domain)
