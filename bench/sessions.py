"""
Latency at half load and the memory of idle sessions: mdtwist against Postfix into a Maildir.

Usage (from the repository root)::

    .venv/bin/python bench/sessions.py [--runs 3] [--messages 3000] [--idle 10000]

For each run, mdtwist (a fresh daemon, the README's configuration: one process, Maildir) and
the private Postfix that writes a Maildir (L{bench.servers.PostfixMaildirServer}), in turns:

  - B{peak}: C{smtp-source -d -s 20} sends C{--messages} messages (1 KiB, one local
    recipient) as fast as the server answers, as in C{inbound.py}: messages/s;
  - B{latency at half of the peak}: 20 connections of this script (reused, no pipelining)
    send messages on an even schedule of half that rate for C{--seconds}; the time from
    sending the final dot until the 250 is read, p50 and p99 in milliseconds;
  - B{idle sessions} (mdtwist only, see below): C{--idle} connections that were greeted and
    said EHLO, then wait; the resident memory of the server's whole process tree (RSS and
    PSS, MiB) before and with them, and per session. With C{--maildir-idle S} mdtwist's
    Maildir workers end after S seconds without writes (C{delivery.maildir_process_idle}),
    and the sessions are opened once they have: the memory of a quiet server.

Postfix runs one smtpd process per session, at most C{default_process_limit} (100 in this
private instance) at a time, so it cannot hold 10 000 sessions at once as configured; its row
gives the memory with 100 idle sessions and the cost per session measured there.

The client is this Python process (asyncio, one thread), the same for both servers; its own
delays are part of every number. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import RunFailed, load_average, private_directory, settle, wait_until
from bench.inbound import Case, measure
from bench.procfs import tree_pids
from bench.servers import (
    RECIPIENT,
    SENDER,
    BenchServer,
    MdtwistServer,
    PostfixMaildirServer,
    add_queue_first_option,
    queue_first_option,
    worker_name,
)
from tests.integration.peers import PeerError

#: Connections of the peak and latency measurements.
CONNECTIONS = 20

#: The peak: smtp-source with reused connections (a C client, so the server is the limit).
PEAK = Case("-s 20 -d", True)

BODY = b"Subject: latency\r\n\r\n" + (b"x" * 98 + b"\r\n") * 10 + b".\r\n"


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    """
    Read one whole (possibly multi-line) reply.

    @param reader: the connection.
    @return: its first line.
    @raise RunFailed: when the server closed the connection.
    """
    first = line = await reader.readline()
    while len(line) > 3 and line[3:4] == b"-":
        line = await reader.readline()
    if not line:
        raise RunFailed("the server closed the connection")
    return first


async def _command(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, line: bytes, expect: bytes
) -> None:
    writer.write(line)
    reply = await read_reply(reader)
    if not reply.startswith(expect):
        raise RunFailed(f"{line!r} got {reply!r}")


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    greeting = await read_reply(reader)
    if not greeting.startswith(b"220"):
        raise RunFailed(f"greeting {greeting!r}")
    await _command(reader, writer, b"EHLO client.test\r\n", b"250")
    return reader, writer


async def _send(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, samples: list[float]
) -> None:
    # One message; the end-of-DATA to 250 time goes into samples.
    await _command(reader, writer, f"MAIL FROM:<{SENDER}>\r\n".encode(), b"250")
    await _command(reader, writer, f"RCPT TO:<{RECIPIENT}>\r\n".encode(), b"250")
    await _command(reader, writer, b"DATA\r\n", b"354")
    writer.write(BODY)
    started = time.perf_counter()
    reply = await read_reply(reader)
    samples.append(time.perf_counter() - started)
    if not reply.startswith(b"250"):
        raise RunFailed(f"end of data got {reply!r}")


async def load(port: int, messages: int, rate: float | None) -> tuple[float, list[float]]:
    """
    Send messages over L{CONNECTIONS} reused connections.

    @param port: the server's port on 127.0.0.1.
    @param messages: how many messages.
    @param rate: messages per second on an even schedule, or L{None}: as fast as possible.
    @return: the messages per second achieved, and the end-of-DATA to 250 times in seconds.
    """
    connections = [await _open(port) for _ in range(CONNECTIONS)]
    samples: list[float] = []
    next_slot = 0
    started = time.perf_counter()

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal next_slot
        while next_slot < messages:
            slot = next_slot
            next_slot += 1
            if rate is not None:
                wait = started + slot / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            await _send(reader, writer, samples)

    await asyncio.gather(*(worker(r, w) for r, w in connections))
    elapsed = time.perf_counter() - started
    for reader, writer in connections:
        writer.write(b"QUIT\r\n")
        await read_reply(reader)
        writer.close()
    return messages / elapsed, samples


def _memory(pid: int) -> tuple[float, float]:
    # RSS and PSS of a process tree, in MiB (from /proc/PID/smaps_rollup).
    rss = pss = 0
    for member in tree_pids(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name in ("Rss", "Pss"):
                kib = int(value.split()[0])
                if name == "Rss":
                    rss += kib
                else:
                    pss += kib
    return rss / 1024, pss / 1024


async def idle(server: BenchServer, sessions: int) -> tuple[float, float, float, float]:
    """
    Open idle sessions and measure the server's memory.

    @param server: the running server.
    @param sessions: how many sessions to open and hold.
    @return: RSS and PSS in MiB before, RSS and PSS in MiB with the sessions open.
    """
    before = _memory(server.pid)
    held = []
    for _ in range(sessions):
        held.append(await _open(server.port))
    await asyncio.sleep(1.0)
    during = _memory(server.pid)
    for _, writer in held:
        writer.close()
    return (*before, *during)


def _percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def main(argv: Sequence[str]) -> int:
    """
    Run the series and print the results.

    @param argv: the command-line arguments.
    @return: 0 when every run completed, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000, help="messages of the peak")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the paced load")
    parser.add_argument("--idle", type=int, default=10_000, help="idle sessions (mdtwist)")
    parser.add_argument(
        "--rate", type=float, default=None, help="the paced rate (default: half the peak)"
    )
    parser.add_argument(
        "--maildir-processes", type=int, default=0, help="mdtwist's delivery.maildir_processes"
    )
    parser.add_argument(
        "--maildir-idle", type=float, default=None, metavar="S",
        help="mdtwist's delivery.maildir_process_idle; the idle sessions wait until the workers"
        " have ended",
    )  # fmt: skip
    parser.add_argument(
        "--processes", type=int, default=1,
        help="mdtwist's server.processes (the idle sessions are spread over them; the memory"
        " is that of all of them)",
    )  # fmt: skip
    add_queue_first_option(parser)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    options = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = private_directory("mdtwist-sessions-", options.workdir)
    print(f"under {base}; load average {load_average()}", flush=True)
    (base / "mdtwist").mkdir()
    sessions = options.idle + 100
    mdtwist = MdtwistServer(
        base / "mdtwist",
        processes=options.processes,
        max_sessions=sessions,
        max_sessions_per_ip=sessions,
        delivery_extra=f"maildir_processes = {options.maildir_processes}"
        + (f"\nmaildir_process_idle = {options.maildir_idle}" if options.maildir_idle else "")
        + queue_first_option(options),
        name=worker_name(options.processes, options.maildir_processes, options.queue_first),
    )
    postfix: PostfixMaildirServer | None = None
    rows: dict[str, list[tuple[float, float, float]]] = {}
    memory: dict[str, list[tuple[float, float, float, float]]] = {}
    try:
        postfix = PostfixMaildirServer(base / "postfix")
        servers: list[tuple[BenchServer, int]] = [(mdtwist, options.idle), (postfix, 100)]
        for number in range(1, options.runs + 1):
            for server, idle_sessions in servers:
                server.prepare()
                try:
                    settle()
                    peak = measure(server, PEAK, options.messages, CONNECTIONS).rate
                    rate = options.rate or peak / 2
                    count = max(CONNECTIONS, int(rate * options.seconds))
                    achieved, samples = asyncio.run(load(server.port, count, rate))
                    p50, p99 = _percentile(samples, 0.5), _percentile(samples, 0.99)
                    rows.setdefault(server.name, []).append((peak, p50, p99))
                    if server is mdtwist and options.maildir_idle:
                        wait_until(
                            # Only the server processes are left.
                            lambda pid=server.pid: len(tree_pids(pid)) == options.processes,  # type: ignore[misc]
                            options.maildir_idle + 30,
                            "the Maildir workers' end",
                            step=0.5,
                        )
                    held = asyncio.run(idle(server, idle_sessions))
                    memory.setdefault(server.name, []).append(held)
                finally:
                    server.finish()
                print(
                    f"run {number}: {server.name:16} peak {peak:6.0f} msgs/s; at {achieved:5.0f}"
                    f" msgs/s end-of-data to 250 p50 {p50:6.2f} ms p99 {p99:6.2f} ms;"
                    f" {idle_sessions} idle sessions: RSS {held[0]:6.1f} -> {held[2]:6.1f} MiB,"
                    f" PSS {held[1]:6.1f} -> {held[3]:6.1f} MiB"
                    f" ({1024 * (held[3] - held[1]) / idle_sessions:.1f} KiB PSS per session)",
                    flush=True,
                )
    except (RunFailed, PeerError, OSError) as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        mdtwist.close()
        if postfix is not None:
            postfix.close()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average at the end: {load_average()}")
    print(
        "| server | peak msgs/s per run | p50 ms per run | p99 ms per run | median p50 / p99 ms"
        " | idle sessions | PSS MiB before → with them (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, values in rows.items():
        holdings = memory[name]
        print(
            f"| {name} | {'/'.join(f'{v[0]:.0f}' for v in values)}"
            f" | {'/'.join(f'{v[1]:.2f}' for v in values)}"
            f" | {'/'.join(f'{v[2]:.2f}' for v in values)}"
            f" | **{statistics.median(v[1] for v in values):.2f} /"
            f" {statistics.median(v[2] for v in values):.2f}**"
            f" | {options.idle if name == mdtwist.name else 100}"
            f" | {statistics.median(h[1] for h in holdings):.1f} →"
            f" **{statistics.median(h[3] for h in holdings):.1f}** |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
