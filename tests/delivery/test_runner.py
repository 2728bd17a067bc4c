"""Tests for L{mdtwist.delivery.runner}."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdtwist.delivery.local import (
    CopyId,
    DeliveryResult,
    DeliveryStatus,
    ILocalDelivery,
    MaildirDelivery,
)
from mdtwist.delivery.runner import QueueRunner, RemoteDelivery
from mdtwist.delivery.schedule import QueuePolicy
from mdtwist.directory.model import Account
from mdtwist.envelope import Envelope, Recipient, RecipientState
from mdtwist.interfaces import IDirectory
from mdtwist.route import Route
from mdtwist.spool.model import MessageKind, QueuedMessage, RecipientResult
from mdtwist.spool.store import SQLiteSpool
from tests.spool.fakes import (
    FakeDirectory,
    make_account,
    make_envelope,
    run_now,
    write_v3_spool,
)

BODY = b"Subject: test\r\n\r\nhello\r\n"

#: Retries every 300 seconds at first, as the tests of the schedule-independent behaviour expect.
QUICK = QueuePolicy(remote_interval=300)


@implementer(ILocalDelivery)
class HeldDelivery:
    """
    A local delivery whose results the test gives, one call at a time.

    @ivar calls: the calls not answered yet: account address, recipient and Deferred.
    @ivar delivered: how many calls were made in all.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Deferred[DeliveryResult]]] = []
        self.delivered = 0

    def deliver(
        self,
        account: Account,
        recipient: str,
        body: bytes,
        sender: str = "",
        copy: CopyId | None = None,
    ) -> Deferred[DeliveryResult]:
        """
        Hold a delivery until the test answers it.

        @return: a Deferred that fires when the test answers.
        """
        d: Deferred[DeliveryResult] = Deferred()
        self.calls.append((account.address, recipient, d))
        self.delivered += 1
        return d

    def answer(self, status: DeliveryStatus = DeliveryStatus.DELIVERED) -> None:
        """
        Answer the oldest held delivery.

        @param status: the outcome to give.
        """
        _, _, d = self.calls.pop(0)
        d.callback(
            DeliveryResult(status, "2.0.0" if status is DeliveryStatus.DELIVERED else "4.2.0")
        )


class QueueRunnerTests(SynchronousTestCase):
    """Tests for L{QueueRunner} with a real spool and Maildir delivery in temporary directories."""

    def setUp(self) -> None:
        """Make a spool, a directory with three accounts and a Maildir root; the time is 1000."""
        self.clock = Clock()
        self.clock.advance(1000)
        self.spool_dir = Path(self.mktemp())
        self.spool = SQLiteSpool(self.spool_dir, run_now)
        self.addCleanup(lambda: self.spool.close())
        self.directory = FakeDirectory(
            [
                make_account("alice@example.com"),
                make_account("bob@example.com", "robert@example.com"),
                make_account("carol@example.com", enabled=False),
            ],
            ["example.com"],
        )
        self.root = Path(self.mktemp())
        self.root.mkdir()
        self.local = MaildirDelivery(self.root, run_now, self.clock, hostname="mx.example")

    def runner(
        self,
        local: ILocalDelivery | None = None,
        concurrency: int = 10,
        policy: QueuePolicy = QUICK,
        remote: RemoteDelivery | None = None,
    ) -> QueueRunner:
        """
        Make a runner on the test's spool, with a 60 second interval.

        It is stopped after the test.

        @param local: the local delivery; the test's Maildir delivery when L{None}.
        @return: the runner, not started.
        """
        runner = QueueRunner(
            self.spool,
            self.directory,
            self.local if local is None else local,
            self.clock,
            interval=60,
            concurrency=concurrency,
            policy=policy,
            remote=remote,
        )
        self.addCleanup(lambda: runner.running and runner.stopService())
        return runner

    def copies(self, mailbox: str) -> list[bytes]:
        """@return: the messages in a mailbox of example.com."""
        new = self.root / "example.com" / mailbox / "Maildir" / "new"
        return [f.read_bytes() for f in new.iterdir()] if new.is_dir() else []

    def enqueue(self, envelope: Envelope) -> str:
        """@return: the queue id of a newly stored message."""
        return self.successResultOf(self.spool.enqueue(envelope, BODY))

    def message(self, queue_id: str) -> QueuedMessage:
        """@return: a message that must still be queued."""
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        return message

    def test_fake_directory(self) -> None:
        """The fake directory provides L{IDirectory}."""
        self.assertTrue(verifyObject(IDirectory, self.directory))

    def test_delivers_each_recipient_once(self) -> None:
        """
        Queued messages are delivered when the runner starts, one copy per recipient.

        Later queue runs deliver no further copies, and the message leaves the spool.
        """
        self.enqueue(make_envelope("alice@example.com", "Bob@Example.COM", "robert@example.com"))
        self.runner().startService()
        for _ in range(3):
            self.clock.advance(60)
        self.assertEqual(
            self.copies("alice"),
            [
                b"Return-Path: <s@remote.example>\nDelivered-To: alice@example.com\n"
                b"Subject: test\n\nhello\n"
            ],
        )
        self.assertEqual(len(self.copies("bob")), 2)
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_wakes_on_commit(self) -> None:
        """A message committed while the runner runs is delivered at once, without a queue run."""
        runner = self.runner()
        runner.startService()
        self.enqueue(make_envelope("alice@example.com"))
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(runner.run_count, 1)

    def test_directory_unavailable(self) -> None:
        """
        While the directory cannot answer, the message stays queued with status C{4.4.3}.

        It is delivered on the first queue run after its retry time once the directory is back.
        """
        self.directory.unavailable = True
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.runner().startService()
        message = self.message(queue_id)
        [recipient] = message.envelope.recipients
        self.assertEqual(
            (recipient.state, recipient.status, recipient.attempts),
            (RecipientState.PENDING, "4.4.3", 1),
        )
        self.assertEqual(message.next_attempt, 1300)
        self.directory.unavailable = False
        self.clock.advance(240)
        self.assertEqual(self.copies("alice"), [])
        self.clock.advance(60)
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_unknown_and_disabled_recipients_fail(self) -> None:
        """
        An unknown local recipient fails with C{5.1.1}, a disabled one with C{5.2.1}.

        The others are delivered, and a remote recipient stays queued while there is no remote
        delivery; that is logged once.
        """
        events: list[LogEvent] = []
        observer = cast(ILogObserver, events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        queue_id = self.enqueue(
            make_envelope(
                "nobody@example.com", "alice@example.com", "carol@example.com", "x@elsewhere.test"
            )
        )
        self.runner().startService()
        self.clock.advance(3600)
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(self.copies("nobody") + self.copies("carol"), [])
        recipients = self.message(queue_id).envelope.recipients
        self.assertEqual(
            [(r.state, r.status) for r in recipients],
            [
                (RecipientState.FAILED, "5.1.1"),
                (RecipientState.DELIVERED, "2.0.0"),
                (RecipientState.FAILED, "5.2.1"),
                (RecipientState.PENDING, ""),
            ],
        )
        told = [
            e
            for e in events
            if e["log_format"].startswith("No remote delivery") and e["queue_id"] == queue_id
        ]
        self.assertEqual(len(told), 1)

    def test_restart_delivers_pending(self) -> None:
        """A new runner on a reopened spool delivers what an earlier one left queued."""
        self.directory.unavailable = True
        first = self.runner()
        first.startService()
        self.enqueue(make_envelope("alice@example.com"))
        first.stopService()
        self.successResultOf(self.spool.close())
        self.directory.unavailable = False
        self.spool = SQLiteSpool(self.spool_dir, run_now)
        self.clock.advance(300)
        self.runner().startService()
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_run_observers(self) -> None:
        """
        Each queue run (at start, then every interval) is counted and reported to observers.

        Passes started by new mail are not queue runs.
        """
        runner = self.runner()
        seen: list[int] = []
        remove = runner.add_run_observer(seen.append)
        runner.startService()
        self.enqueue(make_envelope("alice@example.com"))
        self.clock.advance(60)
        self.clock.advance(60)
        self.assertEqual((seen, runner.run_count), ([1, 2, 3], 3))
        remove()
        self.clock.advance(60)
        self.assertEqual((seen, runner.run_count), ([1, 2, 3], 4))

    def test_concurrency_limit(self) -> None:
        """At most C{concurrency} messages are in delivery at once; the next starts as one ends."""
        held = HeldDelivery()
        for _ in range(4):
            self.enqueue(make_envelope("alice@example.com"))
        self.runner(local=held, concurrency=2).startService()
        self.assertEqual(len(held.calls), 2)
        held.answer()
        self.assertEqual(len(held.calls), 2)
        held.answer()
        held.answer()
        held.answer()
        self.assertEqual((held.calls, held.delivered), ([], 4))
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_not_taken_twice(self) -> None:
        """
        A message in delivery is not delivered again by queue runs or new mail meanwhile.

        Queue runs due while a pass is running make one run after it.
        """
        held = HeldDelivery()
        self.enqueue(make_envelope("alice@example.com"))
        runner = self.runner(local=held)
        runner.startService()
        self.clock.advance(60)
        self.clock.advance(60)
        self.enqueue(make_envelope("bob@example.com"))
        self.assertEqual([address for address, _, _ in held.calls], ["alice@example.com"])
        held.answer()
        self.assertEqual([address for address, _, _ in held.calls], ["bob@example.com"])
        held.answer()
        self.assertEqual(held.delivered, 2)
        self.assertEqual(runner.run_count, 2)

    def test_temporary_failure_then_expiry(self) -> None:
        """
        A temporary local failure keeps the recipient queued on the retry schedule.

        Once the message is older than its lifetime, the recipient fails with C{4.4.7} and the
        message leaves the spool; the failure notice to the (remote) sender stays queued.
        """
        held = HeldDelivery()
        policy = QueuePolicy(
            remote_residency=0,
            minimal_backoff=100,
            maximal_backoff=100,
            lifetime=250,
            delay_notice=False,
        )
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.runner(local=held, policy=policy).startService()
        held.answer(DeliveryStatus.TEMPORARY)
        message = self.message(queue_id)
        self.assertEqual(message.next_attempt, 1100)
        self.assertEqual(message.envelope.recipients[0].status, "4.2.0")
        self.clock.advance(120)
        held.answer(DeliveryStatus.TEMPORARY)
        self.assertEqual(self.successResultOf(self.spool.count()), 1)
        self.clock.advance(180)
        held.answer(DeliveryStatus.TEMPORARY)
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        [notice] = self.successResultOf(self.spool.list())
        self.assertEqual((notice.kind, notice.sender), (MessageKind.NOTICE, ""))
        self.assertEqual(held.delivered, 3)

    def test_permanent_local_failure(self) -> None:
        """
        A permanent failure from the local delivery fails the recipient.

        The message leaves the spool; a notice to its remote sender takes its place.
        """
        held = HeldDelivery()
        queue_id = self.enqueue(make_envelope("alice@example.com"))
        self.runner(local=held).startService()
        held.answer(DeliveryStatus.PERMANENT)
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))
        [notice] = self.successResultOf(self.spool.list())
        self.assertEqual(notice.kind, MessageKind.NOTICE)

    def test_remote_delivery_seam(self) -> None:
        """
        Recipients in other domains go to the remote delivery collaborator, by position.

        Its results are recorded with the local ones.
        """
        asked: list[tuple[str, Sequence[int]]] = []

        def remote(
            message: QueuedMessage, positions: Sequence[int]
        ) -> Deferred[Sequence[RecipientResult]]:
            asked.append((message.queue_id, positions))
            return succeed(
                [
                    RecipientResult(p, RecipientState.DELIVERED, "2.0.0", "250 ok")
                    for p in positions
                ]
            )

        queue_id = self.enqueue(make_envelope("a@one.test", "alice@example.com", "b@two.test"))
        self.runner(remote=remote).startService()
        self.assertEqual(asked, [(queue_id, [0, 2])])
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def recording_remote(
        self, asked: list[QueuedMessage]
    ) -> Callable[[QueuedMessage, Sequence[int]], Deferred[Sequence[RecipientResult]]]:
        """
        @param asked: gets each message handed to the remote delivery.
        @return: a remote delivery that delivers every recipient it is given.
        """

        def remote(
            message: QueuedMessage, positions: Sequence[int]
        ) -> Deferred[Sequence[RecipientResult]]:
            asked.append(message)
            return succeed(
                [
                    RecipientResult(p, RecipientState.DELIVERED, "2.0.0", "250 ok")
                    for p in positions
                ]
            )

        return remote

    def test_stored_routes(self) -> None:
        """
        The runner acts on each recipient's stored route, never on its domain: a local route
        goes to the mailbox it names, remote and sharing-peer routes go to the remote delivery
        (even in a local domain), and a gateway-held recipient is never attempted: it stays
        pending, so the message stays queued.
        """
        asked: list[QueuedMessage] = []
        recipients = (
            Recipient("whoever@example.com", route=Route.local("alice@example.com")),
            Recipient("x@example.com", route=Route.remote()),
            Recipient("carol@example.com", route=Route.sharing_peer("peer.test:2525")),
            Recipient("g@gate.test", route=Route.gateway_hold("gate.test")),
        )
        queue_id = self.enqueue(make_envelope(*recipients))
        self.runner(remote=self.recording_remote(asked)).startService()
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(self.directory.lookups, ["alice@example.com"])
        [message] = asked
        self.assertEqual(message.envelope.recipients, recipients)
        left = self.message(queue_id)
        self.assertEqual(
            [r.state for r in left.envelope.recipients],
            [RecipientState.DELIVERED] * 3 + [RecipientState.PENDING],
        )
        self.clock.advance(3600)
        self.assertEqual([m.queue_id for m in asked].count(queue_id), 1)
        self.assertEqual(self.message(queue_id).envelope.recipients[3].attempts, 0)

    def test_version_3_spool_delivers(self) -> None:
        """
        A spool written by the release before routes opens, upgrades and delivers: its
        recipients are classified when loaded (local, remote, bare postmaster to the
        configured mailbox), and the remote delivery gets them with their routes.
        """
        self.spool_dir = Path(self.mktemp())
        queue_id = write_v3_spool(
            self.spool_dir, ["alice@example.com", "x@remote.test", "postmaster"], BODY
        )
        self.spool = SQLiteSpool(self.spool_dir, run_now)
        self.addCleanup(lambda: self.spool.close())
        asked: list[QueuedMessage] = []
        runner = QueueRunner(
            self.spool,
            self.directory,
            self.local,
            self.clock,
            remote=self.recording_remote(asked),
            postmaster="bob@example.com",
        )
        runner.startService()
        self.addCleanup(runner.stopService)
        self.assertEqual(len(self.copies("alice")), 1)
        self.assertEqual(len(self.copies("bob")), 1)
        [message] = asked
        self.assertEqual(message.queue_id, queue_id)
        self.assertEqual(
            [r.route for r in message.envelope.recipients],
            [Route.local("alice@example.com"), Route.remote(), Route.local("postmaster")],
        )
        self.assertEqual(self.successResultOf(self.spool.count()), 0)

    def test_postmaster_account_wins(self) -> None:
        """
        A postmaster address that an account has itself goes to that account, not to the
        configured postmaster mailbox.
        """
        self.directory.accounts.append(make_account("pm@example.com", "postmaster@example.com"))
        runner = QueueRunner(
            self.spool, self.directory, self.local, self.clock, postmaster="bob@example.com"
        )
        self.enqueue(make_envelope("postmaster@example.com"))
        runner.startService()
        self.addCleanup(runner.stopService)
        self.assertEqual((len(self.copies("pm")), len(self.copies("bob"))), (1, 0))

    def test_stop_waits_for_deliveries(self) -> None:
        """Stopping the runner waits for the deliveries in flight and starts no new ones."""
        held = HeldDelivery()
        self.enqueue(make_envelope("alice@example.com"))
        self.enqueue(make_envelope("bob@example.com"))
        runner = self.runner(local=held, concurrency=1)
        runner.startService()
        stopped = runner.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        held.answer()
        self.successResultOf(stopped)
        self.assertEqual(held.delivered, 1)
        self.assertEqual(self.successResultOf(self.spool.count()), 1)

    def test_run_now_attempts_mail_that_is_not_due(self) -> None:
        """
        L{QueueRunner.run_now} (C{mdtwistctl queue run}): messages whose next attempt is later
        are attempted at once, every one of them even
        when there are more than one batch, and each once.
        """
        held = HeldDelivery()
        policy = QueuePolicy(remote_residency=0, minimal_backoff=3600, maximal_backoff=3600)
        runner = QueueRunner(
            self.spool, self.directory, held, self.clock, interval=60, batch=2, policy=policy
        )
        self.addCleanup(lambda: runner.running and runner.stopService())
        ids = [self.enqueue(make_envelope("alice@example.com")) for _ in range(3)]
        runner.startService()
        while held.calls:
            held.answer(DeliveryStatus.TEMPORARY)
        self.assertEqual(held.delivered, 3)
        self.assertEqual({self.message(i).next_attempt for i in ids}, {4600})
        self.clock.advance(60)  # a periodic run: nothing is due
        self.assertEqual(held.calls, [])
        runner.run_now()
        self.assertEqual(len(held.calls), 2)  # the first batch, in flight at once
        while held.calls:
            held.answer(DeliveryStatus.TEMPORARY)
        self.assertEqual(held.delivered, 6)
        self.assertEqual(len(self.copies("alice")), 0)

    def test_run_now_during_a_pass(self) -> None:
        """
        L{QueueRunner.run_now} asked while a pass runs: the run comes after it. A runner that
        is not running does nothing.
        """
        held = HeldDelivery()
        policy = QueuePolicy(remote_residency=0, minimal_backoff=3600, maximal_backoff=3600)
        runner = self.runner(local=held, policy=policy)
        runner.run_now()  # not started: nothing
        self.enqueue(make_envelope("alice@example.com"))
        runner.startService()
        self.assertEqual(len(held.calls), 1)
        runner.run_now()
        self.assertEqual(len(held.calls), 1)
        held.answer(DeliveryStatus.TEMPORARY)
        self.assertEqual(len(held.calls), 1)  # attempted again, although not due
        held.answer(DeliveryStatus.DELIVERED)
        self.assertEqual(held.delivered, 2)
