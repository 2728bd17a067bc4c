# -*- test-case-name: tests.directory.test_cache -*-
"""
A small cache in front of any L{IDirectory}.

Found accounts are kept for C{ttl} seconds, unknown addresses for the shorter C{negative_ttl}, and
the domain list for C{ttl}; the least recently used entry goes when the cache is full. Failures
(L{mdtwist.errors.DirectoryUnavailable}) are never cached, and neither is authentication: every
login is checked against the directory.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum
from typing import Literal, Protocol, TypeVar, runtime_checkable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from mdtwist import metrics
from mdtwist.address import address_key
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory

T = TypeVar("T")


class Miss(Enum):
    """
    The answer of L{CachedDirectory.peek} when nothing usable is remembered.
    """

    MISS = "miss"


@runtime_checkable
class Reloadable(Protocol):
    """
    A directory backend that can read its data again on demand.
    """

    def reload(self) -> list[str]:
        """
        @return: the problems that kept the data from being reloaded.
        """


@implementer(IDirectory)
class CachedDirectory:
    """
    L{IDirectory} that remembers the answers of another one for a while.
    """

    def __init__(
        self,
        backend: IDirectory,
        clock: IReactorTime,
        *,
        ttl: float,
        negative_ttl: float,
        size: int,
    ) -> None:
        """
        @param backend: the directory asked on a miss.
        @param clock: the clock that ages entries.
        @param ttl: seconds a found account (and the domain list) is kept.
        @param negative_ttl: seconds an unknown address is kept.
        @param size: the most addresses kept.
        """
        self._backend = backend
        self._clock = clock
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._size = size
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        self._domains: tuple[float, frozenset[str]] | None = None

    def forget(self) -> None:
        """
        Forget every remembered answer (the backend's data changed).
        """
        self._entries.clear()
        self._domains = None

    def reload(self) -> list[str]:
        """
        Forget every remembered answer, and reload the backend when it can be
        (C{mdtwistctl reload}, SIGHUP).

        @return: the problems the backend's reload reported.
        """
        self.forget()
        if isinstance(self._backend, Reloadable):
            return self._backend.reload()
        return []

    def peek(self, address: str) -> Account | Literal[Miss.MISS] | None:
        """
        What is remembered for an address, without asking the backend: for callers on a hot
        path that can answer at once on a hit and fall back to L{find} on a miss.

        @param address: an address.
        @return: the remembered account, L{None} for a remembered unknown address (or one that
            is not a plausible address), or L{Miss.MISS}.
        """
        key = address_key(address)
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return Miss.MISS
        if entry[0] <= self._clock.seconds():
            del self._entries[key]
            return Miss.MISS
        self._entries.move_to_end(key)
        return entry[1]

    def peek_domains(self) -> frozenset[str] | None:
        """
        @return: the remembered domain list, or L{None} when it must be asked for with
            L{domains}.
        """
        remembered = self._domains
        if remembered is not None and remembered[0] > self._clock.seconds():
            return remembered[1]
        return None

    def find(self, address: str) -> Deferred[Account | None]:
        """
        See L{IDirectory.find}.
        """
        known = self.peek(address)
        if known is not Miss.MISS:
            return succeed(known)
        key = address_key(address)

        def remember(account: Account | None) -> Account | None:
            ttl = self._ttl if account is not None else self._negative_ttl
            if ttl > 0 and key is not None:
                self._entries[key] = (self._clock.seconds() + ttl, account)
                self._entries.move_to_end(key)
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            return account

        return self._timed("find", self._backend.find(address)).addCallback(remember)

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        """
        See L{IDirectory.authenticate}; never cached.
        """
        return self._timed("authenticate", self._backend.authenticate(login, password))

    def domains(self) -> Deferred[frozenset[str]]:
        """
        See L{IDirectory.domains}.
        """
        known = self.peek_domains()
        if known is not None:
            return succeed(known)

        def remember(domains: frozenset[str]) -> frozenset[str]:
            if self._ttl > 0:
                self._domains = (self._clock.seconds() + self._ttl, domains)
            return domains

        return self._timed("domains", self._backend.domains()).addCallback(remember)

    def _timed(self, operation: str, d: Deferred[T]) -> Deferred[T]:
        # The time and the failures of the backend's calls, for the metrics.
        start = self._clock.seconds()

        def done(result: T | Failure) -> T | Failure:
            failed = isinstance(result, Failure) and result.check(DirectoryUnavailable) is not None
            metrics.directory_call(operation, self._clock.seconds() - start, failed=failed)
            return result

        return d.addBoth(done)
