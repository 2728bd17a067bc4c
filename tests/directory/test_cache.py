"""
Tests for L{mdtwist.directory.cache}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdtwist.directory.cache import CachedDirectory, Miss
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory

ALICE = Account(address="alice@a.test", mailbox="alice", domain="a.test", login="alice")


@implementer(IDirectory)
class CountingDirectory:
    """
    A directory that knows alice and counts the questions it was asked.
    """

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.down = False

    def find(self, address: str) -> Deferred[Account | None]:
        self.asked.append(address)
        if self.down:
            return fail(DirectoryUnavailable("down"))
        return succeed(ALICE if address.lower() == "alice@a.test" else None)

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        self.asked.append(f"auth {login}")
        return succeed(ALICE if password == "pw" else None)

    def domains(self) -> Deferred[frozenset[str]]:
        self.asked.append("domains")
        return succeed(frozenset({"a.test"}))


class ReloadingDirectory(CountingDirectory):
    """
    A directory that can reload, with a problem.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reloads = 0

    def reload(self) -> list[str]:
        self.reloads += 1
        return ["accounts.toml: broken"]


class CachedDirectoryTests(SynchronousTestCase):
    """
    Answers are remembered for their time to live; failures and logins never are.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.backend = CountingDirectory()
        self.cache = CachedDirectory(self.backend, self.clock, ttl=60, negative_ttl=5, size=2)

    def test_interface(self) -> None:
        """
        The cache provides L{IDirectory}.
        """
        self.assertTrue(verifyObject(IDirectory, self.cache))

    def test_positive_ttl(self) -> None:
        """
        A found account is answered from the cache (any case) until its TTL has passed.
        """
        self.assertIs(self.successResultOf(self.cache.find("alice@a.test")), ALICE)
        self.clock.advance(59)
        self.assertIs(self.successResultOf(self.cache.find("ALICE@a.test")), ALICE)
        self.assertEqual(self.backend.asked, ["alice@a.test"])
        self.clock.advance(1)
        self.successResultOf(self.cache.find("alice@a.test"))
        self.assertEqual(len(self.backend.asked), 2)

    def test_negative_ttl(self) -> None:
        """
        An unknown address is remembered for the shorter negative TTL.
        """
        self.assertIsNone(self.successResultOf(self.cache.find("x@a.test")))
        self.clock.advance(4)
        self.assertIsNone(self.successResultOf(self.cache.find("x@a.test")))
        self.assertEqual(self.backend.asked, ["x@a.test"])
        self.clock.advance(1)
        self.successResultOf(self.cache.find("x@a.test"))
        self.assertEqual(self.backend.asked, ["x@a.test", "x@a.test"])

    def test_failures_not_cached(self) -> None:
        """
        A failure passes through and is not remembered.
        """
        self.backend.down = True
        self.failureResultOf(self.cache.find("alice@a.test"), DirectoryUnavailable)
        self.backend.down = False
        self.assertIs(self.successResultOf(self.cache.find("alice@a.test")), ALICE)

    def test_bounded_size(self) -> None:
        """
        When full, the least recently used address is forgotten first.
        """
        for address in ("alice@a.test", "x@a.test", "alice@a.test", "y@a.test"):
            self.successResultOf(self.cache.find(address))
        self.backend.asked.clear()
        self.successResultOf(self.cache.find("alice@a.test"))
        self.successResultOf(self.cache.find("x@a.test"))
        self.assertEqual(self.backend.asked, ["x@a.test"])

    def test_authenticate_not_cached(self) -> None:
        """
        Every login goes to the backend.
        """
        self.assertIs(self.successResultOf(self.cache.authenticate("alice", "pw")), ALICE)
        self.assertIsNone(self.successResultOf(self.cache.authenticate("alice", "bad")))
        self.assertEqual(self.backend.asked, ["auth alice", "auth alice"])

    def test_domains_cached(self) -> None:
        """
        The domain list is remembered for the positive TTL.
        """
        self.successResultOf(self.cache.domains())
        self.successResultOf(self.cache.domains())
        self.clock.advance(60)
        self.assertEqual(self.successResultOf(self.cache.domains()), frozenset({"a.test"}))
        self.assertEqual(self.backend.asked, ["domains", "domains"])

    def test_peek(self) -> None:
        """
        L{CachedDirectory.peek} answers from what is remembered, never asks the backend, and
        says L{Miss.MISS} for an address not remembered or past its TTL.
        """
        self.assertIs(self.cache.peek("alice@a.test"), Miss.MISS)
        self.successResultOf(self.cache.find("alice@a.test"))
        self.successResultOf(self.cache.find("x@a.test"))
        self.assertIs(self.cache.peek("Alice@A.test"), ALICE)
        self.assertIsNone(self.cache.peek("x@a.test"))
        self.assertIsNone(self.cache.peek("not an address"))
        self.clock.advance(5)
        self.assertIs(self.cache.peek("x@a.test"), Miss.MISS)
        self.assertIs(self.cache.peek("alice@a.test"), ALICE)
        self.clock.advance(55)
        self.assertIs(self.cache.peek("alice@a.test"), Miss.MISS)
        self.assertEqual(self.backend.asked, ["alice@a.test", "x@a.test"])

    def test_peek_keeps_recent(self) -> None:
        """
        An address answered by L{CachedDirectory.peek} counts as recently used.
        """
        self.successResultOf(self.cache.find("alice@a.test"))
        self.successResultOf(self.cache.find("x@a.test"))
        self.cache.peek("alice@a.test")
        self.successResultOf(self.cache.find("y@a.test"))
        self.assertIs(self.cache.peek("alice@a.test"), ALICE)
        self.assertIs(self.cache.peek("x@a.test"), Miss.MISS)

    def test_peek_domains(self) -> None:
        """
        L{CachedDirectory.peek_domains} gives the remembered domain list within its TTL, else
        L{None}, without asking the backend.
        """
        self.assertIsNone(self.cache.peek_domains())
        self.successResultOf(self.cache.domains())
        self.assertEqual(self.cache.peek_domains(), frozenset({"a.test"}))
        self.clock.advance(60)
        self.assertIsNone(self.cache.peek_domains())
        self.assertEqual(self.backend.asked, ["domains"])

    def test_reload(self) -> None:
        """
        L{CachedDirectory.reload} forgets every remembered answer and reloads a backend that
        can reload, passing its problems on; a backend that cannot reload has none.
        """
        self.successResultOf(self.cache.find("alice@a.test"))
        self.successResultOf(self.cache.domains())
        self.assertEqual(self.cache.reload(), [])
        self.successResultOf(self.cache.find("alice@a.test"))
        self.successResultOf(self.cache.domains())
        self.assertEqual(self.backend.asked, ["alice@a.test", "domains"] * 2)

        reloadable = ReloadingDirectory()
        cache = CachedDirectory(reloadable, self.clock, ttl=60, negative_ttl=5, size=2)
        self.assertEqual(cache.reload(), ["accounts.toml: broken"])
        self.assertEqual(reloadable.reloads, 1)
