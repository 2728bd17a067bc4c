# -*- test-case-name: tests.smtp.core.test_server -*-
"""
The events that L{mdtwist.smtp.core.server.ServerCore.next_event} hands to the glue.

Each event class is a decision the core cannot take alone; the glue answers it with exactly one
L{mdtwist.smtp.core.replies.Reply} through C{ServerCore.send}. The L{Sentinel} values say that
there is nothing to decide right now.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum

import attrs

from mdtwist.smtp.core.params import MailParameters, RcptParameters


class Sentinel(enum.Enum):
    """
    What C{next_event} returns when it has no event.

    @cvar NEED_DATA: feed more bytes with C{receive_data}, then ask again.
    @cvar PAUSED: the core waits for the glue (a reply to the last event, the greeting, or the
        start of the TLS handshake); received bytes stay buffered.
    @cvar CLOSE: the session is over; write what C{data_to_send} holds, then close.
    """

    NEED_DATA = "need-data"
    PAUSED = "paused"
    CLOSE = "close"


@attrs.frozen
class MailFrom:
    """
    C{MAIL FROM}: answer with the policy's verdict; a 2xx opens the transaction.

    @ivar sender: the reverse-path without brackets; C{""} for the null sender.
    @ivar parameters: its ESMTP parameters.
    """

    sender: str
    parameters: MailParameters


@attrs.frozen
class RcptTo:
    """
    C{RCPT TO}: answer with the policy's verdict; a 2xx adds the recipient.

    @ivar recipient: the forward-path without brackets (or a bare C{postmaster}).
    @ivar parameters: its ESMTP parameters.
    """

    recipient: str
    parameters: RcptParameters


@attrs.frozen
class MessageReceived:
    """
    A message arrived whole and clean: answer C{250} once it is stored, else 4xx/5xx.

    Either way the transaction is over after the reply.

    @ivar sender: the reverse-path of the transaction.
    @ivar mail_parameters: the parameters of C{MAIL FROM}.
    @ivar recipients: the accepted recipients, in order.
    @ivar body: the message: CRLF line ends, dots unstuffed, no end marker. Not in the repr.
    """

    sender: str
    mail_parameters: MailParameters
    recipients: tuple[RcptTo, ...]
    body: bytes = attrs.field(repr=False)


@attrs.frozen
class Authenticate:
    """
    A SASL exchange produced credentials.

    Answer C{235} when they are right, else C{535} (or C{454} when they cannot be checked now).

    @ivar mechanism: the mechanism name, upper case.
    @ivar authzid: the identity to act as, C{""} when none was given.
    @ivar login: the authentication identity.
    @ivar password: the password (for CRAM-MD5, the client's hex digest). Not in the repr;
        never log it.
    @ivar challenge: for CRAM-MD5, the challenge the digest answers; L{None} for a password.
    """

    mechanism: str
    authzid: str
    login: str
    password: str = attrs.field(repr=False)
    challenge: bytes | None = None


@attrs.frozen
class StartTLS:
    """
    C{STARTTLS}: answer C{220} to go ahead, or 4xx/5xx to refuse.

    After the C{220}, start the handshake and call C{ServerCore.start_tls}.
    """


@attrs.frozen
class Quit:
    """C{QUIT}: answer C{221}; the session then closes."""


Event = MailFrom | RcptTo | MessageReceived | Authenticate | StartTLS | Quit
