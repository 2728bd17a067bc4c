"""
Tests for L{mdtwist.tap} and L{mdtwist.services}: what the daemon builds from a configuration.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import ListenerMode
from mdtwist.smtp.server import SMTPServerFactory
from mdtwist.spool.store import DATABASE_NAME
from mdtwist.tap import Options, build
from tests.support.tls import make_certificate

_ETC = Path(__file__).resolve().parent.parent / "etc"


class BuildTests(SynchronousTestCase):
    """
    makeService builds the named children and opens exactly the configured listeners.
    """

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        (self.root / "etc").mkdir(parents=True)
        shutil.copy(_ETC / "accounts.toml", self.root / "etc")
        make_certificate(self.root / "var" / "tls")
        self.config = self.root / "etc" / "mdtwist.toml"
        self.config.write_text((_ETC / "mdtwist.toml").read_text())

    def build(self, *args: str) -> tuple[MultiService, MemoryReactorClock]:
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        reactor = MemoryReactorClock()
        service = build(options, reactor, stderr=io.StringIO())
        assert isinstance(service, MultiService)
        return service, reactor

    def test_children(self) -> None:
        """
        The service tree has its named children, pools first and listeners last.
        """
        service, _ = self.build()
        self.assertEqual(
            [child.name for child in service],
            [
                "directory",
                "spool-io",
                "spool-read",
                "delivery-io",
                "spool",
                "smtp-client-close",
                "queue",
                "smtp-0-mx",
                "smtp-1-submission",
            ],
        )

    def test_listeners(self) -> None:
        """
        Starting the service listens on exactly the configured ports and interfaces, each with
        an SMTP factory of the listener's mode.
        """
        service, reactor = self.build()
        self.assertEqual(reactor.tcpServers, [])
        service.privilegedStartService()
        listening = {
            (port, interface): factory for port, factory, _, interface in reactor.tcpServers
        }
        self.assertEqual(sorted(listening), [(2525, "127.0.0.1"), (2587, "127.0.0.1")])
        self.assertTrue(all(isinstance(f, SMTPServerFactory) for f in listening.values()))
        modes = {key: f.mode for key, f in listening.items() if isinstance(f, SMTPServerFactory)}
        self.assertEqual(
            modes,
            {(2525, "127.0.0.1"): ListenerMode.MX, (2587, "127.0.0.1"): ListenerMode.SUBMISSION},
        )

    def test_extra_listener(self) -> None:
        """
        A third [[smtp.listen]] table gives a third listener with its mode in its name.
        """
        self.config.write_text(
            self.config.read_text()
            + '\n[[smtp.listen]]\nendpoint = "tcp:2465:interface=127.0.0.2"\nmode = "smtps"\n'
        )
        service, reactor = self.build()
        self.assertEqual(service.getServiceNamed("smtp-2-smtps").name, "smtp-2-smtps")
        service.privilegedStartService()
        self.assertIn((2465, "127.0.0.2"), [(p, i) for p, _, _, i in reactor.tcpServers])

    def run_build(self, *args: str) -> tuple[int, str]:
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        stderr = io.StringIO()
        error = self.assertRaises(SystemExit, build, options, MemoryReactorClock(), stderr)
        return int(error.code or 0), stderr.getvalue()

    def test_check_good(self) -> None:
        """
        --check on a good file exits 0 and says so.
        """
        code, text = self.run_build("--check")
        self.assertEqual((code, text), (0, f"{self.config}: configuration is valid\n"))

    def test_check_bad(self) -> None:
        """
        A bad file exits 1 with one line per problem, with or without --check.
        """
        self.config.write_text(
            self.config.read_text().replace("tcp:2525:interface=127.0.0.1", "tcp:x") + "\n[oops]\n"
        )
        for args in (("--check",), ()):
            code, text = self.run_build(*args)
            lines = text.splitlines()
            self.assertEqual(code, 1)
            self.assertEqual(len(lines), 2, lines)
            self.assertTrue(lines[0].startswith(f"{self.config}: "))
            self.assertIn("oops: unknown key", text)
            self.assertIn("smtp.listen[0].endpoint: not a valid server endpoint", text)

    def test_bad_accounts_file(self) -> None:
        """
        A broken accounts file stops start-up with its problems.
        """
        (self.root / "etc" / "accounts.toml").write_text('domains = "x"\n')
        code, text = self.run_build("--check")
        self.assertEqual(code, 1)
        self.assertIn("accounts.toml: domains: expected an array of strings", text)

    def test_unusable_spool(self) -> None:
        """
        A spool directory that cannot be created stops start-up with a clear line.
        """
        (self.root / "var" / "spool").parent.mkdir(exist_ok=True)
        (self.root / "var" / "spool").write_text("a file, not a directory")
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("spool.directory: cannot use", text)

    def test_spool_database_unreadable(self) -> None:
        """
        A spool whose database file is not a database stops start-up with the reason.
        """
        spool = self.root / "var" / "spool"
        spool.mkdir(parents=True)
        (spool / DATABASE_NAME).write_bytes(b"not a database" * 100)
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("spool.directory: cannot use", text)
        self.assertIn("file is not a database", text)

    def test_unusable_maildir_root(self) -> None:
        """
        A Maildir root that cannot be created stops start-up with a clear line.
        """
        (self.root / "var").mkdir(exist_ok=True)
        (self.root / "var" / "mail").write_text("a file, not a directory")
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("delivery.maildir_root: cannot use", text)

    def test_ldap_closed_after_its_pool(self) -> None:
        """
        With the LDAP backend, the step that unbinds LDAP connections comes before the
        directory pool, so that it runs after the pool has stopped (children stop in reverse).
        """
        text = self.config.read_text().replace('backend = "file"', 'backend = "ldap"')
        text += (
            '\n[directory.ldap]\nurl = "ldap://127.0.0.1:3890"\n'
            'base_dn = "dc=example,dc=com"\ndomains = ["example.test"]\n'
        )
        self.config.write_text(text)
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(names[:2], ["directory-close", "directory"])
