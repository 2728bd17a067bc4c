"""
Tests for L{mdtwist.delivery.router}: the decision table, the host parser, the 5xx tally and
the grouping of recipients.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery import router
from mdtwist.delivery.hosts import MXHost, MXResult, MXResultKind
from mdtwist.delivery.router import (
    Bounce,
    Connect,
    Decision,
    Defer,
    Destination,
    DomainKind,
    Group,
    Hold,
    Hop,
    HostOutcome,
    HostSpec,
    HostSpecError,
    Local,
    Lookup,
    Mode,
    Progress,
    Resolve,
    RoutingPolicy,
    Verdict,
    group_recipients,
    judge_recipient,
    parse_host_spec,
    route,
)

SMART = HostSpec("relay.example.net", 587)
BRACKETED = HostSpec("relay.example.net", 25, bracketed=True)
REMOTE = Destination("example.test")
MX_HOSTS = (
    MXHost("mx1.example.test", 10, ("192.0.2.1", "192.0.2.2")),
    MXHost("mx2.example.test", 20, ("192.0.2.3",)),
)
DIRECT_OK = MXResult(MXResultKind.MX, MX_HOSTS)
SMART_OK = MXResult(MXResultKind.MX, (MXHost("relay.example.net", 0, ("198.51.100.1",)),))
SMART_CONNECT = Connect((Hop("relay.example.net", 587, ("198.51.100.1",), 0, True),), True)


def policy(mode: Mode = Mode.DIRECT, **kwargs: object) -> RoutingPolicy:
    """
    A policy with the smart host set unless the mode is direct.
    """
    smart = None if mode is Mode.DIRECT else SMART
    return RoutingPolicy(mode, kwargs.pop("smart_host", smart), **kwargs)  # type: ignore[arg-type]


def result(kind: MXResultKind, own: int | None = None) -> MXResult:
    """
    An unusable MX result of the given kind.
    """
    return MXResult(kind, (), "detail", own)


class HostSpecTests(SynchronousTestCase):
    """
    L{parse_host_spec} reads C{host}, C{[host]}, C{host:port} and C{[host]:port}.
    """

    def test_forms(self) -> None:
        """
        Each accepted form gives host, port and whether the MX lookup is skipped.
        """
        cases = {
            "relay.example.net": HostSpec("relay.example.net", 25, False),
            "Relay.Example.NET.": HostSpec("relay.example.net", 25, False),
            "[relay.example.net]": HostSpec("relay.example.net", 25, True),
            "relay.example.net:587": HostSpec("relay.example.net", 587, False),
            " [relay.example.net]:2525 ": HostSpec("relay.example.net", 2525, True),
            "192.0.2.1:26": HostSpec("192.0.2.1", 26, False),
            "[192.0.2.1]": HostSpec("192.0.2.1", 25, True),
            "[2001:DB8::1]:587": HostSpec("2001:db8::1", 587, True),
            "[IPv6:2001:db8::1]": HostSpec("2001:db8::1", 25, True),
            "mail_relay": HostSpec("mail_relay", 25, False),
        }
        for text, expected in cases.items():
            self.assertEqual(parse_host_spec(text), expected, text)

    def test_default_port(self) -> None:
        """
        The default port applies when none is written.
        """
        self.assertEqual(parse_host_spec("[relay.test]", default_port=587).port, 587)

    def test_errors(self) -> None:
        """
        Bad specifications are refused with a message that says what is wrong.
        """
        cases = {
            "": "empty",
            "   ": "empty",
            "[relay.test": "without ']'",
            "relay.test]": "without '['",
            "[relay.test]x": "only ':port'",
            "2001:db8::1": "in brackets",
            "relay.test:": "port must be",
            "relay.test:0": "port must be",
            "relay.test:65536": "port must be",
            "relay.test:smtp": "port must be",
            "[]": "empty host",
            "bad host.test": "not a valid host name",
            "-bad.test": "not a valid host name",
            "a..b": "not a valid host name",
            "[IPv6:192.0.2.1]": "not an IPv6 address",
        }
        for text, words in cases.items():
            error = self.assertRaises(HostSpecError, parse_host_spec, text)
            self.assertIn(words, str(error), text)

    def test_lookup(self) -> None:
        """
        A bracketed host or an IP is resolved by address; a plain name by MX. An IP is given
        to the resolver as an address literal.
        """
        self.assertEqual(parse_host_spec("relay.test").lookup, Lookup.MX)
        self.assertEqual(parse_host_spec("[relay.test]").lookup, Lookup.ADDRESS)
        self.assertEqual(parse_host_spec("192.0.2.1").lookup, Lookup.ADDRESS)
        self.assertEqual(parse_host_spec("192.0.2.1").lookup_name, "[192.0.2.1]")
        self.assertEqual(parse_host_spec("[::1]").lookup_name, "[IPv6:::1]")
        self.assertEqual(parse_host_spec("relay.test").lookup_name, "relay.test")

    def test_str_round_trip(self) -> None:
        """
        The text form parses back to the same specification.
        """
        for text in ("relay.test", "[relay.test]:587", "[2001:db8::1]", "192.0.2.1:26"):
            spec = parse_host_spec(text)
            self.assertEqual(parse_host_spec(str(spec)), spec, text)


class RoutingPolicyTests(SynchronousTestCase):
    """
    L{RoutingPolicy} refuses settings that cannot work.
    """

    def test_smart_host_required(self) -> None:
        """
        The smart-host modes need a smart host.
        """
        for mode in (Mode.SMARTHOST, Mode.DIRECT_THEN_SMARTHOST):
            self.assertRaises(ValueError, RoutingPolicy, mode)

    def test_two_addresses_at_least(self) -> None:
        """
        At least two addresses must be allowed per attempt.
        """
        self.assertRaises(ValueError, RoutingPolicy, max_addresses=1)

    def test_sharing_needs_peer(self) -> None:
        """
        A sharing destination needs its peer.
        """
        self.assertRaises(ValueError, Destination, "example.test", DomainKind.SHARING_PEER)


class DirectTests(SynchronousTestCase):
    """
    In direct mode mail goes to the MX hosts, and resolution outcomes decide the rest.
    """

    def decide(self, progress: Progress, **kwargs: object) -> Decision:
        return route(policy(Mode.DIRECT, **kwargs), REMOTE, progress)

    def test_resolve_first(self) -> None:
        """
        The first step is the MX lookup of the domain.
        """
        self.assertEqual(self.decide(Progress()), Resolve("example.test", Lookup.MX))

    def test_connect(self) -> None:
        """
        Resolved hosts become hops on port 25, in order.
        """
        self.assertEqual(
            self.decide(Progress(direct=DIRECT_OK)),
            Connect(
                (
                    Hop("mx1.example.test", 25, ("192.0.2.1", "192.0.2.2"), 10),
                    Hop("mx2.example.test", 25, ("192.0.2.3",), 20),
                )
            ),
        )

    def test_all_failed(self) -> None:
        """
        When every host failed, the mail is deferred with the last status.
        """
        progress = Progress(direct=DIRECT_OK, direct_failed=True, direct_status="4.4.2")
        self.assertEqual(
            self.decide(progress), Defer("4.4.2", "no MX host of example.test took the message")
        )
        failed = self.decide(Progress(direct=DIRECT_OK, direct_failed=True))
        self.assertIsInstance(failed, Defer)
        assert isinstance(failed, Defer)
        self.assertEqual(failed.status, "4.4.1")

    def test_table(self) -> None:
        """
        Each unusable result gives the status of the decision table, flags off.
        """
        cases = {
            MXResultKind.NULL_MX: Bounce,
            MXResultKind.SELF_BEST: Bounce,
            MXResultKind.NO_DOMAIN: Bounce,
            MXResultKind.NO_ADDRESS: Defer,
            MXResultKind.UNUSABLE_MX: Bounce,
            MXResultKind.TEMPORARY: Defer,
        }
        statuses = {
            MXResultKind.NULL_MX: "5.1.10",
            MXResultKind.SELF_BEST: "5.4.6",
            MXResultKind.NO_DOMAIN: "5.1.2",
            MXResultKind.NO_ADDRESS: "4.4.4",
            MXResultKind.UNUSABLE_MX: "5.4.4",
            MXResultKind.TEMPORARY: "4.4.3",
        }
        for kind, cls in cases.items():
            decision = self.decide(Progress(direct=result(kind)))
            self.assertIsInstance(decision, cls, kind)
            assert isinstance(decision, Bounce | Defer)
            self.assertEqual(decision.status, statuses[kind], kind)

    def test_bounce_no_address(self) -> None:
        """
        With "bounce if no A or MX", a domain without addresses bounces at once.
        """
        decision = self.decide(
            Progress(direct=result(MXResultKind.NO_ADDRESS)), bounce_no_address=True
        )
        self.assertEqual(decision, Bounce("5.4.4", "detail"))

    def test_unusable_mx_defer(self) -> None:
        """
        With bouncing on unusable MX switched off, such a domain is deferred.
        """
        decision = self.decide(
            Progress(direct=result(MXResultKind.UNUSABLE_MX)), bounce_unusable_mx=False
        )
        self.assertEqual(decision, Defer("4.4.4", "detail"))

    def test_worse_mx_with_unusable_better(self) -> None:
        """
        When we are a worse MX and the better ones cannot be used, the mail waits (4.4.4),
        even with the bounce flags on.
        """
        decision = self.decide(
            Progress(direct=result(MXResultKind.UNUSABLE_MX, own=20)), bounce_no_address=True
        )
        self.assertEqual(decision, Defer("4.4.4", "detail"))

    def test_down_addresses_left_out(self) -> None:
        """
        Addresses known to be down are left out; a host left without addresses is dropped.
        """
        decision = route(
            policy(),
            REMOTE,
            Progress(direct=DIRECT_OK),
            down={("192.0.2.1", 25), ("192.0.2.3", 25)},
        )
        self.assertEqual(decision, Connect((Hop("mx1.example.test", 25, ("192.0.2.2",), 10),)))

    def test_all_down_tried_anyway(self) -> None:
        """
        When every address is down, all are tried anyway.
        """
        down = {("192.0.2.1", 25), ("192.0.2.2", 25), ("192.0.2.3", 25)}
        decision = route(policy(), REMOTE, Progress(direct=DIRECT_OK), down=down)
        self.assertIsInstance(decision, Connect)
        assert isinstance(decision, Connect)
        self.assertEqual(len(decision.hops), 2)

    def test_down_on_other_port(self) -> None:
        """
        An address down on another port is still used.
        """
        decision = route(policy(), REMOTE, Progress(direct=DIRECT_OK), down={("192.0.2.1", 587)})
        assert isinstance(decision, Connect)
        self.assertEqual(decision.hops[0].addresses, ("192.0.2.1", "192.0.2.2"))

    def test_address_limit(self) -> None:
        """
        At most C{max_addresses} addresses are tried in one series.
        """
        decision = self.decide(Progress(direct=DIRECT_OK), max_addresses=2)
        self.assertEqual(
            decision, Connect((Hop("mx1.example.test", 25, ("192.0.2.1", "192.0.2.2"), 10),))
        )

    def test_direct_never_uses_smart_host(self) -> None:
        """
        In direct mode a configured smart host is not used even when everything fails.
        """
        p = RoutingPolicy(Mode.DIRECT, SMART)
        for progress in (
            Progress(direct=DIRECT_OK, direct_failed=True),
            Progress(direct=result(MXResultKind.TEMPORARY)),
            Progress(direct=result(MXResultKind.NO_ADDRESS)),
        ):
            self.assertIsInstance(route(p, REMOTE, progress), Defer)


class SmartHostTests(SynchronousTestCase):
    """
    In smart-host mode every remote recipient goes to the smart host; its failures defer.
    """

    def test_resolve_smart_host(self) -> None:
        """
        The smart host is resolved by MX unless bracketed; the destination is not resolved.
        """
        self.assertEqual(
            route(policy(Mode.SMARTHOST), REMOTE, Progress()),
            Resolve("relay.example.net", Lookup.MX, relay=True),
        )
        self.assertEqual(
            route(policy(Mode.SMARTHOST, smart_host=BRACKETED), REMOTE, Progress()),
            Resolve("relay.example.net", Lookup.ADDRESS, relay=True),
        )
        ip = HostSpec("192.0.2.9", 25)
        self.assertEqual(
            route(policy(Mode.SMARTHOST, smart_host=ip), REMOTE, Progress()),
            Resolve("[192.0.2.9]", Lookup.ADDRESS, relay=True),
        )

    def test_connect(self) -> None:
        """
        The smart host's addresses become hops on its port, marked as the smart host.
        """
        self.assertEqual(
            route(policy(Mode.SMARTHOST), REMOTE, Progress(relay=SMART_OK)), SMART_CONNECT
        )

    def test_failures_defer(self) -> None:
        """
        A smart host that cannot be resolved or reached defers, never bounces.
        """
        p = policy(Mode.SMARTHOST)
        cases = {
            MXResultKind.TEMPORARY: "4.4.3",
            MXResultKind.SELF_BEST: "4.4.6",
            MXResultKind.NO_DOMAIN: "4.4.4",
            MXResultKind.NULL_MX: "4.4.4",
            MXResultKind.NO_ADDRESS: "4.4.4",
        }
        for kind, status in cases.items():
            decision = route(p, REMOTE, Progress(relay=result(kind)))
            self.assertIsInstance(decision, Defer, kind)
            assert isinstance(decision, Defer)
            self.assertEqual(decision.status, status, kind)
        failed = route(
            p, REMOTE, Progress(relay=SMART_OK, relay_failed=True, relay_status="4.7.0")
        )
        self.assertEqual(
            failed, Defer("4.7.0", "smart host relay.example.net:587 did not take it")
        )


class DirectThenSmartHostTests(SynchronousTestCase):
    """
    Direct first; the smart host only when the destination cannot be resolved or reached.
    """

    def setUp(self) -> None:
        self.policy = policy(Mode.DIRECT_THEN_SMARTHOST)

    def test_direct_first(self) -> None:
        """
        A fresh attempt resolves the destination, then connects directly.
        """
        self.assertEqual(
            route(self.policy, REMOTE, Progress()), Resolve("example.test", Lookup.MX)
        )
        decision = route(self.policy, REMOTE, Progress(direct=DIRECT_OK))
        assert isinstance(decision, Connect)
        self.assertFalse(decision.relay)
        self.assertFalse(any(h.smart_host for h in decision.hops))

    def test_fallback_cases(self) -> None:
        """
        Resolution failures and unreachable hosts go to the smart host.
        """
        for progress in (
            Progress(direct=DIRECT_OK, direct_failed=True),
            Progress(direct=result(MXResultKind.NO_DOMAIN)),
            Progress(direct=result(MXResultKind.NO_ADDRESS)),
            Progress(direct=result(MXResultKind.UNUSABLE_MX)),
            Progress(direct=result(MXResultKind.TEMPORARY)),
        ):
            self.assertEqual(
                route(self.policy, REMOTE, progress),
                Resolve("relay.example.net", Lookup.MX, relay=True),
                progress,
            )
            resolved = attrs_evolve(progress, relay=SMART_OK)
            self.assertEqual(route(self.policy, REMOTE, resolved), SMART_CONNECT, progress)

    def test_final_answers_not_forwarded(self) -> None:
        """
        Null MX and "we are the best MX" bounce; the smart host is not used.
        """
        self.assertEqual(
            route(self.policy, REMOTE, Progress(direct=result(MXResultKind.NULL_MX))),
            Bounce("5.1.10", "example.test accepts no mail (null MX)"),
        )
        decision = route(self.policy, REMOTE, Progress(direct=result(MXResultKind.SELF_BEST)))
        assert isinstance(decision, Bounce)
        self.assertEqual(decision.status, "5.4.6")

    def test_bounce_no_address_flag(self) -> None:
        """
        With "bounce if no A or MX", missing domains and addresses bounce instead of going
        to the smart host.
        """
        p = policy(Mode.DIRECT_THEN_SMARTHOST, bounce_no_address=True)
        statuses = {
            MXResultKind.NO_DOMAIN: "5.1.2",
            MXResultKind.NO_ADDRESS: "5.4.4",
            MXResultKind.UNUSABLE_MX: "5.4.4",
        }
        for kind, status in statuses.items():
            self.assertEqual(
                route(p, REMOTE, Progress(direct=result(kind))), Bounce(status, "detail")
            )
        decision = route(p, REMOTE, Progress(direct=result(MXResultKind.TEMPORARY)))
        self.assertIsInstance(decision, Resolve)

    def test_never_when_we_are_mx(self) -> None:
        """
        For a domain whose MX list names this server, the smart host is never used.
        """
        worse = MXResult(MXResultKind.MX, MX_HOSTS, "", own_preference=30)
        decision = route(self.policy, REMOTE, Progress(direct=worse, direct_failed=True))
        self.assertEqual(decision, Defer("4.4.1", "no MX host of example.test took the message"))
        temporary = route(
            self.policy, REMOTE, Progress(direct=result(MXResultKind.TEMPORARY, own=30))
        )
        self.assertEqual(temporary, Defer("4.4.3", "detail"))

    def test_smart_host_fails_too(self) -> None:
        """
        When the smart host fails as well, the mail is deferred.
        """
        progress = Progress(
            direct=DIRECT_OK, direct_failed=True, relay=SMART_OK, relay_failed=True
        )
        self.assertIsInstance(route(self.policy, REMOTE, progress), Defer)


class OtherDestinationTests(SynchronousTestCase):
    """
    Local, gateway and sharing destinations never go to the smart host.
    """

    def test_local(self) -> None:
        """
        Local domains are delivered locally in every mode.
        """
        for mode in Mode:
            self.assertEqual(
                route(policy(mode), Destination("ours.test", DomainKind.LOCAL), Progress()),
                Local(),
            )

    def test_gateway(self) -> None:
        """
        Gateway domains are held in every mode.
        """
        for mode in Mode:
            decision = route(policy(mode), Destination("gw.test", DomainKind.GATEWAY), Progress())
            self.assertEqual(decision, Hold("held for gateway domain gw.test"))

    def test_sharing_peer(self) -> None:
        """
        Sharing mail goes to the peer's addresses on its port, never by MX and never to the
        smart host, in every mode.
        """
        peer = HostSpec("peer.ours.test", 2525)
        destination = Destination("ours.test", DomainKind.SHARING_PEER, peer)
        peer_ok = MXResult(MXResultKind.ADDRESS, (MXHost("peer.ours.test", 0, ("192.0.2.50",)),))
        for mode in Mode:
            p = policy(mode)
            self.assertEqual(
                route(p, destination, Progress()), Resolve("peer.ours.test", Lookup.ADDRESS)
            )
            self.assertEqual(
                route(p, destination, Progress(direct=peer_ok)),
                Connect((Hop("peer.ours.test", 2525, ("192.0.2.50",)),)),
            )
            for failed, status in (
                (Progress(direct=peer_ok, direct_failed=True), "4.4.1"),
                (Progress(direct=peer_ok, direct_failed=True, direct_status="4.2.0"), "4.2.0"),
                (Progress(direct=result(MXResultKind.TEMPORARY)), "4.4.3"),
                (Progress(direct=result(MXResultKind.NO_DOMAIN)), "4.4.4"),
            ):
                decision = route(p, destination, failed)
                assert isinstance(decision, Defer)
                self.assertEqual(decision.status, status)

    def test_sharing_smarthost_fallback(self) -> None:
        """
        With C{sharing_smarthost_fallback} (C{sharing.no_smarthost_on_error = false}) and a
        smart host, a peer that cannot be resolved or reached hands the mail to the smart
        host; without a smart host it is deferred as before.
        """
        peer = HostSpec("peer.ours.test", 2525)
        destination = Destination("ours.test", DomainKind.SHARING_PEER, peer)
        peer_ok = MXResult(MXResultKind.ADDRESS, (MXHost("peer.ours.test", 0, ("192.0.2.50",)),))
        fallback = policy(Mode.DIRECT_THEN_SMARTHOST, sharing_smarthost_fallback=True)
        for failed in (
            Progress(direct=peer_ok, direct_failed=True),
            Progress(direct=result(MXResultKind.TEMPORARY)),
        ):
            self.assertEqual(
                route(fallback, destination, failed),
                Resolve(SMART.lookup_name, SMART.lookup, relay=True),
            )
            self.assertEqual(
                route(fallback, destination, attrs.evolve(failed, relay=SMART_OK)), SMART_CONNECT
            )
        no_smart = policy(Mode.DIRECT, sharing_smarthost_fallback=True)
        failed = Progress(direct=peer_ok, direct_failed=True)
        self.assertIsInstance(route(no_smart, destination, failed), Defer)


class JudgeRecipientTests(SynchronousTestCase):
    """
    L{judge_recipient} tallies what the hosts did with one recipient.
    """

    def judge(self, outcomes: list[HostOutcome], more: bool, first_5xx: bool = False) -> Verdict:
        return judge_recipient(policy(bounce_on_first_5xx=first_5xx), outcomes, more)

    def test_accepted(self) -> None:
        """
        Any acceptance delivers.
        """
        self.assertEqual(
            self.judge([HostOutcome.TEMPORARY, HostOutcome.ACCEPTED], False), Verdict.DELIVERED
        )

    def test_5xx_next_host_by_default(self) -> None:
        """
        By default a 5xx moves on to the next host.
        """
        self.assertEqual(self.judge([HostOutcome.PERMANENT], True), Verdict.NEXT_HOST)

    def test_first_5xx_bounces_with_flag(self) -> None:
        """
        With "bounce on first 5xx", a 5xx bounces at once.
        """
        self.assertEqual(self.judge([HostOutcome.PERMANENT], True, first_5xx=True), Verdict.BOUNCE)

    def test_all_5xx_bounce(self) -> None:
        """
        When every host answered 5xx, the recipient bounces.
        """
        self.assertEqual(self.judge([HostOutcome.PERMANENT] * 2, False), Verdict.BOUNCE)

    def test_any_4xx_defers(self) -> None:
        """
        A 4xx or a connection failure from any host defers, without the smart-host fallback
        once a host said 5xx.
        """
        for other in (HostOutcome.TEMPORARY, HostOutcome.UNREACHABLE):
            self.assertEqual(self.judge([HostOutcome.PERMANENT, other], False), Verdict.DEFER)

    def test_greeting_never_bounces(self) -> None:
        """
        5xx greetings never bounce, even with "bounce on first 5xx".
        """
        self.assertEqual(
            self.judge([HostOutcome.GREETING_REFUSED], True, first_5xx=True), Verdict.NEXT_HOST
        )
        self.assertEqual(
            self.judge([HostOutcome.GREETING_REFUSED] * 2, False, first_5xx=True),
            Verdict.UNREACHABLE,
        )
        self.assertEqual(
            self.judge([HostOutcome.PERMANENT, HostOutcome.GREETING_REFUSED], False), Verdict.DEFER
        )

    def test_unreachable(self) -> None:
        """
        Only connection failures and 4xx: unreachable (eligible for the smart host).
        """
        self.assertEqual(
            self.judge([HostOutcome.UNREACHABLE, HostOutcome.TEMPORARY], False),
            Verdict.UNREACHABLE,
        )
        self.assertEqual(self.judge([], False), Verdict.UNREACHABLE)


class GroupRecipientsTests(SynchronousTestCase):
    """
    L{group_recipients} splits recipients into transactions.
    """

    def setUp(self) -> None:
        self.peer = HostSpec("peer.ours.test", 25)
        self.recipients = [
            ("a@one.test", Destination("one.test")),
            ("b@two.test", Destination("two.test")),
            ("c@one.test", Destination("one.test")),
            ("d@ours.test", Destination("ours.test", DomainKind.LOCAL)),
            ("e@ours.test", Destination("ours.test", DomainKind.SHARING_PEER, self.peer)),
            ("f@also.test", Destination("also.test", DomainKind.SHARING_PEER, self.peer)),
            ("g@gw.test", Destination("gw.test", DomainKind.GATEWAY)),
            ("h@ours.test", Destination("ours.test", DomainKind.LOCAL)),
        ]

    def test_direct_per_domain(self) -> None:
        """
        In direct mode remote recipients group by domain; sharing by peer; local together.
        """
        groups = group_recipients(policy(), self.recipients)
        self.assertEqual(
            [g.recipients for g in groups],
            [
                ("a@one.test", "c@one.test"),
                ("b@two.test",),
                ("d@ours.test", "h@ours.test"),
                ("e@ours.test", "f@also.test"),
                ("g@gw.test",),
            ],
        )
        self.assertEqual(groups[3].domains, ("ours.test", "also.test"))

    def test_smart_host_one_transaction(self) -> None:
        """
        In smart-host mode all remote recipients, whatever their domain, share one group.
        """
        groups = group_recipients(policy(Mode.SMARTHOST), self.recipients)
        self.assertEqual(
            groups[0],
            Group(
                Destination("one.test"),
                ("a@one.test", "b@two.test", "c@one.test"),
                ("one.test", "two.test"),
            ),
        )
        self.assertEqual(len(groups), 4)


class PurityTests(SynchronousTestCase):
    """
    The router is a pure core.
    """

    def test_no_twisted(self) -> None:
        """
        Importing the router pulls in no Twisted module.
        """
        code = (
            "import sys, mdtwist.delivery.router;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))"
        )
        root = Path(router.__file__).parents[2]
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
        ).stdout
        self.assertEqual(output.strip(), "[]")


def attrs_evolve(progress: Progress, **changes: object) -> Progress:
    """
    A copy of C{progress} with C{changes}.
    """
    return attrs.evolve(progress, **changes)  # type: ignore[arg-type]
