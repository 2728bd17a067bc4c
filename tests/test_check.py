"""
Tests for L{mdtwist.check} without a directory server: the configuration, the accounts file
and the TLS files, through C{mdtwistctl check}.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main
from tests.support.tls import make_certificate

_ETC = Path(__file__).resolve().parents[1] / "etc"


class CheckTests(SynchronousTestCase):
    """
    C{mdtwistctl check} says what is right, names every problem and exits 1 on one.
    """

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        (self.root / "etc").mkdir(parents=True)
        shutil.copy(_ETC / "accounts.toml", self.root / "etc")
        make_certificate(self.root / "var" / "tls")
        self.config = self.root / "etc" / "mdtwist.toml"
        self.config.write_text((_ETC / "mdtwist.toml").read_text())

    def run_check(self, *args: str) -> tuple[int, list[str]]:
        out = io.StringIO()
        status = main(["--config", str(self.config), "check", *args], stdout=out)
        return status, out.getvalue().splitlines()

    def test_good(self) -> None:
        """
        The demo configuration, its accounts and its certificate are all good.
        """
        status, lines = self.run_check()
        self.assertEqual(status, 0)
        self.assertEqual(lines[0], f"ok: {self.config}: configuration is valid")
        self.assertTrue(lines[1].endswith("accounts.toml: 3 accounts"), lines)
        self.assertTrue(lines[2].endswith("cert.pem: the certificate and its key load"), lines)

    def test_bad_config(self) -> None:
        """
        Every configuration problem is a line and the status is 1.
        """
        self.config.write_text(self.config.read_text() + "\n[bogus]\n")
        status, lines = self.run_check()
        self.assertEqual((status, lines), (1, [f"{self.config}: bogus: unknown key"]))

    def test_bad_accounts(self) -> None:
        """
        A broken accounts file is named with its problem.
        """
        (self.root / "etc" / "accounts.toml").write_text("domains = [")
        status, lines = self.run_check()
        self.assertEqual(status, 1)
        self.assertIn("accounts.toml: not valid TOML", lines[-2])

    def test_bad_certificate(self) -> None:
        """
        A certificate that does not load is a problem.
        """
        (self.root / "var" / "tls" / "cert.pem").write_text("not a certificate\n")
        status, lines = self.run_check()
        self.assertEqual(status, 1)
        self.assertIn("cert.pem", lines[-1])

    def test_ldap_needs_ldap(self) -> None:
        """
        C{--ldap} with the file backend is a problem.
        """
        status, lines = self.run_check("--ldap")
        self.assertEqual(status, 1)
        self.assertEqual(
            lines[-1],
            f"{self.config}: directory.backend: --ldap: the directory backend is not 'ldap'",
        )
