# -*- test-case-name: tests.minger.test_server -*-
"""
The Minger server: answers peers over UDP whether an address is hosted here.

It answers from B{local data only}: the account directory. It never asks other servers and
never reads the Domain Sharing cache, so peers cannot loop through each other or echo each
other's stale entries.

Theory of operation. For each datagram, in this order:

  1. A source port below 1024 is dropped (a forged source aimed at a well-known service).
  2. A source outside the allow-list is dropped silently (or, with C{reply_to_denied}, answered
     with status 1), so we are no reflector.
  3. L{SourceLimiter} may drop it: rate limits, or a source paused for asking about too many
     unknown addresses.
  4. The codec reads it (L{mdtwist.minger.codec.parse_query}): ignored, malformed (status 0), or
     a query whose credentials are checked (status 2 when they fail).
  5. The directory decides between 3, 4 and 5 (see L{MingerResponder.status_of}). A directory
     that cannot answer gets B{no} answer: the asking peer then sees a timeout, which it treats as
     a temporary failure, whereas any status would be a claim about the address.

Refusals, malformed queries and paused sources are logged with the source (and the mailbox);
answers are not logged one by one. No log line carries the secret or a digest.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist import metrics
from mdtwist.address import Address, parse_address
from mdtwist.directory.cache import CachedDirectory, Miss
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory
from mdtwist.ipaddr import IPAddress, Network, peer_ip
from mdtwist.minger.codec import (
    Ignored,
    Malformed,
    NonceCache,
    Query,
    Status,
    check_credentials,
    encode_hardened_reply,
    encode_reply,
    hardened_key,
    parse_query,
)
from mdtwist.minger.limits import RateLimits, SourceLimiter, Verdict
from mdtwist.secret import Secret


@attrs.frozen
class MingerSettings:
    """
    How the Minger server answers.

    @ivar secret: the shared secret; L{None} only with C{anonymous}.
    @ivar anonymous: answer queries that carry no credentials.
    @ivar foreign_aliases_active: answer 5 for a local address that belongs to an account whose
        primary address is in a domain that is not local (an alias pointing elsewhere);
        otherwise such an address gets 3, as in MDaemon by default.
    @ivar allowed: the networks whose queries are answered.
    @ivar hardened_sources: networks that must use the hardened form (see
        L{mdtwist.minger.codec}); a draft-06 query from them gets 2.
    @ivar reply_to_denied: answer 1 to a source outside C{allowed} instead of dropping.
    @ivar limits: the rate limits and the "no such address" budget.
    """

    secret: Secret | None
    anonymous: bool = False
    foreign_aliases_active: bool = False
    allowed: tuple[Network, ...] = ()
    hardened_sources: tuple[Network, ...] = ()
    reply_to_denied: bool = False
    limits: RateLimits = attrs.field(factory=RateLimits)


def _inside(address: IPAddress, networks: Iterable[Network]) -> bool:
    return any(address in network for network in networks)


class MingerResponder:
    """
    Turns one datagram from one source into the reply to send, if any.

    Kept apart from the UDP protocol so that tests and the benchmark can drive it directly.

    When the directory is a L{CachedDirectory}, an address it remembers is answered at once,
    without a Deferred: a busy peer asks thousands of times a second, mostly about the same
    addresses, and the Deferred chain of a lookup would otherwise be most of the work.
    """

    log = Logger()

    def __init__(self, directory: IDirectory, settings: MingerSettings, clock: IReactorTime):
        """
        @param directory: the local account directory (never the sharing cache).
        @param settings: the settings.
        @param clock: gives the time for the limits and the hardened form.
        """
        self._directory = directory
        self._cache = directory if isinstance(directory, CachedDirectory) else None
        self._settings = settings
        self._clock = clock
        self._secret = None if settings.secret is None else settings.secret.reveal()
        self._key = None if self._secret is None else hardened_key(self._secret)
        self.limiter = SourceLimiter(settings.limits)
        self._nonces = NonceCache()
        self._sources: dict[str, tuple[str, bool, bool]] = {}

    def _source(self, host: str) -> tuple[str, bool, bool] | None:
        # The normal form of a source address, whether it is allowed and whether it must use
        # the hardened form; remembered, since a server hears from few peers.
        known = self._sources.get(host)
        if known is None:
            address = peer_ip(host)
            if address is None:
                return None
            settings = self._settings
            known = (
                str(address),
                _inside(address, settings.allowed),
                _inside(address, settings.hardened_sources),
            )
            if len(self._sources) >= 4096:
                self._sources.clear()
            self._sources[host] = known
        return known

    def answer(self, data: bytes, host: str, port: int) -> bytes | Deferred[bytes | None] | None:
        """
        Answer one datagram.

        @param data: the UDP payload.
        @param host: the sender's IP address.
        @param port: the sender's UDP port.
        @return: the reply datagram, or L{None} to send nothing; or, when the directory must
            be asked, a Deferred firing with one of these. It never fails.
        """
        settings = self._settings
        now = self._clock.seconds()
        known = self._source(host)
        if known is None or port < 1024:
            return None
        source, allowed, hardened_required = known
        if not allowed:
            # One line a minute for all refused sources: their number is not bounded.
            if self.limiter.log_due("(not allowed)", now):
                self.log.warn("minger: query from {peer}, which is not allowed", peer=source)
            if not settings.reply_to_denied:
                return None
        verdict = self.limiter.admit(source, now)
        if verdict is not Verdict.ALLOW:
            if self.limiter.log_due(source, now):
                self.log.warn(
                    "minger: dropping queries from {peer}: {verdict}",
                    peer=source,
                    verdict=verdict.value,
                )
            return None
        parsed = parse_query(data)
        if isinstance(parsed, Ignored):
            return None
        if isinstance(parsed, Malformed):
            self.log.info(
                "minger: malformed query from {peer}: {reason}", peer=source, reason=parsed.reason
            )
            metrics.minger_answered("bad_request")
            return encode_reply(parsed.echo, Status.BAD_REQUEST)
        if not allowed:
            metrics.minger_answered("denied")
            return encode_reply(parsed.echo, Status.DENIED)
        problem = check_credentials(
            parsed,
            secret=self._secret,
            anonymous=settings.anonymous,
            hardened_required=hardened_required,
            now=now,
            nonces=self._nonces,
            source=source,
        )
        if problem is not None:
            self.log.info(
                "minger: refused a query from {peer} for {mailbox}: {reason}",
                peer=source,
                mailbox=parsed.mailbox,
                reason=problem,
            )
            metrics.minger_answered("bad_credentials")
            return encode_reply(parsed.echo, Status.BAD_CREDENTIALS)
        status = self.status_of(parsed.mailbox)
        if not isinstance(status, Deferred):
            return self._reply(status, parsed, source)
        status.addCallbacks(
            self._reply,
            self._no_answer,
            callbackArgs=(parsed, source),
            errbackArgs=(parsed, source),
        )
        return status  # type: ignore[return-value]

    def _reply(self, status: Status, query: Query, source: str) -> bytes:
        # Answers are not logged one by one (a busy peer asks thousands of times a second);
        # refusals, malformed queries and paused sources are.
        metrics.minger_answered(status.name.lower())
        if status is Status.UNKNOWN and self.limiter.note_unknown(source, self._clock.seconds()):
            self.log.warn(
                "minger: {peer} asked for too many unknown addresses; no answers for {pause} s",
                peer=source,
                pause=self._settings.limits.unknown_pause,
            )
        if query.hardened and self._key is not None:
            return encode_hardened_reply(query, status, self._key)
        return encode_reply(query.echo, status)

    def _no_answer(self, failure: Failure, query: Query, source: str) -> None:
        metrics.minger_answered("no_answer")
        if failure.check(DirectoryUnavailable):
            self.log.warn(
                "minger: directory unavailable; no answer to {peer} for {mailbox}",
                peer=source,
                mailbox=query.mailbox,
            )
        else:
            self.log.failure(
                "minger: lookup failed; no answer to {peer} for {mailbox}",
                failure,
                peer=source,
                mailbox=query.mailbox,
            )
        return None

    def status_of(self, mailbox: str) -> Status | Deferred[Status]:
        """
        Look a mailbox up in the local directory.

          - C{*} (a liveness probe, answered only to authenticated queries): 5.
          - A domain that is not local, or no account: 3.
          - C{postmaster} at a local domain (always accepted by the SMTP policy): 5.
          - An account whose primary address is not in a local domain (a foreign alias): 5 with
            C{foreign_aliases_active}, else 3.
          - A disabled account: 4. Any other account: 5.

        @param mailbox: a valid mailbox.
        @return: the status, or a Deferred firing with it when the directory must be asked; it
            fails with L{DirectoryUnavailable} when the directory cannot answer.
        """
        if mailbox == "*":
            return Status.ACTIVE
        address = parse_address(mailbox)
        if address is None:
            return Status.UNKNOWN
        domains = None if self._cache is None else self._cache.peek_domains()
        if domains is not None:
            return self._in_domains(domains, mailbox, address)
        d = self._directory.domains()
        d.addCallback(self._in_domains, mailbox, address)
        return d  # type: ignore[return-value]

    def _in_domains(
        self, domains: frozenset[str], mailbox: str, address: Address
    ) -> Status | Deferred[Status]:
        if address.domain not in domains:
            return Status.UNKNOWN
        if address.local.lower() == "postmaster":
            return Status.ACTIVE
        if self._cache is not None:
            known = self._cache.peek(mailbox)
            if known is not Miss.MISS:
                return self._of_account(known, domains)
        d = self._directory.find(mailbox)
        d.addCallback(self._of_account, domains)
        return d  # type: ignore[return-value]

    def _of_account(self, account: Account | None, domains: frozenset[str]) -> Status:
        if account is None:
            return Status.UNKNOWN
        if account.domain not in domains:
            return Status.ACTIVE if self._settings.foreign_aliases_active else Status.UNKNOWN
        return Status.ACTIVE if account.enabled else Status.INACTIVE


class MingerServerProtocol(DatagramProtocol):
    """
    The UDP side of the Minger server: one reply datagram (or none) per query datagram.
    """

    def __init__(self, responder: MingerResponder) -> None:
        """
        @param responder: decides the replies.
        """
        self.responder = responder

    @override
    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        reply = self.responder.answer(datagram, addr[0], addr[1])
        if isinstance(reply, Deferred):
            reply.addCallback(self._send, addr)
        else:
            self._send(reply, addr)

    def _send(self, reply: bytes | None, addr: tuple[str, int]) -> None:
        if reply is None or self.transport is None:
            return
        try:
            self.transport.write(reply, addr)
        except OSError as e:
            # A send that fails (no route, buffer full) loses one reply; UDP clients retry.
            self.responder.log.warn(
                "minger: cannot answer {peer}: {error}", peer=addr[0], error=str(e)
            )
