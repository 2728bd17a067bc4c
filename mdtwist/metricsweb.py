# -*- test-case-name: tests.test_metricsweb -*-
"""
C{GET /metrics}: the Prometheus endpoint on the C{[[http.listen]]} listeners (C{[metrics]}).

A scrape reaches the first process; L{MetricsResource} asks the control dispatcher for the
L{mdtwist.control.metrics.Metrics} command, which every process answers with its own numbers
and the first adds up. Only
clients in C{metrics.allowed_networks} get an answer (others 403); the other paths go to the
client-settings site as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from typing_extensions import override

from mdtwist import metrics
from mdtwist.control.registry import Answer
from mdtwist.ipaddr import Network, in_networks

_log = Logger()


class MetricsResource(Resource):
    """
    C{GET /metrics}: the server's numbers in the Prometheus text format.
    """

    isLeaf = True  # noqa: N815 - the name Twisted reads

    def __init__(self, scrape: Callable[[], Deferred[Answer]], allowed: Sequence[str]) -> None:
        """
        @param scrape: runs the L{mdtwist.control.metrics.Metrics} command (through the
            control dispatcher).
        @param allowed: the client networks (CIDR) that may read it.
        """
        super().__init__()
        self._scrape = scrape
        self._allowed: tuple[Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in allowed
        )

    def _permitted(self, request: Request) -> bool:
        host = getattr(request.getClientAddress(), "host", None)
        return in_networks(str(host), self._allowed)

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
