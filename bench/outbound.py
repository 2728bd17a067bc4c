"""
Outbound relay benchmark: mdtwist against a private Postfix, both relaying to one smtp-sink.

Usage (from the repository root)::

    .venv/bin/python bench/outbound.py [--messages 5000] [--runs 3]

Each run first I{queues} the messages: smtp-source sends them (to a non-local domain) to the
server while nothing listens on the smart host's port, so every delivery attempt is refused and
the mail stays queued. Then the I{relay} phase is timed: the clock starts just before the sink
starts, and stops when the sink holds every message. Both servers are told to retry at once:
mdtwist with C{mdtwistctl queue run}, Postfix with C{postqueue -f}; both forget then that the
smart host was dead. Runs are interleaved (mdtwist, then
Postfix, run after run). Numbers are printed, never asserted; the exit status is non-zero only
when a run failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from bench.common import (
    RunFailed,
    filesystem_of,
    load_average,
    print_stats,
    print_thread_shares,
    private_directory,
    settle,
    wait_until,
)
from bench.procfs import machine_busy, thread_cpu, tree_cpu
from bench.servers import SENDER, MdtwistServer, PostfixServer
from bench.sink import CountingSink
from tests.integration.peers import PeerError, find_program

#: The recipient of every message: a domain neither server treats as local.
REMOTE_RECIPIENT = "rcpt@remote.test"

#: Parallel smtp-source sessions in the queue phase (connections reused).
SESSIONS = 20

#: The most seconds any phase of a run may take.
LIMIT = 300.0


class RelayServer(Protocol):
    """
    A server that queues mail while its smart host is down and relays it when it is up.
    """

    name: str

    @property
    def port(self) -> int:
        """
        The loopback port smtp-source sends to.
        """

    @property
    def pid(self) -> int:
        """
        The process at the top of the server's process tree.
        """

    def prepare(self) -> None:
        """
        Get ready for a run: a fresh spool, or an empty queue.
        """

    def all_queued(self, count: int) -> bool:
        """
        Tell whether every message of the run is queued and waiting for a retry.

        @param count: how many messages the run sent.
        """

    def release(self) -> None:
        """
        Ask for the queued mail to be retried now that the smart host is up.
        """

    def queued(self) -> int:
        """
        Count the messages still in the queue.
        """

    def finish(self) -> None:
        """
        End the current run.
        """

    def close(self) -> None:
        """
        Stop every process of the server.
        """


class MdtwistRelay(MdtwistServer):
    """
    The mdtwist daemon with the smart host as its only route out, retrying every second.
    """

    def __init__(self, parent: Path, sink_port: int, processes: int = 1) -> None:
        """
        @param parent: an empty directory; each run gets C{run-N} below it.
        @param sink_port: the smart host's port on 127.0.0.1.
        @param processes: the daemon's C{server.processes}.
        """
        super().__init__(
            parent,
            processes=processes,
            smtp_extra='trusted_networks = ["127.0.0.0/8"]',
            delivery_extra="run_interval = 1.0",
            extra=(
                f'[outbound]\nmode = "smarthost"\nsmarthost = "[127.0.0.1]:{sink_port}"\n'
                'smarthost_tls = "none"\nmax_connections_per_host = 20\n\n'
                "[queue]\nremote_interval = 1.0\ndelay_after_temp_error = 0.0\n"
            ),
        )

    def all_queued(self, count: int) -> bool:
        """
        Tell whether the spool holds every message (smtp-source had a 250 for each).

        @param count: how many messages the run sent.
        """
        return self.queued() >= count

    def release(self) -> None:
        """
        Ask for a queue run (C{mdtwistctl queue run}), as C{postqueue -f} for Postfix: the
        smart host is in the dead-host cache for minutes, so the retry every second alone
        would not try it.
        """
        self.queue_run()


class PostfixRelay(PostfixServer):
    """
    A private Postfix with C{relayhost} pointing at the sink, queue settings at their defaults.
    """

    def __init__(self, directory: Path, sink_port: int) -> None:
        """
        @param directory: an empty directory.
        @param sink_port: the smart host's port on 127.0.0.1.
        """
        super().__init__(directory, extra_main_cf=f"relayhost = [127.0.0.1]:{sink_port}\n")

    def all_queued(self, count: int) -> bool:
        """
        Tell whether every message sits in the deferred queue, and nothing anywhere else.

        @param count: how many messages the run sent.
        """
        others = ("maildrop", "incoming", "active", "hold")
        return self.queued(("deferred",)) >= count and self.queued(others) == 0

    def release(self) -> None:
        """
        Flush the deferred queue (C{postqueue -f}).
        """
        self.flush()


@dataclass(frozen=True)
class RelayRun:
    """
    The measurements of one run of one server.

    @ivar server: the server's name.
    @ivar messages: how many messages were sent.
    @ivar queue_s: smtp-source's wall time (the servers also try, and fail, to deliver).
    @ivar first_s: seconds from the sink's start to its first message.
    @ivar relay_s: seconds from the sink's start until it held every message.
    @ivar drain_s: seconds from the sink's start until the server's queue was empty.
    @ivar cpu_s: the server tree's CPU seconds in the relay window.
    @ivar cpu_drain_s: the server tree's CPU seconds from the sink's start until drained.
    @ivar sink_cpu_s: smtp-sink's CPU seconds in the relay window.
    @ivar machine_busy_s: the machine's busy CPU seconds (all cores) in the relay window.
    @ivar received: how many messages the sink held once the server's queue was empty.
    """

    server: str
    messages: int
    queue_s: float
    first_s: float
    relay_s: float
    drain_s: float
    cpu_s: float
    cpu_drain_s: float
    sink_cpu_s: float
    machine_busy_s: float
    received: int

    @property
    def rate(self) -> float:
        """
        Relayed messages per second.
        """
        return self.messages / self.relay_s

    @property
    def steady_rate(self) -> float:
        """
        Messages per second from the sink's first message to its last (start-up lag left out).
        """
        span = self.relay_s - self.first_s
        return (self.messages - 1) / span if span > 0 else float("nan")

    @property
    def cpu_ms(self) -> float:
        """
        The server's CPU milliseconds per message in the relay window.
        """
        return 1000 * self.cpu_s / self.messages

    @property
    def others_s(self) -> float:
        """
        Busy CPU seconds of the machine in the relay window not spent by the server or the
        sink (this script's polling, other programs, kernel threads).
        """
        return max(0.0, self.machine_busy_s - self.cpu_s - self.sink_cpu_s)

    def describe(self) -> str:
        """
        One line for the progress log.
        """
        return (
            f"{self.server:8} relay {self.rate:6.0f} msgs/s  {self.relay_s:6.2f} s"
            f" (first after {self.first_s:4.2f} s, then {self.steady_rate:6.0f} msgs/s;"
            f" drained {self.drain_s:6.2f} s)"
            f"  cpu {self.cpu_ms:5.2f}/{1000 * self.cpu_drain_s / self.messages:5.2f} ms/msg"
            f"  server {100 * self.cpu_s / self.relay_s:4.0f}%"
            f"  sink {100 * self.sink_cpu_s / self.relay_s:3.0f}%"
            f"  machine {100 * self.machine_busy_s / self.relay_s:4.0f}%/200%"
            f" (others {100 * self.others_s / self.relay_s:3.0f}%)"
            f"  queue phase {self.queue_s:6.2f} s  sink got {self.received}"
        )


def source_command(messages: int, port: int, reuse: bool) -> list[str]:
    """
    Build the smtp-source command of the queue phase, bounded by C{timeout}.

    @param messages: how many messages to send.
    @param port: the server's loopback port.
    @param reuse: whether the sessions reuse their connections (C{-d}) instead of opening one
        per message.
    @return: the command: L{SESSIONS} sessions, 1 KiB body, 1 recipient.
    """
    return [
        "timeout", str(int(LIMIT)), find_program("smtp-source"), *(["-d"] if reuse else []),
        "-s", str(SESSIONS), "-m", str(messages), "-l", "1024",
        "-f", SENDER, "-t", REMOTE_RECIPIENT, f"127.0.0.1:{port}",
    ]  # fmt: skip


def queue_phase(server: RelayServer, messages: int, reuse: bool = False) -> float:
    """
    Send the messages while the sink is down and wait until they are all queued.

    @param server: the prepared server.
    @param messages: how many messages to send.
    @param reuse: whether smtp-source reuses its connections.
    @return: smtp-source's wall time.
    @raise RunFailed: when smtp-source fails or the messages are not all queued in time.
    """
    command = source_command(messages, server.port, reuse)
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=LIMIT + 30
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RunFailed(
            f"{server.name}: smtp-source exited with {result.returncode}:"
            f" {result.stderr.strip()[-500:]}"
        )
    wait_until(lambda: server.all_queued(messages), LIMIT, f"{server.name}: queueing", 0.1)
    return elapsed


@dataclass
class Window:
    """
    CPU counters at the start of the relay window.

    @ivar started: C{time.perf_counter} when the window opened.
    @ivar server: the server tree's CPU seconds.
    @ivar machine: the machine's busy CPU seconds.
    """

    started: float
    server: float
    machine: float


def relay_phase(
    server: RelayServer, sink: CountingSink, messages: int, on_start: Callable[[], None]
) -> RelayRun:
    """
    Start the sink, let the server relay its queue, and measure until its queue is empty.

    @param server: the server, with every message queued.
    @param sink: the sink, stopped.
    @param messages: how many messages are queued.
    @param on_start: called right before the window opens (the profiler's switch).
    @return: the measurements (without the queue phase's time, set to 0).
    @raise RunFailed: when the sink does not start or the relay does not finish in time.
    """
    on_start()
    window = Window(time.perf_counter(), tree_cpu(server.pid), machine_busy())
    try:
        sink.start()
    except PeerError as e:
        raise RunFailed(f"smtp-sink did not start: {e}") from e
    server.release()
    first = wait_until(lambda: sink.received() > 0, LIMIT, f"{server.name}: first message")
    done = wait_until(lambda: sink.received() >= messages, LIMIT, f"{server.name}: relay", 0.05)
    cpu, busy, sink_cpu = tree_cpu(server.pid), machine_busy(), tree_cpu(sink.pid)
    drained = wait_until(lambda: server.queued() == 0, LIMIT, f"{server.name}: drain", 0.05)
    cpu_drain = tree_cpu(server.pid)
    return RelayRun(
        server.name, messages, 0.0, first - window.started, done - window.started,
        drained - window.started, cpu - window.server, cpu_drain - window.server, sink_cpu,
        busy - window.machine, sink.received(),
    )  # fmt: skip


def one_run(
    server: RelayServer,
    sink: CountingSink,
    messages: int,
    on_start: Callable[[], None] = lambda: None,
    reuse: bool = False,
) -> RelayRun:
    """
    Prepare a server, queue the messages, settle, relay them, and end the run.

    @param on_start: called right before the relay window opens.
    @param reuse: whether smtp-source reuses its connections in the queue phase.
    @return: the measurements.
    @raise RunFailed: when the server does not start or the run fails.
    """
    sink.stop()
    try:
        server.prepare()
    except PeerError as e:
        raise RunFailed(f"{server.name} did not start or drain: {e}") from e
    try:
        settle()
        queue_s = queue_phase(server, messages, reuse)
        shards = getattr(server, "shard_counts", None)
        if shards is not None and server.processes > 1:  # type: ignore[attr-defined]
            print(f"  {server.name}: messages per spool shard {shards()}", flush=True)
        settle()
        run = relay_phase(server, sink, messages, on_start)
    finally:
        sink.stop()
        server.finish()
    return replace(run, queue_s=queue_s)


def series(
    servers: Sequence[RelayServer],
    sink: CountingSink,
    runs: int,
    messages: int,
    reuse: bool = False,
) -> list[RelayRun]:
    """
    Run every server, interleaved: run 1 of each, then run 2 of each, ...

    @return: the measurements, in the order they were taken.
    """
    results: list[RelayRun] = []
    for number in range(1, runs + 1):
        for server in servers:
            run = one_run(server, sink, messages, reuse=reuse)
            print(f"run {number}: {run.describe()}", flush=True)
            results.append(run)
    return results


_HEADER = (
    "| server | relay msgs/s per run | **median relay msgs/s** | msgs/s after the first"
    " | CPU ms/msg (relay)"
    " | CPU ms/msg (to drained) | server CPU % | smtp-sink CPU % | machine CPU %/200"
    " | others CPU % | relay s | first msg after s | drained after s | queue phase s |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _row(server: str, runs: Sequence[RelayRun]) -> str:
    # One table row: the runs' rates and the medians of everything else.
    def med(value: Callable[[RelayRun], float], digits: int) -> str:
        return f"{statistics.median(value(r) for r in runs):.{digits}f}"

    rates = "/".join(f"{r.rate:.0f}" for r in runs)
    return (
        f"| {server} | {rates} | **{med(lambda r: r.rate, 0)}**"
        f" | {med(lambda r: r.steady_rate, 0)}"
        f" | {med(lambda r: r.cpu_ms, 2)}"
        f" | {med(lambda r: 1000 * r.cpu_drain_s / r.messages, 2)}"
        f" | {med(lambda r: 100 * r.cpu_s / r.relay_s, 0)}"
        f" | {med(lambda r: 100 * r.sink_cpu_s / r.relay_s, 0)}"
        f" | {med(lambda r: 100 * r.machine_busy_s / r.relay_s, 0)}"
        f" | {med(lambda r: 100 * r.others_s / r.relay_s, 0)}"
        f" | {med(lambda r: r.relay_s, 2)} | {med(lambda r: r.first_s, 2)}"
        f" | {med(lambda r: r.drain_s, 2)} | {med(lambda r: r.queue_s, 2)} |"
    )


def _ratio(
    first: Sequence[RelayRun], second: Sequence[RelayRun], value: Callable[..., float]
) -> str:
    # The ratio of the two medians of one measurement.
    a = statistics.median(value(r) for r in first)
    b = statistics.median(value(r) for r in second)
    return f"{a / b:.2f}" if b else "n/a"


def summary_table(results: Sequence[RelayRun], names: Sequence[str]) -> str:
    """
    Format the medians per server and the first/second ratios as a Markdown table.

    @param results: every run.
    @param names: the two server names, the first being the numerator of the ratios.
    @return: the table.
    """
    first, second = ([r for r in results if r.server == name] for name in names[:2])
    ratio_row = (
        f"| **{names[0]}/{names[1]}** | | **{_ratio(first, second, lambda r: r.rate)}**"
        f" | {_ratio(first, second, lambda r: r.steady_rate)}"
        f" | {_ratio(first, second, lambda r: r.cpu_ms)}"
        f" | {_ratio(first, second, lambda r: r.cpu_drain_s)} | | | | | | | | |"
    )
    return "\n".join([_HEADER, _row(names[0], first), _row(names[1], second), ratio_row])


def profile_run(
    server: MdtwistRelay, sink: CountingSink, out: Path, messages: int, reuse: bool
) -> None:
    """
    One more mdtwist run with the relay window under cProfile; print where the time went.

    The reactor thread is profiled from just before the sink starts until mdtwist's queue is
    empty (two C{SIGUSR2}); the pool threads for the whole run.

    @param server: the mdtwist server (switched to the profiling wrapper).
    @param sink: the sink.
    @param out: the directory for the profile files.
    @param messages: how many messages to relay.
    @raise RunFailed: when the run fails.
    """
    server.profile_dir = out
    before: dict[int, float] = {}

    def start_profiling() -> None:
        os.kill(server.pid, signal.SIGUSR2)
        before.update(thread_cpu(server.pid))

    stopped: list[dict[int, float]] = []
    original_finish = server.finish

    def finish() -> None:
        stopped.append(thread_cpu(server.pid))
        os.kill(server.pid, signal.SIGUSR2)
        original_finish()

    server.finish = finish  # type: ignore[method-assign]
    try:
        run = one_run(server, sink, messages, start_profiling, reuse)
    finally:
        server.finish = original_finish  # type: ignore[method-assign]
        server.profile_dir = None
    print(f"\nprofiled run (cProfile on, slower): {run.describe()}")
    print_thread_shares(before, stopped[0], out / "threads.txt")
    print_stats(out / "main.prof", "main (reactor) thread, relay window and drain")
    for path in sorted(out.glob("thread-PoolThread-spool-io-*.prof")):
        print_stats(path, f"spool-io thread ({path.name}; whole run, wall-clock)", 12)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Read the command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per server")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()),
        help="parent of the private directory with both servers' spools (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--profile", action="store_true", help="one more mdtwist run under cProfile at the end"
    )
    parser.add_argument("--keep", action="store_true", help="keep the private directory")
    parser.add_argument(
        "--processes", type=int, default=1, help="mdtwist's server.processes (default: 1)"
    )
    parser.add_argument(
        "--reuse-connections", action="store_true",
        help="queue phase: 20 sessions that reuse their connections (smtp-source -d) instead"
        " of a connection per message; with several processes, 20 connections split unevenly",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    """
    Run the series (and the profile run when asked), print the results.

    @param argv: the command-line arguments.
    @return: the exit status: 0 when every run completed, 1 otherwise.
    """
    options = parse_arguments(argv)
    base = private_directory("mdtwist-outbound-", options.workdir)
    sink = CountingSink()
    print(f"spools under {base}: {filesystem_of(base)}", flush=True)
    print(f"sink dump under {sink.dump}: {filesystem_of(sink.dump)}", flush=True)
    print(f"load average at start: {load_average()}", flush=True)
    (base / "mdtwist").mkdir()
    mdtwist = MdtwistRelay(base / "mdtwist", sink.port, options.processes)
    postfix: PostfixRelay | None = None
    try:
        postfix = PostfixRelay(base / "postfix", sink.port)
        run_everything(options, mdtwist, postfix, sink, base)
    except (RunFailed, PeerError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        mdtwist.close()
        if postfix is not None:
            postfix.close()
        sink.close()
        if options.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def run_everything(
    options: argparse.Namespace,
    mdtwist: MdtwistRelay,
    postfix: PostfixRelay,
    sink: CountingSink,
    base: Path,
) -> None:
    """
    The run series, its table, then the profile run when asked.
    """
    servers: list[RelayServer] = [mdtwist, postfix]
    print(
        f"{options.runs} runs x 2 servers, {options.messages} messages (1 KiB body, 1 recipient)"
        f" queued with the smart host down, then relayed to smtp-sink on port {sink.port};"
        " ms/msg = server CPU (relay window / until drained); queue phase:"
        + (" 20 reused connections" if options.reuse_connections else " a connection per message"),
        flush=True,
    )
    results = series(servers, sink, options.runs, options.messages, options.reuse_connections)
    print(f"\nload average at the end of the series: {load_average()}")
    print(summary_table(results, [s.name for s in servers]), flush=True)
    odd = [r for r in results if r.received != r.messages]
    for run in odd:
        print(f"note: {run.server}: the sink got {run.received} of {run.messages} messages")
    if options.profile:
        profile_run(mdtwist, sink, base / "profile", options.messages, options.reuse_connections)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
