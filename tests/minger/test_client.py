"""
Tests for L{mdtwist.minger.client}, against our server on an in-memory UDP network.
"""

from __future__ import annotations

import ipaddress
import itertools

from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.minger.client import MingerClient, Peer, Result
from mdtwist.minger.codec import Status, encode_reply
from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
from mdtwist.secret import Secret
from tests.minger.fakes import Directory, FakeUDPReactor, account

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"),)


class Scripted(DatagramProtocol):
    """
    A peer that answers every datagram with the next scripted reply (or nothing for None).
    """

    def __init__(self, *replies: bytes | None) -> None:
        self.replies = list(replies)
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
        self.received.append(datagram)
        reply = self.replies.pop(0) if self.replies else None
        if reply is not None:
            assert self.transport is not None
            self.transport.write(reply, addr)


class ClientTests(SynchronousTestCase):
    """
    Lookups: attempts, timeouts, matching, joining, results.
    """

    def setUp(self) -> None:
        self.reactor = FakeUDPReactor()
        self.reactor.advance(1_000_000.0)
        self.nonces = (bytes([i]) * 16 for i in itertools.count(1))
        self.client = MingerClient(
            self.reactor, timeout=2.0, attempts=3, random=lambda n: next(self.nonces)
        )
        self.peer = Peer("127.0.0.2", 4069, Secret(SECRET))

    def serve(
        self, *, hardened: bool = False, host: str = "127.0.0.2", **kwargs: object
    ) -> Directory:
        directory = Directory(
            account("alice@example.com"), account("frozen@example.com", enabled=False)
        )
        settings = MingerSettings(
            Secret(SECRET),
            allowed=EVERYWHERE,
            hardened_sources=EVERYWHERE if hardened else (),
            **kwargs,  # type: ignore[arg-type]
        )
        responder = MingerResponder(directory, settings, self.reactor)
        self.reactor.listenUDP(4069, MingerServerProtocol(responder), interface=host)
        return directory

    def script(self, *replies: bytes | None) -> Scripted:
        peer = Scripted(*replies)
        self.reactor.listenUDP(4069, peer, interface="127.0.0.2")
        return peer

    def lookup(self, mailbox: str, peer: Peer | None = None) -> Result:
        d = self.client.query(peer or self.peer, mailbox)
        self.reactor.network.flush()
        return self.successResultOf(d)

    def test_against_server(self) -> None:
        """
        Our client and server agree on active, inactive and unknown addresses.
        """
        self.serve()
        self.assertEqual(self.lookup("alice@example.com"), Result.ACTIVE)
        self.assertEqual(self.lookup("frozen@example.com"), Result.INACTIVE)
        self.assertEqual(self.lookup("nobody@example.com"), Result.UNKNOWN)
        self.assertEqual(self.reactor.network.ports.keys(), {("127.0.0.2", 4069)})

    def test_bad_credentials_and_denied(self) -> None:
        """
        A wrong secret gives BAD_CREDENTIALS; a server that answers 1 gives DENIED.
        """
        self.serve()
        wrong = Peer("127.0.0.2", 4069, Secret("a wrong secret, long enough"))
        self.assertEqual(self.lookup("alice@example.com", wrong), Result.BAD_CREDENTIALS)
        anonymous = Peer("127.0.0.2", 4069)
        self.assertEqual(self.lookup("alice@example.com", anonymous), Result.BAD_CREDENTIALS)

    def test_every_status(self) -> None:
        """
        Each status digit maps to its result.
        """
        expected = {
            Status.BAD_REQUEST: Result.MALFORMED,
            Status.DENIED: Result.DENIED,
            Status.BAD_CREDENTIALS: Result.BAD_CREDENTIALS,
            Status.UNKNOWN: Result.UNKNOWN,
            Status.INACTIVE: Result.INACTIVE,
            Status.ACTIVE: Result.ACTIVE,
        }
        for status, result in expected.items():
            self.assertEqual(Result.of(status), result)
            self.assertIs(result.status, status)
            peer = self.script(encode_reply(b"alice@example.com", status))
            self.assertEqual(self.lookup("alice@example.com"), result)
            self.assertEqual(len(peer.received), 1)
        self.assertIsNone(Result.TIMEOUT.status)

    def test_timeout(self) -> None:
        """
        With nobody answering, the client sends one datagram per attempt, waits 2 s after
        each, and gives TIMEOUT after the third; its port is closed.
        """
        peer = self.script()
        d = self.client.query(self.peer, "alice@example.com")
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.assertEqual(len(peer.received), 1)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertEqual(len(peer.received), 2)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertEqual(len(peer.received), 3)
        self.assertNoResult(d)
        self.reactor.advance(2.0)
        self.assertEqual(self.successResultOf(d), Result.TIMEOUT)
        self.assertEqual(len(peer.received), 3)
        self.assertEqual(set(self.reactor.network.ports), {("127.0.0.2", 4069)})
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(set(peer.received)), 1)

    def test_retry(self) -> None:
        """
        A lost datagram is sent again after the timeout, and its answer counts.
        """
        self.script(None, b"alice@example.com 5")
        d = self.client.query(self.peer, "alice@example.com")
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertEqual(self.successResultOf(d), Result.ACTIVE)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unmatched_replies_ignored(self) -> None:
        """
        Replies about another mailbox, garbage, and datagrams from another address are
        ignored; the lookup goes on until a matching reply.
        """
        self.script(b"bob@example.com 5", b"alice@example.com 9", b"ALICE@example.com 3")
        d = self.client.query(self.peer, "alice@example.com")
        self.reactor.network.flush()
        self.assertNoResult(d)
        client_port = next(a for a in self.reactor.network.ports if a[1] != 4069)
        self.reactor.network.queue.append(
            (("127.0.0.3", 4069), client_port, b"alice@example.com 5")
        )
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertEqual(self.successResultOf(d), Result.UNKNOWN)

    def test_joined(self) -> None:
        """
        Lookups of the same mailbox at the same peer while one is in flight share one
        exchange; another mailbox or another peer gets its own.
        """
        peer = self.script(b"alice@example.com 5", b"bob@example.com 3")
        first = self.client.query(self.peer, "alice@example.com")
        second = self.client.query(self.peer, "Alice@Example.com")
        third = self.client.query(self.peer, "bob@example.com")
        self.reactor.network.flush()
        self.assertEqual(self.successResultOf(first), Result.ACTIVE)
        self.assertEqual(self.successResultOf(second), Result.ACTIVE)
        self.assertEqual(self.successResultOf(third), Result.UNKNOWN)
        self.assertEqual(len(peer.received), 2)
        fourth = self.client.query(self.peer, "alice@example.com")
        for _ in range(3):
            self.reactor.network.flush()
            self.reactor.advance(2.0)
        self.assertEqual(self.successResultOf(fourth), Result.TIMEOUT)
        self.assertEqual(len(peer.received), 5)

    def test_hardened(self) -> None:
        """
        A hardened lookup against a server that requires it succeeds; a retry uses a new
        nonce, so a lost reply does not make the server see a replay.
        """
        self.serve(hardened=True)
        peer = Peer("127.0.0.2", 4069, Secret(SECRET), hardened=True)
        self.assertEqual(self.lookup("alice@example.com", peer), Result.ACTIVE)
        lost: list[bytes] = []

        def lose_first_reply(src: object, dst: tuple[str, int], data: bytes) -> bool:
            if dst[1] == 4069 or lost:
                return False
            lost.append(data)
            return True

        self.reactor.network.lose = lose_first_reply
        d = self.client.query(peer, "nobody@example.com")
        self.reactor.network.flush()
        self.assertNoResult(d)
        self.reactor.advance(2.0)
        self.reactor.network.flush()
        self.assertEqual(self.successResultOf(d), Result.UNKNOWN)
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.lookup("alice@example.com", self.peer), Result.BAD_CREDENTIALS)

    def test_hardened_forged_reply(self) -> None:
        """
        A reply without a valid MAC is dropped: the hardened lookup times out.
        """
        self.script(b"alice@example.com 5", b"alice@example.com 5 m=" + b"0" * 64)
        peer = Peer("127.0.0.2", 4069, Secret(SECRET), hardened=True)
        d = self.client.query(peer, "alice@example.com")
        for _ in range(3):
            self.reactor.network.flush()
            self.reactor.advance(2.0)
        self.assertEqual(self.successResultOf(d), Result.TIMEOUT)

    def test_resolve(self) -> None:
        """
        A peer given by name is resolved first; a name that does not resolve gives TIMEOUT.
        """
        self.serve()
        self.reactor.resolved["minger.example.com"] = "127.0.0.2"
        named = Peer("minger.example.com", 4069, Secret(SECRET))
        self.assertEqual(self.lookup("alice@example.com", named), Result.ACTIVE)
        unknown = Peer("nowhere.example.com", 4069, Secret(SECRET))
        self.assertEqual(self.lookup("alice@example.com", unknown), Result.TIMEOUT)

    def test_port_closed(self) -> None:
        """
        When the reactor closes the lookup's port (an ICMP "port unreachable" on a connected
        UDP port), the lookup ends with TIMEOUT at once and leaves no timer behind.
        """
        self.script()
        d = self.client.query(self.peer, "alice@example.com")
        [port] = [p for a, p in self.reactor.network.ports.items() if a[1] != 4069]
        port.stopListening()
        self.assertEqual(self.successResultOf(d), Result.TIMEOUT)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bad_mailbox(self) -> None:
        """
        A mailbox no server would accept is refused before anything is sent.
        """
        self.assertRaises(ValueError, self.client.query, self.peer, "no mailbox")
