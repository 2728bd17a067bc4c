"""
Tests for the Minger server and Domain Sharing parts of L{mdtwist.services}.
"""

from __future__ import annotations

import io

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from mdtwist.config import load_config
from mdtwist.envelope import ClientInfo
from mdtwist.errors import ConfigError
from mdtwist.interfaces import ISharingLookup
from mdtwist.minger.codec import encode_query
from mdtwist.route import LookupBudget, Route, SharingAnswer
from mdtwist.services import login_portal, make_service, peer_addresses, sharing_of, smtp_factory
from mdtwist.sharing.service import SharingService
from mdtwist.smtp.policy import ReceivePolicy
from mdtwist.tap import Options, build
from tests.minger.fakes import FakeUDPReactor
from tests.spool.fakes import FakeDirectory
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
        The cache's pool and the sharing service come before the queue (so they stop after
        it: remote delivery drops cache entries), the Minger server before the listeners.
        """
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(
            names[names.index("sharing-io") : names.index("smtp-1-submission") + 1],
            [
                "sharing-io",
                "sharing",
                "smtp-client-close",
                "queue",
                "minger",
                "smtp-0-mx",
                "smtp-1-submission",
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

    def test_listeners_ask_sharing(self) -> None:
        """
        Every SMTP listener's policy asks the process's sharing service about a local address
        without an account, with a budget per session of C{sharing.lookups_per_session}.
        """
        self.configure(
            SHARING.replace("enable = true\n\n[[", "enable = true\nlookups_per_session = 1\n\n[[")
        )
        config = load_config(self.config)
        asked: list[tuple[str, int]] = []

        @implementer(ISharingLookup)
        class Sharing:
            def lookup(
                self, address: str, client: ClientInfo, budget: LookupBudget | None = None
            ) -> Deferred[SharingAnswer]:
                assert budget is not None
                asked.append((address, budget.limit))
                return succeed(SharingAnswer.found("127.0.0.2:2525"))

            def local_account(self, address: str) -> None:
                pass

        directory = FakeDirectory([], ["example.test"])
        reactor = FakeUDPReactor()
        for listen in config.smtp.listen:
            factory = smtp_factory(
                config,
                listen,
                directory,
                None,  # type: ignore[arg-type]
                None,
                reactor,
                login_portal(config, directory, reactor),
                sharing=Sharing(),
            )
            policy = factory.policy
            assert isinstance(policy, ReceivePolicy)
            client = ClientInfo("192.0.2.9", "client.test", user="alice@example.test")
            decision = self.successResultOf(
                policy.for_session().check_recipient(client, "", "carol@example.test")
            )
            self.assertEqual(decision.route, Route.sharing_peer("127.0.0.2:2525"))
        self.assertEqual(asked, [("carol@example.test", 1)] * len(config.smtp.listen))

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
