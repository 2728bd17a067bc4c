# -*- test-case-name: tests.dequeue.test_control -*-
"""
C{mdtwistctl dequeue run [DOMAIN]}: send the dequeue signals now, through the control channel
of the running server (its first process sends them), and print one line per signal.

The answer comes when every signal is decided (for an accepted ATRN: when the connection has
turned round; the released mail may still be coming in). The exit status is 0 when every
signal did its job (sent, nothing waiting, released), else 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from twisted.protocols import amp

from mdtwist.control.client import call
from mdtwist.control.commands import ControlCommand

#: Seconds C{mdtwistctl} waits: longer than the ATRN reply may take (10 minutes).
ANSWER_TIMEOUT = 900.0

_OK = ("sent", "no-mail", "released")


class DequeueRun(ControlCommand):
    """
    C{mdtwistctl dequeue run [DOMAIN]}: send the enabled dequeue signals now (or one domain's).

    Response: C{results}, one per signal: its domain, status (L{SignalStatus} value), the reply
    code that decided it (absent when none) and a detail.
    """

    commandName = b"dequeue-run"  # noqa: N815 - the name AMP reads
    arguments = [(b"domain", amp.Unicode(optional=True))]  # noqa: RUF012 - the name AMP reads
    response = [  # noqa: RUF012 - the name AMP reads
        (
            b"results",
            amp.AmpList(
                [
                    (b"domain", amp.Unicode()),
                    (b"status", amp.Unicode()),
                    (b"code", amp.Integer(optional=True)),
                    (b"detail", amp.Unicode()),
                ]
            ),
        ),
    ]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """
    Add C{mdtwistctl dequeue run [DOMAIN]}.

    @param commands: the subcommands of C{mdtwistctl}.
    """
    dequeue = commands.add_parser("dequeue", help="ask the hosts that hold our mail to send it")
    subcommands = dequeue.add_subparsers(dest="dequeue_command", metavar="DEQUEUE-COMMAND")
    run = subcommands.add_parser(
        "run", help="make the running server send its dequeue signals now"
    )
    run.add_argument("domain", nargs="?", metavar="DOMAIN", help="only this domain's signal")


def run_command(options: argparse.Namespace, socket: Path, out: TextIO, err: TextIO) -> int | None:
    """
    Carry out a C{mdtwistctl dequeue} command.

    @param options: the parsed command line.
    @param socket: the control socket.
    @param out: where results go.
    @param err: where problems go.
    @return: the exit status, or L{None} for an incomplete command (usage).
    @raise mdtwist.control.client.ControlClientError: the server did not answer.
    """
    if options.dequeue_command != "run":
        return None
    arguments = {} if options.domain is None else {"domain": options.domain}
    answer = call(socket, DequeueRun, arguments, timeout=ANSWER_TIMEOUT)
    results = answer["results"]
    if not results:
        out.write("No dequeue signal is configured\n")
        return 0
    for result in results:
        code = f" {result['code']}" if result.get("code") is not None else ""
        line = f"{result['domain']}: {result['status']}{code}"
        line += f": {result['detail']}\n" if result["detail"] else "\n"
        (out if result["status"] in _OK else err).write(line)
    return 0 if all(r["status"] in _OK for r in results) else 1
