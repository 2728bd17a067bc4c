"""
Tests for L{mdtwist.minger.server}.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.cache import CachedDirectory
from mdtwist.minger.codec import (
    Status,
    digest,
    encode_hardened_query,
    encode_query,
    hardened_key,
    parse_reply,
)
from mdtwist.minger.limits import RateLimits
from mdtwist.minger.server import MingerResponder, MingerServerProtocol, MingerSettings
from mdtwist.secret import Secret
from tests.minger.fakes import Directory, FakeUDPReactor, account
from tests.support.logs import capture_logs

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
PEER = "192.0.2.10"
EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
LOCAL = (ipaddress.ip_network("192.0.2.0/24"),)


def directory() -> Directory:
    return Directory(
        account("alice@example.com", aliases=("a.example@example.com",)),
        account("frozen@example.com", enabled=False),
        account("remote@elsewhere.test", aliases=("fwd@example.com",)),
    )


class ResponderTests(SynchronousTestCase):
    """
    What the server answers to one datagram.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000.0)
        self.directory = directory()

    def responder(self, **kwargs: object) -> MingerResponder:
        options: dict[str, object] = {"secret": Secret(SECRET), "allowed": LOCAL}
        options.update(kwargs)
        return MingerResponder(self.directory, MingerSettings(**options), self.clock)  # type: ignore[arg-type]

    def ask(
        self,
        data: bytes,
        responder: MingerResponder | None = None,
        host: str = PEER,
        port: int = 50000,
    ) -> bytes | None:
        responder = responder or self.responder()
        reply = responder.answer(data, host, port)
        return self.successResultOf(reply) if isinstance(reply, Deferred) else reply

    def status(self, mailbox: str, responder: MingerResponder | None = None) -> Status:
        reply = self.ask(encode_query(mailbox, SECRET), responder)
        assert reply is not None
        parsed = parse_reply(reply, mailbox)
        assert parsed is not None
        return parsed.status

    def test_worked_example(self) -> None:
        """
        The worked example query (see tests.minger.test_codec) for an active address gets its
        19-byte reply.
        """
        self.directory = Directory(account("alice@example.com"))
        self.assertEqual(
            self.ask(encode_query("alice@example.com", SECRET)), b"alice@example.com 5"
        )

    def test_statuses(self) -> None:
        """
        Active accounts and their aliases get 5, a disabled account 4, an unknown address or
        domain 3, postmaster of a local domain 5, a foreign alias 3 by default.
        """
        cases = {
            "alice@example.com": Status.ACTIVE,
            "ALICE@Example.COM": Status.ACTIVE,
            "a.example@example.com": Status.ACTIVE,
            "frozen@example.com": Status.INACTIVE,
            "nobody@example.com": Status.UNKNOWN,
            "alice@other.test": Status.UNKNOWN,
            "postmaster@example.com": Status.ACTIVE,
            "fwd@example.com": Status.UNKNOWN,
        }
        for mailbox, expected in cases.items():
            self.assertEqual(self.status(mailbox), expected, mailbox)

    def test_echo_exact(self) -> None:
        """
        The reply repeats the mailbox exactly as the query gave it.
        """
        reply = self.ask(encode_query("ALICE@Example.COM", SECRET))
        self.assertEqual(reply, b"ALICE@Example.COM 5")

    def test_foreign_aliases_active(self) -> None:
        """
        With foreign_aliases_active, an alias of an account elsewhere gets 5.
        """
        responder = self.responder(foreign_aliases_active=True)
        self.assertEqual(self.status("fwd@example.com", responder), Status.ACTIVE)

    def test_probe(self) -> None:
        """
        The C{*} probe gets 5 when authenticated and 2 when not.
        """
        self.assertEqual(self.ask(encode_query("*", SECRET)), b"* 5")
        self.assertEqual(self.ask(b"*"), b"* 2")

    def test_credentials(self) -> None:
        """
        No digest, or a wrong one, gets 2; anonymous queries are answered when allowed, but a
        wrong digest still gets 2.
        """
        self.assertEqual(self.ask(b"alice@example.com"), b"alice@example.com 2")
        wrong = encode_query("alice@example.com", "not the secret at all")
        self.assertEqual(self.ask(wrong), b"alice@example.com 2")
        anonymous = self.responder(anonymous=True, secret=None)
        self.assertEqual(self.ask(b"alice@example.com", anonymous), b"alice@example.com 5")
        self.assertEqual(self.ask(wrong, anonymous), b"alice@example.com 2")

    def test_malformed(self) -> None:
        """
        A malformed query gets 0 with its first token echoed; an ignored datagram gets
        nothing.
        """
        self.assertEqual(self.ask(b"not-a-mailbox d=x"), b"not-a-mailbox 0")
        bad_digest = b"alice@example.com d=" + digest(SECRET, "alice@example.com")[:-3]
        self.assertEqual(self.ask(bad_digest), b"alice@example.com 0")
        self.assertIsNone(self.ask(b""))
        self.assertIsNone(self.ask(b"alice@example.com 5"))
        self.assertIsNone(self.ask(b"x" * 1025))

    def test_not_allowed(self) -> None:
        """
        A source outside the allow-list gets nothing, or 1 with reply_to_denied; a source
        port below 1024 gets nothing.
        """
        query = encode_query("alice@example.com", SECRET)
        self.assertIsNone(self.ask(query, host="198.51.100.1"))
        loud = self.responder(reply_to_denied=True)
        self.assertEqual(self.ask(query, loud, host="198.51.100.1"), b"alice@example.com 1")
        self.assertIsNone(self.ask(query, port=53))
        self.assertIsNone(self.ask(query, host="not an address"))

    def test_mapped_ipv6(self) -> None:
        """
        An IPv4-mapped IPv6 source is judged by its IPv4 address.
        """
        query = encode_query("alice@example.com", SECRET)
        self.assertEqual(self.ask(query, host="::ffff:192.0.2.10"), b"alice@example.com 5")

    def test_cached_directory_at_once(self) -> None:
        """
        Behind a L{CachedDirectory}, an address it remembers is answered at once (no Deferred),
        with the same reply as the first, looked-up answer; one past its time to live is looked
        up again.
        """
        cached = CachedDirectory(self.directory, self.clock, ttl=60, negative_ttl=5, size=100)
        responder = MingerResponder(
            cached, MingerSettings(Secret(SECRET), allowed=LOCAL), self.clock
        )
        names = ("alice@example.com", "frozen@example.com", "nobody@example.com", "x@other.test")
        first = {name: self.ask(encode_query(name, SECRET), responder) for name in names}
        self.assertEqual(
            [first[name] for name in names],
            [f"{name} {digit}".encode() for name, digit in zip(names, "5433", strict=True)],
        )
        for name in names:
            reply = responder.answer(encode_query(name, SECRET), PEER, 50000)
            self.assertEqual(reply, first[name])
        self.assertEqual(self.directory.finds, list(names[:3]))
        self.clock.advance(60)
        self.assertEqual(self.ask(encode_query(names[0], SECRET), responder), first[names[0]])
        self.assertEqual(self.directory.finds, [*names[:3], names[0]])

    def test_directory_down(self) -> None:
        """
        When the directory cannot answer, the server sends nothing (the peer sees a timeout,
        a temporary failure) and says so in the log.
        """
        logs = capture_logs(self)
        self.directory.unavailable = True
        self.assertIsNone(self.ask(encode_query("alice@example.com", SECRET)))
        self.assertIn(
            "minger: directory unavailable; no answer to {peer} for {mailbox}",
            [event["log_format"] for event in logs],
        )

    def test_never_asks_anyone_else(self) -> None:
        """
        The answer comes from the directory alone: an unknown address is looked up once,
        locally, and gets 3.
        """
        self.assertEqual(self.status("bob@example.com"), Status.UNKNOWN)
        self.assertEqual(self.directory.finds, ["bob@example.com"])

    def test_rate_limit(self) -> None:
        """
        Past its burst, a source gets no answers until its bucket refills.
        """
        responder = self.responder(limits=RateLimits(rate=1.0, burst=2))
        query = encode_query("alice@example.com", SECRET)
        answers = [self.ask(query, responder) for _ in range(3)]
        self.assertEqual(answers, [b"alice@example.com 5"] * 2 + [None])
        self.clock.advance(1.0)
        self.assertEqual(self.ask(query, responder), b"alice@example.com 5")

    def test_harvest_budget(self) -> None:
        """
        A source that asks about too many unknown addresses is paused, then answered again.
        """
        logs = capture_logs(self)
        limits = RateLimits(unknown_budget=2, unknown_window=60.0, unknown_pause=300.0)
        responder = self.responder(limits=limits)
        for i in range(3):
            self.assertEqual(self.status(f"guess{i}@example.com", responder), Status.UNKNOWN)
        self.assertIsNone(self.ask(encode_query("alice@example.com", SECRET), responder))
        self.assertEqual(
            self.ask(encode_query("alice@example.com", SECRET), responder, host="192.0.2.11"),
            b"alice@example.com 5",
        )
        self.clock.advance(300.0)
        self.assertEqual(self.status("alice@example.com", responder), Status.ACTIVE)
        self.assertEqual(
            [e["peer"] for e in logs if "too many unknown" in e["log_format"]], [PEER]
        )

    def test_hardened(self) -> None:
        """
        A hardened query gets a reply with a MAC; a replay gets 2; a hardened source's
        draft-06 query gets 2.
        """
        key = hardened_key(SECRET)
        responder = self.responder(hardened_sources=(ipaddress.ip_network(PEER),))
        query = encode_hardened_query("alice@example.com", key, self.clock.seconds(), bytes(16))
        reply = self.ask(query, responder)
        assert reply is not None
        self.assertTrue(reply.startswith(b"alice@example.com 5 m="))
        self.assertEqual(self.ask(query, responder), b"alice@example.com 2")
        plain = encode_query("alice@example.com", SECRET)
        self.assertEqual(self.ask(plain, responder), b"alice@example.com 2")
        self.assertEqual(self.ask(plain, responder, host="192.0.2.11"), b"alice@example.com 5")

    def test_hardened_skew(self) -> None:
        """
        A hardened query from more than 30 s ago gets 2.
        """
        key = hardened_key(SECRET)
        old = encode_hardened_query(
            "alice@example.com", key, self.clock.seconds() - 31, bytes(range(16))
        )
        self.assertEqual(self.ask(old), b"alice@example.com 2")

    def test_no_secret_in_logs(self) -> None:
        """
        No log event carries the secret or a digest, whatever the outcome.
        """
        logs = capture_logs(self)
        good = encode_query("alice@example.com", SECRET)
        wrong = encode_query("alice@example.com", "another secret of some length")
        for data in (good, wrong, b"alice@example.com", good + b" x=1 x=2"):
            self.ask(data)
        self.directory.unavailable = True
        self.ask(good)
        self.assertTrue(logs)
        forbidden = [SECRET, digest(SECRET, "alice@example.com").decode()]
        forbidden.append(digest("another secret of some length", "alice@example.com").decode())
        for event in logs:
            text = repr(event)
            for secret in forbidden:
                self.assertNotIn(secret, text)


class ProtocolTests(SynchronousTestCase):
    """
    The server as a UDP protocol.
    """

    def test_answers_over_udp(self) -> None:
        """
        A datagram to the listening port gets its reply sent back to its source.
        """
        reactor = FakeUDPReactor()
        responder = MingerResponder(
            directory(), MingerSettings(Secret(SECRET), allowed=EVERYWHERE), reactor
        )
        reactor.listenUDP(4069, MingerServerProtocol(responder), interface="127.0.0.1")
        received: list[tuple[bytes, object]] = []

        class Recorder(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: object) -> None:  # noqa: N802
                received.append((datagram, addr))

        port = reactor.listenUDP(5555, Recorder(), interface="127.0.0.1")
        port.write(b"bob@example.com", ("127.0.0.1", 4069))
        port.write(encode_query("alice@example.com", SECRET), ("127.0.0.1", 4069))
        reactor.network.flush()
        self.assertEqual(
            received,
            [
                (b"bob@example.com 2", ("127.0.0.1", 4069)),
                (b"alice@example.com 5", ("127.0.0.1", 4069)),
            ],
        )
