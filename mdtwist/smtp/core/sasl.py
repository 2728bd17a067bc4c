# -*- test-case-name: tests.smtp.core.test_sasl -*-
"""
Server side of the SASL mechanisms PLAIN (RFC 4616) and LOGIN, for SMTP AUTH (RFC 4954).

A mechanism is a small state machine: L{ServerMechanism.start} takes the initial response (or
L{None}), L{ServerMechanism.respond} takes each further client response, and each returns the
next step: a L{Challenge} to send, the L{Credentials} to check, or L{Malformed}. Responses and
challenges here are raw bytes; L{decode_response} and L{encode_challenge} do the base64 of the
SMTP exchange. Passwords are never part of a repr.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Protocol

import attrs

#: The mechanisms this module implements, in the order the server advertises them.
MECHANISMS = ("PLAIN", "LOGIN")


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


Step = Challenge | Credentials | Malformed


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


def server_mechanism(name: str) -> ServerMechanism | None:
    """
    Make a fresh mechanism by name.

    @param name: the mechanism name, any case.
    @return: the mechanism, or L{None} if it is not one of L{MECHANISMS}.
    """
    upper = name.upper()
    if upper == "PLAIN":
        return PlainMechanism()
    if upper == "LOGIN":
        return LoginMechanism()
    return None


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
