"""
Tests for the C{[minger]} and C{[sharing]} tables of L{mdtwist.config}.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import MingerConfig, SharingConfig, SharingPeerConfig, load_config
from mdtwist.errors import ConfigError
from tests.test_config import GOOD

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
PEERS = """
[sharing]
enable = true

[[sharing.peers]]
host = "mail2.example.test:2525"
password = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
hardened = true

[[sharing.peers]]
host = "192.0.2.3"
minger_port = 14069

[[sharing.peers]]
host = "2001:db8::4"

[[sharing.peers]]
host = "[2001:db8::5]:587"
"""


class SharingConfigTests(SynchronousTestCase):
    """
    The Minger server and Domain Sharing settings.
    """

    def write(self, text: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(GOOD + text)
        return path

    def problems(self, text: str) -> list[str]:
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        prefix = f"{path}: "
        for line in error.problems:
            self.assertTrue(line.startswith(prefix), line)
        return [line[len(prefix) :] for line in error.problems]

    def test_defaults(self) -> None:
        """
        Without the tables, the Minger server and Domain Sharing are off.
        """
        config = load_config(self.write(""))
        self.assertEqual(config.minger, MingerConfig())
        self.assertEqual(config.sharing, SharingConfig())
        self.assertFalse(config.minger.enable)
        self.assertEqual((config.minger.interface, config.minger.port), ("127.0.0.1", 4069))
        self.assertIsNone(config.minger.allowed_sources)
        self.assertTrue(config.sharing.no_smarthost_on_error)
        self.assertEqual(config.sharing.lookups_per_session, 20)

    def test_lookups_per_session(self) -> None:
        """
        C{lookups_per_session} is read, and must be above 0.
        """
        config = load_config(self.write("[sharing]\nlookups_per_session = 5\n"))
        self.assertEqual(config.sharing.lookups_per_session, 5)
        self.assertEqual(
            self.problems("[sharing]\nlookups_per_session = 0\n"),
            ["sharing.lookups_per_session: must be greater than 0"],
        )

    def test_peers(self) -> None:
        """
        Each peer is C{host[:smtp-port]} (C{[address]:port} for IPv6) with its Minger port,
        password and mode; the route is the SMTP C{host:port}.
        """
        config = load_config(self.write(PEERS))
        first, second, third, fourth = config.sharing.peers
        assert first.password is not None
        self.assertEqual(first.password.reveal(), SECRET)
        self.assertEqual(
            first,
            SharingPeerConfig("mail2.example.test", 2525, 4069, first.password, hardened=True),
        )
        self.assertEqual(second, SharingPeerConfig("192.0.2.3", 25, 14069))
        self.assertEqual((third.host, third.smtp_port), ("2001:db8::4", 25))
        self.assertEqual((fourth.host, fourth.smtp_port), ("2001:db8::5", 587))
        self.assertEqual(
            [p.route for p in config.sharing.peers],
            ["mail2.example.test:2525", "192.0.2.3:25", "[2001:db8::4]:25", "[2001:db8::5]:587"],
        )
        self.assertNotIn(SECRET, repr(config))

    def test_minger(self) -> None:
        """
        Every C{[minger]} key is read.
        """
        config = load_config(
            self.write(
                f"""
[minger]
enable = true
interface = "::1"
port = 14069
secret = "{SECRET}"
anonymous = true
foreign_aliases_active = true
allowed_sources = ["192.0.2.0/24", "::1"]
hardened_sources = ["192.0.2.7"]
reply_to_denied = true
rate = 5
burst = 10
global_rate = 100.0
unknown_budget = 7
unknown_window = 60
unknown_pause = 120
"""
            )
        )
        minger = config.minger
        assert minger.secret is not None
        self.assertEqual(minger.secret.reveal(), SECRET)
        self.assertEqual(
            minger,
            MingerConfig(
                enable=True,
                interface="::1",
                port=14069,
                secret=minger.secret,
                anonymous=True,
                foreign_aliases_active=True,
                allowed_sources=("192.0.2.0/24", "::1"),
                hardened_sources=("192.0.2.7",),
                reply_to_denied=True,
                rate=5.0,
                burst=10,
                global_rate=100.0,
                unknown_budget=7,
                unknown_window=60.0,
                unknown_pause=120.0,
            ),
        )

    def test_secret_file(self) -> None:
        """
        The secret may come from a file of mode 0600.
        """
        path = self.write('[minger]\nenable = true\nsecret_file = "minger.secret"\n' + PEERS)
        secret = path.parent / "minger.secret"
        secret.write_text(SECRET + "\n")
        os.chmod(secret, 0o600)
        minger = load_config(path).minger
        assert minger.secret is not None
        self.assertEqual(minger.secret.reveal(), SECRET)

    def test_minger_needs_secret(self) -> None:
        """
        An enabled server needs a secret of at least 16 characters unless anonymous queries
        are on, and an allow-list when there are no sharing peers.
        """
        self.assertEqual(
            self.problems("[minger]\nenable = true\n"),
            [
                "minger.secret: required unless anonymous = true",
                "minger.allowed_sources: required when [sharing] lists no peers"
                " (the default allows only the peers)",
            ],
        )
        self.assertEqual(
            self.problems('[minger]\nenable = true\nsecret = "short"\n' + PEERS),
            ["minger.secret: must be at least 16 characters"],
        )
        self.assertEqual(
            self.problems('[minger]\nsecret = "sixteen chars with spaces"\n'),
            ["minger.secret: must be printable ASCII without spaces"],
        )
        config = load_config(
            self.write('[minger]\nenable = true\nanonymous = true\nallowed_sources = ["::1"]\n')
        )
        self.assertIsNone(config.minger.secret)

    def test_minger_problems(self) -> None:
        """
        Bad values are named with their keys.
        """
        self.assertEqual(
            self.problems(
                """
[minger]
enable = true
anonymous = true
interface = "localhost"
port = 70000
allowed_sources = ["192.0.2.300/24"]
hardened_sources = ["192.0.2.1"]
rate = 0
unknown_budget = -1
color = "blue"
"""
            ),
            [
                "minger.color: unknown key",
                "minger.allowed_sources: '192.0.2.300/24' does not appear to be an IPv4 or"
                " IPv6 network",
                "minger.rate: must be greater than 0",
                "minger.unknown_budget: must be greater than 0",
                "minger.port: must be at most 65535",
                "minger.interface: must be an IP address (such as 127.0.0.1)",
                "minger.hardened_sources: the hardened form needs a secret",
            ],
        )

    def test_sharing_problems(self) -> None:
        """
        Bad peers are named with their index; enabling sharing needs a peer.
        """
        self.assertEqual(
            self.problems("[sharing]\nenable = true\n"),
            ["sharing.peers: list at least one peer when enable = true"],
        )
        self.assertEqual(
            self.problems(
                """
[sharing]
timeout = 0
peers = [
    "mail2.example.test",
    { host = "mail3.example.test:99999" },
    { host = "" },
    { host = "mail4.example.test", hardened = true, minger_port = 70000 },
    { host = "mail5.example.test", password = "a", password_file = "b", x = 1 },
]
"""
            ),
            [
                "sharing.peers[0]: expected a table, got a string",
                "sharing.peers[1].host: must be host or host:port ([address]:port)",
                "sharing.peers[2].host: must not be empty",
                "sharing.peers[2].host: must be host or host:port ([address]:port)",
                "sharing.peers[3].minger_port: must be at most 65535",
                "sharing.peers[3].hardened: the hardened form needs a password",
                "sharing.peers[4].x: unknown key",
                "sharing.peers[4].password: give either password or password_file, not both",
                "sharing.timeout: must be greater than 0",
            ],
        )
