# -*- test-case-name: tests.test_metrics -*-
"""
The C{metrics} control command: every process's numbers, added up.

Each process answers with its own numbers (after reading its spool shard's queue sizes), and
the first process adds the answers up (L{combine_metrics}, through L{mdtwist.metrics.merge}).
C{GET /metrics} (L{mdtwist.metricsweb}) and C{mdtwistctl} ask for it; it lives apart from the
web resource so that a server without an HTTP listener never loads C{twisted.web}.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from mdtwist import metrics
from mdtwist.control.commands import ControlCommand, ControlError
from mdtwist.control.registry import Answer, ControlRegistry
from mdtwist.spool.admin import QueueStats, queue_stats
from mdtwist.spool.store import SQLiteSpool

_log = Logger()


class Metrics(ControlCommand):
    """
    Every process's numbers, added up.

    Response: C{samples}, the samples (L{mdtwist.metrics.snapshot}'s form); C{shards}, the
    shards that answered; C{missing}, those whose process did not.
    """

    commandName = b"metrics"  # noqa: N815 - the name AMP reads
    arguments = []  # noqa: RUF012 - the name AMP reads
    response = [  # noqa: RUF012 - the name AMP reads
        (b"samples", amp.String()),
        (b"shards", amp.ListOf(amp.Integer())),
        (b"missing", amp.ListOf(amp.Integer())),
    ]


def register_metrics(
    registry: ControlRegistry, *, shard: int, spool: SQLiteSpool, clock: IReactorTime
) -> None:
    """
    Register L{Metrics} for one process.

    @param registry: where.
    @param shard: this process's spool shard.
    @param spool: its spool (the queue gauges).
    @param clock: the time (the age of the oldest messages).
    """

    def handler() -> Deferred[Answer]:
        def counted(stats: QueueStats) -> Answer:
            now = clock.seconds()
            metrics.set_queues(
                {queue.value: count for queue, count in stats.counts.items()},
                {queue.value: now - first for queue, first in stats.oldest.items()},
            )
            return {"samples": metrics.snapshot(), "shards": [shard], "missing": []}

        def failed(reason: Failure) -> Answer:
            raise ControlError(f"cannot count the queue: {reason.getErrorMessage()}")

        return spool.inspect(queue_stats).addCallbacks(counted, failed)

    registry.register(Metrics, handler, combine=combine_metrics)


def combine_metrics(answers: Mapping[int, Answer | None]) -> Answer:
    """
    Add up the numbers of every process.

    @param answers: each process's answer by shard; L{None} for one that did not answer.
    @return: the server's answer.
    """
    parts = []
    shards = []
    missing = []
    for shard in sorted(answers):
        answer = answers[shard]
        if answer is None:
            missing.append(shard)
            continue
        try:
            parts.append(metrics.read_snapshot(answer["samples"]))
        except ValueError as e:
            _log.warn("Shard {shard} sent bad metrics: {error}", shard=shard, error=str(e))
            missing.append(shard)
            continue
        shards.append(shard)
    merged = metrics.merge(parts, missing=len(missing))
    return {
        "samples": metrics.snapshot_of(merged),
        "shards": shards,
        "missing": missing,
    }
