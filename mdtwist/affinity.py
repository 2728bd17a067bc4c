# -*- test-case-name: tests.test_affinity -*-
"""
CPU affinity of the server processes and their Maildir workers (C{server.pin_cpus}).

Theory of operation. A server process runs its Python code on one core at a time (the
interpreter lock), yet left to the scheduler its threads (the reactor, the spool's writer and
readers, the delivery threads) wander over every core, and each time the lock passes to a
thread on another core that thread must first be woken there. Kept on one CPU, the lock
changes hands within it, and the other CPUs are left to the Maildir workers (processes with
locks of their own), to the other server processes and to the rest of the machine. Measured on
a 2-core machine (bench/README.md, 2026-12-06): 17-31 % more messages per second received into
Maildirs, 17 % more relayed by one process, at 14-27 % less CPU per message.

L{split} decides, without touching the system: server process (shard) K gets the K-th CPU it
may use (counting round), its workers all the others. With a single CPU there is nothing to
split. L{pin_process} applies a set to every thread of the calling process (threads started
later inherit it from the thread that starts them); L{allowed} is the set a process may use,
remembered in the environment variable L{VARIABLE} by a process that pins itself, so that the
child processes it starts afterwards (which inherit its narrower set) still see the whole one.
A Maildir worker imports this module, so it imports nothing beyond the standard library.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Mapping
from typing import NamedTuple

#: The environment variable that carries the CPUs a pinned server was allowed before.
VARIABLE = "MDTWIST_CPUS"


class Split(NamedTuple):
    """
    Where a server process and its Maildir workers run.

    @ivar server: the CPUs of the server process (one).
    @ivar workers: the CPUs of its workers (all the others).
    """

    server: frozenset[int]
    workers: frozenset[int]


def split(cpus: Collection[int], shard: int) -> Split | None:
    """
    Share the CPUs between a server process and its Maildir workers.

    @param cpus: the CPUs the server may use.
    @param shard: the server process's shard (0 for the first process).
    @return: the split; L{None} with fewer than two CPUs.
    """
    ordered = sorted(set(cpus))
    if len(ordered) < 2:
        return None
    mine = ordered[shard % len(ordered)]
    return Split(frozenset({mine}), frozenset(ordered) - {mine})


def format_cpus(cpus: Collection[int]) -> str:
    """
    @param cpus: CPU numbers.
    @return: them in ascending order, separated by commas (C{0,2,3}).
    """
    return ",".join(str(cpu) for cpu in sorted(set(cpus)))


def parse_cpus(text: str) -> frozenset[int] | None:
    """
    Read what L{format_cpus} wrote.

    @param text: CPU numbers separated by commas.
    @return: the CPUs; L{None} when C{text} is empty or not such a list.
    """
    try:
        cpus = frozenset(int(part) for part in text.split(","))
    except ValueError:
        return None
    return cpus if cpus and min(cpus) >= 0 else None


def allowed(environ: Mapping[str, str]) -> frozenset[int]:
    """
    The CPUs this process may use.

    @param environ: the process environment (L{VARIABLE} is read from it).
    @return: the set a parent recorded in L{VARIABLE}, else the process's own affinity; an
        empty set where the system has no CPU affinity.
    """
    recorded = parse_cpus(environ.get(VARIABLE, ""))
    if recorded is not None:
        return recorded
    if not hasattr(os, "sched_getaffinity"):
        return frozenset()
    return frozenset(os.sched_getaffinity(0))


def pin_process(cpus: Collection[int]) -> None:
    """
    Keep every thread of this process on C{cpus}.

    @param cpus: the CPUs.
    @raise OSError: when the system refuses (such as a CPU that is not allowed).
    """
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task), cpus)
