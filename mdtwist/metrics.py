# -*- test-case-name: tests.test_metrics -*-
"""
The numbers mdtwist exports to Prometheus (C{GET /metrics}), and how those of several
processes become the server's.

Every metric is defined here, in one registry of this process (L{REGISTRY}); the code that
sees an event calls one of the small functions below (L{session_opened}, L{refused},
L{delivery_results}, ...), which is all it needs to know about metrics.

The metrics (counters carry the C{_total} suffix in the exposition):

  - C{mdtwist_smtp_sessions_total{mode, outcome}}: SMTP sessions by listener mode, C{accepted}
    or C{refused} (too many sessions); C{mdtwist_smtp_sessions_open{mode}}: sessions now;
  - C{mdtwist_messages_accepted_total{mode}}, C{mdtwist_messages_accepted_bytes_total{mode}};
  - C{mdtwist_messages_delivered_first_total{outcome}}: local mail that could go to its
    mailboxes before the reply (L{mdtwist.delivery.direct}): C{delivered} there, C{queued}
    after a copy failed, or C{busy} (queued at once: enough were under way);
  - C{mdtwist_smtp_refused_total{stage, status}}: refused C{MAIL}, C{RCPT} and message data
    (stage C{mail}, C{rcpt}, C{data}) by enhanced status code (C{5.1.1} unknown user, C{5.7.1}
    relaying denied, C{4.3.0} directory down, ...);
  - C{mdtwist_deliveries_total{outcome, route}}: per recipient and attempt, C{delivered},
    C{deferred} or C{failed}, by route kind (C{local}, C{remote}, C{sharing_peer}, ...);
  - C{mdtwist_delivery_latency_seconds{route}}: from arrival to delivery, per recipient;
  - C{mdtwist_queue_messages{queue}} and C{mdtwist_queue_oldest_age_seconds{queue}}: the
    active, held and bad queues, read from the spool at each scrape;
  - C{mdtwist_directory_lookup_seconds{operation}} and
    C{mdtwist_directory_errors_total{operation}}: directory calls that missed the cache;
  - C{mdtwist_spool_commit_batch_messages}: messages and outcomes per group commit;
  - C{mdtwist_minger_queries_total{status}}: Minger queries answered, by status name, or
    C{no_answer};
  - C{mdtwist_dequeue_signals_total{kind, outcome}}: dequeue requests and signals
    (C{etrn-received}, C{atrn-received}: C{accepted} or C{refused}; the office's own signals
    C{etrn-sent}, C{atrn-sent}, C{other-sent}, by their result: C{sent}, C{no-mail},
    C{released}, C{refused}, C{failed}, C{busy}; L{dequeue_signal});
  - C{mdtwist_processes{state}}: processes whose numbers are in the scrape (C{answered}) and
    those that did not answer (C{missing}).

Several processes. Each process counts its own events. A scrape reaches the first process
(the only one with the HTTP listener); it asks every process for its numbers over the
control channel (L{snapshot}, carried by L{mdtwist.metricsweb}) and adds them up
(L{merge}): counters, histograms, sessions and queue sizes are sums, the age of the oldest
message is the largest. A process that does not answer in time is left out of that scrape
and counted in C{mdtwist_processes{state="missing"}}; its counters then seem to drop, which
Prometheus's C{rate()} takes as a counter reset, as it does when a process restarts.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from mdtwist.envelope import RecipientState
from mdtwist.spool.model import QueuedMessage, RecipientResult

# The *_created series would not add up across processes.
disable_created_metrics()

#: This process's metrics.
REGISTRY = CollectorRegistry(auto_describe=True)

_SESSIONS = Counter(
    "mdtwist_smtp_sessions",
    "SMTP sessions by listener mode, accepted or refused (too many sessions)",
    ["mode", "outcome"],
    registry=REGISTRY,
)
_SESSIONS_OPEN = Gauge(
    "mdtwist_smtp_sessions_open", "SMTP sessions open now", ["mode"], registry=REGISTRY
)
_ACCEPTED = Counter(
    "mdtwist_messages_accepted",
    "Messages accepted (queued) over SMTP",
    ["mode"],
    registry=REGISTRY,
)
_ACCEPTED_BYTES = Counter(
    "mdtwist_messages_accepted_bytes",
    "Bytes of the messages accepted over SMTP",
    ["mode"],
    registry=REGISTRY,
)
_REFUSED = Counter(
    "mdtwist_smtp_refused",
    "Refused MAIL, RCPT and message data, by stage and enhanced status code",
    ["stage", "status"],
    registry=REGISTRY,
)
_DELIVERIES = Counter(
    "mdtwist_deliveries",
    "Delivery attempts per recipient by outcome (delivered, deferred, failed) and route",
    ["outcome", "route"],
    registry=REGISTRY,
)
_LATENCY = Histogram(
    "mdtwist_delivery_latency_seconds",
    "Seconds from a message's arrival to its delivery, per recipient",
    ["route"],
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400),
    registry=REGISTRY,
)
_QUEUE = Gauge(
    "mdtwist_queue_messages",
    "Messages in each queue (active, hold, bad)",
    ["queue"],
    registry=REGISTRY,
)
_QUEUE_AGE = Gauge(
    "mdtwist_queue_oldest_age_seconds",
    "Age of the oldest message of each queue (0 when empty)",
    ["queue"],
    registry=REGISTRY,
)
_DIRECTORY = Histogram(
    "mdtwist_directory_lookup_seconds",
    "Seconds a directory call took (cache misses only)",
    ["operation"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)
_DIRECTORY_ERRORS = Counter(
    "mdtwist_directory_errors",
    "Directory calls that failed (directory unavailable)",
    ["operation"],
    registry=REGISTRY,
)
_BATCH = Histogram(
    "mdtwist_spool_commit_batch_messages",
    "New messages and delivery outcomes written by one spool group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
_MINGER = Counter(
    "mdtwist_minger_queries",
    "Minger queries answered, by status (no_answer: the directory could not say)",
    ["status"],
    registry=REGISTRY,
)
_DELIVERED_FIRST = Counter(
    "mdtwist_messages_delivered_first",
    "Local mail that could go to its mailboxes before the reply: delivered there, queued after"
    " a copy failed, or queued at once because enough were under way (busy)",
    ["outcome"],
    registry=REGISTRY,
)
_DEQUEUE = Counter(
    "mdtwist_dequeue_signals",
    "Dequeue signals (ETRN, ATRN, ...) by kind and outcome",
    ["kind", "outcome"],
    registry=REGISTRY,
)

_OUTCOMES = {
    RecipientState.DELIVERED: "delivered",
    RecipientState.PENDING: "deferred",
    RecipientState.FAILED: "failed",
}

#: The metric whose samples are combined by their largest value, not by their sum.
_LARGEST = frozenset({"mdtwist_queue_oldest_age_seconds"})

#: The family of the processes that are in a scrape.
PROCESSES = "mdtwist_processes"


# -- the events ------------------------------------------------------------------------------

#: The labelled children already looked up, by metric and label values: C{labels()} builds a
#: tuple of strings and takes a lock each time, several times per message.
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    # metric.labels(*values), looked up once (a metric's children are never removed here).
    key = (metric, *values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def session_opened(mode: str, *, accepted: bool) -> None:
    """
    An SMTP connection came in.

    @param mode: the listener's mode (C{mx}, C{submission}, C{smtps}).
    @param accepted: whether it became a session (else it was refused: too many sessions).
    """
    _child(_SESSIONS, mode, "accepted" if accepted else "refused").inc()
    if accepted:
        _child(_SESSIONS_OPEN, mode).inc()


def session_closed(mode: str) -> None:
    """
    A session counted by L{session_opened} ended.

    @param mode: the listener's mode.
    """
    _child(_SESSIONS_OPEN, mode).dec()


def message_accepted(mode: str, size: int) -> None:
    """
    A message was queued (its 250 went out).

    @param mode: the listener's mode.
    @param size: its size in bytes.
    """
    _child(_ACCEPTED, mode).inc()
    _child(_ACCEPTED_BYTES, mode).inc(size)


def refused(stage: str, code: int, status: str | None) -> None:
    """
    A C{MAIL}, C{RCPT} or message was refused.

    @param stage: C{mail}, C{rcpt} or C{data}.
    @param code: the reply code.
    @param status: its enhanced status code, if any.
    """
    _child(_REFUSED, stage, status or str(code)).inc()


def delivery_results(
    results: Iterable[tuple[str, str]], latencies: Iterable[tuple[str, float]]
) -> None:
    """
    The outcome of one delivery attempt of a message.

    @param results: per recipient attempted: its outcome (C{delivered}, C{deferred},
        C{failed}) and its route kind.
    @param latencies: per recipient delivered: its route kind and the seconds since arrival.
    """
    for outcome, route in results:
        _child(_DELIVERIES, outcome, route).inc()
    for route, seconds in latencies:
        _child(_LATENCY, route).observe(max(seconds, 0.0))


def attempt_recorded(
    message: QueuedMessage, results: Sequence[RecipientResult], now: float
) -> None:
    """
    The queue runner recorded a delivery attempt.

    @param message: the message as it was before the attempt.
    @param results: the results recorded, one per recipient attempted.
    @param now: the time of the attempt.
    """
    outcomes = []
    latencies = []
    recipients = message.envelope.recipients
    for result in results:
        route = recipients[result.position].route
        kind = "unclassified" if route is None else route.kind.value
        outcomes.append((_OUTCOMES[result.state], kind))
        if result.state is RecipientState.DELIVERED:
            latencies.append((kind, now - message.envelope.arrival))
    delivery_results(outcomes, latencies)


def directory_call(operation: str, seconds: float, *, failed: bool) -> None:
    """
    A directory call that missed the cache ended.

    @param operation: C{find}, C{authenticate} or C{domains}.
    @param seconds: how long it took.
    @param failed: whether the directory could not answer.
    """
    _DIRECTORY.labels(operation).observe(max(seconds, 0.0))
    if failed:
        _DIRECTORY_ERRORS.labels(operation).inc()


def commit_batch(size: int) -> None:
    """
    The spool wrote a group commit.

    @param size: the new messages and delivery outcomes it held.
    """
    _BATCH.observe(size)


def minger_answered(status: str) -> None:
    """
    The Minger server handled a query.

    @param status: the status name it answered (C{active}, C{unknown}, ...), or C{no_answer}.
    """
    _child(_MINGER, status).inc()


def delivered_first(outcome: str) -> None:
    """
    A message that qualified for delivery before its reply is done with it.

    @param outcome: C{delivered} (every copy in its mailbox), C{queued} (a copy failed, the
        message was queued) or C{busy} (queued without trying: enough were under way).
    """
    _child(_DELIVERED_FIRST, outcome).inc()


def dequeue_signal(kind: str, outcome: str) -> None:
    """
    A dequeue signal was sent or received.

    @param kind: e.g. C{etrn-sent}, C{atrn-received}.
    @param outcome: e.g. C{ok}, C{refused}, C{failed}.
    """
    _child(_DEQUEUE, kind, outcome).inc()


def set_queues(counts: Mapping[str, int], ages: Mapping[str, float]) -> None:
    """
    Set the queue gauges (before a snapshot).

    @param counts: messages per queue name.
    @param ages: per queue name, the age in seconds of its oldest message (0 when empty).
    """
    for queue, count in counts.items():
        _QUEUE.labels(queue).set(count)
        _QUEUE_AGE.labels(queue).set(ages.get(queue, 0.0))


# -- several processes -----------------------------------------------------------------------

#: One sample: its family, its name, its labels and its value.
Sample = tuple[str, str, dict[str, str], float]


def samples(registry: CollectorRegistry = REGISTRY) -> list[Sample]:
    """
    @param registry: the registry to read.
    @return: every sample of it, in exposition order.
    """
    return [
        (family.name, sample.name, dict(sample.labels), float(sample.value))
        for family in registry.collect()
        for sample in family.samples
    ]


def snapshot(registry: CollectorRegistry = REGISTRY) -> bytes:
    """
    Take this process's numbers, compact, for the control channel.

    @param registry: the registry to read.
    @return: the samples as compressed JSON.
    """
    return snapshot_of(samples(registry))


def snapshot_of(found: Sequence[Sample]) -> bytes:
    """
    @param found: samples.
    @return: them as compressed JSON (L{read_snapshot} reads it).
    """
    return zlib.compress(json.dumps(list(found)).encode("utf-8"))


def read_snapshot(data: bytes) -> list[Sample]:
    """
    @param data: what L{snapshot} made.
    @return: its samples.
    @raise ValueError: when it is not such data.
    """
    try:
        raw = json.loads(zlib.decompress(data))
    except (zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"not a metrics snapshot: {e}") from None
    return [
        (str(f), str(n), {str(k): str(v) for k, v in labels.items()}, float(value))
        for f, n, labels, value in raw
    ]


def merge(parts: Sequence[Sequence[Sample]], missing: int = 0) -> list[Sample]:
    """
    Add up the samples of several processes: sums, except the age of the oldest message,
    which is the largest; then the C{mdtwist_processes} samples.

    @param parts: each process's samples.
    @param missing: how many processes did not answer.
    @return: the server's samples, in the order they were first seen.
    """
    merged: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for part in parts:
        for family, name, labels, value in part:
            key = (family, name, tuple(sorted(labels.items())))
            if key not in merged:
                merged[key] = value
            elif family in _LARGEST:
                merged[key] = max(merged[key], value)
            else:
                merged[key] += value
    result = [
        (family, name, dict(labels), value) for (family, name, labels), value in merged.items()
    ]
    result.append((PROCESSES, PROCESSES, {"state": "answered"}, float(len(parts))))
    result.append((PROCESSES, PROCESSES, {"state": "missing"}, float(missing)))
    return result


def render(merged: Sequence[Sample], registry: CollectorRegistry = REGISTRY) -> bytes:
    """
    The Prometheus text exposition of merged samples.

    @param merged: the server's samples (L{merge}).
    @param registry: names the type and help of each family.
    @return: the exposition, UTF-8.
    """
    described = {family.name: family for family in registry.collect()}
    families: dict[str, Metric] = {}
    for family, name, labels, value in merged:
        metric = families.get(family)
        if metric is None:
            known = described.get(family)
            if known is not None:
                metric = Metric(family, known.documentation, known.type, known.unit)
            elif family == PROCESSES:
                metric = Metric(family, "Processes in this scrape: answered or missing", "gauge")
            else:
                continue  # a family this process does not know (another version)
            families[family] = metric
        metric.add_sample(name, labels, value)
    output = CollectorRegistry(auto_describe=False)
    output.register(_Fixed(list(families.values())))
    return generate_latest(output)


class _Fixed:
    # A collector of ready families.

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)

    def describe(self) -> list[Any]:
        return []
