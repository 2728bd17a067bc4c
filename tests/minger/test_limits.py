"""
Tests for L{mdtwist.minger.limits}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.minger.limits import RateLimits, SourceLimiter, Verdict


class RateLimitTests(SynchronousTestCase):
    """
    Token buckets per source and for all sources together.
    """

    def test_burst_then_rate(self) -> None:
        """
        A source may send its burst at once, then C{rate} per second.
        """
        limiter = SourceLimiter(RateLimits(rate=2.0, burst=5, global_rate=1000.0))
        verdicts = [limiter.admit("a", 100.0) for _ in range(6)]
        self.assertEqual(verdicts, [Verdict.ALLOW] * 5 + [Verdict.RATE_LIMITED])
        self.assertEqual(limiter.admit("a", 100.4), Verdict.RATE_LIMITED)
        self.assertEqual(limiter.admit("a", 100.5), Verdict.ALLOW)
        self.assertEqual(limiter.admit("a", 100.5), Verdict.RATE_LIMITED)
        self.assertEqual(limiter.admit("b", 100.5), Verdict.ALLOW)

    def test_refill_is_capped(self) -> None:
        """
        A long quiet time refills the bucket to the burst, not beyond.
        """
        limiter = SourceLimiter(RateLimits(rate=1.0, burst=2, global_rate=1000.0))
        self.assertEqual(limiter.admit("a", 0.0), Verdict.ALLOW)
        verdicts = [limiter.admit("a", 1000.0) for _ in range(3)]
        self.assertEqual(verdicts, [Verdict.ALLOW, Verdict.ALLOW, Verdict.RATE_LIMITED])

    def test_global(self) -> None:
        """
        All sources together get at most C{global_rate} per second.
        """
        limiter = SourceLimiter(RateLimits(rate=100.0, burst=100, global_rate=3.0))
        verdicts = [limiter.admit(f"s{i}", 10.0) for i in range(4)]
        self.assertEqual(verdicts, [Verdict.ALLOW] * 3 + [Verdict.RATE_LIMITED])
        self.assertEqual(limiter.admit("s9", 11.0), Verdict.ALLOW)

    def test_forget_idle(self) -> None:
        """
        Past C{max_sources}, sources whose buckets have refilled are forgotten, and the
        limits still hold for busy ones.
        """
        limiter = SourceLimiter(RateLimits(rate=1.0, burst=1, global_rate=1000.0), max_sources=2)
        self.assertEqual(limiter.admit("a", 0.0), Verdict.ALLOW)
        self.assertEqual(limiter.admit("b", 5.0), Verdict.ALLOW)
        self.assertEqual(limiter.admit("c", 5.0), Verdict.ALLOW)
        self.assertEqual(limiter.admit("b", 5.0), Verdict.RATE_LIMITED)
        self.assertEqual(limiter.admit("c", 5.0), Verdict.RATE_LIMITED)


class HarvestBudgetTests(SynchronousTestCase):
    """
    Too many "no such address" answers pause a source.
    """

    limits = RateLimits(
        rate=1000.0,
        burst=1000,
        global_rate=1000.0,
        unknown_budget=3,
        unknown_window=60.0,
        unknown_pause=600.0,
    )

    def test_budget(self) -> None:
        """
        The answer that goes over the budget pauses the source for C{unknown_pause} seconds;
        other sources are not affected.
        """
        limiter = SourceLimiter(self.limits)
        self.assertEqual([limiter.note_unknown("a", 10.0 + i) for i in range(3)], [False] * 3)
        self.assertEqual(limiter.admit("a", 13.0), Verdict.ALLOW)
        self.assertTrue(limiter.note_unknown("a", 13.0))
        self.assertEqual(limiter.admit("a", 14.0), Verdict.PAUSED)
        self.assertEqual(limiter.admit("a", 612.9), Verdict.PAUSED)
        self.assertEqual(limiter.admit("b", 14.0), Verdict.ALLOW)
        self.assertEqual(limiter.admit("a", 613.0), Verdict.ALLOW)
        self.assertFalse(limiter.note_unknown("a", 613.0))

    def test_window(self) -> None:
        """
        Answers older than the window no longer count.
        """
        limiter = SourceLimiter(self.limits)
        for when in (0.0, 1.0, 2.0):
            limiter.note_unknown("a", when)
        self.assertFalse(limiter.note_unknown("a", 60.5))
        self.assertFalse(limiter.note_unknown("a", 61.5))
        self.assertFalse(limiter.note_unknown("a", 62.0))
        self.assertTrue(limiter.note_unknown("a", 62.5))


class LogThrottleTests(SynchronousTestCase):
    """
    Lines about one source are logged at most once a minute.
    """

    def test_log_due(self) -> None:
        """
        log_due is true once per 60 s per source.
        """
        limiter = SourceLimiter(RateLimits())
        self.assertTrue(limiter.log_due("a", 0.0))
        self.assertFalse(limiter.log_due("a", 59.0))
        self.assertTrue(limiter.log_due("b", 59.0))
        self.assertTrue(limiter.log_due("a", 60.0))
