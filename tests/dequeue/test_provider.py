"""
Tests for L{mdtwist.dequeue.provider}: ETRN on an SMTP listener and on the ODMR listener, ATRN
and the turned session, as byte conversations with a scripted client (also fed one byte at a
time), on a real spool with the injected clock.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mdtwist import metrics
from mdtwist.delivery.leases import Leases
from mdtwist.delivery.local import MaildirDelivery
from mdtwist.delivery.runner import QueueRunner
from mdtwist.dequeue.gateways import EtrnTarget, Gateway, GatewayBook, ProviderSettings
from mdtwist.dequeue.held import HeldMail
from mdtwist.dequeue.provider import GatewayProvider, etrn_route, odmr_factory
from mdtwist.dequeue.release import Shards
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.portal import build_login_portal
from mdtwist.route import Route
from mdtwist.secret import Secret
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.core.server import ServerSettings
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.policy import parse_networks
from mdtwist.smtp.server import SessionLimits, SMTPServerFactory
from mdtwist.spool.model import MessageKind, QueuedMessage
from mdtwist.spool.store import SQLiteSpool
from tests.smtp.core.helpers import parse_replies
from tests.smtp.fakes import FakeDirectory, FakePolicy, FakeSpool
from tests.spool.fakes import FakeDirectory as SpoolDirectory
from tests.spool.fakes import make_account, make_envelope, run_now
from tests.support.logs import capture_logs

CUSTOMER = IPv4Address("TCP", "192.0.2.7", 40000)
GATE = "gate.test"
BRANCH = "branch.gate.test"
OTHER = "other.test"
SECRET = "gw-secret"
BODY = b"Subject: held\r\n\r\n.a line that starts with a dot\r\nend\r\n"


def held(address: str) -> Recipient:
    """A recipient held for the gateway domain of its address."""
    return Recipient(address, route=Route.gateway_hold(address.rpartition("@")[2]))


class FakeRelease:
    """Records ETRN releases and answers with a count (or fails)."""

    def __init__(self, count: int = 2) -> None:
        self.count = count
        self.calls: list[tuple[list[str], dict[str, Route]]] = []
        self.failing = False

    def __call__(self, domains: Sequence[str], targets: Mapping[str, Route]) -> Deferred[int]:
        self.calls.append((list(domains), dict(targets)))
        if self.failing:
            return fail(RuntimeError("a shard is down"))
        return succeed(self.count)


def gateways(**options: object) -> GatewayBook:
    """The test gateways: gate.test and its subdomain, one login; other.test its own."""
    common = {"password": Secret(SECRET), **options}
    return GatewayBook(
        [
            Gateway(GATE, GATE, **common),  # type: ignore[arg-type]
            Gateway(BRANCH, GATE, **common),  # type: ignore[arg-type]
            Gateway(OTHER, OTHER, password=Secret("other-secret")),
        ]
    )


class Talk:
    """A scripted client on one server connection."""

    def __init__(self, test: SynchronousTestCase, protocol: object, bytewise: bool) -> None:
        self.protocol = protocol
        self.bytewise = bytewise
        self.transport = StringTransport(peerAddress=CUSTOMER)
        protocol.makeConnection(self.transport)  # type: ignore[attr-defined]

    def send(self, data: bytes) -> None:
        """Send bytes (a line needs its CRLF)."""
        if self.bytewise:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])  # type: ignore[attr-defined]
        else:
            self.protocol.dataReceived(data)  # type: ignore[attr-defined]

    def take(self) -> bytes:
        """What the server wrote since last asked."""
        value: bytes = self.transport.value()
        self.transport.clear()
        return value

    def replies(self) -> list[Reply]:
        """The replies written since last asked."""
        return parse_replies(self.take())

    def command(self, line: str) -> Reply:
        """Send one command, return its one reply."""
        self.send(line.encode() + b"\r\n")
        replies = self.replies()
        assert len(replies) == 1, replies
        return replies[0]

    def cram(self, login: str, secret: str) -> Reply:
        """Log in with CRAM-MD5."""
        challenge = self.command("AUTH CRAM-MD5")
        assert challenge.code == 334, challenge
        raw = base64.b64decode(challenge.lines[0])
        digest = hmac.new(secret.encode(), raw, "md5").hexdigest()
        return self.command(base64.b64encode(f"{login} {digest}".encode()).decode())


class _Setup(SynchronousTestCase):
    bytewise = False

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.release = FakeRelease()
        self.book = gateways()
        self.spool = SQLiteSpool(Path(self.mktemp()), run_now)
        self.addCleanup(lambda: self.spool.close())
        root = Path(self.mktemp())
        root.mkdir()
        self.leases = Leases()
        self.runner = QueueRunner(
            self.spool,
            SpoolDirectory([make_account("alice@example.com")], ["example.com"]),
            MaildirDelivery(root, run_now, self.clock, hostname="mx.example"),
            self.clock,
            hostname="mx.example",
            leases=self.leases,
        )
        self.held = HeldMail(self.spool, self.runner, self.leases, self.clock, None)
        self.settings = ProviderSettings(etrn_per_session=3, idle_timeout=60, turned_timeout=30)

    def provider(self, book: GatewayBook | None = None) -> GatewayProvider:
        return GatewayProvider(
            book or self.book,
            self.settings,
            self.clock,
            release=self.release,
            shards=Shards(self.held),
            load=lambda shard, queue_id: self.spool.load(queue_id),
            hostname="provider.example",
        )

    def mx(self, book: GatewayBook | None = None) -> Talk:
        """A session on an mx listener with ETRN."""
        provider = self.provider(book)
        factory = SMTPServerFactory(
            settings=ServerSettings(hostname="provider.example"),
            mode=ListenerMode.MX,
            policy=FakePolicy(),
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock),
            clock=self.clock,
            commands={"ETRN": provider.etrn_handler(False)},
        )
        talk = Talk(self, factory.buildProtocol(CUSTOMER), self.bytewise)
        talk.take()
        return talk

    def odmr(
        self,
        book: GatewayBook | None = None,
        provider: GatewayProvider | None = None,
        tls: object = None,
    ) -> Talk:
        """A session on the ODMR listener (with STARTTLS when given a TLS context)."""
        book = book or self.book
        provider = provider or self.provider(book)
        self.current = provider
        factory = odmr_factory(
            provider,
            settings=ServerSettings(hostname="provider.example"),
            policy=FakePolicy(),
            spool=FakeSpool(),
            portal=build_login_portal(FakeDirectory(), self.clock, gateway_secrets=book.secrets()),
            clock=self.clock,
            limits=SessionLimits(idle_timeout=60, data_timeout=60),
            tls=tls,  # type: ignore[arg-type]
        )
        talk = Talk(self, factory.buildProtocol(CUSTOMER), self.bytewise)
        greeting = talk.replies()
        assert greeting[0].code == 220
        return talk

    def enqueue(self, *recipients: str | Recipient) -> str:
        return self.successResultOf(self.spool.enqueue(make_envelope(*recipients), BODY))

    def states(self, queue_id: str) -> list[str]:
        message = self.successResultOf(self.spool.load(queue_id))
        assert message is not None
        return [r.state.value for r in message.envelope.recipients]

    def notices(self) -> list[QueuedMessage]:
        found = []
        for entry in self.successResultOf(self.spool.list()):
            message = self.successResultOf(self.spool.load(entry.queue_id))
            if message is not None and message.kind is MessageKind.NOTICE:
                found.append(message)
        return found


class ETRNOnMXTests(_Setup):
    """ETRN on an SMTP listener: syntax, gateways, limits, repeats and the AUTH rule."""

    def test_syntax(self) -> None:
        """No argument, two arguments, a bad domain: 501 (item 1)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        for line in ("ETRN", "ETRN ", "ETRN a b", "ETRN bad_domain!", "ETRN @"):
            self.assertEqual(talk.command(line).code, 501, line)
        self.assertEqual(self.release.calls, [])

    def test_before_ehlo_accepted(self) -> None:
        """ETRN before EHLO is accepted (item 5)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        answer = talk.command(f"ETRN {GATE}")
        self.assertEqual(answer.code, 253)
        self.assertIn("2 pending messages", answer.text)

    def test_in_transaction(self) -> None:
        """ETRN inside a mail transaction: 503 (item 5)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        talk.command("EHLO office.example")
        self.assertEqual(talk.command("MAIL FROM:<a@b.example>").code, 250)
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 503)

    def test_nothing_waiting_251(self) -> None:
        """Nothing held: 251 (item 4)."""
        self.release.count = 0
        talk = self.mx(gateways(etrn_requires_auth=False))
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 251)

    def test_not_a_gateway_459(self) -> None:
        """A domain that is no gateway, one with ETRN off, a queue name: 459 (items 2, 3)."""
        talk = self.mx(gateways(etrn_requires_auth=False, honour_etrn=False))
        self.assertEqual(talk.command("ETRN example.net").code, 459)
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 459)
        self.assertEqual(talk.command("ETRN #uucp").code, 459)
        self.assertEqual(self.release.calls, [])

    def test_auth_required_530(self) -> None:
        """With ETRN requiring AUTH (the default) and no gateway login: 530 (item 6)."""
        talk = self.mx()
        talk.command("EHLO office.example")
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 530)
        self.assertEqual(self.release.calls, [])

    def test_subdomains(self) -> None:
        """C{@domain} releases the domain and its subdomains; without, only itself (item 2)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        talk.command(f"ETRN @{GATE}")
        talk.command(f"ETRN {GATE}")
        self.assertEqual(sorted(self.release.calls[0][0]), [BRANCH, GATE])
        self.assertEqual(self.release.calls[1][0], [GATE])

    def test_case_and_trailing_dot(self) -> None:
        """Case does not matter and a trailing dot is dropped (item 10)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        self.assertEqual(talk.command("ETRN Gate.TEST.").code, 253)
        self.assertEqual(self.release.calls[0][0], [GATE])

    def test_address_not_allowed_459(self) -> None:
        """A requester outside the allowed networks: 459 (item 3)."""
        book = gateways(
            etrn_requires_auth=False, allowed_networks=parse_networks(["198.51.100.0/24"])
        )
        talk = self.mx(book)
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 459)
        book = gateways(
            etrn_requires_auth=False, allowed_networks=parse_networks(["192.0.2.0/24"])
        )
        self.assertEqual(self.mx(book).command(f"ETRN {GATE}").code, 253)

    def test_per_session_limit(self) -> None:
        """After the per-session limit (3 here), ETRN gets 458 (item 8)."""
        talk = self.mx(gateways(etrn_requires_auth=False))
        codes = [talk.command(f"ETRN {GATE}").code for _ in range(4)]
        self.assertEqual(codes, [253, 253, 253, 458])
        self.assertEqual(len(self.release.calls), 3)

    def test_release_failure_458(self) -> None:
        """When the release cannot be carried out: 458 (a temporary problem)."""
        self.release.failing = True
        talk = self.mx(gateways(etrn_requires_auth=False))
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 458)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_targets(self) -> None:
        """
        The delivery target per gateway: its MX (remote), a configured host, or the
        requester's address on the configured port (item 9).
        """
        mx = Gateway(GATE, GATE)
        host = Gateway(GATE, GATE, etrn_target=EtrnTarget.HOST, etrn_host="[192.0.2.9]:2525")
        requester = Gateway(GATE, GATE, etrn_target=EtrnTarget.REQUESTER, etrn_port=2526)
        self.assertEqual(etrn_route(mx, "192.0.2.7"), Route.remote())
        self.assertEqual(etrn_route(host, "192.0.2.7"), Route.sharing_peer("[192.0.2.9]:2525"))
        self.assertEqual(
            etrn_route(requester, "192.0.2.7"), Route.sharing_peer("[192.0.2.7]:2526")
        )
        talk = self.mx(
            GatewayBook(
                [
                    Gateway(
                        GATE,
                        GATE,
                        etrn_requires_auth=False,
                        etrn_target=EtrnTarget.HOST,
                        etrn_host="[192.0.2.9]:2525",
                    )
                ]
            )
        )
        talk.command(f"ETRN {GATE}")
        self.assertEqual(self.release.calls[0][1], {GATE: Route.sharing_peer("[192.0.2.9]:2525")})

    def test_advertised(self) -> None:
        """EHLO on the mx listener lists ETRN and not ATRN."""
        talk = self.mx()
        talk.send(b"EHLO office.example\r\n")
        lines = talk.replies()[0].lines
        self.assertIn("ETRN", lines)
        self.assertNotIn("ATRN", lines)
        self.assertEqual(talk.command("ATRN").code, 500)


class ETRNOnMXBytewiseTests(ETRNOnMXTests):
    """The same, one byte at a time."""

    bytewise = True


class ODMRTests(_Setup):
    """The ODMR listener before the turn (items 16-20, 28) and ETRN there (item 6)."""

    def test_ehlo(self) -> None:
        """EHLO lists AUTH with CRAM-MD5, ATRN and ETRN; no PIPELINING (item 16)."""
        talk = self.odmr()
        talk.send(b"EHLO vm\r\n")
        lines = talk.replies()[0].lines
        self.assertIn("AUTH CRAM-MD5", lines)
        self.assertIn("ATRN", lines)
        self.assertIn("ETRN", lines)
        self.assertNotIn("PIPELINING", lines)

    def test_logged_as_odmr(self) -> None:
        """The mail log's connect line names the listener C{odmr}."""
        events = capture_logs(self)
        self.odmr()
        [connect] = [
            e for e in events if str(e.get("log_format", "")).startswith("{session}: connect")
        ]
        self.assertEqual(connect["listener"], "odmr")

    def test_ehlo_starttls(self) -> None:
        """
        With a TLS context, EHLO lists STARTTLS too, ahead of AUTH (the handshake itself is
        tested with real daemons in tests.integration.test_odmr_end_to_end).
        """
        talk = self.odmr(tls=object())
        talk.send(b"EHLO vm\r\n")
        lines = talk.replies()[0].lines
        self.assertEqual(lines[1:4], ("ENHANCEDSTATUSCODES", "STARTTLS", "AUTH CRAM-MD5"))

    def test_other_commands_502(self) -> None:
        """
        MAIL, RCPT, DATA, VRFY, NOOP, RSET, HELO, and STARTTLS without a TLS context: 502
        (item 28).
        """
        talk = self.odmr()
        talk.command("EHLO vm")
        for line in (
            "MAIL FROM:<a@b.example>",
            "RCPT TO:<a@b.example>",
            "DATA",
            "VRFY a",
            "NOOP",
            "RSET",
            "HELO vm",
            "STARTTLS",
        ):
            self.assertEqual(talk.command(line).code, 502, line)
        self.assertEqual(talk.command("QUIT").code, 221)

    def test_atrn_before_auth_530(self) -> None:
        """ATRN before AUTH: 530 (item 17)."""
        talk = self.odmr()
        talk.command("EHLO vm")
        self.assertEqual(talk.command("ATRN").code, 530)

    def test_auth_failures(self) -> None:
        """
        A wrong secret 535, C{*} 501, an unknown mechanism 504, a second AUTH 503 (item 17).
        """
        talk = self.odmr()
        talk.command("EHLO vm")
        self.assertEqual(talk.cram(GATE, "wrong").code, 535)
        self.assertEqual(talk.command("AUTH CRAM-MD5").code, 334)
        self.assertEqual(talk.command("*").code, 501)
        self.assertEqual(talk.command("AUTH PLAIN AGdhdGUudGVzdABndy1zZWNyZXQ=").code, 504)
        self.assertEqual(talk.cram(GATE, SECRET).code, 235)
        self.assertEqual(talk.command("AUTH CRAM-MD5").code, 503)

    def test_atrn_syntax(self) -> None:
        """An empty element, a trailing comma, a space after a comma: 501 (item 18)."""
        talk = self.odmr()
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        for line in (f"ATRN {GATE},", f"ATRN ,{GATE}", f"ATRN {GATE}, {BRANCH}", "ATRN a..b"):
            self.assertEqual(talk.command(line).code, 501, line)

    def test_foreign_domain_450(self) -> None:
        """A list with a domain of another login: 450 for the whole request (item 19)."""
        self.enqueue(held(f"a@{GATE}"))
        talk = self.odmr()
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        self.assertEqual(talk.command(f"ATRN {GATE},{OTHER}").code, 450)
        self.assertEqual(talk.command("ATRN stranger.test").code, 450)
        self.assertIsNone(self.leases.holder("000000000001"))

    def test_nothing_held_453_session_usable(self) -> None:
        """Nothing held: 453; the session goes on (a second ATRN, QUIT 221) (item 19)."""
        self.enqueue(held(f"b@{OTHER}"))
        talk = self.odmr()
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        self.assertEqual(talk.command(f"ATRN {GATE}").code, 453)
        self.assertEqual(talk.command("ATRN").code, 453)
        self.assertEqual(talk.command("QUIT").code, 221)
        self.assertEqual(self.current.active, {})

    def test_concurrent_451(self) -> None:
        """
        While a session releases a domain, another ATRN for it gets 451; with "one session at
        a time" any other ATRN of the login does too (item 20).
        """
        self.enqueue(held(f"a@{GATE}"))
        self.enqueue(held(f"b@{BRANCH}"))
        provider = self.provider()
        first = self.odmr(provider=provider)
        first.command("EHLO vm")
        first.cram(GATE, SECRET)
        self.assertEqual(first.command(f"ATRN {GATE}").code, 250)
        second = self.odmr(provider=provider)
        second.command("EHLO vm")
        second.cram(GATE, SECRET)
        self.assertEqual(second.command(f"ATRN {GATE}").code, 451)
        self.assertEqual(second.command(f"ATRN {BRANCH}").code, 250)

        book = gateways(one_atrn_session=True)
        provider = self.provider(book)
        self.held.give_back("atrn-1")
        self.held.give_back("atrn-2")
        self.leases = Leases()
        one = self.odmr(book, provider)
        one.command("EHLO vm")
        one.cram(GATE, SECRET)
        self.assertEqual(one.command(f"ATRN {GATE}").code, 250)
        two = self.odmr(book, provider)
        two.command("EHLO vm")
        two.cram(GATE, SECRET)
        self.assertEqual(two.command(f"ATRN {BRANCH}").code, 451)

    def test_etrn_after_auth(self) -> None:
        """ETRN on the ODMR listener after a gateway login is accepted (item 6)."""
        talk = self.odmr()
        talk.command("EHLO vm")
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 530)
        talk.cram(OTHER, "other-secret")
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 459)
        talk2 = self.odmr()
        talk2.command("EHLO vm")
        talk2.cram(GATE, SECRET)
        self.assertEqual(talk2.command(f"ETRN {GATE}").code, 253)

    def test_etrn_counted(self) -> None:
        """
        Each ETRN counts in C{mdtwist_dequeue_signals_total}, accepted or refused.
        """

        def counts() -> tuple[float, float]:
            found = {
                labels["outcome"]: value
                for _, name, labels, value in metrics.samples()
                if name == "mdtwist_dequeue_signals_total" and labels["kind"] == "etrn-received"
            }
            return found.get("accepted", 0.0), found.get("refused", 0.0)

        accepted, refused = counts()
        talk = self.odmr()
        talk.command("EHLO vm")
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 530)
        talk.cram(GATE, SECRET)
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 253)
        self.assertEqual(counts(), (accepted + 1, refused + 1))

    def test_authenticated_any_address(self) -> None:
        """
        "Authenticated requests valid from any address" on: an authenticated ETRN from outside
        the allowed networks is accepted; off: 459 (item 6).
        """
        networks = parse_networks(["198.51.100.0/24"])
        for any_address, code in ((True, 253), (False, 459)):
            book = gateways(allowed_networks=networks, auth_any_address=any_address)
            talk = self.odmr(book)
            talk.command("EHLO vm")
            talk.cram(GATE, SECRET)
            self.assertEqual(talk.command(f"ETRN {GATE}").code, code)

    def test_atrn_address_not_allowed_450(self) -> None:
        """
        ATRN from outside the allowed networks, with authenticated requests not valid from
        anywhere: 450.
        """
        self.enqueue(held(f"a@{GATE}"))
        book = gateways(
            allowed_networks=parse_networks(["198.51.100.0/24"]), auth_any_address=False
        )
        talk = self.odmr(book)
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        self.assertEqual(talk.command(f"ATRN {GATE}").code, 450)

    def test_etrn_to_requester(self) -> None:
        """With the requester as target, an authenticated ETRN sends to the session's address."""
        book = gateways(etrn_target=EtrnTarget.REQUESTER, etrn_port=2526)
        talk = self.odmr(book)
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        self.assertEqual(talk.command(f"ETRN {GATE}").code, 253)
        self.assertEqual(self.release.calls[0][1], {GATE: Route.sharing_peer("[192.0.2.7]:2526")})

    def test_idle_timeout(self) -> None:
        """A silent client before the turn is dropped after the idle timeout (item 29)."""
        talk = self.odmr()
        talk.command("EHLO vm")
        self.clock.advance(61)
        self.assertEqual(talk.replies()[0].code, 421)
        self.assertTrue(talk.transport.disconnecting)


class ODMRBytewiseTests(ODMRTests):
    """The same, one byte at a time."""

    bytewise = True


class TurnTests(_Setup):
    """ATRN's 250 and the turned session (items 18, 21-27, 29)."""

    def turned(self, request: str = "ATRN") -> Talk:
        talk = self.odmr()
        talk.command("EHLO vm")
        talk.cram(GATE, SECRET)
        talk.send(request.encode() + b"\r\n")
        data = talk.take()
        self.assertEqual(data, b"250 2.0.0 OK now reversing the connection\r\n")
        return talk

    def customer_ready(self, talk: Talk, extensions: bytes = b"250 SIZE 1000000\r\n") -> None:
        talk.send(b"220 customer.example ESMTP\r\n")
        self.assertEqual(talk.take(), b"EHLO provider.example\r\n")
        talk.send(b"250-customer.example\r\n" + extensions)

    def accept_message(self, talk: Talk, rcpt_replies: Sequence[bytes]) -> bytes:
        """Answer one transaction: MAIL, the RCPTs, DATA, the message; return what we got."""
        got = talk.take()
        if got == b"RSET\r\n":  # between two messages
            talk.send(b"250 2.0.0 ok\r\n")
            got = talk.take()
        self.assertTrue(got.startswith(b"MAIL FROM:<s@remote.example>"), got)
        talk.send(b"250 2.1.0 ok\r\n")
        sent = b""
        for answer in rcpt_replies:
            line = talk.take()
            self.assertTrue(line.startswith(b"RCPT TO:"), line)
            sent += line
            talk.send(answer)
        if all(r.startswith(b"5") or r.startswith(b"4") for r in rcpt_replies):
            return sent
        self.assertEqual(talk.take(), b"DATA\r\n")
        talk.send(b"354 go\r\n")
        sent += talk.take()
        talk.send(b"250 2.0.0 queued\r\n")
        return sent

    def test_bare_atrn_all_domains(self) -> None:
        """
        A bare ATRN releases every domain of the login; each message goes with only its
        released recipients (the other domain's recipient stays held); 250 removes; the body
        arrives dot-stuffed; we end with QUIT (items 18, 21, 23, 24, 26).
        """
        first = self.enqueue(held(f"a@{GATE}"), held(f"x@{OTHER}"), held(f"b@{BRANCH}"))
        talk = self.turned("ATRN")
        self.customer_ready(talk)
        sent = self.accept_message(talk, [b"250 ok\r\n", b"250 ok\r\n"])
        self.assertIn(f"RCPT TO:<a@{GATE}>".encode(), sent)
        self.assertIn(f"RCPT TO:<b@{BRANCH}>".encode(), sent)
        self.assertNotIn(OTHER.encode(), sent)
        self.assertIn(b"\r\n..a line that starts with a dot\r\nend\r\n.\r\n", sent)
        self.assertEqual(talk.take(), b"QUIT\r\n")
        talk.send(b"221 bye\r\n")
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.states(first), ["delivered", "pending", "delivered"])
        self.assertIsNone(self.leases.holder(first))
        self.assertEqual(self.current.active, {})

    def test_per_recipient_outcomes(self) -> None:
        """250 removes, 4xx keeps held, 5xx bounces with a DSN (item 23)."""
        queue_id = self.enqueue(held(f"a@{GATE}"), held(f"b@{GATE}"), held(f"c@{GATE}"))
        talk = self.turned(f"ATRN {GATE}")
        self.customer_ready(talk)
        self.accept_message(
            talk, [b"250 ok\r\n", b"450 4.2.0 busy\r\n", b"550 5.1.1 no such user\r\n"]
        )
        self.assertEqual(talk.take(), b"QUIT\r\n")
        self.assertEqual(self.states(queue_id), ["delivered", "pending", "failed"])
        self.assertEqual(len(self.notices()), 1)

    def test_two_messages(self) -> None:
        """Several messages go one after the other on the turned connection."""
        one = self.enqueue(held(f"a@{GATE}"))
        two = self.enqueue(held(f"b@{GATE}"))
        talk = self.turned(f"ATRN {GATE}")
        self.customer_ready(talk)
        self.accept_message(talk, [b"250 ok\r\n"])
        self.accept_message(talk, [b"250 ok\r\n"])
        self.assertEqual(talk.take(), b"QUIT\r\n")
        self.assertIsNone(self.successResultOf(self.spool.load(one)))
        self.assertIsNone(self.successResultOf(self.spool.load(two)))

    def test_customer_closes_at_once(self) -> None:
        """
        The customer closes right after the 250 (fetchmail with its listener down): the mail
        stays held, no notice, every lease given back (item 22).
        """
        queue_id = self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.states(queue_id), ["pending"])
        self.assertEqual(self.notices(), [])
        self.assertIsNone(self.leases.holder(queue_id))
        self.assertEqual(self.current.active, {})

    def test_not_220(self) -> None:
        """A greeting other than 220 keeps the mail held, with no notice (item 22)."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        talk.send(b"554 no service\r\n")
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.states(queue_id), ["pending"])
        self.assertEqual(self.notices(), [])

    def test_multiline_220(self) -> None:
        """A multi-line 220 greeting is read whole (item 22)."""
        self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        talk.send(b"220-customer.example\r\n220 ready\r\n")
        self.assertEqual(talk.take(), b"EHLO provider.example\r\n")

    def test_silent_customer(self) -> None:
        """
        No greeting: after the turned timeout the connection is closed, the mail stays held
        (items 22, 29).
        """
        queue_id = self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        self.clock.advance(31)
        self.assertTrue(talk.transport.disconnecting)
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.states(queue_id), ["pending"])
        self.assertIsNone(self.leases.holder(queue_id))

    def test_drop_during_data(self) -> None:
        """The customer goes away during DATA: the message stays held (item 24)."""
        queue_id = self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        self.customer_ready(talk)
        talk.take()
        talk.send(b"250 ok\r\n")
        talk.take()
        talk.send(b"250 ok\r\n")
        talk.take()
        talk.send(b"354 go\r\n")
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertEqual(self.states(queue_id), ["pending"])
        self.assertEqual(self.notices(), [])

    def test_no_auth_no_starttls(self) -> None:
        """
        The customer advertises AUTH and STARTTLS: we neither log in nor start TLS, and
        pipeline only as advertised (item 25).
        """
        self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        self.customer_ready(talk, b"250-AUTH PLAIN LOGIN\r\n250-STARTTLS\r\n250 XCLIENT NAME\r\n")
        self.assertTrue(talk.take().startswith(b"MAIL FROM:"))

    def test_customer_closes_without_221(self) -> None:
        """
        The customer closes after QUIT without 221: what was delivered stays delivered (item 26).
        """
        queue_id = self.enqueue(held(f"a@{GATE}"))
        talk = self.turned()
        self.customer_ready(talk)
        self.accept_message(talk, [b"250 ok\r\n"])
        self.assertEqual(talk.take(), b"QUIT\r\n")
        talk.protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[attr-defined]
        self.assertIsNone(self.successResultOf(self.spool.load(queue_id)))

    def test_runner_and_etrn_stay_away(self) -> None:
        """
        While the session holds a message, the queue runner and an ETRN leave it alone
        (item 27).
        """
        queue_id = self.enqueue(held(f"a@{GATE}"), "alice@example.com")
        self.turned()
        self.assertTrue(self.leases.holder(queue_id))
        self.runner.startService()
        self.addCleanup(self.runner.stopService)
        self.assertEqual(self.states(queue_id), ["pending", "pending"])
        self.assertEqual(self.successResultOf(self.held.etrn([GATE], {GATE: Route.remote()})), 1)


class TurnBytewiseTests(TurnTests):
    """The same, one byte at a time."""

    bytewise = True


class RecipientStateTests(SynchronousTestCase):
    """Keep the imports honest."""

    def test_states(self) -> None:
        """The states the results use exist."""
        self.assertEqual(RecipientState.FAILED.value, "failed")
