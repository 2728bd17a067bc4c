# -*- test-case-name: tests.control.test_registry -*-
"""
The AMP commands of the control channel (C{mdtwistctl} to the server, parent to child).

Each command is an L{twisted.protocols.amp.Command} with typed arguments and response; the
same class serves the UNIX socket and the pipe to a child, so a child's answer arrives in the
shape of the command's own response. Every command may fail with L{ControlError}, whose text
is for the operator.
"""

from __future__ import annotations

from twisted.protocols import amp


class ControlError(Exception):
    """
    A control command could not be carried out; the message says why, for the operator.
    """


class ControlCommand(amp.Command):
    """
    The base of every control command: it can fail with L{ControlError}.
    """

    errors = {ControlError: b"CONTROL_ERROR"}  # noqa: RUF012 - the name AMP reads


#: One shard's part of a status answer.
SHARD_STATUS = amp.AmpList(
    [
        (b"shard", amp.Integer()),
        (b"pid", amp.Integer()),
        (b"active", amp.Integer()),
        (b"held", amp.Integer()),
        (b"bad", amp.Integer()),
    ]
)


class Status(ControlCommand):
    """
    C{mdtwistctl status}: the version, the processes, the listeners and the queue counts.

    Response: C{version}; C{processes} (C{server.processes}); C{listeners}, one
    C{"MODE ENDPOINT"} each; C{shards}, one entry per process that answered (its shard, process
    id, active, held and bad queue counts); C{missing}, the shards whose process did not
    answer; and C{active}/C{held}/C{bad}, the totals of the shards that answered.
    """

    commandName = b"status"  # noqa: N815 - the name AMP reads
    arguments = []  # noqa: RUF012 - the name AMP reads
    response = [  # noqa: RUF012 - the name AMP reads
        (b"version", amp.Unicode()),
        (b"processes", amp.Integer()),
        (b"listeners", amp.ListOf(amp.Unicode())),
        (b"shards", SHARD_STATUS),
        (b"missing", amp.ListOf(amp.Integer())),
        (b"active", amp.Integer()),
        (b"held", amp.Integer()),
        (b"bad", amp.Integer()),
    ]


class QueueRun(ControlCommand):
    """
    C{mdtwistctl queue run}: attempt every queued message now, whatever its schedule.

    The answer comes once every process has started its run (not when the run ends):
    C{shards}, the shards that started one, and C{missing}, those whose process did not answer.
    """

    commandName = b"queue-run"  # noqa: N815 - the name AMP reads
    arguments = []  # noqa: RUF012 - the name AMP reads
    response = [  # noqa: RUF012 - the name AMP reads
        (b"shards", amp.ListOf(amp.Integer())),
        (b"missing", amp.ListOf(amp.Integer())),
    ]


class Reload(ControlCommand):
    """
    C{mdtwistctl reload} (and SIGHUP): read the accounts file and the TLS certificate again.

    Response: C{shards}, the shards that reloaded; C{missing}, those whose process did not
    answer; C{problems}, one line per thing that could not be reloaded (the old one stays in
    use), prefixed with its shard when there are several processes.
    """

    commandName = b"reload"  # noqa: N815 - the name AMP reads
    arguments = []  # noqa: RUF012 - the name AMP reads
    response = [  # noqa: RUF012 - the name AMP reads
        (b"shards", amp.ListOf(amp.Integer())),
        (b"missing", amp.ListOf(amp.Integer())),
        (b"problems", amp.ListOf(amp.Unicode())),
    ]
