"""
Tests for L{mdtwist.threadpool}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.threadpool import ThreadPoolService


class _Reactor:
    """Runs what a pool thread hands back at once, and remembers it did."""

    def __init__(self) -> None:
        self.handed_back = 0

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.handed_back += 1
        f(*args, **kwargs)


class _InlinePool:
    """Stands in for a thread pool: runs each call at once, on the calling thread."""

    def callInThreadWithCallback(  # noqa: N802
        self, on_result: Callable[[bool, object], None], f: Callable[..., Any], *args: Any
    ) -> None:
        try:
            result = f(*args)
        except Exception as e:
            on_result(False, e)
        else:
            on_result(True, result)


class ThreadPoolServiceTests(SynchronousTestCase):
    """
    The pool starts and stops with the service, and results come back through the reactor.
    """

    def test_named(self) -> None:
        """
        The service and its pool carry the given name and size.
        """
        service = ThreadPoolService(_Reactor(), "spool-io", 3)  # type: ignore[arg-type]
        self.assertEqual(
            (service.name, service.pool.name, service.pool.max), ("spool-io", "spool-io", 3)
        )

    def test_start_and_stop(self) -> None:
        """
        Starting the service starts the pool; stopping it joins the threads.
        """
        service = ThreadPoolService(_Reactor(), "directory", 1)  # type: ignore[arg-type]
        self.assertFalse(service.pool.started)
        service.startService()
        self.assertTrue(service.pool.started)
        self.assertIsNone(service.stopService())
        self.assertFalse(service.pool.started)
        self.assertTrue(service.pool.joined)

    def test_run(self) -> None:
        """
        L{ThreadPoolService.run} calls the function on the pool and fires its Deferred with
        the result on the reactor thread; an exception becomes a failure.
        """
        reactor = _Reactor()
        service = ThreadPoolService(reactor, "delivery-io", 1)  # type: ignore[arg-type]
        service.pool = _InlinePool()  # type: ignore[assignment]
        self.assertEqual(self.successResultOf(service.run(pow, 2, 10)), 1024)
        self.assertEqual(reactor.handed_back, 1)
        failure = self.failureResultOf(service.run(int, "x"), ValueError)
        self.assertIn("invalid literal", str(failure.value))
