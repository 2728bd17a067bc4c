# -*- test-case-name: tests.smtp.test_deadlines -*-
"""
The deadlines of many sessions, kept by one timer.

A timer of the reactor for each session costs about half a kilobyte (the C{DelayedCall}, its
bound methods and arguments) and a heap operation at every command. A session's idle timeout
needs no such precision: L{Deadlines} keeps one number per session and checks them all with a
single timer every C{interval} seconds, so a session's deadline is acted on at most one
interval late. The timer runs only while a deadline is set.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

_log = Logger()


class Expiring(Protocol):
    """What L{Deadlines} calls when a deadline has passed."""

    def deadline_passed(self) -> None:
        """The deadline set for this owner has passed (it is no longer set)."""


_Owner = TypeVar("_Owner", bound=Expiring)


class Deadlines(Generic[_Owner]):
    """
    One deadline per owner, checked every C{interval} seconds.
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        """
        @param clock: the clock of the deadlines and the checks.
        @param interval: seconds between two checks: how late a deadline may be acted on.
        """
        self._clock = clock
        self._interval = interval
        self._due: dict[_Owner, float] = {}
        self._check_call: IDelayedCall | None = None

    def __len__(self) -> int:
        """@return: how many deadlines are set."""
        return len(self._due)

    def set(self, owner: _Owner, delay: float) -> None:
        """
        Set (or move) an owner's deadline.

        @param owner: whose deadline; its C{deadline_passed} is called at the first check at
            or after the deadline.
        @param delay: seconds from now.
        """
        self._due[owner] = self._clock.seconds() + delay
        if self._check_call is None:
            self._check_call = self._clock.callLater(self._interval, self._check)

    def clear(self, owner: _Owner) -> None:
        """
        Forget an owner's deadline, if it has one.

        @param owner: whose deadline.
        """
        if self._due.pop(owner, None) is not None and not self._due:
            self._stop()

    def _stop(self) -> None:
        if self._check_call is not None:
            if self._check_call.active():
                self._check_call.cancel()
            self._check_call = None

    def _check(self) -> None:
        self._check_call = None
        now = self._clock.seconds()
        passed = [owner for owner, deadline in self._due.items() if deadline <= now]
        for owner in passed:
            del self._due[owner]
        # Each owner may set a new deadline (and so start the next check) or clear others.
        for owner in passed:
            try:
                owner.deadline_passed()
            except Exception:
                # One owner's failure must not keep the others from their deadlines.
                _log.failure("Acting on a passed deadline failed")
        if self._due and self._check_call is None:
            self._check_call = self._clock.callLater(self._interval, self._check)
