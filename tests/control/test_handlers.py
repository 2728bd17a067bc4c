"""
Tests for L{mdtwist.control.handlers}: C{status}, C{queue-run} and C{reload} in one process,
and how the answers of several processes are combined.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.commands import ControlError, QueueRun, Reload, Status
from mdtwist.control.handlers import (
    ProcessFacts,
    combine_reload,
    combine_shards,
    combine_status,
    register_basics,
)
from mdtwist.control.registry import Answer, ControlDispatcher, ControlRegistry
from mdtwist.errors import SpoolError
from tests.support.logs import capture_logs

FACTS = ProcessFacts(
    version="9.9", processes=2, listeners=("mx tcp:25", "submission tcp:587"), shard=1
)


class BasicsTests(SynchronousTestCase):
    """
    The handlers of one process, registered with fakes.
    """

    def setUp(self) -> None:
        self.runs = 0
        self.problems: list[str] = []
        self.reloads = 0
        registry = ControlRegistry()

        self.spool_error: Exception | None = None

        def count() -> Deferred[tuple[int, int, int]]:
            if self.spool_error is not None:
                return fail(self.spool_error)
            return succeed((3, 2, 1))

        def run() -> None:
            self.runs += 1

        def reload() -> list[str]:
            self.reloads += 1
            return self.problems

        register_basics(
            registry,
            facts=FACTS,
            count_queue=count,
            run_queue=run,
            reloaders=[reload, lambda: []],
        )
        self.registry = registry
        # A child process: its own answers, uncombined.
        self.dispatcher = ControlDispatcher(registry, shard=1)

    def call(self, command: type[Status | QueueRun | Reload]) -> Answer:
        return self.successResultOf(self.dispatcher.call(command, {}))

    def test_registered(self) -> None:
        """
        The three commands are registered, each to be combined over the processes.
        """
        self.assertEqual(self.registry.names(), ["queue-run", "reload", "status"])
        for name in (b"queue-run", b"reload", b"status"):
            found = self.registry.find(name)
            assert found is not None
            self.assertIsNotNone(found.combine)

    def test_status(self) -> None:
        """
        C{status} gives the facts, this process's id and its queue counts.
        """
        self.assertEqual(
            self.call(Status),
            {
                "version": "9.9",
                "processes": 2,
                "listeners": ["mx tcp:25", "submission tcp:587"],
                "shards": [{"shard": 1, "pid": os.getpid(), "active": 3, "held": 2, "bad": 1}],
                "missing": [],
                "active": 3,
                "held": 2,
                "bad": 1,
            },
        )

    def test_status_spool_error(self) -> None:
        """
        A spool that cannot be read is a refusal with the reason.
        """
        self.spool_error = SpoolError("database is locked")
        failure = self.failureResultOf(self.dispatcher.call(Status, {}), ControlError)
        self.assertEqual(failure.getErrorMessage(), "cannot count the queue: database is locked")

    def test_queue_run(self) -> None:
        """
        C{queue-run} starts a run here and says so.
        """
        capture_logs(self)
        self.assertEqual(self.call(QueueRun), {"shards": [1], "missing": []})
        self.assertEqual(self.runs, 1)

    def test_reload(self) -> None:
        """
        C{reload} calls every reloader and passes their problems on, logging them.
        """
        events = capture_logs(self)
        self.assertEqual(self.call(Reload), {"shards": [1], "missing": [], "problems": []})
        self.problems.append("cert.pem: cannot read: Permission denied")
        self.assertEqual(
            self.call(Reload)["problems"], ["cert.pem: cannot read: Permission denied"]
        )
        self.assertEqual(self.reloads, 2)
        [event] = [e for e in events if "kept the last good" in e["log_format"]]
        self.assertEqual(event["problem"], "cert.pem: cannot read: Permission denied")


def _status(shard: int, active: int, bad: int) -> Answer:
    return {
        "version": "9.9",
        "processes": 3,
        "listeners": ["mx tcp:25"],
        "shards": [{"shard": shard, "pid": 100 + shard, "active": active, "held": 1, "bad": bad}],
        "missing": [],
        "active": active,
        "held": 1,
        "bad": bad,
    }


class CombineTests(SynchronousTestCase):
    """
    The answers of several processes combined.
    """

    def test_status(self) -> None:
        """
        The shards that answered are listed in order and summed; the others are missing.
        """
        combined = combine_status({0: _status(0, 2, 0), 1: None, 2: _status(2, 5, 1)})
        self.assertEqual(
            combined,
            {
                "version": "9.9",
                "processes": 3,
                "listeners": ["mx tcp:25"],
                "shards": [
                    {"shard": 0, "pid": 100, "active": 2, "held": 1, "bad": 0},
                    {"shard": 2, "pid": 102, "active": 5, "held": 1, "bad": 1},
                ],
                "missing": [1],
                "active": 7,
                "held": 2,
                "bad": 1,
            },
        )

    def test_shards(self) -> None:
        """
        C{combine_shards} names who carried the command out and who did not answer.
        """
        answer: Answer = {"shards": [0], "missing": []}
        self.assertEqual(
            combine_shards({0: answer, 1: None, 2: answer}), {"shards": [0, 2], "missing": [1]}
        )

    def test_reload(self) -> None:
        """
        With several processes each problem names its shard; with one it does not.
        """
        ok: Answer = {"shards": [0], "missing": [], "problems": []}
        bad: Answer = {"shards": [1], "missing": [], "problems": ["accounts.toml: broken"]}
        self.assertEqual(
            combine_reload({0: ok, 1: bad}),
            {"shards": [0, 1], "missing": [], "problems": ["shard 1: accounts.toml: broken"]},
        )
        self.assertEqual(combine_reload({0: bad})["problems"], ["accounts.toml: broken"])
