"""
Tests for L{mdtwist.delivery.mx} on an in-memory resolver, and L{mdtwist.delivery.hosts}.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.common import ResolverBase
from twisted.names.error import DNSNameError, DNSQueryRefusedError, DNSServerError
from twisted.trial.unittest import SynchronousTestCase
from typing_extensions import override

from mdtwist.delivery.hosts import FailedHosts, MXHost, MXResult, MXResultKind
from mdtwist.delivery.mx import (
    AddressPolicy,
    MXResolver,
    make_resolver,
    parse_address_literal,
    read_resolv_conf,
)
from tests.support.logs import capture_logs

#: An answer that never comes.
SILENT = object()


class FakeResolver(ResolverBase):
    """
    An C{IResolver} for tests (L{ResolverBase} does the C{lookup*} methods): answers from
    a table of C{(name, type)} -> records or error.

    Names not in the table get NXDOMAIN if no record of any type exists for them, and an
    empty answer (NODATA) otherwise. C{queries} records every question asked.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[tuple[str, int], Any] = {}
        self.queries: list[tuple[str, int]] = []
        self.pending: list[Deferred[Any]] = []

    def add(self, name: str, record: Any, owner: str | None = None) -> None:
        """
        Add a record; C{owner} puts it under another name in the answer (for CNAME chains
        that the server resolved itself).
        """
        rtype = record.TYPE
        header = dns.RRHeader(owner or name, rtype, payload=record)
        self.table.setdefault((name, rtype), []).append(header)

    def mx(self, name: str, preference: int, exchange: str) -> None:
        self.add(name, dns.Record_MX(preference, exchange))

    def a(self, name: str, *addresses: str) -> None:
        for address in addresses:
            if ":" in address:
                self.add(name, dns.Record_AAAA(address))
            else:
                self.add(name, dns.Record_A(address))

    def cname(self, name: str, target: str, *types: int) -> None:
        for rtype in types or (dns.MX, dns.A, dns.AAAA):
            header = dns.RRHeader(name, dns.CNAME, payload=dns.Record_CNAME(target))
            self.table.setdefault((name, rtype), []).insert(0, header)

    def set(self, name: str, rtype: int, outcome: Any) -> None:
        self.table[(name, rtype)] = outcome

    def _answer(self, name: str, rtype: int) -> Deferred[Any]:
        self.queries.append((name, rtype))
        outcome = self.table.get((name, rtype))
        if outcome is SILENT:
            d: Deferred[Any] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(outcome, Exception):
            return fail(outcome)
        if outcome is None:
            if any(key[0] == name for key in self.table):
                return succeed(([], [], []))
            return fail(DNSNameError(name))
        return succeed((list(outcome), [], []))

    @override
    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        return self._answer(name.decode("ascii"), type)


class MXResolverTests(SynchronousTestCase):
    """
    L{MXResolver} turns DNS answers into ordered hosts or a clear outcome.
    """

    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.clock = Clock()

    def resolver(self, **kwargs: Any) -> MXResolver:
        kwargs.setdefault("rng", random.Random(1))
        return MXResolver(self.dns, self.clock, **kwargs)

    def resolve(self, domain: str, **kwargs: Any) -> MXResult:
        result: MXResult = self.successResultOf(self.resolver(**kwargs).resolve(domain))
        return result

    def test_sorted_by_preference(self) -> None:
        """
        MX hosts come lowest preference first, each with its addresses, A before AAAA.
        """
        self.dns.mx("example.test", 20, "mx2.example.test")
        self.dns.mx("example.test", 10, "mx1.example.test")
        self.dns.a("mx1.example.test", "192.0.2.1", "2001:db8::1")
        self.dns.a("mx2.example.test", "192.0.2.2")
        self.assertEqual(
            self.resolve("example.test"),
            MXResult(
                MXResultKind.MX,
                (
                    MXHost("mx1.example.test", 10, ("192.0.2.1", "2001:db8::1")),
                    MXHost("mx2.example.test", 20, ("192.0.2.2",)),
                ),
            ),
        )

    def test_equal_preferences_shuffled(self) -> None:
        """
        Hosts of equal preference appear in every order over different random seeds, and a
        worse host always comes last.
        """
        for name in ("a", "b", "c"):
            self.dns.mx("example.test", 10, f"{name}.example.test")
            self.dns.a(f"{name}.example.test", "192.0.2.1")
        self.dns.mx("example.test", 20, "z.example.test")
        self.dns.a("z.example.test", "192.0.2.9")
        orders = set()
        for seed in range(60):
            result = self.resolve("example.test", rng=random.Random(seed))
            names = tuple(h.name.split(".")[0] for h in result.hosts)
            self.assertEqual(names[-1], "z")
            orders.add(names[:3])
        self.assertEqual(len(orders), 6)

    def test_same_seed_same_order(self) -> None:
        """
        The shuffle depends only on the injected random source.
        """
        for name in ("a", "b", "c", "d"):
            self.dns.mx("example.test", 10, f"{name}.example.test")
            self.dns.a(f"{name}.example.test", "192.0.2.1")
        first = self.resolve("example.test", rng=random.Random(7))
        second = self.resolve("example.test", rng=random.Random(7))
        self.assertEqual(first, second)

    def test_ipv4_only(self) -> None:
        """
        With IPv4 only, no AAAA query is made and IPv6 addresses are not used.
        """
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1", "2001:db8::1")
        result = self.resolve("example.test", addresses=AddressPolicy.IPV4_ONLY)
        self.assertEqual(result.hosts, (MXHost("mx.example.test", 10, ("192.0.2.1",)),))
        self.assertNotIn(("mx.example.test", dns.AAAA), self.dns.queries)

    def test_ipv6_first(self) -> None:
        """
        With IPv6 first, AAAA addresses come before A addresses.
        """
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1", "2001:db8::1")
        result = self.resolve("example.test", addresses=AddressPolicy.IPV6_FIRST)
        self.assertEqual(result.hosts[0].addresses, ("2001:db8::1", "192.0.2.1"))

    def test_implicit_mx(self) -> None:
        """
        A domain without MX records (NODATA) gets its own addresses at preference 0.
        """
        self.dns.a("example.test", "192.0.2.5")
        self.assertEqual(
            self.resolve("example.test"),
            MXResult(MXResultKind.IMPLICIT_MX, (MXHost("example.test", 0, ("192.0.2.5",)),)),
        )

    def test_implicit_mx_switched_off(self) -> None:
        """
        Without implicit MX, a domain with only address records has no address for mail.
        """
        self.dns.a("example.test", "192.0.2.5")
        result = self.resolve("example.test", implicit_mx=False)
        self.assertEqual(result.kind, MXResultKind.NO_ADDRESS)
        self.assertNotIn(("example.test", dns.A), self.dns.queries)

    def test_domain_address_unused_when_mx_exists(self) -> None:
        """
        When MX records exist, the domain's own A record is never used.
        """
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        self.dns.a("example.test", "192.0.2.99")
        result = self.resolve("example.test")
        self.assertEqual([h.name for h in result.hosts], ["mx.example.test"])
        self.assertNotIn(("example.test", dns.A), self.dns.queries)

    def test_nxdomain(self) -> None:
        """
        A domain that does not exist is reported as such, with no address lookup.
        """
        result = self.resolve("nowhere.test")
        self.assertEqual(result.kind, MXResultKind.NO_DOMAIN)
        self.assertEqual(self.dns.queries, [("nowhere.test", dns.MX)])

    def test_no_mx_no_address(self) -> None:
        """
        A domain that exists but has neither MX nor address records has no address.
        """
        self.dns.add("example.test", dns.Record_TXT(b"v=spf1 -all"))
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.NO_ADDRESS)

    def test_servfail_is_temporary(self) -> None:
        """
        SERVFAIL on the MX query is temporary, and no address lookup follows.
        """
        self.dns.set("example.test", dns.MX, DNSServerError("x"))
        self.dns.a("example.test", "192.0.2.5")
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.TEMPORARY)
        self.assertEqual(self.dns.queries, [("example.test", dns.MX)])

    def test_refused_is_temporary(self) -> None:
        """
        A refused query is temporary.
        """
        self.dns.set("example.test", dns.MX, DNSQueryRefusedError("x"))
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.TEMPORARY)

    def test_resolver_timeout_is_temporary(self) -> None:
        """
        The resolver's own timeout on the MX query is temporary; the domain's A record is
        not used.
        """
        self.dns.set("example.test", dns.MX, defer.TimeoutError("x"))
        self.dns.a("example.test", "192.0.2.5")
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.TEMPORARY)

    def test_silent_server_deadline(self) -> None:
        """
        A query that never gets an answer ends as a temporary result when the deadline on
        the clock passes, not before.
        """
        self.dns.set("example.test", dns.MX, SILENT)
        d = self.resolver(query_timeout=30).resolve("example.test")
        self.clock.advance(29)
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d).kind, MXResultKind.TEMPORARY)

    def test_unexpected_error_logged(self) -> None:
        """
        An exception that is no DNS answer is logged as a failure and still gives only a
        temporary result.
        """
        self.dns.set("example.test", dns.MX, RuntimeError("bug"))
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.TEMPORARY)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_a_on_mx_timeout_switch(self) -> None:
        """
        With the MDaemon compatibility switch, an MX timeout falls back to the A record.
        """
        self.dns.set("example.test", dns.MX, defer.TimeoutError("x"))
        self.dns.a("example.test", "192.0.2.5")
        result = self.resolve("example.test", a_on_mx_timeout=True)
        self.assertEqual(result.kind, MXResultKind.IMPLICIT_MX)

    def test_a_on_mx_timeout_not_for_servfail(self) -> None:
        """
        The compatibility switch applies to timeouts only, not to SERVFAIL.
        """
        self.dns.set("example.test", dns.MX, DNSServerError("x"))
        self.dns.a("example.test", "192.0.2.5")
        result = self.resolve("example.test", a_on_mx_timeout=True)
        self.assertEqual(result.kind, MXResultKind.TEMPORARY)

    def test_null_mx(self) -> None:
        """
        A single MX C{0 .} is a null MX; no address lookup is made.
        """
        self.dns.mx("example.test", 0, "")
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.NULL_MX)
        self.assertEqual(len(self.dns.queries), 1)

    def test_null_mx_mixed(self) -> None:
        """
        A null MX among other MX records still counts as null MX.
        """
        self.dns.mx("example.test", 0, "")
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.NULL_MX)

    def test_host_without_address_skipped(self) -> None:
        """
        An MX host whose name does not resolve is skipped; the others are used.
        """
        self.dns.mx("example.test", 10, "gone.example.test")
        self.dns.mx("example.test", 20, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        result = self.resolve("example.test")
        self.assertEqual(result.kind, MXResultKind.MX)
        self.assertEqual([h.name for h in result.hosts], ["mx.example.test"])

    def test_only_host_without_address(self) -> None:
        """
        When no MX host has an address, the MX records are unusable.
        """
        self.dns.mx("example.test", 10, "gone.example.test")
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.UNUSABLE_MX)

    def test_host_lookup_temporary(self) -> None:
        """
        When no MX host has an address and one host's lookup failed temporarily, the result
        is temporary.
        """
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.set("mx.example.test", dns.A, DNSServerError("x"))
        self.dns.set("mx.example.test", dns.AAAA, DNSServerError("x"))
        self.assertEqual(self.resolve("example.test").kind, MXResultKind.TEMPORARY)

    def test_host_lookup_temporary_for_one_family(self) -> None:
        """
        A host with an A record is used even when its AAAA lookup failed.
        """
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        self.dns.set("mx.example.test", dns.AAAA, DNSServerError("x"))
        result = self.resolve("example.test")
        self.assertEqual(result.hosts, (MXHost("mx.example.test", 10, ("192.0.2.1",)),))

    def test_cname_answered_by_server(self) -> None:
        """
        A CNAME answer that carries the target's MX records is followed in the same answer.
        """
        self.dns.cname("alias.test", "example.test", dns.MX)
        self.dns.add("alias.test", dns.Record_MX(10, "mx.example.test"), owner="example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        result = self.resolve("alias.test")
        self.assertEqual([h.name for h in result.hosts], ["mx.example.test"])
        self.assertEqual(self.dns.queries[0], ("alias.test", dns.MX))
        self.assertNotIn(("example.test", dns.MX), self.dns.queries)

    def test_cname_followed_by_us(self) -> None:
        """
        A CNAME answer without the target's records makes us ask for the target.
        """
        self.dns.cname("alias.test", "example.test", dns.MX)
        self.dns.mx("example.test", 10, "mx.example.test")
        self.dns.a("mx.example.test", "192.0.2.1")
        result = self.resolve("alias.test")
        self.assertEqual([h.name for h in result.hosts], ["mx.example.test"])
        self.assertIn(("example.test", dns.MX), self.dns.queries)

    def test_cname_to_address_only(self) -> None:
        """
        A CNAME to a name with only address records gives an implicit MX with the target's
        addresses.
        """
        self.dns.cname("alias.test", "example.test")
        self.dns.a("example.test", "192.0.2.5")
        result = self.resolve("alias.test")
        self.assertEqual(result.kind, MXResultKind.IMPLICIT_MX)
        self.assertEqual(result.hosts[0].addresses, ("192.0.2.5",))

    def test_cname_loop(self) -> None:
        """
        A CNAME loop gives a temporary result, without endless queries.
        """
        self.dns.cname("a.test", "b.test")
        self.dns.cname("b.test", "a.test")
        self.assertEqual(self.resolve("a.test").kind, MXResultKind.TEMPORARY)
        self.assertLessEqual(len(self.dns.queries), 3)

    def test_cname_chain_too_long(self) -> None:
        """
        A CNAME chain longer than the limit gives a temporary result.
        """
        for i in range(20):
            self.dns.cname(f"c{i}.test", f"c{i + 1}.test", dns.MX)
        self.dns.mx("c20.test", 10, "mx.example.test")
        self.assertEqual(self.resolve("c0.test").kind, MXResultKind.TEMPORARY)

    def test_mx_host_cname(self) -> None:
        """
        An MX host that is a CNAME is resolved through it (leniently).
        """
        self.dns.mx("example.test", 10, "alias.example.test")
        self.dns.cname("alias.example.test", "real.example.test", dns.A, dns.AAAA)
        self.dns.a("real.example.test", "192.0.2.7")
        result = self.resolve("example.test")
        self.assertEqual(result.hosts, (MXHost("alias.example.test", 10, ("192.0.2.7",)),))

    def test_own_name_best(self) -> None:
        """
        When this server is the best MX (by name), the result says so.
        """
        self.dns.mx("example.test", 10, "me.example.test")
        self.dns.mx("example.test", 20, "other.example.test")
        self.dns.a("me.example.test", "192.0.2.1")
        self.dns.a("other.example.test", "192.0.2.2")
        result = self.resolve("example.test", own_names={"ME.example.test."})
        self.assertEqual(result.kind, MXResultKind.SELF_BEST)
        self.assertEqual(result.own_preference, 10)

    def test_own_address_equal_to_best(self) -> None:
        """
        A host at the same preference as ours is not used either (RFC 5321 section 5.1).
        """
        self.dns.mx("example.test", 10, "me.example.test")
        self.dns.mx("example.test", 10, "peer.example.test")
        self.dns.a("me.example.test", "192.0.2.1")
        self.dns.a("peer.example.test", "192.0.2.2")
        result = self.resolve("example.test", own_addresses={"192.0.2.1"})
        self.assertEqual(result.kind, MXResultKind.SELF_BEST)

    def test_own_host_worse(self) -> None:
        """
        When this server is a worse MX, only the better hosts are used, and our preference is
        reported.
        """
        self.dns.mx("example.test", 10, "best.example.test")
        self.dns.mx("example.test", 20, "me.example.test")
        self.dns.mx("example.test", 30, "worse.example.test")
        for name, address in (("best", "192.0.2.1"), ("me", "192.0.2.2"), ("worse", "192.0.2.3")):
            self.dns.a(f"{name}.example.test", address)
        result = self.resolve("example.test", own_addresses={"192.0.2.2"})
        self.assertEqual(result.kind, MXResultKind.MX)
        self.assertEqual([h.name for h in result.hosts], ["best.example.test"])
        self.assertEqual(result.own_preference, 20)

    def test_own_host_worse_better_unusable(self) -> None:
        """
        When this server is a worse MX and the better host has no address, the MX records
        are unusable, and our preference is reported.
        """
        self.dns.mx("example.test", 10, "gone.example.test")
        self.dns.mx("example.test", 20, "me.example.test")
        result = self.resolve("example.test", own_names={"me.example.test"})
        self.assertEqual(result.kind, MXResultKind.UNUSABLE_MX)
        self.assertEqual(result.own_preference, 20)

    def test_implicit_mx_is_us(self) -> None:
        """
        A domain without MX whose address is ours loops back to us.
        """
        self.dns.a("example.test", "192.0.2.1")
        result = self.resolve("example.test", own_addresses={"192.0.2.1"})
        self.assertEqual(result.kind, MXResultKind.SELF_BEST)

    def test_address_literal(self) -> None:
        """
        An IPv4 address literal needs no lookup.
        """
        self.assertEqual(
            self.resolve("[192.0.2.1]"),
            MXResult(MXResultKind.LITERAL, (MXHost("[192.0.2.1]", 0, ("192.0.2.1",)),)),
        )
        self.assertEqual(self.dns.queries, [])

    def test_ipv6_literal(self) -> None:
        """
        An IPv6 address literal gives its address in normal form.
        """
        result = self.resolve("[IPv6:2001:DB8:0::1]")
        self.assertEqual(result.hosts[0].addresses, ("2001:db8::1",))

    def test_bad_literal(self) -> None:
        """
        A malformed literal is not a domain: no lookup is made.
        """
        for text in ("[300.1.1.1]", "[IPv6:zz]", "[mail.example.test]", "[]"):
            self.assertEqual(self.resolve(text).kind, MXResultKind.NO_DOMAIN, text)
        self.assertEqual(self.dns.queries, [])

    def test_own_literal(self) -> None:
        """
        A literal with our own address loops back.
        """
        result = self.resolve("[192.0.2.1]", own_addresses={"192.0.2.1"})
        self.assertEqual(result.kind, MXResultKind.SELF_BEST)

    def test_bad_domain_name(self) -> None:
        """
        An empty or malformed domain is not looked up.
        """
        for text in ("", ".", "a..b"):
            self.assertEqual(self.resolve(text).kind, MXResultKind.NO_DOMAIN, text)
        self.assertEqual(self.dns.queries, [])

    def test_domain_normalised(self) -> None:
        """
        The domain is looked up lower-case and without a trailing dot.
        """
        self.dns.a("example.test", "192.0.2.5")
        self.assertEqual(self.resolve("Example.TEST.").kind, MXResultKind.IMPLICIT_MX)


class ResolveAddressTests(SynchronousTestCase):
    """
    L{MXResolver.resolve_address} resolves one host without MX lookup.
    """

    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.mx = MXResolver(self.dns, Clock())

    def resolve(self, name: str) -> MXResult:
        result: MXResult = self.successResultOf(self.mx.resolve_address(name))
        return result

    def test_host(self) -> None:
        """
        A name resolves to its addresses and no MX query is made, even when it has MX.
        """
        self.dns.mx("relay.example.test", 10, "other.example.test")
        self.dns.a("relay.example.test", "192.0.2.1")
        self.assertEqual(
            self.resolve("[relay.example.test]"),
            MXResult(MXResultKind.ADDRESS, (MXHost("relay.example.test", 0, ("192.0.2.1",)),)),
        )
        self.assertNotIn(("relay.example.test", dns.MX), self.dns.queries)

    def test_literal(self) -> None:
        """
        An address literal needs no lookup.
        """
        self.assertEqual(self.resolve("[192.0.2.1]").kind, MXResultKind.LITERAL)
        self.assertEqual(self.dns.queries, [])

    def test_missing(self) -> None:
        """
        A missing host is NO_DOMAIN; a host without addresses is NO_ADDRESS; SERVFAIL is
        TEMPORARY.
        """
        self.dns.add("noaddr.test", dns.Record_TXT(b"x"))
        self.dns.set("broken.test", dns.A, DNSServerError("x"))
        self.assertEqual(self.resolve("gone.test").kind, MXResultKind.NO_DOMAIN)
        self.assertEqual(self.resolve("noaddr.test").kind, MXResultKind.NO_ADDRESS)
        self.assertEqual(self.resolve("broken.test").kind, MXResultKind.TEMPORARY)


class HelpersTests(SynchronousTestCase):
    """
    The literal parser, C{resolv.conf} reader and resolver factory.
    """

    def test_parse_address_literal(self) -> None:
        """
        IPv4 and tagged IPv6 literals parse; anything else does not.
        """
        self.assertEqual(parse_address_literal("[192.0.2.1]"), "192.0.2.1")
        self.assertEqual(parse_address_literal("[ipv6:::1]"), "::1")
        for text in ("192.0.2.1", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[x]"):
            self.assertIsNone(parse_address_literal(text), text)

    def test_read_resolv_conf(self) -> None:
        """
        The name servers of a resolv.conf are read in order; others lines are ignored.
        """
        path = Path(self.mktemp())
        path.write_text("# c\nsearch example.test\nnameserver 192.0.2.53\nnameserver ::1\n")
        self.assertEqual(read_resolv_conf(str(path)), [("192.0.2.53", 53), ("::1", 53)])

    def test_read_resolv_conf_missing(self) -> None:
        """
        Without a readable resolv.conf, the local name server is used.
        """
        self.assertEqual(read_resolv_conf(self.mktemp()), [("127.0.0.1", 53)])

    def test_make_resolver(self) -> None:
        """
        The factory gives a resolver for the configured servers with the given timeouts and
        schedules nothing on the reactor.
        """
        clock = Clock()
        resolver: Any = make_resolver([("127.0.0.1", 5353)], clock, timeout=(1, 2))
        self.assertEqual(resolver.servers, [("127.0.0.1", 5353)])
        self.assertEqual(resolver.timeout, (1, 2))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_make_resolver_from_resolv_conf(self) -> None:
        """
        Without servers, the factory takes them from the resolv.conf file once.
        """
        path = Path(self.mktemp())
        path.write_text("nameserver 192.0.2.53\n")
        clock = Clock()
        resolver: Any = make_resolver(None, clock, resolv_conf=str(path))
        self.assertEqual(resolver.servers, [("192.0.2.53", 53)])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_make_resolver_bad_timeout(self) -> None:
        """
        Empty or non-positive timeouts are refused.
        """
        for timeout in ((), (1, 0)):
            self.assertRaises(ValueError, make_resolver, [("127.0.0.1", 53)], Clock(), timeout)


class FailedHostsTests(SynchronousTestCase):
    """
    L{FailedHosts}, the dead-host cache, remembers unreachable hosts for a time that grows on
    repeats; the time is a parameter of every call.
    """

    def setUp(self) -> None:
        self.hosts = FailedHosts(base=300, factor=2, maximum=1000, remember=600)

    def test_down_for_base_period(self) -> None:
        """
        A failed host is down for the base period, then up again.
        """
        self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, 1000.0), 1300.0)
        self.assertTrue(self.hosts.is_down("192.0.2.1", 25, 1000.0))
        self.assertFalse(self.hosts.is_down("192.0.2.1", 587, 1000.0))
        self.assertTrue(self.hosts.is_down("192.0.2.1", 25, 1299.0))
        self.assertEqual(self.hosts.down_until("192.0.2.1", 25, 1299.0), 1300.0)
        self.assertFalse(self.hosts.is_down("192.0.2.1", 25, 1300.0))
        self.assertIsNone(self.hosts.down_until("192.0.2.1", 25, 1300.0))

    def test_period_grows_to_maximum(self) -> None:
        """
        Repeated failures double the period up to the maximum.
        """
        periods = []
        now = 0.0
        for _ in range(4):
            until = self.hosts.mark_failed("192.0.2.1", 25, now)
            periods.append(until - now)
            now = until
        self.assertEqual(periods, [300, 600, 1000, 1000])

    def test_failure_while_down_keeps_period(self) -> None:
        """
        Failures reported while the host is down already (several messages tried it at once)
        neither lengthen the period nor count as repeats.
        """
        self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, 0.0), 300.0)
        for now in (1.0, 2.0, 299.0):
            self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, now), 300.0)
        self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, 300.0), 900.0)

    def test_forgotten_after_quiet_time(self) -> None:
        """
        A failure long after the last down period ended starts again at the base period.
        """
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, 900.0), 1200.0)

    def test_mark_ok_forgets(self) -> None:
        """
        A success forgets the host at once.
        """
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.hosts.mark_ok("192.0.2.1", 25)
        self.assertFalse(self.hosts.is_down("192.0.2.1", 25, 0.0))
        self.assertEqual(self.hosts.mark_failed("192.0.2.1", 25, 0.0), 300.0)

    def test_forget_all(self) -> None:
        """
        L{FailedHosts.forget_all} brings every host back at once.
        """
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.hosts.mark_failed("192.0.2.2", 587, 0.0)
        self.hosts.forget_all()
        self.assertEqual(self.hosts.filter_up(["192.0.2.1"], 25, 1.0), ("192.0.2.1",))
        self.assertFalse(self.hosts.is_down("192.0.2.2", 587, 1.0))

    def test_filter_up(self) -> None:
        """
        Down addresses are skipped, keeping the order of the rest.
        """
        self.hosts.mark_failed("192.0.2.2", 25, 0.0)
        self.assertEqual(
            self.hosts.filter_up(["192.0.2.1", "192.0.2.2", "192.0.2.3"], 25, 10.0),
            ("192.0.2.1", "192.0.2.3"),
        )
        self.assertIsNone(self.hosts.all_down_until(["192.0.2.1", "192.0.2.2"], 25, 10.0))

    def test_filter_all_down(self) -> None:
        """
        When every address is down, none is returned: the dead host is not tried again
        before the first of its addresses comes back, which L{FailedHosts.all_down_until}
        tells.
        """
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.hosts.mark_failed("192.0.2.2", 25, 100.0)
        self.assertEqual(self.hosts.filter_up(["192.0.2.1", "192.0.2.2"], 25, 200.0), ())
        self.assertEqual(self.hosts.all_down_until(["192.0.2.1", "192.0.2.2"], 25, 200.0), 300.0)
        self.assertEqual(
            self.hosts.filter_up(["192.0.2.1", "192.0.2.2"], 25, 300.0), ("192.0.2.1",)
        )
        self.assertIsNone(self.hosts.all_down_until([], 25, 0.0))

    def test_filter_hosts(self) -> None:
        """
        Hosts lose their down addresses, and hosts left without addresses are dropped; when
        every address is down no host is left.
        """
        a = MXHost("a.test", 10, ("192.0.2.1", "192.0.2.2"))
        b = MXHost("b.test", 20, ("192.0.2.3",))
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.hosts.mark_failed("192.0.2.3", 25, 0.0)
        self.assertEqual(
            self.hosts.filter_hosts([a, b], 25, 1.0), (MXHost("a.test", 10, ("192.0.2.2",)),)
        )
        self.hosts.mark_failed("192.0.2.2", 25, 1.0)
        self.assertEqual(self.hosts.filter_hosts([a, b], 25, 2.0), ())

    def test_old_entries_pruned(self) -> None:
        """
        Hosts quiet for longer than the memory are dropped from the table.
        """
        self.hosts.mark_failed("192.0.2.1", 25, 0.0)
        self.hosts.mark_failed("192.0.2.2", 25, 1000.0)
        self.assertEqual(list(self.hosts._hosts), [("192.0.2.2", 25)])


class _UDPClock(Clock):
    # A clock that also hands out UDP ports, connecting each protocol to a fake transport.

    def __init__(self) -> None:
        super().__init__()
        self.protocols: list[Any] = []

    def listenUDP(  # noqa: N802 - IReactorUDP's name
        self, port: int, protocol: Any, interface: str = "", max_packet_size: int = 8192
    ) -> _FakeUDP:
        transport = _FakeUDP(protocol)
        protocol.makeConnection(transport)
        self.protocols.append(protocol)
        return transport


class _FakeUDP:
    # A UDP port that keeps what is written and stops its protocol when it stops listening.

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.written: list[object] = []

    def write(self, data: bytes, address: object = None) -> None:
        self.written.append((data, address))

    def stopListening(self) -> None:  # noqa: N802 - IListeningPort's name
        self.protocol.doStop()


class QuietResolverTests(SynchronousTestCase):
    """
    A DNS query logs nothing of the UDP protocol it starts and stops.
    """

    def test_no_protocol_lines(self) -> None:
        """
        The query's datagram protocol is quiet: no "Starting protocol" or "Stopping protocol"
        line, which a plain one writes.
        """
        events = capture_logs(self)
        clock = _UDPClock()
        resolver: Any = make_resolver([("127.0.0.1", 5353)], clock, timeout=(1,))
        d = resolver.lookupAddress("example.org")
        [protocol] = clock.protocols
        self.assertEqual(len(protocol.transport.written), 1)
        clock.advance(2)
        self.failureResultOf(d)
        self.assertFalse(protocol.noisy)
        texts = [str(e.get("log_text", "")) for e in events]
        self.assertFalse([t for t in texts if "protocol" in t], texts)
        plain = dns.DNSDatagramProtocol(None, reactor=clock)
        plain.makeConnection(_FakeUDP(plain))  # type: ignore[arg-type]
        texts = [str(e.get("log_text", "")) for e in events]
        self.assertEqual(len([t for t in texts if t.startswith("Starting protocol")]), 1)


class ReverseNameTests(SynchronousTestCase):
    """
    L{MXResolver.reverse_name}: the client's name when its PTR record leads back to it.
    """

    def setUp(self) -> None:
        self.dns = FakeResolver()
        self.clock = Clock()
        self.resolver = MXResolver(self.dns, self.clock, rng=random.Random(1))

    def ptr(self, address: str, *names: str) -> None:
        import ipaddress

        reverse = ipaddress.ip_address(address).reverse_pointer
        for name in names:
            self.dns.add(reverse, dns.Record_PTR(name))

    def name(self, address: str) -> str | None:
        result: str | None = self.successResultOf(self.resolver.reverse_name(address))
        return result

    def test_confirmed(self) -> None:
        """
        A PTR name whose address records hold the address is the name (lower case, no dot);
        for IPv6 the AAAA records are asked.
        """
        self.ptr("192.0.2.7", "Client.Example.Test.")
        self.dns.a("client.example.test", "192.0.2.7")
        self.ptr("2001:db8::7", "six.example.test")
        self.dns.a("six.example.test", "2001:db8::7")
        self.assertEqual(self.name("192.0.2.7"), "client.example.test")
        self.assertEqual(self.name("2001:db8::7"), "six.example.test")
        self.assertIn(("six.example.test", dns.AAAA), self.dns.queries)

    def test_not_confirmed(self) -> None:
        """
        A name that does not lead back, or does not exist, is not used; the next PTR name
        that does is.
        """
        self.ptr("192.0.2.7", "forged.example.test", "gone.example.test", "real.example.test")
        self.dns.a("forged.example.test", "192.0.2.99")
        self.dns.a("real.example.test", "192.0.2.7")
        self.assertEqual(self.name("192.0.2.7"), "real.example.test")
        self.ptr("192.0.2.8", "forged.example.test")
        self.assertIsNone(self.name("192.0.2.8"))

    def test_no_answer(self) -> None:
        """
        No PTR record, a DNS failure, a silent server or a bad address give no name, and the
        Deferred never fails.
        """
        self.assertIsNone(self.name("192.0.2.9"))
        self.dns.set("10.2.0.192.in-addr.arpa", dns.PTR, DNSServerError("SERVFAIL"))
        self.assertIsNone(self.name("192.0.2.10"))
        self.assertIsNone(self.name("not an address"))
        self.dns.set("11.2.0.192.in-addr.arpa", dns.PTR, SILENT)
        d = self.resolver.reverse_name("192.0.2.11")
        self.assertNoResult(d)
        self.clock.advance(self.resolver.query_timeout)
        self.assertIsNone(self.successResultOf(d))
