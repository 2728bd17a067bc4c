"""
L{mdtwist.delivery.mx} against a real DNS server (dnsmasq on loopback) over real UDP.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.names import dns
from twisted.trial.unittest import TestCase

from mdtwist.delivery.hosts import MXHost, MXResult, MXResultKind
from mdtwist.delivery.mx import AddressPolicy, MXResolver, make_resolver
from tests.integration.dns import DNSServer, query, start_dns_server


def _records(message: dns.Message) -> list[Any]:
    # The answer records, typed loosely for attribute access.
    return list(message.answers)


def _zone(server: DNSServer) -> None:
    # The records every test here uses.
    server.mx("example.test", 10, "mx1.example.test")
    server.mx("example.test", 20, "mx2.example.test")
    server.address("mx1.example.test", "127.0.0.2", "::1")
    server.address("mx2.example.test", "127.0.0.3")
    server.address("example.test", "127.0.0.99")
    for name in ("a", "b", "c"):
        server.mx("equal.example.test", 10, f"{name}.example.test")
        server.address(f"{name}.example.test", "127.0.0.4")
    server.mx("equal.example.test", 20, "z.example.test")
    server.address("z.example.test", "127.0.0.5")
    server.address("aonly.example.test", "127.0.0.6")
    server.txt("txtonly.example.test", "no mail here")
    server.null_mx("nullmx.example.test")
    server.mx("dangling.example.test", 10, "nowhere.example.test")
    server.cname("alias.example.test", "example.test")
    server.cname("aalias.example.test", "aonly.example.test")


class DNSServerTests(TestCase):
    """
    The fixture answers what the tests configured.
    """

    def test_answers(self) -> None:
        """
        MX records are answered, unknown names get NXDOMAIN, missing types NODATA, names
        outside the zones REFUSED, and silent domains nothing.
        """
        server = start_dns_server(self, ["example.test"], _zone, silent=["silent.test"])
        answer = query(server.endpoint, "example.test", dns.MX)
        assert answer is not None
        self.assertEqual(
            sorted((r.payload.preference, str(r.payload.name)) for r in _records(answer)),
            [(10, "mx1.example.test"), (20, "mx2.example.test")],
        )
        nx = query(server.endpoint, "nope.example.test", dns.MX)
        assert nx is not None
        self.assertEqual(nx.rCode, dns.ENAME)
        nodata = query(server.endpoint, "aonly.example.test", dns.MX)
        assert nodata is not None
        self.assertEqual((nodata.rCode, nodata.answers), (dns.OK, []))
        refused = query(server.endpoint, "elsewhere.test", dns.MX)
        assert refused is not None
        self.assertEqual(refused.rCode, dns.EREFUSED)
        self.assertIsNone(query(server.endpoint, "x.silent.test", dns.MX, timeout=0.5))


class MXResolverDNSTests(TestCase):
    """
    L{MXResolver} through a real C{twisted.names} client against dnsmasq.
    """

    def setUp(self) -> None:
        self.server = start_dns_server(self, ["example.test"], _zone, silent=["silent.test"])

    def mx(self, **kwargs: Any) -> MXResolver:
        resolver = make_resolver([self.server.endpoint], reactor, timeout=(1, 1))
        kwargs.setdefault("rng", random.Random(3))
        return MXResolver(resolver, reactor, **kwargs)

    async def test_ordering(self) -> None:
        """
        MX hosts come by preference with their A and AAAA addresses; the domain's own A
        record is not used.
        """
        result = await self.mx().resolve("example.test")
        self.assertEqual(
            result,
            MXResult(
                MXResultKind.MX,
                (
                    MXHost("mx1.example.test", 10, ("127.0.0.2", "::1")),
                    MXHost("mx2.example.test", 20, ("127.0.0.3",)),
                ),
            ),
        )

    async def test_ipv4_only(self) -> None:
        """
        With IPv4 only, the AAAA record is not used.
        """
        result = await self.mx(addresses=AddressPolicy.IPV4_ONLY).resolve("example.test")
        self.assertEqual(result.hosts[0].addresses, ("127.0.0.2",))

    async def test_equal_preference_shuffled(self) -> None:
        """
        Over several random seeds every order of the three equal hosts appears, and the
        worse host is always last.
        """
        orders = set()
        for seed in range(40):
            result = await self.mx(rng=random.Random(seed)).resolve("equal.example.test")
            names = [h.name.split(".")[0] for h in result.hosts]
            self.assertEqual(names[-1], "z")
            orders.add(tuple(names[:3]))
        self.assertEqual(len(orders), 6)

    async def test_implicit_mx(self) -> None:
        """
        A domain with an A record and no MX (NODATA) is its own mail host.
        """
        result = await self.mx().resolve("aonly.example.test")
        self.assertEqual(
            result,
            MXResult(MXResultKind.IMPLICIT_MX, (MXHost("aonly.example.test", 0, ("127.0.0.6",)),)),
        )

    async def test_null_mx(self) -> None:
        """
        A null MX is recognised.
        """
        result = await self.mx().resolve("nullmx.example.test")
        self.assertEqual(result.kind, MXResultKind.NULL_MX)

    async def test_nxdomain_and_nodata(self) -> None:
        """
        A missing domain is NO_DOMAIN; an existing name without MX or address is NO_ADDRESS.
        """
        self.assertEqual(
            (await self.mx().resolve("nope.example.test")).kind, MXResultKind.NO_DOMAIN
        )
        self.assertEqual(
            (await self.mx().resolve("txtonly.example.test")).kind, MXResultKind.NO_ADDRESS
        )

    async def test_dangling_mx(self) -> None:
        """
        An MX whose host does not exist is unusable.
        """
        result = await self.mx().resolve("dangling.example.test")
        self.assertEqual(result.kind, MXResultKind.UNUSABLE_MX)

    async def test_cname(self) -> None:
        """
        A CNAME domain gets the MX hosts of its target; a CNAME to an address-only name gets
        the target's address as implicit MX.
        """
        alias = await self.mx().resolve("alias.example.test")
        self.assertEqual([h.name for h in alias.hosts], ["mx1.example.test", "mx2.example.test"])
        implicit = await self.mx().resolve("aalias.example.test")
        self.assertEqual(implicit.kind, MXResultKind.IMPLICIT_MX)
        self.assertEqual(implicit.hosts[0].addresses, ("127.0.0.6",))

    async def test_own_host(self) -> None:
        """
        As the best MX we get SELF_BEST; as a worse MX only the better hosts remain.
        """
        best = await self.mx(own_names={"mx1.example.test"}).resolve("example.test")
        self.assertEqual((best.kind, best.own_preference), (MXResultKind.SELF_BEST, 10))
        worse = await self.mx(own_addresses={"127.0.0.3"}).resolve("example.test")
        self.assertEqual([h.name for h in worse.hosts], ["mx1.example.test"])
        self.assertEqual(worse.own_preference, 20)

    async def test_resolve_address(self) -> None:
        """
        A bracketed host is resolved to its addresses without MX.
        """
        result = await self.mx().resolve_address("[mx1.example.test]")
        self.assertEqual(
            result,
            MXResult(MXResultKind.ADDRESS, (MXHost("mx1.example.test", 0, ("127.0.0.2", "::1")),)),
        )

    async def test_refused_is_temporary(self) -> None:
        """
        A name the server refuses to answer is a temporary outcome.
        """
        result = await self.mx().resolve("elsewhere.test")
        self.assertEqual(result.kind, MXResultKind.TEMPORARY)

    async def test_silent_is_temporary(self) -> None:
        """
        A query that gets no answer ends as a temporary outcome, by the resolver's timeout.
        """
        result = await self.mx(query_timeout=30).resolve("x.silent.test")
        self.assertEqual(result.kind, MXResultKind.TEMPORARY)
        self.assertIn("no answer", result.detail)

    async def test_silent_server_deadline(self) -> None:
        """
        When the resolver would wait longer than our own deadline, the deadline ends the
        lookup as a temporary outcome while the resolver is still waiting.
        """
        resolver = make_resolver([self.server.endpoint], reactor, timeout=(3,))
        mx = MXResolver(resolver, reactor, query_timeout=0.5)
        result = await mx.resolve("x.silent.test")
        self.assertEqual(result.kind, MXResultKind.TEMPORARY)
        self.assertTrue(_resolver_waiting())
        # Let the resolver's own retransmission timer run out so the reactor is clean.
        for _ in range(200):
            if not _resolver_waiting():
                break
            await deferLater(reactor, 0.05)


def _resolver_waiting() -> bool:
    # Whether twisted.names still has a query timer pending.
    return any("_clearFailed" in repr(c) for c in reactor.getDelayedCalls())
