# -*- test-case-name: tests.delivery.test_schedule -*-
"""
When to try a queued message again, and when to give up: pure functions of time.

Rules (MDaemon's retry queue, with Postfix's backoff for the retry phase):
  - I{remote-queue phase}: for its first C{remote_residency} seconds a message that failed
    temporarily is retried every C{remote_interval} seconds;
  - I{retry phase}: afterwards it waits as long as it has already been queued, but never less
    than C{minimal_backoff} nor more than C{maximal_backoff}, so young messages are retried
    soon and old ones rarely;
  - after an SMTP 4xx reply the delivery may ask for a least wait (C{delay_after_temp_error},
    MDaemon's "delay delivery after an SMTP temp error"): the next attempt is never sooner;
  - no attempt is scheduled after the end of the message's lifetime: the last one happens at
    that moment, and a message older than its lifetime is not retried: its pending recipients
    fail with C{4.4.7}. The notices we generate ourselves have their own, shorter, lifetime.

The same settings class holds the notice switches and the hop limit, so the whole behaviour of
the queue is one value for the configuration to fill.

Pure: standard library and attrs only; the current time is always a parameter.
"""

from __future__ import annotations

import attrs

from mdtwist.delivery.dsn import DSNTexts

_DAY = 24 * 3600.0


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, not {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen
class QueuePolicy:
    """
    How the queue retries, gives up and tells senders: every setting of the retry queue.

    Times are in seconds.

    @ivar remote_residency: how long a new message stays in the remote queue (frequent retries)
        before it moves to the retry queue (MDaemon: "keep message in the remote queue for at
        least N minutes").
    @ivar remote_interval: the wait after a temporary failure in the remote queue.
    @ivar minimal_backoff: the shortest wait after a temporary failure in the retry queue
        (MDaemon: "retry sending undeliverable mail once every N minutes").
    @ivar maximal_backoff: the longest wait after a temporary failure in the retry queue.
    @ivar delay_after_temp_error: the least wait after an SMTP 4xx reply, given by the remote
        delivery in L{mdtwist.spool.model.RecipientResult.retry_after}; 0 disables it.
    @ivar lifetime: how long a message may stay queued before its pending recipients fail
        (MDaemon: "if a message is still undeliverable after N days"; 0 gives up after the
        first temporary failure).
    @ivar notice_lifetime: the same for the notices we generate ourselves.
    @ivar delay_notice: whether to tell the sender, once per recipient, when a message enters
        the retry queue (as C{NOTIFY} allows).
    @ivar delivered_after_delay_notice: whether to tell the sender when a recipient he was told
        about in a delay notice has been delivered.
    @ivar bad_queue_undeliverable_notices: whether our own notices that fail or expire are
        parked in the bad queue (else they are dropped, logged); never a notice about a notice.
    @ivar hop_limit: a queued message with more C{Received:} and C{Delivered-To:} lines than
        this plus one (our own stamp added on receipt) is a loop: it is parked in the bad queue.
    @ivar texts: the subjects and texts of the notices.
    """

    remote_residency: float = attrs.field(default=30 * 60.0, validator=_non_negative)
    remote_interval: float = attrs.field(default=15 * 60.0, validator=_positive)
    minimal_backoff: float = attrs.field(default=60 * 60.0, validator=_positive)
    maximal_backoff: float = attrs.field(default=3 * 3600.0, validator=_positive)
    delay_after_temp_error: float = attrs.field(default=3 * 60.0, validator=_non_negative)
    lifetime: float = attrs.field(default=5 * _DAY, validator=_non_negative)
    notice_lifetime: float = attrs.field(default=2 * _DAY, validator=_non_negative)
    delay_notice: bool = True
    delivered_after_delay_notice: bool = False
    bad_queue_undeliverable_notices: bool = True
    hop_limit: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    texts: DSNTexts = attrs.field(factory=DSNTexts)

    @maximal_backoff.validator
    def _check_maximal(self, attribute: attrs.Attribute[float], value: float) -> None:
        if value < self.minimal_backoff:
            raise ValueError(
                f"maximal_backoff ({value!r}) must not be less than"
                f" minimal_backoff ({self.minimal_backoff!r})"
            )


#: The former name of L{QueuePolicy}.
RetryPolicy = QueuePolicy

#: The settings MDaemon ships with: give up after two days.
MDAEMON_COMPATIBLE = QueuePolicy(lifetime=2 * _DAY)


def in_retry_phase(policy: QueuePolicy, arrival: float, now: float) -> bool:
    """
    Tell whether a message has moved from the remote queue to the retry queue.

    @param policy: the queue settings.
    @param arrival: when the message arrived, seconds since the epoch.
    @param now: the current time, seconds since the epoch.
    @return: whether it has been queued for at least the remote-queue residency.
    """
    return now - arrival >= policy.remote_residency


def give_up_time(policy: QueuePolicy, arrival: float, *, notice: bool = False) -> float:
    """
    The time after which a message is not retried.

    @param policy: the queue settings.
    @param arrival: when the message arrived, seconds since the epoch.
    @param notice: whether the message is a notice we generated.
    @return: the end of its lifetime, seconds since the epoch.
    """
    return arrival + (policy.notice_lifetime if notice else policy.lifetime)


def next_attempt(
    policy: QueuePolicy,
    arrival: float,
    now: float,
    *,
    retry_after: float | None = None,
    notice: bool = False,
) -> float:
    """
    Choose the time of the next attempt after a temporary failure.

    @param policy: the queue settings.
    @param arrival: when the message arrived, seconds since the epoch.
    @param now: the current time, seconds since the epoch.
    @param retry_after: the least wait the delivery asked for (after an SMTP 4xx), or L{None}.
    @param notice: whether the message is a notice we generated (its lifetime differs).
    @return: the time of the next attempt, seconds since the epoch: never sooner than
        C{retry_after} from now, and never after the end of the lifetime unless that has
        passed already.
    """
    waited = max(0.0, now - arrival)
    if waited < policy.remote_residency:
        wait = policy.remote_interval
    else:
        wait = min(policy.maximal_backoff, max(policy.minimal_backoff, waited))
    if retry_after is not None:
        wait = max(wait, retry_after)
    end = give_up_time(policy, arrival, notice=notice)
    return min(now + wait, end) if end > now else now + wait


def expired(policy: QueuePolicy, arrival: float, now: float, *, notice: bool = False) -> bool:
    """
    Tell whether a message has been queued too long to be tried again.

    @param policy: the queue settings.
    @param arrival: when the message arrived, seconds since the epoch.
    @param now: the current time, seconds since the epoch.
    @param notice: whether the message is a notice we generated.
    @return: whether it is at least as old as its lifetime.
    """
    return now >= give_up_time(policy, arrival, notice=notice)
