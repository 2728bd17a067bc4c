"""
Tests for the Minger server and Domain Sharing parts of L{mdtwist.services}.
"""

from __future__ import annotations

import io

from twisted.application.service import MultiService
from twisted.internet.protocol import DatagramProtocol

from mdtwist.config import load_config
from mdtwist.errors import ConfigError
from mdtwist.minger.codec import encode_query
from mdtwist.services import make_service, peer_addresses, sharing_of
from mdtwist.sharing.service import SharingService
from mdtwist.tap import Options, build
from tests.minger.fakes import FakeUDPReactor
from tests.test_tap import _DemoCase

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
SHARING = f"""
[minger]
enable = true
port = 14069
secret = "{SECRET}"

[sharing]
enable = true

[[sharing.peers]]
host = "127.0.0.2:2525"
password = "{SECRET}"

[[sharing.peers]]
host = "::1"
minger_port = 24069
"""


class SharingServicesTests(_DemoCase):
    """
    With [minger] and [sharing] enabled, the tree has the Minger server (first process only)
    and the sharing service with its cache beside the spool.
    """

    def configure(self, text: str) -> None:
        # The demo has [minger] and [sharing] with every key commented out: drop those two
        # header lines, then add the tables of the test.
        lines = self.config.read_text().splitlines()
        kept = [line for line in lines if line.strip() not in ("[minger]", "[sharing]")]
        self.config.write_text("\n".join(kept) + "\n" + text)

    def build(self, text: str = SHARING, *args: str) -> tuple[MultiService, FakeUDPReactor]:
        self.configure(text)
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        reactor = FakeUDPReactor()
        service = build(options, reactor, stderr=io.StringIO())
        assert isinstance(service, MultiService)
        return service, reactor

    def test_children(self) -> None:
        """
        The cache's pool, the sharing service and the Minger server come after the queue and
        before the listeners (SMTP, then HTTP) and the control socket.
        """
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(
            names[names.index("queue") :],
            [
                "queue",
                "sharing-io",
                "sharing",
                "minger",
                "smtp-0-mx",
                "smtp-1-submission",
                "settings-io",
                "settings-receipts-close",
                "http-0",
                "http-1",
                "control",
            ],
        )
        sharing = sharing_of(service)
        assert isinstance(sharing, SharingService)
        self.assertEqual([p.route for p in sharing.peers], ["127.0.0.2:2525", "[::1]:25"])
        self.assertEqual(
            [(p.minger.host, p.minger.port) for p in sharing.peers],
            [("127.0.0.2", 4069), ("::1", 24069)],
        )
        self.assertTrue((self.root / "var" / "spool" / "sharing.sqlite3").exists())

    def test_off_by_default(self) -> None:
        """
        Without the tables there is neither a sharing service nor a Minger server.
        """
        service, _ = self.build("")
        names = [child.name for child in service]
        self.assertNotIn("sharing", names)
        self.assertNotIn("minger", names)
        self.assertIsNone(sharing_of(service))

    def test_minger_answers_peers_only(self) -> None:
        """
        The Minger server listens on its port and answers the sharing peers from the local
        directory; other sources get nothing (the default allow-list is the peers).
        """
        service, reactor = self.build()
        service.privilegedStartService()
        self.assertIn(("127.0.0.1", 14069), reactor.network.ports)
        replies: list[tuple[str, bytes]] = []

        class Peer(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: object) -> None:  # noqa: N802
                assert self.transport is not None
                replies.append((self.transport.getHost().host, datagram))

        query = encode_query("alice@example.test", SECRET)
        for host in ("127.0.0.2", "127.0.0.9"):
            reactor.listenUDP(50000, Peer(), interface=host).write(query, ("127.0.0.1", 14069))
        reactor.network.flush()
        self.assertEqual(replies, [("127.0.0.2", b"alice@example.test 5")])

    def test_first_process_only(self) -> None:
        """
        A child process (shard above 0) has the sharing service but no Minger server.
        """
        self.configure(SHARING)
        config = load_config(self.config)
        top = make_service(config, FakeUDPReactor(), shard=1)
        names = [child.name for child in top]
        self.assertIn("sharing", names)
        self.assertNotIn("minger", names)

    def test_unresolvable_peer(self) -> None:
        """
        A peer whose name does not resolve stops start-up with its key named.
        """
        self.configure(
            '[sharing]\nenable = true\n[[sharing.peers]]\nhost = "no-such-host.invalid"\n'
        )
        config = load_config(self.config)
        error = self.assertRaises(ConfigError, peer_addresses, config)
        self.assertIn("sharing.peers[0].host: cannot resolve no-such-host.invalid", str(error))

    def test_peer_literals(self) -> None:
        """
        IP literals are their own addresses, each listed once.
        """
        self.configure(
            '[sharing]\npeers = [{host = "127.0.0.2"}, {host = "127.0.0.2:26"}, {host = "::1"}]\n'
        )
        self.assertEqual(peer_addresses(load_config(self.config)), ["127.0.0.2", "::1"])
