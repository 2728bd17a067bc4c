"""
Cost per message by body size and by recipients: mdtwist against Postfix into a Maildir.

Usage (from the repository root)::

    .venv/bin/python bench/costs.py [--runs 3] [--sessions 20] [--scale 1.0] [--reuse]

Five cases: a 1 KiB, a 100 KiB and a 10 MiB body for one recipient, and a 1 KiB body for 10
and for 100 recipients (smtp-source C{-r}: distinct local addresses of C{example.test}, each
with a Maildir of its own on both servers, so a message for 10 recipients is 10 Maildir files).
The servers are those of C{inbound.py}: mdtwist as the README recommends for inbound mail (one
process, a fresh daemon on an empty spool and Maildir for every run) and the private Postfix
that writes the same kind of Maildir through virtual(8). Runs are interleaved (for run 1..N,
for each case, mdtwist then Postfix); each is measured from the start of smtp-source until the
last file is in the Maildirs: wall-clock and server CPU (the whole process tree, from C{/proc})
per message. The table gives the medians and Postfix/mdtwist: above 1, mdtwist is faster
(wall) or cheaper (CPU). Numbers are printed, never asserted; the exit status is non-zero only
when a run failed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import RunFailed, filesystem_of, load_average, private_directory
from bench.inbound import Case, Run, one_run, source_recipients
from bench.servers import (
    BenchServer,
    MdtwistServer,
    PostfixMaildirServer,
    add_delivery_options,
    delivery_options,
    worker_name,
)
from tests.integration.peers import PeerError

KIB = 1024
MIB = 1024 * KIB

#: Postfix's message size limit here: its default (10 240 000 bytes) is below a 10 MiB body
#: with its headers; mdtwist's default is 50 MiB. Below Postfix's C{virtual_mailbox_limit}.
POSTFIX_SIZE_LIMIT = 32 * MIB


@dataclass(frozen=True)
class Measured:
    """
    One case of the table and how many messages a run of it sends.

    @ivar case: the smtp-source load (body size, recipients per message).
    @ivar messages: messages per run, at C{--scale 1}: enough for a few seconds per run.
    """

    case: Case
    messages: int


def cases(reuse: bool) -> list[Measured]:
    """
    The five cases of the table.

    @param reuse: whether smtp-source reuses its connections (C{-d}).
    @return: the cases, each with its message count at C{--scale 1}.
    """
    return [
        Measured(Case("1 KiB x 1", reuse, KIB, 1), 4000),
        Measured(Case("100 KiB x 1", reuse, 100 * KIB, 1), 2000),
        Measured(Case("10 MiB x 1", reuse, 10 * MIB, 1), 40),
        Measured(Case("1 KiB x 10", reuse, KIB, 10), 800),
        Measured(Case("1 KiB x 100", reuse, KIB, 100), 60),
    ]


def wall_ms(run: Run) -> float:
    """
    @return: milliseconds of wall-clock time per message, from the start of the load until the
        last file was in the Maildirs.
    """
    return 1000 * run.drain_s / run.messages


def cpu_ms(run: Run) -> float:
    """
    @return: milliseconds of the server's CPU per message over the same time.
    """
    return 1000 * run.cpu_drain_s / run.messages


def series(
    servers: Sequence[BenchServer],
    measured: Sequence[Measured],
    runs: int,
    sessions: int,
    scale: float,
) -> list[Run]:
    """
    Run every case on every server, interleaved: run 1 of each, then run 2 of each, ...

    @param servers: the servers, in the order they run within a case.
    @param measured: the cases.
    @param runs: runs per case and server.
    @param sessions: smtp-source's parallel sessions.
    @param scale: the factor on every case's message count.
    @return: the measurements, in the order they were taken.
    @raise RunFailed: when a run fails.
    """
    results: list[Run] = []
    for number in range(1, runs + 1):
        for item in measured:
            messages = max(1, round(item.messages * scale))
            for server in servers:
                run = one_run(server, item.case, messages, sessions)
                print(
                    f"run {number}: {run.describe()}  wall {wall_ms(run):7.2f}"
                    f" cpu {cpu_ms(run):7.2f} ms/msg to the last file",
                    flush=True,
                )
                results.append(run)
    return results


def cost_table(results: Sequence[Run], mdtwist: str, postfix: str, labels: Sequence[str]) -> str:
    """
    Format the medians per case as a Markdown table.

    @param results: every run.
    @param mdtwist: mdtwist's server name.
    @param postfix: Postfix's server name.
    @param labels: the cases' labels, in table order.
    @return: the table.
    """
    lines = [
        "| case | messages | mdtwist wall ms/msg | mdtwist CPU ms/msg | Postfix wall ms/msg"
        " | Postfix CPU ms/msg | **Postfix/mdtwist** wall (throughput) | Postfix/mdtwist CPU"
        " | wall ratio per run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label in labels:
        ours = [r for r in results if r.server == mdtwist and r.case == label]
        theirs = [r for r in results if r.server == postfix and r.case == label]
        if not ours or not theirs:
            continue
        walls = [statistics.median(wall_ms(r) for r in group) for group in (ours, theirs)]
        cpus = [statistics.median(cpu_ms(r) for r in group) for group in (ours, theirs)]
        per_run = "/".join(
            f"{wall_ms(b) / wall_ms(a):.2f}" for a, b in zip(ours, theirs, strict=True)
        )
        lines.append(
            f"| {label} | {ours[0].messages} | {walls[0]:.2f} | {cpus[0]:.2f}"
            f" | {walls[1]:.2f} | {cpus[1]:.2f} | **{walls[1] / walls[0]:.2f}**"
            f" | {cpus[1] / cpus[0]:.2f} | {per_run} |"
        )
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Read the command line.

    @param argv: the command-line arguments.
    @return: the options.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="runs per case and server")
    parser.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions")
    parser.add_argument(
        "--scale", type=float, default=1.0,
        help="factor on every case's message count (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--reuse", action="store_true", help="reuse connections (smtp-source -d)")
    add_delivery_options(parser)
    parser.add_argument(
        "--only", action="append", default=[], metavar="CASE",
        help="run only the cases whose name is given, e.g. '10 MiB x 1' (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()),
        help="parent of the private directory with both servers' files (default: %(default)s)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
    """
    Run the series and print the table.

    @param argv: the command-line arguments.
    @return: the exit status: 0 when every run completed, 1 otherwise.
    """
    options = parse_arguments(argv)
    wanted = set(options.only)
    measured = [m for m in cases(options.reuse) if not wanted or m.case.label in wanted]
    if not measured:
        print(f"no such case: {', '.join(options.only)}", file=sys.stderr)
        return 2
    addresses = source_recipients(max(m.case.recipients for m in measured))
    base = private_directory("mdtwist-costs-", options.workdir)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M')}; load average {load_average()};"
        f" under {base}: {filesystem_of(base)}",
        flush=True,
    )
    (base / "mdtwist").mkdir()
    mdtwist = MdtwistServer(
        base / "mdtwist",
        accounts=addresses,
        delivery_extra=delivery_options(options),
        name=worker_name(1, options.maildir_processes, options.queue_first),
    )
    postfix: PostfixMaildirServer | None = None
    try:
        postfix = PostfixMaildirServer(
            base / "postfix-maildir",
            mailboxes=addresses,
            extra_main_cf=f"message_size_limit = {POSTFIX_SIZE_LIMIT}\n",
        )
        connections = "reused connections (-d)" if options.reuse else "a connection per message"
        print(
            f"{options.runs} runs x {len(measured)} cases x 2 servers, {options.sessions}"
            f" sessions, {connections}; ms/msg from the start of the load until the last"
            " Maildir file",
            flush=True,
        )
        results = series(
            [mdtwist, postfix], measured, options.runs, options.sessions, options.scale
        )
    except (RunFailed, PeerError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        mdtwist.close()
        if postfix is not None:
            postfix.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average at the end: {load_average()}")
    labels = [m.case.label for m in measured]
    print(cost_table(results, mdtwist.name, PostfixMaildirServer.name, labels), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
