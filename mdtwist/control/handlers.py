# -*- test-case-name: tests.control.test_handlers -*-
"""
The first control commands: C{status}, C{queue-run} and C{reload}.

L{register_basics} registers them with the objects of one process; the combining functions
build the whole server's answer from the answers of its processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mdtwist.control.commands import ControlError, QueueRun, Reload, Status
from mdtwist.control.registry import Answer, ControlRegistry

_log = Logger()


@attrs.frozen
class ProcessFacts:
    """
    What C{status} says about one process.

    @ivar version: mdtwist's version.
    @ivar processes: C{server.processes}.
    @ivar listeners: one C{"MODE ENDPOINT"} per SMTP listener.
    @ivar shard: this process's spool shard.
    """

    version: str
    processes: int
    listeners: tuple[str, ...]
    shard: int


def register_basics(
    registry: ControlRegistry,
    *,
    facts: ProcessFacts,
    count_queue: Callable[[], Deferred[tuple[int, int, int]]],
    run_queue: Callable[[], object],
    reloaders: Sequence[Callable[[], Sequence[str]]],
) -> None:
    """
    Register C{status}, C{queue-run} and C{reload} for one process.

    @param registry: where.
    @param facts: this process's facts.
    @param count_queue: counts this process's spool shard: active, held and bad messages.
    @param run_queue: starts a queue run that attempts every queued message now
        (L{mdtwist.delivery.runner.QueueRunner.run_now}).
    @param reloaders: each reads one thing again (the accounts, the certificate) and returns
        the problems that kept it from being reloaded.
    """

    def status() -> Deferred[Answer]:
        def counted(counts: tuple[int, int, int]) -> Answer:
            active, held, bad = counts
            return {
                "version": facts.version,
                "processes": facts.processes,
                "listeners": list(facts.listeners),
                # The process id is read now: twistd forks after the services are built.
                "shards": [
                    {
                        "shard": facts.shard,
                        "pid": os.getpid(),
                        "active": active,
                        "held": held,
                        "bad": bad,
                    }
                ],
                "missing": [],
                "active": active,
                "held": held,
                "bad": bad,
            }

        def failed(reason: Failure) -> Answer:
            raise ControlError(f"cannot count the queue: {reason.getErrorMessage()}")

        return count_queue().addCallbacks(counted, failed)

    def queue_run() -> Answer:
        run_queue()
        _log.info("Queue run requested through the control socket")
        return {"shards": [facts.shard], "missing": []}

    def reload() -> Answer:
        problems = [problem for reloader in reloaders for problem in reloader()]
        for problem in problems:
            _log.error("Reload kept the last good settings: {problem}", problem=problem)
        if not problems:
            _log.info("Reloaded the accounts, the TLS certificate and the client settings")
        return {"shards": [facts.shard], "missing": [], "problems": problems}

    registry.register(Status, status, combine=combine_status)
    registry.register(QueueRun, queue_run, combine=combine_shards)
    registry.register(Reload, reload, combine=combine_reload)


def _first(answers: Mapping[int, Answer | None]) -> Answer:
    # The first process's answer (it always has one: without it the command failed).
    for shard in sorted(answers):
        answer = answers[shard]
        if answer is not None:
            return answer
    raise ValueError("no process answered")


def combine_status(answers: Mapping[int, Answer | None]) -> Answer:
    """
    The server's status: the first process's facts, every shard's counts and their totals.

    @param answers: each process's status by shard; L{None} for one that did not answer.
    @return: the combined status.
    """
    shards: list[dict[str, Any]] = []
    for shard in sorted(answers):
        answer = answers[shard]
        if answer is not None:
            shards += answer["shards"]
    return {
        **_first(answers),
        "shards": shards,
        "missing": _missing(answers),
        "active": sum(entry["active"] for entry in shards),
        "held": sum(entry["held"] for entry in shards),
        "bad": sum(entry["bad"] for entry in shards),
    }


def combine_shards(answers: Mapping[int, Answer | None]) -> Answer:
    """
    Which shards carried a command out and which did not answer.

    @param answers: each process's answer by shard; L{None} for one that did not answer.
    @return: C{shards} and C{missing}.
    """
    return {
        "shards": [shard for shard in sorted(answers) if answers[shard] is not None],
        "missing": _missing(answers),
    }


def combine_reload(answers: Mapping[int, Answer | None]) -> Answer:
    """
    The reload of every process: its problems, each marked with its shard when there are
    several processes.

    @param answers: each process's answer by shard; L{None} for one that did not answer.
    @return: C{shards}, C{missing} and C{problems}.
    """
    several = len(answers) > 1
    problems: list[str] = []
    for shard in sorted(answers):
        answer = answers[shard]
        if answer is not None:
            problems += [f"shard {shard}: {p}" if several else p for p in answer["problems"]]
    return {**combine_shards(answers), "problems": problems}


def _missing(answers: Mapping[int, Answer | None]) -> list[int]:
    return [shard for shard in sorted(answers) if answers[shard] is None]
