"""
Recipient routes against the real daemon: postmaster, duplicate recipients, and a spool
written by the release before routes.
"""

from __future__ import annotations

import smtplib
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import Daemon
from tests.integration.peers import find_program
from tests.integration.test_smtp_daemon import wait_for
from tests.spool.fakes import write_v3_spool

ALICE = "alice@example.test"
BOB = "bob@example.test"


class RouteDaemonTests(SynchronousTestCase):
    """
    The daemon resolves postmaster, delivers one copy per mailbox, and upgrades old spools.
    """

    def start(self, **kwargs: Any) -> Daemon:
        """
        Start a daemon in a private directory, stopped when the test ends.

        @return: the running daemon.
        """
        daemon = Daemon(Path(self.mktemp()), **kwargs)
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def settle(self, daemon: Daemon) -> None:
        """
        Wait until the daemon's queue is empty: every recipient has its final state.
        """

        def empty() -> bool:
            reader = SpoolReader(daemon.spool)
            try:
                return reader.list() == []
            finally:
                reader.close()

        self.assertTrue(wait_for(empty), f"queue not empty; log:\n{daemon.log()[-3000:]}")

    def test_postmaster_mailbox(self) -> None:
        """
        With C{server.postmaster} set, swaks sends to a bare postmaster and to postmaster at
        the local domain; both are accepted and reach alice's mailbox, once.
        """
        daemon = self.start(server_extra=f'postmaster = "{ALICE}"')
        result = subprocess.run(
            [
                find_program("swaks"),
                "--server",
                "127.0.0.1",
                "--port",
                str(daemon.mx_port),
                "--timeout",
                "20",
                "--from",
                "someone@elsewhere.test",
                "--to",
                "postmaster,PostMaster@Example.Test",
                "--header",
                "Subject: to the postmaster",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stdout)
        self.assertEqual(result.stdout.count("<-  250 2.1.5"), 2, result.stdout)
        self.settle(daemon)
        [message] = daemon.messages(ALICE)
        self.assertIn(b"Subject: to the postmaster", message)

    def test_postmaster_refused_without_mailbox(self) -> None:
        """
        Without C{server.postmaster} and without a postmaster account, RCPT to postmaster is
        refused with 550 5.1.1 at once (never accepted and bounced later); nothing is queued.
        """
        daemon = self.start()
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
            client.ehlo("client.test")
            client.mail("someone@elsewhere.test")
            for rcpt in ("postmaster", "postmaster@example.test"):
                code, text = client.rcpt(rcpt)
                self.assertEqual(code, 550, rcpt)
                self.assertTrue(text.startswith(b"5.1.1"), text)
        reader = SpoolReader(daemon.spool)
        self.addCleanup(reader.close)
        self.assertEqual(reader.list(), [])

    def test_duplicate_recipients_one_copy(self) -> None:
        """
        A hundred RCPTs of alice in one transaction (the limit) each get 250, and alice gets
        one copy; the same with her address in another case next to bob's.
        """
        daemon = self.start()
        for recipients in ([ALICE] * 100, [ALICE, "ALICE@EXAMPLE.TEST", BOB, ALICE]):
            with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
                refused = client.sendmail(
                    "someone@elsewhere.test", recipients, b"Subject: many\r\n\r\nbody\r\n"
                )
            self.assertEqual(refused, {})
        self.settle(daemon)
        self.assertEqual(len(daemon.messages(ALICE)), 2)
        self.assertEqual(len(daemon.messages(BOB)), 1)

    def test_version_3_spool_delivers(self) -> None:
        """
        A spool written by the release before routes (schema version 3) is opened by the
        daemon, upgraded in place, and its mail is delivered.
        """
        daemon = Daemon(Path(self.mktemp()))
        write_v3_spool(daemon.spool, [ALICE, BOB], b"Subject: from the old release\r\n\r\nhi\r\n")
        daemon.start()
        self.addCleanup(daemon.stop)
        self.settle(daemon)
        for address in (ALICE, BOB):
            [message] = daemon.messages(address)
            self.assertIn(b"Subject: from the old release", message)
        self.assertIn("Migrating the spool schema from version 3 to 4", daemon.log())
