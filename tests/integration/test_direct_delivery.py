"""
Local mail delivered before the reply to DATA (C{delivery.direct_max_recipients}), against the
real daemon with its Maildir worker process.
"""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"
BOB = "bob@example.test"
MESSAGE = "From: s@remote.example\r\nSubject: direct\r\n\r\nhello\r\n"


class DirectDeliveryTests(SynchronousTestCase):
    """
    A daemon with the default C{direct_max_recipients} and one Maildir worker process; the
    loopback network may relay.
    """

    delivery = 'maildir_root = "mail"\nmaildir_processes = 1'

    def setUp(self) -> None:
        self.daemon = Daemon(
            Path(self.mktemp()), delivery=self.delivery, trusted_networks=["127.0.0.0/8"]
        )
        self.daemon.start()
        self.addCleanup(self.daemon.stop)

    def send(self, recipients: list[str]) -> str:
        """
        Send L{MESSAGE} over a new connection.

        @param recipients: the recipients.
        @return: the id in the reply to DATA.
        """
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=20) as client:
            client.ehlo("client.example")
            client.mail("s@remote.example")
            for recipient in recipients:
                self.assertEqual(client.rcpt(recipient)[0], 250)
            code, text = client.data(MESSAGE)
        self.assertEqual(code, 250, text)
        match = re.fullmatch(rb"2\.0\.0 Ok: queued as (\S+)", text)
        assert match is not None, text
        return match.group(1).decode()

    def test_in_the_mailbox_at_the_reply(self) -> None:
        """
        When the 250 comes, both copies are already in their Maildirs, the spool never held
        the message, and the mail log has its usual lines under an id that names the process.
        """
        queue_id = self.send([ALICE, BOB])
        self.assertRegex(queue_id, r"^L[0-9A-F]+-0$")
        for address in (ALICE, BOB):
            [copy] = self.daemon.messages(address)
            self.assertIn(b"Subject: direct", copy)
        self.assertEqual(self.daemon.queue_ids(), [])
        self.assertTrue(wait_for(lambda: f"{queue_id}: removed" in self.daemon.log()))
        log = self.daemon.log()
        self.assertIn(f"{queue_id}: accepted session=", log)
        self.assertRegex(log, rf"{queue_id}: to=<{ALICE}> mailbox=<{ALICE}> .* status=sent")
        self.assertRegex(log, rf"{queue_id}: to=<{BOB}> mailbox=<{BOB}> .* status=sent")

    def test_other_recipients_queue_the_message(self) -> None:
        """
        A message with a remote recipient is queued first: its local copy is delivered by the
        queue runner, and the remote one stays queued (DNS fails here).
        """
        queue_id = self.send([ALICE, "r@remote.example"])
        self.assertRegex(queue_id, r"^[0-9A-F]{12}$")
        self.assertTrue(
            wait_for(lambda: self.daemon.messages(ALICE)), f"no delivery:\n{self.daemon.log()}"
        )
        self.assertEqual(self.daemon.queue_ids(), [queue_id])


class QueuedFirstTests(DirectDeliveryTests):
    """
    With C{direct_max_recipients = 0} every message is queued first.
    """

    delivery = DirectDeliveryTests.delivery + "\ndirect_max_recipients = 0"

    def test_in_the_mailbox_at_the_reply(self) -> None:
        """
        Local mail gets a queue id, and the queue runner delivers it after the reply.
        """
        queue_id = self.send([ALICE])
        self.assertRegex(queue_id, r"^[0-9A-F]{12}$")
        self.assertTrue(
            wait_for(lambda: self.daemon.messages(ALICE)), f"no delivery:\n{self.daemon.log()}"
        )
        self.assertTrue(wait_for(lambda: f"{queue_id}: removed" in self.daemon.log()))
