# -*- test-case-name: tests.test_envelope -*-
"""
The envelope of a message: who sent it, to whom, and the DSN parameters that travel with it.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum

import attrs

from mdtwist.route import Route
from mdtwist.secret import Secret


class RecipientState(enum.Enum):
    """
    Where one recipient of a queued message stands.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class BodyType(enum.Enum):
    """
    The C{BODY=} parameter of C{MAIL FROM} (RFC 6152).
    """

    SEVEN_BIT = "7BIT"
    EIGHT_BIT_MIME = "8BITMIME"
    BINARY_MIME = "BINARYMIME"


@attrs.frozen
class Recipient:
    """
    One recipient of a message, with its DSN parameters (RFC 3461) and delivery state.

    @ivar address: the forward-path, without angle brackets.
    @ivar notify: the C{NOTIFY=} values (C{NEVER}, or some of C{SUCCESS}, C{FAILURE}, C{DELAY});
        L{None} when the client gave none.
    @ivar orcpt: the C{ORCPT=} value as given (C{addr-type;xtext}), or L{None}.
    @ivar state: the delivery state.
    @ivar attempts: delivery attempts made so far.
    @ivar status: the last enhanced status code seen (C{5.1.1}), or C{""}.
    @ivar diagnostic: the last reply text from the next hop, or C{""}.
    @ivar route: where it goes, as the receive policy decided when it was accepted; L{None}
        for a recipient queued before routes were stored (the queue runner classifies it).
    """

    address: str
    notify: frozenset[str] | None = None
    orcpt: str | None = None
    state: RecipientState = RecipientState.PENDING
    attempts: int = 0
    status: str = ""
    diagnostic: str = ""
    route: Route | None = None


@attrs.frozen
class ClientInfo:
    """
    Who handed us the message.

    @ivar address: the client's IP address.
    @ivar helo: the name given in HELO/EHLO.
    @ivar user: the authenticated login, or L{None}.
    @ivar tls: a short description of the TLS session (protocol and cipher), or L{None}.
    @ivar password: the password the client authenticated with; kept only when the
        configuration sends mailbox passwords to the smart host (MDaemon's
        C{ISPAUTHUsePasswords}), else L{None}.
    """

    address: str
    helo: str
    user: str | None = None
    tls: str | None = None
    password: Secret | None = None


@attrs.frozen
class Envelope:
    """
    The envelope of one message.

    @ivar sender: the reverse-path without angle brackets; C{""} for the null sender C{<>}.
    @ivar recipients: the accepted recipients.
    @ivar client: who handed the message to us.
    @ivar arrival: arrival time, seconds since the epoch.
    @ivar body_type: the C{BODY=} parameter.
    @ivar smtputf8: whether the client gave C{SMTPUTF8}.
    @ivar ret: the DSN C{RET=} value (C{FULL} or C{HDRS}), or L{None}.
    @ivar envid: the DSN C{ENVID=} value (xtext as given), or L{None}.
    @ivar size: the C{SIZE=} the client declared, or L{None}.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    client: ClientInfo
    arrival: float
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    size: int | None = None
