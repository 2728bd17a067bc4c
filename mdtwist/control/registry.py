# -*- test-case-name: tests.control.test_registry -*-
"""
The control commands a process knows, and how one is carried out across the processes.

A feature registers each of its commands once, with L{ControlRegistry.register}: the command
class, the handler that acts in one process, and (for a command that concerns every process)
how the answers of all processes are combined into one. L{ControlDispatcher} carries a command
out: in the first process it runs the handler there, passes the command on to every child
process (L{IChildren}) and combines the answers; in a child it runs the handler only.
L{ControlProtocol} is the AMP protocol of both the control socket and the child's end of the
pipe: it looks each incoming command up in the registry, so no central list names them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.control.commands import ControlError

_log = Logger()

#: A command's arguments or response, as Python values keyed by their names.
Answer = dict[str, Any]

#: Combines the answers of every process: shard -> its answer, or L{None} when its process did
#: not answer (not running, restarting, too slow, failed).
Combine = Callable[[Mapping[int, Answer | None]], Answer]


@attrs.frozen
class Registration:
    """
    One registered control command.

    @ivar command: the AMP command class.
    @ivar handler: carries the command out in one process: called with the command's arguments
        as keywords, it returns that process's answer (in the shape of the command's response)
        or a Deferred of it, or raises L{ControlError}.
    @ivar combine: for a command every process carries out: builds the server's answer from
        the answers of the processes. L{None}: only the first process carries it out.
    """

    command: type[amp.Command]
    handler: Callable[..., Answer | Deferred[Answer]]
    combine: Combine | None


class ControlRegistry:
    """
    The control commands of one process, by AMP command name.
    """

    def __init__(self) -> None:
        self._commands: dict[bytes, Registration] = {}

    def register(
        self,
        command: type[amp.Command],
        handler: Callable[..., Answer | Deferred[Answer]],
        *,
        combine: Combine | None = None,
    ) -> None:
        """
        Add a command.

        @param command: the AMP command class (its C{commandName} must be new here).
        @param handler: see L{Registration.handler}.
        @param combine: see L{Registration.combine}.
        @raise ValueError: when a command of that name is registered already.
        """
        name = command.commandName
        if name in self._commands:
            raise ValueError(f"control command {name.decode()!r} is registered twice")
        self._commands[name] = Registration(command, handler, combine)

    def find(self, name: bytes) -> Registration | None:
        """
        @param name: an AMP command name.
        @return: its registration, or L{None}.
        """
        return self._commands.get(name)

    def names(self) -> list[str]:
        """
        @return: the names of the registered commands, sorted.
        """
        return sorted(name.decode() for name in self._commands)


class IChildren(Protocol):
    """
    The first process's links to its child processes (L{mdtwist.control.pipe.ChildLinks}).
    """

    def expected(self) -> Sequence[int]:
        """
        @return: the shards of the child processes that should be running.
        """

    def call(self, shard: int, command: type[amp.Command], arguments: Answer) -> Deferred[Answer]:
        """
        Pass a command on to one child.

        @param shard: the child's shard.
        @param command: the command.
        @param arguments: its arguments.
        @return: the child's answer; fails when the child is not linked or does not answer.
        """


class ControlDispatcher:
    """
    Carries control commands out in this process and, in the first process, in the children.
    """

    def __init__(
        self, registry: ControlRegistry, *, shard: int = 0, children: IChildren | None = None
    ) -> None:
        """
        @param registry: the commands.
        @param shard: this process's shard.
        @param children: the links to the child processes in the first process (without any
            child: an empty one); L{None} in a child process, which answers for itself only.
        """
        self.registry = registry
        self._shard = shard
        self._children = children

    def call(self, command: type[amp.Command], arguments: Answer) -> Deferred[Answer]:
        """
        Carry a command out.

        @param command: the command.
        @param arguments: its arguments.
        @return: the answer: this process's alone in a child or for a command registered
            without C{combine}, else every process's answers combined. Fails with
            L{ControlError} when the command is unknown or this process's handler fails.
        """
        registration = self.registry.find(command.commandName)
        if registration is None:
            return fail(unknown_command(command.commandName))
        return self._call(registration, arguments)

    def _call(self, registration: Registration, arguments: Answer) -> Deferred[Answer]:
        handler: Callable[..., Any] = registration.handler
        local: Deferred[Answer] = maybeDeferred(handler, **arguments)
        combine = registration.combine
        if combine is None or self._children is None:
            return local
        children = self._children
        shards = [self._shard, *children.expected()]
        calls: list[Deferred[Answer]] = [local]
        calls += [children.call(k, registration.command, arguments) for k in shards[1:]]

        def combined(results: list[tuple[bool, Any]]) -> Answer | Failure:
            answers: dict[int, Answer | None] = {}
            for shard, (ok, value) in zip(shards, results, strict=True):
                if ok:
                    answers[shard] = value
                elif shard == self._shard:
                    return value  # type: ignore[no-any-return]  # this process failed
                else:
                    _log.warn(
                        "Shard {shard} did not answer control command {command}: {why}",
                        shard=shard,
                        command=registration.command.commandName.decode(),
                        why=value.getErrorMessage(),
                    )
                    answers[shard] = None
            return combine(answers)

        return DeferredList(calls, consumeErrors=True).addCallback(combined)


class ControlProtocol(amp.AMP):
    """
    AMP that answers the commands of a registry through a dispatcher.
    """

    def __init__(
        self, dispatcher: ControlDispatcher, lost: Callable[[Failure], object] | None = None
    ) -> None:
        """
        @param dispatcher: carries the commands out.
        @param lost: called when the connection is lost.
        """
        super().__init__()
        self._dispatcher = dispatcher
        self._lost = lost

    @override
    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Deferred[amp.AmpBox]] | None:
        registration = self._dispatcher.registry.find(name)
        if registration is None:
            return None  # AMP answers "unhandled command"
        command = registration.command

        def respond(box: amp.AmpBox) -> Deferred[amp.AmpBox]:
            arguments = command.parseArguments(box, self)
            d: Deferred[Any] = self._dispatcher.call(command, arguments)
            d.addCallback(command.makeResponse, self)
            d.addErrback(_known_errors, command)
            return d

        return respond

    @override
    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        if self._lost is not None:
            self._lost(reason)


def _known_errors(failure: Failure, command: type[amp.Command]) -> Failure:
    # An error the command declares goes back with its code and text; any other is logged by
    # AMP and answered as an unhandled error.
    errors: dict[type[Exception], bytes] = command.allErrors  # type: ignore[attr-defined]
    known = failure.check(*errors)
    if known is None:
        return failure
    code = errors[known]
    return Failure(amp.RemoteAmpError(code, str(failure.value), local=failure))


class ControlFactory(Factory):
    """
    Makes the protocol of each control socket connection.
    """

    #: No "Starting factory" lines: the control service says when the socket is open.
    noisy = False

    def __init__(self, dispatcher: ControlDispatcher) -> None:
        """
        @param dispatcher: carries the commands out.
        """
        self._dispatcher = dispatcher

    @override
    def buildProtocol(self, addr: object) -> ControlProtocol:
        return ControlProtocol(self._dispatcher)


def unknown_command(name: bytes) -> ControlError:
    """
    @param name: a command name.
    @return: the error for a command this process does not know.
    """
    return ControlError(f"unknown control command {name.decode(errors='replace')!r}")
