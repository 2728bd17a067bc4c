# -*- test-case-name: tests.test_threadpool -*-
"""
A named thread pool that starts and stops with the application.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from typing_extensions import override

P = ParamSpec("P")
R = TypeVar("R")


class ThreadPoolService(Service):
    """
    Owns one L{ThreadPool}: started with the service, stopped (threads joined) with it.

    Blocking work (LDAP calls, fsync) runs here, never on the reactor thread.

    @ivar pool: the thread pool.
    """

    def __init__(self, reactor: IReactorFromThreads, name: str, size: int) -> None:
        """
        @param reactor: the reactor that results are delivered to.
        @param name: the service and pool name (C{directory}, C{spool-io}).
        @param size: the most threads the pool runs.
        """
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)
        self.setName(name)

    def run(self, f: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> Deferred[R]:
        """
        Call C{f} on a pool thread.

        @return: a Deferred that fires on the reactor thread with C{f}'s result.
        """
        return deferToThreadPool(self._reactor, self.pool, f, *args, **kwargs)

    @override
    def startService(self) -> None:
        super().startService()
        self.pool.start()

    @override
    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        self.pool.stop()
        return None
