# -*- test-case-name: tests.dequeue.test_gatewayctl -*-
"""
C{mdtwistctl gateway held|release}: the provider's view of the mail it holds for gateway
domains, and the operator's "release now", through the control channel of the running server.

  - C{gateway held [--json]}: held messages and recipients per gateway domain, over every
    process (L{mdtwist.dequeue.release.GatewayHeld}).
  - C{gateway release [DOMAIN ...]}: send the held mail of these gateway domains (all of them
    when none is named) to the target each one's ETRN would use
    (L{mdtwist.dequeue.release.GatewayRelease}); a gateway whose mail goes to the requester's
    address is skipped, as there is no requester.

The exit status is 0, or 1 when a named domain was skipped or a process did not answer.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from mdtwist.console import plural, write_json
from mdtwist.control.client import call
from mdtwist.dequeue.release import GatewayHeld, GatewayRelease


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{mdtwistctl gateway held|release}.

    @param commands: the subcommands of C{mdtwistctl}.
    """
    gateway = commands.add_parser(
        "gateway", help="the mail held for gateway domains (the provider side of dequeuing)"
    )
    subcommands = gateway.add_subparsers(dest="gateway_command", metavar="GATEWAY-COMMAND")
    held = subcommands.add_parser(
        "held", help="held messages and recipients per gateway domain, over every process"
    )
    held.add_argument("--json", action="store_true", help="print the counts as JSON")
    release = subcommands.add_parser(
        "release",
        help="send the held mail now to where each domain's ETRN would send it",
        description="Send the held mail of gateway domains now, to the target each domain's"
        " ETRN would use (etrn_deliver_to). Gateways whose mail goes to the requester's"
        " address are skipped: there is no requester.",
    )
    release.add_argument(
        "domains", nargs="*", metavar="DOMAIN", help="gateway domains (default: every gateway)"
    )


def run_command(options: argparse.Namespace, socket: Path, out: TextIO, err: TextIO) -> int | None:
    """
    Carry out a C{mdtwistctl gateway} command.

    @param options: the parsed command line.
    @param socket: the control socket.
    @param out: where results go.
    @param err: where problems go.
    @return: the exit status, or L{None} for an incomplete command (usage).
    @raise mdtwist.control.client.ControlClientError: the server did not answer.
    """
    if options.gateway_command == "held":
        return _held(socket, options.json, out, err)
    if options.gateway_command == "release":
        return _release(socket, options.domains, out, err)
    return None


def _held(socket: Path, as_json: bool, out: TextIO, err: TextIO) -> int:
    answer = call(socket, GatewayHeld)
    domains = sorted(answer["domains"], key=lambda d: d["domain"])
    missing = answer["missing"]
    if as_json:
        write_json(out, {"domains": domains, "missing": missing})
    elif not domains:
        out.write("No mail is held for a gateway domain\n")
    else:
        width = max(len(d["domain"]) for d in domains)
        for counts in domains:
            messages = plural(counts["messages"], "message")
            recipients = plural(counts["recipients"], "recipient")
            out.write(f"{counts['domain']:<{width}}  {messages}, {recipients}\n")
    if missing:
        shards = ", ".join(str(s) for s in missing)
        err.write(f"Not counted: process {shards} did not answer\n")
        return 1
    return 0


def _release(socket: Path, domains: list[str], out: TextIO, err: TextIO) -> int:
    answer = call(socket, GatewayRelease, {"domains": domains})
    released, skipped = answer["released"], answer["skipped"]
    if released:
        found = plural(answer["messages"], "held message")
        out.write(f"Releasing {', '.join(released)}: {found}\n")
    elif not skipped:
        out.write("No gateway domain is configured\n")
    for domain in skipped:
        err.write(f"{domain}: skipped (not a gateway domain, or its mail goes to the requester)\n")
    return 1 if skipped and domains else 0
