"""
Where a session's time goes, step by step: mdtwist against Postfix into a Maildir, a new
connection per message.

Usage (from the repository root)::

    .venv/bin/python bench/steps.py [--runs 3] [--messages 3000] [--processes 1]

For each run, mdtwist (a fresh daemon, the README's configuration, Maildir) and the private
Postfix that writes a Maildir (L{bench.servers.PostfixMaildirServer}), in turns: 20 sessions
of this script (asyncio, one thread) send C{--messages} messages (1 KiB, one local recipient)
as fast as the server answers, each over a connection of its own, and time every step: the
connection, the greeting, EHLO, MAIL, RCPT, DATA, the final dot (until the 250: the spool's
commit) and QUIT. It prints the rate and the mean time of each step per run, then the median
of the means. The client's own delays are in every number, the same for both servers.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import RunFailed, load_average, private_directory, settle
from bench.servers import (
    RECIPIENT,
    SENDER,
    BenchServer,
    MdtwistServer,
    PostfixMaildirServer,
    worker_name,
)
from bench.sessions import read_reply
from tests.integration.peers import PeerError

#: Sessions at once.
SESSIONS = 20

#: The steps of a session, in order.
STEPS = ("connect", "greeting", "EHLO", "MAIL", "RCPT", "DATA", "dot", "QUIT")

BODY = b"Subject: steps\r\n\r\n" + (b"x" * 98 + b"\r\n") * 10 + b".\r\n"

_COMMANDS = (
    ("EHLO", b"EHLO client.test\r\n", b"250"),
    ("MAIL", f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250"),
    ("RCPT", f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250"),
    ("DATA", b"DATA\r\n", b"354"),
    ("dot", BODY, b"250"),
    ("QUIT", b"QUIT\r\n", b"221"),
)


async def _session(port: int, times: dict[str, list[float]]) -> None:
    # One message over a connection of its own; each step's time goes into times.
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    now = time.perf_counter()
    times["connect"].append(now - started)
    try:
        greeting = await read_reply(reader)
        times["greeting"].append(time.perf_counter() - now)
        if not greeting.startswith(b"220"):
            raise RunFailed(f"greeting {greeting!r}")
        for step, line, expect in _COMMANDS:
            before = time.perf_counter()
            writer.write(line)
            reply = await read_reply(reader)
            times[step].append(time.perf_counter() - before)
            if not reply.startswith(expect):
                raise RunFailed(f"{step} got {reply!r}")
    finally:
        writer.close()


async def load(port: int, messages: int) -> tuple[float, dict[str, list[float]]]:
    """
    Send messages over L{SESSIONS} sessions at once, a connection per message.

    @param port: the server's port on 127.0.0.1.
    @param messages: how many messages.
    @return: the messages per second, and the times of each step in seconds.
    """
    times: dict[str, list[float]] = {step: [] for step in STEPS}
    left = messages

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await _session(port, times)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(SESSIONS)))
    return messages / (time.perf_counter() - started), times


def main(argv: Sequence[str]) -> int:
    """
    Run the series and print the results.

    @param argv: the command-line arguments.
    @return: 0 when every run completed, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000, help="messages per run")
    parser.add_argument("--processes", type=int, default=1, help="mdtwist's server.processes")
    parser.add_argument(
        "--maildir-processes", type=int, default=0, help="mdtwist's delivery.maildir_processes"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    options = parser.parse_args(argv)
    base = private_directory("mdtwist-steps-", options.workdir)
    print(f"under {base}; load average {load_average()}", flush=True)
    (base / "mdtwist").mkdir()
    mdtwist = MdtwistServer(
        base / "mdtwist",
        processes=options.processes,
        delivery_extra=f"maildir_processes = {options.maildir_processes}",
        name=worker_name(options.processes, options.maildir_processes),
    )
    postfix: PostfixMaildirServer | None = None
    means: dict[str, list[tuple[float, dict[str, float]]]] = {}
    try:
        postfix = PostfixMaildirServer(base / "postfix")
        servers: list[BenchServer] = [mdtwist, postfix]
        for number in range(1, options.runs + 1):
            for server in servers:
                server.prepare()
                try:
                    settle()
                    rate, times = asyncio.run(load(server.port, options.messages))
                finally:
                    server.finish()
                mean = {step: 1000 * statistics.mean(times[step]) for step in STEPS}
                means.setdefault(server.name, []).append((rate, mean))
                steps = "  ".join(f"{step} {mean[step]:.2f}" for step in STEPS)
                print(f"run {number}: {server.name:16} {rate:5.0f} msgs/s; ms {steps}", flush=True)
    except (RunFailed, PeerError, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        mdtwist.close()
        if postfix is not None:
            postfix.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average at the end: {load_average()}")
    print(f"| server | msgs/s per run | {' | '.join(STEPS)} | sum |")
    print(f"| --- | --- |{' --- |' * (len(STEPS) + 1)}")
    for name, runs in means.items():
        medians = [statistics.median(m[step] for _, m in runs) for step in STEPS]
        cells = " | ".join(f"{value:.2f}" for value in medians)
        rates = "/".join(f"{rate:.0f}" for rate, _ in runs)
        print(f"| {name} | {rates} | {cells} | **{sum(medians):.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
