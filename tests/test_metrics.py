"""Tests for L{mdtwist.metrics} and L{mdtwist.metricsweb}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from mdtwist import metrics
from mdtwist.control.commands import ControlError
from mdtwist.control.metrics import Metrics, combine_metrics, register_metrics
from mdtwist.control.registry import ControlDispatcher, ControlRegistry
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.metricsweb import MetricsResource, MetricsRoot
from mdtwist.route import Route, RouteKind
from mdtwist.spool.model import QueuedMessage, RecipientResult
from mdtwist.spool.store import SQLiteSpool
from tests.spool.fakes import make_envelope, run_now


def _parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def _value(samples: list[metrics.Sample], name: str, **labels: str) -> float | None:
    for _, sample, found, value in samples:
        if sample == name and found == labels:
            return value
    return None


class EventTests(SynchronousTestCase):
    """
    The event functions move their metrics (the registry is the process's, so each test
    compares before and after).
    """

    def test_sessions_and_refusals(self) -> None:
        """
        Sessions opened and closed, messages accepted, refusals by stage and status.
        """
        before = metrics.samples()
        metrics.session_opened("mx", accepted=True)
        metrics.session_opened("mx", accepted=False)
        metrics.message_accepted("mx", 1234)
        metrics.refused("rcpt", 550, "5.1.1")
        metrics.refused("mail", 503, None)
        after = metrics.samples()

        def delta(name: str, **labels: str) -> float:
            return (_value(after, name, **labels) or 0) - (_value(before, name, **labels) or 0)

        self.assertEqual(delta("mdtwist_smtp_sessions_total", mode="mx", outcome="accepted"), 1)
        self.assertEqual(delta("mdtwist_smtp_sessions_total", mode="mx", outcome="refused"), 1)
        self.assertEqual(delta("mdtwist_smtp_sessions_open", mode="mx"), 1)
        self.assertEqual(delta("mdtwist_messages_accepted_bytes_total", mode="mx"), 1234)
        self.assertEqual(delta("mdtwist_smtp_refused_total", stage="rcpt", status="5.1.1"), 1)
        self.assertEqual(delta("mdtwist_smtp_refused_total", stage="mail", status="503"), 1)
        metrics.session_closed("mx")
        self.assertEqual(
            _value(metrics.samples(), "mdtwist_smtp_sessions_open", mode="mx"),
            _value(before, "mdtwist_smtp_sessions_open", mode="mx") or 0.0,
        )

    def test_attempt(self) -> None:
        """
        Each result counts by outcome and route; delivered ones add their time since arrival
        to the latency histogram.
        """
        envelope = make_envelope(
            Recipient("a@example.com", route=Route(RouteKind.LOCAL, "a@example.com")),
            "b@remote.example",
        )
        message = QueuedMessage("000000000001", envelope, 10, 0, 1000.0)
        before = metrics.samples()
        metrics.attempt_recorded(
            message,
            [
                RecipientResult(0, RecipientState.DELIVERED, "2.0.0"),
                RecipientResult(1, RecipientState.PENDING, "4.4.1"),
            ],
            1030.0,
        )
        after = metrics.samples()

        def delta(name: str, **labels: str) -> float:
            return (_value(after, name, **labels) or 0) - (_value(before, name, **labels) or 0)

        self.assertEqual(delta("mdtwist_deliveries_total", outcome="delivered", route="local"), 1)
        self.assertEqual(
            delta("mdtwist_deliveries_total", outcome="deferred", route="unclassified"), 1
        )
        self.assertEqual(delta("mdtwist_delivery_latency_seconds_sum", route="local"), 30.0)
        self.assertEqual(
            delta("mdtwist_delivery_latency_seconds_bucket", route="local", le="60.0"), 1
        )
        self.assertEqual(
            delta("mdtwist_delivery_latency_seconds_bucket", route="local", le="15.0"), 0
        )


class MergeTests(SynchronousTestCase):
    """
    The numbers of several processes added up, and their exposition.
    """

    def test_merge_and_render(self) -> None:
        """
        Counters, histograms and queue sizes are summed; the oldest age is the largest; a
        label set only one process has is kept; the processes are counted. The exposition
        parses with Prometheus's parser.
        """
        first: list[metrics.Sample] = [
            ("mdtwist_messages_accepted", "mdtwist_messages_accepted_total", {"mode": "mx"}, 2.0),
            ("mdtwist_queue_messages", "mdtwist_queue_messages", {"queue": "active"}, 3.0),
            (
                "mdtwist_queue_oldest_age_seconds",
                "mdtwist_queue_oldest_age_seconds",
                {"queue": "active"},
                50.0,
            ),
        ]
        second: list[metrics.Sample] = [
            ("mdtwist_messages_accepted", "mdtwist_messages_accepted_total", {"mode": "mx"}, 5.0),
            (
                "mdtwist_messages_accepted",
                "mdtwist_messages_accepted_total",
                {"mode": "submission"},
                1.0,
            ),
            ("mdtwist_queue_messages", "mdtwist_queue_messages", {"queue": "active"}, 4.0),
            (
                "mdtwist_queue_oldest_age_seconds",
                "mdtwist_queue_oldest_age_seconds",
                {"queue": "active"},
                70.0,
            ),
            ("not_ours", "not_ours", {}, 1.0),
        ]
        merged = metrics.merge([first, second], missing=1)
        values = _parse(metrics.render(merged))
        self.assertEqual(values["mdtwist_messages_accepted_total", (("mode", "mx"),)], 7.0)
        self.assertEqual(values["mdtwist_messages_accepted_total", (("mode", "submission"),)], 1.0)
        self.assertEqual(values["mdtwist_queue_messages", (("queue", "active"),)], 7.0)
        self.assertEqual(values["mdtwist_queue_oldest_age_seconds", (("queue", "active"),)], 70.0)
        self.assertEqual(values["mdtwist_processes", (("state", "answered"),)], 2.0)
        self.assertEqual(values["mdtwist_processes", (("state", "missing"),)], 1.0)
        self.assertNotIn(("not_ours", ()), values)

    def test_snapshot_round_trip(self) -> None:
        """
        A snapshot reads back as the samples it was made of; other bytes are refused.
        """
        samples = metrics.samples()
        self.assertEqual(metrics.read_snapshot(metrics.snapshot()), samples)
        with self.assertRaises(ValueError):
            metrics.read_snapshot(b"not compressed")

    def test_real_registry_renders(self) -> None:
        """
        The process's own registry, merged alone, renders every family with its help.
        """
        text = metrics.render(metrics.merge([metrics.samples()])).decode()
        self.assertIn("# HELP mdtwist_deliveries_total ", text)
        self.assertIn("# TYPE mdtwist_spool_commit_batch_messages histogram", text)


class CommandTests(SynchronousTestCase):
    """
    The L{Metrics} control command in one process, and its combination.
    """

    def test_handler_sets_queue_gauges(self) -> None:
        """
        The handler counts the spool's queues and the age of the oldest message.
        """
        clock = Clock()
        clock.advance(1600)
        spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(spool.close)
        self.successResultOf(spool.enqueue(make_envelope("a@example.com"), b"x\r\n"))
        registry = ControlRegistry()
        register_metrics(registry, shard=0, spool=spool, clock=clock)
        answer = self.successResultOf(ControlDispatcher(registry, shard=0).call(Metrics, {}))
        samples = metrics.read_snapshot(answer["samples"])
        self.assertEqual(_value(samples, "mdtwist_queue_messages", queue="active"), 1.0)
        self.assertEqual(_value(samples, "mdtwist_queue_messages", queue="hold"), 0.0)
        self.assertEqual(
            _value(samples, "mdtwist_queue_oldest_age_seconds", queue="active"), 600.0
        )
        self.assertEqual((answer["shards"], answer["missing"]), ([0], []))

    def test_combine(self) -> None:
        """
        The answers are merged; a silent process, or one whose answer cannot be read, is
        missing.
        """
        part = metrics.snapshot_of(
            [("mdtwist_messages_accepted", "mdtwist_messages_accepted_total", {"mode": "mx"}, 2.0)]
        )
        answer = combine_metrics(
            {
                0: {"samples": part, "shards": [0], "missing": []},
                1: {"samples": part, "shards": [1], "missing": []},
                2: None,
                3: {"samples": b"garbage", "shards": [3], "missing": []},
            }
        )
        self.assertEqual((answer["shards"], answer["missing"]), ([0, 1], [2, 3]))
        samples = metrics.read_snapshot(answer["samples"])
        self.assertEqual(_value(samples, "mdtwist_messages_accepted_total", mode="mx"), 4.0)
        self.assertEqual(_value(samples, "mdtwist_processes", state="missing"), 2.0)


def _request(host: str = "127.0.0.1") -> Any:
    request = DummyRequest([b"metrics"])
    request.client = IPv4Address("TCP", host, 12345)
    return request


class ResourceTests(SynchronousTestCase):
    """
    L{MetricsResource} and L{MetricsRoot}.
    """

    def scrape(self) -> Deferred[dict[str, Any]]:
        merged = metrics.snapshot_of(metrics.merge([metrics.samples()]))
        return succeed({"samples": merged, "shards": [0], "missing": []})

    def test_scrape(self) -> None:
        """
        An allowed client gets the exposition with Prometheus's content type.
        """
        resource = MetricsResource(self.scrape, ["127.0.0.0/8"])
        request = _request()
        self.assertEqual(resource.render_GET(request), NOT_DONE_YET)
        self.assertEqual(request.finished, 1)
        self.assertTrue(
            request.responseHeaders.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
        )
        values = _parse(b"".join(request.written))
        self.assertEqual(values["mdtwist_processes", (("state", "answered"),)], 1.0)

    def test_refused(self) -> None:
        """
        Another client gets 403 and nothing is asked.
        """
        asked: list[int] = []

        def scrape() -> Deferred[dict[str, Any]]:
            asked.append(1)
            return self.scrape()

        resource = MetricsResource(scrape, ["10.0.0.0/8"])
        request = _request("127.0.0.1")
        body = resource.render_GET(request)
        self.assertEqual((request.responseCode, asked), (403, []))
        self.assertEqual(body, b"metrics are not served to this address\n")

    def test_failure(self) -> None:
        """
        A scrape that fails is answered 503.
        """
        resource = MetricsResource(
            lambda: fail(ControlError("cannot count the queue")), ["127.0.0.0/8"]
        )
        request = _request()
        resource.render_GET(request)
        self.assertEqual((request.responseCode, request.finished), (503, 1))

    def test_root(self) -> None:
        """
        C{/metrics} goes to the metrics; every other path goes whole to the other resource.
        """
        metrics_resource, other = Resource(), Resource()
        root = MetricsRoot(metrics_resource, other)
        request = DummyRequest([b"mail", b"config-v1.1.xml"])
        request.prepath = [b"mail"]
        request.postpath = [b"config-v1.1.xml"]
        self.assertIs(root.getChildWithDefault(b"mail", request), other)
        self.assertEqual((request.prepath, request.postpath), ([], [b"mail", b"config-v1.1.xml"]))
        request = DummyRequest([b"metrics"])
        request.prepath, request.postpath = [b"metrics"], []
        self.assertIs(root.getChildWithDefault(b"metrics", request), metrics_resource)
