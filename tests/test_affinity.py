"""
Tests for L{mdtwist.affinity}: where a server process and its Maildir workers run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.affinity import VARIABLE, Split, allowed, format_cpus, parse_cpus, split


class SplitTests(SynchronousTestCase):
    """
    L{split} gives each server process one CPU, counting round, and its workers the others.
    """

    def test_two_cpus(self) -> None:
        """
        With CPUs 0 and 1 the first process gets 0 and its workers 1; the second the reverse.
        """
        self.assertEqual(split({0, 1}, 0), Split(frozenset({0}), frozenset({1})))
        self.assertEqual(split({0, 1}, 1), Split(frozenset({1}), frozenset({0})))

    def test_counts_round_in_order(self) -> None:
        """
        Shard K gets the K-th CPU in ascending order, modulo their number, whatever the order
        it was given them in; the numbers need not be contiguous.
        """
        self.assertEqual(split([7, 2, 5], 0), Split(frozenset({2}), frozenset({5, 7})))
        self.assertEqual(split([7, 2, 5], 4), Split(frozenset({5}), frozenset({2, 7})))

    def test_one_cpu(self) -> None:
        """
        With one CPU (or none known) there is nothing to split.
        """
        self.assertIsNone(split({3}, 0))
        self.assertIsNone(split([3, 3], 1))
        self.assertIsNone(split((), 0))


class CPUListTests(SynchronousTestCase):
    """
    L{format_cpus} and L{parse_cpus}: the list a parent hands to its children.
    """

    def test_round_trip(self) -> None:
        """
        A set is written sorted and without repeats, and read back the same.
        """
        self.assertEqual(format_cpus([3, 0, 3, 12]), "0,3,12")
        self.assertEqual(parse_cpus("0,3,12"), frozenset({0, 3, 12}))

    def test_not_a_list(self) -> None:
        """
        Empty text, words, blanks between commas and negative numbers are no list.
        """
        for text in ("", "a", "1,,2", "1,x", "-1", "0-3"):
            self.assertIsNone(parse_cpus(text), text)


class AllowedTests(SynchronousTestCase):
    """
    L{allowed} prefers the set a parent recorded to the process's own, which a pinned parent
    narrowed.
    """

    def test_recorded(self) -> None:
        """
        The list in the environment variable wins.
        """
        self.assertEqual(allowed({VARIABLE: "4,5"}), frozenset({4, 5}))

    def test_own(self) -> None:
        """
        Without it (or with a broken one), the process's own affinity.
        """
        own = frozenset(os.sched_getaffinity(0))
        self.assertEqual(allowed({}), own)
        self.assertEqual(allowed({VARIABLE: "nonsense"}), own)


_PIN_SCRIPT = """
import json, os, sys, threading
from mdtwist.affinity import pin_process
started = threading.Event()
stop = threading.Event()
def idle():
    started.set()
    stop.wait()
before = threading.Thread(target=idle)
before.start()
started.wait()
pin_process({int(sys.argv[1])})
after = threading.Thread(target=stop.wait)
after.start()
tasks = os.listdir("/proc/self/task")
print(json.dumps(sorted(sorted(os.sched_getaffinity(int(t))) for t in tasks)))
stop.set()
"""


class PinProcessTests(SynchronousTestCase):
    """
    L{pin_process} moves every thread of the process, those started later included (in a
    child interpreter, so that this one keeps its CPUs).
    """

    def test_every_thread(self) -> None:
        """
        The main thread, a thread started before and one started after all run on the CPU.
        """
        cpu = max(os.sched_getaffinity(0))
        result = subprocess.run(
            [sys.executable, "-c", _PIN_SCRIPT, str(cpu)],
            capture_output=True,
            text=True,
            cwd=Path(mdtwist.__file__).parents[1],
            check=True,
            timeout=60,
        )
        self.assertEqual(json.loads(result.stdout), [[cpu]] * 3)
