# -*- test-case-name: tests.sharing.test_commands -*-
"""
The C{mdtwistctl} commands of Minger and Domain Sharing.

  - C{mdtwistctl minger query HOST[:PORT] ADDRESS [--secret-file F] [--hardened] [--json]}:
    ask one Minger server; prints the status digit and its name. Exit status 0 for an answer
    about the address (3, 4 or 5), 1 for a timeout or a refusal (0, 1 or 2).
  - C{mdtwistctl sharing check ADDRESS [--config FILE]}: ask every configured peer, as before
    an account is created; exit status 0 only if every peer says it has no such address.
  - C{mdtwistctl sharing cache list [--config FILE | --spool DIR]} and
    C{mdtwistctl sharing cache drop ADDRESS [...]}: the five-day cache, read and changed in
    its database directly (safe while the server runs).

They run without a reactor: a query is a blocking UDP socket with a timeout per attempt.
L{ask_peers} is the same check for other commands (creating an account asks every peer
first).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from mdtwist.config import Config, load_config, parse_host_port
from mdtwist.errors import ConfigError
from mdtwist.minger.client import Peer, Result
from mdtwist.minger.codec import (
    DEFAULT_PORT,
    check_hardened_reply,
    encode_hardened_query,
    encode_query,
    hardened_key,
    parse_reply,
    valid_mailbox,
)
from mdtwist.sharing.cache import CACHE_NAME, CacheStore
from mdtwist.sharing.service import AccountCheck, SharingPeer

_DEFAULT_CONFIG = "etc/mdtwist.toml"


def blocking_query(
    host: str,
    port: int,
    mailbox: str,
    *,
    secret: str | None = None,
    hardened: bool = False,
    timeout: float = 2.0,
    attempts: int = 3,
    clock: Callable[[], float] = time.time,
    random: Callable[[int], bytes] = os.urandom,
) -> Result:
    """
    Ask a Minger server about a mailbox, blocking: one datagram per attempt, C{timeout}
    seconds per attempt.

    @param host: the server's name or IP address.
    @param port: its UDP port.
    @param mailbox: a valid mailbox.
    @param secret: the shared secret, or L{None} for an anonymous query.
    @param hardened: use the hardened form (needs C{secret}).
    @param timeout: seconds to wait after each datagram.
    @param attempts: datagrams sent at most.
    @param clock: the time of hardened queries.
    @param random: nonces of hardened queries.
    @return: the result; L{Result.TIMEOUT} when no acceptable reply came.
    @raise OSError: when the host does not resolve or no socket can be made.
    @raise ValueError: when the mailbox is not valid, or C{hardened} without a secret.
    """
    if hardened and secret is None:
        raise ValueError("the hardened form needs a secret")
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    key = hardened_key(secret) if hardened and secret is not None else None
    plain = encode_query(mailbox, secret)
    nonces: list[bytes] = []
    with socket.socket(family, kind, proto) as sock:
        sock.connect(address)
        for _ in range(attempts):
            if key is not None:
                nonces.append(random(16))
                datagram = encode_hardened_query(mailbox, key, clock(), nonces[-1])
            else:
                datagram = plain
            with contextlib.suppress(ConnectionRefusedError):  # ICMP after an earlier try
                sock.send(datagram)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(2048)
                except (TimeoutError, ConnectionRefusedError):
                    break
                reply = parse_reply(data, mailbox)
                if reply is None:
                    continue
                if key is not None and not any(
                    check_hardened_reply(reply, key, n) for n in nonces
                ):
                    continue
                return Result.of(reply.status)
    return Result.TIMEOUT


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add the C{minger} and C{sharing} commands to C{mdtwistctl}'s parser.

    @param commands: the top-level subparsers.
    """
    minger = commands.add_parser("minger", help="ask a Minger server")
    minger_commands = minger.add_subparsers(dest="minger_command", metavar="MINGER-COMMAND")
    query = minger_commands.add_parser("query", help="ask a Minger server about an address")
    query.add_argument("server", metavar="HOST[:PORT]", help="the Minger server (port 4069)")
    query.add_argument("address", metavar="ADDRESS", help="the address to ask about")
    query.add_argument("--secret-file", metavar="F", help="file with the shared secret")
    query.add_argument("--hardened", action="store_true", help="use the hardened form")
    query.add_argument("--json", action="store_true", help="print the answer as JSON")
    query.add_argument("--timeout", type=float, default=2.0, help="seconds per attempt")
    query.add_argument("--attempts", type=int, default=3, help="datagrams sent at most")

    sharing = commands.add_parser("sharing", help="Domain Sharing")
    sharing_commands = sharing.add_subparsers(dest="sharing_command", metavar="SHARING-COMMAND")
    check = sharing_commands.add_parser(
        "check", help="ask every peer whether it has an address (before creating it here)"
    )
    check.add_argument("address", metavar="ADDRESS")
    # SUPPRESS: without it here, the top-level "mdtwistctl --config FILE" is kept.
    check.add_argument(
        "--config", default=argparse.SUPPRESS, help=f"the configuration file ({_DEFAULT_CONFIG})"
    )
    cache = sharing_commands.add_parser("cache", help="the five-day cache of peer addresses")
    cache_commands = cache.add_subparsers(dest="cache_command", metavar="CACHE-COMMAND")
    listing = cache_commands.add_parser("list", help="list the cached addresses")
    drop = cache_commands.add_parser("drop", help="forget a cached address")
    drop.add_argument("address", metavar="ADDRESS")
    for parser in (listing, drop):
        where = parser.add_mutually_exclusive_group()
        where.add_argument(
            "--config",
            default=argparse.SUPPRESS,
            help=f"the configuration file ({_DEFAULT_CONFIG})",
        )
        where.add_argument("--spool", metavar="DIR", help="the spool directory")


def run_command(options: argparse.Namespace, out: TextIO, err: TextIO) -> int | None:
    """
    Run a C{minger} or C{sharing} command.

    @param options: the parsed command line.
    @param out: where results go.
    @param err: where errors go.
    @return: the exit status, or L{None} when the command is incomplete (print the usage).
    """
    try:
        if options.command == "minger" and options.minger_command == "query":
            return _minger_query(options, out, err)
        if options.command == "sharing" and options.sharing_command == "check":
            return _sharing_check(options, out, err)
        if options.command == "sharing" and options.sharing_command == "cache":
            if options.cache_command == "list":
                return _cache_list(options, out, err)
            if options.cache_command == "drop":
                return _cache_drop(options, out, err)
    except ConfigError as e:
        for line in e.problems:
            err.write(f"mdtwistctl: {line}\n")
        return 1
    except (OSError, ValueError, sqlite3.Error) as e:
        err.write(f"mdtwistctl: {e}\n")
        return 1
    return None


def _server(text: str) -> tuple[str, int]:
    if text.startswith("[") or text.count(":") == 1:
        parsed = parse_host_port(text)
        if parsed is None:
            raise ValueError(f"{text!r} is not HOST or HOST:PORT ([ADDRESS]:PORT)")
        return parsed
    return text, DEFAULT_PORT


def _minger_query(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    host, port = _server(options.server)
    if not valid_mailbox(options.address):
        raise ValueError(f"{options.address!r} cannot be asked about over Minger")
    secret = None
    if options.secret_file:
        secret = Path(options.secret_file).read_text(encoding="utf-8").rstrip("\r\n")
    result = blocking_query(
        host,
        port,
        options.address,
        secret=secret,
        hardened=options.hardened,
        timeout=options.timeout,
        attempts=options.attempts,
    )
    status = result.status
    if options.json:
        answer = {
            "server": host,
            "port": port,
            "address": options.address,
            "status": None if status is None else int(status),
            "result": result.value,
        }
        out.write(json.dumps(answer) + "\n")
    elif status is None:
        out.write(f"- {result.value}\n")
    else:
        out.write(f"{int(status)} {result.value}\n")
    return 0 if result in (Result.ACTIVE, Result.INACTIVE, Result.UNKNOWN) else 1


def ask_peers(config: Config, address: str) -> AccountCheck:
    """
    Ask every configured sharing peer about an address, blocking (all peers at once), as
    before an account or alias is created here: creation may go ahead only when
    L{AccountCheck.free}; L{AccountCheck.taken} names the peers that have it; neither means
    some peer could not be asked (refuse unless the operator forces it).

    @param config: the configuration (its C{[sharing]} peers and Minger settings).
    @param address: the address about to be created.
    @return: every peer's answer, in configured order; a peer that cannot be reached (or
        whose name does not resolve) is L{Result.TIMEOUT}. With no peers, it is free.
    @raise ValueError: when the address cannot be asked about over Minger.
    """
    if not valid_mailbox(address):
        raise ValueError(f"{address!r} cannot be asked about over Minger")
    settings = config.sharing
    peers = [
        SharingPeer(
            route=peer.route,
            minger=Peer(peer.host, peer.minger_port, peer.password, peer.hardened),
        )
        for peer in settings.peers
    ]

    def ask(peer: SharingPeer) -> Result:
        try:
            return blocking_query(
                peer.minger.host,
                peer.minger.port,
                address,
                secret=None if peer.minger.secret is None else peer.minger.secret.reveal(),
                hardened=peer.minger.hardened,
                timeout=settings.timeout,
                attempts=settings.attempts,
            )
        except OSError:
            return Result.TIMEOUT

    if not peers:
        return AccountCheck(())
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(len(peers), 16)) as pool:
        results = list(pool.map(ask, peers))
    return AccountCheck(tuple(zip(peers, results, strict=True)))


def _sharing_check(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = load_config(options.config or _DEFAULT_CONFIG)
    if not config.sharing.peers:
        err.write(f"mdtwistctl: {config.path}: sharing.peers: no peers to ask\n")
        return 1
    check = ask_peers(config, options.address)
    for peer, result in check.answers:
        out.write(f"{peer.route}  {result.value}\n")
    if check.free:
        out.write(f"{options.address}: no peer has it\n")
        return 0
    if check.taken:
        out.write(f"{options.address}: already exists on a peer\n")
    else:
        out.write(f"{options.address}: cannot verify that no peer has it\n")
    return 1


def _cache_path(options: argparse.Namespace) -> Path:
    if options.spool:
        return Path(options.spool) / CACHE_NAME
    return load_config(options.config or _DEFAULT_CONFIG).spool.directory / CACHE_NAME


def _time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _cache_list(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = _cache_path(options)
    entries = []
    if path.exists():
        store = CacheStore(path)
        try:
            entries = store.entries(time.time())
        finally:
            store.close()
    for entry in entries:
        out.write(f"{entry.address}  {entry.peer}  verified {_time(entry.verified)}\n")
    out.write(f"{len(entries)} {'address' if len(entries) == 1 else 'addresses'}\n")
    return 0


def _cache_drop(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    path = _cache_path(options)
    dropped = False
    if path.exists():
        store = CacheStore(path)
        try:
            dropped = store.drop(options.address)
        finally:
            store.close()
    if not dropped:
        err.write(f"mdtwistctl: {options.address} is not in the sharing cache\n")
        return 1
    out.write(f"{options.address}: dropped\n")
    return 0
