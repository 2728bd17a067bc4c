"""
Tests for the dequeue parts of L{mdtwist.services}: the service in the first process, the
control command, and the SMTP server an accepted ATRN turns into.
"""

from __future__ import annotations

import io

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock

from mdtwist.config import load_config
from mdtwist.control.service import ControlService
from mdtwist.dequeue.client import ReleasedDomainsPolicy
from mdtwist.dequeue.service import DequeueService
from mdtwist.services import make_service
from mdtwist.smtp.server import SMTPServerProtocol
from mdtwist.tap import Options, build
from tests.test_tap import _DemoCase

SIGNAL = """
[dequeue]
every = 2

[[dequeue.signal]]
domain = "example.test"
host = "127.0.0.1"
port = 366
text = "ATRN example.test"
login = "example.test"
password = "s3cret"
"""


class DequeueWiringTests(_DemoCase):
    """The dequeue service is built from C{[dequeue]}, in the first process only."""

    def build(self, text: str = SIGNAL) -> MultiService:
        self.config.write_text(self.config.read_text() + text)
        options = Options()
        options.parseOptions(["--config", str(self.config)])
        service = build(options, MemoryReactorClock(), stderr=io.StringIO())
        assert isinstance(service, MultiService)
        return service

    def test_first_process(self) -> None:
        """
        The service sits before the control socket; the control command is registered; the
        server an ATRN turns into accepts only the released domains, into this spool.
        """
        top = self.build()
        names = [child.name for child in top]
        self.assertEqual(names[-2:], ["dequeue", "control"])
        dequeue = top.getServiceNamed("dequeue")
        assert isinstance(dequeue, DequeueService)
        control = top.getServiceNamed("control")
        assert isinstance(control, ControlService)
        self.assertIsNotNone(control._dispatcher.registry.find(b"dequeue-run"))
        turned = dequeue._signaller._turned_server
        assert turned is not None
        protocol = turned(frozenset({"example.test"}))
        assert isinstance(protocol, SMTPServerProtocol)
        policy = protocol._factory.policy
        assert isinstance(policy, ReleasedDomainsPolicy)
        self.assertEqual(policy.domains, frozenset({"example.test"}))

    def test_without_signals(self) -> None:
        """
        Without signals no service runs, but the command answers (with no result).
        """
        top = self.build("")
        self.assertNotIn("dequeue", [child.name for child in top])
        control = top.getServiceNamed("control")
        assert isinstance(control, ControlService)
        self.assertIsNotNone(control._dispatcher.registry.find(b"dequeue-run"))

    def test_not_in_children(self) -> None:
        """A child process (shard above 0) sends no signal."""
        self.config.write_text(self.config.read_text() + SIGNAL)
        top = make_service(load_config(self.config), MemoryReactorClock(), shard=1)
        self.assertNotIn("dequeue", [child.name for child in top])
