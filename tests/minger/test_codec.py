"""
Tests for L{mdtwist.minger.codec}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.minger.codec import (
    MAX_DATAGRAM,
    Ignored,
    Malformed,
    NonceCache,
    Query,
    Reply,
    Status,
    check_credentials,
    check_digest,
    check_hardened,
    check_hardened_reply,
    digest,
    encode_hardened_query,
    encode_hardened_reply,
    encode_query,
    encode_reply,
    hardened_key,
    parse_query,
    parse_reply,
    valid_mailbox,
)

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"
MAILBOX = "alice@example.com"
#: A worked example of the Minger grammar (MD5 digest of "secret:mailbox"), byte for byte
#: (44 bytes, no line end).
QUERY = bytes.fromhex(
    "616c696365406578616d706c652e636f6d20643d7751624756764138766574387663746f4f342f7a30413d3d"
)
#: Its reply when the address is active (19 bytes).
REPLY = bytes.fromhex("616c696365406578616d706c652e636f6d2035")
NONCE = bytes(range(16))


class WorkedExampleTests(SynchronousTestCase):
    """
    The worked example: secret, mailbox, digest, query and reply bytes.
    """

    def test_digest(self) -> None:
        """
        The digest of the example is base64(MD5("Kx7p...:alice@example.com")).
        """
        self.assertEqual(digest(SECRET, MAILBOX), b"wQbGVvA8vet8vctoO4/z0A==")

    def test_query_bytes(self) -> None:
        """
        encode_query gives the 44 bytes of the example.
        """
        self.assertEqual(len(QUERY), 44)
        self.assertEqual(encode_query(MAILBOX, SECRET), QUERY)

    def test_query_parses(self) -> None:
        """
        The example query parses to its mailbox and digest, and the digest checks out.
        """
        query = parse_query(QUERY)
        self.assertEqual(query, Query(MAILBOX, b"wQbGVvA8vet8vctoO4/z0A=="))
        assert isinstance(query, Query)
        self.assertTrue(check_digest(query, SECRET))
        self.assertFalse(check_digest(query, SECRET + "x"))

    def test_reply_bytes(self) -> None:
        """
        The reply for an active address is the 19 bytes of the example.
        """
        self.assertEqual(encode_reply(MAILBOX.encode(), Status.ACTIVE), REPLY)
        self.assertEqual(parse_reply(REPLY, MAILBOX), Reply(MAILBOX, Status.ACTIVE))

    def test_anonymous(self) -> None:
        """
        An anonymous query is the mailbox alone.
        """
        self.assertEqual(encode_query(MAILBOX), MAILBOX.encode())
        self.assertEqual(parse_query(MAILBOX.encode()), Query(MAILBOX))

    def test_status_digits(self) -> None:
        """
        Each status has the digit of draft-06.
        """
        self.assertEqual(
            [(s.name, int(s)) for s in Status],
            [
                ("BAD_REQUEST", 0),
                ("DENIED", 1),
                ("BAD_CREDENTIALS", 2),
                ("UNKNOWN", 3),
                ("INACTIVE", 4),
                ("ACTIVE", 5),
            ],
        )


class ToleranceTests(SynchronousTestCase):
    """
    The reader is lenient about the shape of a datagram and strict about its content.
    """

    def test_trailing_bytes(self) -> None:
        """
        Trailing CR, LF, SP, TAB and NUL are stripped.
        """
        for tail in (b"\r\n", b"\n", b"\x00", b" \t ", b"\r\n\x00"):
            self.assertEqual(parse_query(QUERY + tail), parse_query(QUERY))

    def test_runs_of_spaces(self) -> None:
        """
        Several spaces between tokens count as one.
        """
        self.assertEqual(parse_query(QUERY.replace(b" ", b"   ")), parse_query(QUERY))

    def test_bare_digest(self) -> None:
        """
        A draft-02 digest without C{d=} is accepted.
        """
        bare = QUERY.replace(b"d=", b"")
        self.assertEqual(parse_query(bare), parse_query(QUERY))

    def test_unknown_tags_kept(self) -> None:
        """
        Unknown tags after the digest are kept (and ignored by the server).
        """
        query = parse_query(QUERY + b" x=1 Foo_bar=baz")
        assert isinstance(query, Query)
        self.assertEqual(query.tags, (("x", "1"), ("Foo_bar", "baz")))
        self.assertEqual(query.tag("x"), "1")
        self.assertIsNone(query.tag("X"))
        self.assertTrue(check_digest(query, SECRET))

    def test_malformed_tags(self) -> None:
        """
        A repeated tag, a tag without a value, a tag with other characters and a second C{d}
        are malformed; the answer echoes the first token.
        """
        for tail in (b" x=1 x=2", b" x=", b" x", b" x=a-b", b" d=abc", b" x=1 d=1"):
            result = parse_query(QUERY + tail)
            self.assertIsInstance(result, Malformed, tail)
            assert isinstance(result, Malformed)
            self.assertEqual(result.echo, MAILBOX.encode())

    def test_bad_digest_token(self) -> None:
        """
        A C{d=} token that is not 22 base64 characters and C{==} is malformed.
        """
        for token in (
            b"d=",
            b"d=abc",
            b"d=wQbGVvA8vet8vctoO4/z0A=",
            b"d=wQbGVvA8vet8vctoO4/z0A!=",
        ):
            result = parse_query(MAILBOX.encode() + b" " + token)
            self.assertIsInstance(result, Malformed, token)

    def test_oversized(self) -> None:
        """
        A datagram over 1024 bytes is dropped; one of exactly 1024 is read.
        """
        self.assertEqual(parse_query(QUERY + b" " * (MAX_DATAGRAM - 44 + 1)).__class__, Ignored)
        self.assertEqual(parse_query(QUERY + b" " * (MAX_DATAGRAM - 44)), parse_query(QUERY))

    def test_empty(self) -> None:
        """
        An empty datagram (or only blanks) gets no answer.
        """
        for data in (b"", b"\r\n", b"   \x00"):
            self.assertIsInstance(parse_query(data), Ignored)

    def test_reply_is_not_answered(self) -> None:
        """
        A datagram that looks like a reply gets no answer, so two servers never ping-pong.
        """
        self.assertEqual(parse_query(REPLY), Ignored("a reply, not a query"))
        self.assertIsInstance(parse_query(b"garbage 0"), Ignored)

    def test_bad_mailboxes(self) -> None:
        """
        Mailboxes with a bad shape get status 0, with the first token echoed (at most 256
        bytes).
        """
        cases = [
            b"alice",
            b"alice@",
            b"@example.com",
            b"a@b@example.com",
            b"al..ice@example.com",
            b"alice@exa_mple.com",
            b"alice@-example.com",
            b"a" * 65 + b"@example.com",
            b"a@" + b"b" * 254,
            b"alice\x80@example.com",
            b"\xff\xfe",
            b'"al ice"@example.com',
        ]
        for data in cases:
            result = parse_query(data)
            self.assertIsInstance(result, Malformed, data)
            assert isinstance(result, Malformed)
            self.assertEqual(result.echo, data.split()[0][:256])

    def test_length_extension(self) -> None:
        """
        A mailbox carrying MD5 padding bytes is refused before its digest is looked at.
        """
        forged = MAILBOX.encode() + b"\x80" + b"\x00" * 20 + b"\x50\x01" + b"x@evil.test"
        result = parse_query(forged + b" d=" + digest(SECRET, MAILBOX))
        self.assertIsInstance(result, Malformed)

    def test_good_mailboxes(self) -> None:
        """
        Ordinary mailboxes, an address literal, a trailing dot and the C{*} probe are valid.
        """
        for mailbox in (
            MAILBOX,
            "first.last+tag@sub.example.com",
            "o'neil@example.com",
            "user@[192.0.2.1]",
            "user@example.com.",
            "*",
            "a" * 64 + "@" + "b" * 189,
        ):
            self.assertTrue(valid_mailbox(mailbox), mailbox)
            self.assertEqual(parse_query(mailbox.encode()), Query(mailbox))

    def test_encode_refuses_bad_mailbox(self) -> None:
        """
        The client never sends a mailbox the server would refuse.
        """
        self.assertRaises(ValueError, encode_query, "not a mailbox")
        self.assertRaises(ValueError, encode_query, "bob@example.com d=x")


class ReplyTests(SynchronousTestCase):
    """
    Reading replies.
    """

    def test_case_insensitive_echo(self) -> None:
        """
        The echoed mailbox is compared without regard to case.
        """
        reply = parse_reply(b"ALICE@Example.COM 3", MAILBOX)
        self.assertEqual(reply, Reply("ALICE@Example.COM", Status.UNKNOWN))

    def test_other_mailbox(self) -> None:
        """
        A reply about another mailbox is not a reply to this query.
        """
        self.assertIsNone(parse_reply(b"bob@example.com 5", MAILBOX))

    def test_bad_status(self) -> None:
        """
        The status must be one digit from 0 to 5.
        """
        for data in (b"alice@example.com", b"alice@example.com 6", b"alice@example.com 55"):
            self.assertIsNone(parse_reply(data, MAILBOX), data)
        self.assertIsNone(parse_reply(REPLY + b" " * MAX_DATAGRAM, MAILBOX))

    def test_trailing_and_extra(self) -> None:
        """
        Line ends are stripped; extra fields after the status are ignored.
        """
        self.assertEqual(parse_reply(REPLY + b"\r\n\x00", MAILBOX), Reply(MAILBOX, Status.ACTIVE))
        self.assertEqual(
            parse_reply(REPLY + b" some future field", MAILBOX), Reply(MAILBOX, Status.ACTIVE)
        )

    def test_every_status(self) -> None:
        """
        Every status digit reads back as its status.
        """
        for status in Status:
            self.assertEqual(parse_reply(encode_reply(b"*", status), "*"), Reply("*", status))


class CredentialsTests(SynchronousTestCase):
    """
    Which well-formed queries a server answers.
    """

    def check(
        self,
        data: bytes,
        *,
        secret: str | None = SECRET,
        anonymous: bool = False,
        hardened_required: bool = False,
        now: float = 1000.0,
        nonces: NonceCache | None = None,
    ) -> str | None:
        query = parse_query(data)
        assert isinstance(query, Query)
        return check_credentials(
            query,
            secret=secret,
            anonymous=anonymous,
            hardened_required=hardened_required,
            now=now,
            nonces=nonces or NonceCache(),
            source="192.0.2.1",
        )

    def test_digest(self) -> None:
        """
        A right digest is answered; a wrong one is refused, even with anonymous allowed and
        when no secret is configured.
        """
        self.assertIsNone(self.check(QUERY))
        wrong = encode_query(MAILBOX, "another secret that is long")
        self.assertEqual(self.check(wrong), "wrong digest")
        self.assertEqual(self.check(wrong, anonymous=True), "wrong digest")
        self.assertEqual(self.check(QUERY, secret=None, anonymous=True), "wrong digest")

    def test_anonymous(self) -> None:
        """
        A query without credentials is answered only with anonymous queries allowed.
        """
        self.assertEqual(self.check(MAILBOX.encode()), "no credentials")
        self.assertIsNone(self.check(MAILBOX.encode(), anonymous=True))

    def test_digest_over_received_bytes(self) -> None:
        """
        The digest covers the mailbox exactly as received: another case is another digest.
        """
        upper = MAILBOX.upper().encode() + b" d=" + digest(SECRET, MAILBOX)
        self.assertEqual(self.check(upper), "wrong digest")
        self.assertIsNone(self.check(encode_query(MAILBOX.upper(), SECRET)))

    def test_hardened_required(self) -> None:
        """
        A source that must use the hardened form gets status 2 for a draft-06 query (no
        downgrade), and is answered for a hardened one.
        """
        self.assertEqual(
            self.check(QUERY, hardened_required=True), "this source must use the hardened form"
        )
        hardened = encode_hardened_query(MAILBOX, hardened_key(SECRET), 1000.0, NONCE)
        self.assertIsNone(self.check(hardened, hardened_required=True))

    def test_hardened_without_secret(self) -> None:
        """
        A hardened query to a server without a secret is refused.
        """
        hardened = encode_hardened_query(MAILBOX, hardened_key(SECRET), 1000.0, NONCE)
        self.assertEqual(
            self.check(hardened, secret=None, anonymous=True),
            "hardened query but no secret configured",
        )


class HardenedTests(SynchronousTestCase):
    """
    The hardened form: MACs, replay and clock-skew refusal, authenticated replies.
    """

    key = hardened_key(SECRET)

    def query(self, when: float = 1000.0, nonce: bytes = NONCE) -> Query:
        parsed = parse_query(encode_hardened_query(MAILBOX, self.key, when, nonce))
        assert isinstance(parsed, Query)
        return parsed

    def test_shape(self) -> None:
        """
        The query is the mailbox and the v, t, n and m tags, with no digest.
        """
        query = self.query()
        self.assertTrue(query.hardened)
        self.assertIsNone(query.digest)
        self.assertEqual([name for name, _ in query.tags], ["v", "t", "n", "m"])
        self.assertEqual(query.tag("t"), "1000")
        self.assertEqual(query.tag("n"), NONCE.hex())

    def test_good(self) -> None:
        """
        A fresh query with a right MAC passes.
        """
        self.assertIsNone(check_hardened(self.query(), self.key, 1010.0, NonceCache(), "a"))

    def test_replay(self) -> None:
        """
        The same nonce from the same source is refused within the window, and accepted from
        another source or once the window has passed.
        """
        nonces = NonceCache(window=120.0)
        query = self.query()
        self.assertIsNone(check_hardened(query, self.key, 1000.0, nonces, "a"))
        self.assertEqual(check_hardened(query, self.key, 1029.0, nonces, "a"), "replayed nonce")
        self.assertIsNone(check_hardened(query, self.key, 1000.0, nonces, "b"))
        later = self.query(when=1130.0)
        self.assertIsNone(check_hardened(later, self.key, 1130.0, nonces, "a"))

    def test_skew(self) -> None:
        """
        A query more than 30 s off our clock, either way, is refused.
        """
        nonces = NonceCache()
        self.assertEqual(check_hardened(self.query(), self.key, 1031.0, nonces, "a"), "clock skew")
        self.assertEqual(check_hardened(self.query(), self.key, 969.0, nonces, "a"), "clock skew")
        self.assertIsNone(check_hardened(self.query(), self.key, 1030.0, nonces, "a"))

    def test_wrong_mac(self) -> None:
        """
        A query made with another key, or with a changed mailbox, is refused and its nonce not
        remembered.
        """
        nonces = NonceCache()
        other = parse_query(encode_hardened_query(MAILBOX, hardened_key("x" * 20), 1000.0, NONCE))
        assert isinstance(other, Query)
        self.assertEqual(check_hardened(other, self.key, 1000.0, nonces, "a"), "wrong MAC")
        changed = Query("bob@example.com", None, self.query().tags)
        self.assertEqual(check_hardened(changed, self.key, 1000.0, nonces, "a"), "wrong MAC")
        self.assertEqual(len(nonces), 0)

    def test_malformed_tags(self) -> None:
        """
        Tags of the wrong shape are refused.
        """
        tags = dict(self.query().tags)
        for name, value in (("t", "x1"), ("n", "ABC"), ("m", "00")):
            query = Query(MAILBOX, None, tuple({**tags, name: value}.items()))
            self.assertEqual(
                check_hardened(query, self.key, 1000.0, NonceCache(), "a"),
                "malformed hardened tags",
            )
        self.assertEqual(
            check_hardened(Query(MAILBOX), self.key, 1000.0, NonceCache(), "a"),
            "not a hardened query",
        )

    def test_reply(self) -> None:
        """
        A hardened reply carries a MAC over mailbox, status and nonce; the client accepts it
        only for the nonce it sent and with the status unchanged.
        """
        data = encode_hardened_reply(self.query(), Status.ACTIVE, self.key)
        self.assertTrue(data.startswith(REPLY + b" m="))
        reply = parse_reply(data, MAILBOX)
        assert reply is not None
        self.assertTrue(check_hardened_reply(reply, self.key, NONCE))
        self.assertFalse(check_hardened_reply(reply, self.key, bytes(16)))
        self.assertFalse(check_hardened_reply(reply, hardened_key("y" * 20), NONCE))
        forged = parse_reply(data.replace(b" 5 ", b" 3 "), MAILBOX)
        assert forged is not None
        self.assertFalse(check_hardened_reply(forged, self.key, NONCE))
        plain = parse_reply(REPLY, MAILBOX)
        assert plain is not None
        self.assertFalse(check_hardened_reply(plain, self.key, NONCE))

    def test_bad_input(self) -> None:
        """
        The encoder refuses a bad mailbox or a nonce that is not 16 bytes.
        """
        self.assertRaises(ValueError, encode_hardened_query, "x", self.key, 0.0, NONCE)
        self.assertRaises(ValueError, encode_hardened_query, MAILBOX, self.key, 0.0, b"1")


class NonceCacheTests(SynchronousTestCase):
    """
    The nonce cache forgets old entries and fails closed when full.
    """

    def test_full(self) -> None:
        """
        A full cache refuses new nonces until old ones age out.
        """
        cache = NonceCache(window=10.0, size=2)
        self.assertTrue(cache.first_use("a", "1", 0.0))
        self.assertTrue(cache.first_use("a", "2", 1.0))
        self.assertFalse(cache.first_use("a", "3", 2.0))
        self.assertTrue(cache.first_use("a", "3", 10.5))
        self.assertEqual(len(cache), 2)


class FuzzTests(SynchronousTestCase):
    """
    No input makes the codec raise.
    """

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=1100))
    def test_parse_query(self, data: bytes) -> None:
        """
        Any datagram parses to a query, a malformed query or an ignored datagram; a
        well-formed one goes through the credential check without raising.
        """
        result = parse_query(data)
        self.assertIsInstance(result, (Query, Malformed, Ignored))
        if isinstance(result, Query):
            check_credentials(
                result,
                secret=SECRET,
                anonymous=False,
                hardened_required=False,
                now=0.0,
                nonces=NonceCache(),
                source="a",
            )
            check_hardened(result, hardened_key(SECRET), 0.0, NonceCache(), "a")
            encode_reply(result.echo, Status.UNKNOWN)
        elif isinstance(result, Malformed):
            self.assertLessEqual(len(result.echo), 256)

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.sampled_from(
                [
                    b" ",
                    b"d=",
                    b"=",
                    b"@",
                    b"a",
                    b"x=1",
                    b"\r\n",
                    b"\x00",
                    b"5",
                    QUERY,
                    b"wQbGVvA8vet8vctoO4/z0A==",
                ]
            ),
            max_size=20,
        )
    )
    def test_parse_query_tokens(self, parts: list[bytes]) -> None:
        """
        Datagrams made of Minger-like pieces never make the reader raise.
        """
        self.assertIsInstance(parse_query(b"".join(parts)), (Query, Malformed, Ignored))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=1100), st.text(max_size=30))
    def test_parse_reply(self, data: bytes, mailbox: str) -> None:
        """
        Any datagram reads as a reply or as nothing, and a reply's MAC check never raises.
        """
        reply = parse_reply(data, mailbox)
        if reply is not None:
            check_hardened_reply(reply, hardened_key(SECRET), NONCE)

    @settings(max_examples=200, deadline=None)
    @given(
        st.from_regex(r"[a-z0-9.+_-]{1,20}@[a-z0-9]{1,10}\.[a-z]{2,5}", fullmatch=True),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=50),
    )
    def test_round_trip(self, mailbox: str, secret: str) -> None:
        """
        Every valid mailbox goes out and comes back with its digest intact.
        """
        if not valid_mailbox(mailbox):
            return
        query = parse_query(encode_query(mailbox, secret))
        self.assertIsInstance(query, Query)
        assert isinstance(query, Query)
        self.assertEqual(query.mailbox, mailbox)
        self.assertTrue(check_digest(query, secret))
