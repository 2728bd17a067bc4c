"""Tests for L{mdtwist.spool.schedule}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.schedule import RetryPolicy, expired, next_attempt

POLICY = RetryPolicy(minimal_backoff=300, maximal_backoff=3600, lifetime=86400)


class NextAttemptTests(SynchronousTestCase):
    """Tests for L{next_attempt}."""

    def test_young_message_waits_minimal_backoff(self) -> None:
        """A message that has just arrived is retried after the minimal backoff."""
        self.assertEqual(next_attempt(POLICY, 1000, 1010), 1310)

    def test_waits_its_age(self) -> None:
        """A message waits as long as it has been queued, between the two backoffs."""
        self.assertEqual(next_attempt(POLICY, 1000, 2000), 3000)

    def test_old_message_waits_maximal_backoff(self) -> None:
        """An old message waits no longer than the maximal backoff."""
        self.assertEqual(next_attempt(POLICY, 0, 50000), 53600)

    def test_clock_behind_arrival(self) -> None:
        """A clock earlier than the arrival time (a clock step) gives the minimal backoff."""
        self.assertEqual(next_attempt(POLICY, 5000, 4000), 4300)


class ExpiredTests(SynchronousTestCase):
    """Tests for L{expired}."""

    def test_lifetime(self) -> None:
        """A message expires when it has been queued for its lifetime, not before."""
        self.assertFalse(expired(POLICY, 1000, 1000 + 86399))
        self.assertTrue(expired(POLICY, 1000, 1000 + 86400))
