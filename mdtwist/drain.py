# -*- test-case-name: tests.test_drain -*-
"""
A bounded drain of the SMTP sessions when the server stops (SIGTERM, SIGINT, C{twistd}'s stop).

Theory of operation: L{ServerTree} is the top service. Its C{stopService} first runs its
drains and only then stops its children the usual way, so the spool, the queue runner and the
thread pools are still there while the last messages are received. L{SessionDrain} is such a
drain for the SMTP listeners of one process:

  1. every listener's factory is marked closing: a new connection is greeted with
     C{421 4.3.2} and closed;
  2. every open session is asked to close when idle: one between transactions gets
     C{421 4.3.2} at once, one that is receiving a message finishes it (the C{250} after
     DATA) and then gets the C{421};
  3. after C{server.drain_timeout} seconds the sessions still open are closed as soon as no
     answer of ours is pending (a message whose spool commit is under way gets its answer
     first); after a further L{GRACE} seconds whatever is left is cut.

A message cut off before its C{250} was never acknowledged, so the client keeps it and tries
again: nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from typing_extensions import override

from mdtwist.smtp.server import SMTPServerFactory

#: Seconds the drain waits for pending answers after it has closed what it could.
GRACE = 5.0

#: Seconds between looks at the sessions still open.
POLL = 0.1

_log = Logger()


class ServerTree(MultiService):
    """
    The top service: on stop, runs its drains first, then stops its children.

    @ivar drains: each returns a Deferred that fires when its part has drained (or
        L{None} when it is done at once).
    """

    def __init__(self) -> None:
        super().__init__()
        self.drains: list[Callable[[], Deferred[Any] | None]] = []

    @override
    def stopService(self) -> Deferred[None]:
        drained = DeferredList([maybeDeferred(drain) for drain in self.drains], consumeErrors=True)

        def stop_children(_: object) -> Deferred[None]:
            result: Deferred[None] = MultiService.stopService(self)
            return result

        return drained.addCallback(stop_children)


class SessionDrain:
    """
    Drains the SMTP sessions of one process within a bound (see the module docstring).
    """

    def __init__(
        self, factories: Sequence[SMTPServerFactory], clock: IReactorTime, timeout: float
    ) -> None:
        """
        @param factories: the factories of every SMTP listener of the process.
        @param clock: the clock of the bound.
        @param timeout: seconds sessions get to finish their transactions.
        """
        self._factories = factories
        self._clock = clock
        self._timeout = timeout

    def _open(self) -> int:
        return sum(len(factory.open_sessions) for factory in self._factories)

    def __call__(self) -> Deferred[None]:
        """
        Drain.

        @return: fires when every session has ended, or the bound and the grace are over.
        """
        started = self._clock.seconds()
        for factory in self._factories:
            factory.closing = True
        count = self._open()
        if count:
            _log.info(
                "Shutting down: waiting up to {timeout} seconds for {count} SMTP sessions",
                timeout=self._timeout,
                count=count,
            )
        for factory in self._factories:
            for session in list(factory.open_sessions):
                session.close_when_idle()
        forced = False

        def look() -> None:
            nonlocal forced
            elapsed = self._clock.seconds() - started
            left = self._open()
            if not left:
                loop.stop()
                return
            if not forced and elapsed >= self._timeout:
                forced = True
                _log.warn(
                    "Shutting down: closing {count} SMTP sessions still open after"
                    " {timeout} seconds",
                    count=left,
                    timeout=self._timeout,
                )
                for factory in self._factories:
                    for session in list(factory.open_sessions):
                        session.close_when_idle(now=True)
            elif forced and elapsed >= self._timeout + GRACE:
                for factory in self._factories:
                    for session in list(factory.open_sessions):
                        if session.transport is not None:
                            session.transport.abortConnection()  # type: ignore[attr-defined]
                        factory.open_sessions.discard(session)
                loop.stop()

        loop = LoopingCall(look)
        loop.clock = self._clock
        return loop.start(POLL, now=True).addCallback(lambda _: None)
