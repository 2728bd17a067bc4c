# -*- test-case-name: tests.delivery.test_workers -*-
"""
A Maildir worker process (L{mdtwist.delivery.workers}), run as
C{python -m mdtwist.delivery.worker_process THREADS [CPUS]}. It imports nothing of Twisted, so
a worker stays a small Python process. With C{CPUS} (such as C{1,2,3}) it runs on those CPUs
only (L{mdtwist.affinity}).

It reads calls from its standard input and writes their results to its standard output, each a
frame: a 4-byte big-endian length, then a pickle. A call is C{(number, call)}, where C{call} is
the pickle of C{(function, arguments)} (a module-level function, pickled by name), unpickled
on the thread that runs it: an argument that reads a file as it is unpickled (a spool body,
L{mdtwist.spool.model.StoredBody}) is read there, and its error comes back as the call's. Its
result is C{(number, True, value)} or C{(number, False, exception)}, written when the call is
done (in any order: calls run on C{THREADS} threads). At the end of its input (the server
closed it, or died) it finishes the calls it has and exits. It ignores the terminal's
interrupt: the server ends its workers.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import struct
import sys
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, BinaryIO

from mdtwist.affinity import parse_cpus, pin_process

#: The length before each frame.
HEADER = struct.Struct(">I")


def frame(value: object) -> bytes:
    """
    @param value: a picklable value.
    @return: its frame.
    """
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def call_frame(number: int, function: Callable[..., Any], arguments: tuple[Any, ...]) -> bytes:
    """
    @param number: the call's number, which its result carries.
    @param function: a module-level function.
    @param arguments: its picklable arguments.
    @return: the frame of the call.
    """
    return frame((number, pickle.dumps((function, arguments), pickle.HIGHEST_PROTOCOL)))


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(calls: BinaryIO, results: BinaryIO, threads: int) -> None:
    """
    Run the calls read from C{calls} until its end, writing their results to C{results}.

    @param calls: the input, binary.
    @param results: the output, binary.
    @param threads: how many calls run at once.
    """
    lock = threading.Lock()
    work: SimpleQueue[tuple[int, bytes] | None] = SimpleQueue()

    def run() -> None:
        while (call := work.get()) is not None:
            number, payload = call
            try:
                function, arguments = pickle.loads(payload)
                value, ok = function(*arguments), True
            except Exception as e:
                value, ok = e, False
            try:
                answer = frame((number, ok, value))
            except Exception as e:
                answer = frame((number, False, RuntimeError(f"result not picklable: {e!r}")))
            with lock:
                results.write(answer)
                results.flush()

    # Plain threads and a queue: concurrent.futures would cost the worker 1.5 MiB of imports.
    runners = [threading.Thread(target=run, name=f"maildir-{n}") for n in range(threads)]
    for runner in runners:
        runner.start()
    try:
        while True:
            header = _read_exactly(calls, HEADER.size)
            if header is None:
                break
            data = _read_exactly(calls, HEADER.unpack(header)[0])
            if data is None:
                break
            work.put(pickle.loads(data))
    finally:
        for _ in runners:
            work.put(None)
        for runner in runners:
            runner.join()


def main(argv: list[str]) -> int:
    """
    The worker's entry point.

    @param argv: C{[THREADS]} or C{[THREADS, CPUS]}.
    @return: the exit status.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cpus = parse_cpus(argv[1]) if len(argv) > 1 else None
    if cpus is not None:
        # Before the threads start, which inherit it. A set the system refuses (the CPUs
        # changed since the server read them) leaves the worker where it was.
        with contextlib.suppress(OSError):
            pin_process(cpus)
    serve(sys.stdin.buffer, sys.stdout.buffer, int(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
