"""Tests for L{mdtwist.smtp.core.sasl}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.sasl import (
    MECHANISMS,
    SUPPORTED,
    Challenge,
    CramMD5Mechanism,
    Credentials,
    HashedCredentials,
    LoginMechanism,
    Malformed,
    PlainMechanism,
    cram_md5_challenge,
    decode_response,
    encode_challenge,
    server_mechanism,
)

#: RFC 2195's example exchange.
RFC_CHALLENGE = b"<1896.697170952@postoffice.reston.mci.net>"
RFC_SECRET = b"tanstaaftanstaaf"
RFC_RESPONSE = b"tim b913a602c7eda7a495b4e6e7334d3890"


class PlainTests(SynchronousTestCase):
    """Tests for L{PlainMechanism}."""

    def test_initial_response(self) -> None:
        """An initial response gives the credentials at once, authzid included."""
        step = PlainMechanism().start(b"admin\x00alice\x00s3cret")
        self.assertEqual(step, Credentials("admin", "alice", "s3cret"))

    def test_without_initial_response(self) -> None:
        """Without an initial response the server sends an empty challenge first."""
        mechanism = PlainMechanism()
        self.assertEqual(mechanism.start(None), Challenge(b""))
        self.assertEqual(mechanism.respond(b"\x00bob\x00pw"), Credentials("", "bob", "pw"))

    def test_malformed(self) -> None:
        """Wrong field counts, empty login or password, and invalid UTF-8 are L{Malformed}."""
        for data in [b"", b"a\x00b", b"\x00\x00pw", b"\x00bob\x00", b"\x00\xff\x00pw"]:
            self.assertIsInstance(PlainMechanism().start(data), Malformed)

    def test_password_not_in_repr(self) -> None:
        """The password never appears in the repr of the credentials."""
        self.assertNotIn("s3cret", repr(Credentials("", "alice", "s3cret")))


class LoginTests(SynchronousTestCase):
    """Tests for L{LoginMechanism}."""

    def test_exchange(self) -> None:
        """LOGIN asks for the user name, then the password."""
        mechanism = LoginMechanism()
        self.assertEqual(mechanism.start(None), Challenge(b"Username:"))
        self.assertEqual(mechanism.respond(b"alice"), Challenge(b"Password:"))
        self.assertEqual(mechanism.respond(b"pw"), Credentials("", "alice", "pw"))

    def test_initial_response_is_username(self) -> None:
        """An initial response to LOGIN is the user name."""
        mechanism = LoginMechanism()
        self.assertEqual(mechanism.start(b"alice"), Challenge(b"Password:"))

    def test_empty_username(self) -> None:
        """An empty user name is L{Malformed}."""
        self.assertIsInstance(
            LoginMechanism().start(None) and LoginMechanism().respond(b""), Malformed
        )


class CodingTests(SynchronousTestCase):
    """Tests for the base64 helpers and the mechanism factory."""

    def test_decode(self) -> None:
        """C{=} is empty, valid base64 decodes, anything else is L{None}."""
        self.assertEqual(decode_response("="), b"")
        self.assertEqual(decode_response("YWI="), b"ab")
        self.assertIsNone(decode_response("a b"))
        self.assertIsNone(decode_response("é"))

    def test_encode(self) -> None:
        """Challenges are base64 encoded."""
        self.assertEqual(encode_challenge(b"Username:"), "VXNlcm5hbWU6")

    def test_factory(self) -> None:
        """Known names in any case give a mechanism; others give L{None}."""
        self.assertIsInstance(server_mechanism("plain"), PlainMechanism)
        self.assertIsInstance(server_mechanism("LOGIN"), LoginMechanism)
        self.assertIsNone(server_mechanism("CRAM-MD5"))
        self.assertIsInstance(server_mechanism("cram-md5", b"<1@h>"), CramMD5Mechanism)
        self.assertIsNone(server_mechanism("DIGEST-MD5", b"<1@h>"))

    def test_cram_md5_not_offered_by_default(self) -> None:
        """CRAM-MD5 is implemented but not among the mechanisms offered by default."""
        self.assertIn("CRAM-MD5", SUPPORTED)
        self.assertNotIn("CRAM-MD5", MECHANISMS)


class CramMD5Tests(SynchronousTestCase):
    """Tests for L{CramMD5Mechanism} and L{HashedCredentials}."""

    def test_exchange(self) -> None:
        """
        The mechanism sends its challenge, then returns the login, the challenge and the
        digest, which checks with the right secret only.
        """
        mechanism = CramMD5Mechanism(RFC_CHALLENGE)
        self.assertEqual(mechanism.start(None), Challenge(RFC_CHALLENGE))
        step = mechanism.respond(RFC_RESPONSE)
        self.assertEqual(
            step, HashedCredentials("tim", RFC_CHALLENGE, "b913a602c7eda7a495b4e6e7334d3890")
        )
        assert isinstance(step, HashedCredentials)
        self.assertTrue(step.check(RFC_SECRET))
        self.assertFalse(step.check(b"tanstaaftanstaag"))

    def test_upper_case_digest(self) -> None:
        """An upper-case hex digest is accepted (compared lower-case)."""
        step = CramMD5Mechanism(RFC_CHALLENGE).respond(
            RFC_RESPONSE.upper().replace(b"TIM", b"tim")
        )
        assert isinstance(step, HashedCredentials)
        self.assertTrue(step.check(RFC_SECRET))

    def test_login_with_space(self) -> None:
        """The digest is the last word: a login may hold spaces."""
        step = CramMD5Mechanism(RFC_CHALLENGE).respond(b"tim smith " + b"0" * 32)
        assert isinstance(step, HashedCredentials)
        self.assertEqual(step.login, "tim smith")

    def test_malformed(self) -> None:
        """
        An initial response, a missing login, a digest of the wrong length or not hex, and
        bytes that are not UTF-8 are malformed.
        """
        mechanism = CramMD5Mechanism(RFC_CHALLENGE)
        self.assertIsInstance(mechanism.start(b"tim"), Malformed)
        for bad in (
            b"b913a602c7eda7a495b4e6e7334d3890",
            b" b913a602c7eda7a495b4e6e7334d3890",
            b"tim b913a602c7eda7a495b4e6e7334d389",
            b"tim x913a602c7eda7a495b4e6e7334d3890",
            b"\xfftim b913a602c7eda7a495b4e6e7334d3890",
        ):
            self.assertIsInstance(mechanism.respond(bad), Malformed, bad)

    def test_digest_not_in_repr(self) -> None:
        """The digest is kept out of the repr."""
        step = CramMD5Mechanism(RFC_CHALLENGE).respond(RFC_RESPONSE)
        self.assertNotIn("b913a602", repr(step))

    def test_challenge_form(self) -> None:
        """A challenge has the message-id form C{<nonce@hostname>}."""
        self.assertEqual(
            cram_md5_challenge("1896.697170952", "h.example"), b"<1896.697170952@h.example>"
        )
