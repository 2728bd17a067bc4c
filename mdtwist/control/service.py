# -*- test-case-name: tests.control.test_service -*-
"""
The control socket: a UNIX socket only its owner can use, served by the first process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.config import MAX_SOCKET_PATH
from mdtwist.control.registry import ControlDispatcher, ControlFactory

_log = Logger()


class ControlService(Service):
    """
    Listens on the control socket (mode 0600; its directory is made with mode 0700 when
    missing, so nobody else can reach the socket between its creation and its chmod).

    A socket file left behind by a server that was killed is replaced: the lock file beside it
    (C{<socket>.lock}) tells a live server from a dead one.
    """

    def __init__(self, reactor: Any, path: Path, dispatcher: ControlDispatcher) -> None:
        """
        @param reactor: an C{IReactorUNIX}.
        @param path: the socket.
        @param dispatcher: carries the commands out.
        """
        self._reactor = reactor
        self.path = path
        self._dispatcher = dispatcher
        self._port: IListeningPort | None = None
        self._stopped = False

    @override
    def startService(self) -> None:
        super().startService()
        self._stopped = False
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            _log.error(
                "Not opening the control socket {path}: the path is longer than {limit} bytes;"
                " set [control] socket to a shorter one",
                path=str(self.path),
                limit=MAX_SOCKET_PATH,
            )
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            self._failed(Failure(OSError(f"cannot make {self.path.parent}: {e.strerror}")))
            return
        endpoint = UNIXServerEndpoint(self._reactor, str(self.path), mode=0o600, wantPID=True)
        endpoint.listen(ControlFactory(self._dispatcher)).addCallbacks(
            self._listening, self._failed
        )

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopped = True
        port, self._port = self._port, None
        if port is None:
            return None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped

    def _listening(self, port: IListeningPort) -> None:
        if self._stopped:
            port.stopListening()
            return
        self._port = port
        _log.info("Control socket {path} is open", path=str(self.path))

    def _failed(self, reason: Failure) -> None:
        _log.error(
            "Cannot open the control socket {path}: {error}",
            path=str(self.path),
            error=reason.getErrorMessage(),
        )
