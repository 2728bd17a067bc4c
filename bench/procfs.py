"""
CPU time of a process tree and of single threads, read from C{/proc} (Linux only).

Times are in seconds. A tree's time is C{utime + stime + cutime + cstime} of its root and of
every live descendant, so the time of children that exited and were reaped (Postfix's C{smtpd}
processes come and go) stays counted in their parent.
"""

from __future__ import annotations

import os
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(path: Path) -> list[str] | None:
    # The fields after the command name, which may itself contain spaces and parentheses.
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _all_processes() -> dict[int, tuple[int, int]]:
    # pid -> (parent pid, utime+stime+cutime+cstime in clock ticks) of every live process.
    table: dict[int, tuple[int, int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields is None:
            continue
        table[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
    return table


def tree_pids(root: int) -> list[int]:
    """
    List a process and all its live descendants.

    @param root: the process id at the top of the tree.
    @return: the process ids, the root first when it is alive.
    """
    table = _all_processes()
    return [pid for pid in table if _descends(pid, root, table)]


def _descends(pid: int, root: int, table: dict[int, tuple[int, int]]) -> bool:
    # Whether pid is root or below it; bounded by the table size against parent loops.
    for _ in range(len(table) + 1):
        if pid == root:
            return True
        if pid not in table or pid <= 1:
            return False
        pid = table[pid][0]
    return False


def tree_cpu(root: int) -> float:
    """
    Sum the CPU time of a process tree.

    @param root: the process id at the top of the tree.
    @return: user plus system seconds of the root and its live descendants, including the time
        of their reaped children.
    """
    table = _all_processes()
    ticks = sum(table[pid][1] for pid in table if _descends(pid, root, table))
    return ticks / _HZ


def thread_cpu(pid: int) -> dict[int, float]:
    """
    Read the CPU time of each thread of a process.

    @param pid: the process id.
    @return: thread id -> user plus system seconds of that thread.
    """
    result: dict[int, float] = {}
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return result
    for task in tasks:
        fields = _stat_fields(task / "stat")
        if fields is not None:
            result[int(task.name)] = (int(fields[11]) + int(fields[12])) / _HZ
    return result


def machine_busy() -> float:
    """
    Read the whole machine's busy CPU time (everything except idle and iowait).

    @return: seconds, summed over all cores.
    """
    fields = [int(x) for x in (_PROC / "stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / _HZ
