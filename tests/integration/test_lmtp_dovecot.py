"""
Local delivery over LMTP into a real, private Dovecot, through the real daemon.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.model import MessageKind
from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import Daemon
from tests.integration.dovecot import Dovecot
from tests.integration.test_smtp_daemon import wait_for


class LMTPDovecotTests(SynchronousTestCase):
    """
    mdtwist hands local mail to Dovecot over LMTP and honours its per-recipient answers.
    """

    def test_delivery_and_refusal(self) -> None:
        """
        The account known to Dovecot (alice) gets the message; bob, in our directory but
        unknown to Dovecot, is refused by Dovecot with 550 5.1.1, which fails only that
        recipient: the message leaves the spool and a bounce for bob to the sender is queued.
        """
        root = Path(self.mktemp())
        dovecot = Dovecot(root / "dovecot", {"alice@example.test": "x"})
        dovecot.start()
        self.addCleanup(dovecot.stop)
        daemon = Daemon(
            root / "mdtwist",
            delivery=f'local = "lmtp"\nlmtp_endpoint = "tcp:127.0.0.1:{dovecot.lmtp_port}"',
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
            refused = client.sendmail(
                "s@elsewhere.test",
                ["alice@example.test", "bob@example.test"],
                b"Subject: over lmtp\r\n\r\n.dot line\r\nend\r\n",
            )
        self.assertEqual(refused, {})
        self.assertTrue(
            wait_for(lambda: dovecot.messages("alice@example.test")), daemon.log()[-2000:]
        )
        [message] = dovecot.messages("alice@example.test")
        self.assertIn(b"Return-Path: <s@elsewhere.test>", message)
        self.assertIn(b"Subject: over lmtp", message)
        self.assertIn(b"\n.dot line\n", message)
        self.assertIn(b"by mail.example.test (mdtwist)", message)

        reader = SpoolReader(daemon.spool)
        self.addCleanup(reader.close)

        def only_the_bounce_left() -> bool:
            entries = reader.list()
            return len(entries) == 1 and entries[0].kind is MessageKind.NOTICE

        self.assertTrue(wait_for(only_the_bounce_left), daemon.log()[-2000:])
        [entry] = reader.list()
        self.assertEqual(entry.sender, "")
        notice = reader.load(entry.queue_id, with_body=True)
        assert notice is not None and notice.body is not None
        self.assertEqual([r.address for r in notice.envelope.recipients], ["s@elsewhere.test"])
        self.assertIn(b"Final-Recipient: rfc822; bob@example.test", notice.body)
        self.assertIn(b"Status: 5.1.1", notice.body)
