"""
The shipped LDAP examples (C{etc/ldap/example.ldif}, C{etc/ldap/slapd-acl.conf}) in a real
slapd with the test suite's schema set, and the real daemon on them: C{mdtwistctl check --ldap}
passes as the example service DN, and the reply codes the operator guide documents are the
ones a client gets (alias, disabled account, unknown address, directory down).
"""

from __future__ import annotations

import base64
import smtplib
import ssl
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.peers import find_program, run_checked
from tests.integration.slapd import _SCHEMAS, ROOT_DN, ROOT_PASSWORD, Slapd, _hash

_ROOT = Path(__file__).resolve().parents[2]
_EXAMPLES = _ROOT / "etc" / "ldap"
_WAIT = 30.0

_SLAPD_CONF = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile  {directory}/slapd.pid
argsfile {directory}/slapd.args

database mdb
maxsize 104857600
suffix  "dc=example,dc=com"
rootdn  "{root_dn}"
rootpw  {root_hash}
directory {directory}/db
index objectClass eq
index mail,uid,mailLocalAddress eq
include {acl}
"""

_LDAP_DIRECTORY = """backend = "ldap"

[directory.ldap]
url = "{url}"
bind_dn = "cn=mdtwist,ou=services,dc=example,dc=com"
bind_password = "mdtwist-example"
base_dn = "ou=people,dc=example,dc=com"
domains = ["example.com", "example.org"]

[directory.ldap.attributes]
status = "employeeType"
"""


class _ExampleSlapd(Slapd):
    """
    A slapd whose rules and data are the shipped examples.
    """

    def build(self) -> None:
        """
        Write the configuration with the example ACL and load the example LDIF.
        """
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        config = _SLAPD_CONF.format(
            includes="\n".join(f"include /etc/ldap/schema/{name}.schema" for name in _SCHEMAS),
            directory=self.directory,
            root_dn=ROOT_DN,
            root_hash=_hash(find_program("slappasswd"), ROOT_PASSWORD),
            acl=_EXAMPLES / "slapd-acl.conf",
        )
        conf = self.directory / "slapd.conf"
        conf.write_text(config)
        run_checked([find_program("slaptest"), "-u", "-f", str(conf)])
        ldif = str(_EXAMPLES / "example.ldif")
        run_checked([find_program("slapadd"), "-q", "-f", str(conf), "-l", ldif])


class ExampleDirectoryTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def setUp(self) -> None:
        self.slapd = _ExampleSlapd(Path(self.mktemp()))
        self.slapd.build()
        self.addCleanup(self.slapd.stop)
        self.slapd.start()
        self.daemon = Daemon(Path(self.mktemp()), domain="example.com")
        text = self.daemon.config.read_text()
        file_backend = 'backend = "file"\n\n[directory.file]\npath = "accounts.toml"\n'
        assert file_backend in text
        self.daemon.config.write_text(
            text.replace(file_backend, _LDAP_DIRECTORY.format(url=self.slapd.url))
        )
        self.addCleanup(self.daemon.stop)

    def test_check_passes(self) -> None:
        """
        C{mdtwistctl check --ldap} as the example service DN finds everything it needs.
        """
        program = str(Path(sys.executable).parent / "mdtwistctl")
        result = subprocess.run(
            [program, "--config", str(self.daemon.config), "check", "--ldap"],
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        [read] = [line for line in result.stdout.splitlines() if "match the filter" in line]
        for name in ("cn", "employeeType", "givenName", "mail", "mailLocalAddress", "sn", "uid"):
            self.assertIn(name, read)

    def rcpt(self, address: str) -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
            client.ehlo("client.example")
            client.mail("someone@elsewhere.test")
            code, text = client.rcpt(address)
            return code, text.decode()[:5]

    def auth(self, login: str, password: str) -> tuple[int, str]:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", self.daemon.submission_port, timeout=_WAIT) as client:
            client.starttls(context=context)
            client.ehlo("client.example")
            token = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
            code, text = client.docmd("AUTH", f"PLAIN {token}")
            return code, text.decode()[:5]

    def test_reply_codes(self) -> None:
        """
        Alias and primary address: 250; disabled account: 550 5.2.1; unknown: 550 5.1.1;
        a login with the example password works. With slapd down: an address not in the
        cache gets 451 4.3.0 and AUTH 454 4.7.0; one in the cache is still accepted.
        """
        self.daemon.start()
        self.assertEqual(self.rcpt("alice@example.com")[0], 250)
        self.assertEqual(self.rcpt("alice@example.org")[0], 250)
        self.assertEqual(self.rcpt("postmaster@example.com")[0], 250)
        self.assertEqual(self.rcpt("bob@example.com"), (550, "5.2.1"))
        self.assertEqual(self.rcpt("nobody@example.com"), (550, "5.1.1"))
        self.assertEqual(self.auth("alice", "alice-example")[0], 235)
        self.assertEqual(self.auth("bob", "bob-example")[0], 535)
        self.slapd.stop()
        self.assertEqual(self.rcpt("someone.new@example.com"), (451, "4.3.0"))
        self.assertEqual(self.auth("alice", "alice-example"), (454, "4.7.0"))
        self.assertEqual(self.rcpt("alice@example.com")[0], 250)
