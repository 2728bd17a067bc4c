"""
Tests for L{mdtwist.settings.discover}: the orders, the priority rule, the report; the
conversations themselves run against real servers in tests/integration/test_discover.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.settings.discover import (
    Options,
    Order,
    Outcome,
    Protocol,
    Stage,
    Try,
    candidates,
    probe,
    report,
)
from mdtwist.settings.model import Security

TLS, STARTTLS, PLAIN = Security.IMPLICIT_TLS, Security.STARTTLS, Security.NONE


def short(tries: list[Try]) -> list[str]:
    return [f"{t.host}:{t.port}:{t.security.value}" for t in tries]


class OrderTests(SynchronousTestCase):
    def test_mdaemon(self) -> None:
        """
        IMAP: mail., imap., bare, imap.mail. with implicit TLS then STARTTLS, then plain;
        SMTP: mail., smtp., bare, smtp.mail. on 587, 25, 465, TLS then STARTTLS, then plain.
        """
        tries = candidates("Example.COM", Order.MDAEMON)
        imap = [t for t in tries if t.protocol is Protocol.IMAP]
        smtp = [t for t in tries if t.protocol is Protocol.SMTP]
        self.assertEqual(
            short(imap)[:4],
            [
                "mail.example.com:993:implicit-tls",
                "mail.example.com:143:starttls",
                "imap.example.com:993:implicit-tls",
                "imap.example.com:143:starttls",
            ],
        )
        self.assertEqual(
            short(imap)[6:8],
            ["imap.mail.example.com:993:implicit-tls", "imap.mail.example.com:143:starttls"],
        )
        self.assertEqual(
            short(imap)[8:],
            [
                f"{h}:143:none"
                for h in (
                    "mail.example.com",
                    "imap.example.com",
                    "example.com",
                    "imap.mail.example.com",
                )
            ],
        )
        self.assertEqual(
            short(smtp)[:6],
            [
                "mail.example.com:587:implicit-tls",
                "mail.example.com:587:starttls",
                "mail.example.com:25:implicit-tls",
                "mail.example.com:25:starttls",
                "mail.example.com:465:implicit-tls",
                "mail.example.com:465:starttls",
            ],
        )
        self.assertEqual(smtp[6].host, "smtp.example.com")
        self.assertEqual(smtp[24], Try(Protocol.SMTP, "mail.example.com", 587, PLAIN))
        self.assertEqual(len(smtp), 36)
        self.assertLess(tries.index(imap[-1]), tries.index(smtp[0]))

    def test_thunderbird(self) -> None:
        """
        Thunderbird's stable sort: implicit TLS, then STARTTLS, then plain, host order kept.
        """
        tries = candidates("example.com", Order.THUNDERBIRD)
        imap = short([t for t in tries if t.protocol is Protocol.IMAP])
        self.assertEqual(
            imap,
            [
                "imap.example.com:993:implicit-tls",
                "mail.example.com:993:implicit-tls",
                "example.com:993:implicit-tls",
                "imap.example.com:143:starttls",
                "mail.example.com:143:starttls",
                "example.com:143:starttls",
                "imap.example.com:143:none",
                "mail.example.com:143:none",
                "example.com:143:none",
            ],
        )
        smtp = short([t for t in tries if t.protocol is Protocol.SMTP])
        self.assertEqual(
            smtp[:4],
            [
                "smtp.example.com:465:implicit-tls",
                "mail.example.com:465:implicit-tls",
                "example.com:465:implicit-tls",
                "smtp.example.com:587:starttls",
            ],
        )
        self.assertEqual(smtp[4], "smtp.example.com:25:starttls")
        self.assertTrue(all(s.endswith(":none") for s in smtp[9:]))

    def test_rfc8314_never_plain(self) -> None:
        """
        RFC 8314: implicit TLS first, then STARTTLS, never plaintext.
        """
        tries = candidates("example.com", Order.RFC8314)
        self.assertNotIn(PLAIN, {t.security for t in tries})
        self.assertEqual(tries[0], Try(Protocol.IMAP, "imap.example.com", 993, TLS))
        smtp = [t for t in tries if t.protocol is Protocol.SMTP]
        self.assertEqual((smtp[0].port, smtp[3].port), (465, 587))


def no_tls(host: str) -> Any:
    raise AssertionError("no connection is made")


class FakeProber:
    """
    Runs nothing: each try waits for the test to answer it.
    """

    def __init__(self, parallel: int = 10) -> None:
        self.options = Options(login="a@x", password=None, tls=no_tls, parallel=parallel)
        self.pending: dict[Try, Deferred[Outcome]] = {}
        self.cancelled: list[Try] = []

    def run(self, attempt: Try) -> Deferred[Outcome]:
        def cancel(d: Deferred[Outcome]) -> None:
            self.cancelled.append(attempt)

        deferred: Deferred[Outcome] = Deferred(cancel)
        self.pending[attempt] = deferred
        return deferred

    def answer(self, attempt: Try, ok: bool) -> None:
        self.pending.pop(attempt).callback(
            Outcome(attempt, ok, Stage.DONE if ok else Stage.CONNECT, "x")
        )


class PriorityTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tries = [
            Try(Protocol.IMAP, "a", 993, TLS),
            Try(Protocol.IMAP, "b", 993, TLS),
            Try(Protocol.IMAP, "c", 143, PLAIN),
            Try(Protocol.SMTP, "a", 465, TLS),
        ]
        self.prober = FakeProber()
        self.result = Deferred.fromCoroutine(probe(self.prober, self.tries))  # type: ignore[arg-type]

    def test_better_try_decides(self) -> None:
        """
        A worse try that works first is not taken while a better one is still running; when
        the better one fails, the worse one is taken and the rest cancelled.
        """
        a, b, c, smtp = self.tries
        self.assertEqual(set(self.prober.pending), set(self.tries))
        self.prober.answer(b, True)
        self.assertNoResult(self.result)
        self.assertEqual(self.prober.cancelled, [])
        self.prober.answer(smtp, False)
        self.prober.answer(a, False)
        self.assertEqual(self.prober.cancelled, [c])
        outcomes = self.successResultOf(self.result)
        self.assertEqual(
            [(o.attempt, o.ok) for o in outcomes], [(a, False), (b, True), (smtp, False)]
        )

    def test_best_try_cancels_the_rest(self) -> None:
        """
        When the best try works, every worse try of its protocol is cancelled at once.
        """
        a, _, _, smtp = self.tries
        self.prober.answer(a, True)
        self.assertEqual(sorted(t.host for t in self.prober.cancelled), ["b", "c"])
        self.prober.answer(smtp, True)
        self.assertEqual(len(self.successResultOf(self.result)), 2)

    def test_parallel_limit(self) -> None:
        """
        At most `parallel` tries run at once.
        """
        prober = FakeProber(parallel=2)
        Deferred.fromCoroutine(probe(prober, self.tries))  # type: ignore[arg-type]
        self.assertEqual(len(prober.pending), 2)
        prober.answer(self.tries[0], False)
        self.assertEqual(len(prober.pending), 2)


class ReportTests(SynchronousTestCase):
    def test_json_and_status(self) -> None:
        """
        The JSON report lists tries, the chosen ones and the settings fragment; the status
        says how many protocols were found.
        """
        imap = Try(Protocol.IMAP, "mail.x.test", 993, TLS)
        smtp = Try(Protocol.SMTP, "mail.x.test", 587, STARTTLS)
        outcomes = [
            Outcome(imap, True, Stage.DONE, "works", ("IMAP4REV1",), True),
            Outcome(smtp, False, Stage.AUTH, "the login was rejected", (), False),
        ]
        text, status = report([imap, smtp], outcomes, "a@x.test", as_json=True)
        data: dict[str, Any] = json.loads(text)
        self.assertEqual(status, 2)
        self.assertEqual(data["chosen"]["imap"]["port"], 993)
        self.assertEqual(
            data["settings"],
            {
                "general": {"login_name": "a@x.test", "incoming_server": "mail.x.test"},
                "advanced": {"imap": {"security": "implicit-tls", "port": 993}},
            },
        )
        self.assertEqual(data["tries"][1]["authenticated"], False)
        table, status = report([imap, smtp], outcomes[:1], "a@x.test", as_json=False)
        self.assertIn("imap: mail.x.test:993 implicit-tls", table)
        self.assertIn("smtp: none found", table)

    def test_rejected_password_chooses_nothing(self) -> None:
        """
        After a rejected password, a plaintext try that "would work" is not chosen.
        """
        tls = Try(Protocol.IMAP, "mail.x.test", 993, TLS)
        plain = Try(Protocol.IMAP, "mail.x.test", 143, PLAIN)
        outcomes = [
            Outcome(tls, False, Stage.AUTH, "the login was rejected", (), False),
            Outcome(plain, True, Stage.DONE, "would work unencrypted", (), None),
        ]
        text, status = report([tls, plain], outcomes, "a@x.test", as_json=False)
        self.assertEqual(status, 1)
        self.assertIn("imap: credentials rejected", text)
