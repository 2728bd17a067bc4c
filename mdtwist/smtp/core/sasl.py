# -*- test-case-name: tests.smtp.core.test_sasl -*-
"""
Server side of the SASL mechanisms PLAIN (RFC 4616), LOGIN and CRAM-MD5 (RFC 2195), for SMTP
AUTH (RFC 4954), and the client's CRAM-MD5 answer (L{cram_md5_response}).

A mechanism is a small state machine: L{ServerMechanism.start} takes the initial response (or
L{None}), L{ServerMechanism.respond} takes each further client response, and each returns the
next step: a L{Challenge} to send, the L{Credentials} (or, for CRAM-MD5, the
L{HashedCredentials}) to check, or L{Malformed}. Responses and
challenges here are raw bytes; L{decode_response} and L{encode_challenge} do the base64 of the
SMTP exchange. Passwords and digests are never part of a repr.

CRAM-MD5 proves knowledge of a secret without sending it, so it can only be checked against a
secret kept in clear (a gateway's, from the configuration), never against a password hash: a
server offers it only where such a checker stands behind the login.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Protocol

import attrs

#: The mechanisms offered by default, in the order the server advertises them.
MECHANISMS = ("PLAIN", "LOGIN")

#: Every mechanism this module implements; CRAM-MD5 only where a cleartext secret can check it.
SUPPORTED = ("PLAIN", "LOGIN", "CRAM-MD5")


@attrs.frozen
class Challenge:
    """
    A server challenge to send with C{334}.

    @ivar data: the challenge, before base64.
    """

    data: bytes


@attrs.frozen
class Credentials:
    """
    What the client offered: check it, then answer C{235} or C{535}.

    @ivar authzid: the identity to act as (C{""} when the client gave none).
    @ivar login: the authentication identity.
    @ivar password: the password; kept out of the repr.
    """

    authzid: str
    login: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class Malformed:
    """
    The client's response breaks the mechanism's syntax.

    @ivar reason: a short description, safe to log (it never holds the payload).
    """

    reason: str


@attrs.frozen
class HashedCredentials:
    """
    What a CRAM-MD5 client offered: its login and the keyed digest of the challenge.

    @ivar login: the authentication identity.
    @ivar challenge: the challenge the server sent.
    @ivar digest: the client's HMAC-MD5 of C{challenge}, lower-case hex; kept out of the repr.
    """

    login: str
    challenge: bytes
    digest: str = attrs.field(repr=False)

    def check(self, secret: bytes) -> bool:
        """
        Tell whether the digest was made with a secret, comparing in constant time.

        @param secret: the cleartext secret of L{login}.
        @return: whether it matches.
        """
        expected = hmac.new(secret, self.challenge, hashlib.md5).hexdigest()
        return hmac.compare_digest(expected, self.digest)


Step = Challenge | Credentials | HashedCredentials | Malformed


class ServerMechanism(Protocol):
    """One SASL exchange on the server side."""

    def start(self, initial: bytes | None) -> Step:
        """
        Begin the exchange.

        @param initial: the initial response (C{b""} for C{=}), or L{None} when there was none.
        @return: the next step.
        """

    def respond(self, response: bytes) -> Step:
        """
        Take the client's answer to the last challenge.

        @param response: the decoded response.
        @return: the next step.
        """


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


class PlainMechanism:
    """PLAIN: one message C{authzid NUL authcid NUL password}, UTF-8."""

    def start(self, initial: bytes | None) -> Step:
        """
        Begin PLAIN; without an initial response, ask with an empty challenge.

        @param initial: the initial response or L{None}.
        @return: the next step.
        """
        if initial is None:
            return Challenge(b"")
        return self.respond(initial)

    def respond(self, response: bytes) -> Step:
        """
        Split the PLAIN message.

        @param response: the decoded message.
        @return: the credentials, or L{Malformed}.
        """
        parts = response.split(b"\x00")
        if len(parts) != 3:
            return Malformed("PLAIN message needs exactly three fields")
        texts = [_text(part) for part in parts]
        authzid, login, password = texts
        if authzid is None or login is None or password is None:
            return Malformed("PLAIN message is not UTF-8")
        if not login or not password:
            return Malformed("PLAIN message lacks a login or a password")
        return Credentials(authzid, login, password)


class LoginMechanism:
    """LOGIN: asks C{Username:} then C{Password:}; an initial response is the username."""

    def __init__(self) -> None:
        self._login: str | None = None

    def start(self, initial: bytes | None) -> Step:
        """
        Begin LOGIN.

        @param initial: the username when the client sent it with C{AUTH LOGIN}, or L{None}.
        @return: the next step.
        """
        if initial is None:
            return Challenge(b"Username:")
        return self.respond(initial)

    def respond(self, response: bytes) -> Step:
        """
        Take the username, then the password.

        @param response: the decoded response.
        @return: the next step.
        """
        text = _text(response)
        if text is None:
            return Malformed("LOGIN response is not UTF-8")
        if self._login is None:
            if not text:
                return Malformed("LOGIN username is empty")
            self._login = text
            return Challenge(b"Password:")
        return Credentials("", self._login, text)


class CramMD5Mechanism:
    """
    CRAM-MD5 (RFC 2195): the server sends a unique challenge, the client answers with its
    login, a space and the hex HMAC-MD5 of the challenge keyed with its secret.
    """

    def __init__(self, challenge: bytes) -> None:
        """
        @param challenge: the challenge to send, unique per exchange, in the form of a message
            id (C{<nonce@hostname>}).
        """
        self._challenge = challenge

    def start(self, initial: bytes | None) -> Step:
        """
        Begin CRAM-MD5 with the challenge; the mechanism has no initial response.

        @param initial: must be L{None}.
        @return: the challenge, or L{Malformed} when an initial response was given.
        """
        if initial is not None:
            return Malformed("CRAM-MD5 takes no initial response")
        return Challenge(self._challenge)

    def respond(self, response: bytes) -> Step:
        """
        Split the answer into login and digest.

        @param response: the decoded answer.
        @return: the hashed credentials, or L{Malformed}.
        """
        text = _text(response)
        if text is None:
            return Malformed("CRAM-MD5 response is not UTF-8")
        login, _, digest = text.rpartition(" ")
        digest = digest.lower()
        if not login or len(digest) != 32 or digest.strip("0123456789abcdef"):
            return Malformed("CRAM-MD5 response is not a login and a 32-digit hex digest")
        return HashedCredentials(login, self._challenge, digest)


def server_mechanism(name: str, challenge: bytes = b"") -> ServerMechanism | None:
    """
    Make a fresh mechanism by name.

    @param name: the mechanism name, any case.
    @param challenge: the unique challenge for CRAM-MD5 (see L{cram_md5_challenge}).
    @return: the mechanism, or L{None} if it is not one of L{SUPPORTED} (or is CRAM-MD5
        without a challenge).
    """
    upper = name.upper()
    if upper == "PLAIN":
        return PlainMechanism()
    if upper == "LOGIN":
        return LoginMechanism()
    if upper == "CRAM-MD5" and challenge:
        return CramMD5Mechanism(challenge)
    return None


def cram_md5_challenge(nonce: str, hostname: str) -> bytes:
    """
    Build a CRAM-MD5 challenge in the message-id form RFC 2195 asks for.

    @param nonce: a value never used before for this server (random digits and a counter).
    @param hostname: the server's name.
    @return: C{<nonce@hostname>}.
    """
    return f"<{nonce}@{hostname}>".encode()


def cram_md5_response(login: str, secret: str, challenge: bytes) -> bytes:
    """
    The client's answer to a CRAM-MD5 challenge (RFC 2195): the login, a space and the
    HMAC-MD5 of the challenge keyed with the secret, as 32 lower-case hex digits.

    @param login: the login.
    @param secret: the password.
    @param challenge: the decoded challenge.
    @return: the answer, to be sent base64-encoded (it holds no secret, only the digest).
    """
    digest = hmac.new(secret.encode("utf-8"), challenge, hashlib.md5).hexdigest()
    return f"{login} {digest}".encode()


def decode_response(text: str) -> bytes | None:
    """
    Decode a base64 client response; C{=} stands for an empty response.

    @param text: the response as sent.
    @return: the bytes, or L{None} when it is not valid base64.
    """
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


def encode_challenge(data: bytes) -> str:
    """
    Encode a challenge for a C{334} line.

    @param data: the challenge.
    @return: its base64 text (empty for an empty challenge).
    """
    return base64.b64encode(data).decode("ascii")
