"""
C{mdtwistctl discover} against real servers on loopback: Dovecot's IMAP (implicit TLS and
STARTTLS) and mdtwist's own SMTP (submission with STARTTLS, smtps with implicit TLS), with
host names mapped to 127.0.0.x and the client's ports mapped to free ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.dovecot import Dovecot
from tests.integration.peers import free_port

ALICE = "alice@example.test"


class DiscoverTests(SynchronousTestCase):
    def setUp(self) -> None:
        root = Path(self.mktemp())
        self.smtps_port = free_port()
        self.closed_port = free_port()  # nothing listens here
        self.daemon = Daemon(root / "mdtwist", extra_ports=(self.smtps_port,))
        key, cert = self.daemon.key, self.daemon.certificate
        self.daemon.config.write_text(
            self.daemon.config.read_text()
            + f"""
[[smtp.listen]]
endpoint = "ssl:{self.smtps_port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
mode = "smtps"
"""
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)
        self.dovecot = Dovecot(root / "dovecot", {ALICE: PASSWORDS[ALICE]}, imap_tls=(cert, key))
        self.dovecot.start()
        self.addCleanup(self.dovecot.stop)

    def discover(
        self, *args: str, password: str = PASSWORDS[ALICE], imaps: bool = True
    ) -> tuple[int, dict[str, Any]]:
        ports = {
            993: self.dovecot.imaps_port if imaps else self.closed_port,
            143: self.dovecot.imap_port,
            587: self.daemon.submission_port,
            465: self.smtps_port,
            25: self.closed_port,
        }
        argv = [
            str(Path(sys.executable).parent / "mdtwistctl"),
            "discover",
            ALICE,
            "--password-stdin",
            "--only-mapped",
            "--json",
            "--timeout",
            "5",
            "--ca-file",
            str(self.daemon.certificate),
            *[f"--port-map={a}={b}" for a, b in ports.items()],
            *args,
        ]
        result = subprocess.run(
            argv, input=password + "\n", capture_output=True, text=True, timeout=120
        )
        self.assertEqual(result.stderr, "")
        return result.returncode, json.loads(result.stdout)

    def test_mdaemon_order(self) -> None:
        """
        The MDaemon order finds IMAP with implicit TLS on mail.D and SMTP with STARTTLS on
        587 (implicit TLS on 587 fails first), and logs in to both.
        """
        status, report = self.discover("--resolve", "mail.example.test=127.0.0.1")
        self.assertEqual(status, 0, report)
        imap, smtp = report["chosen"]["imap"], report["chosen"]["smtp"]
        self.assertEqual(
            (imap["host"], imap["port"], imap["security"]),
            ("mail.example.test", 993, "implicit-tls"),
        )
        self.assertTrue(imap["authenticated"])
        self.assertEqual((smtp["port"], smtp["security"]), (587, "starttls"))
        self.assertTrue(smtp["authenticated"])
        failed_first = next(t for t in report["tries"] if t["protocol"] == "smtp")
        self.assertEqual((failed_first["port"], failed_first["ok"]), (587, False))
        self.assertEqual(
            report["settings"]["advanced"],
            {
                "imap": {"security": "implicit-tls", "port": 993},
                "smtp": {"security": "starttls", "port": 587},
            },
        )

    def test_starttls_when_no_implicit_tls(self) -> None:
        """
        Without the implicit-TLS IMAP port, IMAP STARTTLS on 143 is chosen; RFC 8314 order
        prefers implicit TLS submission on 465.
        """
        status, report = self.discover(
            "--resolve", "mail.example.test=127.0.0.1", "--order", "rfc8314", imaps=False
        )
        self.assertEqual(status, 0, report)
        imap, smtp = report["chosen"]["imap"], report["chosen"]["smtp"]
        self.assertEqual((imap["port"], imap["security"]), (143, "starttls"))
        self.assertEqual((smtp["port"], smtp["security"]), (465, "implicit-tls"))

    def test_bad_certificate(self) -> None:
        """
        A certificate that does not name the host tried fails that try (no login sent).
        """
        status, report = self.discover(
            "--resolve", "imap.example.test=127.0.0.1", "--order", "rfc8314"
        )
        self.assertEqual(status, 1, report)
        tls_tries = [
            t for t in report["tries"] if t["host"] == "imap.example.test" and t["port"] == 993
        ]
        self.assertIn("certificate does not match the host name", tls_tries[0]["detail"])
        self.assertIsNone(tls_tries[0]["authenticated"])

    def test_rejected_password_stops_logins(self) -> None:
        """
        After a server rejects the password, no other try of that protocol sends it.
        """
        status, report = self.discover(
            "--resolve",
            "mail.example.test=127.0.0.1",
            "--resolve",
            "example.test=127.0.0.1",
            "--parallel",
            "1",
            password="wrong",
        )
        self.assertEqual(status, 1, report)
        for protocol in ("imap", "smtp"):
            tries = [t for t in report["tries"] if t["protocol"] == protocol]
            rejected = [t for t in tries if t["authenticated"] is False]
            self.assertEqual(len(rejected), 1, tries)
            self.assertEqual(rejected[0]["detail"], "the login was rejected")
            skipped = [
                t for t in tries if t["detail"].startswith("not tried: the password was rejected")
            ]
            self.assertTrue(skipped, tries)
