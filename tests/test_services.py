"""
Tests for L{mdtwist.services}: the builders that turn a configuration into objects.

The whole service tree is exercised through L{mdtwist.tap} in C{tests.test_tap}; these tests
check the builders' choices and their configuration errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import Config, LocalDelivery, load_config
from mdtwist.delivery.lmtp import LMTPDelivery
from mdtwist.delivery.local import MaildirDelivery
from mdtwist.errors import ConfigError
from mdtwist.services import build_local_delivery, dead_hosts, open_spool
from tests.test_config import GOOD


def _run(f: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
    return succeed(f(*args, **kwargs))


class BuilderTests(SynchronousTestCase):
    """
    Each builder follows the configuration and names the key of what it cannot use.
    """

    def config(self) -> Config:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(GOOD)
        return load_config(path)

    def test_maildir_delivery(self) -> None:
        """
        With C{local = "maildir"} the Maildir root is created and Maildir delivery is used.
        """
        config = self.config()
        delivery = build_local_delivery(config, MemoryReactorClock(), _run)
        self.assertIsInstance(delivery, MaildirDelivery)
        assert config.delivery.maildir_root is not None
        self.assertTrue(config.delivery.maildir_root.is_dir())

    def test_lmtp_delivery(self) -> None:
        """
        With C{local = "lmtp"} copies go to the LMTP server; no Maildir root is made.
        """
        config = self.config()
        delivery_config = attrs.evolve(
            config.delivery, local=LocalDelivery.LMTP, lmtp_endpoint="tcp:127.0.0.1:24"
        )
        config = attrs.evolve(config, delivery=delivery_config)
        delivery = build_local_delivery(config, MemoryReactorClock(), _run)
        self.assertIsInstance(delivery, LMTPDelivery)
        assert config.delivery.maildir_root is not None
        self.assertFalse(config.delivery.maildir_root.exists())

    def test_dead_host_cache(self) -> None:
        """
        The dead-host cache leaves a failed host alone for 5 minutes at first, and never
        longer than the remote queue's retry interval (a shorter interval shortens the first
        period too).
        """
        config = self.config()
        for interval, base, maximum in (
            (900.0, 300.0, 900.0),
            (1.0, 1.0, 1.0),
            (120.0, 120.0, 120.0),
            (7200.0, 300.0, 7200.0),
        ):
            queue = attrs.evolve(config.queue, remote_interval=interval)
            hosts = dead_hosts(attrs.evolve(config, queue=queue))
            self.assertEqual((hosts.base, hosts.maximum), (base, maximum))

    def test_unusable_maildir_root(self) -> None:
        """
        A Maildir root that cannot be created is a configuration error naming the key.
        """
        config = self.config()
        blocker = config.path.parent / "file"
        blocker.write_text("")
        config = attrs.evolve(
            config, delivery=attrs.evolve(config.delivery, maildir_root=blocker / "mail")
        )
        error = self.assertRaises(
            ConfigError, build_local_delivery, config, MemoryReactorClock(), _run
        )
        [problem] = error.problems
        self.assertTrue(problem.startswith(f"{config.path}: delivery.maildir_root: cannot use"))

    def test_unusable_spool(self) -> None:
        """
        A spool directory that cannot be created is a configuration error naming the key.
        """
        config = self.config()
        blocker = config.path.parent / "file"
        blocker.write_text("")
        config = attrs.evolve(
            config, spool=attrs.evolve(config.spool, directory=blocker / "spool")
        )
        error = self.assertRaises(ConfigError, open_spool, config, _run)
        [problem] = error.problems
        self.assertTrue(problem.startswith(f"{config.path}: spool.directory: cannot use"))
