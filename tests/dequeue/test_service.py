"""
Tests for L{mdtwist.dequeue.service}: the schedule of the signals ("every N runs",
counted over remote queue runs), one signal per domain at a time, the log, the metrics and the
control command.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from mdtwist import metrics
from mdtwist.config import DequeueSignalConfig
from mdtwist.control.commands import ControlError
from mdtwist.control.registry import ControlDispatcher, ControlRegistry
from mdtwist.dequeue.client import Signal
from mdtwist.dequeue.control import DequeueRun
from mdtwist.dequeue.service import DequeueService, UnknownSignal, register_commands
from mdtwist.dequeue.signal import SignalResult, SignalStatus
from tests.support.logs import capture_logs


def signal_for(domain: str, **kwargs: object) -> DequeueSignalConfig:
    """A signal for a domain."""
    fields: dict[str, object] = {"host": f"mx.{domain}", "text": f"ETRN {domain}", **kwargs}
    return DequeueSignalConfig(domain=domain, **fields)  # type: ignore[arg-type]


class FakeSignaller:
    """Records the signals sent and leaves each running until the test ends it."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.running: dict[str, Signal] = {}
        self.closed: list[str] = []

    def signal(self, target: DequeueSignalConfig) -> Signal:
        """Start a signal."""
        self.sent.append(target.domain)
        signal = Signal()
        signal._close = lambda: self.closed.append(target.domain)
        self.running[target.domain] = signal
        return signal

    def end(
        self, domain: str, status: SignalStatus = SignalStatus.SENT, code: int | None = 250
    ) -> None:
        """The signal of a domain is decided and its connection gone."""
        signal = self.running.pop(domain)
        signal._settle(SignalResult(domain, status, code, "detail"))
        signal._done()


class Runner:
    """Stands in for the queue runner's run observers."""

    def __init__(self) -> None:
        self.observers: list[Callable[[int], object]] = []
        self.count = 0

    def add_run_observer(self, observer: Callable[[int], object]) -> Callable[[], None]:
        """Add an observer; return its remover."""
        self.observers.append(observer)
        return lambda: self.observers.remove(observer)

    def finish_run(self) -> None:
        """A run finished."""
        self.count += 1
        for observer in list(self.observers):
            observer(self.count)


def make(
    every: int = 0, *signals: DequeueSignalConfig
) -> tuple[DequeueService, FakeSignaller, Runner]:
    """A started service over a fake signaller and runner."""
    signaller = FakeSignaller()
    runner = Runner()
    service = DequeueService(
        signaller,  # type: ignore[arg-type]
        signals or (signal_for("a.example"),),
        every,
        runner.add_run_observer,
    )
    service.startService()
    return service, signaller, runner


class ScheduleTests(SynchronousTestCase):
    """When the signals are sent."""

    def test_every_run(self) -> None:
        """With N = 0, every finished run signals (once the last signal is over)."""
        _service, signaller, runner = make(0)
        for _ in range(3):
            runner.finish_run()
            signaller.end("a.example")
        self.assertEqual(signaller.sent, ["a.example"] * 3)

    def test_every_third_run(self) -> None:
        """With N = 3, runs 1, 4 and 7 signal."""
        _service, signaller, runner = make(3)
        signalled = []
        for run in range(1, 8):
            before = len(signaller.sent)
            runner.finish_run()
            if len(signaller.sent) > before:
                signalled.append(run)
                signaller.end("a.example")
        self.assertEqual(signalled, [1, 4, 7])

    def test_disabled_never_sent(self) -> None:
        """A disabled signal is neither scheduled nor sent on request."""
        service, signaller, runner = make(
            0, signal_for("a.example"), signal_for("b.example", enable=False)
        )
        runner.finish_run()
        self.assertEqual(signaller.sent, ["a.example"])
        self.assertRaises(UnknownSignal, service.run, "b.example")

    def test_stop(self) -> None:
        """Stopped, it no longer observes runs and closes the signals still running."""
        service, signaller, runner = make(0)
        runner.finish_run()
        service.stopService()
        self.assertEqual(runner.observers, [])
        self.assertEqual(signaller.closed, ["a.example"])


class RunTests(SynchronousTestCase):
    """Sending now, one domain at a time, and the log."""

    def test_results_in_order(self) -> None:
        """The results come in the configured order, once all are decided."""
        service, signaller, _runner = make(0, signal_for("a.example"), signal_for("b.example"))
        d = service.run()
        signaller.end("b.example", SignalStatus.NO_MAIL, 251)
        self.assertNoResult(d)
        signaller.end("a.example")
        self.assertEqual(
            [(r.domain, r.status) for r in self.successResultOf(d)],
            [("a.example", SignalStatus.SENT), ("b.example", SignalStatus.NO_MAIL)],
        )

    def test_one_domain(self) -> None:
        """A domain, in any case and with a trailing dot, sends only its own signal."""
        service, signaller, _runner = make(0, signal_for("a.example"), signal_for("b.example"))
        service.run("B.Example.")
        self.assertEqual(signaller.sent, ["b.example"])
        self.assertRaises(UnknownSignal, service.run, "c.example")

    def test_busy(self) -> None:
        """
        A signal still running (an ATRN session, a silent host) is not sent again: busy;
        once its connection is gone, the next run sends it.
        """
        service, signaller, runner = make(0)
        runner.finish_run()
        self.assertEqual(service.busy(), ["a.example"])
        second = service.run()
        self.assertEqual(self.successResultOf(second)[0].status, SignalStatus.BUSY)
        self.assertEqual(signaller.sent, ["a.example"])
        signaller.end("a.example")
        self.assertEqual(service.busy(), [])
        service.run()
        self.assertEqual(signaller.sent, ["a.example"] * 2)

    def test_log(self) -> None:
        """
        Each result is logged with its fields: info when it did its job, a warning that it
        will be tried again otherwise.
        """
        logs = capture_logs(self)
        service, signaller, _runner = make(0, signal_for("a.example"), signal_for("b.example"))
        service.run()
        signaller.end("a.example")
        signaller.end("b.example", SignalStatus.REFUSED, 451)
        events = [e for e in logs if "Dequeue signal for" in e["log_format"] and "status" in e]
        self.assertEqual(
            [(e["domain"], e["status"], e["code"], e["log_level"].name) for e in events],
            [("a.example", "sent", 250, "info"), ("b.example", "refused", 451, "warn")],
        )
        self.assertIn("trying again on a later run", events[1]["log_format"])
        self.assertEqual(events[1]["mx"], "mx.b.example:25")

    def test_counted(self) -> None:
        """
        Each signal sent counts in C{mdtwist_dequeue_signals_total} by its verb and result.
        """

        def count(kind: str, outcome: str) -> float:
            return sum(
                value
                for _, name, labels, value in metrics.samples()
                if name == "mdtwist_dequeue_signals_total"
                and labels == {"kind": kind, "outcome": outcome}
            )

        sent, refused = count("etrn-sent", "sent"), count("other-sent", "refused")
        raw = signal_for("b.example", text="QSND b.example")
        service, signaller, _runner = make(0, signal_for("a.example"), raw)
        service.run()
        signaller.end("a.example")
        signaller.end("b.example", SignalStatus.REFUSED, 451)
        self.assertEqual(
            (count("etrn-sent", "sent"), count("other-sent", "refused")), (sent + 1, refused + 1)
        )


class ControlTests(SynchronousTestCase):
    """The C{dequeue-run} control command."""

    def dispatcher(self) -> tuple[ControlDispatcher, FakeSignaller]:
        service, signaller, _runner = make(0, signal_for("a.example"), signal_for("b.example"))
        registry = ControlRegistry()
        register_commands(registry, service)
        return ControlDispatcher(registry, shard=0, children=None), signaller

    def test_run_all(self) -> None:
        """Without a domain every signal is sent; the answer lists the results."""
        dispatcher, signaller = self.dispatcher()
        d: Deferred[dict[str, object]] = dispatcher.call(DequeueRun, {"domain": None})
        signaller.end("a.example")
        signaller.end("b.example", SignalStatus.FAILED, None)
        self.assertEqual(
            self.successResultOf(d),
            {
                "results": [
                    {"domain": "a.example", "status": "sent", "code": 250, "detail": "detail"},
                    {"domain": "b.example", "status": "failed", "code": None, "detail": "detail"},
                ]
            },
        )

    def test_unknown_domain(self) -> None:
        """An unknown domain is a control error naming it."""
        dispatcher, _signaller = self.dispatcher()
        failure = self.failureResultOf(dispatcher.call(DequeueRun, {"domain": "c.example"}))
        failure.trap(ControlError)
        self.assertIn("'c.example'", str(failure.value))
