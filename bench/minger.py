"""
Minger server benchmark: our server against a minimal Twisted UDP server, side by side.

Usage (from the repository root)::

    .venv/bin/python bench/minger.py [--queries 20000] [--runs 3] [--seconds 4] [--rate 5000]

Two servers, each a separate Python process with its own reactor on a free UDP port of
127.0.0.1, started once and measured in turns (run 1: ours then the ceiling, run 2: ...):

 - C{mdtwist}: our L{MingerResponder} behind L{MingerServerProtocol}, as the daemon builds it:
   the file directory (2000 accounts) behind the directory cache, a 24-character secret
   (every query carries its digest, which the server checks), an allow-list of 127.0.0.0/8.
   The rate limits and the "no such address" budget are raised far above the load, so that
   what is measured is the work of answering, not the limiter saying no.
 - C{ceiling}: a minimal Twisted C{DatagramProtocol} that takes the first token of a datagram
   and answers 5 if it is in a dict, else 3; no checks, no digest, no directory.

The load generator (this process) asks about C{user<i>@example.test} for i over 0..3999, so half
the queries name an account and half get "no such address".

 - Throughput: a closed loop with 64 queries in flight on one socket; a query unanswered for
   0.5 s counts as lost and is replaced. Printed: answered queries per second.
 - Latency at half load: queries sent at an even pace of half the server's own throughput for
   C{--seconds} seconds; the round trip of each answered query is recorded. Printed: p50 and
   p99 in milliseconds.
 - Latency at the same load: the same at C{--rate} queries per second for both servers.

Then the ratios of our server to the ceiling. Numbers are printed, never asserted; the load
generator shares the machine's cores with the servers, so the ceiling is a ceiling of this
set-up, not of the hardware.

Last, the RCPT latency of Domain Sharing (C{--rcpts}, 0 to skip; C{--rcpt-only} skips the
rest): our real daemon (C{twistd mdtwist}, one process) with C{[sharing]} on, the same 2000
accounts, and a sharing cache filled beforehand with 2000 other addresses of the domain routed
to a peer (which is never asked: every lookup is a cache hit). One client session sends
C{RCPT TO} one at a time (each waits for its reply), alternating a local account and a cached
address, a new transaction every 50 recipients. Printed: p50 and p99 round trip of each kind
and the difference (goal: a cache hit within 0.2 ms of a local account).
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mdtwist.minger.codec import encode_query

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
ACCOUNTS = 2000
NAMES = 2 * ACCOUNTS
WINDOW = 64


def serve(kind: str, accounts: Path) -> None:
    """
    Run one server until stdin closes; print its port when it listens.

    @param kind: C{mdtwist} or C{ceiling}.
    @param accounts: the accounts file.
    """
    import ipaddress

    from twisted.internet import reactor, stdio
    from twisted.internet.protocol import DatagramProtocol, Protocol

    from mdtwist.directory.cache import CachedDirectory
    from mdtwist.directory.file import FileDirectory
    from mdtwist.minger.limits import RateLimits
    from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
    from mdtwist.secret import Secret

    protocol: DatagramProtocol
    if kind == "mdtwist":

        def no_run(*args: object, **kwargs: object) -> None:
            raise AssertionError("no password checks here")

        directory = CachedDirectory(
            FileDirectory(accounts, no_run),  # type: ignore[arg-type]
            reactor,
            ttl=60.0,
            negative_ttl=5.0,
            size=10000,
        )
        unlimited = RateLimits(
            rate=1e9, burst=10**9, global_rate=1e9, unknown_budget=10**9, unknown_window=1.0
        )
        settings = MingerSettings(
            Secret(SECRET), allowed=(ipaddress.ip_network("127.0.0.0/8"),), limits=unlimited
        )
        protocol = MingerServerProtocol(MingerResponder(directory, settings, reactor))
    else:
        known = {f"user{i}@example.test".encode() for i in range(ACCOUNTS)}

        class Ceiling(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:  # noqa: N802
                mailbox = datagram.split(b" ", 1)[0]
                assert self.transport is not None
                self.transport.write(mailbox + (b" 5" if mailbox in known else b" 3"), addr)

        protocol = Ceiling()

    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]

    class StopOnEOF(Protocol):
        def connectionLost(self, reason: object = None) -> None:  # noqa: N802
            reactor.stop()

    stdio.StandardIO(StopOnEOF())
    print(port.getHost().port, flush=True)
    reactor.run()


def queries() -> list[tuple[bytes, str]]:
    """
    @return: the query datagram and mailbox of every name asked about.
    """
    return [
        (encode_query(f"user{i}@example.test", SECRET), f"user{i}@example.test")
        for i in range(NAMES)
    ]


def throughput(port: int, count: int) -> tuple[float, int]:
    """
    Closed loop with L{WINDOW} queries in flight.

    @return: answered queries per second, and how many were lost.
    """
    datagrams = queries()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        sent = answered = lost = 0
        in_flight = 0
        start = time.perf_counter()
        while sent < min(WINDOW, count):
            sock.send(datagrams[sent % NAMES][0])
            sent += 1
            in_flight += 1
        while answered < count:
            if not selector.select(0.5):
                lost += in_flight
                in_flight = 0
            else:
                while True:
                    try:
                        sock.recv(2048)
                    except BlockingIOError:
                        break
                    answered += 1
                    in_flight -= 1
            while in_flight < WINDOW and sent < count + lost:
                sock.send(datagrams[sent % NAMES][0])
                sent += 1
                in_flight += 1
        elapsed = time.perf_counter() - start
        selector.close()
    return answered / elapsed, lost


def latency(port: int, rate: float, seconds: float) -> tuple[float, float, int]:
    """
    Open loop at an even pace.

    @return: p50 and p99 round trip in milliseconds, and how many queries were answered.
    """
    datagrams = queries()
    sent_at: dict[bytes, float] = {}
    samples: list[float] = []
    interval = 1.0 / rate
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        start = time.perf_counter()
        end = start + seconds
        n = 0
        next_send = start
        while True:
            now = time.perf_counter()
            if now >= next_send and now < end:
                datagram, mailbox = datagrams[n % NAMES]
                sent_at[mailbox.encode()] = time.perf_counter()
                sock.send(datagram)
                n += 1
                next_send += interval
                continue
            if now >= end + 0.5:
                break
            if selector.select(max(0.0, min(next_send, end + 0.5) - now)):
                while True:
                    try:
                        reply = sock.recv(2048)
                    except BlockingIOError:
                        break
                    received = time.perf_counter()
                    when = sent_at.pop(reply.split(b" ", 1)[0], None)
                    if when is not None:
                        samples.append(received - when)
        selector.close()
    samples.sort()
    p50 = statistics.median(samples) * 1000
    p99 = samples[min(len(samples) - 1, int(0.99 * len(samples)))] * 1000
    return p50, p99, len(samples)


def main() -> int:
    """
    Run the comparison and print it.

    @return: the exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--rcpts", type=int, default=20000, help="RCPTs of each kind (0: none)")
    parser.add_argument("--rcpt-only", action="store_true", help="only the RCPT latency")
    parser.add_argument("--serve", choices=("mdtwist", "ceiling"), help=argparse.SUPPRESS)
    parser.add_argument("--accounts", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve, Path(options.accounts))
        return 0

    from mdtwist.directory.passwords import hash_password

    with tempfile.TemporaryDirectory(prefix="minger-bench-") as workdir:
        accounts = Path(workdir) / "accounts.toml"
        password = hash_password("bench")
        lines = ['domains = ["example.test"]']
        for i in range(ACCOUNTS):
            lines += [
                "[[account]]",
                f'address = "user{i}@example.test"',
                f'password = "{password}"',
            ]
        accounts.write_text("\n".join(lines) + "\n")
        if not options.rcpt_only:
            compare(options, accounts)
        if options.rcpts > 0:
            rcpt_latency(Path(workdir), accounts, options.rcpts)
    return 0


def compare(options: argparse.Namespace, accounts: Path) -> None:
    """
    Our Minger server against the ceiling (the module docstring's first part).

    @param options: the command line.
    @param accounts: the accounts file.
    """
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    try:
        for kind in ("mdtwist", "ceiling"):
            process = subprocess.Popen(
                [sys.executable, __file__, "--serve", kind, "--accounts", str(accounts)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
            )
            assert process.stdout is not None
            servers[kind] = (process, int(process.stdout.readline()))
        for _, port in servers.values():
            throughput(port, 2000)  # warm up (directory cache, code paths)
        # per server: queries/s, then p50 and p99 at half its load, then at --rate
        rows: dict[str, list[tuple[float, float, float, float, float]]] = {
            kind: [] for kind in servers
        }
        print(f"{time.strftime('%Y-%m-%d %H:%M')}  load average {os.getloadavg()[0]:.2f}")
        print(
            f"{'run':>3}  {'server':8} {'queries/s':>10} {'lost':>5}  {'half load/s':>11}"
            f" {'p50 ms':>7} {'p99 ms':>7}  {'at ' + str(int(options.rate)) + '/s p50':>14}"
            f" {'p99 ms':>7}"
        )
        for run in range(1, options.runs + 1):
            for kind, (_, port) in servers.items():
                rate, lost = throughput(port, options.queries)
                p50, p99, _ = latency(port, rate / 2, options.seconds)
                f50, f99, _ = latency(port, options.rate, options.seconds)
                rows[kind].append((rate, p50, p99, f50, f99))
                print(
                    f"{run:>3}  {kind:8} {rate:>10.0f} {lost:>5}  {rate / 2:>11.0f}"
                    f" {p50:>7.3f} {p99:>7.3f}  {f50:>14.3f} {f99:>7.3f}",
                    flush=True,
                )
        medians = {
            kind: [statistics.median(column) for column in zip(*values, strict=True)]
            for kind, values in rows.items()
        }
        ours, ceiling = medians["mdtwist"], medians["ceiling"]
        print("\nmedians        queries/s  p50/p99 at half load  p50/p99 at the same load")
        for kind, (rate, p50, p99, f50, f99) in medians.items():
            print(f"{kind:12} {rate:>11.0f}  {p50:>8.3f} / {p99:<8.3f}   {f50:>8.3f} / {f99:.3f}")
        print(
            f"mdtwist/ceiling: queries/s {ours[0] / ceiling[0]:.2f},"
            f" p99 at the same load {ours[4] / ceiling[4]:.2f}"
        )
    finally:
        for process, _ in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _reply(sock: socket.socket, buffer: bytearray) -> bytes:
    # One whole SMTP reply (its last line has a space after the code).
    while True:
        start = 0
        end = buffer.find(b"\r\n")
        while end >= 0:
            if buffer[start + 3 : start + 4] == b" ":
                reply = bytes(buffer[: end + 2])
                del buffer[: end + 2]
                return reply
            start = end + 2
            end = buffer.find(b"\r\n", start)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        buffer += data


def rcpt_latency(workdir: Path, accounts: Path, count: int) -> None:
    """
    The RCPT round trip of a sharing cache hit against a local account, on our daemon.

    @param workdir: a private directory.
    @param accounts: the accounts file (C{user<i>@example.test}).
    @param count: RCPTs of each kind.
    """
    from mdtwist.sharing.cache import CACHE_NAME, CacheStore

    port = _free_port()
    spool = workdir / "spool"
    spool.mkdir()
    store = CacheStore(spool / CACHE_NAME)
    now = time.time()
    for i in range(ACCOUNTS):
        store.put(f"remote{i}@example.test", "127.0.0.9:25", now)
    store.close()
    config = workdir / "mdtwist.toml"
    config.write_text(
        f"""
[server]
hostname = "bench.example.test"

[smtp]
max_recipients = 100

[[smtp.listen]]
endpoint = "tcp:{port}:interface=127.0.0.1"
mode = "mx"

[directory]
backend = "file"

[directory.file]
path = "{accounts}"

[spool]
directory = "{spool}"

[delivery]
maildir_root = "{workdir / "mail"}"

[control]
socket = "{workdir / "control.sock"}"

[sharing]
enable = true
timeout = 0.2
attempts = 1

[[sharing.peers]]
host = "127.0.0.9:25"
minger_port = 9
"""
    )
    twistd = str(Path(sys.executable).parent / "twistd")
    log = (workdir / "twistd.log").open("wb")
    process = subprocess.Popen(
        [twistd, "--nodaemon", "--pidfile=", "mdtwist", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not start; see {log.name}") from None
                time.sleep(0.05)
        samples: dict[str, list[float]] = {"local": [], "cache hit": []}
        refused = 0
        with sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffer = bytearray()
            _reply(sock, buffer)
            sock.sendall(b"EHLO bench.client\r\n")
            _reply(sock, buffer)
            warm_up = 2 * ACCOUNTS  # every address once, so that caches are warm on both sides
            for n in range(warm_up + 2 * count):
                if n % 50 == 0:
                    sock.sendall(b"RSET\r\nMAIL FROM:<bench@client.test>\r\n")
                    _reply(sock, buffer)
                    _reply(sock, buffer)
                i = (n // 2) % ACCOUNTS
                kind = "local" if n % 2 == 0 else "cache hit"
                name = f"user{i}" if kind == "local" else f"remote{i}"
                command = f"RCPT TO:<{name}@example.test>\r\n".encode()
                start = time.perf_counter()
                sock.sendall(command)
                reply = _reply(sock, buffer)
                elapsed = time.perf_counter() - start
                if not reply.startswith(b"250"):
                    refused += 1
                elif n >= warm_up:
                    samples[kind].append(elapsed)
            sock.sendall(b"QUIT\r\n")
        print(f"\nRCPT round trip on our daemon, {count} of each kind, one at a time:")
        results = {}
        for kind, values in samples.items():
            values.sort()
            p50 = statistics.median(values) * 1000
            p99 = values[min(len(values) - 1, int(0.99 * len(values)))] * 1000
            results[kind] = (p50, p99)
            print(f"  {kind:10} p50 {p50:.3f} ms  p99 {p99:.3f} ms")
        print(
            f"  cache hit - local: p50 {results['cache hit'][0] - results['local'][0]:+.3f} ms,"
            f" p99 {results['cache hit'][1] - results['local'][1]:+.3f} ms"
            f"  ({refused} refused)"
        )
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


if __name__ == "__main__":
    raise SystemExit(main())
