# -*- test-case-name: tests.dequeue.test_service -*-
"""
The dequeue service: every Nth queue run, and on C{mdtwistctl dequeue run}, each enabled
signal of C{[dequeue]} is sent (L{mdtwist.dequeue.client.Signaller}).

It runs in the first process only, beside that process's queue runner, whose finished runs it
counts (L{mdtwist.delivery.runner.QueueRunner.add_run_observer}); mail released by ATRN is
taken into that process's spool shard. A signal still running when its next turn comes (an
ATRN session delivering, a silent host not yet timed out) is not sent twice: that turn's result
is L{SignalStatus.BUSY}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from typing_extensions import override

from mdtwist import metrics
from mdtwist.config import Config, DequeueSignalConfig
from mdtwist.control.commands import ControlError
from mdtwist.control.registry import Answer, ControlRegistry
from mdtwist.dequeue.client import Signal, Signaller, TurnedServer
from mdtwist.dequeue.control import DequeueRun
from mdtwist.dequeue.signal import SignalResult, SignalStatus, due
from mdtwist.smtp.client import ClientTimeouts

log = Logger()

#: Adds a queue run observer and returns its remover (C{QueueRunner.add_run_observer}).
Observe = Callable[[Callable[[int], object]], Callable[[], None]]


#: The timeouts of a signal's SMTP session: shorter than mail delivery's, except the reply to
#: the text (an ATRN provider may search its queue first: 10 minutes).
SIGNAL_TIMEOUTS = ClientTimeouts(
    connect=30.0, greeting=120.0, helo=120.0, starttls=60.0, auth=60.0, quit=30.0, command=600.0
)


class UnknownSignal(ValueError):
    """
    C{mdtwistctl dequeue run DOMAIN} named a domain without an enabled signal.
    """


class DequeueService(Service):
    """
    Sends the dequeue signals on schedule and on request.
    """

    name = "dequeue"

    def __init__(
        self,
        signaller: Signaller,
        signals: Sequence[DequeueSignalConfig],
        every: int,
        observe: Observe,
    ) -> None:
        """
        @param signaller: sends one signal.
        @param signals: the configured signals (disabled ones are never sent).
        @param every: signal on every this many queue runs; 0 for every run.
        @param observe: subscribes to the queue runner's finished runs.
        """
        self._signaller = signaller
        self._signals = [s for s in signals if s.enable]
        self._every = every
        self._observe = observe
        self._unobserve: Callable[[], None] | None = None
        self._running: dict[str, Signal] = {}

    @override
    def startService(self) -> None:
        super().startService()
        self._unobserve = self._observe(self._run_finished)

    @override
    def stopService(self) -> None:
        super().stopService()
        if self._unobserve is not None:
            self._unobserve()
            self._unobserve = None
        for signal in list(self._running.values()):
            signal.close()

    def busy(self) -> list[str]:
        """
        @return: the domains whose signal is running now.
        """
        return sorted(self._running)

    def _run_finished(self, count: int) -> None:
        if self._signals and due(count, self._every):
            log.debug("Queue run {count}: sending the dequeue signals", count=count)
            self.run()

    def run(self, domain: str | None = None) -> Deferred[list[SignalResult]]:
        """
        Send the enabled signals now (or the one of a domain).

        @param domain: the domain of the one signal to send, or L{None} for all.
        @return: the results, in the configured order; a result comes when its signal is
            decided (for an accepted ATRN: at the turn, while the mail still comes in).
        @raise UnknownSignal: no enabled signal has that domain.
        """
        targets = self._signals
        if domain is not None:
            wanted = domain.lower().rstrip(".")
            targets = [s for s in self._signals if s.domain == wanted]
            if not targets:
                raise UnknownSignal(f"no enabled dequeue signal for {domain!r}")
        return gatherResults([self._send(target) for target in targets])

    def _send(self, target: DequeueSignalConfig) -> Deferred[SignalResult]:
        if target.domain in self._running:
            result = SignalResult(
                target.domain, SignalStatus.BUSY, None, "the previous signal is still running"
            )
            self._log(target, result)
            return succeed(result)
        log.debug(
            "Dequeue signal for {domain} to {mx}",
            domain=target.domain,
            mx=f"{target.host}:{target.port}",
        )
        signal = self._signaller.signal(target)
        self._running[target.domain] = signal
        signal.finished.addCallback(lambda _: self._running.pop(target.domain, None))

        def decided(result: SignalResult) -> SignalResult:
            self._log(target, result)
            return result

        return signal.result.addCallback(decided)

    def _log(self, target: DequeueSignalConfig, result: SignalResult) -> None:
        metrics.dequeue_signal(_signal_kind(target), result.status.value)
        fields = {
            "domain": result.domain,
            "mx": f"{target.host}:{target.port}",
            "status": result.status.value,
            "code": result.code,
            "detail": result.detail,
        }
        if result.ok:
            log.info("Dequeue signal for {domain} to {mx}: {status}: {detail}", **fields)
        else:
            log.warn(
                "Dequeue signal for {domain} to {mx}: {status}: {detail}; trying again on a"
                " later run",
                **fields,
            )


def register_commands(registry: ControlRegistry, service: DequeueService) -> None:
    """
    Register L{DequeueRun} (carried out by the first process only: no C{combine}).

    @param registry: the first process's control commands.
    @param service: the dequeue service.
    """

    def handle(domain: str | None = None) -> Deferred[Answer]:
        try:
            running = service.run(domain)
        except UnknownSignal as e:
            raise ControlError(str(e)) from None
        return running.addCallback(_answer)

    registry.register(DequeueRun, handle)


def _answer(results: list[SignalResult]) -> Answer:
    return {
        "results": [
            {"domain": r.domain, "status": r.status.value, "code": r.code, "detail": r.detail}
            for r in results
        ]
    }


def build_dequeue(
    config: Config, reactor: Any, observe: Observe, turned_server: TurnedServer
) -> DequeueService:
    """
    Build the dequeue service of the first process from C{[dequeue]}.

    @param config: the configuration.
    @param reactor: connects and runs the timeouts.
    @param observe: the queue runner's C{add_run_observer}.
    @param turned_server: builds the SMTP server protocol for mail an ATRN releases.
    @return: the service (it sends nothing when no signal is configured).
    """

    def connect(host: str, port: int) -> IStreamClientEndpoint:
        return HostnameEndpoint(reactor, host, port, timeout=int(SIGNAL_TIMEOUTS.connect))

    signaller = Signaller(
        clock=reactor,
        connect=connect,
        hostname=config.server.hostname,
        turned_server=turned_server,
        timeouts=SIGNAL_TIMEOUTS,
    )
    return DequeueService(signaller, config.dequeue.signals, config.dequeue.every, observe)


def _signal_kind(target: DequeueSignalConfig) -> str:
    # The metrics label of a signal we send: its verb for ETRN and ATRN, else "other-sent".
    verb = target.text.split(" ", 1)[0].lower()
    return f"{verb}-sent" if verb in ("etrn", "atrn") else "other-sent"
