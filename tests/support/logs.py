"""
Capture log events in a test.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def capture_logs(case: SynchronousTestCase) -> EventLoggingObserver:
    """
    Record every log event emitted until the test ends.

    @param case: the running test; the observer is removed in its cleanup.
    @return: the observer; iterate it for the events.
    """
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer
