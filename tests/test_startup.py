"""
Tests for L{mdtwist.startup}.
"""

from __future__ import annotations

import io
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.errors import StartupError
from mdtwist.startup import RequiredListener, listen_failure, one_line_startup_errors
from tests.support.logs import capture_logs


class _Refusing:
    """A server endpoint that cannot listen."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def listen(self, factory: Any) -> Deferred[Any]:
        return fail(self.error)


class RequiredListenerTests(SynchronousTestCase):
    """
    A listener that cannot open stops start-up with one line.
    """

    def test_address_in_use(self) -> None:
        """
        An address in use: L{StartupError} with the key, the endpoint and the reason, also
        logged as critical.
        """
        events = capture_logs(self)
        error = CannotListenError("127.0.0.1", 25, OSError(98, "Address already in use"))
        listener = RequiredListener(
            _Refusing(error), Factory(), key="smtp.listen[0].endpoint", description="tcp:25"
        )
        raised = self.assertRaises(StartupError, listener.privilegedStartService)
        line = "smtp.listen[0].endpoint: cannot listen on tcp:25: Address already in use"
        self.assertEqual(str(raised), line)
        self.assertIn(line, [event.get("line") for event in events])

    def test_other_errors(self) -> None:
        """
        Any other error of the endpoint (a port out of range) stops start-up the same way.
        """
        listener = RequiredListener(
            _Refusing(OverflowError("bind(): port must be 0-65535.")),
            Factory(),
            key="smtp.listen[1].endpoint",
            description="tcp:99999",
        )
        raised = self.assertRaises(StartupError, listener.privilegedStartService)
        self.assertEqual(
            str(raised),
            "smtp.listen[1].endpoint: cannot listen on tcp:99999: bind(): port must be 0-65535.",
        )

    def test_listen_failure_unknown_interface(self) -> None:
        """
        A name that does not resolve gives the resolver's text.
        """
        error = CannotListenError(
            "999.1.1.1", 25, socket.gaierror(-2, "Name or service not known")
        )
        self.assertEqual(
            listen_failure("k", "tcp:25:interface=999.1.1.1", error),
            "k: cannot listen on tcp:25:interface=999.1.1.1: Name or service not known",
        )


class HookTests(SynchronousTestCase):
    """
    L{one_line_startup_errors} prints one line for L{StartupError} and passes the rest on.
    """

    def test_hook(self) -> None:
        """
        A L{StartupError} is one line on standard error; another exception goes to the
        previous hook.
        """
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        self.addCleanup(setattr, sys, "__stderr__", sys.__stderr__)
        seen: list[BaseException] = []
        hook = one_line_startup_errors(lambda kind, value, tb: seen.append(value))
        self.assertIs(sys.excepthook, hook)
        terminal = io.StringIO()
        sys.__stderr__ = terminal  # type: ignore[misc,assignment]
        hook(StartupError, StartupError("smtp.listen[0].endpoint: cannot listen"), None)
        self.assertEqual(terminal.getvalue(), "mdtwist: smtp.listen[0].endpoint: cannot listen\n")
        other = ValueError("x")
        hook(ValueError, other, None)
        self.assertEqual(seen, [other])
