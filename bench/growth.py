"""
Growth benchmark: whether a full retry queue slows mdtwist down.

Usage (from the repository root)::

    .venv/bin/python bench/growth.py [--queued 100000] [--messages 3000] [--runs 3]

Two measurements, numbers printed and never asserted:

  - B{accept with a full queue}: runs interleaved, each on a fresh daemon (as C{inbound.py},
    but queueing local mail before delivering it, as it does with
    C{delivery.direct_max_recipients = 0}, so that every message goes through the spool):
    mdtwist with an empty spool, then mdtwist whose spool already holds C{--queued} deferred
    messages (1 KiB, one remote recipient each, next attempt in a day, so the queue runner
    never delivers them during the run). smtp-source sends C{--messages} messages for the
    local Maildir (20 sessions, a new connection per message, then C{-d}); the accept rate and
    the time until the Maildir holds them all are compared as the ratio full/empty.
  - B{listing a full queue}: C{mdtwistctl queue list} over the same spool (the daemon
    stopped), to C{/dev/null} through a pipe: the seconds until its first line, until its
    last, and its peak RSS.

The seeded spool is written once per series (straight into SQLite, in one transaction, the
way the spool stores messages) and copied into each run.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import RunFailed, filesystem_of, load_average, private_directory, settle
from bench.inbound import Case, Run, measure
from bench.servers import MdtwistServer
from mdtwist.envelope import ClientInfo, Envelope, Recipient
from mdtwist.route import Route
from mdtwist.spool.schema import immediate, open_database, upgrade
from mdtwist.spool.store import DATABASE_NAME, _insert_message
from tests.integration.peers import PeerError

#: The load cases: a new connection per message, and reused connections.
CASES = (Case("-s 20", False), Case("-s 20 -d", True))


def seed_spool(directory: Path, count: int, now: float) -> None:
    """
    Write a spool holding C{count} deferred messages.

    @param directory: the spool directory to create.
    @param count: how many messages.
    @param now: their arrival; their next attempt is a day later.
    """
    directory.mkdir(mode=0o700, parents=True)
    (directory / "bodies").mkdir(mode=0o700)
    db = open_database(directory / DATABASE_NAME)
    try:
        upgrade(db, 0)
        body = b"Subject: queued\r\n\r\n" + b"x" * 1000 + b"\r\n"
        recipient = Recipient(
            "rcpt@remote.test", route=Route.remote(), attempts=1, status="4.4.1",
            diagnostic="no connection to smart.remote.test",
        )  # fmt: skip
        envelope = Envelope(
            "sender@client.test", (recipient,), ClientInfo("127.0.0.1", "client.test"), now
        )
        with immediate(db):
            for _ in range(count):
                _insert_message(db, envelope, body, None)
            db.execute("UPDATE message SET next_attempt = ?, attempts = 1", (now + 86400.0,))
    finally:
        db.close()


class SeededMdtwist(MdtwistServer):
    """
    The mdtwist daemon of C{inbound.py}, whose spool starts as a copy of a seeded one. It
    queues every message first (C{delivery.direct_max_recipients = 0}): local mail delivered
    before its reply never meets the queue, and the spool is what is measured here.
    """

    def __init__(self, parent: Path, name: str, seed: Path | None) -> None:
        """
        @param parent: an empty directory; each run gets C{run-N} below it.
        @param name: the row's name.
        @param seed: the spool directory to copy before each start, or L{None} (empty spool).
        """
        super().__init__(parent, delivery_extra="direct_max_recipients = 0")
        self.name = name
        self._seed = seed

    def before_start(self, run_directory: Path) -> None:
        """
        Copy the seeded spool into the run's directory.

        @param run_directory: the run's directory.
        """
        if self._seed is not None:
            shutil.copytree(self._seed, run_directory / "spool")


def timed_list(config: Path) -> tuple[float, float, int, float]:
    """
    Run C{mdtwistctl queue list} and read its output as it comes.

    @param config: the daemon's configuration file.
    @return: seconds until the first line, seconds until the end, lines, and the peak RSS of
        the command in MiB (read while it prints).
    @raise RunFailed: when the command fails.
    """
    program = str(Path(sys.executable).parent / "mdtwistctl")
    started = time.perf_counter()
    first = None
    lines = 0
    with subprocess.Popen(
        [program, "--config", str(config), "queue", "list"], stdout=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        peak = 0
        for _ in process.stdout:
            if first is None:
                first = time.perf_counter() - started
            lines += 1
            if lines % 2000 == 0:
                peak = max(peak, _high_water(process.pid))
        status = process.wait(timeout=600)
    total = time.perf_counter() - started
    if status != 0:
        raise RunFailed(f"mdtwistctl queue list exited with {status}")
    return first or total, total, lines, peak / 1024


def _high_water(pid: int) -> int:
    # The peak resident memory (VmHWM, KiB) of a running process so far; 0 when it is gone.
    # (Not the rusage of the child: Linux counts the forking parent's size in it.)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: Sequence[str]) -> int:
    """
    Run the series and print the table.

    @param argv: the command-line arguments.
    @return: 0 when every run completed, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--queued", type=int, default=100_000, help="deferred messages")
    parser.add_argument("--messages", type=int, default=3000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per server and case")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--list-only", action="store_true", help="only time the queue list")
    options = parser.parse_args(argv)
    base = private_directory("mdtwist-growth-", options.workdir)
    print(f"under {base}: {filesystem_of(base)}; load average {load_average()}", flush=True)
    seed = base / "seed"
    started = time.perf_counter()
    seed_spool(seed, options.queued, time.time())
    size = (seed / DATABASE_NAME).stat().st_size / 2**20
    print(
        f"seeded {options.queued} deferred messages in {time.perf_counter() - started:.1f} s"
        f" ({size:.0f} MiB)",
        flush=True,
    )
    (base / "empty").mkdir()
    (base / "full").mkdir()
    servers = [
        SeededMdtwist(base / "empty", "empty", None),
        SeededMdtwist(base / "full", f"{options.queued // 1000}k", seed),
    ]
    results: list[Run] = []
    try:
        for number in range(1, 0 if options.list_only else options.runs + 1):
            for case in CASES:
                for server in servers:
                    server.prepare()
                    try:
                        settle()
                        run = measure(server, case, options.messages, 20)
                    finally:
                        server.finish()
                    print(f"run {number}: {run.describe()}", flush=True)
                    results.append(run)
        lists = []
        lister = servers[1]
        lister.prepare()
        lister.close()
        assert lister.config_path is not None
        for _ in range(options.runs):
            lists.append(timed_list(lister.config_path))
            print(
                "queue list: first line after {:.2f} s, done after {:.2f} s, {} lines,"
                " peak RSS {:.0f} MiB".format(*lists[-1]),
                flush=True,
            )
    except (RunFailed, PeerError, sqlite3.Error) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average at the end: {load_average()}")
    if not results:
        return 0
    print(
        "| case | spool | msgs/s per run | median msgs/s | server CPU ms/msg per run (accept)"
        " | median CPU ms/msg | drained after s (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case in CASES:
        medians = []
        cpus = []
        for server in servers:
            runs = [r for r in results if r.server == server.name and r.case == case.label]
            rates = [r.rate for r in runs]
            cpu = [1000 * r.cpu_accept_s / r.messages for r in runs]
            medians.append(statistics.median(rates))
            cpus.append(statistics.median(cpu))
            print(
                f"| `{case.label}` | {server.name} | {'/'.join(f'{r:.0f}' for r in rates)}"
                f" | **{medians[-1]:.0f}** | {'/'.join(f'{c:.2f}' for c in cpu)}"
                f" | {cpus[-1]:.2f} | {statistics.median(r.drain_s for r in runs):.2f} |"
            )
        print(
            f"| `{case.label}` | **full/empty** | | **{medians[1] / medians[0]:.2f}** |"
            f" | {cpus[1] / cpus[0]:.2f} | |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
