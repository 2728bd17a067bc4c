"""
Tests for the mail-log lines of L{mdtwist.delivery.runner}: one line per recipient and attempt
(sent, deferred with its next attempt, bounced, expired), notices, parking and removal.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from mdtwist import maillog
from mdtwist.delivery.local import DeliveryStatus, MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.delivery.schedule import QueuePolicy
from mdtwist.envelope import Envelope, RecipientState
from mdtwist.spool.model import QueuedMessage, RecipientResult
from mdtwist.spool.store import SQLiteSpool
from tests.delivery.test_runner import HeldDelivery
from tests.spool.fakes import FakeDirectory, make_account, make_envelope, run_now
from tests.support.logs import capture_logs

BODY = b"Subject: test\r\n\r\nhello\r\n"


class RunnerMailLogTests(SynchronousTestCase):
    """
    The queue runner writes a mail-log line for every recipient it attempts.
    """

    def setUp(self) -> None:
        self.events = capture_logs(self)
        self.clock = Clock()
        self.clock.advance(1000)
        self.spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(lambda: self.spool.close())
        self.directory = FakeDirectory(
            [
                make_account("alice@example.com"),
                make_account("bob@example.com", "robert@example.com"),
                make_account("carol@example.com", enabled=False),
            ],
            ["example.com"],
        )
        root = Path(self.mktemp())
        root.mkdir()
        self.local = MaildirDelivery(root, run_now, self.clock, hostname="mx.example")

    def start(self, **kwargs: object) -> QueueRunner:
        runner = QueueRunner(
            self.spool,
            self.directory,
            kwargs.pop("local", self.local),  # type: ignore[arg-type]
            self.clock,
            interval=60,
            **kwargs,  # type: ignore[arg-type]
        )
        self.addCleanup(lambda: runner.running and runner.stopService())
        runner.startService()
        return runner

    def enqueue(self, envelope: Envelope, body: bytes = BODY) -> str:
        return self.successResultOf(self.spool.enqueue(envelope, body))

    def lines(self, queue_id: str) -> list[str]:
        """
        @return: the text of the mail-log lines about a queue id.
        """
        return [
            formatEvent(e)
            for e in self.events
            if e.get("log_namespace") == "mdtwist.maillog" and e.get("queue_id") == queue_id
        ]

    def test_local_outcomes(self) -> None:
        """
        A local delivery, a delivery through an alias (naming the mailbox it led to), an
        unknown and a disabled mailbox each get their line; then the bounce notice, its queue
        id, and the removal.
        """
        queue_id = self.enqueue(
            make_envelope(
                "alice@example.com",
                "robert@example.com",
                "nobody@example.com",
                "carol@example.com",
            )
        )
        self.clock.advance(2.5)
        self.start()
        lines = self.lines(queue_id)
        self.assertEqual(
            lines[:4],
            [
                f"{queue_id}: to=<alice@example.com> mailbox=<alice@example.com>"
                " relay=local[-] delay=2.50 attempt=1 dsn=2.0.0 status=sent"
                " (delivered to Maildir) next=-",
                f"{queue_id}: to=<robert@example.com> mailbox=<bob@example.com>"
                " relay=local[-] delay=2.50 attempt=1 dsn=2.0.0 status=sent"
                " (delivered to Maildir) next=-",
                f"{queue_id}: to=<nobody@example.com> mailbox=<nobody@example.com>"
                " relay=none[-] delay=2.50 attempt=1 dsn=5.1.1 status=bounced"
                " (no such mailbox) next=-",
                f"{queue_id}: to=<carol@example.com> mailbox=<carol@example.com>"
                " relay=none[-] delay=2.50 attempt=1 dsn=5.2.1 status=bounced"
                " (mailbox disabled) next=-",
            ],
        )
        self.assertEqual(
            lines[4], f"{queue_id}: notice to=<s@remote.example> actions=failed nrcpt=2"
        )
        self.assertRegex(lines[5], rf"^{queue_id}: notice queued as [0-9A-F]{{12}}$")
        self.assertEqual(lines[6:], [f"{queue_id}: removed"])

    def test_deferred(self) -> None:
        """
        A temporary failure is logged as deferred, with the time of the next attempt; the
        next attempt counts 2.
        """
        local = HeldDelivery()
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.start(local=local, policy=QueuePolicy(remote_interval=300))
        local.answer(DeliveryStatus.TEMPORARY)
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        [line] = self.lines(queue_id)
        self.assertEqual(
            line,
            f"{queue_id}: to=<alice@example.com> mailbox=<alice@example.com> relay=local[-]"
            " delay=0.00 attempt=1 dsn=4.2.0 status=deferred (-)"
            f" next={maillog.timestamp(message.next_attempt)}",
        )
        self.clock.advance(message.next_attempt - self.clock.seconds())
        local.answer()
        self.assertIn(" attempt=2 dsn=2.0.0 status=sent ", self.lines(queue_id)[1])

    def test_delay_notice(self) -> None:
        """
        A recipient still deferred once the message is in the retry queue gets the sender a
        delay notice: the deferral, then the notice line with its action and queue id.
        """
        local = HeldDelivery()
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.clock.advance(QueuePolicy().remote_residency)
        self.start(local=local)
        local.answer(DeliveryStatus.TEMPORARY)
        lines = self.lines(queue_id)
        self.assertIn(" status=deferred ", lines[0])
        self.assertEqual(
            lines[1], f"{queue_id}: notice to=<s@remote.example> actions=delayed nrcpt=1"
        )
        self.assertRegex(lines[2], rf"^{queue_id}: notice queued as [0-9A-F]{{12}}$")

    def test_expired(self) -> None:
        """
        A recipient still pending when the message has been queued too long is logged as
        expired with C{4.4.7}, and the sender's notice follows.
        """
        local = HeldDelivery()
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.clock.advance(100)
        self.start(local=local, policy=QueuePolicy(lifetime=50, delay_notice=False))
        local.answer(DeliveryStatus.TEMPORARY)
        lines = self.lines(queue_id)
        self.assertRegex(
            lines[0],
            rf"^{queue_id}: to=<alice@example\.com> .* delay=100\.00 attempt=1 dsn=4\.4\.7"
            r" status=expired \(delivery time expired; last error: 4\.2\.0\) next=-$",
        )
        self.assertEqual(
            lines[1], f"{queue_id}: notice to=<s@remote.example> actions=failed nrcpt=1"
        )

    def test_expired_unattempted(self) -> None:
        """
        A recipient that expires without an attempt (no remote delivery here) is logged with
        the attempts it had: none.
        """
        queue_id = self.enqueue(make_envelope("x@elsewhere.test"))
        self.clock.advance(100)
        self.start(policy=QueuePolicy(lifetime=50, delay_notice=False))
        self.assertEqual(
            self.lines(queue_id)[0],
            f"{queue_id}: to=<x@elsewhere.test> mailbox=<x@elsewhere.test> relay=none[-]"
            " delay=100.00 attempt=0 dsn=4.4.7 status=expired"
            " (delivery time expired; last error: none) next=-",
        )

    def test_remote(self) -> None:
        """
        A remote result names the relay host and the address it connected to; a permanent
        failure carries the remote server's reply.
        """

        async def remote(
            message: QueuedMessage, positions: Sequence[int]
        ) -> Sequence[RecipientResult]:
            return [
                RecipientResult(
                    0,
                    RecipientState.DELIVERED,
                    "2.0.0",
                    "250 2.0.0 Ok: queued as 4F1A",
                    remote_mta="mx1.example.org",
                    relay_address="192.0.2.25",
                ),
                RecipientResult(
                    1,
                    RecipientState.FAILED,
                    "5.1.1",
                    "550 5.1.1 <nobody@example.org>: no such user",
                    remote_mta="mx1.example.org",
                    relay_address="192.0.2.25",
                ),
            ]

        queue_id = self.enqueue(make_envelope("bob@example.org", "nobody@example.org", sender=""))
        self.start(remote=remote)
        lines = self.lines(queue_id)
        self.assertEqual(
            lines,
            [
                f"{queue_id}: to=<bob@example.org> mailbox=<bob@example.org>"
                " relay=mx1.example.org[192.0.2.25] delay=0.00 attempt=1 dsn=2.0.0"
                " status=sent (250 2.0.0 Ok: queued as 4F1A) next=-",
                f"{queue_id}: to=<nobody@example.org> mailbox=<nobody@example.org>"
                " relay=mx1.example.org[192.0.2.25] delay=0.00 attempt=1 dsn=5.1.1"
                " status=bounced (550 5.1.1 <nobody@example.org>: no such user) next=-",
                f"{queue_id}: removed",
            ],
        )

    def test_parked(self) -> None:
        """
        A looping message is parked before any attempt, with its reason.
        """
        queue_id = self.enqueue(make_envelope("alice@example.com"), b"Received: x\r\n" * 5 + BODY)
        self.start(policy=QueuePolicy(hop_limit=3))
        self.assertEqual(
            self.lines(queue_id),
            [
                f"{queue_id}: parked (mail loop: 5 Received/Delivered-To lines, more than the"
                " hop limit of 3)"
            ],
        )
