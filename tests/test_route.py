"""Tests for L{mdtwist.route}."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.route import (
    Route,
    RouteKind,
    SharingAnswer,
    SharingStatus,
    classify,
    duplicate_key,
    is_postmaster,
)

LOCAL = frozenset({"example.com", "second.example"})


class ClassifyTests(SynchronousTestCase):
    """
    L{classify} tells the route kind from the domain after the last C{@} only.
    """

    def test_local(self) -> None:
        """
        An address in a local domain is local; its target keeps the local part as written and
        lower-cases the domain.
        """
        self.assertEqual(classify("Alice@Example.COM", LOCAL), Route.local("Alice@example.com"))

    def test_bare_postmaster(self) -> None:
        """
        A bare postmaster, in any case, is local.
        """
        self.assertEqual(classify("PostMaster", LOCAL), Route.local("postmaster"))

    def test_remote(self) -> None:
        """
        Other domains are remote, whatever tricks the local part holds.
        """
        for address in ("bob@other.test", "x%example.com@other.test", "example.com!x@other.test"):
            self.assertEqual(classify(address, LOCAL), Route.remote(), address)

    def test_tricks_on_local_domain_stay_local(self) -> None:
        """
        C{user%foreign@local} is an address of the local domain.
        """
        route = classify("victim%foreign.test@example.com", LOCAL)
        self.assertEqual(route, Route.local("victim%foreign.test@example.com"))

    def test_gateway(self) -> None:
        """
        An address in a gateway domain is held for the gateway, even when the domain is also
        listed as local.
        """
        self.assertEqual(
            classify("x@Gate.Test", LOCAL | {"gate.test"}, {"gate.test"}),
            Route.gateway_hold("gate.test"),
        )

    def test_not_an_address(self) -> None:
        """
        Something that is not an address has no route.
        """
        for text in ("nobody", "", "a b@example.com", "@example.com"):
            self.assertIsNone(classify(text, LOCAL), text)


class RouteTests(SynchronousTestCase):
    """
    A route's target must fit its kind.
    """

    def test_targets(self) -> None:
        """
        Local, sharing-peer and gateway routes need a target; a remote one has none.
        """
        for kind in (RouteKind.LOCAL, RouteKind.SHARING_PEER, RouteKind.GATEWAY_HOLD):
            self.assertRaises(ValueError, Route, kind)
            self.assertRaises(ValueError, Route, kind, "")
        self.assertRaises(ValueError, Route, RouteKind.REMOTE, "x")
        self.assertEqual(Route.remote(), Route(RouteKind.REMOTE, None))


class PostmasterTests(SynchronousTestCase):
    """
    L{is_postmaster} knows our postmaster's addresses.
    """

    def test_postmaster(self) -> None:
        """
        Bare postmaster and postmaster at every local domain, in any case, are ours; at
        another domain it is not.
        """
        for address in ("postmaster", "POSTMASTER", "PostMaster@Second.Example"):
            self.assertTrue(is_postmaster(address, LOCAL), address)
        for address in ("postmaster@other.test", "postmasters@example.com", "alice@example.com"):
            self.assertFalse(is_postmaster(address, LOCAL), address)


class DuplicateKeyTests(SynchronousTestCase):
    """
    L{duplicate_key} says when two recipients of a transaction are one destination.
    """

    def test_local_mailbox(self) -> None:
        """
        Recipients routed to the same mailbox are the same, whatever the case of the target.
        """
        self.assertEqual(
            duplicate_key("alias@example.com", Route.local("alice@example.com")),
            duplicate_key("ALICE@example.com", Route.local("Alice@Example.com")),
        )
        self.assertNotEqual(
            duplicate_key("alice@example.com", Route.local("alice@example.com")),
            duplicate_key("bob@example.com", Route.local("bob@example.com")),
        )

    def test_remote_address(self) -> None:
        """
        Remote recipients are the same when their domains match without case and their local
        parts match exactly (the local part belongs to the other server).
        """
        remote = Route.remote()
        self.assertEqual(
            duplicate_key("Bob@Other.Test", remote), duplicate_key("Bob@other.test", remote)
        )
        self.assertNotEqual(
            duplicate_key("Bob@other.test", remote), duplicate_key("bob@other.test", remote)
        )

    def test_kinds_differ(self) -> None:
        """
        The same address on different kinds of route is not the same destination.
        """
        self.assertNotEqual(
            duplicate_key("x@gate.test", Route.gateway_hold("gate.test")),
            duplicate_key("x@gate.test", Route.remote()),
        )


class SharingAnswerTests(SynchronousTestCase):
    """
    A sharing answer has a peer exactly when it found one.
    """

    def test_answers(self) -> None:
        """
        The three answers, and the combinations that are refused.
        """
        self.assertEqual(SharingAnswer.found("peer:4069").peer, "peer:4069")
        self.assertEqual(SharingAnswer.not_found().status, SharingStatus.NOT_FOUND)
        self.assertEqual(SharingAnswer.unavailable().status, SharingStatus.UNAVAILABLE)
        self.assertRaises(ValueError, SharingAnswer, SharingStatus.FOUND)
        self.assertRaises(ValueError, SharingAnswer, SharingStatus.NOT_FOUND, "peer:1")


class PurityTests(SynchronousTestCase):
    """
    L{mdtwist.route} and the envelope that carries routes are pure.
    """

    def test_no_twisted(self) -> None:
        """
        Importing them in a fresh interpreter pulls in no Twisted module.
        """
        script = (
            "import sys, mdtwist.route, mdtwist.envelope\n"
            "print(','.join(m for m in sys.modules if m.split('.')[0] == 'twisted'))"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            cwd=Path(mdtwist.__file__).parents[1],
            check=True,
        )
        self.assertEqual(result.stdout.strip(), "")
