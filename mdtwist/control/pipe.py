# -*- test-case-name: tests.control.test_pipe -*-
"""
The control link between the first process and each child process of C{server.processes}.

Theory of operation. The parent starts each child with one end of a UNIX socket pair as the
child's standard input (descriptor 0) and keeps the other end (L{ChildLinks.attach}); a pair
rather than a one-way pipe, so that one descriptor carries the commands down and the answers
back while the child's standard output stays its log. Both ends speak AMP: the parent passes a
control command on with the command's own class (L{ChildLinks.call}), and the child answers it
with its L{mdtwist.control.registry.ControlDispatcher}, for itself only (L{ParentLink}).

The link is also how a child notices that its parent is gone: the kernel closes the parent's
end when the parent exits, however it exits, and the child's connection is lost; the child
then stops (no child outlives a parent that was killed).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.control.commands import ControlError
from mdtwist.control.registry import Answer, ControlDispatcher, ControlProtocol

_log = Logger()

#: Seconds the parent waits for a child's answer to a control command.
CHILD_TIMEOUT = 30.0


class _Given(Factory):
    # Hands out one protocol made beforehand (the reactor adopts one connection with it).

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    @override
    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


class _ToChild(amp.AMP):
    # The parent's end of one child's link; forgets itself when the link is lost.

    def __init__(self, links: ChildLinks, shard: int) -> None:
        super().__init__()
        self._links = links
        self._shard = shard

    @override
    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self._links.lost(self._shard, self)


class ChildLinks:
    """
    In the first process: the control links to the child processes, by shard.
    """

    def __init__(
        self, reactor: Any, shards: Sequence[int], timeout: float = CHILD_TIMEOUT
    ) -> None:
        """
        @param reactor: an C{IReactorSocket} and C{IReactorTime}.
        @param shards: the shards of the children that should be running.
        @param timeout: seconds to wait for a child's answer.
        """
        self._reactor = reactor
        self._shards = tuple(shards)
        self._timeout = timeout
        self._links: dict[int, _ToChild] = {}

    def expected(self) -> Sequence[int]:
        """
        @return: the shards of the children that should be running.
        """
        return self._shards

    def finished(self, shard: int) -> None:
        """
        A draining child finished its work: it is not expected to answer any more.

        @param shard: its shard.
        """
        self._shards = tuple(k for k in self._shards if k != shard)

    def attach(self, shard: int, end: socket.socket) -> None:
        """
        Speak AMP on the parent's end of a new child's socket pair.

        @param shard: the child's shard.
        @param end: the parent's end; the reactor takes a duplicate, so the caller closes it.
        """
        protocol = _ToChild(self, shard)
        self._reactor.adoptStreamConnection(end.fileno(), socket.AF_UNIX, _Given(protocol))
        old = self._links.get(shard)
        self._links[shard] = protocol
        if old is not None and old.transport is not None:
            old.transport.loseConnection()

    def lost(self, shard: int, protocol: amp.AMP) -> None:
        """
        Forget a child's link once it is lost (the child ended).

        @param shard: the child's shard.
        @param protocol: the link that was lost.
        """
        if self._links.get(shard) is protocol:
            del self._links[shard]

    def call(self, shard: int, command: type[amp.Command], arguments: Answer) -> Deferred[Answer]:
        """
        Pass a command on to one child.

        @param shard: the child's shard.
        @param command: the command.
        @param arguments: its arguments.
        @return: the child's answer; fails with L{ControlError} when the child is not linked
            (it is being started again), or with the child's failure or a timeout.
        """
        link = self._links.get(shard)
        if link is None:
            return fail(ControlError(f"the process of shard {shard} is not running"))
        d: Deferred[Answer] = link.callRemote(command, **arguments)
        return d.addTimeout(self._timeout, self._reactor)


class ParentLink(Service):
    """
    In a child process: answers the parent's control commands on the socket it was started
    with, and stops the reactor when the parent is gone.
    """

    def __init__(self, reactor: Any, dispatcher: ControlDispatcher, fd: int = 0) -> None:
        """
        @param reactor: an C{IReactorSocket} and C{IReactorCore}.
        @param dispatcher: carries the commands out, in this process only.
        @param fd: the child's end of the socket pair.
        """
        self._reactor = reactor
        self._dispatcher = dispatcher
        self._fd = fd
        self._protocol: ControlProtocol | None = None

    @override
    def startService(self) -> None:
        super().startService()
        protocol = ControlProtocol(self._dispatcher, self._lost)
        try:
            self._reactor.adoptStreamConnection(self._fd, socket.AF_UNIX, _Given(protocol))
        except OSError as e:
            _log.error(
                "Descriptor {fd} is not a link to a parent process ({error});"
                " this process does not watch its parent",
                fd=self._fd,
                error=e.strerror,
            )
            return
        self._protocol = protocol

    @override
    def stopService(self) -> None:
        super().stopService()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()

    def _lost(self, reason: Failure) -> None:
        if not self.running:
            return  # our own shutdown
        self._protocol = None
        _log.warn("The parent process is gone; stopping")
        self._reactor.stop()
