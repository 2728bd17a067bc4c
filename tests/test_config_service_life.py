"""
Tests for the service-life parts of L{mdtwist.config}: C{server.drain_timeout} and
C{systemd:} endpoints checked outside systemd.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import load_config
from mdtwist.errors import ConfigError
from tests.test_config import GOOD


class ServiceLifeConfigTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def setUp(self) -> None:
        # These tests run outside systemd, whatever the environment of the test run.
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            if name in os.environ:
                self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != name})

    def load(self, text: str) -> list[str]:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        try:
            load_config(path)
        except ConfigError as e:
            return [line.split(": ", 1)[1] for line in e.problems]
        return []

    def test_drain_timeout(self) -> None:
        """
        C{server.drain_timeout} is 30 seconds by default and must be positive.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(GOOD)
        self.assertEqual(load_config(path).server.drain_timeout, 30.0)
        text = GOOD.replace('hostname = "mx.example.test"', 'hostname = "m"\ndrain_timeout = 0')
        self.assertEqual(self.load(text), ["server.drain_timeout: must be greater than 0"])

    def test_systemd_endpoint_outside_systemd(self) -> None:
        """
        Outside systemd a C{systemd:} endpoint is checked for its form only.
        """
        for endpoint in ("systemd:domain=INET:index=0", "systemd:domain=INET6:name=smtp"):
            text = GOOD.replace("tcp:2525:interface=127.0.0.1", endpoint)
            self.assertEqual(self.load(text), [], endpoint)
        for endpoint, reason in [
            ("systemd:domain=IPX:index=0", "takes domain=INET|INET6|UNIX"),
            ("systemd:domain=INET", "either index=N or name=NAME"),
            ("systemd:domain=INET:index=0:name=smtp", "either index=N or name=NAME"),
            ("systemd:domain=INET:index=first", "index must be a number"),
        ]:
            text = GOOD.replace("tcp:2525:interface=127.0.0.1", endpoint)
            [problem] = self.load(text)
            self.assertIn(reason, problem)
            self.assertTrue(problem.startswith("smtp.listen[0].endpoint: "), problem)
