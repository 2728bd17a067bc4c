# -*- test-case-name: tests.spool.test_schedule -*-
"""
When to try a queued message again, and when to give up: pure functions of time.

Rules (after Postfix's C{qmgr}, see C{research/delivery.md} sections 3.1 and 6): after a
temporary failure a message waits as long as it has already been in the queue, but never less
than the minimal backoff nor more than the maximal backoff, so young messages are retried soon
and old ones rarely. A message older than its lifetime is not retried: its pending recipients
fail with C{4.4.7}.

Pure: standard library and attrs only; the current time is always a parameter.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class RetryPolicy:
    """
    The retry schedule.

    @ivar minimal_backoff: the shortest wait after a temporary failure, in seconds.
    @ivar maximal_backoff: the longest wait after a temporary failure, in seconds.
    @ivar lifetime: how long a message may stay in the queue, in seconds.
    """

    minimal_backoff: float = 300.0
    maximal_backoff: float = 3 * 3600.0
    lifetime: float = 5 * 24 * 3600.0


def next_attempt(policy: RetryPolicy, arrival: float, now: float) -> float:
    """
    Choose the time of the next attempt after a temporary failure.

    @param policy: the retry schedule.
    @param arrival: when the message arrived, seconds since the epoch.
    @param now: the current time, seconds since the epoch.
    @return: the time of the next attempt, seconds since the epoch.
    """
    waited = max(0.0, now - arrival)
    return now + min(policy.maximal_backoff, max(policy.minimal_backoff, waited))


def expired(policy: RetryPolicy, arrival: float, now: float) -> bool:
    """
    Tell whether a message has been queued too long to be tried again.

    @param policy: the retry schedule.
    @param arrival: when the message arrived, seconds since the epoch.
    @param now: the current time, seconds since the epoch.
    @return: whether the message is older than the policy's lifetime.
    """
    return now - arrival >= policy.lifetime
