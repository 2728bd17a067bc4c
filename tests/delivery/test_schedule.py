"""Tests for L{mdtwist.delivery.schedule}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery.schedule import (
    MDAEMON_COMPATIBLE,
    QueuePolicy,
    RetryPolicy,
    expired,
    give_up_time,
    in_retry_phase,
    next_attempt,
)

POLICY = QueuePolicy(
    remote_residency=1800,
    remote_interval=900,
    minimal_backoff=3600,
    maximal_backoff=10800,
    lifetime=5 * 86400,
    notice_lifetime=2 * 86400,
)


class QueuePolicyTests(SynchronousTestCase):
    """Tests for L{QueuePolicy}."""

    def test_defaults(self) -> None:
        """The documented defaults do not change unnoticed."""
        policy = QueuePolicy()
        self.assertEqual(
            (
                policy.remote_residency,
                policy.remote_interval,
                policy.minimal_backoff,
                policy.maximal_backoff,
                policy.delay_after_temp_error,
                policy.lifetime,
                policy.notice_lifetime,
                policy.delay_notice,
                policy.delivered_after_delay_notice,
                policy.bad_queue_undeliverable_notices,
                policy.hop_limit,
            ),
            (1800, 900, 3600, 10800, 180, 5 * 86400, 2 * 86400, True, False, True, 100),
        )
        self.assertEqual(MDAEMON_COMPATIBLE.lifetime, 2 * 86400)
        self.assertIs(RetryPolicy, QueuePolicy)

    def test_validation(self) -> None:
        """Negative times, zero intervals and a maximal backoff below the minimal are refused."""
        self.assertRaises(ValueError, QueuePolicy, lifetime=-1)
        self.assertRaises(ValueError, QueuePolicy, remote_interval=0)
        self.assertRaises(ValueError, QueuePolicy, minimal_backoff=600, maximal_backoff=300)
        self.assertRaises(ValueError, QueuePolicy, hop_limit=0)


class NextAttemptTests(SynchronousTestCase):
    """Tests for L{next_attempt}: residency, then backoff, then the 4xx delay."""

    def test_remote_queue_phase(self) -> None:
        """During the residency, a message is retried every remote-queue interval."""
        self.assertEqual(next_attempt(POLICY, 1000, 1000), 1900)
        self.assertEqual(next_attempt(POLICY, 1000, 1900), 2800)

    def test_retry_phase_waits_its_age(self) -> None:
        """After the residency a message waits as long as it has been queued, clamped."""
        self.assertEqual(in_retry_phase(POLICY, 1000, 2799), False)
        self.assertEqual(in_retry_phase(POLICY, 1000, 2800), True)
        self.assertEqual(next_attempt(POLICY, 1000, 2800), 2800 + 3600)
        self.assertEqual(next_attempt(POLICY, 0, 5000), 10000)
        self.assertEqual(next_attempt(POLICY, 0, 50000), 60800)

    def test_delay_after_temp_error(self) -> None:
        """A wait asked for after a 4xx makes the next attempt no sooner, never later."""
        quick = QueuePolicy(remote_interval=60)
        self.assertEqual(next_attempt(quick, 1000, 1000, retry_after=180), 1180)
        self.assertEqual(next_attempt(quick, 1000, 1000, retry_after=10), 1060)

    def test_never_after_lifetime(self) -> None:
        """The last attempt is scheduled at the end of the lifetime, not later."""
        end = 1000 + 5 * 86400
        self.assertEqual(next_attempt(POLICY, 1000, end - 100), end)
        self.assertEqual(next_attempt(POLICY, 1000, end - 100, notice=True), end - 100 + 10800)
        self.assertEqual(give_up_time(POLICY, 1000, notice=True), 1000 + 2 * 86400)

    def test_clock_behind_arrival(self) -> None:
        """A clock earlier than the arrival time (a clock step) gives the remote interval."""
        self.assertEqual(next_attempt(POLICY, 5000, 4000), 4900)


class ExpiredTests(SynchronousTestCase):
    """Tests for L{expired}."""

    def test_lifetime(self) -> None:
        """A message expires when it has been queued for its lifetime, not before."""
        self.assertFalse(expired(POLICY, 1000, 1000 + 5 * 86400 - 1))
        self.assertTrue(expired(POLICY, 1000, 1000 + 5 * 86400))

    def test_notice_lifetime(self) -> None:
        """Our own notices expire after their own, shorter, lifetime."""
        self.assertFalse(expired(POLICY, 1000, 1000 + 2 * 86400))
        self.assertTrue(expired(POLICY, 1000, 1000 + 2 * 86400, notice=True))

    def test_zero_lifetime(self) -> None:
        """With lifetime 0 a message expires at once: it fails after its first attempt."""
        self.assertTrue(expired(QueuePolicy(lifetime=0), 1000, 1000))
