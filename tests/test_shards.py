"""
Tests for L{mdtwist.shards}: the child command line, the supervisor's start, restart and stop
decisions on a fake reactor (the control link's socket pair is real; L{tests.control.test_pipe}
tests the link itself).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.errors import StartupError
from mdtwist.logging import SHARD_VARIABLE
from mdtwist.shards import (
    FIRST_LISTEN_FD,
    HEALTHY_AFTER,
    MAX_RESTART_DELAY,
    STOP_GRACE,
    AdoptedListener,
    ChildSpec,
    DrainWatch,
    ListenSpec,
    ShardSupervisor,
    child_argv,
    listen_spec,
    parse_fds,
    share,
    tls_of,
    twistd_logger,
)
from tests.support.tls import make_certificate


class _Process:
    # A spawned process as the supervisor sees it.

    def __init__(
        self, protocol: Any, argv: list[str], fds: dict[int, Any], pid: int, env: dict[str, str]
    ) -> None:
        self.protocol = protocol
        self.argv = argv
        self.fds = fds
        self.env = env
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:  # noqa: N802 - Twisted's name
        self.signals.append(name)

    def end(self, reason: Exception) -> None:
        self.protocol.processEnded(Failure(reason))


class _Reactor(MemoryReactorClock):
    # A clock that records spawned processes.

    def __init__(self) -> None:
        super().__init__()
        self.processes: list[_Process] = []
        self.stopped = False
        self.readers_added: list[object] = []

    def spawnProcess(  # noqa: N802 - Twisted's name
        self,
        protocol: Any,
        executable: str,
        args: list[str],
        env: Any,
        childFDs: Any,  # noqa: N803 - Twisted's name
    ) -> _Process:
        process = _Process(protocol, args, childFDs, 1000 + len(self.processes), env)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        self.stopped = True


class ArgvTests(SynchronousTestCase):
    """
    The command line of a child.
    """

    def test_listening_child(self) -> None:
        """
        A child runs twistd in the foreground with the parent's logger, the absolute
        configuration, its shard and one descriptor per listener from 3 up.
        """
        argv = child_argv(
            "/etc/mdtwist.toml",
            ChildSpec(2, listens=True),
            2,
            ["twistd", "-n", "--logger", "mdtwist.logging.json_observer", "mdtwist", "-c", "x"],
        )
        self.assertIn("--nodaemon", argv)
        self.assertIn("--pidfile=", argv)
        self.assertIn("--logger=mdtwist.logging.json_observer", argv)
        tail = argv[argv.index("mdtwist") :]
        self.assertEqual(
            tail,
            ["mdtwist", "--config", "/etc/mdtwist.toml", "--shard", "2", "--listen-fds", "3,4"],
        )

    def test_draining_child(self) -> None:
        """
        A draining child gets no sockets, and no logger when the parent named none.
        """
        argv = child_argv("/c.toml", ChildSpec(5, listens=False), 2, ["twistd", "mdtwist"])
        self.assertNotIn("--listen-fds", argv)
        self.assertFalse([a for a in argv if a.startswith("--logger")])
        self.assertEqual(argv[-2:], ["--shard", "5"])

    def test_log_file_passed_on(self) -> None:
        """
        A child writes to the parent's log file (as an absolute path): the one C{--logfile}
        names, or C{twistd.log} of a parent in the background; none for a parent that logs to
        standard output.
        """
        spec = ChildSpec(1, listens=True)
        cases = [
            (["twistd", "-n", "--logfile", "/var/log/m.log", "mdtwist"], "/var/log/m.log"),
            (["twistd", "-n", "mdtwist"], None),
            (["twistd", "mdtwist"], os.path.abspath("twistd.log")),
            (["twistd", "--logfile=-", "mdtwist"], None),
        ]
        for parent, expected in cases:
            argv = child_argv("/c.toml", spec, 1, parent)
            given = [a.partition("=")[2] for a in argv if a.startswith("--logfile=")]
            self.assertEqual(given, [] if expected is None else [expected], parent)

    def test_twistd_logger(self) -> None:
        """
        The logger is found in both spellings, and not among the plugin's own options.
        """
        self.assertEqual(twistd_logger(["twistd", "--logger=a.b", "mdtwist"]), "a.b")
        self.assertEqual(twistd_logger(["twistd", "--logger", "a.c", "mdtwist"]), "a.c")
        self.assertEqual(twistd_logger(["twistd", "mdtwist", "--logger", "x"]), "")

    def test_parse_fds(self) -> None:
        """
        Descriptors are numbers from 3 up; anything else is refused.
        """
        self.assertEqual(parse_fds("3,4"), [3, 4])
        self.assertEqual(parse_fds(""), [])
        self.assertRaises(ValueError, parse_fds, "3,x")
        self.assertRaises(ValueError, parse_fds, "0")

    def test_tls_of(self) -> None:
        """
        An ssl: endpoint gives its TLS context (for the adopted socket); tcp: gives none.
        """
        certificate, key = make_certificate(Path(self.mktemp()))
        self.assertIsNotNone(tls_of(f"ssl:0:privateKey={key}:certKey={certificate}"))
        self.assertIsNone(tls_of("tcp:0:interface=127.0.0.1"))

    def test_listen_spec(self) -> None:
        """
        A TCP endpoint string gives family, address, port and backlog; one that does not
        listen on TCP gives none, and a bad one raises.
        """
        self.assertEqual(
            listen_spec("tcp:2525:interface=127.0.0.2:backlog=7"),
            ListenSpec(socket.AF_INET, "127.0.0.2", 2525, 7, None),
        )
        self.assertEqual(
            listen_spec("tcp6:25:interface=\\:\\:1"),
            ListenSpec(socket.AF_INET6, "::1", 25, 50, None),
        )
        certificate, key = make_certificate(Path(self.mktemp()))
        spec = listen_spec(f"ssl:465:privateKey={key}:certKey={certificate}")
        assert spec is not None
        self.assertEqual((spec.family, spec.interface, spec.port), (socket.AF_INET, "", 465))
        self.assertIsNotNone(spec.tls)
        self.assertIsNone(listen_spec(f"unix:{self.mktemp()}"))
        self.assertRaises(ValueError, listen_spec, "tcp:notaport")


class ShareTests(SynchronousTestCase):
    """
    A server-wide limit shared out between the processes.
    """

    def test_parts_add_up(self) -> None:
        """
        The parts add up to the limit, the first shards taking the remainder, one each.
        """
        self.assertEqual([share(5, 4, k) for k in range(4)], [2, 1, 1, 1])
        self.assertEqual([share(20, 4, k) for k in range(4)], [5, 5, 5, 5])
        self.assertEqual([share(20, 3, k) for k in range(3)], [7, 7, 6])
        self.assertEqual([share(7, 1, 0)], [7])

    def test_at_least_one(self) -> None:
        """
        With fewer to share than processes, every process still gets one.
        """
        self.assertEqual([share(2, 4, k) for k in range(4)], [1, 1, 1, 1])

    def test_draining_shard(self) -> None:
        """
        A draining shard (beyond the processes) gets the smallest part.
        """
        self.assertEqual(share(5, 2, 3), 2)
        self.assertEqual(share(1, 2, 5), 1)


class SupervisorTests(SynchronousTestCase):
    """
    L{ShardSupervisor} on a fake reactor.
    """

    def setUp(self) -> None:
        self.reactor = _Reactor()
        certificate, key = make_certificate(Path(self.mktemp()))
        tls = listen_spec(f"ssl:0:privateKey={key}:certKey={certificate}:interface=127.0.0.1")
        assert tls is not None
        self.specs = [ListenSpec(socket.AF_INET, "127.0.0.1", 0, 50, None), tls]
        self.factories = [Factory(), Factory()]
        self.drained: list[int] = []
        self.supervisor = ShardSupervisor(
            self.reactor,
            list(zip(self.specs, self.factories, strict=True)),
            [ChildSpec(1, listens=True), ChildSpec(3, listens=False)],
            lambda spec, sockets: ["prog", str(spec.shard), str(sockets)],
            link=self._linked,
            drained=self.drained.append,
        )
        self.links: list[tuple[int, socket.socket]] = []
        self.addCleanup(self.stop_quietly)

    def _linked(self, shard: int, end: socket.socket) -> None:
        mine = socket.socket(fileno=os.dup(end.fileno()))
        self.addCleanup(mine.close)
        self.links.append((shard, mine))

    def stop_quietly(self) -> None:
        if self.supervisor.running:
            self.supervisor.stopService()
            for process in self.reactor.processes:
                process.end(ProcessDone(0))

    def start(self) -> None:
        self.supervisor.privilegedStartService()
        self.supervisor.startService()

    def test_listens_then_starts_children(self) -> None:
        """
        The parent opens two SO_REUSEPORT sockets on one port per listener (one for itself,
        one for the listening child) and serves the first itself, TLS-wrapped for an ssl:
        listener; the listening child gets the second ones at descriptors 3 and up, the
        draining child only its standard streams.
        """
        self.start()
        (fd0, family0, factory0), (fd1, _, factory1) = self.reactor.adoptedPorts
        self.assertEqual(family0, socket.AF_INET)
        self.assertIs(factory0, self.factories[0])
        self.assertIsInstance(factory1, TLSMemoryBIOFactory)
        listening, draining = self.reactor.processes
        self.assertEqual(listening.argv, ["prog", "1", "2"])
        self.assertEqual(sorted(listening.fds), [0, 1, 2, FIRST_LISTEN_FD, FIRST_LISTEN_FD + 1])
        self.assertEqual([listening.fds[i] for i in (1, 2)], [1, 2])
        for parent_fd, child_fd in ((fd0, FIRST_LISTEN_FD), (fd1, FIRST_LISTEN_FD + 1)):
            mine = socket.socket(fileno=os.dup(parent_fd))
            theirs = socket.socket(fileno=os.dup(listening.fds[child_fd]))
            self.addCleanup(mine.close)
            self.addCleanup(theirs.close)
            self.assertNotEqual(parent_fd, listening.fds[child_fd])
            self.assertEqual(mine.getsockname(), theirs.getsockname())
            self.assertEqual(theirs.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
        self.assertEqual(draining.argv, ["prog", "3", "0"])
        self.assertEqual(sorted(draining.fds), [0, 1, 2])
        self.assertEqual([shard for shard, _ in self.links], [1, 3])
        for _, end in self.links:
            self.assertEqual((end.family, end.type), (socket.AF_UNIX, socket.SOCK_STREAM))
            end.settimeout(5.0)
            self.assertEqual(end.recv(1), b"")  # the child's end is closed here
        # Each child finds its shard in the environment, for its log lines.
        self.assertEqual([p.env[SHARD_VARIABLE] for p in (listening, draining)], ["1", "3"])
        self.assertEqual(listening.env["PATH"], os.environ["PATH"])

    def test_restart_delay_grows_while_children_die_young(self) -> None:
        """
        A child that dies is started again after 1 s, then 2 s, 4 s ... up to the maximum
        while it keeps dying soon after its start.
        """
        self.start()
        delays = []
        for i in range(9):
            process = self.reactor.processes[0 if i == 0 else -1]
            before = len(self.reactor.processes)
            process.end(ProcessTerminated(exitCode=1))
            waited = 0.0
            while len(self.reactor.processes) == before:
                self.reactor.advance(0.5)
                waited += 0.5
            delays.append(waited)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(self.reactor.processes[-1].argv, ["prog", "1", "2"])

    def test_restart_delay_starts_afresh_after_a_healthy_run(self) -> None:
        """
        A child that ran long enough is restarted after the first delay again.
        """
        self.start()
        first = self.reactor.processes[0]
        first.end(ProcessTerminated(exitCode=1))
        self.reactor.advance(1)
        second = self.reactor.processes[-1]
        second.end(ProcessTerminated(exitCode=1))
        self.reactor.advance(2)
        third = self.reactor.processes[-1]
        self.reactor.advance(HEALTHY_AFTER + 1)
        third.end(ProcessDone(0))
        before = len(self.reactor.processes)
        self.reactor.advance(1)
        self.assertEqual(len(self.reactor.processes), before + 1)

    def test_drained_child_is_not_restarted(self) -> None:
        """
        A draining child that exits with status 0 has emptied its shard and is not started
        again (the control link is told, so it does not wait for its answers); a listening
        child that exits with status 0 is.
        """
        self.start()
        listening, draining = self.reactor.processes
        draining.end(ProcessDone(0))
        listening.end(ProcessDone(0))
        self.reactor.advance(MAX_RESTART_DELAY)
        self.assertEqual([p.argv[1] for p in self.reactor.processes[2:]], ["1"])
        self.assertEqual(self.drained, [3])
        self.supervisor.stopService()
        self.assertEqual([p.signals for p in self.reactor.processes], [[], [], ["TERM"]])

    def test_draining_child_that_fails_is_restarted(self) -> None:
        """
        A draining child that dies (not status 0) still has mail to deliver: it is restarted.
        """
        self.start()
        self.reactor.processes[1].end(ProcessTerminated(exitCode=1))
        self.reactor.advance(1)
        self.assertEqual(self.reactor.processes[-1].argv, ["prog", "3", "0"])

    def test_stop(self) -> None:
        """
        Stopping closes the listener and every socket, sends every child SIGTERM and fires
        when all ended; a child that ends then is not restarted.
        """
        self.start()
        listening = self.reactor.processes[0]
        fd = int(listening.fds[FIRST_LISTEN_FD])
        stopped = self.supervisor.stopService()
        self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual([p.signals for p in self.reactor.processes], [["TERM"], ["TERM"]])
        self.assertNoResult(stopped)
        for process in self.reactor.processes:
            process.end(ProcessDone(0))
        self.successResultOf(stopped)
        self.reactor.advance(MAX_RESTART_DELAY)
        self.assertEqual(len(self.reactor.processes), 2)

    def test_stop_kills_after_grace(self) -> None:
        """
        A child still there after the grace period gets SIGKILL.
        """
        self.start()
        stopped = self.supervisor.stopService()
        self.reactor.advance(STOP_GRACE)
        self.assertEqual(self.reactor.processes[0].signals, ["TERM", "KILL"])
        for process in self.reactor.processes:
            process.end(ProcessTerminated(signal=9))
        self.successResultOf(stopped)

    def test_no_children_when_a_listener_fails(self) -> None:
        """
        When an address cannot be bound, start-up stops with L{StartupError} (one line naming
        the listener, the address and the reason) and no child starts.
        """
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        supervisor = ShardSupervisor(
            self.reactor,
            [(ListenSpec(socket.AF_INET, "127.0.0.1", port, 50, None), Factory())],
            [ChildSpec(1, listens=True)],
            lambda spec, sockets: ["prog"],
        )
        error = self.assertRaises(StartupError, supervisor.privilegedStartService)
        self.assertEqual(
            str(error),
            f"smtp.listen[0].endpoint: cannot listen on 127.0.0.1 port {port}:"
            " Address already in use",
        )
        self.assertEqual(self.reactor.processes, [])


class AdoptedListenerTests(SynchronousTestCase):
    """
    L{AdoptedListener} in a child, on a real socket.
    """

    def adopt(self, tls: Any) -> tuple[MemoryReactorClock, int, Factory, AdoptedListener]:
        listening = socket.socket(socket.AF_INET6)
        listening.bind(("::1", 0))
        listening.listen(5)
        fd = listening.detach()
        reactor = MemoryReactorClock()
        factory = Factory()
        listener = AdoptedListener(reactor, fd, factory, tls)
        listener.startService()
        return reactor, fd, factory, listener

    def test_adopts_with_the_socket_family_and_closes_its_descriptor(self) -> None:
        """
        The socket is adopted with its own address family, and the handed-over descriptor is
        closed (the reactor has a duplicate).
        """
        reactor, fd, factory, listener = self.adopt(None)
        self.assertEqual(reactor.adoptedPorts, [(fd, socket.AF_INET6, factory)])
        self.assertRaises(OSError, os.fstat, fd)
        listener.stopService()

    def test_implicit_tls(self) -> None:
        """
        With a TLS context, every connection is wrapped in TLS around the SMTP factory.
        """
        certificate, key = make_certificate(Path(self.mktemp()))
        spec = listen_spec(f"ssl:0:privateKey={key}:certKey={certificate}")
        assert spec is not None
        reactor, _, factory, listener = self.adopt(spec.tls)
        ((_, _, wrapped),) = reactor.adoptedPorts
        self.assertIsInstance(wrapped, TLSMemoryBIOFactory)
        self.assertIs(wrapped.wrappedFactory, factory)
        listener.stopService()


class DrainWatchTests(SynchronousTestCase):
    """
    L{DrainWatch}: a draining child stops once its active queue is empty.
    """

    def setUp(self) -> None:
        self.reactor = _Reactor()
        self.observers: list[Any] = []
        self.counts: list[Deferred[int]] = []

        def observe(observer: Any) -> Any:
            self.observers.append(observer)
            return lambda: self.observers.remove(observer)

        def active() -> Deferred[int]:
            d: Deferred[int] = Deferred()
            self.counts.append(d)
            return d

        self.watch = DrainWatch(self.reactor, observe, active)
        self.watch.startService()

    def test_stops_when_empty(self) -> None:
        """
        After a queue run, mail still active keeps the child running; none stops it, and
        the watch stops observing.
        """
        (observer,) = self.observers
        observer(1)
        self.counts[0].callback(2)
        self.assertFalse(self.reactor.stopped)
        observer(2)
        self.counts[1].callback(0)
        self.assertTrue(self.reactor.stopped)
        self.assertEqual(self.observers, [])

    def test_count_failure_is_logged(self) -> None:
        """
        A count that fails is logged and stops nothing.
        """
        self.observers[0](1)
        self.counts[0].errback(RuntimeError("locked"))
        self.assertFalse(self.reactor.stopped)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_service_stops_observing(self) -> None:
        """
        Stopping the service removes its observer; a count that arrives later stops nothing.
        """
        self.observers[0](1)
        self.watch.stopService()
        self.assertEqual(self.observers, [])
        self.counts[0].callback(0)
        self.assertFalse(self.reactor.stopped)
