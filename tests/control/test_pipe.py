"""
Tests for L{mdtwist.control.pipe}: the parent and a child speaking AMP on a real socket pair,
the child stopping when the parent is gone, and the parent's timeout on a fake clock.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mdtwist.control.commands import ControlError
from mdtwist.control.pipe import ChildLinks, ParentLink
from mdtwist.control.registry import Answer, ControlDispatcher, ControlRegistry
from tests.control.test_registry import Echo
from tests.support.logs import capture_logs

#: The most seconds a test waits for the other end.
_WAIT = 10.0


class _ChildReactor:
    # The real reactor for the child's socket; records stop() instead of stopping.

    def __init__(self) -> None:
        self.stopped: Deferred[None] = Deferred()

    def adoptStreamConnection(self, fd: int, family: int, factory: Any) -> None:  # noqa: N802
        reactor.adoptStreamConnection(fd, family, factory)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self.stopped.callback(None)


def _dispatcher(shard: int) -> ControlDispatcher:
    registry = ControlRegistry()

    def echo(text: str) -> Answer:
        if text == "refuse":
            raise ControlError(f"shard {shard} refuses")
        return {"text": text, "shards": [shard]}

    registry.register(Echo, echo)
    return ControlDispatcher(registry, shard=shard)


class LinkTests(TestCase):
    """
    A parent's L{ChildLinks} and a child's L{ParentLink} on a real socket pair (the reactor
    runs: this is the descriptor a real child gets as its standard input).
    """

    timeout = 30

    def setUp(self) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.links = ChildLinks(reactor, [1], timeout=_WAIT)
        self.links.attach(1, parent_end)
        parent_end.close()
        self.child_reactor = _ChildReactor()
        self.child = ParentLink(self.child_reactor, _dispatcher(1), child_end.fileno())
        self.child.startService()
        child_end.close()
        self.addCleanup(self._stop)

    def _watch_loss(self) -> Deferred[None]:
        # Fires once the parent's end of the link has seen its loss (and forgotten it).
        link = self.links._links[1]
        lost: Deferred[None] = Deferred()
        original = link.connectionLost

        def lose(reason: Any) -> None:
            original(reason)
            lost.callback(None)

        link.connectionLost = lose  # type: ignore[method-assign]
        return lost

    def _stop(self) -> Deferred[None] | None:
        if self.child.running:
            self.child.stopService()
        link = self.links._links.get(1)
        if link is None or link.transport is None:
            return None
        lost = self._watch_loss()
        link.transport.loseConnection()
        return lost

    async def test_command_and_answer(self) -> None:
        """
        A command passed on to the child is answered by the child's handler; a refusal comes
        back as L{ControlError} with its text.
        """
        answer = await self.links.call(1, Echo, {"text": "hello"})
        self.assertEqual(answer, {"text": "hello", "shards": [1]})
        with self.assertRaises(ControlError) as caught:
            await self.links.call(1, Echo, {"text": "refuse"})
        self.assertEqual(str(caught.exception), "shard 1 refuses")
        self.assertFalse(self.child_reactor.stopped.called)

    async def test_parent_gone(self) -> None:
        """
        When the parent's end closes (as when the parent exits, however), the child logs it
        and stops its reactor.
        """
        events = capture_logs(self)
        link = self.links._links[1]
        assert link.transport is not None
        link.transport.loseConnection()
        await self.child_reactor.stopped.addTimeout(_WAIT, reactor)
        self.assertIn("The parent process is gone; stopping", [e["log_format"] for e in events])

    async def test_child_gone(self) -> None:
        """
        A child that stops (its own shutdown) does not stop its reactor over the lost link;
        the parent forgets the link, and a command for the child fails at once.
        """
        lost = self._watch_loss()
        self.child.stopService()
        await lost.addTimeout(_WAIT, reactor)
        with self.assertRaises(ControlError) as caught:
            await self.links.call(1, Echo, {"text": "hello"})
        self.assertEqual(str(caught.exception), "the process of shard 1 is not running")
        self.assertFalse(self.child_reactor.stopped.called)


class ChildLinksTests(SynchronousTestCase):
    """
    L{ChildLinks} on a fake reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.links = ChildLinks(self.reactor, [1, 2], timeout=30.0)
        self.ends = socket.socketpair()
        for end in self.ends:
            self.addCleanup(end.close)

    def test_expected(self) -> None:
        """
        The children that should run are known before any is linked, until a draining one
        finished; one that is not linked fails a command at once.
        """
        self.assertEqual(self.links.expected(), (1, 2))
        self.links.finished(1)
        self.assertEqual(self.links.expected(), (2,))
        failure = self.failureResultOf(self.links.call(2, Echo, {"text": "x"}), ControlError)
        self.assertEqual(failure.getErrorMessage(), "the process of shard 2 is not running")

    def test_timeout(self) -> None:
        """
        A child that does not answer within the timeout fails the command.
        """
        self.links.attach(1, self.ends[0])
        [(fd, family, factory)] = self.reactor.adoptedStreamConnections
        self.assertEqual((fd, family), (self.ends[0].fileno(), socket.AF_UNIX))
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        d = self.links.call(1, Echo, {"text": "x"})
        self.reactor.advance(29.9)
        self.assertNoResult(d)
        self.reactor.advance(0.1)
        self.failureResultOf(d, TimeoutError)

    def test_restarted_child(self) -> None:
        """
        A restarted child's new link replaces the old one, which is closed.
        """
        self.links.attach(1, self.ends[0])
        old = self.reactor.adoptedStreamConnections[0][2].buildProtocol(None)
        transport = StringTransport()
        old.makeConnection(transport)
        self.links.attach(1, self.ends[1])
        self.assertTrue(transport.disconnecting)
        new = self.reactor.adoptedStreamConnections[1][2].buildProtocol(None)
        self.assertIsNot(new, old)


class ParentLinkTests(SynchronousTestCase):
    """
    L{ParentLink} given a descriptor that is not a socket.
    """

    def test_not_a_socket(self) -> None:
        """
        A child whose standard input is not a socket (started by hand) says so and runs on.
        The reactor refuses the pipe before it would watch it.
        """
        events = capture_logs(self)
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        link = ParentLink(reactor, _dispatcher(1), read)
        link.startService()
        link.stopService()
        [event] = [e for e in events if "not a link" in e["log_format"]]
        self.assertEqual((event["fd"], event["error"]), (read, "Socket operation on non-socket"))
