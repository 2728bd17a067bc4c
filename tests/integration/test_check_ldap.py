"""
C{mdtwistctl check --ldap} against a real OpenLDAP slapd with the test suite's schema set
(core, cosine, nis, inetorgperson, misc) and data.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.slapd import BASE_DN, ROOT_DN, ROOT_PASSWORD, start_slapd

_ROOT = Path(__file__).resolve().parents[2]

_CONFIG = """
[server]
hostname = "mx.example.test"
postmaster = "alice@example.com"

[[smtp.listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
mode = "mx"

[directory]
backend = "ldap"

[directory.ldap]
url = "{url}"
base_dn = "{base_dn}"
domains = ["example.com", "example.org"]
{extra}

[spool]
directory = "spool"

[delivery]
maildir_root = "mail"
"""


class CheckLDAPTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def setUp(self) -> None:
        self.slapd = start_slapd(self)

    def check(self, extra: str = "") -> tuple[int, list[str]]:
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        config = directory / "mdtwist.toml"
        config.write_text(_CONFIG.format(url=self.slapd.url, base_dn=BASE_DN, extra=extra))
        program = str(Path(sys.executable).parent / "mdtwistctl")
        result = subprocess.run(
            [program, "--config", str(config), "check", "--ldap"],
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
            cwd=_ROOT,
        )
        prefix = f"{config}: "
        lines = [line.removeprefix(prefix) for line in result.stdout.splitlines()]
        self.assertEqual(result.stderr, "")
        return result.returncode, lines

    def test_defaults_work_on_stock_openldap(self) -> None:
        """
        The default attributes and filters are all in the stock schema set; the anonymous
        bind DN reads the entries' addresses.
        """
        status, lines = self.check()
        self.assertEqual(status, 0, lines)
        self.assertIn(f"ok: {self.slapd.url}: bound as anonymous", lines)
        self.assertIn(f"ok: {BASE_DN}: exists", lines)
        self.assertIn("ok: every configured attribute is in the server's schema", lines)
        [read] = [line for line in lines if "match the filter" in line]
        self.assertIn("mail", read)
        self.assertIn("mailLocalAddress", read)

    def test_attribute_missing_from_schema(self) -> None:
        """
        An attribute of no loaded schema (the old default alias attribute) is a problem
        that names the key, and the filter that uses it is named too.
        """
        status, lines = self.check(
            'filter = "(&(objectClass=inetOrgPerson)(|(mail={address})'
            '(mailAlternateAddress={address})))"\n'
            "[directory.ldap.attributes]\n"
            'alias = "mailAlternateAddress"'
        )
        self.assertEqual(status, 1)
        reason = (
            "the server's schema has no attribute mailAlternateAddress (not in any stock"
            " OpenLDAP schema; misc.schema has mailLocalAddress)"
        )
        self.assertIn(f"directory.ldap.attributes.alias: {reason}", lines)
        self.assertIn(f"directory.ldap.filter: {reason}", lines)

    def test_compare_with_hashed_passwords(self) -> None:
        """
        C{auth_method = "compare"} with a bind DN that reads the hashed C{userPassword}
        values is a problem; anonymous (which may not read them) gets the warning.
        """
        status, lines = self.check(
            f'auth_method = "compare"\nbind_dn = "{ROOT_DN}"\nbind_password = "{ROOT_PASSWORD}"'
        )
        self.assertEqual(status, 1)
        [line] = [line for line in lines if line.startswith("directory.ldap.auth_method:")]
        self.assertIn("(hashed values found)", line)
        status, lines = self.check('auth_method = "compare"')
        self.assertEqual(status, 0)
        [line] = [line for line in lines if line.startswith("directory.ldap.auth_method:")]
        self.assertIn("warning: 'compare' compares the password as typed", line)

    def test_bad_bind(self) -> None:
        """
        A refused bind is one problem line and nothing else is tried.
        """
        status, lines = self.check(f'bind_dn = "{ROOT_DN}"\nbind_password = "wrong"')
        self.assertEqual(status, 1)
        self.assertEqual(
            lines[-1], f"directory.ldap.bind_dn: cannot bind as {ROOT_DN}: invalidCredentials"
        )

    def test_server_down(self) -> None:
        """
        A server that does not answer is a problem of the URL.
        """
        self.slapd.stop()
        status, lines = self.check()
        self.assertEqual(status, 1)
        self.assertTrue(
            lines[-1].startswith(f"directory.ldap.url: cannot connect to {self.slapd.url}: "),
            lines,
        )

    def test_not_ldap(self) -> None:
        """
        C{--ldap} with another backend says so.
        """
        directory = Path(self.mktemp()).resolve()
        directory.mkdir()
        (directory / "accounts.toml").write_text('domains = ["example.test"]\n')
        config = directory / "mdtwist.toml"
        text = _CONFIG.format(url=self.slapd.url, base_dn=BASE_DN, extra="")
        text = text.replace(
            'backend = "ldap"', 'backend = "file"\n[directory.file]\npath = "accounts.toml"'
        )
        config.write_text(text.split("[directory.ldap]")[0] + "[spool]" + text.split("[spool]")[1])
        program = str(Path(sys.executable).parent / "mdtwistctl")
        result = subprocess.run(
            [program, "--config", str(config), "check", "--ldap"],
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "directory.backend: --ldap: the directory backend is not 'ldap'", result.stdout
        )
