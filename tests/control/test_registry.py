"""
Tests for L{mdtwist.control.registry}: registering commands, carrying them out in one process
or across processes, and the AMP protocol that looks them up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.commands import ControlCommand, ControlError
from mdtwist.control.registry import (
    Answer,
    ControlDispatcher,
    ControlProtocol,
    ControlRegistry,
)
from tests.support.logs import capture_logs


class Echo(ControlCommand):
    """
    A command for the tests: its answer names the shards that carried it out.
    """

    commandName = b"test-echo"  # noqa: N815
    arguments = [(b"text", amp.Unicode())]  # noqa: RUF012
    response = [(b"text", amp.Unicode()), (b"shards", amp.ListOf(amp.Integer()))]  # noqa: RUF012


class Other(ControlCommand):
    """
    A command nobody registers.
    """

    commandName = b"test-other"  # noqa: N815
    arguments = []  # noqa: RUF012
    response = []  # noqa: RUF012


def _combine(answers: Mapping[int, Answer | None]) -> Answer:
    shards = [k for k, answer in sorted(answers.items()) if answer is not None]
    texts = {answer["text"] for answer in answers.values() if answer is not None}
    return {"text": "+".join(sorted(texts)), "shards": shards}


class FakeChildren:
    """
    Child links whose answers the test sets.

    @ivar answers: shard -> the answer, or an exception to fail with.
    @ivar calls: the shards and arguments passed on.
    """

    def __init__(self, answers: dict[int, Answer | Exception]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, Answer]] = []

    def expected(self) -> Sequence[int]:
        return sorted(self.answers)

    def call(self, shard: int, command: type[amp.Command], arguments: Answer) -> Deferred[Answer]:
        self.calls.append((shard, arguments))
        answer = self.answers[shard]
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)


class RegistryTests(SynchronousTestCase):
    """
    L{ControlRegistry}.
    """

    def test_register(self) -> None:
        """
        A registered command is found by its AMP name; a second registration of the name is
        refused.
        """
        registry = ControlRegistry()
        registry.register(Echo, lambda text: {}, combine=_combine)
        found = registry.find(b"test-echo")
        assert found is not None
        self.assertIs(found.command, Echo)
        self.assertIs(found.combine, _combine)
        self.assertIsNone(registry.find(b"test-other"))
        self.assertEqual(registry.names(), ["test-echo"])
        error = self.assertRaises(ValueError, registry.register, Echo, lambda text: {})
        self.assertEqual(str(error), "control command 'test-echo' is registered twice")


class DispatcherTests(SynchronousTestCase):
    """
    L{ControlDispatcher}.
    """

    def setUp(self) -> None:
        self.registry = ControlRegistry()
        self.calls: list[str] = []

    def handler(self, text: str) -> Answer:
        self.calls.append(text)
        if text == "refuse":
            raise ControlError("refused")
        return {"text": text.upper(), "shards": [0]}

    def test_child_answers_for_itself(self) -> None:
        """
        In a child, the handler's answer is the answer (the parent combines).
        """
        self.registry.register(Echo, self.handler, combine=_combine)
        dispatcher = ControlDispatcher(self.registry, shard=2)
        answer = self.successResultOf(dispatcher.call(Echo, {"text": "hi"}))
        self.assertEqual(answer, {"text": "HI", "shards": [0]})

    def test_parent_combines_every_process(self) -> None:
        """
        In the first process, a command with C{combine} runs here and is passed on to every
        child with the same arguments; a child that fails counts as not answering and is
        logged.
        """
        events = capture_logs(self)
        self.registry.register(Echo, self.handler, combine=_combine)
        children = FakeChildren(
            {1: {"text": "ONE", "shards": [1]}, 2: ControlError("shard 2 is not running")}
        )
        dispatcher = ControlDispatcher(self.registry, children=children)
        answer = self.successResultOf(dispatcher.call(Echo, {"text": "hi"}))
        self.assertEqual(answer, {"text": "HI+ONE", "shards": [0, 1]})
        self.assertEqual(children.calls, [(1, {"text": "hi"}), (2, {"text": "hi"})])
        [event] = [e for e in events if "did not answer" in e["log_format"]]
        self.assertEqual((event["shard"], event["why"]), (2, "shard 2 is not running"))

    def test_one_process(self) -> None:
        """
        With no child, the combination is of this process's answer alone.
        """
        self.registry.register(Echo, self.handler, combine=_combine)
        dispatcher = ControlDispatcher(self.registry, children=FakeChildren({}))
        answer = self.successResultOf(dispatcher.call(Echo, {"text": "hi"}))
        self.assertEqual(answer, {"text": "HI", "shards": [0]})

    def test_first_process_only(self) -> None:
        """
        A command registered without C{combine} runs in the first process only.
        """
        self.registry.register(Echo, self.handler)
        children = FakeChildren({1: {"text": "ONE", "shards": [1]}})
        dispatcher = ControlDispatcher(self.registry, children=children)
        answer = self.successResultOf(dispatcher.call(Echo, {"text": "hi"}))
        self.assertEqual(answer, {"text": "HI", "shards": [0]})
        self.assertEqual(children.calls, [])

    def test_failure_here(self) -> None:
        """
        When this process's handler refuses, so does the command, whatever the children say.
        """
        self.registry.register(Echo, self.handler, combine=_combine)
        children = FakeChildren({1: {"text": "ONE", "shards": [1]}})
        dispatcher = ControlDispatcher(self.registry, children=children)
        failure = self.failureResultOf(dispatcher.call(Echo, {"text": "refuse"}), ControlError)
        self.assertEqual(failure.getErrorMessage(), "refused")

    def test_unknown(self) -> None:
        """
        A command that is not registered fails with L{ControlError}.
        """
        dispatcher = ControlDispatcher(self.registry)
        failure = self.failureResultOf(dispatcher.call(Other, {}), ControlError)
        self.assertEqual(failure.getErrorMessage(), "unknown control command 'test-other'")


class ProtocolTests(SynchronousTestCase):
    """
    L{ControlProtocol} answering an AMP client in memory.
    """

    def setUp(self) -> None:
        self.registry = ControlRegistry()
        self.lost: list[object] = []

        def handler(text: str) -> Answer:
            if text == "refuse":
                raise ControlError("no, because")
            if text == "crash":
                raise RuntimeError("bug")
            return {"text": text[::-1], "shards": [0]}

        self.registry.register(Echo, handler)
        dispatcher = ControlDispatcher(self.registry)
        self.client, self.server, self.pump = connectedServerAndClient(
            lambda: ControlProtocol(dispatcher, self.lost.append), amp.AMP
        )

    def call(self, command: type[amp.Command], **arguments: Any) -> Any:
        # The outcome, a Failure for an error (observed before it arrives: AMP drops the
        # connection over an error that nobody handles).
        outcome: list[Any] = []
        self.client.callRemote(command, **arguments).addBoth(outcome.append)
        self.pump.flush()
        return outcome[0]

    def test_answer(self) -> None:
        """
        A registered command is answered with its handler's answer.
        """
        answer = self.call(Echo, text="abc")
        self.assertEqual(answer, {"text": "cba", "shards": [0]})

    def test_refusal(self) -> None:
        """
        A L{ControlError} reaches the client as one, with its text.
        """
        failure = self.call(Echo, text="refuse")
        self.assertIsInstance(failure, Failure)
        self.assertEqual(failure.check(ControlError), ControlError)
        self.assertEqual(failure.getErrorMessage(), "no, because")

    def test_bug(self) -> None:
        """
        Any other exception is logged by the server and reaches the client as an unknown
        remote error, without its text.
        """
        failure = self.call(Echo, text="crash")
        self.assertIsInstance(failure, Failure)
        self.assertEqual(failure.check(amp.UnknownRemoteError), amp.UnknownRemoteError)
        self.assertNotIn("bug", failure.getErrorMessage())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_unregistered(self) -> None:
        """
        A command that is not registered is answered as unhandled.
        """
        failure = self.call(Other)
        self.assertIsInstance(failure, Failure)
        self.assertEqual(failure.check(amp.UnhandledCommand), amp.UnhandledCommand)

    def test_lost(self) -> None:
        """
        The connection's loss is reported.
        """
        assert self.client.transport is not None
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(len(self.lost), 1)
