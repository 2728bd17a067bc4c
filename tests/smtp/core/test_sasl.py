"""Tests for L{mdtwist.smtp.core.sasl}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.sasl import (
    Challenge,
    Credentials,
    LoginMechanism,
    Malformed,
    PlainMechanism,
    decode_response,
    encode_challenge,
    server_mechanism,
)


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
