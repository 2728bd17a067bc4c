"""
Tests for L{mdtwist.dequeue.gatewayctl}: C{mdtwistctl gateway held|release}, with the control
socket replaced (the real daemon answers them in tests.integration.test_gateway_provider).
"""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.client import ControlClientError
from mdtwist.dequeue import gatewayctl
from tests.support.control import FakeControl


class GatewayCommandTests(SynchronousTestCase):
    """C{mdtwistctl gateway}, answered by a stand-in for the server."""

    def setUp(self) -> None:
        self.control = FakeControl(self, gatewayctl)
        self.socket = self.control.socket
        self.run_cli = self.control.run_cli

    def test_held(self) -> None:
        """One aligned line per domain, sorted, with correct plurals."""
        self.control.answer = {
            "domains": [
                {"domain": "office.test", "messages": 2, "recipients": 3},
                {"domain": "b.test", "messages": 1, "recipients": 1},
            ],
            "missing": [],
        }
        self.assertEqual(
            self.run_cli("gateway", "held"),
            (
                0,
                "b.test       1 message, 1 recipient\noffice.test  2 messages, 3 recipients\n",
                "",
            ),
        )
        self.assertEqual(self.control.calls, [(self.socket, "gateway-held", None, None)])

    def test_held_json_and_missing(self) -> None:
        """C{--json} prints the counts; a process that did not answer makes the status 1."""
        self.control.answer = {
            "domains": [{"domain": "office.test", "messages": 1, "recipients": 1}],
            "missing": [1],
        }
        status, out, err = self.run_cli("gateway", "held", "--json")
        self.assertEqual(status, 1)
        self.assertEqual(json.loads(out), self.control.answer)
        self.assertEqual(err, "Not counted: process 1 did not answer\n")

    def test_nothing_held(self) -> None:
        """No held mail: said so."""
        self.control.answer = {"domains": [], "missing": []}
        self.assertEqual(
            self.run_cli("gateway", "held"), (0, "No mail is held for a gateway domain\n", "")
        )

    def test_release(self) -> None:
        """The named domains are passed on; what was released is printed."""
        self.control.answer = {"messages": 3, "released": ["office.test"], "skipped": []}
        self.assertEqual(
            self.run_cli("gateway", "release", "office.test"),
            (0, "Releasing office.test: 3 held messages\n", ""),
        )
        self.assertEqual(
            self.control.calls,
            [(self.socket, "gateway-release", {"domains": ["office.test"]}, None)],
        )

    def test_release_skipped(self) -> None:
        """A named domain that was skipped goes to standard error and makes the status 1."""
        self.control.answer = {"messages": 0, "released": [], "skipped": ["nope.test"]}
        status, out, err = self.run_cli("gateway", "release", "nope.test")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("nope.test: skipped", err)

    def test_release_all(self) -> None:
        """
        Without domains every gateway is released; one skipped then (its mail goes to the
        requester) is reported but is no failure, and no gateway at all is said so.
        """
        self.control.answer = {"messages": 1, "released": ["a.test"], "skipped": ["b.test"]}
        status, out, err = self.run_cli("gateway", "release")
        self.assertEqual((status, out), (0, "Releasing a.test: 1 held message\n"))
        self.assertIn("b.test: skipped", err)
        self.assertEqual(self.control.calls[0][2], {"domains": []})
        self.control.answer = {"messages": 0, "released": [], "skipped": []}
        self.assertEqual(
            self.run_cli("gateway", "release"), (0, "No gateway domain is configured\n", "")
        )

    def test_server_down(self) -> None:
        """No server: one line, status 1."""
        self.control.answer = ControlClientError("the server is not running")
        self.assertEqual(
            self.run_cli("gateway", "held"), (1, "", "mdtwistctl: the server is not running\n")
        )

    def test_usage(self) -> None:
        """C{gateway} alone prints the group's help (on standard output) and exits 2."""
        status, out, _err = self.run_cli("gateway")
        self.assertEqual(status, 2)
        self.assertIn("usage: mdtwistctl gateway", out)
