"""
The README's account of mail to other domains on a machine without outside DNS: a resolver
that says the domain does not exist makes it bounce at once (a notice with C{Status: 5.1.2} in
the sender's Maildir); a DNS server that does not answer leaves it queued with C{4.4.3} and a
next attempt, as C{mdtwistctl queue list} and C{queue show} print it.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.dns import start_dns_server

_WAIT = 30.0


def _wait_for(condition: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def _submit(daemon: Daemon) -> None:
    # As the README's swaks example: submission, STARTTLS, AUTH, to another domain.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=_WAIT) as client:
        client.starttls(context=context)
        client.login("alice@example.test", PASSWORDS["alice@example.test"])
        client.sendmail(
            "alice@example.test", ["someone@example.net"], "Subject: away\r\n\r\nhello\r\n"
        )


class WithoutOutsideDNSTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def test_domain_does_not_exist(self) -> None:
        """
        A resolver that answers NXDOMAIN: the sender gets the failure notice at once.
        """
        dns = start_dns_server(self, ["example.net"], lambda server: None)
        host, port = dns.endpoint
        daemon = Daemon(Path(self.mktemp()), outbound=f'dns_servers = ["{host}:{port}"]')
        self.addCleanup(daemon.stop)
        daemon.start()
        _submit(daemon)
        notices = _wait_for(lambda: daemon.messages("alice@example.test"), "the notice")
        assert isinstance(notices, list)
        self.assertIn(b"Status: 5.1.2", notices[0])
        self.assertIn(b"domain example.net does not exist", notices[0])
        _wait_for(lambda: daemon.ctl("queue", "list").stdout.startswith("0 messages"), "empty")

    def test_dns_does_not_answer(self) -> None:
        """
        A DNS server that does not answer: the message stays queued, deferred with 4.4.3
        and a next attempt.
        """
        daemon = Daemon(Path(self.mktemp()))  # DNS to 127.0.0.1:9, where nothing listens
        self.addCleanup(daemon.stop)
        daemon.start()
        _submit(daemon)
        listing = daemon.ctl("queue", "list").stdout
        match = re.match(r"([0-9A-F]+)\s.*1/1 pending", listing)
        self.assertIsNotNone(match, listing)
        assert match is not None

        def deferred() -> str:
            shown = daemon.ctl("queue", "show", match.group(1)).stdout
            return shown if "status=4.4.3" in shown else ""

        shown = _wait_for(deferred, "the deferral")
        assert isinstance(shown, str)
        self.assertIn("MX lookup: no answer for example.net", shown)
        self.assertRegex(shown, r"Next-Attempt: \d{4}-\d\d-\d\dT")
