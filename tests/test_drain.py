"""
Tests for L{mdtwist.drain}: the bounded drain of SMTP sessions at shutdown.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from mdtwist.drain import GRACE, ServerTree, SessionDrain
from tests.smtp.test_server import ENVELOPE, GlueTestsBase


class _Recorder(Service):
    # Records when it was stopped.

    def __init__(self, stopped: list[str]) -> None:
        self._stopped = stopped

    def stopService(self) -> None:  # noqa: N802 - Twisted's name
        super().stopService()
        self._stopped.append("child")


class ServerTreeTests(GlueTestsBase):
    """
    L{ServerTree} stops its children only after its drains are done.
    """

    def test_drains_first(self) -> None:
        """
        The children are stopped when the drain's Deferred fires, not before.
        """
        stopped: list[str] = []
        tree = ServerTree()
        _Recorder(stopped).setServiceParent(tree)
        drained: Deferred[None] = Deferred()
        tree.drains.append(lambda: drained)
        tree.startService()
        result = tree.stopService()
        self.assertEqual(stopped, [])
        self.assertNoResult(result)
        drained.callback(None)
        self.assertEqual(stopped, ["child"])
        self.successResultOf(result)

    def test_failed_drain_still_stops(self) -> None:
        """
        A drain that fails does not keep the children running.
        """
        stopped: list[str] = []
        tree = ServerTree()
        _Recorder(stopped).setServiceParent(tree)

        def broken() -> Deferred[None]:
            raise RuntimeError("drain failed")

        tree.drains.append(broken)
        tree.startService()
        self.successResultOf(tree.stopService())
        self.assertEqual(stopped, ["child"])


class SessionDrainTests(GlueTestsBase):
    """
    L{SessionDrain}: idle sessions end at once, a message being received is finished, and
    the bound closes the rest.
    """

    def test_no_sessions(self) -> None:
        """
        Without sessions the drain is over at once.
        """
        factory = self.factory()
        self.successResultOf(SessionDrain([factory], self.clock, 30.0)())

    def test_idle_session_closed_at_once(self) -> None:
        """
        A session between transactions gets C{421 4.3.2} and is closed at once.
        """
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(b"EHLO c.example\r\n")
        drained = SessionDrain([factory], self.clock, 30.0)()
        self.assertEqual(self.replies(transport)[-1], (421, "4.3.2"))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost()
        self.clock.advance(0.1)
        self.successResultOf(drained)

    def test_new_connection_refused(self) -> None:
        """
        A connection made while draining is greeted with C{421 4.3.2}.
        """
        factory = self.factory()
        SessionDrain([factory], self.clock, 30.0)()
        _, transport = self.connect(factory)
        self.assertEqual(self.replies(transport), [(421, "4.3.2")])
        self.assertEqual(factory.open_sessions, set())

    def test_message_in_progress_is_finished(self) -> None:
        """
        A session receiving a message gets to finish it: its C{250} comes before the
        C{421}, and the message is stored.
        """
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(ENVELOPE + b"Subject: x\r\n")
        drained = SessionDrain([factory], self.clock, 30.0)()
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5.0)
        protocol.dataReceived(b"\r\nbody\r\n.\r\n")
        codes = [code for code, _ in self.replies(transport)]
        self.assertEqual(codes[-2:], [250, 421])
        self.assertEqual(len(self.spool.messages), 1)
        protocol.connectionLost()
        self.clock.advance(0.1)
        self.successResultOf(drained)

    def test_bound_closes_the_rest(self) -> None:
        """
        A session still in its transaction when the bound is reached gets C{421 4.3.2}
        then; the message it was sending is not stored (never acknowledged).
        """
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(ENVELOPE + b"Subject: x\r\n")
        drained = SessionDrain([factory], self.clock, 30.0)()
        self.clock.advance(29.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertEqual(self.replies(transport)[-1], (421, "4.3.2"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.spool.messages, [])
        protocol.connectionLost()
        self.clock.advance(0.1)
        self.successResultOf(drained)

    def test_pending_answer_comes_first(self) -> None:
        """
        At the bound, a session whose message is being committed gets its C{250} before
        the C{421}; one whose answer never comes is cut after the grace.
        """
        self.spool.hold = True
        factory = self.factory()
        protocol, transport = self.connect(factory)
        protocol.dataReceived(ENVELOPE + b"Subject: x\r\n\r\nbody\r\n.\r\n")
        other, other_transport = self.connect(factory, "192.0.2.2")
        other.dataReceived(ENVELOPE + b"Subject: y\r\n\r\nbody\r\n.\r\n")
        drained = SessionDrain([factory], self.clock, 30.0)()
        self.clock.advance(30.1)
        self.assertFalse(transport.disconnecting)
        self.spool.held[0].callback("Q1")
        codes = [code for code, _ in self.replies(transport)]
        self.assertEqual(codes[-2:], [250, 421])
        protocol.connectionLost()
        self.assertNoResult(drained)
        self.clock.advance(GRACE)
        self.assertTrue(other_transport.disconnecting)
        self.successResultOf(drained)
