# -*- test-case-name: tests.test_cli -*-
"""
C{mdtwistctl}: operate an mdtwist server.

Bare C{mdtwistctl} (or a command group without its subcommand, such as C{mdtwistctl queue})
lists the commands; every command has C{--help}. The commands:
  - C{queue list|show|run|retry|hold|release|requeue|delete|bounce}: the mail queue
    (L{mdtwist.spool.commands});
  - C{account list|add|disable|enable|passwd}: the accounts file (L{mdtwist.directory.commands});
  - C{reload}: the running server reads its accounts file and TLS certificate again;
  - C{status [--json]}: the running server's version, processes, listeners and queue counts;
  - C{hash-password}: read a password, print its argon2id hash;
  - C{check [--ldap]}: the configuration, accounts and TLS files, and with C{--ldap} the LDAP
    directory (L{mdtwist.check});
  - C{minger query ...} and C{sharing check|cache ...}: see L{mdtwist.sharing.commands};
  - C{settings ...}: the client settings (L{mdtwist.settings.cli});
  - C{discover ADDRESS}: find a mailbox's IMAP and SMTP settings as a client would
    (L{mdtwist.settings.discover});
  - C{dequeue run [DOMAIN]}: the running server sends its dequeue signals now
    (L{mdtwist.dequeue.control}).
  - C{gateway held|release}: the mail held for gateway domains, and releasing it now
    (L{mdtwist.dequeue.gatewayctl}).

C{--config FILE} (before the command, or after it; by default C{etc/mdtwist.toml} when it
exists, else C{/etc/mdtwist/mdtwist.toml}) is the server's configuration: every command finds
the spool, the control socket, the accounts file and the peers there. The commands for the
running server talk to it over its control socket (L{mdtwist.control}); when it is not running,
or the socket may not be used, they say so in one line and exit with status 1.

Output that is a table has C{--json}. When the reader of the output goes away (C{| head}),
the command ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mdtwist import check
from mdtwist.config import DEFAULT_CONFIG_FILES, default_config_file
from mdtwist.console import (
    DEFAULT_CONFIGS,
    CommandError,
    Locations,
    plural,
    read_new_password,
    write_json,
)
from mdtwist.control.client import ControlClientError, call
from mdtwist.control.commands import Reload, Status
from mdtwist.dequeue import control as dequeue_control
from mdtwist.dequeue import gatewayctl
from mdtwist.directory import commands as account_commands
from mdtwist.directory.passwords import hash_password
from mdtwist.errors import SpoolError
from mdtwist.settings import cli as settings_cli
from mdtwist.settings import discover
from mdtwist.sharing.commands import add_commands as add_sharing_commands
from mdtwist.sharing.commands import run_command as run_sharing_command
from mdtwist.spool import commands as queue_commands

_PROGRAM = "mdtwistctl"

#: The command groups carried out by the running server over the control channel: each
#: returns the exit status, or None for a group named without its subcommand.
_SERVER_GROUPS = {"dequeue": dequeue_control.run_command, "gateway": gatewayctl.run_command}

__all__ = ["DEFAULT_CONFIGS", "main"]


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    default_configs: Sequence[Path] = DEFAULT_CONFIGS,
) -> int:
    """
    Run C{mdtwistctl}.

    @param argv: the arguments after the program name; C{sys.argv[1:]} when L{None}.
    @param stdin: where passwords and confirmations are read from; C{sys.stdin} when L{None}.
    @param stdout: where results go; C{sys.stdout} when L{None}.
    @param stderr: where errors go; C{sys.stderr} when L{None}.
    @param default_configs: the configuration files tried without C{--config}.
    @return: the exit status: 0 on success, 1 when the command failed, 2 for bad usage.
    """
    real_stdout = stdout is None
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        status = _main(argv, stdin, stdout, stderr, default_configs)
        stdout.flush()
    except BrokenPipeError:
        # The reader went away (| head): stop quietly. Python flushes standard output again at
        # exit; point it at /dev/null so that flush cannot complain either.
        if real_stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 0
    return status


def _main(
    argv: Sequence[str] | None,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    default_configs: Sequence[Path],
) -> int:
    parser = _parser()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            options = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    if options.help_group is not None:
        # A command group without its subcommand: list what it offers (status 2: nothing
        # was done).
        stdout.write(options.help_group.format_help())
        return 2
    locations = Locations(options.config, default_configs)
    try:
        if options.command in ("minger", "sharing", "settings", "discover"):
            # Their own code reads the configuration file it is given.
            options.config = str(_config_path(options.config, default_configs))
        if options.command == "queue":
            return queue_commands.run(options, locations, stdin, stdout, stderr)
        if options.command == "account":
            return account_commands.run(options, locations, stdin, stdout, stderr)
        if options.command == "reload":
            return _reload(locations.socket(), stdout, stderr)
        if options.command == "status":
            _status(locations.socket(), options.json, stdout)
        elif options.command == "hash-password":
            _hash_password(stdin, stdout)
        elif options.command == "check":
            return check.run(_config_path(options.config, default_configs), options.ldap, stdout)
        elif options.command in ("minger", "sharing"):
            status = run_sharing_command(options, stdout, stderr)
            if status is None:
                parser.print_usage(stderr)
                return 2
            return status
        elif options.command == "settings":
            settings_cli.run(options, stdout)
        elif options.command in _SERVER_GROUPS:
            run_on_server = _SERVER_GROUPS[options.command]
            status = run_on_server(options, locations.socket(), stdout, stderr)
            if status is None:
                parser.print_usage(stderr)
                return 2
            return status
        elif options.command == "discover":
            password = stdin.readline().rstrip("\r\n") if options.password_stdin else None
            text, status = discover.main(options, password)
            stdout.write(text)
            return status
    except (
        CommandError,
        SpoolError,
        ControlClientError,
        settings_cli.CommandError,
        discover.UsageError,
    ) as e:
        for line in str(e).splitlines() or [""]:
            stderr.write(f"{_PROGRAM}: {line}\n")
        return 1
    return 0


def _config_path(config: str | None, defaults: Sequence[Path]) -> Path:
    # The configuration a command that reads it itself gets: --config, else the first default
    # that exists, else the first default (which it then reports as missing).
    if config is not None:
        return Path(config)
    return default_config_file(tuple(defaults)) if defaults else DEFAULT_CONFIG_FILES[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROGRAM,
        description="Operate an mdtwist mail server: its queue, its accounts, the running"
        " server, Domain Sharing and client settings.",
        epilog="Run 'mdtwistctl COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the server's configuration (default: etc/mdtwist.toml, then"
        " /etc/mdtwist/mdtwist.toml): where the spool, the control socket, the accounts file"
        " and the peers are",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    queue_commands.add_parser(commands)
    account_commands.add_parser(commands)
    commands.add_parser(
        "reload",
        help="make the running server read its accounts and TLS certificate again",
        description="Make every process of the running server read its accounts file and its"
        " TLS certificate again (as SIGHUP does). A file with problems is not used: the old"
        " one stays in force and each problem is printed.",
    )
    status = commands.add_parser(
        "status",
        help="the running server's version, processes, listeners and queue counts",
        description="Show the running server's version, processes, listeners and the number"
        " of messages each process holds.",
    )
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    commands.add_parser(
        "hash-password",
        help="read a password and print its hash",
        description="Read a password (twice on a terminal, else one line of standard input)"
        " and print its argon2id hash, for the accounts file.",
    )
    checking = commands.add_parser(
        "check",
        help="check the configuration, the accounts file and the TLS files"
        " (and with --ldap the directory)",
        description="Check the configuration as the server would use it. Problems are"
        " printed as FILE: KEY: REASON and make the exit status 1.",
    )
    checking.add_argument(
        "--ldap",
        action="store_true",
        help="also bind to the configured LDAP directory and search it: the base DN, the"
        " schema's attributes and object classes, what the bind DN can read",
    )
    add_sharing_commands(commands)
    settings_cli.add_parser(commands)
    discover.add_parser(commands)
    dequeue_control.add_parser(commands)
    gatewayctl.add_parser(commands)
    _finish(parser)
    return parser


def _finish(parser: argparse.ArgumentParser) -> None:
    # Walk the tree of subcommands: a group remembers itself (a subcommand chosen below it
    # sets None again), so that a group named without its subcommand prints its help; and a
    # subcommand's own --config does not override the one given before the command unless it
    # is given itself.
    parser.set_defaults(help_group=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    _finish(sub)
                else:
                    sub.set_defaults(help_group=None)
                for option in sub._actions:
                    if option.dest == "config":
                        option.default = argparse.SUPPRESS
                        option.help = "the server's configuration (as --config before the command)"


def _not_answering(missing: Sequence[int], err: TextIO) -> None:
    for shard in missing:
        err.write(f"{_PROGRAM}: the process of shard {shard} did not answer\n")


def _reload(socket: Path, out: TextIO, err: TextIO) -> int:
    answer = call(socket, Reload)
    for problem in answer["problems"]:
        err.write(f"{_PROGRAM}: not reloaded: {problem}\n")
    _not_answering(answer["missing"], err)
    if answer["problems"] or answer["missing"]:
        return 1
    shards = answer["shards"]
    out.write(f"Reloaded in {plural(len(shards), 'process', 'processes')}\n")
    return 0


def _status(socket: Path, as_json: bool, out: TextIO) -> None:
    answer: dict[str, Any] = call(socket, Status)
    if as_json:
        write_json(out, answer)
        return
    processes = answer["processes"]
    out.write(f"mdtwist {answer['version']}, {plural(processes, 'process', 'processes')}\n")
    for listener in answer["listeners"]:
        out.write(f"Listening: {listener}\n")
    columns = ("active", "held", "bad")
    out.write(f"{'Shard':>5}  {'PID':>8}  {'Active':>8}  {'Held':>8}  {'Bad':>8}\n")
    for entry in answer["shards"]:
        counts = "  ".join(f"{entry[c]:>8}" for c in columns)
        out.write(f"{entry['shard']:>5}  {entry['pid']:>8}  {counts}\n")
    for shard in answer["missing"]:
        out.write(f"{shard:>5}  {'-':>8}  {'?':>8}  {'?':>8}  {'?':>8}  (not answering)\n")
    totals = "  ".join(f"{answer[c]:>8}" for c in columns)
    out.write(f"{'Total':>5}  {'':>8}  {totals}\n")


def _hash_password(stdin: TextIO, out: TextIO) -> None:
    out.write(hash_password(read_new_password(stdin)) + "\n")
