"""
A real DNS server on loopback for integration tests: dnsmasq, answering zones the test gives.

Usage::

    server = DNSServer(Path(self.mktemp()), zones=["example.test"])
    server.mx("example.test", 10, "mx1.example.test")
    server.address("mx1.example.test", "127.0.0.2", "::1")
    server.start()                       # waits until it answers a query
    self.addCleanup(server.stop)
    resolver = make_resolver([server.endpoint], reactor, timeout=(1, 2))

or in one call, with the clean-up registered: C{start_dns_server(testcase, zones, setup)}.

What it answers (dnsmasq 2.90, checked by C{tests/integration/test_dns.py}):

    - records added with L{DNSServer.mx}, L{DNSServer.null_mx}, L{DNSServer.address} (A or
      AAAA by the form of each address), L{DNSServer.cname} (the target must have records of
      its own here) and L{DNSServer.txt};
    - NXDOMAIN for any other name inside a zone, NODATA (NOERROR, no answer, no SOA) for a
      type a known name lacks;
    - REFUSED for names outside every zone (our resolver takes that as temporary);
    - nothing at all for names in a "silent" domain: dnsmasq forwards those to a UDP socket
      that this fixture holds open and never reads, so the client times out;
    - TTL 60; UDP and TCP on the same port.

Records are fixed at L{DNSServer.start}; to change them, L{DNSServer.stop} and start again
(the port stays the same). dnsmasq runs in its own session, logs queries to C{dnsmasq.log} in
the directory, and is stopped by its PID.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from twisted.names import dns
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.peers import PeerError, find_program, start_process, stop_process


def free_udp_port(host: str = "127.0.0.1") -> int:
    """
    Find a port free for both UDP and TCP now.

    @param host: the address the server will listen on.
    @return: the port number.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port


def query(
    endpoint: tuple[str, int], name: str, rtype: int = dns.A, timeout: float = 1.0
) -> dns.Message | None:
    """
    Ask one question over UDP with the standard library, outside any reactor.

    @param endpoint: the server's C{(address, port)}.
    @param name: the name.
    @param rtype: the record type (C{twisted.names.dns.A}, C{MX} ...).
    @param timeout: seconds to wait for the answer.
    @return: the answer, or L{None} when none came in time.
    """
    message = dns.Message(id=os.getpid() & 0xFFFF, recDes=True)
    message.queries = [dns.Query(name, rtype)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(message.toStr(), endpoint)
        try:
            data = s.recv(4096)
        except OSError:
            return None
    answer = dns.Message()
    answer.fromStr(data)
    return answer


class DNSServer:
    """
    One private dnsmasq serving test zones on 127.0.0.1.

    @ivar directory: where its log goes.
    @ivar zones: the domains it is authoritative for (NXDOMAIN for unknown names in them).
    @ivar silent: domains whose queries are never answered.
    @ivar port: its UDP and TCP port.
    @ivar process: the running process, or L{None}.
    """

    host = "127.0.0.1"

    def __init__(
        self, directory: Path, zones: Sequence[str], *, silent: Sequence[str] = ()
    ) -> None:
        """
        Prepare a server; add records, then call L{start}.

        @param directory: a private directory (created if missing).
        @param zones: the domains it answers for.
        @param silent: domains that get no answer at all.
        """
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.zones = [z.rstrip(".").lower() for z in zones]
        self.silent = [z.rstrip(".").lower() for z in silent]
        self.port = free_udp_port(self.host)
        self.process: subprocess.Popen[bytes] | None = None
        self._records: list[str] = []
        self._black_hole: socket.socket | None = None

    @property
    def endpoint(self) -> tuple[str, int]:
        """
        C{(address, port)}, as C{make_resolver} and C{twisted.names} take it.
        """
        return (self.host, self.port)

    @property
    def log_path(self) -> Path:
        """
        The log of dnsmasq (every query is logged).
        """
        return self.directory / "dnsmasq.log"

    def mx(self, name: str, preference: int, exchange: str) -> None:
        """
        Add an MX record.

        @param name: the mail domain.
        @param preference: the preference.
        @param exchange: the mail host's name.
        """
        self._records.append(f"--mx-host={name},{exchange},{preference}")

    def null_mx(self, name: str) -> None:
        """
        Add a null MX (RFC 7505: preference 0, exchange the root name).

        @param name: the domain that accepts no mail.
        """
        # RDATA: preference 0 (two bytes) and the root name (one zero byte).
        self._records.append(f"--dns-rr={name},15,000000")

    def address(self, name: str, *addresses: str) -> None:
        """
        Add A and AAAA records.

        @param name: the host name.
        @param addresses: IPv4 and IPv6 addresses, in the order they should be answered.
        """
        for address in addresses:
            ipaddress.ip_address(address)  # refuse typos early
            self._records.append(f"--host-record={name},{address}")

    def cname(self, name: str, target: str) -> None:
        """
        Add a CNAME (dnsmasq needs the target to have records of its own here).

        @param name: the alias.
        @param target: the canonical name.
        """
        self._records.append(f"--cname={name},{target}")

    def txt(self, name: str, text: str) -> None:
        """
        Add a TXT record (to make a name exist without address or MX records).

        @param name: the name.
        @param text: the text.
        """
        self._records.append(f"--txt-record={name},{text}")

    def argv(self, black_hole_port: int | None) -> list[str]:
        """
        The dnsmasq command line.

        @param black_hole_port: where silent domains are forwarded, if any.
        @return: the program and its arguments.
        """
        argv = [
            find_program("dnsmasq"),
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            f"--user={pwd.getpwuid(os.getuid()).pw_name}",
            "--pid-file=",
            f"--listen-address={self.host}",
            "--bind-interfaces",
            f"--port={self.port}",
            "--local-ttl=60",
            "--log-queries",
            "--log-facility=-",
        ]
        argv += [f"--local=/{zone}/" for zone in self.zones]
        if black_hole_port is not None:
            argv += [f"--server=/{d}/{self.host}#{black_hole_port}" for d in self.silent]
        return argv + self._records

    def start(self, timeout: float = 10.0) -> None:
        """
        Start dnsmasq and wait until it answers a query.

        @param timeout: the most seconds to wait.
        @raise PeerError: when it exits or does not answer in time (it is stopped again).
        """
        black_hole_port = None
        if self.silent and self._black_hole is None:
            self._black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._black_hole.bind((self.host, 0))
        if self._black_hole is not None:
            black_hole_port = self._black_hole.getsockname()[1]
        self.process = start_process(self.argv(black_hole_port), self.log_path)
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        # Until a query gets any answer (UDP has no connection to wait for).
        deadline = time.monotonic() + timeout
        probe = self.zones[0] if self.zones else "localhost"
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PeerError(
                    f"dnsmasq exited with status {self.process.returncode}:\n"
                    + self.log_path.read_text(errors="replace")[-2000:]
                )
            if query(self.endpoint, probe, dns.SOA, timeout=0.2) is not None:
                return
            if time.monotonic() > deadline:
                raise PeerError(f"dnsmasq on {self.endpoint} did not answer in {timeout} s")

    def stop(self) -> None:
        """
        Stop dnsmasq by its PID and close the silent socket. Safe to call twice.
        """
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
        if self._black_hole is not None:
            self._black_hole.close()
            self._black_hole = None


def start_dns_server(
    case: SynchronousTestCase,
    zones: Sequence[str],
    setup: Callable[[DNSServer], None],
    *,
    silent: Sequence[str] = (),
) -> DNSServer:
    """
    Start a L{DNSServer} for one test and stop it when the test ends.

    @param case: the test (for C{mktemp} and C{addCleanup}).
    @param zones: the domains it answers for.
    @param setup: adds the records, given the server before it starts.
    @param silent: domains that get no answer.
    @return: the running server.
    """
    server = DNSServer(Path(case.mktemp()), zones, silent=silent)
    setup(server)
    server.start()
    case.addCleanup(server.stop)
    return server
