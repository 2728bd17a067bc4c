"""
Run twistd in this process with cProfile on every thread.

Usage: C{profiled_twistd.py OUTDIR TWISTD-ARGUMENTS...}

The main (reactor) thread is profiled only between two C{SIGUSR2} signals: the first starts its
profiler, the second stops it, so start-up and shut-down stay out of its numbers. Every other
thread (the C{spool-io}, C{delivery-io} and C{directory} pools) is profiled from its start to
its end. Files written to OUTDIR:
  - C{main.prof}: the main thread's stats (pstats format);
  - C{thread-NAME-TID.prof}: one per other thread, written when the thread ends;
  - C{threads.txt}: one line C{TID NAME} per thread, so that per-thread CPU time read from
    C{/proc/PID/task} can be given a name.
"""

from __future__ import annotations

import cProfile
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType


def _note_thread(out: Path, tid: int, name: str) -> None:
    # Append "TID NAME" to threads.txt (one short write per thread).
    with open(out / "threads.txt", "a") as notes:
        notes.write(f"{tid} {name}\n")


def profile_threads(out: Path) -> None:
    """
    Make every thread started from now on run under a profiler of its own.

    @param out: the directory that gets one C{.prof} file per thread.
    """
    original: Callable[[threading.Thread], None] = threading.Thread.run

    def run(thread: threading.Thread) -> None:
        _note_thread(out, threading.get_native_id(), thread.name)
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            original(thread)
        finally:
            profiler.disable()
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", thread.name)
            profiler.dump_stats(out / f"thread-{safe}-{threading.get_native_id()}.prof")

    threading.Thread.run = run  # type: ignore[method-assign,assignment]


def toggle_on_signal(profiler: cProfile.Profile) -> None:
    """
    Start the profiler at the first C{SIGUSR2} and stop it at the second.

    @param profiler: the main thread's profiler.
    """
    state = {"on": False}

    def toggle(number: int, frame: FrameType | None) -> None:
        if state["on"]:
            profiler.disable()
        else:
            profiler.enable()
        state["on"] = not state["on"]

    signal.signal(signal.SIGUSR2, toggle)


def main(argv: list[str]) -> None:
    """
    Run twistd with the given arguments under the profilers, then write the main thread's stats.

    @param argv: OUTDIR, then twistd's arguments.
    """
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    _note_thread(out, threading.get_native_id(), "main")
    profile_threads(out)
    profiler = cProfile.Profile()
    toggle_on_signal(profiler)
    sys.argv = ["twistd", *argv[1:]]

    def dump() -> None:
        profiler.disable()
        profiler.dump_stats(out / "main.prof")

    dump_before_signal_exit(dump)
    from twisted.scripts.twistd import run

    try:
        run()
    finally:
        dump()


def dump_before_signal_exit(dump: Callable[[], None]) -> None:
    """
    Call C{dump} before twistd ends the process by re-raising the signal that stopped it.

    After a SIGTERM shutdown, twistd kills itself with that signal (so that its exit status
    tells how it ended), which skips every C{finally}; this hook runs first.

    @param dump: writes the main thread's stats.
    """
    from twisted.application import app

    original = app._exitWithSignal

    def exit_with_signal(number: int) -> None:
        dump()
        original(number)

    app._exitWithSignal = exit_with_signal


if __name__ == "__main__":
    main(sys.argv[1:])
