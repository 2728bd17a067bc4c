"""
Tests for L{mdtwist.smtp.deadlines}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.deadlines import Deadlines


class Owner:
    """Records when its deadline passed; may act on the deadlines from its callback."""

    def __init__(self, clock: Clock, name: str, log: list[tuple[str, float]]) -> None:
        self.clock = clock
        self.name = name
        self.log = log
        self.then: object = None

    def deadline_passed(self) -> None:
        self.log.append((self.name, self.clock.seconds()))
        if callable(self.then):
            self.then()


class DeadlinesTests(SynchronousTestCase):
    """
    Tests for L{Deadlines}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.log: list[tuple[str, float]] = []
        self.deadlines: Deadlines[Owner] = Deadlines(self.clock, 1.0)

    def owner(self, name: str) -> Owner:
        return Owner(self.clock, name, self.log)

    def test_passes_at_the_first_check_after_it(self) -> None:
        """
        A deadline is acted on at the first check at or after it, at most one interval late,
        and only once.
        """
        a, b = self.owner("a"), self.owner("b")
        self.deadlines.set(a, 3.0)
        self.clock.pump([1.0, 1.0])
        self.deadlines.set(b, 0.5)  # due at 2.5, between two checks
        self.assertEqual(self.log, [])
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("a", 3.0), ("b", 3.0)])
        self.clock.pump([1.0, 1.0])
        self.assertEqual(self.log, [("a", 3.0), ("b", 3.0)])
        self.assertEqual(len(self.deadlines), 0)

    def test_set_again_moves_it(self) -> None:
        """Setting an owner's deadline again replaces the earlier one."""
        a = self.owner("a")
        self.deadlines.set(a, 2.0)
        self.clock.advance(1.0)
        self.deadlines.set(a, 2.0)
        self.clock.advance(1.0)
        self.assertEqual(self.log, [])
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("a", 3.0)])

    def test_clear(self) -> None:
        """A cleared deadline never passes; clearing an owner without one does nothing."""
        a, b = self.owner("a"), self.owner("b")
        self.deadlines.set(a, 1.0)
        self.deadlines.set(b, 1.0)
        self.deadlines.clear(a)
        self.deadlines.clear(a)
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("b", 1.0)])

    def test_timer_only_while_a_deadline_is_set(self) -> None:
        """
        One timer serves every deadline; it is cancelled when the last deadline is cleared
        and not started again after the last one passed.
        """
        owners = [self.owner(str(n)) for n in range(3)]
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for owner in owners:
            self.deadlines.set(owner, 5.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        for owner in owners:
            self.deadlines.clear(owner)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.deadlines.set(owners[0], 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.log, [("0", 1.0)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_owner_sets_a_new_deadline(self) -> None:
        """An owner may set itself a new deadline when the old one passes."""
        a = self.owner("a")
        a.then = lambda: self.deadlines.set(a, 2.0)
        self.deadlines.set(a, 1.0)
        self.clock.pump([1.0, 1.0, 1.0])
        self.assertEqual(self.log, [("a", 1.0), ("a", 3.0)])
        self.assertEqual(len(self.deadlines), 1)

    def test_owner_clears_another(self) -> None:
        """
        An owner that clears another owner's deadline from its callback (both due) does not
        stop the other's callback, which was already taken off.
        """
        a, b, c = self.owner("a"), self.owner("b"), self.owner("c")
        a.then = lambda: self.deadlines.clear(b)
        self.deadlines.set(a, 1.0)
        self.deadlines.set(b, 1.0)
        self.deadlines.set(c, 5.0)
        self.clock.advance(1.0)
        self.assertEqual(sorted(self.log), [("a", 1.0), ("b", 1.0)])
        self.assertEqual(len(self.deadlines), 1)

    def test_failing_owner(self) -> None:
        """
        An owner whose callback raises is logged; the other owners due at the same check are
        still called, and later deadlines are still checked.
        """
        a, b, c = self.owner("a"), self.owner("b"), self.owner("c")

        def fail() -> None:
            raise RuntimeError("broken")

        a.then = fail
        self.deadlines.set(a, 1.0)
        self.deadlines.set(b, 1.0)
        self.deadlines.set(c, 2.0)
        self.clock.pump([1.0, 1.0])
        self.assertEqual(sorted(self.log), [("a", 1.0), ("b", 1.0), ("c", 2.0)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
