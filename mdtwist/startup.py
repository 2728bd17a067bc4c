# -*- test-case-name: tests.test_startup -*-
"""
A start-up that fails safely: every listener opens, or the server does not start.

Twisted's L{StreamServerEndpointService} logs a listener that cannot open (address in use, port
out of range, unknown interface) and lets the server run on without it; run in the background,
twistd even reports success and leaves its pidfile. L{RequiredListener} instead stops start-up:
its C{privilegedStartService} (which twistd calls, after going into the background, before the
reactor runs) raises L{StartupError} with one line that names the listener and the reason.
twistd then tells its waiting parent (which prints the line and exits 1), removes the pidfile
and ends with status 1; in the foreground, L{one_line_startup_errors} prints that line instead
of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from typing_extensions import override
from zope.interface import implementer

from mdtwist.errors import StartupError

_log = Logger()


@implementer(IStreamServerEndpoint)
class SystemdEndpoint:
    """
    A C{systemd:} server endpoint, looked up only when it listens.

    Twisted finds the socket systemd handed over (C{LISTEN_FDS}, C{LISTEN_FDNAMES}) as soon
    as it parses the string; parsed later, at C{privilegedStartService}, a missing socket is
    a one-line start-up error of its listener, and C{--check} works outside systemd.
    """

    def __init__(self, reactor: Any, description: str) -> None:
        """
        @param reactor: the reactor.
        @param description: the endpoint string, such as C{systemd:domain=INET:name=smtp}.
        """
        self._reactor = reactor
        self._description = description

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen on the socket systemd handed over.

        @param factory: the protocol factory.
        @return: the listening port.
        @raise CannotListenError: (synchronously) when systemd handed over no such socket.
        """
        try:
            endpoint = serverFromString(self._reactor, self._description)
        except (KeyError, IndexError):
            raise CannotListenError(
                "", 0, OSError(0, "systemd handed over no such socket (LISTEN_FDS)")
            ) from None
        result: Deferred[IListeningPort] = endpoint.listen(factory)
        return result


def server_endpoint(reactor: Any, description: str) -> Any:
    """
    Parse a server endpoint string; C{systemd:} ones only when they listen.

    @param reactor: the reactor.
    @param description: the endpoint string (checked by the configuration already).
    @return: the endpoint.
    """
    if description.startswith("systemd:"):
        return SystemdEndpoint(reactor, description)
    return serverFromString(reactor, description)


def listen_failure(key: str, description: str, error: BaseException) -> str:
    """
    The one line that says why a listener cannot open.

    @param key: the configuration key of the listener, such as C{smtp.listen[0].endpoint}.
    @param description: its endpoint string.
    @param error: what the endpoint raised.
    @return: C{key: cannot listen on DESCRIPTION: REASON}.
    """
    reason: object = error
    if isinstance(error, CannotListenError) and error.socketError is not None:
        reason = error.socketError
    if isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    return f"{key}: cannot listen on {description}: {text}"


class RequiredListener(StreamServerEndpointService):
    """
    A stream listener that must open: if it cannot, start-up stops with L{StartupError}.
    """

    _raiseSynchronously = True  # noqa: N815 - the name Twisted reads

    def __init__(self, endpoint: Any, factory: Any, *, key: str, description: str) -> None:
        """
        @param endpoint: the server endpoint.
        @param factory: the protocol factory.
        @param key: the configuration key of the listener, for the error line.
        @param description: the endpoint string, for the error line.
        """
        super().__init__(endpoint, factory)
        self._key = key
        self._description = description

    @override
    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:
            line = listen_failure(self._key, self._description, e)
            _log.critical("Not starting: {line}", line=line)
            raise StartupError(line) from None


_Hook = Callable[[type[BaseException], BaseException, TracebackType | None], Any]


def one_line_startup_errors(previous: _Hook | None = None) -> _Hook:
    """
    Make an uncaught L{StartupError} end the process with its one line on standard error
    (status 1) instead of a traceback; any other exception is left to C{previous}.

    @param previous: the hook to pass other exceptions to; C{sys.excepthook} by default.
    @return: the hook, installed as C{sys.excepthook}.
    """
    chained = previous if previous is not None else sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> Any:
        if isinstance(value, StartupError):
            # twistd sends sys.stderr to its log; the line is for the terminal.
            print(f"mdtwist: {value}", file=sys.__stderr__)
            return None
        return chained(kind, value, traceback)

    sys.excepthook = hook
    return hook
