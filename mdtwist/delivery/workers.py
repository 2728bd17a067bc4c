# -*- test-case-name: tests.delivery.test_workers -*-
"""
Maildir writes in worker processes (C{delivery.maildir_processes}), so that the server
process's interpreter lock is left to its SMTP sessions and its queue runner.

Theory of operation. Written on threads of the server process, every Maildir file costs about
ten system calls, and at each one the thread lets go of the interpreter lock and must win it
back, competing with the reactor thread, which then waits at its own calls. L{DeliveryWorkers}
runs the writes in worker processes instead (L{mdtwist.delivery.worker_process}, started with
the reactor's C{spawnProcess}): each write is sent to a worker, in turn, over its standard
input, runs there on threads of its own, and its result comes back over the worker's standard
output; the write's Deferred fires with the result, or fails with its C{OSError} as on a thread.
A body the spool keeps in a file of its own (L{mdtwist.spool.model.StoredBody}, above the
spool's inline limit) travels as the file's name and is read by the worker, so a large
message is not pushed through the pipe, and through the reactor, once per copy.
A worker that dies fails the writes it had with C{EIO} (the delivery is tried again later, at
least once as always: a file it wrote before dying is found by its name when the copy has one),
and a new worker takes its place for the next write.

Workers are started at the first write, after twistd has dropped its privileges, so they write
as the server's user, with the server's import path. A worker ends when its input ends: when
the service stops (it finishes its writes first), when it has had nothing to do for C{idle}
seconds (as Postfix's processes end after C{max_idle}: a quiet server gives their memory back,
and the next write starts a worker again), and when the server process dies, even by
C{kill -9}, since the server holds the only other end of that pipe.
"""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import sys
from collections.abc import Callable, Collection
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.affinity import format_cpus
from mdtwist.delivery.worker_process import HEADER, call_frame

log = Logger()

#: Seconds a stopping worker gets to finish its writes before it is killed.
STOP_GRACE = 30.0

#: Seconds a worker may have nothing to do before it ends (Postfix's C{max_idle} default).
IDLE = 100.0


class _Worker(ProcessProtocol):
    """
    One worker process: the writes sent to it and not answered yet.
    """

    def __init__(self, numbers: itertools.count[int], clock: Any, idle: float) -> None:
        self._numbers = numbers
        self._clock = clock
        self._idle = idle
        self._busy_at = clock.seconds()
        self._retire = clock.callLater(idle, self._check_idle)
        self._waiting: dict[int, Deferred[Any]] = {}
        self._buffer = b""
        self.ended: Deferred[None] = Deferred()
        self.alive = True
        self.accepting = True

    def call(self, function: Callable[..., Any], arguments: tuple[Any, ...]) -> Deferred[Any]:
        number = next(self._numbers)
        d: Deferred[Any] = Deferred()
        self._waiting[number] = d
        assert self.transport is not None
        self.transport.write(call_frame(number, function, arguments))
        return d

    def stop(self) -> None:
        self.accepting = False
        if self._retire.active():
            self._retire.cancel()
        if self.alive and self.transport is not None:
            self.transport.closeStdin()

    def _check_idle(self) -> None:
        # One timer per worker, not one per write: it looks again when the worker was busy.
        if self._waiting:
            self._busy_at = self._clock.seconds()
        left = self._busy_at + self._idle - self._clock.seconds()
        if left > 0:
            self._retire = self._clock.callLater(left, self._check_idle)
        else:
            self.stop()

    @override
    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buffer)
            if len(self._buffer) < HEADER.size + size:
                return
            body = self._buffer[HEADER.size : HEADER.size + size]
            self._buffer = self._buffer[HEADER.size + size :]
            number, ok, value = pickle.loads(body)
            d = self._waiting.pop(number, None)
            if d is None:
                continue
            if ok:
                d.callback(value)
            else:
                d.errback(Failure(value))
        self._busy_at = self._clock.seconds()

    @override
    def processEnded(self, reason: Failure) -> None:
        self.alive = self.accepting = False
        if self._retire.active():
            self._retire.cancel()
        waiting, self._waiting = self._waiting, {}
        if waiting or not reason.check(ProcessDone):
            log.error(
                "Maildir worker process ended ({reason}); {count} deliveries will be tried again",
                reason=reason.getErrorMessage(),
                count=len(waiting),
            )
        for d in waiting.values():
            d.errback(Failure(OSError(errno.EIO, "Maildir worker process ended")))
        self.ended.callback(None)


class DeliveryWorkers(Service):
    """
    Runs blocking Maildir writes in worker processes; L{run} has the signature of
    L{mdtwist.delivery.local.Run}.
    """

    def __init__(
        self,
        reactor: Any,
        processes: int,
        threads: int,
        idle: float = IDLE,
        cpus: Collection[int] = (),
    ) -> None:
        """
        @param reactor: the reactor (C{IReactorProcess}, C{IReactorTime}).
        @param processes: how many worker processes.
        @param threads: how many writes each worker runs at once.
        @param idle: seconds a worker may have nothing to do before it ends.
        @param cpus: the CPUs the workers run on; empty: wherever the system puts them.
        """
        self.setName("maildir-workers")
        self._reactor = reactor
        self._threads = threads
        self._idle = idle
        self._cpus = [format_cpus(cpus)] if cpus else []
        self._workers: list[_Worker | None] = [None] * processes
        self._turn = itertools.cycle(range(processes))
        self._numbers = itertools.count()
        self._live: set[_Worker] = set()

    def run(self, function: Callable[..., Any], *arguments: Any) -> Deferred[Any]:
        """
        Run C{function(*arguments)} in a worker.

        @param function: a module-level function (it is pickled by name).
        @param arguments: picklable arguments.
        @return: a Deferred with its result, or failing with its exception; with C{OSError}
            (C{EIO}) when the worker died or the workers are stopped.
        """
        if not self.running:
            return fail(OSError(errno.EIO, "the Maildir workers are stopped"))
        return self._worker(next(self._turn)).call(function, arguments)

    def _worker(self, index: int) -> _Worker:
        worker = self._workers[index]
        if worker is None or not worker.accepting:
            worker = _Worker(self._numbers, self._reactor, self._idle)
            path = os.pathsep.join(p for p in sys.path if p)
            self._reactor.spawnProcess(
                worker,
                sys.executable,
                [
                    sys.executable,
                    "-m",
                    "mdtwist.delivery.worker_process",
                    str(self._threads),
                    *self._cpus,
                ],
                env={**os.environ, "PYTHONPATH": path},
                childFDs={0: "w", 1: "r", 2: 2},
            )
            self._workers[index] = worker
            self._live.add(worker)
            worker.ended.addCallback(lambda _: self._live.discard(worker))
        return worker

    @override
    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        running = [w for w in self._live if w.alive]
        if not running:
            return None
        for worker in running:
            worker.stop()
        kill = self._reactor.callLater(STOP_GRACE, self._kill, running)
        done = DeferredList([w.ended for w in running])

        def ended(_: object) -> None:
            if kill.active():
                kill.cancel()

        return done.addCallback(ended)

    @staticmethod
    def _kill(workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.alive and worker.transport is not None:
                log.warn("A Maildir worker did not stop in time; killed")
                worker.transport.signalProcess("KILL")
