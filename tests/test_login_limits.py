"""Tests for L{mdtwist.login_limits}: the brute-force limit as pure counting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.login_limits import FailureLimiter, LoginLimits

LIMITS = LoginLimits(max_failures=3, window=60.0, delay=5.0)


class PerAddressTests(SynchronousTestCase):
    """Failures count per client address, whatever login they tried."""

    def test_different_logins_from_one_address(self) -> None:
        """
        Three failures from one address with three different logins throttle that address,
        for any login, and no other address.
        """
        limiter = FailureLimiter(LIMITS)
        for i, login in enumerate(("alice", "bob", "carol")):
            self.assertFalse(limiter.throttled("192.0.2.1", login, float(i)))
            limiter.failed("192.0.2.1", login, float(i))
        self.assertTrue(limiter.throttled("192.0.2.1", "dave", 3.0))
        self.assertFalse(limiter.throttled("192.0.2.2", "dave", 3.0))

    def test_below_the_limit(self) -> None:
        """Fewer failures than the limit throttle nothing."""
        limiter = FailureLimiter(LIMITS)
        limiter.failed("192.0.2.1", "alice", 0.0)
        limiter.failed("192.0.2.1", "bob", 1.0)
        self.assertFalse(limiter.throttled("192.0.2.1", "carol", 2.0))

    def test_window_expires(self) -> None:
        """A failure is forgotten once the window has passed since it happened."""
        limiter = FailureLimiter(LIMITS)
        for t in (0.0, 10.0, 20.0):
            limiter.failed("192.0.2.1", f"user{t}", t)
        self.assertTrue(limiter.throttled("192.0.2.1", "x", 59.0))
        self.assertFalse(limiter.throttled("192.0.2.1", "x", 60.0))


class PerLoginTests(SynchronousTestCase):
    """Failures count per login name, case-folded, whatever address they came from."""

    def test_one_login_from_many_addresses(self) -> None:
        """
        Three failures of one login (in different cases) from three addresses throttle that
        login from any address, and no other login.
        """
        limiter = FailureLimiter(LIMITS)
        for i, login in enumerate(("Alice", "ALICE", "alice")):
            limiter.failed(f"192.0.2.{i}", login, float(i))
        self.assertTrue(limiter.throttled("198.51.100.7", "aLiCe", 3.0))
        self.assertFalse(limiter.throttled("198.51.100.7", "bob", 3.0))

    def test_case_folding(self) -> None:
        """Login names are case-folded, not just lower-cased (C{ß} and C{SS} are one name)."""
        limiter = FailureLimiter(LIMITS)
        for i in range(3):
            limiter.failed(f"192.0.2.{i}", "STRASSE", float(i))
        self.assertTrue(limiter.throttled("198.51.100.7", "straße", 3.0))


class MemoryTests(SynchronousTestCase):
    """Expired keys do not pile up."""

    def test_sweep(self) -> None:
        """
        Each failure is kept under two keys; once a window has passed, the next failure
        sweeps every expired key away.
        """
        limiter = FailureLimiter(LIMITS)
        for i in range(10):
            limiter.failed(f"192.0.2.{i}", f"user{i}", 1.0)
        self.assertEqual(len(limiter), 20)
        limiter.failed("192.0.2.99", "late", 100.0)
        self.assertEqual(len(limiter), 2)

    def test_defaults(self) -> None:
        """The defaults match the configuration's: 5 failures in 300 seconds, 5 s delay."""
        self.assertEqual(LoginLimits(), LoginLimits(max_failures=5, window=300.0, delay=5.0))


class PurityTests(SynchronousTestCase):
    """The limiter is a pure module."""

    def test_no_twisted_import(self) -> None:
        """Importing it in a fresh interpreter pulls in no Twisted module."""
        script = (
            "import sys, mdtwist.login_limits\n"
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted')))"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=Path(mdtwist.__file__).parents[1],
            check=True,
        )
        self.assertEqual(result.stdout.strip(), "")
