"""
Tests for L{mdtwist.dequeue.gateways}, L{mdtwist.dequeue.requests} and the C{[[gateway]]} and
C{[provider]} configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import config_warnings, load_config
from mdtwist.dequeue.gateways import (
    DAY,
    EtrnTarget,
    Gateway,
    GatewayBook,
    ProviderSettings,
    is_under,
    normalise_domain,
)
from mdtwist.dequeue.requests import (
    BAD_ATRN,
    BAD_ETRN,
    EtrnRequest,
    atrn_domains,
    etrn_started,
    parse_atrn,
    parse_etrn,
)
from mdtwist.errors import ConfigError
from mdtwist.secret import Secret
from mdtwist.smtp.policy import parse_networks
from tests.test_config import GOOD


class ParseETRNTests(SynchronousTestCase):
    """L{parse_etrn}."""

    def test_forms(self) -> None:
        """A domain, C{@domain} (subdomains), C{#queue}; case and a trailing dot ignored."""
        self.assertEqual(parse_etrn("Example.ORG."), EtrnRequest("example.org"))
        self.assertEqual(parse_etrn("@example.org"), EtrnRequest("example.org", subdomains=True))
        self.assertEqual(parse_etrn("#uucp"), EtrnRequest("uucp", queue=True))

    def test_bad(self) -> None:
        """None, two, a bad domain, an address literal, a bare prefix: 501."""
        for argument in ("", " ", "a b", "ex ample", "bad_name", "[192.0.2.1]", "@", "#", "a..b"):
            self.assertIs(parse_etrn(argument), BAD_ETRN, argument)


class ParseATRNTests(SynchronousTestCase):
    """L{parse_atrn}."""

    def test_forms(self) -> None:
        """Bare, one, several (mixed case, a duplicate dropped)."""
        self.assertEqual(parse_atrn(""), ())
        self.assertEqual(parse_atrn("a.example"), ("a.example",))
        self.assertEqual(parse_atrn("A.example,b.EXAMPLE,a.example"), ("a.example", "b.example"))

    def test_bad(self) -> None:
        """An empty element, a trailing comma, a space after a comma: 501."""
        for argument in (
            "a.example,",
            ",a.example",
            "a.example,,b.example",
            "a.example, b.example",
            " ",
        ):
            self.assertIs(parse_atrn(argument), BAD_ATRN, argument)


class BookTests(SynchronousTestCase):
    """L{GatewayBook} and the pure decisions."""

    def setUp(self) -> None:
        self.book = GatewayBook(
            [
                Gateway("gate.test", "gate.test", Secret("s")),
                Gateway("branch.gate.test", "gate.test", Secret("s")),
                Gateway("off.test", "gate.test", Secret("s"), honour_atrn=False),
                Gateway("other.test", "other.test", Secret("o")),
                Gateway("nopass.test", "nopass.test"),
            ]
        )

    def test_lookups(self) -> None:
        """By domain, by login (any case), secrets of logins that have one, hold times."""
        self.assertEqual(self.book.find("gate.test").login, "gate.test")  # type: ignore[union-attr]
        self.assertIsNone(self.book.find("example.com"))
        self.assertEqual(
            [g.domain for g in self.book.of_login("GATE.test")],
            ["branch.gate.test", "gate.test", "off.test"],
        )
        self.assertEqual(sorted(self.book.secrets()), ["gate.test", "other.test"])
        self.assertEqual(self.book.hold_time("gate.test"), 7 * DAY)
        self.assertIsNone(self.book.hold_time("gone.test"))
        self.assertTrue(self.book)
        self.assertFalse(GatewayBook([]))

    def test_etrn_matches(self) -> None:
        """Without C{@} the domain alone, with it the domain and every gateway below it."""
        self.assertEqual(
            [g.domain for g in self.book.etrn_matches("gate.test", False)], ["gate.test"]
        )
        self.assertEqual(
            [g.domain for g in self.book.etrn_matches("gate.test", True)],
            ["branch.gate.test", "gate.test"],
        )
        self.assertEqual(self.book.etrn_matches("ate.test", True), ())

    def test_atrn_domains(self) -> None:
        """
        A bare ATRN gives the login's ATRN domains; a list of its own is kept; any foreign or
        ATRN-off domain refuses the whole list.
        """
        self.assertEqual(
            atrn_domains(self.book, "gate.test", ()), ("branch.gate.test", "gate.test")
        )
        self.assertEqual(atrn_domains(self.book, "gate.test", ("gate.test",)), ("gate.test",))
        self.assertIsNone(atrn_domains(self.book, "gate.test", ("gate.test", "other.test")))
        self.assertIsNone(atrn_domains(self.book, "gate.test", ("off.test",)))
        self.assertIsNone(atrn_domains(self.book, "nobody", ()))

    def test_address_allowed(self) -> None:
        """The allow-list, and authenticated requests from anywhere when so configured."""
        networks = parse_networks(["192.0.2.0/24"])
        gateway = Gateway("g.test", "g.test", allowed_networks=networks)
        self.assertTrue(gateway.address_allowed("192.0.2.9", False))
        self.assertTrue(gateway.address_allowed("::ffff:192.0.2.9", False))
        self.assertFalse(gateway.address_allowed("198.51.100.1", False))
        self.assertTrue(gateway.address_allowed("198.51.100.1", True))
        self.assertFalse(gateway.address_allowed("not-an-ip", False))
        strict = Gateway("g.test", "g.test", allowed_networks=networks, auth_any_address=False)
        self.assertFalse(strict.address_allowed("198.51.100.1", True))
        self.assertTrue(Gateway("g.test", "g.test").address_allowed("198.51.100.1", False))

    def test_names(self) -> None:
        """Domain normalising and the subdomain test."""
        self.assertEqual(normalise_domain("A.Example."), "a.example")
        self.assertIsNone(normalise_domain("-a.example"))
        self.assertTrue(is_under("x.a.example", "a.example"))
        self.assertTrue(is_under("a.example", "a.example"))
        self.assertFalse(is_under("xa.example", "a.example"))

    def test_etrn_started(self) -> None:
        """251 for none, 253 with the count otherwise."""
        self.assertEqual(etrn_started("g.test", 0).code, 251)
        answer = etrn_started("g.test", 3)
        self.assertEqual((answer.code, answer.enhanced), (253, "2.0.0"))
        self.assertIn("3 pending", answer.text)


class GatewayConfigTests(SynchronousTestCase):
    """The C{[[gateway]]} and C{[provider]} tables."""

    def load(self, extra: str) -> object:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(GOOD + extra)
        self.path = path
        return load_config(path)

    def problems(self, extra: str) -> list[str]:
        error = self.assertRaises(ConfigError, self.load, extra)
        prefix = f"{self.path}: "
        for line in error.problems:
            self.assertTrue(line.startswith(prefix), line)
        return [line[len(prefix) :] for line in error.problems]

    def test_defaults(self) -> None:
        """
        A gateway needs only its domain and password: login = the domain, ETRN and ATRN on,
        ETRN requires AUTH, MX target, 7 days; no [provider] means no ODMR listener.
        """
        config = self.load('[[gateway]]\ndomain = "Office.Test"\npassword = "pw"\n')
        (gateway,) = config.gateways  # type: ignore[attr-defined]
        self.assertEqual(
            gateway,
            Gateway("office.test", "office.test", Secret("pw")),
        )
        self.assertEqual(config.provider, ProviderSettings())  # type: ignore[attr-defined]

    def test_everything(self) -> None:
        """Every key read."""
        secret = Path(self.mktemp()).resolve()
        secret.write_text("from-file\n")
        os.chmod(secret, 0o600)
        config = self.load(
            f"""
[provider]
odmr_listen = "tcp:366:interface=127.0.0.1"
etrn_per_session = 2
idle_timeout = 30
turned_timeout = 40

[[gateway]]
domain = "office.test"
login = "Office"
password_file = "{secret}"
honour_etrn = false
honour_atrn = true
etrn_requires_auth = true
auth_any_address = false
allowed_networks = ["192.0.2.0/24"]
one_atrn_session = true
etrn_deliver_to = "[192.0.2.9]:2525"
etrn_port = 2526
hold_days = 2.5
"""
        )
        (gateway,) = config.gateways  # type: ignore[attr-defined]
        self.assertEqual(gateway.login, "office")
        self.assertEqual(gateway.password, Secret("from-file"))
        self.assertFalse(gateway.honour_etrn)
        self.assertFalse(gateway.auth_any_address)
        self.assertTrue(gateway.one_atrn_session)
        self.assertEqual(gateway.etrn_target, EtrnTarget.HOST)
        self.assertEqual(gateway.etrn_host, "[192.0.2.9]:2525")
        self.assertEqual(gateway.etrn_port, 2526)
        self.assertEqual(gateway.hold_time, 2.5 * DAY)
        self.assertEqual(
            config.provider,  # type: ignore[attr-defined]
            ProviderSettings("tcp:366:interface=127.0.0.1", 2, 30.0, 40.0),
        )

    def test_problems(self) -> None:
        """Each bad value is named with its key and a reason."""
        found = self.problems(
            """
[provider]
odmr_listen = "nonsense:1"
etrn_per_session = 0

[[gateway]]
domain = "bad domain"
password = "x"

[[gateway]]
domain = "a.test"

[[gateway]]
domain = "b.test"
password = "x"
etrn_requires_auth = false
etrn_deliver_to = "requester"
hold_days = 0
colour = "blue"

[[gateway]]
domain = "c.test"
password = "x"
etrn_deliver_to = "[unclosed"
allowed_networks = ["not a net"]
etrn_port = 70000

[[gateway]]
domain = "c.test"
password = "x"

[[gateway]]
domain = "d.test"
login = "c.test"
password = "y"
"""
        )
        expected = [
            "gateway[0].domain: 'bad domain' is not a domain name",
            "gateway[1].password: required (or password_file) while honour_atrn or"
            " etrn_requires_auth is on",
            "gateway[2].colour: unknown key",
            "gateway[2].etrn_deliver_to: 'requester' needs etrn_requires_auth = true (else"
            " anyone could take the mail)",
            "gateway[2].hold_days: must be greater than 0",
            "gateway[3].allowed_networks: 'not a net' is not a network",
            "gateway[4].domain: c.test is listed twice",
            "gateway[5].password: login c.test is used by another gateway with another password",
            "provider.etrn_per_session: must be greater than 0",
        ]
        for line in expected:
            self.assertIn(line, found)
        self.assertTrue(any(p.startswith("gateway[3].etrn_deliver_to: must be") for p in found))
        self.assertTrue(any(p.startswith("gateway[3].etrn_port: must be at most") for p in found))
        self.assertTrue(any(p.startswith("provider.odmr_listen: not a valid") for p in found))

    def test_no_odmr_listener(self) -> None:
        """
        A gateway honouring ATRN (or ETRN with AUTH) without an ODMR listener is warned about;
        one releasable by ETRN without AUTH is not.
        """
        config = self.load(
            '[[gateway]]\ndomain = "a.test"\npassword = "pw"\n'
            '[[gateway]]\ndomain = "b.test"\nhonour_atrn = false\netrn_requires_auth = false\n'
        )
        warnings = [w for w in config_warnings(config) if ": gateway[" in w]  # type: ignore[arg-type]
        self.assertEqual(
            warnings,
            [
                f"{self.path}: gateway[0]: warning: a.test can only log in on the ODMR"
                " listener, and provider.odmr_listen is not set"
            ],
        )
        with_listener = self.load(
            '[provider]\nodmr_listen = "tcp:366"\n'
            '[[gateway]]\ndomain = "a.test"\npassword = "pw"\n'
        )
        self.assertEqual([w for w in config_warnings(with_listener) if ": gateway[" in w], [])  # type: ignore[arg-type]
