# -*- test-case-name: tests.test_tap -*-
"""
The twistd entry point: C{twistd -n mdtwist --config etc/mdtwist.toml}.

This is the only module that imports the global reactor, and only inside L{makeService}.
"""

from __future__ import annotations

import sys
from typing import TextIO

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorCore
from twisted.python import usage

from mdtwist.config import Config, load_config
from mdtwist.errors import ConfigError
from mdtwist.services import make_service


class Options(usage.Options):
    """
    The command line of the C{mdtwist} plugin; everything else is in the configuration file.
    """

    optParameters = [  # noqa: RUF012, N815 - the name Twisted reads
        ["config", "c", "etc/mdtwist.toml", "The configuration file (TOML)."],
    ]
    optFlags = [  # noqa: RUF012, N815 - the name Twisted reads
        ["check", None, "Check the configuration, print every problem, and exit."],
    ]


def build(options: Options, reactor: IReactorCore, stderr: TextIO = sys.stderr) -> IService:
    """
    Load the configuration and build the service tree, or report why not.

    With C{--check}, exit after the checks: 0 when the configuration is good, 1 when not.

    @param options: the parsed command line.
    @param reactor: the reactor the services run on.
    @param stderr: where problems are written.
    @return: the top service.
    @raise SystemExit: on a bad configuration (status 1), and after C{--check} (status 0).
    """
    try:
        config: Config = load_config(options["config"])
        service = make_service(config, reactor)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=stderr)
        raise SystemExit(1) from None
    if options["check"]:
        print(f"{options['config']}: configuration is valid", file=stderr)
        raise SystemExit(0)
    return service


def makeService(options: Options) -> IService:  # noqa: N802 - the name twistd calls
    """
    Build the mdtwist service for twistd.

    @param options: the parsed command line.
    @return: the top service.
    """
    from twisted.internet import reactor

    return build(options, reactor)
