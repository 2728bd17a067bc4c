# -*- test-case-name: tests.minger.test_limits -*-
"""
Rate limits of the Minger server, so that it is neither a reflector nor an address-harvesting
oracle. Pure: time is a parameter.

Theory of operation. Every datagram from an allowed source passes L{SourceLimiter.admit}:

  1. A source whose "no such address" budget is spent is paused: nothing it sends is answered
     until the pause ends.
  2. Each source has a token bucket (C{rate} per second, up to C{burst}); all sources together
     share one more bucket (C{global_rate} per second). A datagram that finds a bucket empty is
     dropped unanswered.

After each status 3 answer the server calls L{SourceLimiter.note_unknown}: more than
C{unknown_budget} of them to one source within C{unknown_window} seconds pause that source for
C{unknown_pause} seconds, which stops a dictionary sweep even by a compromised peer.

The state per source is bounded: when more than C{max_sources} sources are tracked, those whose
buckets have refilled and that owe nothing are forgotten.
"""

from __future__ import annotations

import collections
import enum

import attrs


@attrs.frozen
class RateLimits:
    """
    The limits of the Minger server.

    @ivar rate: datagrams per second answered for one source (sustained).
    @ivar burst: datagrams one source may send at once.
    @ivar global_rate: datagrams per second answered for all sources together (also the
        global burst).
    @ivar unknown_budget: status 3 answers one source may get within C{unknown_window}.
    @ivar unknown_window: seconds over which status 3 answers are counted.
    @ivar unknown_pause: seconds a source that spent its budget gets no answers.
    """

    rate: float = 50.0
    burst: int = 200
    global_rate: float = 500.0
    unknown_budget: int = 100
    unknown_window: float = 600.0
    unknown_pause: float = 600.0


class Verdict(enum.Enum):
    """
    What to do with a datagram.
    """

    ALLOW = "allow"
    RATE_LIMITED = "rate-limited"
    PAUSED = "paused"


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last

    def take(self, now: float, rate: float, burst: float) -> bool:
        elapsed = max(0.0, now - self.last)
        self.tokens = min(burst, self.tokens + elapsed * rate)
        self.last = max(self.last, now)
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class SourceLimiter:
    """
    Per-source token buckets, a global bucket, and the budget of "no such address" answers.
    """

    #: Seconds between two log lines about the same limited source.
    LOG_INTERVAL = 60.0

    def __init__(self, limits: RateLimits, max_sources: int = 10_000) -> None:
        """
        @param limits: the limits.
        @param max_sources: how many sources are tracked before idle ones are forgotten.
        """
        self.limits = limits
        self._max_sources = max_sources
        self._buckets: dict[str, _Bucket] = {}
        self._global = _Bucket(limits.global_rate, float("-inf"))
        self._unknowns: dict[str, collections.deque[float]] = {}
        self._paused: dict[str, float] = {}
        self._logged: dict[str, float] = {}

    def admit(self, source: str, now: float) -> Verdict:
        """
        Decide whether a datagram from C{source} is answered, and count it.

        @param source: the sender's IP address.
        @param now: the current time, in seconds.
        @return: the verdict.
        """
        until = self._paused.get(source)
        if until is not None:
            if now < until:
                return Verdict.PAUSED
            del self._paused[source]
        limits = self.limits
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self._max_sources:
                self._forget_idle(now)
            bucket = self._buckets[source] = _Bucket(float(limits.burst), now)
        if not bucket.take(now, limits.rate, limits.burst):
            return Verdict.RATE_LIMITED
        if not self._global.take(now, limits.global_rate, limits.global_rate):
            return Verdict.RATE_LIMITED
        return Verdict.ALLOW

    def note_unknown(self, source: str, now: float) -> bool:
        """
        Count a status 3 answer to C{source}.

        @param source: the sender's IP address.
        @param now: the current time, in seconds.
        @return: C{True} when this answer spent the budget and the source is now paused.
        """
        limits = self.limits
        times = self._unknowns.setdefault(source, collections.deque())
        times.append(now)
        while times and times[0] <= now - limits.unknown_window:
            times.popleft()
        if len(times) <= limits.unknown_budget:
            return False
        del self._unknowns[source]
        self._paused[source] = now + limits.unknown_pause
        return True

    def log_due(self, source: str, now: float) -> bool:
        """
        Throttle log lines about one source to one per L{LOG_INTERVAL}.

        @param source: the sender's IP address.
        @param now: the current time, in seconds.
        @return: whether a line about it may be logged now (and then it is counted).
        """
        last = self._logged.get(source)
        if last is not None and now - last < self.LOG_INTERVAL:
            return False
        if len(self._logged) >= self._max_sources:
            self._logged = {s: t for s, t in self._logged.items() if now - t < self.LOG_INTERVAL}
        self._logged[source] = now
        return True

    def _forget_idle(self, now: float) -> None:
        limits = self.limits
        refill = limits.burst / limits.rate
        for source, times in list(self._unknowns.items()):
            if times[-1] <= now - limits.unknown_window:
                del self._unknowns[source]
        for source, bucket in list(self._buckets.items()):
            if now - bucket.last >= refill and source not in self._unknowns:
                del self._buckets[source]
        for source, until in list(self._paused.items()):
            if until <= now:
                del self._paused[source]
