"""Tests for the notices (DSNs), the retry queue and the bad queue of L{QueueRunner}."""

from __future__ import annotations

from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery.local import MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.delivery.schedule import QueuePolicy
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.errors import SpoolError
from mdtwist.spool.model import MessageKind, Queue, QueuedMessage, RecipientResult
from mdtwist.spool.store import BAD_QUEUE_HEADER, SQLiteSpool
from tests.spool.fakes import FakeDirectory, make_account, make_envelope, run_now
from tests.spool.test_store import flaky
from tests.support.dsn import parse, parts, recipient_blocks

BODY = b"Message-ID: <m1@client.example>\r\nSubject: test\r\n\r\nhello\r\n"
DAY = 86400.0


class FakeRemote:
    """
    A remote delivery that answers every recipient the same way, and counts its calls.

    @ivar result: the state, status, diagnostic and wait to give.
    @ivar calls: the times of the calls.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.state = RecipientState.PENDING
        self.status = "4.3.0"
        self.diagnostic = "451 4.3.0 try again later"
        self.retry_after: float | None = None
        self.calls: list[float] = []

    def __call__(
        self, message: QueuedMessage, positions: Sequence[int]
    ) -> Deferred[Sequence[RecipientResult]]:
        """
        Answer every recipient with the configured result.

        @return: a Deferred that has fired with the results.
        """
        self.calls.append(self.clock.seconds())
        return succeed(
            [
                RecipientResult(
                    p,
                    self.state,
                    self.status,
                    self.diagnostic,
                    "mx.far.example",
                    self.retry_after,
                )
                for p in positions
            ]
        )


class NoticeTests(SynchronousTestCase):
    """
    Tests for the notices of L{QueueRunner}, with a real spool and Maildir delivery.

    The sender of the test messages is the local user alice, so notices land in her Maildir.
    """

    def setUp(self) -> None:
        """Make a spool, a directory and a Maildir root; the time is 1000."""
        self.clock = Clock()
        self.clock.advance(1000)
        self.spool_dir = Path(self.mktemp())
        self.spool = SQLiteSpool(self.spool_dir, run_now)
        self.addCleanup(lambda: self.spool.close())
        self.directory = FakeDirectory(
            [make_account("alice@example.com"), make_account("bob@example.com")],
            ["example.com"],
        )
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.local = MaildirDelivery(self.root, run_now, self.clock, hostname="mx.example")
        self.remote = FakeRemote(self.clock)

    def runner(self, policy: QueuePolicy | None = None, remote: bool = True) -> QueueRunner:
        """
        Start a runner on the test's spool, with a 60 second interval; stopped after the test.

        @return: the runner.
        """
        runner = QueueRunner(
            self.spool,
            self.directory,
            self.local,
            self.clock,
            interval=60,
            policy=policy,
            remote=self.remote if remote else None,
            hostname="mx.example",
        )
        self.addCleanup(lambda: runner.running and runner.stopService())
        runner.startService()
        return runner

    def enqueue(self, *recipients: str | Recipient, sender: str = "alice@example.com") -> str:
        """@return: the queue id of a newly stored message."""
        envelope = make_envelope(*recipients, sender=sender)
        return self.successResultOf(self.spool.enqueue(envelope, BODY))

    def notices(self, mailbox: str = "alice") -> list[EmailMessage]:
        """@return: the notices in a mailbox of example.com, oldest first."""
        new = self.root / "example.com" / mailbox / "Maildir" / "new"
        if not new.is_dir():
            return []
        found = [parse(f.read_bytes()) for f in sorted(new.iterdir())]
        return sorted(found, key=lambda m: m["Date"].datetime)

    def actions(self, mailbox: str = "alice") -> list[list[tuple[str, str]]]:
        """@return: per notice, the final recipient and action of each block."""
        return [
            [(b["Final-Recipient"], b["Action"]) for b in recipient_blocks(notice)]
            for notice in self.notices(mailbox)
        ]

    def advance(self, seconds: float, step: float = 60) -> None:
        """Let time pass in steps, so queue runs happen."""
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step

    def test_one_notice_for_all_failures(self) -> None:
        """
        The recipients that fail in one attempt are reported in one notice to the sender.

        The notice comes from the null sender and is delivered like any other message.
        """
        self.remote.state = RecipientState.FAILED
        self.remote.status, self.remote.diagnostic = "5.1.1", "550 5.1.1 no such user"
        queue_id = self.enqueue("x@far.example", "nobody@example.com", "bob@example.com")
        self.runner()
        self.assertEqual(
            self.actions(),
            [[("rfc822; x@far.example", "failed"), ("rfc822; nobody@example.com", "failed")]],
        )
        [notice] = self.notices()
        self.assertEqual(notice["Return-Path"], "<>")
        self.assertEqual(notice["In-Reply-To"], "<m1@client.example>")
        x, nobody = recipient_blocks(notice)
        self.assertEqual(x["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        self.assertEqual(x["Remote-MTA"], "dns; mx.far.example")
        self.assertEqual((nobody["Status"], nobody["Remote-MTA"]), ("5.1.1", None))
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_notice_and_state_are_atomic(self) -> None:
        """
        The notice is queued in the transaction that records the failure: both or neither.

        When queueing the notice fails, the recipient is still pending and no notice exists;
        the next attempt records both, once.
        """
        self.successResultOf(self.spool.close())
        factory = flaky("INSERT INTO message", after=1)
        self.spool = SQLiteSpool(self.spool_dir, run_now, factory=factory)
        queue_id = self.enqueue("nobody@example.com")
        self.runner(QueuePolicy(remote_interval=60))
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual(
            (message.envelope.recipients[0].state, message.attempts),
            (RecipientState.PENDING, 0),
        )
        self.assertEqual(self.successResultOf(self.spool.count()), 1)
        self.assertEqual(self.notices(), [])
        self.assertEqual(len(self.flushLoggedErrors(SpoolError)), 1)
        factory.fail_prefix = None
        self.advance(120)
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        self.assertEqual(self.actions(), [[("rfc822; nobody@example.com", "failed")]])
        self.advance(600)
        self.assertEqual(len(self.notices()), 1)

    def test_null_sender(self) -> None:
        """A message from the null sender that fails gets no notice; it leaves the spool."""
        self.enqueue("nobody@example.com", "bob@example.com", sender="")
        self.runner()
        self.assertEqual(self.successResultOf(self.spool.count()), 0)
        self.assertEqual(len(list((self.root / "example.com" / "bob").rglob("new/*"))), 1)
        self.assertEqual(self.notices(), [])

    def test_notify_never_and_delay(self) -> None:
        """C{NOTIFY=NEVER} and C{NOTIFY=DELAY} get no failure notice; C{FAILURE} does."""
        self.enqueue(
            Recipient("nobody@example.com", notify=frozenset({"NEVER"})),
            Recipient("nemo@example.com", notify=frozenset({"DELAY"})),
            Recipient("nix@example.com", notify=frozenset({"FAILURE", "DELAY"})),
        )
        self.runner()
        self.assertEqual(self.actions(), [[("rfc822; nix@example.com", "failed")]])

    def test_notify_success(self) -> None:
        """C{NOTIFY=SUCCESS} gets a notice with action C{delivered}; no C{NOTIFY} gets none."""
        self.enqueue(Recipient("bob@example.com", notify=frozenset({"SUCCESS"})))
        self.enqueue("bob@example.com")
        self.runner()
        self.assertEqual(self.actions(), [[("rfc822; bob@example.com", "delivered")]])
        self.assertEqual(self.notices()[0]["Subject"], "Successful Mail Delivery Report")

    def test_delay_notice_once(self) -> None:
        """
        The sender is told once, when the message enters the retry queue, of a delay.

        Attempts in the remote queue tell nothing; later retries tell nothing more. The mark
        is kept in the spool.
        """
        queue_id = self.enqueue("x@far.example")
        self.runner()
        self.advance(1799)
        self.assertEqual(self.remote.calls, [1000, 1900])
        self.assertEqual(self.notices(), [])
        self.advance(1)
        self.assertEqual(self.remote.calls, [1000, 1900, 2800])
        self.assertEqual(self.actions(), [[("rfc822; x@far.example", "delayed")]])
        [notice] = self.notices()
        [block] = recipient_blocks(notice)
        self.assertEqual(block["Status"], "4.3.0")
        self.assertIsNotNone(block["Will-Retry-Until"])
        self.assertEqual(parts(notice)[2].get_content_type(), "text/rfc822-headers")
        self.advance(DAY, step=600)
        self.assertEqual(len(self.notices()), 1)
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertTrue(message.progress[0].delay_notified)

    def test_delay_notice_off_or_not_wanted(self) -> None:
        """No delay notice when the switch is off, or when C{NOTIFY} lacks C{DELAY}."""
        self.enqueue(Recipient("x@far.example", notify=frozenset({"FAILURE"})))
        self.runner()
        self.advance(3 * 3600, step=600)
        self.assertEqual(self.notices(), [])
        self.enqueue("y@far.example")
        self.runner(QueuePolicy(delay_notice=False))
        self.advance(3 * 3600, step=600)
        self.assertEqual(self.actions(), [[("rfc822; y@far.example", "delayed")]])

    def test_delivered_after_delay(self) -> None:
        """
        With the switch on, a recipient the sender was told is delayed is reported delivered.

        With the switch off (the default) nothing more is said.
        """
        for policy, expected in (
            (QueuePolicy(delivered_after_delay_notice=True), ["delayed", "delivered"]),
            (QueuePolicy(), ["delayed"]),
        ):
            self.remote.state = RecipientState.PENDING
            self.enqueue("x@far.example")
            runner = self.runner(policy)
            self.advance(1800)
            self.remote.state, self.remote.status = RecipientState.DELIVERED, "2.0.0"
            self.remote.diagnostic = "250 2.0.0 ok"
            self.advance(4 * 3600, step=600)
            self.assertEqual(
                [blocks[0][1] for blocks in self.actions()[-len(expected) :]], expected
            )
            self.assertEqual(self.successResultOf(self.spool.count()), 0)
            runner.stopService()
            for path in self.root.rglob("new/*"):
                path.unlink()

    def test_give_up(self) -> None:
        """
        A recipient that fails temporarily for five days fails for good, with a notice.

        The failure notice reports the last reply and status C{4.4.7} and attaches the
        original; the sender got one delay notice before it.
        """
        queue_id = self.enqueue("x@far.example")
        self.runner()
        self.advance(5 * DAY - 3600, step=3600)
        self.advance(3599)
        self.assertIsNotNone(self.successResultOf(self.spool.load(queue_id)))
        self.advance(1)
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        self.assertEqual(self.remote.calls[-1], 1000 + 5 * DAY)
        self.assertEqual(
            self.actions(),
            [[("rfc822; x@far.example", "delayed")], [("rfc822; x@far.example", "failed")]],
        )
        failure = self.notices()[1]
        self.assertEqual(failure["Subject"], "Undelivered Mail Returned to Sender")
        [block] = recipient_blocks(failure)
        self.assertEqual(block["Status"], "4.4.7")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 451 4.3.0 try again later")
        self.assertIsNone(block["Will-Retry-Until"])
        original = parts(failure)[2]
        self.assertEqual(original.get_content_type(), "message/rfc822")
        self.assertEqual(parts(original)[0]["Subject"], "test")

    def test_mdaemon_lifetime(self) -> None:
        """With MDaemon's two days, the message fails after two days."""
        queue_id = self.enqueue("x@far.example")
        self.runner(QueuePolicy(lifetime=2 * DAY))
        self.advance(2 * DAY, step=3600)
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        self.assertEqual([a[0][1] for a in self.actions()], ["delayed", "failed"])

    def test_delay_after_temp_error(self) -> None:
        """A wait asked for by the remote delivery (after a 4xx) delays the next attempt."""
        self.remote.retry_after = 600
        queue_id = self.enqueue("x@far.example")
        self.runner(QueuePolicy(remote_interval=60))
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        self.assertEqual(message.next_attempt, 1600)

    def test_failed_notice_goes_to_bad_queue(self) -> None:
        """
        A notice that cannot be delivered is parked in the bad queue, not answered.

        The parked message starts with the reason header; nothing retries it.
        """
        self.remote.state = RecipientState.FAILED
        self.remote.status, self.remote.diagnostic = "5.1.1", "550 5.1.1 no such user"
        self.enqueue("x@far.example", sender="ghost@example.com")
        self.runner()
        [entry] = self.successResultOf(self.spool.list())
        self.assertEqual((entry.kind, entry.queue), (MessageKind.NOTICE, Queue.BAD))
        assert entry.reason is not None
        self.assertIn("<ghost@example.com>: 5.1.1 no such mailbox", entry.reason)
        parked = self.successResultOf(self.spool.load(entry.queue_id))
        assert parked is not None and parked.body is not None
        self.assertTrue(parked.body.startswith(f"{BAD_QUEUE_HEADER}: ".encode()))
        self.assertEqual(parse(parked.body)[BAD_QUEUE_HEADER], entry.reason)
        self.advance(3 * DAY, step=3600)
        self.assertEqual(self.successResultOf(self.spool.count()), 1)
        self.assertEqual(self.successResultOf(self.spool.due(1e12, 10)), [])

    def test_failed_notice_dropped(self) -> None:
        """With the bad queue switch off, a notice that fails is dropped."""
        self.remote.state = RecipientState.FAILED
        self.enqueue("x@far.example", sender="ghost@example.com")
        self.runner(QueuePolicy(bad_queue_undeliverable_notices=False))
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_expired_notice_goes_to_bad_queue(self) -> None:
        """A notice still undelivered after its own lifetime is parked, without a notice."""
        self.enqueue("nobody@example.com", sender="s@far.example")
        self.runner()
        self.advance(2 * DAY, step=3600)
        [entry] = self.successResultOf(self.spool.list())
        self.assertEqual((entry.kind, entry.queue), (MessageKind.NOTICE, Queue.BAD))
        self.assertIn("4.4.7", entry.reason or "")

    def test_hop_limit(self) -> None:
        """
        A message with more trace lines than the hop limit (and our stamp) is parked unsent.

        One at the limit is delivered.
        """
        looping = b"Received: from a by b\r\n" * 4 + b"Delivered-To: bob@example.com\r\n" + BODY
        at_limit = b"Received: from a by b\r\n" * 4 + BODY
        envelope = make_envelope("bob@example.com")
        loop_id = self.successResultOf(self.spool.enqueue(envelope, looping))
        self.successResultOf(self.spool.enqueue(envelope, at_limit))
        self.runner(QueuePolicy(hop_limit=3))
        [entry] = self.successResultOf(self.spool.list())
        self.assertEqual((entry.queue_id, entry.queue), (loop_id, Queue.BAD))
        self.assertIn("mail loop: 5 Received/Delivered-To lines", entry.reason or "")
        self.assertEqual(len(list((self.root / "example.com" / "bob").rglob("new/*"))), 1)

    def test_restart_keeps_exactly_once(self) -> None:
        """
        After a restart, notices already queued are not made again, and the delay mark holds.

        The failure notice (to a remote sender, with no remote delivery) stays queued once;
        the delayed message tells its sender no second time.
        """
        self.enqueue("nobody@example.com", sender="s@far.example")
        delayed = self.enqueue("x@far.example")
        self.runner()
        self.advance(1800)
        self.assertEqual(self.actions(), [[("rfc822; x@far.example", "delayed")]])
        self.successResultOf(self.spool.close())
        self.spool = SQLiteSpool(self.spool_dir, run_now)
        self.runner()
        self.advance(DAY, step=3600)
        self.assertEqual(len(self.notices()), 1)
        entries = self.successResultOf(self.spool.list())
        self.assertEqual(
            sorted((e.kind.value, e.sender) for e in entries),
            [("message", "alice@example.com"), ("notice", "")],
        )
        message = self.successResultOf(self.spool.load(delayed))
        assert message is not None
        self.assertTrue(message.progress[0].delay_notified)
