"""
Our Minger client and server over real UDP sockets on loopback, with the real reactor.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from mdtwist.minger.client import MingerClient, Peer, Result
from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
from mdtwist.secret import Secret
from tests.minger.fakes import Directory, account

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"


class LoopbackTests(TestCase):
    """
    Real sockets: the server on an ephemeral port of 127.0.0.1 (and ::1), the client with a
    connected port per lookup.
    """

    def serve(self, interface: str, *, hardened: bool = False) -> int:
        directory = Directory(
            account("alice@example.com"), account("frozen@example.com", enabled=False)
        )
        everywhere = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
        settings = MingerSettings(
            Secret(SECRET), allowed=everywhere, hardened_sources=everywhere if hardened else ()
        )
        protocol = MingerServerProtocol(MingerResponder(directory, settings, reactor))
        port = reactor.listenUDP(0, protocol, interface=interface)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def test_statuses(self) -> None:
        """
        Active, inactive and unknown addresses come back as such over IPv4.
        """
        port = self.serve("127.0.0.1")
        client = MingerClient(reactor, timeout=2.0, attempts=3)
        peer = Peer("127.0.0.1", port, Secret(SECRET))
        results = [
            await client.query(peer, mailbox)
            for mailbox in ("alice@example.com", "frozen@example.com", "nobody@example.com")
        ]
        self.assertEqual(results, [Result.ACTIVE, Result.INACTIVE, Result.UNKNOWN])

    async def test_hardened_ipv6(self) -> None:
        """
        The hardened form works end to end over IPv6.
        """
        port = self.serve("::1", hardened=True)
        client = MingerClient(reactor, timeout=2.0, attempts=3)
        peer = Peer("::1", port, Secret(SECRET), hardened=True)
        self.assertEqual(await client.query(peer, "alice@example.com"), Result.ACTIVE)

    async def test_nobody_listening(self) -> None:
        """
        A port where nothing listens gives TIMEOUT (the ICMP error closes the connected port,
        which ends the lookup).
        """
        port = self.serve("127.0.0.1")
        client = MingerClient(reactor, timeout=0.2, attempts=2)
        result: Deferred[Result] = client.query(Peer("127.0.0.1", port + 1), "alice@example.com")
        self.assertEqual(await result, Result.TIMEOUT)
