# -*- test-case-name: tests.dequeue.test_release -*-
"""
Gateway releases across the processes of C{server.processes}: the control commands and the
objects that reach every shard's L{HeldMail}.

Every process registers the commands (L{register_gateway_commands}); each acts on its own
shard only:

  - C{gateway-etrn} (L{GatewayEtrn}): release some domains over new connections; carried out
    by every process, the counts summed. Operators call it too (C{mdtwistctl}, see the
    README): it is the "release now" of a gateway domain.
  - C{gateway-held} (L{GatewayHeld}): held messages and recipients per gateway domain, summed.
  - C{gateway-release} (L{GatewayRelease}, first process): the operator's "release now" of
    gateway domains to their configured ETRN targets, through C{gateway-etrn}.
  - C{gateway-claim}, C{gateway-record}, C{gateway-give-back}: the ATRN session (always in the
    first process, where the ODMR listener is) leases, records and gives back another shard's
    messages through the link to that shard's process.

An ETRN received by a child process goes to the first process over the control socket, which
carries C{gateway-etrn} out in every process (L{ControlSocketRelease}); in the first process
it goes to the dispatcher directly (L{DispatcherRelease}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.protocols import amp

from mdtwist.control.commands import ControlCommand
from mdtwist.control.registry import Answer, ControlDispatcher, ControlRegistry, IChildren
from mdtwist.dequeue.held import HeldMail, HeldMessage
from mdtwist.envelope import RecipientState
from mdtwist.route import Route, RouteKind
from mdtwist.spool.model import RecipientResult

log = Logger()

_TARGETS = amp.AmpList(
    [(b"domain", amp.Unicode()), (b"kind", amp.Unicode()), (b"target", amp.Unicode())]
)
_HELD = amp.AmpList([(b"queue_id", amp.Unicode()), (b"positions", amp.ListOf(amp.Integer()))])
_RESULTS = amp.AmpList(
    [
        (b"position", amp.Integer()),
        (b"state", amp.Unicode()),
        (b"status", amp.Unicode()),
        (b"diagnostic", amp.Unicode()),
        (b"remote_mta", amp.Unicode()),
    ]
)
_COUNTS = amp.AmpList(
    [(b"domain", amp.Unicode()), (b"messages", amp.Integer()), (b"recipients", amp.Integer())]
)


class GatewayEtrn(ControlCommand):
    """
    Release the held mail of gateway domains over new connections, in every process.

    Arguments: C{domains}, the gateway domains; C{targets}, per domain the route its mail takes
    (C{kind} C{remote} with an empty C{target}, or C{sharing-peer} with C{host:port}).
    Response: C{messages}, how many held messages were found (and are being released, or were
    being released already).
    """

    commandName = b"gateway-etrn"  # noqa: N815 - the name AMP reads
    arguments = [(b"domains", amp.ListOf(amp.Unicode())), (b"targets", _TARGETS)]  # noqa: RUF012
    response = [(b"messages", amp.Integer())]  # noqa: RUF012


class GatewayRelease(ControlCommand):
    """
    The operator's "release now": release gateway domains to their configured ETRN target,
    in every process (C{mdtwistctl}); carried out by the first process.

    Arguments: C{domains}, gateway domains (empty: every gateway). Response: C{messages}, the
    held messages found; C{released}, the domains released; C{skipped}, those that are not
    gateways or whose target is the requester's address (there is no requester here).
    """

    commandName = b"gateway-release"  # noqa: N815 - the name AMP reads
    arguments = [(b"domains", amp.ListOf(amp.Unicode()))]  # noqa: RUF012
    response = [  # noqa: RUF012 - the name AMP reads
        (b"messages", amp.Integer()),
        (b"released", amp.ListOf(amp.Unicode())),
        (b"skipped", amp.ListOf(amp.Unicode())),
    ]


class GatewayHeld(ControlCommand):
    """
    Count the held mail per gateway domain, over every process.

    Response: C{domains}, one entry per domain with held mail (C{messages}, C{recipients});
    C{missing}, the shards that did not answer.
    """

    commandName = b"gateway-held"  # noqa: N815 - the name AMP reads
    arguments = []  # noqa: RUF012 - the name AMP reads
    response = [(b"domains", _COUNTS), (b"missing", amp.ListOf(amp.Integer()))]  # noqa: RUF012


class GatewayClaim(ControlCommand):
    """
    Lease one shard's held messages of some domains to an ATRN session.

    Arguments: C{domains}; C{holder}, the session's lease name. Response: C{held}, the
    messages now leased (C{queue_id}, C{positions}).
    """

    commandName = b"gateway-claim"  # noqa: N815 - the name AMP reads
    arguments = [(b"domains", amp.ListOf(amp.Unicode())), (b"holder", amp.Unicode())]  # noqa: RUF012
    response = [(b"held", _HELD)]  # noqa: RUF012 - the name AMP reads


class GatewayRecord(ControlCommand):
    """
    Record an ATRN session's results for one leased message and give its lease back.

    Arguments: C{queue_id}, C{holder}, C{results}. Response: C{removed}.
    """

    commandName = b"gateway-record"  # noqa: N815 - the name AMP reads
    arguments = [  # noqa: RUF012 - the name AMP reads
        (b"queue_id", amp.Unicode()),
        (b"holder", amp.Unicode()),
        (b"results", _RESULTS),
    ]
    response = [(b"removed", amp.Boolean())]  # noqa: RUF012 - the name AMP reads


class GatewayGiveBack(ControlCommand):
    """
    Give back every lease of an ATRN session in one shard: its messages stay held.

    Arguments: C{holder}. Response: nothing.
    """

    commandName = b"gateway-give-back"  # noqa: N815 - the name AMP reads
    arguments = [(b"holder", amp.Unicode())]  # noqa: RUF012 - the name AMP reads
    response = []  # noqa: RUF012 - the name AMP reads


def targets_to_wire(targets: Mapping[str, Route]) -> list[dict[str, str]]:
    """
    @param targets: per domain, the route its mail takes.
    @return: the C{targets} argument of L{GatewayEtrn}.
    """
    return [
        {"domain": d, "kind": r.kind.value, "target": r.target or ""} for d, r in targets.items()
    ]


def targets_from_wire(items: Sequence[Mapping[str, str]]) -> dict[str, Route]:
    """
    @param items: the C{targets} argument of L{GatewayEtrn}.
    @return: per domain, the route its mail takes.
    """
    return {
        item["domain"]: Route(RouteKind(item["kind"]), item["target"] or None) for item in items
    }


def results_to_wire(results: Sequence[RecipientResult]) -> list[dict[str, Any]]:
    """
    @param results: recipient results.
    @return: the C{results} argument of L{GatewayRecord}.
    """
    return [
        {
            "position": r.position,
            "state": r.state.value,
            "status": r.status,
            "diagnostic": r.diagnostic,
            "remote_mta": r.remote_mta or "",
        }
        for r in results
    ]


def results_from_wire(items: Sequence[Mapping[str, Any]]) -> list[RecipientResult]:
    """
    @param items: the C{results} argument of L{GatewayRecord}.
    @return: the recipient results.
    """
    return [
        RecipientResult(
            item["position"],
            RecipientState(item["state"]),
            item["status"],
            item["diagnostic"],
            item["remote_mta"] or None,
        )
        for item in items
    ]


def register_gateway_commands(registry: ControlRegistry, held: HeldMail) -> None:
    """
    Register the gateway commands of this process (every process does).

    @param registry: the process's control registry.
    @param held: the held mail of its shard.
    """

    def etrn(domains: list[str], targets: list[dict[str, str]]) -> Deferred[Answer]:
        d = held.etrn(domains, targets_from_wire(targets))
        return d.addCallback(lambda count: {"messages": count})

    def count() -> Deferred[Answer]:
        async def counted() -> Answer:
            rows = await held.rows()
            per: dict[str, tuple[set[str], int]] = {}
            for queue_id, _, domain in rows:
                ids, recipients = per.get(domain, (set(), 0))
                ids.add(queue_id)
                per[domain] = (ids, recipients + 1)
            return {
                "domains": [
                    {"domain": d, "messages": len(ids), "recipients": n}
                    for d, (ids, n) in sorted(per.items())
                ],
                "missing": [],
            }

        return Deferred.fromCoroutine(counted())

    def claim(domains: list[str], holder: str) -> Deferred[Answer]:
        d = Deferred.fromCoroutine(held.claim(domains, holder))
        return d.addCallback(
            lambda found: {
                "held": [{"queue_id": m.queue_id, "positions": list(m.positions)} for m in found]
            }
        )

    def record(queue_id: str, holder: str, results: list[dict[str, Any]]) -> Deferred[Answer]:
        d = Deferred.fromCoroutine(held.record(queue_id, holder, results_from_wire(results)))
        return d.addCallback(lambda removed: {"removed": removed})

    def give_back(holder: str) -> Answer:
        held.give_back(holder)
        return {}

    registry.register(GatewayEtrn, etrn, combine=combine_etrn)
    registry.register(GatewayHeld, count, combine=combine_held)
    registry.register(GatewayClaim, claim)
    registry.register(GatewayRecord, record)
    registry.register(GatewayGiveBack, give_back)


def register_release_command(
    registry: ControlRegistry,
    targets: Callable[[Sequence[str]], tuple[dict[str, Route], list[str]]],
    release: Release,
) -> None:
    """
    Register C{gateway-release} (the first process does; it reaches every process).

    @param registry: the first process's control registry.
    @param targets: for the domains asked for (all when empty), the route each releasable one
        takes, and the domains skipped.
    @param release: releases in every process.
    """

    def handle(domains: list[str]) -> Deferred[Answer]:
        routes, skipped = targets([d.lower().rstrip(".") for d in domains])
        if not routes:
            return succeed({"messages": 0, "released": [], "skipped": skipped})
        d = release(sorted(routes), routes)
        return d.addCallback(
            lambda count: {"messages": count, "released": sorted(routes), "skipped": skipped}
        )

    registry.register(GatewayRelease, handle)


def combine_etrn(answers: Mapping[int, Answer | None]) -> Answer:
    """
    @param answers: each shard's answer to L{GatewayEtrn}, L{None} when it did not answer.
    @return: the messages of every shard that answered.
    """
    return {"messages": sum(a["messages"] for a in answers.values() if a is not None)}


def combine_held(answers: Mapping[int, Answer | None]) -> Answer:
    """
    @param answers: each shard's answer to L{GatewayHeld}.
    @return: the counts summed per domain, and the shards that did not answer.
    """
    totals: dict[str, list[int]] = {}
    for answer in answers.values():
        if answer is None:
            continue
        for item in answer["domains"]:
            pair = totals.setdefault(item["domain"], [0, 0])
            pair[0] += item["messages"]
            pair[1] += item["recipients"]
    return {
        "domains": [
            {"domain": d, "messages": m, "recipients": r} for d, (m, r) in sorted(totals.items())
        ],
        "missing": sorted(k for k, a in answers.items() if a is None),
    }


class Release(Protocol):
    """
    Releases gateway domains in every process (ETRN's effect).
    """

    def __call__(self, domains: Sequence[str], targets: Mapping[str, Route]) -> Deferred[int]:
        """
        @param domains: the gateway domains.
        @param targets: per domain, the route its mail takes now.
        @return: the number of held messages found in every shard.
        """


class DispatcherRelease:
    """
    L{Release} in the first process: the control dispatcher carries it out everywhere.
    """

    def __init__(self, dispatcher: Callable[[], ControlDispatcher | None]) -> None:
        """
        @param dispatcher: gives the first process's dispatcher (built after the listeners).
        """
        self._dispatcher = dispatcher

    def __call__(self, domains: Sequence[str], targets: Mapping[str, Route]) -> Deferred[int]:
        """
        Release in every process through the dispatcher.
        """
        dispatcher = self._dispatcher()
        if dispatcher is None:
            raise RuntimeError("no control dispatcher yet")
        arguments = {"domains": list(domains), "targets": targets_to_wire(targets)}
        d = dispatcher.call(GatewayEtrn, arguments)
        return d.addCallback(lambda answer: int(answer["messages"]))


def _messages(answer: Answer) -> int:
    return int(answer["messages"])


class ControlSocketRelease:
    """
    L{Release} in a child process: asks the first process over the control socket.
    """

    def __init__(self, reactor: Any, path: Path) -> None:
        """
        @param reactor: the reactor (an C{IReactorUNIX}).
        @param path: the control socket.
        """
        self._reactor = reactor
        self._path = path

    def __call__(self, domains: Sequence[str], targets: Mapping[str, Route]) -> Deferred[int]:
        """
        Release in every process through the first process's control socket.
        """
        endpoint = UNIXClientEndpoint(self._reactor, str(self._path), timeout=10)
        connected: Deferred[amp.AMP] = connectProtocol(endpoint, amp.AMP())

        def ask(protocol: amp.AMP) -> Deferred[int]:
            d: Deferred[Answer] = protocol.callRemote(
                GatewayEtrn, domains=list(domains), targets=targets_to_wire(targets)
            )

            def done(result: Any) -> Any:
                protocol.transport.loseConnection()  # type: ignore[union-attr]
                return result

            answered: Deferred[int] = d.addBoth(done).addCallback(_messages)
            return answered

        return connected.addCallback(ask)


class Shards:
    """
    The held mail of every shard, seen from the first process (the ATRN session): its own
    shard directly, the others over the links to their processes.
    """

    def __init__(self, local: HeldMail, children: IChildren | None = None) -> None:
        """
        @param local: the first process's own held mail (shard 0).
        @param children: the links to the child processes, or L{None} without any.
        """
        self._local = local
        self.children = children

    def shards(self) -> list[int]:
        """@return: shard 0 and every child shard."""
        return [0, *(self.children.expected() if self.children is not None else ())]

    def claim(
        self, shard: int, domains: Sequence[str], holder: str
    ) -> Deferred[list[HeldMessage]]:
        """
        Lease a shard's held messages of some domains.

        @param shard: the shard.
        @param domains: the domains.
        @param holder: the lease name.
        @return: the messages leased.
        """
        if shard == 0:
            return Deferred.fromCoroutine(self._local.claim(domains, holder))
        assert self.children is not None
        d = self.children.call(shard, GatewayClaim, {"domains": list(domains), "holder": holder})
        return d.addCallback(
            lambda a: [HeldMessage(i["queue_id"], tuple(i["positions"])) for i in a["held"]]
        )

    def record(
        self, shard: int, queue_id: str, holder: str, results: Sequence[RecipientResult]
    ) -> Deferred[bool]:
        """
        Record results of a leased message at its shard and give its lease back.

        @return: whether the message left the queue.
        """
        if shard == 0:
            return Deferred.fromCoroutine(self._local.record(queue_id, holder, results))
        assert self.children is not None
        arguments = {"queue_id": queue_id, "holder": holder, "results": results_to_wire(results)}
        d = self.children.call(shard, GatewayRecord, arguments)
        return d.addCallback(lambda a: bool(a["removed"]))

    def give_back(self, shard: int, holder: str) -> Deferred[None]:
        """
        Give back a holder's leases in a shard.
        """
        if shard == 0:
            self._local.give_back(holder)
            return succeed(None)
        assert self.children is not None
        return self.children.call(shard, GatewayGiveBack, {"holder": holder}).addCallback(
            lambda _: None
        )
