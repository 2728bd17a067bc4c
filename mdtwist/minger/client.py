# -*- test-case-name: tests.minger.test_client -*-
"""
The Minger client: asks a peer's Minger server about one address.

Theory of operation. A lookup opens its own UDP port (a random source port) and connects it to
the peer's address, so the kernel drops datagrams from anyone else; replies are also checked
against the peer's address and port and must echo the mailbox asked about (anything else is
ignored, and the lookup goes on waiting). Each attempt sends one datagram and waits
C{timeout} seconds on the injected clock; after C{attempts} unanswered attempts the result is
L{Result.TIMEOUT}, and so it is at once when an ICMP "port unreachable" makes the reactor close
the port (nothing listens there). A draft-06 query is the same datagram every time; a hardened
query gets a new nonce and time per attempt (a server refuses a nonce it has seen), and a
reply is accepted only with a MAC made for one of the nonces sent. Lookups for the same peer
and mailbox that are already in flight are joined: one exchange, every caller gets its result.

A lookup never fails: its Deferred fires with a L{Result}.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from typing_extensions import override

from mdtwist.minger.codec import (
    DEFAULT_PORT,
    Status,
    check_hardened_reply,
    encode_hardened_query,
    encode_query,
    hardened_key,
    parse_reply,
)
from mdtwist.secret import Secret


class Result(enum.Enum):
    """
    The outcome of one lookup.
    """

    #: Status 5: the address exists and takes mail.
    ACTIVE = "active"
    #: Status 4: the address exists but cannot take mail now.
    INACTIVE = "inactive"
    #: Status 3: no such address there.
    UNKNOWN = "unknown"
    #: Status 1: the peer does not let us ask.
    DENIED = "denied"
    #: Status 2: the peer refused our credentials (or their absence).
    BAD_CREDENTIALS = "bad credentials"
    #: Status 0: the peer found our query malformed.
    MALFORMED = "malformed"
    #: No acceptable reply after every attempt.
    TIMEOUT = "timeout"

    @classmethod
    def of(cls, status: Status) -> Result:
        """
        @param status: a reply's status.
        @return: the result it stands for.
        """
        return _RESULTS[status]

    @property
    def status(self) -> Status | None:
        """
        The status digit this result came from (L{None} for a timeout).
        """
        for status, result in _RESULTS.items():
            if result is self:
                return status
        return None


_RESULTS = {
    Status.ACTIVE: Result.ACTIVE,
    Status.INACTIVE: Result.INACTIVE,
    Status.UNKNOWN: Result.UNKNOWN,
    Status.DENIED: Result.DENIED,
    Status.BAD_CREDENTIALS: Result.BAD_CREDENTIALS,
    Status.BAD_REQUEST: Result.MALFORMED,
}


@attrs.frozen
class Peer:
    """
    A Minger server to ask.

    @ivar host: its name or IP address.
    @ivar port: its Minger (UDP) port.
    @ivar secret: the shared secret; L{None} for anonymous queries.
    @ivar hardened: use the hardened form (both sides must be mdtwist and agree).
    """

    host: str
    port: int = DEFAULT_PORT
    secret: Secret | None = None
    hardened: bool = False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Exchange(DatagramProtocol):
    """
    One lookup on its own connected UDP port.
    """

    #: No "Starting protocol" lines for each lookup.
    noisy = False

    log = Logger()

    def __init__(
        self,
        client: MingerClient,
        peer: Peer,
        address: str,
        mailbox: str,
        finished: Callable[[Result], None],
    ) -> None:
        self._client = client
        self._peer = peer
        self._address = address
        self._mailbox = mailbox
        self._finished = finished
        self._left = client.attempts
        self._nonces: list[bytes] = []
        self._timer: IDelayedCall | None = None
        self._done = False
        self._key = None
        if peer.hardened and peer.secret is not None:
            self._key = hardened_key(peer.secret.reveal())

    @override
    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.connect(self._address, self._peer.port)
        self._send()

    def _datagram(self) -> bytes:
        peer = self._peer
        if self._key is not None:
            nonce = self._client.random(16)
            self._nonces.append(nonce)
            return encode_hardened_query(
                self._mailbox, self._key, self._client.clock.seconds(), nonce
            )
        return encode_query(self._mailbox, None if peer.secret is None else peer.secret.reveal())

    def _send(self) -> None:
        self._left -= 1
        assert self.transport is not None
        try:
            self.transport.write(self._datagram(), (self._address, self._peer.port))
        except OSError as e:
            # An ICMP error from an earlier datagram, or no route: this attempt is lost.
            self.log.debug(
                "minger: sending to {peer} failed: {error}", peer=self._peer.host, error=str(e)
            )
        self._timer = self._client.clock.callLater(self._client.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._left > 0:
            self._send()
        else:
            self.finish(Result.TIMEOUT)

    @override
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        if self._done or (addr[0], addr[1]) != (self._address, self._peer.port):
            return
        reply = parse_reply(datagram, self._mailbox)
        if reply is None:
            return
        if self._key is not None and not any(
            check_hardened_reply(reply, self._key, nonce) for nonce in self._nonces
        ):
            self.log.warn(
                "minger: dropped a reply from {peer} whose MAC does not verify",
                peer=self._peer.host,
            )
            return
        self.finish(Result.of(reply.status))

    @override
    def connectionRefused(self) -> None:
        # ICMP port unreachable reported on a write: the next attempt (or the timeout) decides.
        pass

    @override
    def stopProtocol(self) -> None:
        # The reactor closes a connected UDP port on an ICMP error (port unreachable): nothing
        # listens there, so the lookup ends now, as a timeout would.
        if not self._done:
            self.log.info(
                "minger: {peer} port {port} unreachable",
                peer=self._peer.host,
                port=self._peer.port,
            )
            self.finish(Result.TIMEOUT)

    def finish(self, result: Result) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            self.transport.stopListening()
        self._finished(result)


class MingerClient:
    """
    Asks Minger servers about addresses.

    @ivar clock: the reactor's clock (timeouts, and the time of hardened queries).
    @ivar timeout: seconds to wait for a reply to one datagram.
    @ivar attempts: datagrams sent at most per lookup.
    @ivar random: returns that many random bytes (nonces).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        *,
        timeout: float = 2.0,
        attempts: int = 3,
        random: Callable[[int], bytes] = os.urandom,
        resolve: Callable[[str], Deferred[str]] | None = None,
    ) -> None:
        """
        @param reactor: provides UDP ports (C{listenUDP}) and the clock.
        @param timeout: seconds to wait for a reply to one datagram.
        @param attempts: datagrams sent at most per lookup.
        @param random: returns that many random bytes (nonces of hardened queries).
        @param resolve: turns a host name into an IP address; by default the reactor's
            resolver. IP addresses are used as they are.
        """
        self._reactor = reactor
        self.clock = reactor
        self.timeout = timeout
        self.attempts = attempts
        self.random = random
        self._resolve = resolve if resolve is not None else reactor.resolve
        self._pending: dict[tuple[str, int, str], list[Deferred[Result]]] = {}

    def query(self, peer: Peer, mailbox: str) -> Deferred[Result]:
        """
        Ask a peer about a mailbox.

        @param peer: the Minger server.
        @param mailbox: the mailbox, as it should travel (a valid mailbox).
        @return: a Deferred firing with the result; it never fails.
        @raise ValueError: when the mailbox is not valid (see
            L{mdtwist.minger.codec.valid_mailbox}).
        """
        encode_query(mailbox)  # raises ValueError for a mailbox no server would accept
        key = (peer.host, peer.port, mailbox.lower())
        waiting = self._pending.get(key)
        result: Deferred[Result] = Deferred()
        if waiting is not None:
            waiting.append(result)
            return result
        self._pending[key] = [result]

        def finished(outcome: Result) -> None:
            for waiter in self._pending.pop(key, []):
                waiter.callback(outcome)

        address = succeed(peer.host) if _is_ip(peer.host) else self._resolve(peer.host)
        address.addCallbacks(
            lambda ip: self._start(peer, ip, mailbox, finished),
            lambda failure: self._unresolved(peer, failure.getErrorMessage(), finished),
        )
        return result

    def _unresolved(self, peer: Peer, reason: str, finished: Callable[[Result], None]) -> None:
        self.log.warn("minger: cannot resolve {peer}: {reason}", peer=peer.host, reason=reason)
        finished(Result.TIMEOUT)

    def _start(
        self, peer: Peer, address: str, mailbox: str, finished: Callable[[Result], None]
    ) -> None:
        exchange = _Exchange(self, peer, address, mailbox, finished)
        interface = "::" if ":" in address else ""
        try:
            self._reactor.listenUDP(0, exchange, interface=interface)
        except Exception as e:  # CannotListenError and OSError: no socket, no lookup
            self.log.error("minger: cannot open a UDP port: {error}", error=str(e))
            exchange.finish(Result.TIMEOUT)
