# -*- test-case-name: tests.smtp.core.test_client -*-
"""
The client role of the sans-IO SMTP core: one outbound session, many transactions, over SMTP
or LMTP.

Theory of operation
===================

L{ClientCore} is the mirror of L{mdtwist.smtp.core.server.ServerCore}: it reads replies and
writes commands, and does no I/O. The glue drives it with these calls:

 1. C{add_transaction(transaction)} any number of times, before or during the session.
 2. C{receive_data(bytes)} whenever bytes arrive; they are only buffered.
 3. C{next_event()} in a loop. The core takes one reply at a time, matches it with the oldest
    command still waiting for an answer, decides what to send next and queues those commands.
    It returns a L{ClientEvent} when the glue has something to do or learn, C{NEED_DATA} when
    it waits for replies, C{PAUSED} when it waits for the glue (TLS handshake, a message to
    send, or idle with nothing to send), and C{CLOSE} when the session is over.
 4. After each call, the glue writes C{data_to_send()}, then, while C{sending_body} is true and
    the transport accepts more, C{body_to_send(n)}; once the message is all written it calls
    C{next_event()} again (replies are not read while the message is being sent).
 5. C{tls_started()} after L{TLSRequested}; C{quit()} when it has nothing more to send;
    C{connection_lost()}, C{timed_out()}, C{tls_failed()} or C{connection_failed()} when the
    network says so. C{waiting_for} names the phase whose timeout applies.
 6. C{add_command(text, turns=...)} for a single command outside transactions (ETRN, ATRN,
    QSND): sent in turn with the transactions, never pipelined, answered by L{CommandReplied};
    with C{turns}, a single-line C{250} is L{Turned} instead and the core stops reading (ATRN,
    RFC 2645: the roles swap on the connection). C{detach()} then, or at any time, ends the
    session without a word to the server and returns the bytes received and not read.

The session: greeting (C{220}, anything else is L{SessionStatus.GREETING_REFUSED}); C{EHLO}
(C{HELO} after a 5xx); C{STARTTLS} when the policy asks and the server offers it, then C{EHLO}
again (only the new capabilities count); C{AUTH PLAIN} or C{AUTH LOGIN} when credentials are
set (C{AUTH CRAM-MD5} too when the settings list it: it sends no password, so it needs no
TLS); then the transactions, one after the other. With C{hello=False} (a dequeue signal that
sends its text straight after the greeting) there is no EHLO, STARTTLS or AUTH.

A transaction: C{MAIL FROM} (with C{SIZE=}, C{BODY=8BITMIME}, C{SMTPUTF8}, C{RET=}, C{ENVID=}
as needed and offered), one C{RCPT TO} per recipient (C{NOTIFY=}, C{ORCPT=} only when DSN is
offered), C{DATA}, the dot-stuffed message, and the final reply. With PIPELINING, MAIL, all
RCPTs and DATA leave in one write and the replies are matched in order (RFC 2920).

LMTP (RFC 2033) is a mode of the same session (C{ClientSettings(lmtp=True)}): the client says
C{LHLO} where SMTP says C{EHLO} (also after STARTTLS; there is no C{HELO} fallback, so a 5xx
to LHLO refuses the session), and after the end of the message the server answers once per
accepted recipient, in the order of the RCPT commands; each of those replies decides its own
recipient. A C{354} to DATA although no recipient was accepted breaks RFC 2033 (such a DATA
must fail with 503) and ends the session as a protocol error.

Rules:
 - each RCPT reply decides its recipient: 2xx accepted (decided later by the final reply), 4xx
   L{RecipientStatus.TEMPORARY}, 5xx L{RecipientStatus.PERMANENT};
 - C{452} (C{4.5.3}, or without an enhanced code) and C{552 5.5.3} to RCPT after at least one
   accepted recipient mean "too many recipients": that recipient and the ones after it go into
   a new transaction on the same connection, after this one;
 - the message is sent only after C{354} and only when a recipient was accepted; the final
   reply decides every accepted recipient; a pipelined C{DATA} that gets C{354} although no
   recipient was accepted is answered with an empty message (C{.}) whose reply is ignored;
 - a transaction that did not end with a final reply is followed by C{RSET}; a connection
   taken up again after being idle starts with C{RSET} too (it checks that the peer is alive);
   with PIPELINING the next transaction follows that C{RSET} in the same write (RFC 2920 3.1),
   and when the C{RSET} fails, so does the transaction behind it, temporarily;
 - checks before MAIL, decided here without asking the server, all permanent: a message larger
   than the server's C{SIZE} (C{5.3.4}); a message with 8-bit bytes and no C{8BITMIME}
   (C{5.6.3}: no downgrade is attempted); non-ASCII addresses (C{5.6.7}) or a transaction
   marked SMTPUTF8 (C{5.6.9}) and no C{SMTPUTF8}. A 7-bit message marked C{8BITMIME} goes
   without C{BODY=} to a server without 8BITMIME; C{BINARYMIME} is sent as C{8BITMIME}
   (the dot-stuffer canonicalises line ends, there is no CHUNKING);
 - with C{abort_on_rcpt_5xx} (MDaemon's "abort delivery if RCPT gets a 5xx"), DATA is never
   pipelined; after the first 5xx to RCPT the transaction is ended with RSET, and every
   recipient that was accepted or not yet tried is L{RecipientStatus.RETRY_NOW};
 - after the C{220} to STARTTLS, any byte already received, or received before
   C{tls_started()}, is an attack (response injection): the session ends with
   L{SessionStatus.PROTOCOL_ERROR} and those bytes are never read as replies;
 - credentials are never sent before TLS unless C{auth_without_tls} is set (CRAM-MD5 sends
   none); a server that offers none of our mechanisms is an authentication failure;
 - a C{421} anywhere ends the session (L{SessionStatus.SERVICE_CLOSING}); when the session
   ends early every recipient not yet decided is L{RecipientStatus.TEMPORARY} and the
   L{SessionOutcome} says why;
 - enhanced status codes come from the replies; a reply without one gets C{X.0.0} of its
   class.

Pure: standard library and attrs, plus the pure L{mdtwist.envelope} and L{mdtwist.secret}.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections import deque
from collections.abc import Iterable

import attrs

from mdtwist.envelope import BodyType, Recipient
from mdtwist.secret import Secret
from mdtwist.smtp.core.errors import LocalProtocolError, RemoteProtocolError
from mdtwist.smtp.core.events import Sentinel
from mdtwist.smtp.core.framing import DotStuffer, LineBuffer
from mdtwist.smtp.core.replies import MAX_REPLY_LINE, Reply, ReplyParser
from mdtwist.smtp.core.sasl import cram_md5_response

#: The SASL mechanisms the client uses by default, in order of preference.
CLIENT_MECHANISMS = ("PLAIN", "LOGIN")

#: Every SASL mechanism the client can use.
SUPPORTED_CLIENT_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")

#: The mechanisms that send no password, so they may be used without TLS.
_NO_PASSWORD_SENT = frozenset({"CRAM-MD5"})

_UNSAFE = re.compile(r"[\x00-\x20<>\x7f]")


class Phase(enum.Enum):
    """
    A step of the session: what was sent last, or what a reply answered.
    """

    CONNECT = "connect"
    GREETING = "greeting"
    EHLO = "ehlo"  # or LHLO in LMTP mode
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    MESSAGE = "message"
    RSET = "rset"
    QUIT = "quit"
    COMMAND = "command"

    # Phases key dictionaries on hot paths (the reply handlers, the glue's timeouts). Members
    # are singletons and compare by identity, so the identity hash, computed in C, is as good
    # as Enum's hash of the name, a Python call.
    __hash__ = object.__hash__


class StartTLSPolicy(enum.Enum):
    """
    When the client uses STARTTLS.

    @cvar NEVER: never.
    @cvar IF_OFFERED: when the server offers it; a refused STARTTLS continues in plaintext.
    @cvar REQUIRED: always; no STARTTLS offered, or a refused one, ends the session.
    """

    NEVER = "never"
    IF_OFFERED = "if-offered"
    REQUIRED = "required"


class RecipientStatus(enum.Enum):
    """
    What became of one recipient.

    @cvar DELIVERED: the server took responsibility (2xx to the end of the message).
    @cvar TEMPORARY: not delivered, try again later (4xx, or the session ended early).
    @cvar PERMANENT: refused for good (5xx, or a check before MAIL): bounce.
    @cvar RETRY_NOW: not delivered because the transaction was aborted for another recipient's
        5xx (C{abort_on_rcpt_5xx}); try again at once, without the refused recipients.
    """

    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    RETRY_NOW = "retry-now"


class SessionStatus(enum.Enum):
    """
    How the session ended.

    @cvar COMPLETED: normally (QUIT, or still open and idle).
    @cvar CONNECTION_FAILED: no connection could be made (set by the glue).
    @cvar GREETING_REFUSED: the host will not talk to us: a non-220 greeting, or a failing
        reply to EHLO/HELO. Never a reason to bounce by itself: try another host.
    @cvar SERVICE_CLOSING: the server said C{421}.
    @cvar CONNECTION_LOST: the connection closed unexpectedly.
    @cvar TIMEOUT: a reply did not come in time.
    @cvar TLS_REQUIRED: TLS is required (by the policy, or to send credentials) and the server
        does not offer STARTTLS.
    @cvar TLS_FAILED: STARTTLS was refused although required, or the handshake or the
        certificate check failed.
    @cvar AUTH_FAILED: authentication failed (C{535} and friends) or is impossible (no common
        mechanism): a deferral, never a bounce.
    @cvar PROTOCOL_ERROR: the server broke the protocol (malformed reply, unexpected code,
        bytes after the C{220} to STARTTLS).
    """

    COMPLETED = "completed"
    CONNECTION_FAILED = "connection-failed"
    GREETING_REFUSED = "greeting-refused"
    SERVICE_CLOSING = "service-closing"
    CONNECTION_LOST = "connection-lost"
    TIMEOUT = "timeout"
    TLS_REQUIRED = "tls-required"
    TLS_FAILED = "tls-failed"
    AUTH_FAILED = "auth-failed"
    PROTOCOL_ERROR = "protocol-error"


#: The enhanced code given to recipients left undecided when a session ends this way.
_SESSION_ENHANCED = {
    SessionStatus.COMPLETED: "4.0.0",
    SessionStatus.CONNECTION_FAILED: "4.4.1",
    SessionStatus.GREETING_REFUSED: "4.4.1",
    SessionStatus.SERVICE_CLOSING: "4.3.2",
    SessionStatus.CONNECTION_LOST: "4.4.2",
    SessionStatus.TIMEOUT: "4.4.2",
    SessionStatus.TLS_REQUIRED: "4.7.4",
    SessionStatus.TLS_FAILED: "4.7.5",
    SessionStatus.AUTH_FAILED: "4.7.8",
    SessionStatus.PROTOCOL_ERROR: "4.5.0",
}


class ClientState(enum.Enum):
    """
    Where the client session stands.

    @cvar GREETING: waiting for the greeting.
    @cvar NEGOTIATING: EHLO, STARTTLS, AUTH.
    @cvar TLS_PENDING: the C{220} to STARTTLS arrived; waiting for C{tls_started()}.
    @cvar SENDING: running transactions.
    @cvar IDLE: nothing to send; the connection is open and may be reused.
    @cvar QUITTING: C{QUIT} sent.
    @cvar TURNED: a command queued with C{add_command(..., turns=True)} got a single-line
        C{250}: the roles swap on this connection and the core reads nothing more.
    @cvar CLOSED: over.
    """

    GREETING = "greeting"
    NEGOTIATING = "negotiating"
    TLS_PENDING = "tls-pending"
    SENDING = "sending"
    IDLE = "idle"
    QUITTING = "quitting"
    TURNED = "turned"
    CLOSED = "closed"


@attrs.frozen
class Capabilities:
    """
    What the server offered in its EHLO reply.

    @ivar extended: whether the server answered EHLO (L{False} after the HELO fallback).
    @ivar pipelining: PIPELINING (RFC 2920).
    @ivar size: the C{SIZE} limit (RFC 1870); C{0} when SIZE is offered without a limit,
        L{None} when SIZE is not offered.
    @ivar eight_bit_mime: 8BITMIME (RFC 6152).
    @ivar smtputf8: SMTPUTF8 (RFC 6531).
    @ivar dsn: DSN (RFC 3461).
    @ivar starttls: STARTTLS (RFC 3207).
    @ivar auth: the SASL mechanisms offered, upper case (RFC 4954).
    @ivar enhanced_status_codes: ENHANCEDSTATUSCODES (RFC 2034).
    @ivar keywords: every EHLO keyword offered, upper case (C{ATRN}, C{ETRN} ...).
    """

    extended: bool = False
    pipelining: bool = False
    size: int | None = None
    eight_bit_mime: bool = False
    smtputf8: bool = False
    dsn: bool = False
    starttls: bool = False
    auth: frozenset[str] = frozenset()
    enhanced_status_codes: bool = False
    keywords: frozenset[str] = frozenset()

    @classmethod
    def from_ehlo(cls, answer: Reply) -> Capabilities:
        """
        Read the keywords of a positive EHLO reply (every line after the first).

        @param answer: the reply.
        @return: the capabilities; unknown keywords are ignored.
        """
        fields: dict[str, object] = {"extended": True}
        mechanisms: set[str] = set()
        keywords: set[str] = set()
        for line in answer.lines[1:]:
            words = line.split()
            if not words:
                continue
            keyword, arguments = words[0].upper(), [w.upper() for w in words[1:]]
            if keyword.startswith("AUTH="):
                keyword, arguments = "AUTH", [keyword[5:], *arguments]
            keywords.add(keyword)
            if keyword == "PIPELINING":
                fields["pipelining"] = True
            elif keyword == "SIZE":
                limit = arguments[0] if arguments else "0"
                fields["size"] = int(limit) if limit.isascii() and limit.isdigit() else 0
            elif keyword == "8BITMIME":
                fields["eight_bit_mime"] = True
            elif keyword == "SMTPUTF8":
                fields["smtputf8"] = True
            elif keyword == "DSN":
                fields["dsn"] = True
            elif keyword == "STARTTLS":
                fields["starttls"] = True
            elif keyword == "AUTH":
                mechanisms.update(a for a in arguments if a)
            elif keyword == "ENHANCEDSTATUSCODES":
                fields["enhanced_status_codes"] = True
        fields["auth"] = frozenset(mechanisms)
        fields["keywords"] = frozenset(keywords)
        return cls(**fields)  # type: ignore[arg-type]


@attrs.frozen
class Credentials:
    """
    A login for SMTP AUTH.

    @ivar login: the authentication identity.
    @ivar password: the password, kept in a L{Secret}.
    """

    login: str
    password: Secret


def _mechanism_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _check_mechanisms(
    instance: ClientSettings, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    unknown = set(value) - set(SUPPORTED_CLIENT_MECHANISMS)
    if unknown:
        raise ValueError(f"unsupported SASL mechanisms: {sorted(unknown)}")


@attrs.frozen
class ClientSettings:
    """
    How one outbound session behaves.

    @ivar hostname: our name, for EHLO/HELO.
    @ivar starttls: when to use STARTTLS.
    @ivar tls_active: whether the connection is already encrypted (implicit TLS).
    @ivar credentials: the login for AUTH, or L{None} for none.
    @ivar auth_without_tls: whether credentials may be sent over plaintext.
    @ivar abort_on_rcpt_5xx: end a transaction with RSET at the first 5xx to RCPT.
    @ivar auth_mechanisms: the mechanisms we may use, in order of preference.
    @ivar lmtp: speak LMTP (RFC 2033): C{LHLO}, and one reply per recipient after the data.
    @ivar hello: say EHLO (or HELO) after the greeting; without it the queued commands follow
        the greeting at once, with no STARTTLS and no AUTH (a dequeue signal's "no EHLO").
    """

    hostname: str
    starttls: StartTLSPolicy = StartTLSPolicy.IF_OFFERED
    tls_active: bool = False
    credentials: Credentials | None = None
    auth_without_tls: bool = False
    abort_on_rcpt_5xx: bool = False
    auth_mechanisms: tuple[str, ...] = attrs.field(
        default=CLIENT_MECHANISMS, converter=_mechanism_tuple, validator=_check_mechanisms
    )
    lmtp: bool = False
    hello: bool = True


def _check_address(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _UNSAFE.search(value):
        raise ValueError(f"{attribute.name} holds a space, a control character or a bracket")


def _recipient_tuple(value: Iterable[Recipient]) -> tuple[Recipient, ...]:
    return tuple(value)


def _check_recipients(
    instance: Transaction,
    attribute: attrs.Attribute[tuple[Recipient, ...]],
    value: tuple[Recipient, ...],
) -> None:
    if not value:
        raise ValueError("a transaction needs at least one recipient")
    for recipient in value:
        if not recipient.address or _UNSAFE.search(recipient.address):
            raise ValueError("a recipient address is empty or holds an unsafe character")
        if recipient.orcpt is not None and _UNSAFE.search(recipient.orcpt):
            raise ValueError("an ORCPT value holds an unsafe character")


def _check_xtext(
    instance: object, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is not None and (not value or _UNSAFE.search(value)):
        raise ValueError(f"{attribute.name} is empty or holds an unsafe character")


@attrs.frozen
class Transaction:
    """
    One message for one or more recipients on the same server.

    @ivar sender: the reverse-path without brackets; C{""} for the null sender.
    @ivar recipients: the recipients, with their DSN parameters.
    @ivar body: the message, CRLF line ends (stray CR or LF are sent as CRLF).
    @ivar body_type: the C{BODY=} the message arrived with; 8-bit bytes in the body need
        8BITMIME whatever this says.
    @ivar smtputf8: whether the message needs SMTPUTF8 (UTF-8 headers); non-ASCII addresses
        need it whatever this says.
    @ivar ret: the DSN C{RET=} value (C{FULL} or C{HDRS}), or L{None}.
    @ivar envid: the DSN C{ENVID=} value as xtext, or L{None}.
    """

    sender: str = attrs.field(validator=_check_address)
    recipients: tuple[Recipient, ...] = attrs.field(
        converter=_recipient_tuple, validator=_check_recipients
    )
    body: bytes = attrs.field(repr=False)
    body_type: BodyType = BodyType.SEVEN_BIT
    smtputf8: bool = False
    ret: str | None = attrs.field(default=None, validator=_check_xtext)
    envid: str | None = attrs.field(default=None, validator=_check_xtext)


@attrs.frozen
class RecipientOutcome:
    """
    What became of one recipient of a transaction.

    @ivar address: the recipient address.
    @ivar status: the verdict.
    @ivar code: the server's reply code, or L{None} when the verdict was made here (a check
        before MAIL, an aborted transaction, a session that ended early).
    @ivar enhanced: the enhanced status code: the server's, or derived (C{4.0.0}, C{5.0.0}),
        or ours.
    @ivar text: the server's reply text, or our explanation.
    @ivar phase: the step that decided: L{Phase.MAIL}, L{Phase.RCPT}, L{Phase.DATA},
        L{Phase.MESSAGE} (the final reply), or where the session stood when it ended.
    """

    address: str
    status: RecipientStatus
    code: int | None
    enhanced: str
    text: str
    phase: Phase


@attrs.frozen
class TransactionOutcome:
    """
    The verdicts for one L{Transaction}.

    @ivar transaction: the transaction.
    @ivar recipients: one outcome per recipient, in the transaction's order.
    @ivar dsn_passed_on: whether the server offered DSN, so that NOTIFY, ORCPT, RET and ENVID
        went with the message (otherwise a C{NOTIFY=SUCCESS} asks for a "relayed" DSN).
    """

    transaction: Transaction
    recipients: tuple[RecipientOutcome, ...]
    dsn_passed_on: bool


@attrs.frozen
class SessionOutcome:
    """
    How a session ended.

    @ivar status: the kind of ending.
    @ivar phase: the step at which it ended.
    @ivar reply: the server reply that ended it, or L{None}.
    @ivar detail: a short explanation for logs and DSNs (never a password or a body).
    """

    status: SessionStatus
    phase: Phase
    reply: Reply | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Whether the session ended normally."""
        return self.status is SessionStatus.COMPLETED


@attrs.frozen
class TLSRequested:
    """
    The server agreed to STARTTLS: start the handshake, then call C{tls_started()}.
    """


@attrs.frozen
class TransactionDone:
    """
    Every recipient of a transaction is decided.

    @ivar outcome: the verdicts.
    """

    outcome: TransactionOutcome


@attrs.frozen
class Idle:
    """
    Nothing left to send; the connection is open. Add a transaction or call C{quit()}.

    @ivar capabilities: the server's capabilities.
    """

    capabilities: Capabilities


@attrs.frozen
class SessionEnded:
    """
    The session is over (the last event); close the connection.

    @ivar outcome: how it ended.
    """

    outcome: SessionOutcome


@attrs.frozen
class CommandReplied:
    """
    The reply to a command queued with C{add_command} (one that did not turn the connection).

    @ivar command: the command as sent, without CRLF.
    @ivar reply: the server's reply.
    """

    command: str
    reply: Reply


@attrs.frozen
class Turned:
    """
    A single-line C{250} answered a command queued with C{add_command(..., turns=True)}
    (ATRN, RFC 2645): the roles swap right after that reply. The core reads nothing more;
    C{detach()} gives the bytes that followed the reply, which belong to the new role.

    @ivar command: the command as sent, without CRLF.
    @ivar reply: the C{250}.
    """

    command: str
    reply: Reply


ClientEvent = TLSRequested | TransactionDone | Idle | SessionEnded | CommandReplied | Turned


@attrs.frozen
class _Command:
    text: str
    turns: bool


@attrs.define
class _Expect:
    phase: Phase
    index: int = -1


class _Job:
    """The verdicts collected for one L{Transaction}, over one or more SMTP transactions."""

    def __init__(self, transaction: Transaction) -> None:
        self.transaction = transaction
        addresses = [transaction.sender, *(r.address for r in transaction.recipients)]
        # Whether an address is not ASCII, and whether the transaction needs SMTPUTF8:
        # decided once, not for every command.
        self.non_ascii = not all(a.isascii() for a in addresses)
        self.utf8 = transaction.smtputf8 or self.non_ascii
        self.results: list[RecipientOutcome | None] = [None] * len(transaction.recipients)
        self.dsn = False
        self.reported = False

    def decide(self, index: int, outcome: RecipientOutcome) -> None:
        if self.results[index] is None:
            self.results[index] = outcome

    @property
    def complete(self) -> bool:
        return all(r is not None for r in self.results)

    def outcome(self) -> TransactionOutcome:
        results = tuple(r for r in self.results if r is not None)
        return TransactionOutcome(self.transaction, results, self.dsn)


class _DataState(enum.Enum):
    NOT_SENT = "not-sent"
    SENT = "sent"
    SENDING_BODY = "sending-body"
    DISCARDING = "discarding"
    FAILED = "failed"
    DONE = "done"


class _Attempt:
    """One SMTP transaction: some recipients of a job."""

    def __init__(self, job: _Job, indices: list[int]) -> None:
        self.job = job
        self.indices = indices
        self.sent = 0
        self.accepted: list[int] = []
        self.carried: list[int] = []
        self.mail_failed = False
        self.too_many = False
        self.aborted = False
        self.data = _DataState.NOT_SENT


class _Body:
    """The message being sent, one stuffed chunk at a time."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._offset = 0
        self._stuffer = DotStuffer()
        self.finished = False

    def take(self, size: int) -> bytes:
        while not self.finished:
            if self._offset >= len(self._body):
                self.finished = True
                return self._stuffer.finish()
            chunk = self._body[self._offset : self._offset + size]
            self._offset += len(chunk)
            data = self._stuffer.encode(chunk)
            if data:
                return data
        return b""


def _enhanced(answer: Reply) -> str:
    return answer.enhanced or f"{answer.category}.0.0"


def _status_of(answer: Reply) -> RecipientStatus:
    if answer.is_positive:
        return RecipientStatus.DELIVERED
    return RecipientStatus.TEMPORARY if answer.category == 4 else RecipientStatus.PERMANENT


def _xtext_notify(notify: frozenset[str]) -> str:
    if "NEVER" in notify:
        return "NEVER"
    order = ("SUCCESS", "FAILURE", "DELAY")
    return ",".join(n for n in order if n in notify)


class ClientCore:
    """One SMTP client session, without I/O. See the module docstring for how to drive it."""

    def __init__(self, settings: ClientSettings) -> None:
        """@param settings: how the session behaves."""
        self._settings = settings
        self._lines = LineBuffer()
        self._parser = ReplyParser()
        self._out = bytearray()
        self._events: deque[ClientEvent] = deque()
        self._expect: deque[_Expect] = deque([_Expect(Phase.GREETING)])
        self._state = ClientState.GREETING
        self._last_phase = Phase.GREETING
        self._tls = settings.tls_active
        self._tls_refused = False
        self._capabilities: Capabilities | None = None
        self._authenticated = False
        self._mechanism = ""
        self._auth_step = 0
        self._queue: deque[_Attempt | _Command] = deque()
        self._command_sent: _Command | None = None
        self._turn_queued = False
        self._attempt: _Attempt | None = None
        self._body: _Body | None = None
        self._needs_rset = False
        self._was_idle = False
        self._quit_requested = False
        self._outcome: SessionOutcome | None = None

    # -- what the glue may read --

    @property
    def settings(self) -> ClientSettings:
        """The settings of this session."""
        return self._settings

    @property
    def state(self) -> ClientState:
        """The session state."""
        return self._state

    @property
    def capabilities(self) -> Capabilities | None:
        """The capabilities of the last EHLO/HELO, or L{None} before it (and after STARTTLS)."""
        return self._capabilities

    @property
    def tls_active(self) -> bool:
        """Whether the session is encrypted."""
        return self._tls

    @property
    def authenticated(self) -> bool:
        """Whether AUTH succeeded."""
        return self._authenticated

    @property
    def sending_body(self) -> bool:
        """Whether message bytes wait for L{body_to_send}."""
        return self._body is not None and not self._body.finished

    @property
    def waiting_for(self) -> Phase | None:
        """
        The phase of the oldest command still waiting for its reply (its timeout applies), or
        L{None} when no reply is awaited (idle, TLS handshake, or closed). While the message is
        being sent this is L{Phase.MESSAGE}; the glue applies its data-block timeout then.
        """
        if self._state in (
            ClientState.CLOSED,
            ClientState.TLS_PENDING,
            ClientState.IDLE,
            ClientState.TURNED,
        ):
            return None
        return self._expect[0].phase if self._expect else None

    # -- the driving calls --

    def add_transaction(self, transaction: Transaction) -> None:
        """
        Queue a transaction; it runs after those queued before it.

        @param transaction: the transaction.
        @raise LocalProtocolError: the session is ending or over.
        """
        self._check_can_queue()
        job = _Job(transaction)
        self._queue.append(_Attempt(job, list(range(len(transaction.recipients)))))
        if self._state is ClientState.IDLE:
            self._state = ClientState.SENDING
            self._start_next()

    def add_command(self, command: str, *, turns: bool = False) -> None:
        """
        Queue one command outside any transaction (C{ETRN}, C{ATRN}, C{QSND} ...); it is sent
        after the transactions queued before it, never pipelined, and its reply comes out as
        L{CommandReplied}, or as L{Turned} when C{turns} is set and the reply is a single-line
        C{250}. Nothing may be queued after a command that turns the connection.

        @param command: the command line without CRLF: printable ASCII.
        @param turns: whether a single-line C{250} turns the connection round (ATRN).
        @raise LocalProtocolError: the session is ending or over, or turns.
        @raise ValueError: the command is empty or not printable ASCII.
        """
        if not command or not command.isascii() or not command.isprintable():
            raise ValueError("a command must be printable ASCII")
        self._check_can_queue()
        self._queue.append(_Command(command, turns))
        self._turn_queued = turns
        if self._state is ClientState.IDLE:
            self._state = ClientState.SENDING
            self._start_next()

    def detach(self) -> bytes:
        """
        Hand the connection to another protocol: end the session here without a word to the
        server (nothing queued is sent; undecided recipients become temporary failures and
        L{SessionEnded} follows, as after any early end) and take the bytes received but not
        read.

        @return: the unread bytes (after L{Turned}: exactly what followed the C{250}).
        """
        unread = self._lines.take_all()
        self._out.clear()
        self._end(
            SessionStatus.COMPLETED,
            self._phase(),
            None,
            "the connection was handed to another protocol",
        )
        return unread

    def _check_can_queue(self) -> None:
        if self._state in (ClientState.QUITTING, ClientState.CLOSED) or self._quit_requested:
            raise LocalProtocolError("the session is ending")
        if self._state is ClientState.TURNED or self._turn_queued:
            raise LocalProtocolError("the connection turns round: nothing can follow")

    def quit(self) -> None:
        """End the session with C{QUIT} once the queued transactions are done."""
        if self._state in (ClientState.QUITTING, ClientState.CLOSED, ClientState.TURNED):
            return
        self._quit_requested = True
        if self._state is ClientState.IDLE:
            self._send_quit()

    def receive_data(self, data: bytes) -> None:
        """
        Buffer received bytes; nothing is processed until L{next_event}.

        @param data: the bytes.
        """
        if self._state is ClientState.CLOSED:
            return
        if self._state is ClientState.TLS_PENDING and data:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.STARTTLS, None, "data before TLS")
            return
        self._lines.feed(data)

    def data_to_send(self) -> bytes:
        """
        Take the commands queued for the server.

        @return: the bytes (possibly empty).
        """
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def body_to_send(self, size: int = 65536) -> bytes:
        """
        Take the next piece of the message (dot-stuffed; the last piece ends with C{.} CRLF).

        @param size: about how many message bytes to take.
        @return: the bytes; empty when no message is being sent.
        """
        if self._body is None:
            return b""
        data = self._body.take(size)
        if self._body.finished:
            self._last_phase = Phase.MESSAGE
        return data

    def next_event(self) -> ClientEvent | Sentinel:
        """
        Process buffered replies up to the next event.

        @return: an event, or a L{Sentinel}.
        """
        while True:
            if self._events:
                return self._events.popleft()
            if self._state is ClientState.CLOSED:
                return Sentinel.CLOSE
            if self._state is ClientState.TLS_PENDING or self.sending_body:
                return Sentinel.PAUSED
            if self._state is ClientState.TURNED:
                return Sentinel.PAUSED
            if self._state is ClientState.IDLE and not len(self._lines):
                return Sentinel.PAUSED
            try:
                answer = self._read_reply()
            except RemoteProtocolError as e:
                self._end(SessionStatus.PROTOCOL_ERROR, self._phase(), None, str(e))
                continue
            if answer is None:
                return Sentinel.NEED_DATA
            self._handle(answer)

    def tls_started(self) -> None:
        """
        The TLS handshake has started: forget the capabilities and say EHLO again.

        @raise LocalProtocolError: no C{220} to STARTTLS arrived.
        """
        if self._state is not ClientState.TLS_PENDING:
            raise LocalProtocolError("tls_started() without a 220 to STARTTLS")
        self._tls = True
        self._capabilities = None
        self._state = ClientState.NEGOTIATING
        self._hello()

    def tls_failed(self, detail: str) -> None:
        """
        The TLS handshake or the certificate check failed; the connection is unusable.

        @param detail: what went wrong.
        """
        self._end(SessionStatus.TLS_FAILED, Phase.STARTTLS, None, detail)

    def connection_failed(self, detail: str) -> None:
        """
        No connection could be made: every queued transaction is decided temporary.

        @param detail: what went wrong.
        """
        self._end(SessionStatus.CONNECTION_FAILED, Phase.CONNECT, None, detail)

    def connection_lost(self, detail: str = "connection lost") -> None:
        """
        The connection closed; normal after QUIT, a TLS failure during the handshake, a lost
        connection otherwise.

        @param detail: what went wrong.
        """
        if self._state is ClientState.QUITTING:
            self._close()
        elif self._tls and not self._settings.tls_active and self._capabilities is None:
            # Lost between the 220 to STARTTLS and the first reply over TLS: the handshake
            # or the certificate check failed.
            self._end(SessionStatus.TLS_FAILED, Phase.STARTTLS, None, detail)
        else:
            self._end(SessionStatus.CONNECTION_LOST, self._phase(), None, detail)

    def timed_out(self) -> None:
        """The awaited reply did not come in time (the glue then closes the connection)."""
        if self._state is ClientState.QUITTING:
            self._close()
        else:
            phase = self._phase()
            self._end(SessionStatus.TIMEOUT, phase, None, f"timeout waiting for {phase.value}")

    # -- internals: input --

    def _read_reply(self) -> Reply | None:
        # Lines are taken here and handed to the parser one at a time, so that after the 220
        # to STARTTLS the bytes still buffered are known and never parsed.
        while True:
            line = self._lines.read_line(MAX_REPLY_LINE)
            if line is None:
                return None
            if line.overflow:
                raise RemoteProtocolError("reply line too long")
            answer = self._parser.feed_line(line.content)
            if answer is not None:
                return answer

    def _phase(self) -> Phase:
        return self._expect[0].phase if self._expect else self._last_phase

    def _handle(self, answer: Reply) -> None:
        if not self._expect:
            if answer.code == 421:
                self._end(SessionStatus.SERVICE_CLOSING, self._last_phase, answer)
            else:
                self._end(
                    SessionStatus.PROTOCOL_ERROR, self._last_phase, answer, "unexpected reply"
                )
            return
        expected = self._expect.popleft()
        phase = expected.phase
        if phase is Phase.QUIT:
            self._close()
            return
        if answer.code == 421 and phase is not Phase.GREETING:
            self._end(SessionStatus.SERVICE_CLOSING, phase, answer)
            return
        handler = _HANDLERS[phase]
        handler(self, answer, expected.index)

    # -- internals: output --

    def _command(self, phase: Phase, text: str, index: int = -1, *, utf8: bool = False) -> None:
        self._out += text.encode("utf-8" if utf8 else "ascii") + b"\r\n"
        self._expect.append(_Expect(phase, index))
        self._last_phase = phase

    def _send_quit(self) -> None:
        self._state = ClientState.QUITTING
        self._out += b"QUIT\r\n"
        self._expect.append(_Expect(Phase.QUIT))
        self._last_phase = Phase.QUIT

    def _close(self) -> None:
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._expect.clear()
        self._lines.clear()
        outcome = self._outcome or SessionOutcome(SessionStatus.COMPLETED, Phase.QUIT)
        self._events.append(SessionEnded(outcome))

    def _end(
        self,
        status: SessionStatus,
        phase: Phase,
        answer: Reply | None,
        detail: str = "",
        *,
        quit: bool = False,
    ) -> None:
        """End the session early: undecided recipients become temporary failures."""
        if self._state is ClientState.CLOSED:
            return
        if self._outcome is None:
            self._outcome = SessionOutcome(status, phase, answer, detail)
        if answer is not None and answer.category == 4:
            code: int | None = answer.code
            enhanced = _enhanced(answer)
            text = answer.text
        else:
            code = None
            enhanced = _SESSION_ENHANCED[status]
            text = detail or (answer.text if answer is not None else status.value)
            if answer is not None:
                text = f"{answer.code} {text}"
        attempts = [a for a in self._queue if isinstance(a, _Attempt)]
        if self._attempt is not None:
            attempts.insert(0, self._attempt)
        for attempt in attempts:
            job = attempt.job
            for index in attempt.indices:
                job.decide(
                    index,
                    RecipientOutcome(
                        job.transaction.recipients[index].address,
                        RecipientStatus.TEMPORARY,
                        code,
                        enhanced,
                        text,
                        phase,
                    ),
                )
            self._report(job)
        self._attempt = None
        self._queue.clear()
        self._command_sent = None
        self._body = None
        self._expect.clear()
        if quit and status is not SessionStatus.SERVICE_CLOSING:
            self._lines.clear()
            self._send_quit()
        else:
            self._close()

    def _report(self, job: _Job) -> None:
        if job.complete and not job.reported:
            job.reported = True
            self._events.append(TransactionDone(job.outcome()))

    # -- internals: negotiation --

    def _greeting(self, answer: Reply, index: int) -> None:
        if answer.code == 220 and not self._settings.hello:
            self._capabilities = Capabilities()
            self._state = ClientState.SENDING
            self._start_next()
        elif answer.code == 220:
            self._state = ClientState.NEGOTIATING
            self._hello()
        elif answer.category in (4, 5):
            self._end(
                SessionStatus.GREETING_REFUSED,
                Phase.GREETING,
                answer,
                quit=answer.code != 421,
            )
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.GREETING, answer, "odd greeting")

    def _hello(self) -> None:
        verb = "LHLO" if self._settings.lmtp else "EHLO"
        self._command(Phase.EHLO, f"{verb} {self._settings.hostname}")

    def _ehlo(self, answer: Reply, index: int) -> None:
        if answer.is_positive:
            self._capabilities = Capabilities.from_ehlo(answer)
            self._negotiate()
        elif answer.category == 5 and self._settings.lmtp:
            self._end(SessionStatus.GREETING_REFUSED, Phase.EHLO, answer, quit=True)
        elif answer.category == 5:
            self._command(Phase.HELO, f"HELO {self._settings.hostname}")
        elif answer.category == 4:
            self._end(SessionStatus.GREETING_REFUSED, Phase.EHLO, answer, quit=True)
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.EHLO, answer, "odd reply to EHLO")

    def _helo(self, answer: Reply, index: int) -> None:
        if answer.is_positive:
            self._capabilities = Capabilities()
            self._negotiate()
        elif answer.category in (4, 5):
            self._end(SessionStatus.GREETING_REFUSED, Phase.HELO, answer, quit=True)
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.HELO, answer, "odd reply to HELO")

    def _negotiate(self) -> None:
        caps = self._capabilities
        assert caps is not None
        s = self._settings
        if not self._tls and not self._tls_refused:
            if s.starttls is not StartTLSPolicy.NEVER and caps.starttls:
                self._command(Phase.STARTTLS, "STARTTLS")
                return
            if s.starttls is StartTLSPolicy.REQUIRED:
                self._end(
                    SessionStatus.TLS_REQUIRED,
                    Phase.EHLO,
                    None,
                    "TLS is required but STARTTLS is not offered",
                    quit=True,
                )
                return
        if s.credentials is not None and not self._authenticated:
            usable = [m for m in s.auth_mechanisms if m in caps.auth]
            if usable and not self._tls and not s.auth_without_tls:
                usable = [m for m in usable if m in _NO_PASSWORD_SENT]
                if not usable:
                    self._end(
                        SessionStatus.TLS_REQUIRED,
                        Phase.AUTH,
                        None,
                        "credentials are sent only over TLS",
                        quit=True,
                    )
                    return
            mechanism = usable[0] if usable else None
            if mechanism is None:
                self._end(
                    SessionStatus.AUTH_FAILED,
                    Phase.AUTH,
                    None,
                    "the server offers no usable AUTH mechanism",
                    quit=True,
                )
                return
            self._start_auth(mechanism, s.credentials)
            return
        self._state = ClientState.SENDING
        self._start_next()

    def _starttls(self, answer: Reply, index: int) -> None:
        if answer.code == 220:
            if len(self._lines):
                self._end(
                    SessionStatus.PROTOCOL_ERROR,
                    Phase.STARTTLS,
                    None,
                    "bytes after the 220 to STARTTLS",
                )
                return
            self._state = ClientState.TLS_PENDING
            self._events.append(TLSRequested())
        elif answer.category in (4, 5):
            if self._settings.starttls is StartTLSPolicy.REQUIRED:
                self._end(SessionStatus.TLS_FAILED, Phase.STARTTLS, answer, quit=True)
                return
            self._tls_refused = True
            self._negotiate()
        else:
            self._end(
                SessionStatus.PROTOCOL_ERROR, Phase.STARTTLS, answer, "odd reply to STARTTLS"
            )

    def _start_auth(self, mechanism: str, credentials: Credentials) -> None:
        self._mechanism = mechanism
        self._auth_step = 0
        if mechanism == "PLAIN":
            self._command(Phase.AUTH, f"AUTH PLAIN {self._plain(credentials)}", utf8=True)
        elif mechanism == "CRAM-MD5":
            self._command(Phase.AUTH, "AUTH CRAM-MD5")
        else:
            self._command(Phase.AUTH, "AUTH LOGIN")

    @staticmethod
    def _plain(credentials: Credentials) -> str:
        message = b"\x00".join(
            [b"", credentials.login.encode("utf-8"), credentials.password.reveal().encode("utf-8")]
        )
        return base64.b64encode(message).decode("ascii")

    def _auth(self, answer: Reply, index: int) -> None:
        credentials = self._settings.credentials
        assert credentials is not None
        if answer.code == 235:
            self._authenticated = True
            self._state = ClientState.SENDING
            self._start_next()
        elif answer.code == 334 and self._mechanism == "LOGIN" and self._auth_step < 2:
            value = credentials.login if self._auth_step == 0 else credentials.password.reveal()
            self._auth_step += 1
            encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
            self._command(Phase.AUTH, encoded)
        elif answer.code == 334 and self._mechanism == "PLAIN" and self._auth_step == 0:
            self._auth_step = 1
            self._command(Phase.AUTH, self._plain(credentials))
        elif answer.code == 334 and self._mechanism == "CRAM-MD5" and self._auth_step == 0:
            self._auth_step = 1
            try:
                challenge = base64.b64decode(
                    answer.lines[0].strip().encode("ascii"), validate=True
                )
            except (binascii.Error, UnicodeEncodeError):
                self._end(
                    SessionStatus.PROTOCOL_ERROR, Phase.AUTH, answer, "bad CRAM-MD5 challenge"
                )
                return
            response = cram_md5_response(
                credentials.login, credentials.password.reveal(), challenge
            )
            self._command(Phase.AUTH, base64.b64encode(response).decode("ascii"), utf8=True)
        elif answer.category in (4, 5):
            self._end(SessionStatus.AUTH_FAILED, Phase.AUTH, answer, quit=True)
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.AUTH, answer, "odd reply to AUTH")

    # -- internals: transactions --

    def _start_next(self) -> None:
        if self._attempt is not None or self._expect:
            return
        if not self._queue:
            if self._quit_requested:
                self._send_quit()
            else:
                self._state = ClientState.IDLE
                self._was_idle = True
                assert self._capabilities is not None
                self._events.append(Idle(self._capabilities))
            return
        head = self._queue[0]
        if isinstance(head, _Command):
            # No RSET to test a reused connection before a command (an ODMR server answers
            # 502 to it), only to end a failed transaction; and no pipelining.
            self._was_idle = False
            if self._needs_rset:
                self._needs_rset = False
                self._command(Phase.RSET, "RSET")
                return
            self._queue.popleft()
            self._command_sent = head
            self._command(Phase.COMMAND, head.text)
            return
        if self._needs_rset or self._was_idle:
            self._needs_rset = self._was_idle = False
            self._command(Phase.RSET, "RSET")
            assert self._capabilities is not None
            if not self._capabilities.pipelining:
                return
            # RSET may open a pipelined group (RFC 2920 3.1): the transaction follows at once.
        attempt = self._queue.popleft()
        assert isinstance(attempt, _Attempt)
        self._attempt = attempt
        if not self._check(attempt):
            self._attempt = None
            self._report(attempt.job)
            self._start_next()
            return
        self._begin(attempt)

    def _decide_local(
        self,
        attempt: _Attempt,
        indices: list[int],
        status: RecipientStatus,
        enhanced: str,
        text: str,
        phase: Phase,
    ) -> None:
        recipients = attempt.job.transaction.recipients
        for index in indices:
            attempt.job.decide(
                index,
                RecipientOutcome(recipients[index].address, status, None, enhanced, text, phase),
            )

    def _decide(self, attempt: _Attempt, indices: list[int], answer: Reply, phase: Phase) -> None:
        recipients = attempt.job.transaction.recipients
        for index in indices:
            attempt.job.decide(
                index,
                RecipientOutcome(
                    recipients[index].address,
                    _status_of(answer),
                    answer.code,
                    _enhanced(answer),
                    answer.text,
                    phase,
                ),
            )

    def _check(self, attempt: _Attempt) -> bool:
        caps = self._capabilities
        assert caps is not None
        transaction = attempt.job.transaction
        permanent = RecipientStatus.PERMANENT
        if caps.size and len(transaction.body) > caps.size:
            text = f"message size {len(transaction.body)} exceeds the server limit {caps.size}"
            self._decide_local(attempt, attempt.indices, permanent, "5.3.4", text, Phase.MAIL)
            return False
        if not transaction.body.isascii() and not caps.eight_bit_mime:
            text = "8-bit content and the server does not offer 8BITMIME"
            self._decide_local(attempt, attempt.indices, permanent, "5.6.3", text, Phase.MAIL)
            return False
        if attempt.job.utf8 and not caps.smtputf8:
            enhanced = "5.6.7" if attempt.job.non_ascii else "5.6.9"
            text = "the message needs SMTPUTF8 and the server does not offer it"
            self._decide_local(attempt, attempt.indices, permanent, enhanced, text, Phase.MAIL)
            return False
        return True

    def _begin(self, attempt: _Attempt) -> None:
        caps = self._capabilities
        assert caps is not None
        transaction = attempt.job.transaction
        utf8 = attempt.job.utf8
        attempt.job.dsn = caps.dsn
        mail = f"MAIL FROM:<{transaction.sender}>"
        if caps.size is not None:
            mail += f" SIZE={len(transaction.body)}"
        eight_bit = (
            transaction.body_type is not BodyType.SEVEN_BIT or not transaction.body.isascii()
        )
        if eight_bit and caps.eight_bit_mime:
            mail += " BODY=8BITMIME"
        if utf8:
            mail += " SMTPUTF8"
        if caps.dsn:
            if transaction.ret is not None:
                mail += f" RET={transaction.ret}"
            if transaction.envid is not None:
                mail += f" ENVID={transaction.envid}"
        self._command(Phase.MAIL, mail, utf8=utf8)
        if caps.pipelining:
            while attempt.sent < len(attempt.indices):
                self._send_rcpt(attempt)
            if not self._settings.abort_on_rcpt_5xx:
                attempt.data = _DataState.SENT
                self._command(Phase.DATA, "DATA")

    def _send_rcpt(self, attempt: _Attempt) -> None:
        caps = self._capabilities
        assert caps is not None
        index = attempt.indices[attempt.sent]
        attempt.sent += 1
        recipient = attempt.job.transaction.recipients[index]
        rcpt = f"RCPT TO:<{recipient.address}>"
        if caps.dsn:
            if recipient.notify:
                rcpt += f" NOTIFY={_xtext_notify(recipient.notify)}"
            if recipient.orcpt is not None:
                rcpt += f" ORCPT={recipient.orcpt}"
        self._command(Phase.RCPT, rcpt, index, utf8=attempt.job.utf8)

    def _mail(self, answer: Reply, index: int) -> None:
        attempt = self._attempt
        assert attempt is not None
        if answer.is_positive:
            pass
        elif answer.category in (4, 5):
            attempt.mail_failed = True
            self._decide(attempt, attempt.indices, answer, Phase.MAIL)
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.MAIL, answer, "odd reply to MAIL")
            return
        self._advance()

    def _too_many(self, answer: Reply, attempt: _Attempt) -> bool:
        if not attempt.accepted:
            return False
        if answer.code == 452:
            return answer.enhanced in (None, "4.5.3")
        return answer.code == 552 and answer.enhanced == "5.5.3"

    def _rcpt(self, answer: Reply, index: int) -> None:
        attempt = self._attempt
        assert attempt is not None
        if attempt.mail_failed:
            pass
        elif answer.is_positive:
            attempt.accepted.append(index)
        elif answer.category not in (4, 5):
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.RCPT, answer, "odd reply to RCPT")
            return
        elif attempt.too_many or self._too_many(answer, attempt):
            attempt.too_many = True
            attempt.carried.append(index)
        else:
            self._decide(attempt, [index], answer, Phase.RCPT)
            if answer.category == 5 and self._settings.abort_on_rcpt_5xx:
                attempt.aborted = True
        self._advance()

    def _data(self, answer: Reply, index: int) -> None:
        attempt = self._attempt
        assert attempt is not None
        if answer.code == 354:
            if self._settings.lmtp and (attempt.mail_failed or not attempt.accepted):
                self._end(
                    SessionStatus.PROTOCOL_ERROR,
                    Phase.DATA,
                    answer,
                    "354 to DATA without an accepted recipient",
                )
                return
            if attempt.mail_failed or not attempt.accepted:
                attempt.data = _DataState.DISCARDING
                self._out += b".\r\n"
                self._expect.append(_Expect(Phase.MESSAGE))
                self._last_phase = Phase.MESSAGE
            else:
                attempt.data = _DataState.SENDING_BODY
                self._body = _Body(attempt.job.transaction.body)
                if self._settings.lmtp:
                    # One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
                    self._expect.extend(_Expect(Phase.MESSAGE, i) for i in attempt.accepted)
                else:
                    self._expect.append(_Expect(Phase.MESSAGE))
                self._last_phase = Phase.DATA
            return
        if answer.category not in (4, 5):
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.DATA, answer, "odd reply to DATA")
            return
        attempt.data = _DataState.FAILED
        if not attempt.mail_failed:
            self._decide(attempt, attempt.accepted, answer, Phase.DATA)
        self._advance()

    def _message(self, answer: Reply, index: int) -> None:
        attempt = self._attempt
        assert attempt is not None
        if self._body is not None and not self._body.finished:
            self._end(
                SessionStatus.PROTOCOL_ERROR, Phase.MESSAGE, answer, "reply before end of data"
            )
            return
        self._body = None
        if attempt.data is _DataState.DISCARDING:
            attempt.data = _DataState.FAILED
        elif answer.category in (2, 4, 5):
            # Once every reply to the message is in, _advance finishes the transaction.
            attempt.data = _DataState.DONE
            decided = attempt.accepted if index < 0 else [index]
            self._decide(attempt, decided, answer, Phase.MESSAGE)
        else:
            self._end(
                SessionStatus.PROTOCOL_ERROR, Phase.MESSAGE, answer, "odd reply to the message"
            )
            return
        self._advance()

    def _rset(self, answer: Reply, index: int) -> None:
        if answer.is_positive:
            if self._attempt is None:  # else the next transaction was pipelined behind it
                self._start_next()
        else:
            self._end(SessionStatus.PROTOCOL_ERROR, Phase.RSET, answer, "RSET refused", quit=True)

    def _command_reply(self, answer: Reply, index: int) -> None:
        command, self._command_sent = self._command_sent, None
        assert command is not None
        if command.turns and answer.code == 250 and len(answer.lines) == 1:
            self._state = ClientState.TURNED
            self._events.append(Turned(command.text, answer))
            return
        self._turn_queued = False
        self._events.append(CommandReplied(command.text, answer))
        self._start_next()

    def _advance(self) -> None:
        """Decide the next step of the current transaction once no reply is outstanding."""
        attempt = self._attempt
        assert attempt is not None
        if self._expect:
            return
        if attempt.data is _DataState.DONE:
            self._finish(attempt, rset=False)
            return
        if attempt.mail_failed or attempt.data is _DataState.FAILED:
            self._finish(attempt, rset=True)
            return
        if attempt.aborted:
            unsent = attempt.indices[attempt.sent :]
            retry = attempt.accepted + attempt.carried + unsent
            text = "transaction aborted after a 5xx to another recipient; retry at once"
            self._decide_local(
                attempt, retry, RecipientStatus.RETRY_NOW, "4.0.0", text, Phase.RCPT
            )
            attempt.carried = []
            self._finish(attempt, rset=True)
            return
        if attempt.sent < len(attempt.indices):
            if not attempt.too_many:
                self._send_rcpt(attempt)
                return
            attempt.carried += attempt.indices[attempt.sent :]
            attempt.sent = len(attempt.indices)
        if not attempt.accepted:
            self._finish(attempt, rset=True)
            return
        attempt.data = _DataState.SENT
        self._command(Phase.DATA, "DATA")

    def _finish(self, attempt: _Attempt, *, rset: bool) -> None:
        self._attempt = None
        if attempt.carried:
            self._queue.appendleft(_Attempt(attempt.job, attempt.carried))
        self._needs_rset = rset
        self._report(attempt.job)
        self._start_next()


_HANDLERS = {
    Phase.GREETING: ClientCore._greeting,
    Phase.EHLO: ClientCore._ehlo,
    Phase.HELO: ClientCore._helo,
    Phase.STARTTLS: ClientCore._starttls,
    Phase.AUTH: ClientCore._auth,
    Phase.MAIL: ClientCore._mail,
    Phase.RCPT: ClientCore._rcpt,
    Phase.DATA: ClientCore._data,
    Phase.MESSAGE: ClientCore._message,
    Phase.RSET: ClientCore._rset,
    Phase.COMMAND: ClientCore._command_reply,
}
