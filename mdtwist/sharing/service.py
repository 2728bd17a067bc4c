# -*- test-case-name: tests.sharing.test_service -*-
"""
Domain Sharing: which peer server hosts an address of a shared domain.

The receive policy calls L{SharingService.lookup} for an address in a local domain that has no
local account. Theory of operation:

  1. Loop guard: mail from one of the sharing peers themselves (the SMTP client's address is
     one of theirs) is never fanned out again; the answer is NOT_FOUND at once.
  2. The five-day cache (L{mdtwist.sharing.cache}), shared by all processes: an entry whose peer
     is still configured answers FOUND. A cache that cannot be read counts as a miss.
  3. Otherwise every peer is asked in parallel over Minger. The first peer to answer
     "active" decides: FOUND, routed to that peer's SMTP C{host:port}, and cached. A second
     "active" from another peer is logged as a conflict (the same account on two servers).
     When every peer has answered without an "active": NOT_FOUND if every one said "unknown",
     else UNAVAILABLE (a timeout, a refusal, an "inactive" answer: nothing definite, so the
     caller answers 4xx and the sender retries). Failures are never cached.

The number of distinct addresses one SMTP session may have asked about at the peers is capped:
the receive policy hands each session's L{mdtwist.route.LookupBudget} to L{SharingService.lookup},
which spends it only when it is about to ask the peers (cache hits are free). A lookup past the
cap is UNAVAILABLE at once (the policy answers 451): the session cannot use this server to sweep
the peers for valid addresses.

A cache entry is dropped when delivery to its peer gets C{5.1.1} (L{SharingService.drop}, called
by remote delivery), and when the receive policy finds a local account for a cached address
(L{SharingService.local_account}; local accounts are checked before the cache, so an entry
shadowed by a local account is never used, this only tidies it away).

L{SharingService.check_all_unknown} is the check before an account is created: every peer is
asked and creation may go ahead only if every one says "unknown".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mdtwist.envelope import ClientInfo
from mdtwist.interfaces import ISharingLookup
from mdtwist.ipaddr import peer_ip
from mdtwist.minger.client import MingerClient, Peer, Result
from mdtwist.route import LookupBudget, SharingAnswer
from mdtwist.sharing.cache import SharingCache


@attrs.frozen
class SharingPeer:
    """
    One sharing peer.

    @ivar route: its SMTP address as C{host:port} (C{[address]:port} for IPv6): where mail for
        the addresses it hosts goes, and what the cache stores.
    @ivar minger: how to ask it (its Minger host, port, secret and mode).
    """

    route: str
    minger: Peer


@attrs.frozen
class AccountCheck:
    """
    The answers of every peer about an address that is about to be created here.

    @ivar answers: each peer with its result, in configured order.
    """

    answers: tuple[tuple[SharingPeer, Result], ...]

    @property
    def free(self) -> bool:
        """
        Whether every peer said it has no such address (creation may go ahead).
        """
        return all(result is Result.UNKNOWN for _, result in self.answers)

    @property
    def taken(self) -> tuple[SharingPeer, ...]:
        """
        The peers that host the address (active or inactive).
        """
        return tuple(
            peer for peer, result in self.answers if result in (Result.ACTIVE, Result.INACTIVE)
        )


def _normal_ip(text: str) -> str:
    # A peer address as compared (see peer_ip); a text that is no address, as it is.
    address = peer_ip(text)
    return text if address is None else str(address)


@implementer(ISharingLookup)
class SharingService(Service):
    """
    Looks addresses up at the sharing peers, with the shared cache in front.

    It is the receive policy's Domain Sharing collaborator (L{ISharingLookup}).
    """

    log = Logger()

    def __init__(
        self,
        peers: Sequence[SharingPeer],
        client: MingerClient,
        cache: SharingCache | None = None,
        *,
        peer_addresses: Iterable[str] = (),
    ) -> None:
        """
        @param peers: the peers, in configured order.
        @param client: the Minger client.
        @param cache: the shared cache, or L{None} for none.
        @param peer_addresses: the IP addresses of the peers, for the loop guard.
        """
        self.peers = tuple(peers)
        self._client = client
        self.cache = cache
        self._routes = {peer.route for peer in self.peers}
        self._peer_addresses = frozenset(_normal_ip(a) for a in peer_addresses)
        # Local addresses whose cache entry this process has already dropped (bounded).
        self._tidied: set[str] = set()
        self.setName("sharing")

    def lookup(
        self, address: str, client: ClientInfo, budget: LookupBudget | None = None
    ) -> Deferred[SharingAnswer]:
        """
        Find the peer that hosts an address.

        @param address: a recipient in a local domain with no local account.
        @param client: the SMTP client that gave it.
        @param budget: the session's budget of lookups at the peers (see the module
            docstring); L{None}: no limit.
        @return: a Deferred firing with the answer; it never fails.
        """
        if _normal_ip(client.address) in self._peer_addresses:
            self.log.info(
                "sharing: {rcpt} from sharing peer {peer} is not asked about again",
                rcpt=address,
                peer=client.address,
            )
            return succeed(SharingAnswer.not_found())
        return Deferred.fromCoroutine(self._lookup(address, client, budget))

    async def _lookup(
        self, address: str, client: ClientInfo, budget: LookupBudget | None
    ) -> SharingAnswer:
        if self.cache is not None:
            try:
                route = await self.cache.get(address)
            except Exception as e:
                self.log.warn(
                    "sharing: cache unreadable for {rcpt}: {error}", rcpt=address, error=str(e)
                )
                route = None
            if route is not None and route in self._routes:
                return SharingAnswer.found(route)
        if budget is not None and not budget.spend(address):
            self.log.warn(
                "sharing: {peer} has had {limit} addresses looked up in this session;"
                " {rcpt} is not asked about",
                peer=client.address,
                limit=budget.limit,
                rcpt=address,
            )
            return SharingAnswer.unavailable()
        return await self._ask(address)

    def _ask(self, address: str) -> Deferred[SharingAnswer]:
        decided: Deferred[SharingAnswer] = Deferred()
        if not self.peers:
            return succeed(SharingAnswer.not_found())
        results: dict[SharingPeer, Result] = {}
        found: list[SharingPeer] = []

        def answered(result: Result, peer: SharingPeer) -> None:
            results[peer] = result
            self._log_result(address, peer, result)
            if result is Result.ACTIVE:
                found.append(peer)
                if len(found) == 1:
                    self._remember(address, peer)
                    decided.callback(SharingAnswer.found(peer.route))
                else:
                    self.log.error(
                        "sharing: conflict: {rcpt} is active on {first} and on {other}",
                        rcpt=address,
                        first=found[0].route,
                        other=peer.route,
                    )
            if len(results) == len(self.peers) and not found:
                if all(r is Result.UNKNOWN for r in results.values()):
                    decided.callback(SharingAnswer.not_found())
                else:
                    decided.callback(SharingAnswer.unavailable())

        try:
            queries = [(peer, self._client.query(peer.minger, address)) for peer in self.peers]
        except ValueError:
            self.log.info("sharing: {rcpt} cannot be asked about over Minger", rcpt=address)
            return succeed(SharingAnswer.not_found())
        for peer, query in queries:
            query.addCallback(answered, peer)
        return decided

    def _remember(self, address: str, peer: SharingPeer) -> None:
        if self.cache is None:
            return
        self.cache.put(address, peer.route).addErrback(
            lambda failure: self.log.warn(
                "sharing: cannot cache {rcpt}: {error}",
                rcpt=address,
                error=failure.getErrorMessage(),
            )
        )

    def _log_result(self, address: str, peer: SharingPeer, result: Result) -> None:
        if result in (Result.DENIED, Result.BAD_CREDENTIALS, Result.MALFORMED):
            self.log.error(
                "sharing: peer {peer} refused our query for {rcpt} ({result}): check the"
                " Minger settings on both sides",
                peer=peer.route,
                rcpt=address,
                result=result.value,
            )
        elif result is Result.TIMEOUT:
            self.log.warn(
                "sharing: peer {peer} did not answer about {rcpt}", peer=peer.route, rcpt=address
            )
        else:
            self.log.debug(
                "sharing: peer {peer} says {rcpt} is {result}",
                peer=peer.route,
                rcpt=address,
                result=result.value,
            )

    def check_all_unknown(self, address: str) -> Deferred[AccountCheck]:
        """
        Ask every peer about an address that is about to be created here (no cache).

        @param address: the new address (or alias).
        @return: a Deferred firing with every peer's answer; creation may go ahead only when
            L{AccountCheck.free} is true. It never fails.
        @raise ValueError: when the address cannot travel in a Minger query.
        """
        queries = [self._client.query(peer.minger, address) for peer in self.peers]
        d = DeferredList(queries, consumeErrors=True)
        return d.addCallback(
            lambda outcomes: AccountCheck(
                tuple(
                    (peer, result if ok else Result.TIMEOUT)
                    for peer, (ok, result) in zip(self.peers, outcomes, strict=True)
                )
            )
        )

    def drop(self, address: str) -> Deferred[bool]:
        """
        Forget a cached address (a peer said 5.1.1 for it, or a local account appeared).

        @param address: the address.
        @return: a Deferred firing with whether it was cached.
        """
        if self.cache is None:
            return succeed(False)
        return self.cache.drop(address)

    def local_account(self, address: str) -> None:
        """
        Tidy away the cache entry of an address that has a local account (the receive policy
        found one): in the background, at most once per address while this process runs.

        @param address: the local account's address as the client gave it.
        """
        if self.cache is None:
            return
        key = address.lower()
        if key in self._tidied:
            return
        if len(self._tidied) >= 4096:
            self._tidied.clear()
        self._tidied.add(key)

        def dropped(was_cached: bool) -> None:
            if was_cached:
                self.log.info(
                    "sharing: {rcpt} has a local account now; its cache entry is dropped",
                    rcpt=address,
                )

        def failed(failure: Failure) -> None:
            self._tidied.discard(key)
            self.log.warn(
                "sharing: cannot drop {rcpt} from the cache: {error}",
                rcpt=address,
                error=failure.getErrorMessage(),
            )

        self.cache.drop(address).addCallbacks(dropped, failed)

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.cache is None:
            return None
        return self.cache.close()
