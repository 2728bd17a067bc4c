# -*- test-case-name: tests.test_shards -*-
"""
Several processes serving one mail server: C{[server] processes = N}.

Theory of operation. The process twistd starts (the I{parent}) is shard 0: a complete mdtwist
with the configured spool directory. For every SMTP listener it opens N sockets bound to the
same address with C{SO_REUSEPORT}, serves the first itself, and starts shards 1 to N-1 as child
twistd processes, handing each its own socket of every listener. The kernel spreads new
connections evenly over the sockets by their addresses (a shared socket would go to whichever
process accepts first, which splits a burst unevenly). The parent keeps every socket open, so
connections that reach the socket of a child being restarted wait for it. A child is a complete
mdtwist too, with a spool of its own (C{<spool>/shard-K}) and its own queue runner, so a
message is received, stored and delivered by one process and never crosses a process boundary.
Queue ids carry their shard (L{mdtwist.spool.store.shard_of}), so they stay unique.

A shard above N-1 that still holds mail (the administrator lowered C{processes}) gets a
I{draining} child: no listeners, only its queue runner; it exits once the shard's active queue
is empty (mail parked in its bad queue stays there, listed by C{mdtwistctl}).

The parent restarts a child that dies (after a delay that grows while it keeps dying young),
sends every child C{SIGTERM} when it stops and waits for them (C{SIGKILL} after a grace
period). A child's standard input is one end of a UNIX socket pair whose other end the parent
keeps: control commands travel on it (L{mdtwist.control.pipe}), and a child stops by itself
when it closes, so no child outlives a parent that was killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import (
    CannotListenError,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProcessTransport,
    IProtocolFactory,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.errors import StartupError
from mdtwist.logging import SHARD_VARIABLE, twistd_log_path
from mdtwist.startup import listen_failure

_log = Logger()

#: The file descriptor of the first listening socket in a child; the others follow.
FIRST_LISTEN_FD = 3

#: How long a child must live to count as started well (its restart delay starts afresh).
HEALTHY_AFTER = 30.0

#: The first and the longest delay before a child that died is started again.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0

#: How long a stopping parent waits for its children before it kills them.
STOP_GRACE = 30.0


@attrs.frozen
class ChildSpec:
    """
    One child process to run.

    @ivar shard: its spool shard.
    @ivar listens: whether it shares the listening sockets (C{False}: it only drains its spool).
    """

    shard: int
    listens: bool


def child_argv(
    config_path: str, spec: ChildSpec, listeners: int, parent_argv: Sequence[str]
) -> list[str]:
    """
    The command line of a child: twistd in the foreground running the mdtwist plugin.

    @param config_path: the configuration file, as the parent was given it.
    @param spec: the child.
    @param listeners: how many listening sockets it gets.
    @param parent_argv: the parent's C{sys.argv}; its C{--logger} choice and its log file
        (L{mdtwist.logging.twistd_log_path}) are passed on.
    @return: the arguments, the program first.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    argv += ["--nodaemon", "--pidfile="]
    logger = twistd_logger(parent_argv)
    if logger:
        argv.append(f"--logger={logger}")
    log_path = twistd_log_path(parent_argv)
    if log_path is not None:
        argv.append(f"--logfile={os.path.abspath(log_path)}")
    argv += ["mdtwist", "--config", config_path, "--shard", str(spec.shard)]
    if spec.listens and listeners:
        fds = range(FIRST_LISTEN_FD, FIRST_LISTEN_FD + listeners)
        argv += ["--listen-fds", ",".join(str(fd) for fd in fds)]
    return argv


def twistd_logger(argv: Sequence[str]) -> str:
    """
    Find the C{--logger} option of a twistd command line.

    @param argv: the command line.
    @return: the logger's name, or C{""} when there is none.
    """
    found = ""
    for i, arg in enumerate(argv):
        if arg.startswith("--logger="):
            found = arg.partition("=")[2]
        elif arg == "--logger" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg == "mdtwist":
            break  # the plugin's own options follow
    return found


def share(total: int, processes: int, shard: int) -> int:
    """
    One process's part of a limit that belongs to the whole server.

    The parts add up to C{total} exactly: the first C{total % processes} shards get one more.
    Every process gets at least 1, so with fewer than C{processes} to share out the sum is
    C{processes}. A draining shard (C{shard >= processes}) gets the smallest part.

    @param total: the server's limit, at least 1.
    @param processes: C{server.processes}.
    @param shard: this process's shard.
    @return: this process's part.
    """
    base, extra = divmod(total, processes)
    return max(1, base + (1 if shard < extra else 0))


def parse_fds(text: str) -> list[int]:
    """
    Parse C{--listen-fds}: file descriptors separated by commas.

    @param text: the option's value.
    @return: the descriptors.
    @raise ValueError: when a part is not a descriptor number.
    """
    fds = [int(part) for part in text.split(",") if part.strip()]
    if any(fd < FIRST_LISTEN_FD for fd in fds):
        raise ValueError(f"listening sockets start at descriptor {FIRST_LISTEN_FD}")
    return fds


@attrs.frozen
class ListenSpec:
    """
    Where a TCP listener listens, as its endpoint string says.

    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar interface: the address to bind.
    @ivar port: the port (0: any free port).
    @ivar backlog: the listen queue's length.
    @ivar tls: the TLS context of an implicit-TLS (C{ssl:}) endpoint, or L{None}.
    """

    family: socket.AddressFamily
    interface: str
    port: int
    backlog: int
    tls: IOpenSSLServerConnectionCreator | None


def listen_spec(description: str) -> ListenSpec | None:
    """
    Read a server endpoint string the way Twisted does, without listening.

    @param description: the endpoint, such as C{tcp:25:interface=127.0.0.1} or
        C{ssl:465:privateKey=key.pem}.
    @return: where it listens, or L{None} for an endpoint that is not TCP (C{unix:},
        C{systemd:}).
    @raise Exception: whatever Twisted's parser raises for a bad string.
    """
    reactor = _ListenRecorder()
    # Another kind of endpoint, or one that fails on the recorder, is not a TCP listener.
    serverFromString(reactor, description).listen(_NoFactory()).addErrback(lambda _: None)
    if reactor.tcp is None:
        return None
    port, backlog, interface, tls = reactor.tcp
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return ListenSpec(family, interface, port, backlog, tls)


def tls_of(description: str) -> IOpenSSLServerConnectionCreator | None:
    """
    The TLS context of a server endpoint string, for a child that adopts its socket.

    @param description: the endpoint.
    @return: its TLS context, or L{None} for a plain endpoint.
    """
    spec = listen_spec(description)
    return None if spec is None else spec.tls


def reuseport_sockets(spec: ListenSpec, count: int) -> list[socket.socket]:
    """
    Open listening sockets that share one address with C{SO_REUSEPORT}: the kernel spreads
    new connections evenly over them, one socket per process.

    @param spec: where to listen.
    @param count: how many sockets.
    @return: the sockets, listening and non-blocking.
    @raise CannotListenError: when the address cannot be bound.
    """
    sockets: list[socket.socket] = []
    port = spec.port
    try:
        for _ in range(count):
            sock = socket.socket(spec.family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((spec.interface, port))
            port = sock.getsockname()[1]  # the port chosen for port 0, for the next sockets
            sock.listen(spec.backlog)
            sock.setblocking(False)
    except OSError as e:
        for sock in sockets:
            sock.close()
        raise CannotListenError(spec.interface, port, e) from None
    return sockets


class _NoFactory:
    # Stands in for a factory while an endpoint is listened on by a _ListenRecorder.
    pass


class _ListenRecorder:
    # Stands in for the reactor while an endpoint is listened on: keeps what a TCP or TLS
    # listener would open and opens nothing (twisted.internet.testing's MemoryReactor would
    # do, but it brings trial, unittest and doctest into the server: about 3 MiB).

    def __init__(self) -> None:
        self.tcp: tuple[int, int, str, IOpenSSLServerConnectionCreator | None] | None = None

    def listenTCP(  # noqa: N802 - IReactorTCP's name
        self, port: int, factory: object, backlog: int = 50, interface: str = ""
    ) -> None:
        self.tcp = (port, backlog, interface, None)

    def listenSSL(  # noqa: N802 - IReactorSSL's name
        self,
        port: int,
        factory: object,
        contextFactory: IOpenSSLServerConnectionCreator,  # noqa: N803 - its name
        backlog: int = 50,
        interface: str = "",
    ) -> None:
        self.tcp = (port, backlog, interface, contextFactory)

    def listenUNIX(self, *args: object, **kwargs: object) -> None:  # noqa: N802 - its name
        pass

    def adoptStreamPort(self, *args: object) -> None:  # noqa: N802 - IReactorSocket's name
        pass


class AdoptedListener(Service):
    """
    Serves connections on a listening socket the parent handed over.
    """

    def __init__(
        self,
        reactor: Any,
        fd: int,
        factory: IProtocolFactory,
        tls: IOpenSSLServerConnectionCreator | None,
    ) -> None:
        """
        @param reactor: an C{IReactorSocket}.
        @param fd: the listening socket.
        @param factory: builds the protocols.
        @param tls: wraps every connection in TLS when given (an implicit-TLS listener).
        """
        self._reactor = reactor
        self._fd = fd
        self._factory: IProtocolFactory = (
            factory if tls is None else TLSMemoryBIOFactory(tls, False, factory)
        )
        self._port: IListeningPort | None = None

    @override
    def startService(self) -> None:
        super().startService()
        family = socket.socket(fileno=self._fd)
        try:
            kind = family.family
        finally:
            family.detach()
        self._port = self._reactor.adoptStreamPort(self._fd, kind, self._factory)
        os.close(self._fd)  # the port has a duplicate

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._port is None:
            return None
        port, self._port = self._port, None
        stopped: Deferred[None] | None = port.stopListening()
        return stopped


class DrainWatch(Service):
    """
    Stops a draining child once its spool shard has no active mail left (after a queue run).
    """

    def __init__(
        self,
        reactor: Any,
        observe: Callable[[Callable[[int], object]], Callable[[], None]],
        active: Callable[[], Deferred[int]],
    ) -> None:
        """
        @param reactor: an C{IReactorCore}.
        @param observe: registers a function called after every queue run
            (L{mdtwist.delivery.runner.QueueRunner.add_run_observer}); returns its remover.
        @param active: counts the messages of the active queue.
        """
        self._reactor = reactor
        self._observe = observe
        self._active = active
        self._forget: Callable[[], None] | None = None

    @override
    def startService(self) -> None:
        super().startService()
        self._forget = self._observe(self._after_run)

    @override
    def stopService(self) -> None:
        super().stopService()
        if self._forget is not None:
            self._forget()
            self._forget = None

    def _after_run(self, run: int) -> None:
        self._active().addCallbacks(self._counted, lambda f: _log.failure("Counting failed", f))

    def _counted(self, count: int) -> None:
        if count or not self.running:
            return
        _log.info("The spool shard is drained; stopping")
        self.stopService()
        self._reactor.stop()


class _Child(ProcessProtocol):
    # One running child; tells its supervisor when it ends.

    def __init__(self, ended: Callable[[_Child, Failure], None]) -> None:
        self._ended = ended
        self.started = 0.0

    @override
    def processEnded(self, reason: Failure) -> None:
        self._ended(self, reason)


class ShardSupervisor(Service):
    """
    In the parent: listens on the SMTP addresses, then starts and watches the children.

    Every listener gets one C{SO_REUSEPORT} socket per listening process, all opened here
    (before twistd gives up its privileges) and kept open by the parent: a child that is
    restarted gets the same sockets again, and the connections that waited in its socket's
    queue meanwhile are served then.
    """

    def __init__(
        self,
        reactor: Any,
        listeners: Sequence[tuple[ListenSpec, IProtocolFactory]],
        children: Sequence[ChildSpec],
        argv: Callable[[ChildSpec, int], list[str]],
        link: Callable[[int, socket.socket], object] = lambda shard, end: None,
        drained: Callable[[int], object] = lambda shard: None,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        """
        @param reactor: an C{IReactorProcess}, C{IReactorSocket}, C{IReactorTime} and
            C{IReactorCore}.
        @param listeners: where to listen, with the parent's own factories.
        @param children: the children to run.
        @param argv: makes a child's command line from its spec and number of sockets.
        @param link: given the shard and the parent's end of the socket pair of each child
            started (L{mdtwist.control.pipe.ChildLinks.attach}); it keeps a duplicate if it
            wants one, as the end is closed afterwards.
        @param drained: told the shard of a draining child that finished (it is not started
            again; L{mdtwist.control.pipe.ChildLinks.finished}).
        @param stop_grace: seconds a stopping child gets (to drain its sessions) before it is
            killed.
        """
        self._reactor = reactor
        self._stop_grace = stop_grace
        self._listeners = listeners
        self._specs = children
        self._argv = argv
        self._link = link
        self._drained = drained
        listening = [spec.shard for spec in children if spec.listens]
        self._socket_index = {shard: i for i, shard in enumerate(listening, 1)}
        self._listened = False
        self._sockets: list[list[socket.socket]] = []
        self._ports: list[IListeningPort] = []
        self._running: dict[int, tuple[_Child, IProcessTransport]] = {}
        self._delays: dict[int, float] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._stopped: dict[int, Deferred[None]] = {}

    @override
    def privilegedStartService(self) -> None:
        # Listen before twistd gives up its privileges (port 25), as Twisted's own listeners do.
        super().privilegedStartService()
        self._listen()

    @override
    def startService(self) -> None:
        super().startService()
        if not self._listened:
            self._listen()
        if len(self._sockets) < len(self._listeners):
            _log.error("Not starting the other processes: not every listener could listen")
            return
        for spec in self._specs:
            self._spawn(spec)

    @override
    def stopService(self) -> Deferred[object]:
        super().stopService()
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()
        waits: list[Deferred[Any]] = []
        for port in self._ports:
            stopped = port.stopListening()
            if stopped is not None:
                waits.append(stopped)
        self._ports = []
        for sockets in self._sockets:
            for sock in sockets:
                sock.close()
        for shard, (_, process) in list(self._running.items()):
            waits.append(self._stop_child(shard, process))
        return DeferredList(waits).addCallback(lambda _: None)

    def _listen(self) -> None:
        self._listened = True
        count = 1 + len(self._socket_index)
        for spec, factory in self._listeners:
            try:
                sockets = reuseport_sockets(spec, count)
            except CannotListenError as e:
                line = listen_failure(
                    f"smtp.listen[{len(self._sockets)}].endpoint",
                    f"{spec.interface or '*'} port {spec.port}",
                    e,
                )
                _log.critical("Not starting: {line}", line=line)
                raise StartupError(line) from None
            self._sockets.append(sockets)
            fd = sockets[0].fileno()
            if spec.tls is not None:
                factory = TLSMemoryBIOFactory(spec.tls, False, factory)
            self._ports.append(self._reactor.adoptStreamPort(fd, spec.family, factory))
            _log.info(
                "Listening on {interface} port {port} in {count} processes",
                interface=spec.interface,
                port=sockets[0].getsockname()[1],
                count=count,
            )

    def _spawn(self, spec: ChildSpec) -> None:
        self._restarts.pop(spec.shard, None)
        # The child's standard input is its end of the control link (and its parent watch).
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds: dict[int, int | str] = {0: child_end.fileno(), 1: 1, 2: 2}
        if spec.listens:
            index = self._socket_index[spec.shard]
            for i, sockets in enumerate(self._sockets):
                fds[FIRST_LISTEN_FD + i] = sockets[index].fileno()
        argv = self._argv(spec, len(self._sockets) if spec.listens else 0)
        child = _Child(lambda c, reason: self._ended(spec, c, reason))
        child.started = self._reactor.seconds()
        # The child's log lines carry its shard (mdtwist.logging reads the variable).
        env = dict(os.environ, **{SHARD_VARIABLE: str(spec.shard)})
        try:
            process = self._reactor.spawnProcess(child, argv[0], argv, env=env, childFDs=fds)
            self._link(spec.shard, parent_end)
        finally:
            # The child has its own copy; the link keeps a duplicate of the parent's end.
            child_end.close()
            parent_end.close()
        self._running[spec.shard] = (child, process)
        _log.info(
            "Started process {pid} for spool shard {shard}{what}",
            pid=process.pid,
            shard=spec.shard,
            what="" if spec.listens else " (draining: no listeners)",
        )

    def _stop_child(self, shard: int, process: IProcessTransport) -> Deferred[None]:
        stopped: Deferred[None] = Deferred()
        self._stopped[shard] = stopped
        _signal(process, "TERM")
        kill = self._reactor.callLater(self._stop_grace, _signal, process, "KILL")

        def done(result: None) -> None:
            if kill.active():
                kill.cancel()

        return stopped.addCallback(done)

    def _ended(self, spec: ChildSpec, child: _Child, reason: Failure) -> None:
        entry = self._running.get(spec.shard)
        if entry is not None and entry[0] is child:
            del self._running[spec.shard]
        stopped = self._stopped.pop(spec.shard, None)
        if stopped is not None:
            stopped.callback(None)
            return
        if not self.running:
            return
        if not spec.listens and isinstance(reason.value, ProcessDone):
            _log.info("Spool shard {shard} is drained", shard=spec.shard)
            self._drained(spec.shard)
            return
        lived = self._reactor.seconds() - child.started
        delay = RESTART_DELAY
        if lived < HEALTHY_AFTER:
            delay = min(self._delays.get(spec.shard, RESTART_DELAY / 2) * 2, MAX_RESTART_DELAY)
        self._delays[spec.shard] = delay
        _log.error(
            "The process of spool shard {shard} ended ({status}); starting it again in"
            " {delay:.0f} s",
            shard=spec.shard,
            status=_status(reason),
            delay=delay,
        )
        self._restarts[spec.shard] = self._reactor.callLater(delay, self._spawn, spec)


def _signal(process: IProcessTransport, name: str) -> None:
    with contextlib.suppress(OSError, ProcessExitedAlready):  # it ended meanwhile
        process.signalProcess(name)


def _status(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exit status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            try:
                return f"signal {signal.Signals(value.signal).name}"
            except ValueError:
                return f"signal {value.signal}"
        return f"exit status {value.exitCode}"
    return reason.getErrorMessage()
