"""
Inbound SMTP benchmark: mdtwist against a private Postfix, in one interleaved run series.

Usage (from the repository root)::

    .venv/bin/python bench/inbound.py [--messages 5000] [--sessions 20] [--runs 3]

For every run and for each of the two smtp-source cases (a new connection per message, and
C{-d}: connections reused) it runs mdtwist, then Postfix. Before each run mdtwist is started
afresh on an empty spool and Maildir, Postfix's queue is drained, then C{sync} and 1.5 s of
rest. It reports the accept rate (messages / smtp-source wall time), the servers' CPU per
message, and the time until background delivery is done (the Maildir holds every message, or
Postfix's queue is empty again). One extra mdtwist run under cProfile follows. Numbers are
printed, never asserted; the exit status is non-zero only when a run failed.
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
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    RunFailed,
    children_cpu,
    filesystem_of,
    load_average,
    print_stats,
    print_thread_shares,
    private_directory,
    settle,
)
from bench.procfs import machine_busy, thread_cpu, tree_cpu
from bench.servers import (
    RECIPIENT,
    SENDER,
    BenchServer,
    MdtwistServer,
    PostfixMaildirServer,
    PostfixServer,
    add_delivery_options,
    delivery_options,
    worker_name,
)
from tests.integration.peers import PeerError, find_program

#: Seconds to wait for background delivery after smtp-source is done.
DRAIN_LIMIT = 300.0


@dataclass(frozen=True)
class Case:
    """
    One smtp-source load shape.

    @ivar label: how the table names it.
    @ivar reuse: whether connections are reused (C{-d}).
    @ivar size: the message payload in bytes, headers not counted (C{-l}).
    @ivar recipients: recipients per message (C{-r}); they are the addresses
        L{source_recipients} gives, each a delivery (a Maildir file) of its own.
    """

    label: str
    reuse: bool
    size: int = 1024
    recipients: int = 1


@dataclass(frozen=True)
class Run:
    """
    The measurements of one run of one server.

    @ivar server: the server's name.
    @ivar case: the load case's label.
    @ivar messages: how many messages were sent.
    @ivar accept_s: smtp-source's wall time.
    @ivar drain_s: seconds from the start until background delivery was done.
    @ivar cpu_accept_s: the server tree's CPU seconds while smtp-source ran.
    @ivar cpu_drain_s: the server tree's CPU seconds from the start until delivery was done.
    @ivar source_cpu_s: smtp-source's CPU seconds.
    @ivar machine_busy_s: the machine's busy CPU seconds (all cores) while smtp-source ran.
    @ivar main_cpu_s: the CPU seconds of the server's main thread (mdtwist's reactor thread)
        from the start until delivery was done.
    """

    server: str
    case: str
    messages: int
    accept_s: float
    drain_s: float
    cpu_accept_s: float
    cpu_drain_s: float
    source_cpu_s: float
    machine_busy_s: float
    main_cpu_s: float = 0.0

    @property
    def rate(self) -> float:
        """
        Accepted messages per second.
        """
        return self.messages / self.accept_s

    def describe(self) -> str:
        """
        One line for the progress log.
        """
        return (
            f"{self.server:8} {self.case:8} {self.rate:6.0f} msgs/s"
            f"  accept {self.accept_s:6.2f} s"
            f"  drain {self.drain_s:6.2f} s  cpu {1000 * self.cpu_accept_s / self.messages:5.2f}"
            f"/{1000 * self.cpu_drain_s / self.messages:5.2f} ms/msg"
            f"  server {100 * self.cpu_accept_s / self.accept_s:4.0f}%"
            f"  smtp-source {100 * self.source_cpu_s / self.accept_s:3.0f}%"
            f"  machine {100 * self.machine_busy_s / self.accept_s:4.0f}%/200%"
            f" (others {100 * self.others_s / self.accept_s:3.0f}%)"
            f"  main thread {1000 * self.main_cpu_s / self.messages:5.2f} ms/msg"
        )

    @property
    def others_s(self) -> float:
        """
        Busy CPU seconds of the machine not spent by the server or smtp-source (other programs,
        kernel threads, this script) while smtp-source ran.
        """
        return max(0.0, self.machine_busy_s - self.cpu_accept_s - self.source_cpu_s)


def source_command(case: Case, messages: int, sessions: int, port: int) -> list[str]:
    """
    Build the smtp-source command line, bounded by C{timeout 300}.

    @param case: the load case (connection reuse, payload size, recipients per message).
    @param messages: how many messages to send.
    @param sessions: how many sessions in parallel.
    @param port: the server's loopback port.
    @return: the command.
    """
    reuse = ["-d"] if case.reuse else []
    recipients = ["-r", str(case.recipients)] if case.recipients > 1 else []
    return [
        "timeout", "300", find_program("smtp-source"), *reuse,
        "-s", str(sessions), "-m", str(messages), "-l", str(case.size), *recipients,
        "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}",
    ]  # fmt: skip


def source_recipients(count: int) -> list[str]:
    """
    Name the recipients of every message smtp-source sends with C{-r count -t RECIPIENT}.

    smtp-source sends to L{RECIPIENT} itself, then to L{RECIPIENT} with the numbers 2 to
    C{count} in front of its local part (C{2rcpt@example.test}, ...), the same addresses in
    every message.

    @param count: recipients per message.
    @return: the addresses, L{RECIPIENT} first.
    """
    return [RECIPIENT, *(f"{n}{RECIPIENT}" for n in range(2, count + 1))]


def wait_delivered(server: BenchServer, messages: int, started: float) -> float:
    """
    Wait until the server's background delivery is done.

    @param server: the server.
    @param messages: how many deliveries the run asked for: messages times recipients.
    @param started: when the run started (C{time.perf_counter}).
    @return: seconds from C{started} until delivery was done.
    @raise RunFailed: when it is not done within L{DRAIN_LIMIT} seconds.
    """
    deadline = time.perf_counter() + DRAIN_LIMIT
    while not server.delivered(messages):
        if time.perf_counter() > deadline:
            raise RunFailed(f"{server.name}: delivery not done after {DRAIN_LIMIT} s")
        time.sleep(0.05)
    return time.perf_counter() - started


def measure(server: BenchServer, case: Case, messages: int, sessions: int) -> Run:
    """
    Send the load to a prepared server and measure it, up to the end of delivery.

    @param server: the server, after L{BenchServer.prepare}.
    @param case: the load case.
    @param messages: how many messages to send.
    @param sessions: how many sessions in parallel.
    @return: the measurements.
    @raise RunFailed: when smtp-source fails or delivery does not finish.
    """
    command = source_command(case, messages, sessions, server.port)
    pid = server.pid
    cpu0, busy0, source0 = tree_cpu(pid), machine_busy(), children_cpu()
    main0 = thread_cpu(pid).get(pid, 0.0)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=330)
    accept = time.perf_counter() - started
    cpu1, busy1, source1 = tree_cpu(pid), machine_busy(), children_cpu()
    if result.returncode != 0:
        raise RunFailed(
            f"{server.name} {case.label}: smtp-source exited with {result.returncode}:"
            f" {result.stderr.strip()[-500:]}"
        )
    drain = wait_delivered(server, messages * case.recipients, started)
    cpu2, main2 = tree_cpu(pid), thread_cpu(pid).get(pid, 0.0)
    return Run(
        server.name, case.label, messages, accept, drain,
        cpu1 - cpu0, cpu2 - cpu0, source1 - source0, busy1 - busy0, main2 - main0,
    )  # fmt: skip


def one_run(server: BenchServer, case: Case, messages: int, sessions: int) -> Run:
    """
    Prepare a server, settle, measure one run, and end the run.

    @return: the measurements.
    @raise RunFailed: when the server does not start or the run fails.
    """
    try:
        server.prepare()
    except PeerError as e:
        raise RunFailed(f"{server.name} did not start or drain: {e}") from e
    try:
        settle()
        return measure(server, case, messages, sessions)
    finally:
        server.finish()


def series(
    servers: Sequence[BenchServer], cases: Sequence[Case], runs: int, messages: int, sessions: int
) -> list[Run]:
    """
    Run every case on every server, interleaved: run 1 of each, then run 2 of each, ...

    @return: the measurements, in the order they were taken.
    """
    results: list[Run] = []
    for number in range(1, runs + 1):
        for case in cases:
            for server in servers:
                run = one_run(server, case, messages, sessions)
                print(f"run {number}: {run.describe()}", flush=True)
                results.append(run)
    return results


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summary_table(results: Sequence[Run], servers: Sequence[str], cases: Sequence[Case]) -> str:
    """
    Format the medians per server and case, and the mdtwist/Postfix ratios, as a Markdown table.

    @param results: every run.
    @param servers: the server names, the first one being the numerator of the ratios.
    @param cases: the load cases.
    @return: the table.
    """
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in results:
        groups[run.server, run.case].append(run)
    lines = [
        "| case | server | msgs/s per run | median msgs/s | server CPU ms/msg (accept)"
        " | server CPU ms/msg (to drained) | server CPU % (accept) | smtp-source CPU %"
        " | machine CPU %/200 | others CPU % | accept s | drained after s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case in cases:
        for name in servers:
            lines.append(_row(case.label, name, groups[name, case.label]))
        for reference in servers[1:]:
            lines.append(_ratio_row(case.label, [servers[0], reference], groups))
    return "\n".join(lines)


def _row(case: str, server: str, runs: Sequence[Run]) -> str:
    # One table row: the runs' rates and the medians of everything else.
    def med(values: list[float]) -> float:
        return _median(values)

    rates = "/".join(f"{r.rate:.0f}" for r in runs)
    return (
        f"| `{case}` | {server} | {rates} | **{med([r.rate for r in runs]):.0f}**"
        f" | {med([1000 * r.cpu_accept_s / r.messages for r in runs]):.2f}"
        f" | {med([1000 * r.cpu_drain_s / r.messages for r in runs]):.2f}"
        f" | {med([100 * r.cpu_accept_s / r.accept_s for r in runs]):.0f}"
        f" | {med([100 * r.source_cpu_s / r.accept_s for r in runs]):.0f}"
        f" | {med([100 * r.machine_busy_s / r.accept_s for r in runs]):.0f}"
        f" | {med([100 * r.others_s / r.accept_s for r in runs]):.0f}"
        f" | {med([r.accept_s for r in runs]):.2f} | {med([r.drain_s for r in runs]):.2f} |"
    )


def _ratio_row(case: str, servers: Sequence[str], groups: dict[tuple[str, str], list[Run]]) -> str:
    # mdtwist / Postfix of the median rate and of the median CPU per message.
    first, second = (groups[name, case] for name in servers[:2])

    def ratio(values: list[list[float]]) -> str:
        a, b = (_median(v) for v in values)
        return f"{a / b:.2f}" if b else "n/a"

    rate = ratio([[r.rate for r in first], [r.rate for r in second]])
    cpu_a = ratio([[r.cpu_accept_s for r in first], [r.cpu_accept_s for r in second]])
    cpu_d = ratio([[r.cpu_drain_s for r in first], [r.cpu_drain_s for r in second]])
    drain = ratio([[r.drain_s for r in first], [r.drain_s for r in second]])
    return (
        f"| `{case}` | **{servers[0]}/{servers[1]}** | | **{rate}** | {cpu_a} | {cpu_d}"
        f" | | | | | | {drain} |"
    )


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Read the command line.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=5000, help="messages per run")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument("--runs", type=int, default=3, help="runs per case and server")
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()),
        help="parent of the private directory with both servers' spools (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    parser.add_argument("--keep", action="store_true", help="keep the private directory")
    parser.add_argument(
        "--postfix-maildir", action="store_true",
        help="also run a second Postfix that delivers into a Maildir, as mdtwist does",
    )  # fmt: skip
    add_delivery_options(parser)
    parser.add_argument(
        "--processes", type=int, default=1, help="mdtwist's server.processes (default: 1)"
    )
    parser.add_argument(
        "--baseline", type=Path, metavar="CHECKOUT",
        help="also run the mdtwist of another checkout (row mdtwist-baseline), for a"
        " before/after comparison in one series, with the same [delivery] options",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-processes", type=int, default=None, metavar="N",
        help="server.processes of the baseline row (default: --processes)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    """
    Run the series and the profile, print the results.

    @param argv: the command-line arguments.
    @return: the exit status: 0 when every run completed, 1 otherwise.
    """
    options = parse_arguments(argv)
    base = private_directory("mdtwist-inbound-", options.workdir)
    print(f"spools under {base}: {filesystem_of(base)}", flush=True)
    print(f"load average at start: {load_average()}", flush=True)
    mdtwist_parent = base / "mdtwist"
    mdtwist_parent.mkdir()
    delivery = delivery_options(options)
    mdtwist = MdtwistServer(
        mdtwist_parent,
        processes=options.processes,
        delivery_extra=delivery,
        name=worker_name(options.processes, options.maildir_processes, options.queue_first),
    )
    references: list[BenchServer] = []
    if options.baseline is not None:
        (base / "baseline").mkdir()
        references.append(
            MdtwistServer(
                base / "baseline",
                processes=options.baseline_processes or options.processes,
                delivery_extra=delivery,
                code=options.baseline.resolve(),
                name="mdtwist-baseline",
            )
        )
    try:
        references.append(PostfixServer(base / "postfix"))
        if options.postfix_maildir:
            references.append(PostfixMaildirServer(base / "postfix-maildir"))
        run_everything(options, mdtwist, references, base)
    except (RunFailed, PeerError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        mdtwist.close()
        for reference in references:
            reference.close()
        if options.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


def run_everything(
    options: argparse.Namespace,
    mdtwist: MdtwistServer,
    references: Sequence[BenchServer],
    base: Path,
) -> None:
    """
    The run series, its table, then the profile run.
    """
    cases = [Case("-s N", reuse=False), Case("-s N -d", reuse=True)]
    servers: list[BenchServer] = [mdtwist, *references]
    print(
        f"{options.runs} runs x {len(cases)} cases x {len(servers)} servers,"
        f" {options.messages} messages,"
        f" {options.sessions} sessions, 1 KiB body; ms/msg = server CPU (accept window / until"
        " delivered)",
        flush=True,
    )
    results = series(servers, cases, options.runs, options.messages, options.sessions)
    print(f"\nload average at the end of the series: {load_average()}")
    print(f"N = {options.sessions} sessions, {options.messages} messages per run")
    print(summary_table(results, [s.name for s in servers], cases), flush=True)
    if not options.no_profile:
        profile_run(mdtwist, base / "profile", options.messages, options.sessions)


def profile_run(server: MdtwistServer, out: Path, messages: int, sessions: int) -> None:
    """
    One more mdtwist run of the C{-s N} case under cProfile; print where the time went.

    @param server: the mdtwist server (it is switched to the profiling wrapper).
    @param out: the directory for the profile files.
    @param messages: how many messages to send.
    @param sessions: how many sessions in parallel.
    @raise RunFailed: when the run fails.
    """
    server.profile_dir = out
    try:
        server.prepare()
    except PeerError as e:
        raise RunFailed(f"profiled mdtwist did not start: {e}") from e
    try:
        settle()
        pid = server.pid
        os.kill(pid, signal.SIGUSR2)
        before = thread_cpu(pid)
        run = measure(server, Case("-s N", reuse=False), messages, sessions)
        after = thread_cpu(pid)
        os.kill(pid, signal.SIGUSR2)
    finally:
        server.finish()
    print(f"\nprofiled run (cProfile on, slower): {run.describe()}")
    print_thread_shares(before, after, out / "threads.txt")
    print_stats(out / "main.prof", "main (reactor) thread")
    for path in sorted(out.glob("thread-PoolThread-spool-io-*.prof")):
        print_stats(path, f"spool-io thread ({path.name}; wall-clock, idle waits included)", 12)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
