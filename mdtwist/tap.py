# -*- test-case-name: tests.test_tap -*-
"""
The twistd entry point: C{twistd -n mdtwist --config etc/mdtwist.toml}.

This is the only module that imports the global reactor, and only inside L{makeService}.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from mdtwist import maillog
from mdtwist.config import Config, config_warnings, default_config_file, load_config
from mdtwist.errors import ConfigError
from mdtwist.logging import flush_once_per_turn
from mdtwist.privileges import Owner, hand_over, service_owner
from mdtwist.services import make_service
from mdtwist.shards import parse_fds
from mdtwist.spool.store import MAX_SHARDS
from mdtwist.startup import one_line_startup_errors


class Options(usage.Options):
    """
    The command line of the C{mdtwist} plugin; everything else is in the configuration file.
    """

    optParameters = [  # noqa: RUF012, N815 - the name Twisted reads
        [
            "config",
            "c",
            None,
            "The configuration file (TOML); default: etc/mdtwist.toml when it exists,"
            " else /etc/mdtwist/mdtwist.toml.",
        ],
        ["shard", None, "0", "Internal: the spool shard of a child process (server.processes)."],
        [
            "listen-fds",
            None,
            "",
            "Internal: a child's listening sockets, handed over by its parent.",
        ],
    ]
    optFlags = [  # noqa: RUF012, N815 - the name Twisted reads
        ["check", None, "Check the configuration, print every problem, and exit."],
    ]

    #: Options a parent gives its children; they are left out of C{--help}.
    internal = ("shard", "listen-fds")

    def getUsage(self, width: int | None = None) -> str:  # noqa: N802 - Twisted's name
        """
        The help text, without the internal options.

        @param width: the width of the text.
        @return: the text.
        """
        kept = []
        hidden = False
        for line in super().getUsage(width).splitlines():
            if re.match(r"\s+(-\w, )?--", line):
                hidden = any(f"--{name}=" in line for name in self.internal)
            elif not line.startswith(" "):
                hidden = False
            if not hidden:
                kept.append(line)
        return "\n".join(kept) + "\n"

    def postOptions(self) -> None:  # noqa: N802 - the name Twisted calls
        """
        Check the internal options of a child process.

        @raise usage.UsageError: when C{--shard} or C{--listen-fds} is malformed.
        """
        try:
            shard = int(self["shard"])
            fds = parse_fds(self["listen-fds"])
        except ValueError as e:
            raise usage.UsageError(f"--shard/--listen-fds: {e}") from None
        if not 0 <= shard < MAX_SHARDS:
            raise usage.UsageError(f"--shard: must be from 0 to {MAX_SHARDS - 1}")
        if fds and shard == 0:
            raise usage.UsageError("--listen-fds: only for a child process (--shard above 0)")
        if self["config"] is None:
            self["config"] = str(default_config_file())
        self["shard"] = shard
        self["listen-fds"] = fds


def build(
    options: Options,
    reactor: IReactorCore,
    stderr: TextIO = sys.stderr,
    argv: Sequence[str] = (),
    stdout: TextIO = sys.stdout,
    on_hangup: Callable[[Callable[[], object]], object] | None = None,
    owner: Owner | None = None,
) -> IService:
    """
    Load the configuration and build the service tree, or report why not.

    With C{--check}, exit after the checks: 0 when the configuration is good (saying so on
    standard output), 1 when not. Without it, the spool directory is locked for this process
    (a second server on the same spool is refused here).

    @param options: the parsed command line.
    @param reactor: the reactor the services run on.
    @param stderr: where problems are written.
    @param stdout: where C{--check} says that the configuration is valid.
    @param argv: twistd's command line, for the child processes of C{server.processes}.
    @param on_hangup: installs the function SIGHUP calls (L{hangup_installer}).
    @param owner: the user and group twistd switches to after binding (C{--uid}, C{--gid});
        what start-up made as root is given to them (L{mdtwist.privileges.hand_over}).
    @return: the top service.
    @raise SystemExit: on a bad configuration (status 1), and after C{--check} (status 0).
    """
    try:
        config: Config = load_config(options["config"])
        service = make_service(
            config,
            reactor,
            shard=options["shard"],
            listen_fds=options["listen-fds"],
            argv=argv,
            on_hangup=on_hangup,
            lock_spool=not options["check"],
        )
    except ConfigError as e:
        for line in e.problems:
            print(line, file=stderr)
        raise SystemExit(1) from None
    if options["check"]:
        for line in config_warnings(config):
            print(line, file=stderr)
        print(f"{options['config']}: configuration is valid", file=stdout)
        raise SystemExit(0)
    if owner is not None:
        hand_over(config, owner)
    return service


def makeService(options: Options) -> IService:  # noqa: N802 - the name twistd calls
    """
    Build the mdtwist service for twistd.

    @param options: the parsed command line.
    @return: the top service.
    """
    from twisted.internet import reactor

    # The first line twistd writes once logging starts names the version.
    maillog.started()
    # The mail log's lines of one reactor turn leave in one write (the observer comes next).
    flush_once_per_turn(reactor)
    # A listener that cannot open stops start-up with one line, not a traceback.
    one_line_startup_errors()
    owner = service_owner(getattr(options, "parent", None), os.geteuid())
    return build(options, reactor, argv=sys.argv, on_hangup=hangup_installer(reactor), owner=owner)


def hangup_installer(reactor: Any) -> Callable[[Callable[[], object]], None]:
    """
    Make the function that installs the SIGHUP handler (C{mdtwistctl reload}'s twin).

    The handler itself only schedules the action with C{callFromThread}, which is safe in a
    signal handler; the action runs on the reactor thread like any other event.

    @param reactor: an C{IReactorThreads}.
    @return: given the action, installs the handler.
    """

    def install(action: Callable[[], object]) -> None:
        signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(action))

    return install
