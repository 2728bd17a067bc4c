"""
Tests for L{mdtwist.dequeue.control}: C{mdtwistctl dequeue run [DOMAIN]}, and the
C{dequeue-run} command over a real AMP box exchange.
"""

from __future__ import annotations

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.client import ControlClientError
from mdtwist.dequeue import control
from mdtwist.dequeue.control import ANSWER_TIMEOUT, DequeueRun
from tests.support.control import FakeControl


class DequeueCommandTests(SynchronousTestCase):
    """C{mdtwistctl dequeue run}, with the control socket replaced."""

    def setUp(self) -> None:
        self.control = FakeControl(self, control, {"results": []})
        self.socket = self.control.socket
        self.run_cli = self.control.run_cli

    def test_run(self) -> None:
        """
        One line per signal; those that did not do their job go to standard error and make
        the status 1. The wait outlasts the 10 minutes an ATRN reply may take.
        """
        self.control.answer = {
            "results": [
                {"domain": "a.example", "status": "sent", "code": 250, "detail": "2.0.0 OK"},
                {"domain": "b.example", "status": "released", "code": 250, "detail": ""},
                {"domain": "c.example", "status": "failed", "code": None, "detail": "refused"},
            ]
        }
        status, out, err = self.run_cli("dequeue", "run")
        self.assertEqual(status, 1)
        self.assertEqual(out, "a.example: sent 250: 2.0.0 OK\nb.example: released 250\n")
        self.assertEqual(err, "c.example: failed: refused\n")
        self.assertEqual(self.control.calls, [(self.socket, "dequeue-run", {}, ANSWER_TIMEOUT)])
        self.assertGreater(ANSWER_TIMEOUT, 600)

    def test_run_domain(self) -> None:
        """A domain is passed on; all good is status 0."""
        self.control.answer = {
            "results": [{"domain": "a.example", "status": "no-mail", "code": 251, "detail": ""}]
        }
        self.assertEqual(
            self.run_cli("dequeue", "run", "a.example"), (0, "a.example: no-mail 251\n", "")
        )
        self.assertEqual(self.control.calls[0][2], {"domain": "a.example"})

    def test_nothing_configured(self) -> None:
        """No signal: said so."""
        self.assertEqual(
            self.run_cli("dequeue", "run"), (0, "No dequeue signal is configured\n", "")
        )

    def test_server_down(self) -> None:
        """No server: one line, status 1."""
        self.control.answer = ControlClientError("the server is not running")
        self.assertEqual(
            self.run_cli("dequeue", "run"), (1, "", "mdtwistctl: the server is not running\n")
        )

    def test_usage(self) -> None:
        """C{dequeue} alone prints the group's help (on standard output) and exits 2."""
        status, out, _err = self.run_cli("dequeue")
        self.assertEqual(status, 2)
        self.assertIn("usage: mdtwistctl dequeue", out)


class DequeueRunBoxTests(SynchronousTestCase):
    """The command's arguments and response survive AMP serialisation."""

    def test_round_trip(self) -> None:
        """An absent domain and an absent code come back as None."""
        proto = amp.AMP()
        box = DequeueRun.makeArguments({"domain": None}, proto)
        self.assertEqual(DequeueRun.parseArguments(box, proto), {"domain": None})
        answer = {
            "results": [
                {"domain": "a.example", "status": "failed", "code": None, "detail": "x"},
                {"domain": "b.example", "status": "sent", "code": 250, "detail": ""},
            ]
        }
        response = DequeueRun.makeResponse(answer, proto)
        self.assertEqual(DequeueRun.parseResponse(response, proto), answer)
