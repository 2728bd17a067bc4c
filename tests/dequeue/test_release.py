"""
Tests for L{mdtwist.dequeue.release}: the gateway control commands, their wire forms and the
objects that reach every shard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactor
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.registry import Answer, ControlDispatcher, ControlProtocol, ControlRegistry
from mdtwist.dequeue.gateways import EtrnTarget, Gateway, GatewayBook, ProviderSettings
from mdtwist.dequeue.held import HeldMessage
from mdtwist.dequeue.provider import GatewayProvider
from mdtwist.dequeue.release import (
    ControlSocketRelease,
    DispatcherRelease,
    GatewayClaim,
    GatewayEtrn,
    GatewayGiveBack,
    GatewayHeld,
    GatewayRecord,
    GatewayRelease,
    Shards,
    combine_etrn,
    combine_held,
    register_gateway_commands,
    register_release_command,
    results_from_wire,
    results_to_wire,
    targets_from_wire,
    targets_to_wire,
)
from mdtwist.envelope import RecipientState
from mdtwist.route import Route
from mdtwist.spool.model import RecipientResult
from tests.dequeue.test_held import GATE, OTHER, _Setup, held
from tests.dequeue.test_provider import FakeRelease


class FakeChildren:
    """Child links that answer from a table and record the calls."""

    def __init__(self, answers: dict[bytes, Answer]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, bytes, Answer]] = []

    def expected(self) -> list[int]:
        """One child: shard 1."""
        return [1]

    def call(self, shard: int, command: type[amp.Command], arguments: Answer) -> Deferred[Answer]:
        """Record the call and answer it."""
        self.calls.append((shard, command.commandName, arguments))
        return succeed(self.answers[command.commandName])


class WireTests(SynchronousTestCase):
    """The wire forms survive a round trip, through AMP's own encoding too."""

    def test_targets(self) -> None:
        """Remote and host targets."""
        targets = {GATE: Route.remote(), OTHER: Route.sharing_peer("[192.0.2.9]:2525")}
        wire = targets_to_wire(targets)
        encoded = GatewayEtrn.makeArguments({"domains": [GATE], "targets": wire}, None)
        decoded = GatewayEtrn.parseArguments(encoded, None)
        self.assertEqual(targets_from_wire(decoded["targets"]), targets)

    def test_results(self) -> None:
        """Every state, with and without a remote MTA."""
        results = [
            RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "250 ok", "cust.example"),
            RecipientResult(2, RecipientState.FAILED, "5.1.1", "550 no"),
            RecipientResult(3, RecipientState.PENDING, "4.2.0", "450 later"),
        ]
        self.assertEqual(results_from_wire(results_to_wire(results)), results)

    def test_combine(self) -> None:
        """ETRN counts add up; held counts add up per domain, missing shards are named."""
        self.assertEqual(
            combine_etrn({0: {"messages": 2}, 1: None, 2: {"messages": 3}}), {"messages": 5}
        )
        self.assertEqual(
            combine_held(
                {
                    0: {
                        "domains": [{"domain": GATE, "messages": 1, "recipients": 2}],
                        "missing": [],
                    },
                    1: {
                        "domains": [
                            {"domain": GATE, "messages": 2, "recipients": 2},
                            {"domain": OTHER, "messages": 1, "recipients": 1},
                        ],
                        "missing": [],
                    },
                    2: None,
                }
            ),
            {
                "domains": [
                    {"domain": GATE, "messages": 3, "recipients": 4},
                    {"domain": OTHER, "messages": 1, "recipients": 1},
                ],
                "missing": [2],
            },
        )


class CommandTests(_Setup):
    """The commands carried out on a real shard through the dispatcher."""

    def setUp(self) -> None:
        super().setUp()
        registry = ControlRegistry()
        register_gateway_commands(registry, self.held)
        self.dispatcher = ControlDispatcher(
            registry,
            shard=0,
            children=FakeChildren(
                {
                    b"gateway-etrn": {"messages": 4},
                    b"gateway-held": {
                        "domains": [{"domain": GATE, "messages": 1, "recipients": 1}],
                        "missing": [],
                    },
                }
            ),
        )

    def call(self, command: type[amp.Command], **arguments: Any) -> Answer:
        return self.successResultOf(self.dispatcher.call(command, arguments))

    def test_etrn_everywhere(self) -> None:
        """C{gateway-etrn} counts this shard's and the child's held messages."""
        self.enqueue(held(f"a@{GATE}"))
        release = DispatcherRelease(lambda: self.dispatcher)
        self.assertEqual(self.successResultOf(release([GATE], {GATE: Route.remote()})), 5)
        self.assertEqual(len(self.remote.calls), 1)

    def test_held_counts(self) -> None:
        """C{gateway-held} counts held messages and recipients per domain in every shard."""
        self.enqueue(held(f"a@{GATE}"), held(f"b@{GATE}"), held(f"c@{OTHER}"))
        self.assertEqual(
            self.call(GatewayHeld),
            {
                "domains": [
                    {"domain": GATE, "messages": 2, "recipients": 3},
                    {"domain": OTHER, "messages": 1, "recipients": 1},
                ],
                "missing": [],
            },
        )

    def test_claim_record_give_back(self) -> None:
        """Claim, record and give back, as the ATRN session calls them for another shard."""
        first = self.enqueue(held(f"a@{GATE}"))
        second = self.enqueue(held(f"b@{GATE}"))
        answer = self.call(GatewayClaim, domains=[GATE], holder="atrn-1")
        self.assertEqual(
            answer["held"],
            [{"queue_id": first, "positions": [0]}, {"queue_id": second, "positions": [0]}],
        )
        result = RecipientResult(0, RecipientState.DELIVERED, "2.0.0", "250 ok")
        recorded = self.call(
            GatewayRecord, queue_id=first, holder="atrn-1", results=results_to_wire([result])
        )
        self.assertEqual(recorded, {"removed": True})
        self.assertEqual(self.call(GatewayGiveBack, holder="atrn-1"), {})
        self.assertIsNone(self.leases.holder(second))

    def test_control_socket_release(self) -> None:
        """
        A child's release goes over the control socket to the first process's dispatcher, and
        the connection is closed after the answer.
        """
        self.enqueue(held(f"a@{GATE}"))
        reactor = MemoryReactor()
        release = ControlSocketRelease(reactor, Path("/run/mdtwist/control.sock"))
        d = release([GATE], {GATE: Route.remote()})
        path, factory, _, _ = reactor.unixClients[0]
        self.assertEqual(path, "/run/mdtwist/control.sock")
        server = ControlProtocol(self.dispatcher)
        client = factory.buildProtocol(UNIXAddress(path))
        client_transport = iosim.makeFakeClient(client)
        pump = iosim.connect(server, iosim.makeFakeServer(server), client, client_transport)
        pump.flush()
        self.assertEqual(self.successResultOf(d), 5)
        self.assertTrue(client_transport.disconnecting)


class ShardsTests(_Setup):
    """L{Shards}: shard 0 directly, the others over the links."""

    def test_children(self) -> None:
        """Claims, records and give-backs for shard 1 go over its link."""
        children = FakeChildren(
            {
                b"gateway-claim": {"held": [{"queue_id": "010000000001", "positions": [1, 2]}]},
                b"gateway-record": {"removed": False},
                b"gateway-give-back": {},
            }
        )
        shards = Shards(self.held, children)
        self.assertEqual(shards.shards(), [0, 1])
        self.assertEqual(
            self.successResultOf(shards.claim(1, [GATE], "atrn-1")),
            [HeldMessage("010000000001", (1, 2))],
        )
        result = RecipientResult(1, RecipientState.DELIVERED, "2.0.0", "250 ok")
        self.assertFalse(
            self.successResultOf(shards.record(1, "010000000001", "atrn-1", [result]))
        )
        self.successResultOf(shards.give_back(1, "atrn-1"))
        self.assertEqual(
            [(shard, name) for shard, name, _ in children.calls],
            [(1, b"gateway-claim"), (1, b"gateway-record"), (1, b"gateway-give-back")],
        )

    def test_local(self) -> None:
        """Shard 0 is this process's own held mail."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        shards = Shards(self.held)
        self.assertEqual(shards.shards(), [0])
        self.assertEqual(
            self.successResultOf(shards.claim(0, [GATE], "atrn-1")), [HeldMessage(queue_id, (0,))]
        )
        self.successResultOf(shards.give_back(0, "atrn-1"))
        self.assertIsNone(self.leases.holder(queue_id))


class ReleaseCommandTests(SynchronousTestCase):
    """C{gateway-release}: the operator's release, with targets from the configuration."""

    def test_release(self) -> None:
        """
        Named domains go to their targets; unknown ones and "requester" ones are skipped;
        an empty list means every gateway; nothing releasable answers at once.
        """
        book = GatewayBook(
            [
                Gateway(GATE, GATE),
                Gateway(OTHER, OTHER, etrn_target=EtrnTarget.REQUESTER),
                Gateway(
                    "host.test",
                    "host.test",
                    etrn_target=EtrnTarget.HOST,
                    etrn_host="[192.0.2.9]:26",
                ),
            ]
        )
        release = FakeRelease(count=3)
        provider = GatewayProvider(book, ProviderSettings(), None, release=release)  # type: ignore[arg-type]
        registry = ControlRegistry()
        register_release_command(registry, provider.release_targets, release)
        dispatcher = ControlDispatcher(registry)
        answer = self.successResultOf(
            dispatcher.call(GatewayRelease, {"domains": ["Gate.Test.", OTHER, "nope.test"]})
        )
        self.assertEqual(
            answer, {"messages": 3, "released": [GATE], "skipped": [OTHER, "nope.test"]}
        )
        self.assertEqual(release.calls[0], ([GATE], {GATE: Route.remote()}))
        everything = self.successResultOf(dispatcher.call(GatewayRelease, {"domains": []}))
        self.assertEqual(everything["released"], [GATE, "host.test"])
        self.assertEqual(release.calls[1][1]["host.test"], Route.sharing_peer("[192.0.2.9]:26"))
        nothing = self.successResultOf(dispatcher.call(GatewayRelease, {"domains": [OTHER]}))
        self.assertEqual(nothing, {"messages": 0, "released": [], "skipped": [OTHER]})
        self.assertEqual(len(release.calls), 2)
