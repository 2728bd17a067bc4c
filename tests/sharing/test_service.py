"""
Tests for L{mdtwist.sharing.service}: lookups at three peers running our Minger server on an
in-memory UDP network.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from pathlib import Path

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.envelope import ClientInfo
from mdtwist.interfaces import ISharingLookup
from mdtwist.minger.client import MingerClient, Peer, Result
from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
from mdtwist.route import LookupBudget, SharingAnswer, SharingStatus
from mdtwist.secret import Secret
from mdtwist.sharing.cache import CacheStore, SharingCache
from mdtwist.sharing.service import AccountCheck, SharingPeer, SharingService
from tests.minger.fakes import Directory, FakeUDPReactor, account
from tests.support.logs import capture_logs
from tests.support.runners import run_inline

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"),)
CLIENT = ClientInfo("198.51.100.7", "client.example.net")
HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


class _ThreePeers(SynchronousTestCase):
    """
    Three sharing peers, each with its own accounts, and the service that asks them.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.reactor.advance(1_700_000_000.0)
        self.directories = {
            "127.0.0.2": Directory(account("bob@example.com")),
            "127.0.0.3": Directory(account("carol@example.com")),
            "127.0.0.4": Directory(
                account("dave@example.com"), account("frozen@example.com", enabled=False)
            ),
        }
        self.peers = [
            SharingPeer(f"{host}:25", Peer(host, 4069, Secret(SECRET))) for host in HOSTS
        ]
        directory = Path(self.mktemp())
        directory.mkdir()
        self.cache = SharingCache(
            CacheStore(directory / "sharing.sqlite3"), run_inline, self.reactor
        )
        self.addCleanup(self.cache.close)
        self.client = MingerClient(self.reactor, timeout=2.0, attempts=3)

    def start(self, *hosts: str) -> None:
        for host in hosts or HOSTS:
            responder = MingerResponder(
                self.directories[host],
                MingerSettings(Secret(SECRET), allowed=EVERYWHERE),
                self.reactor,
            )
            self.reactor.listenUDP(4069, MingerServerProtocol(responder), interface=host)

    def service(self, **kwargs: object) -> SharingService:
        return SharingService(self.peers, self.client, self.cache, **kwargs)  # type: ignore[arg-type]

    def settle(self, d: Deferred[SharingAnswer], seconds: float = 0.0) -> SharingAnswer:
        self.reactor.network.flush()
        for _ in range(int(seconds / 2.0)):
            self.reactor.advance(2.0)
            self.reactor.network.flush()
        return self.successResultOf(d)

    def queries(self) -> int:
        return sum(1 for _, target, _ in self.reactor.network.delivered if target[1] == 4069)


class SharingServiceTests(_ThreePeers):
    """
    The decision (a peer that has it wins; every peer saying unknown refuses; otherwise the
    answer is "cannot tell now"), the cache and the loop guard.
    """

    def test_protocol(self) -> None:
        """
        The service provides the lookup the receive policy calls.
        """
        self.assertTrue(verifyObject(ISharingLookup, self.service()))

    def test_found(self) -> None:
        """
        The peer that has the address is the route; every peer was asked; the address is
        cached, so the next lookup asks nobody.
        """
        self.start()
        service = self.service()
        answer = self.settle(service.lookup("carol@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer(SharingStatus.FOUND, "127.0.0.3:25"))
        self.assertEqual(self.queries(), 3)
        self.assertEqual(self.successResultOf(self.cache.get("carol@example.com")), "127.0.0.3:25")
        again = self.settle(service.lookup("Carol@Example.com", CLIENT))
        self.assertEqual(again, SharingAnswer.found("127.0.0.3:25"))
        self.assertEqual(self.queries(), 3)

    def test_not_found(self) -> None:
        """
        Every peer says unknown: NOT_FOUND, and nothing is cached.
        """
        self.start()
        answer = self.settle(self.service().lookup("nobody@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.not_found())
        self.assertEqual(self.successResultOf(self.cache.list()), [])

    def test_peer_down(self) -> None:
        """
        One peer silent and the others unknown: UNAVAILABLE after the attempts, not cached.
        """
        self.start("127.0.0.2", "127.0.0.3")
        d = self.service().lookup("dave@example.com", CLIENT)
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.assertEqual(self.settle(d, 6.0), SharingAnswer.unavailable())
        self.assertEqual(self.successResultOf(self.cache.list()), [])

    def test_found_while_peer_down(self) -> None:
        """
        A peer that confirms decides at once, without waiting for a silent one.
        """
        self.start("127.0.0.2", "127.0.0.3")
        d = self.service().lookup("bob@example.com", CLIENT)
        self.reactor.network.flush()
        self.assertEqual(self.successResultOf(d), SharingAnswer.found("127.0.0.2:25"))
        self.reactor.advance(2.0)
        self.reactor.advance(2.0)
        self.reactor.advance(2.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_inactive(self) -> None:
        """
        A peer with the account disabled, no other confirming: UNAVAILABLE (temporary).
        """
        self.start()
        answer = self.settle(self.service().lookup("frozen@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.unavailable())

    def test_refused(self) -> None:
        """
        A peer that refuses our credentials gives UNAVAILABLE and an error in the log.
        """
        logs = capture_logs(self)
        self.start()
        self.peers[0] = SharingPeer("127.0.0.2:25", Peer("127.0.0.2", 4069, Secret("w" * 20)))
        answer = self.settle(self.service().lookup("nobody@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.unavailable())
        errors = [e for e in logs if e["log_level"].name == "error"]
        self.assertEqual([e["peer"] for e in errors], ["127.0.0.2:25"])

    def test_conflict(self) -> None:
        """
        Two peers that both host the address: the first answer wins, the conflict is logged.
        """
        logs = capture_logs(self)
        self.directories["127.0.0.4"] = Directory(account("bob@example.com"))
        self.start()
        answer = self.settle(self.service().lookup("bob@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.found("127.0.0.2:25"))
        conflicts = [e for e in logs if "conflict" in e["log_format"]]
        self.assertEqual(
            [(e["first"], e["other"]) for e in conflicts], [("127.0.0.2:25", "127.0.0.4:25")]
        )

    def test_loop_guard(self) -> None:
        """
        Mail from a sharing peer for an address we do not host is not asked about again.
        """
        self.start()
        service = self.service(peer_addresses=["127.0.0.3"])
        from_peer = ClientInfo("::ffff:127.0.0.3", "mail3.example.com")
        answer = self.settle(service.lookup("bob@example.com", from_peer))
        self.assertEqual(answer, SharingAnswer.not_found())
        self.assertEqual(self.queries(), 0)

    def test_stale_route(self) -> None:
        """
        A cached route to a peer that is no longer configured is not used.
        """
        self.start()
        self.successResultOf(self.cache.put("bob@example.com", "old.example.com:25"))
        answer = self.settle(self.service().lookup("bob@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.found("127.0.0.2:25"))

    def test_cache_unreadable(self) -> None:
        """
        A cache that cannot be read counts as a miss.
        """
        self.start()
        broken = SharingCache(
            CacheStore(Path(self.mktemp() + ".sqlite3")),
            lambda f, *a: fail(sqlite3.OperationalError("disk I/O error")),
            self.reactor,
        )
        service = SharingService(self.peers, self.client, broken)
        answer = self.settle(service.lookup("bob@example.com", CLIENT))
        self.assertEqual(answer, SharingAnswer.found("127.0.0.2:25"))

    def test_unaskable_address(self) -> None:
        """
        An address that cannot travel in a Minger query is not found.
        """
        answer = self.settle(self.service().lookup('"odd user"@example.com', CLIENT))
        self.assertEqual(answer, SharingAnswer.not_found())

    def test_no_cache(self) -> None:
        """
        Without a cache every lookup asks the peers.
        """
        self.start()
        service = SharingService(self.peers, self.client)
        for _ in range(2):
            answer = self.settle(service.lookup("bob@example.com", CLIENT))
            self.assertEqual(answer, SharingAnswer.found("127.0.0.2:25"))
        self.assertEqual(self.queries(), 6)
        self.assertFalse(self.successResultOf(service.drop("bob@example.com")))

    def test_drop(self) -> None:
        """
        A dropped address is no longer cached.
        """
        self.start()
        service = self.service()
        self.settle(service.lookup("bob@example.com", CLIENT))
        self.assertTrue(self.successResultOf(service.drop("bob@example.com")))
        self.assertIsNone(self.successResultOf(self.cache.get("bob@example.com")))


class BudgetTests(_ThreePeers):
    """
    The session's budget of lookups at the peers, and the tidying of entries that a local
    account shadows.
    """

    def test_budget(self) -> None:
        """
        Only lookups that ask the peers spend the budget, once per address; past it a new
        address is UNAVAILABLE without a datagram, while a cached one is still found.
        """
        logs = capture_logs(self)
        self.start()
        service = self.service()
        self.settle(service.lookup("bob@example.com", CLIENT))
        budget = LookupBudget(1)
        found = self.settle(service.lookup("bob@example.com", CLIENT, budget))
        self.assertEqual((found, budget.spent), (SharingAnswer.found("127.0.0.2:25"), 0))
        asked = self.queries()
        self.assertEqual(
            self.settle(service.lookup("nobody@example.com", CLIENT, budget)),
            SharingAnswer.not_found(),
        )
        self.assertEqual((self.queries(), budget.spent), (asked + 3, 1))
        self.assertEqual(
            self.settle(service.lookup("carol@example.com", CLIENT, budget)),
            SharingAnswer.unavailable(),
        )
        self.assertEqual(self.queries(), asked + 3)
        self.assertEqual(
            [e["rcpt"] for e in logs if "not asked about" in e["log_format"]],
            ["carol@example.com"],
        )

    def test_local_account(self) -> None:
        """
        A cached address that has a local account now is dropped from the cache, once per
        address (later calls touch nothing).
        """
        capture_logs(self)
        self.start()
        service = self.service()
        self.settle(service.lookup("bob@example.com", CLIENT))
        service.local_account("Bob@example.com")
        self.assertEqual(self.successResultOf(self.cache.list()), [])
        self.successResultOf(self.cache.put("bob@example.com", "127.0.0.2:25"))
        service.local_account("bob@example.com")
        self.assertEqual(len(self.successResultOf(self.cache.list())), 1)
        SharingService(self.peers, self.client).local_account("bob@example.com")

    def test_expires_after_five_days(self) -> None:
        """
        A confirmed address is routed from the cache for five days; after that the peers
        are asked again.
        """
        self.start()
        service = self.service()
        self.settle(service.lookup("bob@example.com", CLIENT))
        asked = self.queries()
        self.reactor.advance(5 * 86400.0 - 1.0)
        self.settle(service.lookup("bob@example.com", CLIENT))
        self.assertEqual(self.queries(), asked)
        self.reactor.advance(2.0)
        self.assertEqual(
            self.settle(service.lookup("bob@example.com", CLIENT)),
            SharingAnswer.found("127.0.0.2:25"),
        )
        self.assertEqual(self.queries(), asked + 3)


class AccountCheckTests(_ThreePeers):
    """
    The check before an account is created here.
    """

    def check(self, address: str, seconds: float = 0.0) -> AccountCheck:
        d = self.service().check_all_unknown(address)
        self.reactor.network.flush()
        for _ in range(int(seconds / 2.0)):
            self.reactor.advance(2.0)
            self.reactor.network.flush()
        return self.successResultOf(d)

    def test_free(self) -> None:
        """
        Every peer says unknown: the address is free.
        """
        self.start()
        check = self.check("newbie@example.com")
        self.assertTrue(check.free)
        self.assertEqual(check.taken, ())

    def test_taken(self) -> None:
        """
        A peer that hosts it (even disabled) makes it taken.
        """
        self.start()
        check = self.check("frozen@example.com")
        self.assertFalse(check.free)
        self.assertEqual(check.taken, (self.peers[2],))

    def test_blocked(self) -> None:
        """
        A peer that cannot be asked blocks creation.
        """
        self.start("127.0.0.2", "127.0.0.3")
        check = self.check("newbie@example.com", 6.0)
        self.assertFalse(check.free)
        self.assertEqual(
            [result for _, result in check.answers],
            [Result.UNKNOWN, Result.UNKNOWN, Result.TIMEOUT],
        )
