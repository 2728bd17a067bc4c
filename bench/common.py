"""
Helpers shared by the benchmarks: settling between runs, CPU of reaped children, where the
files live, the load average, bounded waiting, and printing profiles.
"""

from __future__ import annotations

import os
import pstats
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path


class RunFailed(Exception):
    """
    A run did not complete: the load generator failed, or a server did not start or deliver.
    """


def wait_until(
    condition: Callable[[], bool], limit: float, what: str, step: float = 0.02
) -> float:
    """
    Poll a condition until it holds.

    @param condition: called every C{step} seconds.
    @param limit: the most seconds to wait.
    @param what: what is awaited, for the error message.
    @param step: seconds between two polls.
    @return: the C{time.perf_counter} value at which the condition was seen to hold.
    @raise RunFailed: when it does not hold within C{limit} seconds.
    """
    deadline = time.perf_counter() + limit
    while not condition():
        if time.perf_counter() > deadline:
            raise RunFailed(f"{what}: not done after {limit:.0f} s")
        time.sleep(step)
    return time.perf_counter()


def private_directory(prefix: str, workdir: Path) -> Path:
    """
    Make the private directory of one bench run (readable by the servers' users).

    @param prefix: the start of its name.
    @param workdir: where it is made.
    @return: its resolved path.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=workdir)).resolve()
    base.chmod(0o755)
    return base


def settle() -> None:
    """
    Flush dirty pages to disk and rest 1.5 s, so that runs start from the same state.
    """
    os.sync()
    time.sleep(1.5)


def children_cpu() -> float:
    """
    @return: user plus system seconds of this process's reaped children so far.
    """
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def filesystem_of(path: Path) -> str:
    """
    Describe the filesystem a path is on, from C{/proc/mounts}.

    @return: for example C{/dev/vda on / (ext4, rw,relatime)}.
    """
    best = ("?", "/", "?", "?")
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, kind, options = line.split()[:4]
        inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
        if inside and len(mount) >= len(best[1]):
            best = (device, mount, kind, options)
    return f"{best[0]} on {best[1]} ({best[2]}, {best[3]})"


def load_average() -> str:
    """
    @return: the 1, 5 and 15 minute load averages, as C{/proc/loadavg} gives them.
    """
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def print_thread_shares(before: dict[int, float], after: dict[int, float], names: Path) -> None:
    """
    Print each thread group's CPU seconds during the profiled run and its share of the process.

    @param before: thread id -> CPU seconds at the start.
    @param after: thread id -> CPU seconds at the end.
    @param names: the wrapper's C{threads.txt} (thread id and name per line).
    """
    labels: dict[int, str] = {}
    for line in names.read_text().splitlines():
        number, name = line.split(" ", 1)
        labels[int(number)] = name.rsplit("-", 1)[0] if name.startswith("PoolThread-") else name
    groups: dict[str, float] = defaultdict(float)
    for thread, seconds in after.items():
        groups[labels.get(thread, "other")] += seconds - before.get(thread, 0.0)
    total = sum(groups.values()) or 1.0
    print("\nCPU per thread group during the profiled run:")
    for name, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"  {name:28} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")


def print_stats(path: Path, title: str, limit: int = 25) -> None:
    """
    Print a profile's top functions by cumulative and by own (total) time.

    @param path: a pstats file.
    @param title: what the profile is of.
    @param limit: how many functions per listing.
    """
    if not path.exists():
        print(f"\n(no profile at {path})")
        return
    for key in ("cumulative", "tottime"):
        print(f"\n=== {title}: top {limit} by {key} ===", flush=True)
        stats = pstats.Stats(str(path), stream=sys.stdout)
        stats.strip_dirs().sort_stats(key).print_stats(limit)
        sys.stdout.flush()
