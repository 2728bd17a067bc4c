"""
Tests for the C{mdtwistctl} commands of L{mdtwist.sharing.commands} that need no network (the
queries are tested against the real daemon in C{tests.integration.test_minger_daemon}).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main
from mdtwist.config import load_config
from mdtwist.sharing.cache import CACHE_NAME, CacheStore
from mdtwist.sharing.commands import ask_peers
from tests.test_config import GOOD


class CacheCommandTests(SynchronousTestCase):
    """
    C{mdtwistctl sharing cache list|drop}.
    """

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        self.spool = self.root / "spool"
        self.spool.mkdir(parents=True)

    def ctl(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(args), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def fill(self) -> None:
        store = CacheStore(self.spool / CACHE_NAME)
        store.put("bob@example.test", "mail2.example.test:25", 1_700_000_000.0 + 0.0)
        store.put("carol@example.test", "[2001:db8::5]:587", time.time())
        store.put("amy@example.test", "mail3.example.test:25", time.time())
        store.close()

    def test_list(self) -> None:
        """
        The live entries are listed by address with their peer; expired ones are not.
        """
        self.fill()
        status, out, err = self.ctl("sharing", "cache", "list", "--spool", str(self.spool))
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(
            [line.split("  ")[:2] for line in lines[:-1]],
            [
                ["amy@example.test", "mail3.example.test:25"],
                ["carol@example.test", "[2001:db8::5]:587"],
            ],
        )
        self.assertEqual(lines[-1], "2 addresses")

    def test_list_empty(self) -> None:
        """
        Without a cache file there is nothing to list (and no file is made).
        """
        self.assertEqual(
            self.ctl("sharing", "cache", "list", "--spool", str(self.spool)),
            (0, "0 addresses\n", ""),
        )
        self.assertFalse((self.spool / CACHE_NAME).exists())

    def test_drop(self) -> None:
        """
        Drop forgets an address (any case); dropping one that is not cached exits 1.
        """
        self.fill()
        spool = ("--spool", str(self.spool))
        self.assertEqual(
            self.ctl("sharing", "cache", "drop", "AMY@example.test", *spool),
            (0, "AMY@example.test: dropped\n", ""),
        )
        status, _, err = self.ctl("sharing", "cache", "drop", "amy@example.test", *spool)
        self.assertEqual(status, 1)
        self.assertIn("amy@example.test is not in the sharing cache", err)

    def test_config(self) -> None:
        """
        With --config, the cache beside the configured spool is used.
        """
        (self.root / "mdtwist.toml").write_text(GOOD)
        self.fill()
        status, out, _ = self.ctl(
            "sharing", "cache", "list", "--config", str(self.root / "mdtwist.toml")
        )
        self.assertEqual((status, out.splitlines()[-1]), (0, "2 addresses"))

    def test_top_level_config(self) -> None:
        """
        C{mdtwistctl --config FILE sharing ...} (the option before the command, as every other
        command takes it) is used too.
        """
        (self.root / "mdtwist.toml").write_text(GOOD)
        self.fill()
        config = str(self.root / "mdtwist.toml")
        status, out, _ = self.ctl("--config", config, "sharing", "cache", "list")
        self.assertEqual((status, out.splitlines()[-1]), (0, "2 addresses"))
        status, _, err = self.ctl("--config", config, "sharing", "check", "x@example.test")
        self.assertEqual(status, 1)
        self.assertIn("sharing.peers: no peers to ask", err)

    def test_ask_peers_without_peers(self) -> None:
        """
        L{ask_peers} with no peers configured finds the address free; an address that cannot
        travel over Minger is refused.
        """
        (self.root / "mdtwist.toml").write_text(GOOD)
        config = load_config(self.root / "mdtwist.toml")
        self.assertTrue(ask_peers(config, "new@example.test").free)
        self.assertRaises(ValueError, ask_peers, config, "not an address")

    def test_bad_config(self) -> None:
        """
        A configuration with problems is reported line by line, exit status 1.
        """
        config = self.root / "bad.toml"
        config.write_text(GOOD + "\n[sharing]\nenable = true\n")
        status, _, err = self.ctl("sharing", "check", "x@example.test", "--config", str(config))
        self.assertEqual(status, 1)
        self.assertIn("sharing.peers: list at least one peer when enable = true", err)


class UsageTests(SynchronousTestCase):
    """
    Incomplete or bad command lines.
    """

    def ctl(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(args), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def test_incomplete(self) -> None:
        """
        A command without its subcommand lists its subcommands, exit status 2.
        """
        for args in (("minger",), ("sharing",), ("sharing", "cache")):
            status, out, _ = self.ctl(*args)
            self.assertEqual(status, 2, args)
            self.assertIn("usage:", out)

    def test_bad_query(self) -> None:
        """
        A bad server or address is refused before anything is sent, exit status 1.
        """
        status, _, err = self.ctl("minger", "query", "host:x", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertIn("'host:x' is not HOST or HOST:PORT", err)
        status, _, err = self.ctl("minger", "query", "127.0.0.1", "not an address")
        self.assertEqual(status, 1)
        self.assertIn("cannot be asked about over Minger", err)

    def test_no_peers(self) -> None:
        """
        Sharing check without peers says so.
        """
        root = Path(self.mktemp())
        root.mkdir()
        (root / "mdtwist.toml").write_text(GOOD)
        status, _, err = self.ctl(
            "sharing", "check", "x@example.test", "--config", str(root / "mdtwist.toml")
        )
        self.assertEqual(status, 1)
        self.assertIn("sharing.peers: no peers to ask", err)
