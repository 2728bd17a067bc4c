"""
The login portal's brute-force limit and its log line, against the real daemon.

Clients are stdlib C{smtplib} (exact AUTH PLAIN payloads, several loopback source addresses)
and swaks; both speak STARTTLS to the submission listener.
"""

from __future__ import annotations

import base64
import smtplib
import ssl
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.peers import find_program
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"
BOB = "bob@example.test"
#: The most failed logins per client address and per login name, in these tests.
LIMIT = 3


class LoginLimitTests(SynchronousTestCase):
    """
    Failed logins count per client address and per login name in the running daemon.
    """

    def setUp(self) -> None:
        self.daemon = Daemon(
            Path(self.mktemp()),
            smtp_extra=f"max_auth_failures = {LIMIT}\nauth_failure_window = 600.0",
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)

    def auth_plain(self, login: str, password: str, source: str = "127.0.0.1") -> int:
        """
        Connect from a loopback source address, say STARTTLS and try one AUTH PLAIN.

        @return: the reply code to AUTH.
        """
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(
            "127.0.0.1",
            self.daemon.submission_port,
            timeout=30,
            source_address=(source, 0),
        ) as client:
            client.starttls(context=context)
            client.ehlo()
            payload = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
            code, _ = client.docmd("AUTH", f"PLAIN {payload}")
            return code

    def swaks_login(self, login: str, password: str) -> subprocess.CompletedProcess[str]:
        """
        Try one login with swaks (STARTTLS, AUTH PLAIN) on the submission listener.
        """
        return subprocess.run(
            [
                find_program("swaks"),
                "--server",
                "127.0.0.1",
                "--port",
                str(self.daemon.submission_port),
                "--timeout",
                "30",
                "--tls",
                "--auth",
                "PLAIN",
                "--auth-user",
                login,
                "--auth-password",
                password,
                "--from",
                ALICE,
                "--to",
                BOB,
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )

    def test_different_logins_from_one_address(self) -> None:
        """
        Wrong passwords for different logins from one address reach the limit: then even
        alice's right password gets C{454 4.7.0} from that address (swaks sees it), while
        another address still logs her in. Each failure is logged with the service, the
        client address and the login with its control characters escaped, never the password.
        """
        logins = (BOB, "nobody@example.test", "evil\r\n\x1b[1mroot")
        for i, login in enumerate(logins):
            self.assertEqual(self.auth_plain(login, f"Wr0ng-Pa55-{i}"), 535)
        result = self.swaks_login(ALICE, PASSWORDS[ALICE])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("454 4.7.0", result.stdout + result.stderr)
        self.assertEqual(self.auth_plain(ALICE, PASSWORDS[ALICE], source="127.0.0.2"), 235)
        escaped = "smtp login failed for evil\\x0d\\x0a\\x1b[1mroot from 127.0.0.1"
        self.assertTrue(
            wait_for(lambda: escaped in self.daemon.log()),
            f"no escaped failure line; log:\n{self.daemon.log()[-3000:]}",
        )
        self.assertTrue(
            wait_for(lambda: "too many recent failures" in self.daemon.log()),
            f"no throttling line; log:\n{self.daemon.log()[-3000:]}",
        )
        log = self.daemon.log()
        self.assertIn(f"smtp login failed for {BOB} from 127.0.0.1", log)
        self.assertNotIn("\x1b", log)
        self.assertNotIn("Wr0ng-Pa55", log)
        self.assertNotIn(PASSWORDS[ALICE], log)

    def test_one_login_from_different_addresses(self) -> None:
        """
        Wrong passwords for one login from different addresses reach the limit for that
        login: its right password then gets C{454} from a fresh address, where another
        login still works.
        """
        for i in range(LIMIT):
            self.assertEqual(self.auth_plain(BOB, "wrong", source=f"127.0.0.{10 + i}"), 535)
        self.assertEqual(self.auth_plain(BOB, PASSWORDS[BOB], source="127.0.0.20"), 454)
        self.assertEqual(self.auth_plain(ALICE, PASSWORDS[ALICE], source="127.0.0.20"), 235)
