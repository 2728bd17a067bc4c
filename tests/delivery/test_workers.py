"""
Tests for L{mdtwist.delivery.workers}: Maildir writes in worker processes.

These start real worker processes on the real reactor.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mdtwist.delivery import worker_process
from mdtwist.delivery.maildir_files import KnownMaildirs, process_known_maildirs, write_copy
from mdtwist.delivery.workers import DeliveryWorkers
from mdtwist.spool.model import StoredBody

HEADER = b"Return-Path: <s@example.test>\n"
BODY = b"Subject: hi\r\n\r\nhello\r\n"


class DeliveryWorkersTests(TestCase):
    """
    L{DeliveryWorkers} runs writes in other processes and hands back results and errors.
    """

    def setUp(self) -> None:
        self.workers = DeliveryWorkers(reactor, processes=2, threads=4)
        self.workers.startService()
        self.addCleanup(lambda: self.workers.running and self.workers.stopService())
        self.root = Path(self.mktemp())
        self.root.mkdir()

    def write(self, name: str, root: Path | None = None) -> Deferred[Any]:
        base = self.root if root is None else root
        maildir = base / "example.test" / "alice" / "Maildir"
        return self.workers.run(
            write_copy, str(base), str(maildir), (), name, None, HEADER, BODY, set()
        )

    @inlineCallbacks
    def test_writes_in_another_process(self) -> Any:
        """
        The writes of one turn run in a worker process, not this one, and each lands in the
        Maildir's C{new/} with Unix line ends.
        """
        pid = yield self.workers.run(os.getpid)
        self.assertNotEqual(pid, os.getpid())
        written = yield gatherResults([self.write(f"m{n}") for n in range(5)])
        self.assertEqual(written, [True] * 5)
        new = self.root / "example.test" / "alice" / "Maildir" / "new"
        self.assertEqual(sorted(p.name for p in new.iterdir()), [f"m{n}" for n in range(5)])
        self.assertEqual((new / "m0").read_bytes(), HEADER + b"Subject: hi\n\nhello\n")

    @inlineCallbacks
    def test_stored_body_read_by_the_worker(self) -> Any:
        """
        A body the spool keeps in a file reaches the worker as that file, which the worker
        reads: the copy in the Maildir is the file's content.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n")
        body = StoredBody.read(str(path))
        maildir = self.root / "example.test" / "alice" / "Maildir"
        written = yield self.workers.run(
            write_copy, str(self.root), str(maildir), (), "big", None, HEADER, body, set()
        )
        self.assertTrue(written)
        self.assertEqual(
            (maildir / "new" / "big").read_bytes(),
            HEADER + b"Subject: big\n\n" + b"x" * 200_000 + b"\n",
        )

    @inlineCallbacks
    def test_error_comes_back(self) -> Any:
        """
        A write that fails in the worker fails its own Deferred with the same C{OSError},
        and the other writes of the batch still succeed.
        """
        blocked = Path(self.mktemp())
        blocked.write_text("a file where the mail root should be")
        failing = self.write("x", root=blocked)
        fine = self.write("y")
        error = yield self.assertFailure(failing, OSError)
        self.assertEqual(error.errno, errno.EEXIST)
        self.assertTrue((yield fine))

    @inlineCallbacks
    def test_worker_that_dies(self) -> Any:
        """
        When a worker dies, its writes fail with C{EIO} (to be tried again), the other worker
        goes on, and a new worker takes the dead one's turn.
        """
        first = yield self.workers.run(os.getpid)
        second = yield self.workers.run(os.getpid)
        error = yield self.assertFailure(self.workers.run(os._exit, 3), OSError)
        self.assertEqual(error.errno, errno.EIO)
        self.assertTrue((yield self.write("after")))
        third = yield self.workers.run(os.getpid)
        self.assertNotIn(third, (first, second, os.getpid()))

    @inlineCallbacks
    def test_workers_ignore_the_interrupt(self) -> Any:
        """
        A worker ignores SIGINT: Control-C at a foreground twistd reaches the whole process
        group, and the server, not the terminal, ends its workers.
        """
        handler = yield self.workers.run(signal.getsignal, signal.SIGINT)
        self.assertEqual(handler, signal.SIG_IGN)

    @inlineCallbacks
    def test_stopped(self) -> Any:
        """
        Once the service has stopped, a write fails at once with C{EIO}, and no worker
        process is left.
        """
        pid = yield self.workers.run(os.getpid)
        yield self.workers.stopService()
        error = yield self.assertFailure(self.write("late"), OSError)
        self.assertEqual(error.errno, errno.EIO)
        self.assertFalse(Path(f"/proc/{pid}").exists())

    @inlineCallbacks
    def test_cpus(self) -> Any:
        """
        Workers given CPUs run there, on all their threads; workers given none run where
        this process may.
        """
        cpu = max(os.sched_getaffinity(0))
        pinned = DeliveryWorkers(reactor, processes=1, threads=3, cpus={cpu})
        pinned.startService()
        self.addCleanup(lambda: pinned.running and pinned.stopService())
        pid = yield pinned.run(os.getpid)
        tasks = [int(task) for task in os.listdir(f"/proc/{pid}/task")]
        self.assertEqual(len(tasks), 4)  # the reader and three writers
        self.assertEqual([os.sched_getaffinity(task) for task in tasks], [{cpu}] * 4)
        anywhere = yield self.workers.run(os.sched_getaffinity, 0)
        self.assertEqual(anywhere, os.sched_getaffinity(0))

    @inlineCallbacks
    def test_idle_worker_ends(self) -> Any:
        """
        A worker that has had nothing to do for the idle time ends; one busy for longer than
        that does not; the next write starts a new worker.
        """
        workers = DeliveryWorkers(reactor, processes=1, threads=2, idle=0.2)
        workers.startService()
        self.addCleanup(lambda: workers.running and workers.stopService())
        first = yield workers.run(os.getpid)
        yield workers.run(time.sleep, 0.6)
        self.assertEqual((yield workers.run(os.getpid)), first)
        for _ in range(100):  # at most 10 s
            if not Path(f"/proc/{first}").exists():
                break
            yield deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(Path(f"/proc/{first}").exists())
        second = yield workers.run(os.getpid)
        self.assertNotIn(second, (first, os.getpid()))


class KnownMaildirsTests(SynchronousTestCase):
    """
    L{KnownMaildirs} crosses into a worker as that process's own set.
    """

    def test_arrives_as_the_process_set(self) -> None:
        """
        A pickled L{KnownMaildirs} unpickles as the receiving process's set, whatever it held
        where it was pickled: a worker keeps the Maildirs it found between calls.
        """
        sent = KnownMaildirs({"/nowhere/Maildir"})
        arrived = pickle.loads(pickle.dumps(sent))
        self.assertIs(arrived, process_known_maildirs())
        self.assertNotIn("/nowhere/Maildir", arrived)


def _answers(data: bytes) -> dict[int, tuple[bool, Any]]:
    # The results a worker wrote, by call number.
    answers = {}
    while data:
        (size,) = worker_process.HEADER.unpack_from(data)
        number, ok, value = pickle.loads(data[4 : 4 + size])
        answers[number] = (ok, value)
        data = data[4 + size :]
    return answers


class ServeTests(SynchronousTestCase):
    """
    L{worker_process.serve}: frames in, frames out, in this process.
    """

    def test_results_and_errors(self) -> None:
        """
        Each call's result or exception comes back with its number; a frame cut short ends
        the input like its end.
        """
        calls = io.BytesIO(
            worker_process.call_frame(1, pow, (2, 3))
            + worker_process.call_frame(2, int, ("x",))
            + worker_process.call_frame(3, os.getpid, ())[:-1]
        )
        results = io.BytesIO()
        worker_process.serve(calls, results, 2)
        answers = _answers(results.getvalue())
        self.assertEqual(sorted(answers), [1, 2])
        self.assertEqual(answers[1], (True, 8))
        self.assertFalse(answers[2][0])
        self.assertIsInstance(answers[2][1], ValueError)

    def test_unreadable_body_fails_its_call(self) -> None:
        """
        A spool body whose file is gone when the worker unpickles the call fails that call
        with the C{OSError} of the read, and the next call still runs.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"Subject: gone\r\n\r\nbye\r\n")
        body = StoredBody.read(str(path))
        first = worker_process.call_frame(1, len, (body,))
        path.unlink()
        calls = io.BytesIO(first + worker_process.call_frame(2, len, (b"abc",)))
        results = io.BytesIO()
        worker_process.serve(calls, results, 1)
        answers = _answers(results.getvalue())
        self.assertFalse(answers[1][0])
        self.assertIsInstance(answers[1][1], FileNotFoundError)
        self.assertEqual(answers[2], (True, 3))
