"""
C{GET /metrics} of the real daemon, scraped over HTTP and read with the Prometheus text
parser: the numbers follow what the server did, with one process and with two (where the
first adds up the numbers of both).
"""

from __future__ import annotations

import http.client
import smtplib
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.peers import free_port

_WAIT = 30.0


def _wait_for(condition: Callable[[], object], what: str) -> Any:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _daemon(directory: Path, server_extra: str = "") -> tuple[Daemon, int]:
    port = free_port()
    daemon = Daemon(
        directory,
        trusted_networks=["127.0.0.0/8"],
        server_extra=server_extra,
        extra=f"""
[[http.listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"

[metrics]
enable = true
allowed_networks = ["127.0.0.1/32"]
""",
        extra_ports=(port,),
    )
    return daemon, port


def _get(port: int, source: str = "127.0.0.1") -> tuple[int, str, str]:
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=_WAIT, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read().decode()
    finally:
        connection.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, content_type, text = _get(port)
    assert status == 200, (status, text)
    assert content_type.startswith("text/plain; version="), content_type
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return values


def _value(
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float | None:
    return values.get((name, tuple(sorted(labels.items()))))


class OneProcessTests(SynchronousTestCase):
    """
    One process: sessions, accepted and refused mail, deliveries and the queue.
    """

    def setUp(self) -> None:
        self.daemon, self.port = _daemon(Path(self.mktemp()))
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def test_numbers_follow_the_mail(self) -> None:
        """
        A delivered local message, a refused recipient and a deferred remote one show in
        their counters, the latency histogram, the queue gauges and the spool's commits.
        """
        values = _scrape(self.port)
        # The start-up check of the listeners made sessions already.
        sessions = _value(values, "mdtwist_smtp_sessions_total", mode="mx", outcome="accepted")
        self.assertEqual(_value(values, "mdtwist_processes", state="answered"), 1.0)
        self.assertEqual(_value(values, "mdtwist_processes", state="missing"), 0.0)
        self.assertEqual(_value(values, "mdtwist_queue_messages", queue="active"), 0.0)

        message = EmailMessage()
        message["From"] = "s@remote.example"
        message["To"] = "alice@example.test"
        message["Subject"] = "counted"
        message.set_content("hello\n")
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
            client.ehlo("client.example")
            client.mail("s@remote.example")
            self.assertEqual(client.rcpt("nobody@example.test")[0], 550)
            self.assertEqual(client.rcpt("alice@example.test")[0], 250)
            self.assertEqual(client.data(message.as_string())[0], 250)
        _wait_for(lambda: self.daemon.messages("alice@example.test"), "the local delivery")
        values = _wait_for(
            lambda: (
                (v := _scrape(self.port))
                and _value(v, "mdtwist_deliveries_total", outcome="delivered", route="local")
                and v
            ),
            "the delivery's counter",
        )
        self.assertEqual(_value(values, "mdtwist_messages_accepted_total", mode="mx"), 1.0)
        self.assertEqual(
            _value(values, "mdtwist_smtp_refused_total", stage="rcpt", status="5.1.1"), 1.0
        )
        self.assertEqual(
            _value(values, "mdtwist_deliveries_total", outcome="delivered", route="local"), 1.0
        )
        self.assertEqual(
            _value(values, "mdtwist_delivery_latency_seconds_count", route="local"), 1.0
        )
        self.assertEqual(
            _value(values, "mdtwist_messages_delivered_first_total", outcome="delivered"), 1.0
        )
        self.assertEqual(
            _value(values, "mdtwist_smtp_sessions_total", mode="mx", outcome="accepted"),
            (sessions or 0) + 1,
        )
        self.assertEqual(_value(values, "mdtwist_smtp_sessions_open", mode="mx"), 0.0)
        self.assertGreaterEqual(
            _value(values, "mdtwist_directory_lookup_seconds_count", operation="find") or 0, 1
        )

        # Mail to another domain cannot be delivered here (DNS fails): it stays queued.
        with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
            client.sendmail("alice@example.test", ["r@remote.example"], message.as_string())
        values = _wait_for(
            lambda: (
                (v := _scrape(self.port))
                and _value(v, "mdtwist_deliveries_total", outcome="deferred", route="remote")
                and v
            ),
            "the deferral",
        )
        self.assertEqual(_value(values, "mdtwist_queue_messages", queue="active"), 1.0)
        self.assertEqual(_value(values, "mdtwist_queue_messages", queue="bad"), 0.0)
        # The local message went to its mailbox before its reply, never to the spool; the
        # remote one was committed twice: queued, then its deferral.
        self.assertEqual(_value(values, "mdtwist_spool_commit_batch_messages_count"), 2.0)
        age = _value(values, "mdtwist_queue_oldest_age_seconds", queue="active")
        assert age is not None
        self.assertGreaterEqual(age, 0.0)

    def test_other_addresses_refused(self) -> None:
        """
        A client outside C{metrics.allowed_networks} gets 403; the other paths still go to
        the client-settings site.
        """
        status, _, text = _get(self.port, source="127.0.0.2")
        self.assertEqual((status, text), (403, "metrics are not served to this address\n"))
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=_WAIT)
        try:
            connection.request("GET", "/mail/config-v1.1.xml?emailaddress=alice@example.test")
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            self.assertIn(b"clientConfig", response.read())
        finally:
            connection.close()


class TwoProcessesTests(SynchronousTestCase):
    """
    Two processes: the first adds up the numbers of both.
    """

    def setUp(self) -> None:
        self.daemon, self.port = _daemon(Path(self.mktemp()), "processes = 2")
        self.addCleanup(self.daemon.stop)
        self.daemon.start()

    def _child_sessions(self) -> int:
        return sum(
            1
            for line in self.daemon.log().splitlines()
            if "[shard-1 mdtwist.maillog#info]" in line and ": connect from " in line
        )

    def test_sessions_of_both_processes(self) -> None:
        """
        Sessions are counted in whichever process the kernel gave them to; the scrape has
        them all, and both processes answered.
        """
        values = _wait_for(
            lambda: (
                (v := _scrape(self.port))
                and _value(v, "mdtwist_processes", state="answered") == 2.0
                and v
            ),
            "the child's answer",
        )
        # The start-up check of the listeners made sessions already.
        before = _value(values, "mdtwist_smtp_sessions_total", mode="mx", outcome="accepted")
        made = 0
        while self._child_sessions() == 0 or made < 4:
            with smtplib.SMTP("127.0.0.1", self.daemon.mx_port, timeout=_WAIT) as client:
                client.noop()
            made += 1
            self.assertLess(made, 200, "no session reached the second process")
        values = _wait_for(
            lambda: (
                (v := _scrape(self.port))
                and _value(v, "mdtwist_smtp_sessions_open", mode="mx") == 0.0
                and v
            ),
            "every session closed",
        )
        self.assertEqual(
            _value(values, "mdtwist_smtp_sessions_total", mode="mx", outcome="accepted"),
            (before or 0) + made,
        )
        self.assertEqual(_value(values, "mdtwist_processes", state="missing"), 0.0)
