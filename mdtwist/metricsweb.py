# -*- test-case-name: tests.test_metricsweb -*-
"""
C{GET /metrics}: the Prometheus endpoint on the C{[[http.listen]]} listeners (C{[metrics]}).

A scrape reaches the first process; L{MetricsResource} asks the control dispatcher for the
L{Metrics} command, which every process answers with its own numbers (after reading its spool
shard's queue sizes) and which L{combine_metrics} adds up (L{mdtwist.metrics.merge}). Only
clients in C{metrics.allowed_networks} get an answer (others 403); the other paths go to the
client-settings site as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from mdtwist import metrics
from mdtwist.control.commands import ControlCommand, ControlError
from mdtwist.control.registry import Answer, ControlRegistry
from mdtwist.spool.admin import QueueStats, queue_stats
from mdtwist.spool.store import SQLiteSpool

_log = Logger()

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class MetricsResource(Resource):
    """
    C{GET /metrics}: the server's numbers in the Prometheus text format.
    """

    isLeaf = True  # noqa: N815 - the name Twisted reads

    def __init__(self, scrape: Callable[[], Deferred[Answer]], allowed: Sequence[str]) -> None:
        """
        @param scrape: runs the L{Metrics} command (through the control dispatcher).
        @param allowed: the client networks (CIDR) that may read it.
        """
        super().__init__()
        self._scrape = scrape
        self._allowed: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allowed
        )

    def _permitted(self, request: Request) -> bool:
        host = getattr(request.getClientAddress(), "host", None)
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._allowed)

    def render_GET(self, request: Request) -> bytes | int:  # noqa: N802 - Twisted's name
        """
        Answer a scrape.

        @param request: the request.
        @return: L{NOT_DONE_YET}, or the 403 body.
        """
        if not self._permitted(request):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"metrics are not served to this address\n"
        d = self._scrape()

        def answer(result: Answer) -> None:
            body = metrics.render(metrics.read_snapshot(result["samples"]))
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            request.write(body)
            request.finish()

        def failed(reason: Failure) -> None:
            _log.warn("Metrics scrape failed: {error}", error=reason.getErrorMessage())
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"metrics are not available now\n")
            request.finish()

        d.addCallbacks(answer, failed).addErrback(lambda f: None)  # a client that left
        return NOT_DONE_YET

    render_HEAD = render_GET  # noqa: N815 - Twisted's name


class MetricsRoot(Resource):
    """
    The root of the HTTP site with metrics: C{/metrics} is L{MetricsResource}, every other path
    goes whole to the site's own resource (a leaf that routes by the whole path).
    """

    def __init__(self, metrics_resource: Resource, other: Resource) -> None:
        """
        @param metrics_resource: serves C{/metrics}.
        @param other: serves everything else.
        """
        super().__init__()
        self._metrics = metrics_resource
        self._other = other

    @override
    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if path == b"metrics" and request.postpath in ([], [b""]):
            return self._metrics
        # Give the segment back: the other resource sees the path as if it were the root.
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._other

    @override
    def render(self, request: Any) -> bytes | int:
        result: bytes | int = self._other.render(request)
        return result
