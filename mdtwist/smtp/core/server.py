# -*- test-case-name: tests.smtp.core.test_server -*-
"""
The server role of the sans-IO SMTP core.

Theory of operation
===================

L{ServerCore} holds the whole state of one SMTP session and does no I/O. The glue drives it
with four calls:

 1. C{start(greeting)} once, when the connection is up: the greeting (or a C{421}) is queued.
 2. C{receive_data(bytes)} whenever bytes arrive. They are only buffered.
 3. C{next_event()} in a loop. The core takes lines from the buffer, one command at a time, and
    answers by itself everything that needs no outside knowledge: syntax errors, commands out
    of sequence, C{EHLO}, C{NOOP}, C{RSET}, C{HELP}, C{VRFY}, C{EXPN}, SASL challenges, C{354}
    and refused messages. Those replies are queued, and the loop goes on. A command that needs
    a decision comes out as an event (L{mdtwist.smtp.core.events}); from then on the core is
    I{waiting} and C{next_event()} returns C{PAUSED}, leaving every later pipelined byte
    untouched in the buffer, until:
 4. C{send(reply)} answers that event. The core checks that the reply fits the event (for
    example only C{235}, 4xx or 5xx answer L{Authenticate}) and moves on according to the
    reply's code: a 2xx to L{MailFrom} opens the transaction, a 2xx to L{RcptTo} adds the
    recipient, any reply to L{MessageReceived} ends the transaction, a C{220} to L{StartTLS}
    drops every buffered byte and waits for C{start_tls()}, any C{421} closes.

Extension commands (ETRN, ATRN ...) are verbs named in C{ServerSettings.commands}: advertised
in the EHLO reply and handed out as L{ExtensionCommand} events whatever their argument; the
glue's reply leaves the session state as it was. C{detach()} ends the session without a word
and returns the bytes received and not processed, for the protocol that takes the connection
over (after the C{250} to ATRN the server becomes the client).

After each call the glue writes C{data_to_send()}. Because the core never looks at the next
command before the current event is answered, the glue may take as long as it likes (a pending
Deferred) and replies still leave in command order, as PIPELINING requires.

Rules:
 - lines end only at CRLF; a command line with a bare CR or LF is refused with C{500 5.5.2} and
   not executed; an over-long command line gets C{500 5.5.6} and is not executed;
 - DATA ends only at CRLF.CRLF; a message with a bare CR or LF (C{550 5.5.2}), an over-long line
   (C{500 5.5.6}), a NUL byte (C{550 5.6.0}) or too many bytes (C{552 5.3.4}) is read to its
   real end and then refused, so nothing inside it is ever taken for a command. NUL is refused
   as Postfix does with the C{message_reject_characters} set to NUL, as its manual suggests (its
   default passes NULs on): RFC 2045 and RFC 6152 allow no NUL in 7bit or 8bit text, and
   BINARYMIME is not offered;
 - CHUNKING (RFC 3030): C{BDAT <size> [LAST]} is followed by exactly that many bytes, which are
   always read, even when the command is refused, and never looked at for commands. The reply
   comes after the chunk: C{250} for a chunk taken, the refusal otherwise (no transaction, no
   valid recipient: the chunk is dropped; too big: the transaction ends with C{552 5.3.4}). The
   message made of the chunks obeys the rules of DATA (CRLF line ends, line length) and gets a
   final CRLF when it lacks one; C{LAST} turns it into a L{MessageReceived}. DATA after BDAT in
   one transaction is refused; a BDAT whose size cannot be read ends the session after
   C{501 5.5.4}, since the end of its chunk is unknown;
 - every reply after the greeting and the HELO/EHLO reply carries an enhanced status code
   (RFC 2034); 3xx replies cannot carry one (RFC 3463 has no class 3);
 - after C{max_errors} 5xx replies the core adds C{421 4.7.0} and closes;
 - the C{220} to STARTTLS and C{start_tls()} forget the buffered plaintext, the HELO name, the
   authentication and the transaction (RFC 3207 section 4.2);
 - command synchronisation (RFC 2920 section 3.1, RFC 5321 section 4.3.2; Postfix's
   C{smtpd_forbid_unauth_pipelining}): when a command that must end a pipelined group (EHLO,
   HELO, DATA, VRFY, EXPN, NOOP, QUIT) is read while more bytes are already buffered, or any
   command is in a session that was not offered PIPELINING (before EHLO, or after HELO), the
   client did not wait for a reply: the core answers C{554 5.5.0}, executes nothing more and
   closes. A message body sent before the C{354} is the common case: without the check its
   lines would be read as commands. The end of DATA is not a command: a QUIT that follows the
   final dot at once is fine.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable

import attrs

from mdtwist.smtp.core import sasl
from mdtwist.smtp.core.errors import LocalProtocolError
from mdtwist.smtp.core.events import (
    Authenticate,
    Event,
    ExtensionCommand,
    MailFrom,
    MessageReceived,
    Quit,
    RcptTo,
    Sentinel,
    StartTLS,
)
from mdtwist.smtp.core.framing import (
    MAX_COMMAND_LINE,
    MAX_TEXT_LINE,
    DataProblem,
    DataReader,
    Line,
    LineBuffer,
    message_problems,
)
from mdtwist.smtp.core.params import parse_mail, parse_rcpt
from mdtwist.smtp.core.replies import Reply, reply

#: The longest line of a SASL exchange, CRLF included (RFC 4954 section 4).
MAX_AUTH_LINE = 12288


def _names(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _check_mechanisms(
    instance: ServerSettings, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    unknown = set(value) - set(sasl.SUPPORTED)
    if unknown:
        raise ValueError(f"unsupported SASL mechanisms: {sorted(unknown)}")


def _upper_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(v.upper() for v in value)


def _check_commands(
    instance: ServerSettings, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for verb in value:
        if not (verb.isascii() and verb.isalpha()) or verb in _COMMANDS:
            raise ValueError(f"{verb!r} cannot be an extension command")


def _upper_set(value: Iterable[str]) -> frozenset[str]:
    return frozenset(verb.upper() for verb in value)


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


@attrs.frozen
class ServerSettings:
    """
    What one SMTP listener allows; fixed for the life of a session.

    @ivar hostname: our name, in the greeting and the EHLO reply.
    @ivar max_command_line: the longest command line, CRLF included.
    @ivar max_text_line: the longest message line, CRLF included.
    @ivar max_recipients: recipients accepted per transaction, a duplicate the glue does not
        add counted too; the next one gets C{452 4.5.3}.
    @ivar max_message_size: the largest message, in bytes; advertised with C{SIZE}.
    @ivar max_errors: 5xx replies after which the session is closed with C{421 4.7.0}.
    @ivar starttls: whether STARTTLS is offered (only while TLS is not active).
    @ivar tls_active: whether the session starts encrypted (implicit TLS, port 465).
    @ivar auth_mechanisms: the SASL mechanisms offered, from L{sasl.SUPPORTED}; empty for none.
        CRAM-MD5 needs a session nonce (L{ServerCore}'s C{auth_nonce}) and a checker that
        holds cleartext secrets; the default is L{sasl.MECHANISMS}.
    @ivar auth_without_tls: whether AUTH is offered and accepted without TLS.
    @ivar require_auth: whether C{MAIL} needs an authenticated session (submission).
    @ivar eight_bit_mime: whether 8BITMIME is advertised and C{BODY=} accepted.
    @ivar smtputf8: whether SMTPUTF8 is advertised (command lines are then read as UTF-8).
    @ivar dsn: whether DSN is advertised and C{RET}, C{ENVID}, C{NOTIFY}, C{ORCPT} accepted.
    @ivar chunking: whether CHUNKING is advertised and C{BDAT} accepted.
    @ivar forbid_unauth_pipelining: end the session with C{554 5.5.0} when a client sends
        more before the reply to a command that must end a pipelined group, or pipelines
        without having been offered PIPELINING (see L{ServerCore.sync_error}).
    @ivar commands: extension verbs (upper case letters, none of the built-in ones) that are
        advertised as EHLO keywords and handed to the glue as L{ExtensionCommand} events.
    @ivar only_commands: when not empty, the only verbs the session accepts (upper case);
        any other known verb gets C{502 5.5.1}, and the EHLO reply lists only
        C{ENHANCEDSTATUSCODES}, STARTTLS (when it is one of them and offered), AUTH and the
        extension verbs (the ODMR listener, RFC 2645 section 5.4).
    """

    hostname: str
    max_command_line: int = attrs.field(default=MAX_COMMAND_LINE, validator=_positive)
    max_text_line: int = attrs.field(default=MAX_TEXT_LINE, validator=_positive)
    max_recipients: int = attrs.field(default=100, validator=_positive)
    max_message_size: int = attrs.field(default=25 * 1024 * 1024, validator=_positive)
    max_errors: int = attrs.field(default=10, validator=_positive)
    starttls: bool = False
    tls_active: bool = False
    auth_mechanisms: tuple[str, ...] = attrs.field(
        default=sasl.MECHANISMS, converter=_names, validator=_check_mechanisms
    )
    auth_without_tls: bool = False
    require_auth: bool = False
    eight_bit_mime: bool = True
    smtputf8: bool = True
    dsn: bool = True
    chunking: bool = True
    forbid_unauth_pipelining: bool = True
    commands: tuple[str, ...] = attrs.field(
        default=(), converter=_upper_tuple, validator=_check_commands
    )
    only_commands: frozenset[str] = attrs.field(default=frozenset(), converter=_upper_set)


class SessionState(enum.Enum):
    """
    Where the session stands.

    @cvar NEW: C{start} has not been called.
    @cvar COMMAND: reading commands.
    @cvar AUTH: in a SASL exchange, reading base64 responses.
    @cvar DATA: reading message text after C{354}.
    @cvar CHUNK: reading the bytes of a C{BDAT} chunk.
    @cvar WAITING: an event awaits its reply.
    @cvar TLS_PENDING: the C{220} to STARTTLS went out; waiting for C{start_tls}.
    @cvar CLOSED: the session is over.
    """

    NEW = "new"
    COMMAND = "command"
    AUTH = "auth"
    DATA = "data"
    CHUNK = "chunk"
    WAITING = "waiting"
    TLS_PENDING = "tls-pending"
    CLOSED = "closed"


TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")

#: The reply to a client that did not wait for a reply it had to wait for.
OUT_OF_SYNC = reply(554, "5.5.0", "SMTP protocol synchronization error")

#: Commands that may only end a pipelined group (RFC 2920 section 3.1). STARTTLS is stricter
#: still: what follows it is dropped (RFC 3207 section 4.2).
_LAST_IN_GROUP = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "QUIT"})

# Replies and parameter sets used for every session, built once.
_GO_AHEAD = reply(354, None, "End data with <CR><LF>.<CR><LF>")
_OK = reply(250, "2.0.0", "Ok")
_NO_PARAMETERS: frozenset[str] = frozenset()
_BDAT_SYNTAX = reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
#: The most digits of a BDAT size (more than any message size limit can need).
_MAX_SIZE_DIGITS = 15
_DSN_RCPT_PARAMETERS = frozenset({"NOTIFY", "ORCPT"})

_ReplyCheck = Callable[[Reply], bool]


def _verdict(r: Reply) -> bool:
    return (r.code in (250, 251, 252) or r.category in (4, 5)) and r.enhanced is not None


_FITS: dict[type[Event], _ReplyCheck] = {
    MailFrom: _verdict,
    RcptTo: _verdict,
    MessageReceived: _verdict,
    Authenticate: lambda r: (r.code == 235 or r.category in (4, 5)) and r.enhanced is not None,
    StartTLS: lambda r: (r.code == 220 or r.category in (4, 5)) and r.enhanced is not None,
    Quit: lambda r: r.code in (221, 421) and r.enhanced is not None,
    ExtensionCommand: lambda r: r.category in (2, 4, 5) and r.enhanced is not None,
}


class ServerCore:
    """One SMTP server session, without I/O. See the module docstring for how to drive it."""

    def __init__(self, settings: ServerSettings, *, auth_nonce: str = "") -> None:
        """
        @param settings: what the listener allows.
        @param auth_nonce: a random value unique to this session, from which CRAM-MD5
            challenges are made; without it CRAM-MD5 is refused like an unknown mechanism.
        """
        self._settings = settings
        self._auth_nonce = auth_nonce
        self._auth_count = 0
        self._lines = LineBuffer()
        self._out = bytearray()
        self._state = SessionState.NEW
        self._pending: Event | None = None
        self._tls = settings.tls_active
        self._errors = 0
        self._helo: str | None = None
        self._extended = False
        self._authenticated = False
        self._mechanism: sasl.ServerMechanism | None = None
        self._mechanism_name = ""
        self._mail: MailFrom | None = None
        self._recipients: list[RcptTo] = []
        self._accepted = 0
        self._data: DataReader | None = None
        # BDAT: the message so far (None outside a BDAT transaction), and the chunk being read.
        self._chunks: bytearray | None = None
        self._chunk_size = 0
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        self._encoding = "utf-8" if settings.smtputf8 else "ascii"
        self._sync_error: str | None = None
        # The verb of the command being read, and the 4xx/5xx replies the core gave by itself
        # (for take_refusals); _answering is true while send() queues the glue's reply.
        self._verb = ""
        self._refusals: list[tuple[str, Reply]] = []
        self._answering = False

    # -- what the glue may read --

    @property
    def settings(self) -> ServerSettings:
        """The settings this session runs with."""
        return self._settings

    @property
    def state(self) -> SessionState:
        """The session state."""
        return self._state

    @property
    def helo(self) -> str | None:
        """The HELO/EHLO name, or L{None} before HELO/EHLO (and after STARTTLS)."""
        return self._helo

    @property
    def extended(self) -> bool:
        """Whether the client greeted with EHLO."""
        return self._extended

    @property
    def tls_active(self) -> bool:
        """Whether the session is encrypted."""
        return self._tls

    @property
    def authenticated(self) -> bool:
        """Whether a C{235} was sent in this session (since the last STARTTLS)."""
        return self._authenticated

    @property
    def sender(self) -> str | None:
        """The reverse-path of the open transaction, or L{None} outside a transaction."""
        return None if self._mail is None else self._mail.sender

    @property
    def sync_error(self) -> str | None:
        """
        The command (upper case) after which the client sent too early, when the session was
        closed for it (C{"an unknown command"} for a verb we do not know); else L{None}.
        """
        return self._sync_error

    @property
    def buffered(self) -> int:
        """The number of received bytes not yet processed (for flow control)."""
        return len(self._lines)

    @property
    def auth_offered(self) -> bool:
        """Whether AUTH is advertised and usable right now."""
        return bool(self._settings.auth_mechanisms) and (
            self._tls or self._settings.auth_without_tls
        )

    def extensions(self) -> list[str]:
        """
        The EHLO keywords for the current state.

        @return: one string per EHLO line after the first.
        """
        s = self._settings
        if s.only_commands:
            result = ["ENHANCEDSTATUSCODES"]
            if s.starttls and not self._tls and "STARTTLS" in s.only_commands:
                result.append("STARTTLS")
            if self.auth_offered:
                result.append("AUTH " + " ".join(s.auth_mechanisms))
            return [*result, *s.commands]
        result = ["PIPELINING", f"SIZE {s.max_message_size}"]
        if s.eight_bit_mime:
            result.append("8BITMIME")
        result.append("ENHANCEDSTATUSCODES")
        if s.starttls and not self._tls:
            result.append("STARTTLS")
        if self.auth_offered:
            result.append("AUTH " + " ".join(s.auth_mechanisms))
        if s.dsn:
            result.append("DSN")
        if s.smtputf8:
            result.append("SMTPUTF8")
        if s.chunking:
            result.append("CHUNKING")
        result.extend(s.commands)
        return result

    # -- the driving calls --

    def start(self, greeting: Reply | None = None) -> None:
        """
        Queue the greeting. A greeting other than C{220} (C{421} when we are busy) closes.

        @param greeting: the greeting; by default C{220 <hostname> ESMTP ready}.
        @raise LocalProtocolError: the session was already started.
        """
        if self._state is not SessionState.NEW:
            raise LocalProtocolError("start() called twice")
        if greeting is None:
            greeting = reply(220, None, f"{self._settings.hostname} ESMTP ready")
        self._state = SessionState.COMMAND
        if greeting.code != 220:
            self._state = SessionState.CLOSED
        self._out += greeting.to_bytes()

    def receive_data(self, data: bytes) -> None:
        """
        Buffer received bytes; nothing is processed until L{next_event}.

        @param data: the bytes.
        """
        if self._state is not SessionState.CLOSED:
            self._lines.feed(data)

    def take_refusals(self) -> list[tuple[str, Reply]]:
        """
        Take the refusals the core answered by itself since the last call: syntax errors,
        commands out of sequence, refused messages (the replies given with L{send} are not
        among them; the glue knows those).

        @return: for each, the command's verb in upper case (cut to 20 characters; C{""} when
            the line could not be read) and the 4xx or 5xx reply.
        """
        refusals, self._refusals = self._refusals, []
        return refusals

    def data_to_send(self) -> bytes:
        """
        Take the bytes queued for the client.

        @return: the bytes (possibly empty).
        """
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | Sentinel:
        """
        Process buffered input up to the next decision.

        @return: an event to answer with L{send}, or a L{Sentinel}.
        """
        while True:
            state = self._state
            if state is SessionState.COMMAND:
                line = self._lines.read_line(self._settings.max_command_line)
                if line is None:
                    return Sentinel.NEED_DATA
                event = self._command(line)
            elif state is SessionState.DATA:
                assert self._data is not None
                if not self._data.read(self._lines):
                    return Sentinel.NEED_DATA
                event = self._end_of_data(self._data)
            elif state is SessionState.CHUNK:
                if self._chunk_left:
                    data = self._lines.take(self._chunk_left)
                    self._chunk_left -= len(data)
                    if self._chunk_refusal is None and self._chunks is not None:
                        self._chunks += data
                    if self._chunk_left:
                        return Sentinel.NEED_DATA
                event = self._end_of_chunk()
            elif state is SessionState.AUTH:
                line = self._lines.read_line(MAX_AUTH_LINE)
                if line is None:
                    return Sentinel.NEED_DATA
                event = self._auth_line(line)
            elif state is SessionState.CLOSED:
                return Sentinel.CLOSE
            else:  # NEW, WAITING, TLS_PENDING
                return Sentinel.PAUSED
            if event is not None:
                self._pending = event
                self._state = SessionState.WAITING
                return event

    def send(self, answer: Reply, *, add_recipient: bool = True) -> None:
        """
        Answer the pending event.

        @param answer: the reply.
        @param add_recipient: for a 2xx to L{RcptTo}, whether the recipient joins the
            transaction; C{False} answers a recipient the transaction already has (the same
            mailbox again) without adding it a second time (it still counts towards
            L{ServerSettings.max_recipients}).
        @raise LocalProtocolError: no event is pending, or the reply does not fit it.
        """
        event = self._pending
        if event is None or self._state is not SessionState.WAITING:
            raise LocalProtocolError("no event is waiting for a reply")
        if not _FITS[type(event)](answer):
            raise LocalProtocolError(f"reply {answer.code} does not fit {type(event).__name__}")
        self._pending = None
        self._state = SessionState.COMMAND
        positive = answer.is_positive
        if isinstance(event, MailFrom) and positive:
            self._mail = event
        elif isinstance(event, RcptTo) and positive:
            self._accepted += 1
            if add_recipient:
                self._recipients.append(event)
        elif isinstance(event, MessageReceived):
            self._reset_transaction()
        elif isinstance(event, Authenticate) and answer.code == 235:
            self._authenticated = True
        elif isinstance(event, StartTLS) and answer.code == 220:
            self._lines.clear()
            self._state = SessionState.TLS_PENDING
        elif isinstance(event, Quit):
            self._state = SessionState.CLOSED
        self._answering = True
        try:
            self._reply(answer)
        finally:
            self._answering = False

    def start_tls(self) -> None:
        """
        The TLS handshake has started: forget all plaintext state.

        Buffered bytes, the HELO name, authentication and the transaction are dropped; the client
        must say EHLO again.

        @raise LocalProtocolError: no C{220} to STARTTLS was sent.
        """
        if self._state is not SessionState.TLS_PENDING:
            raise LocalProtocolError("start_tls() without a 220 to STARTTLS")
        self._lines.clear()
        self._tls = True
        self._helo = None
        self._extended = False
        self._authenticated = False
        self._reset_transaction()
        self._state = SessionState.COMMAND

    def detach(self) -> bytes:
        """
        Hand the connection to another protocol (ATRN turns it round): the session ends here
        without a word to the client; output not yet taken is dropped.

        @return: the bytes received and not processed, to be fed to the new protocol.
        """
        self._pending = None
        self._state = SessionState.CLOSED
        self._out.clear()
        return self._lines.take_all()

    def abort(self, answer: Reply) -> None:
        """
        End the session now with a last reply (idle timeout, shutdown), whatever its state.

        @param answer: the last reply, normally a C{421}.
        """
        if self._state is SessionState.CLOSED:
            return
        self._pending = None
        self._state = SessionState.CLOSED
        self._out += answer.to_bytes()

    # -- internals --

    def _reply(self, answer: Reply) -> Event | None:
        # Queue a reply. Returns None (typed as a handler result, so that a handler can end
        # with "return self._reply(...)").
        self._out += answer.to_bytes()
        if answer.category >= 4 and not self._answering:
            self._refusals.append((self._verb, answer))
        if answer.code == 421:
            self._state = SessionState.CLOSED
        elif answer.category == 5:
            self._errors += 1
            if self._errors >= self._settings.max_errors:
                self._out += TOO_MANY_ERRORS.to_bytes()
                self._state = SessionState.CLOSED
        return None

    def _refuse(self, code: int, enhanced: str, text: str) -> Event | None:
        return self._reply(reply(code, enhanced, text))

    def _reset_transaction(self) -> None:
        self._mail = None
        self._recipients = []
        self._accepted = 0
        self._data = None
        self._chunks = None

    def _decode(self, content: bytes) -> str | None:
        try:
            return content.decode(self._encoding)
        except UnicodeDecodeError:
            return None

    def _command(self, line: Line) -> Event | None:
        self._verb = ""
        if line.overflow:
            return self._refuse(500, "5.5.6", "Line too long")
        if line.has_bare_cr_or_lf:
            return self._refuse(500, "5.5.2", "Bare CR or LF in command")
        text = self._decode(line.content)
        if text is None:
            return self._refuse(500, "5.5.2", "Invalid characters in command")
        verb, _, args = text.partition(" ")
        name = verb.upper()
        self._verb = name[:20]
        handler = _COMMANDS.get(name)
        extension = handler is None and name in self._settings.commands
        if (
            self._settings.forbid_unauth_pipelining
            and len(self._lines)
            and (name in _LAST_IN_GROUP or not self._extended)
        ):
            self._sync_error = name if handler is not None or extension else "an unknown command"
            self._out += OUT_OF_SYNC.to_bytes()
            self._state = SessionState.CLOSED
            return None
        only = self._settings.only_commands
        if only and name not in only and (handler is not None or extension):
            return self._refuse(502, "5.5.1", "Command not implemented here")
        if extension:
            return ExtensionCommand(name, args)
        if handler is None:
            return self._refuse(500, "5.5.1", "Command unrecognized")
        return handler(self, args)

    def _hello(self, args: str, *, extended: bool) -> Event | None:
        name = args.strip(" ")
        if not name or not name.isprintable() or " " in name or len(name) > 255:
            verb = "EHLO" if extended else "HELO"
            return self._refuse(501, "5.5.4", f"Syntax: {verb} hostname")
        self._reset_transaction()
        self._helo = name
        self._extended = extended
        hostname = self._settings.hostname
        if extended:
            self._reply(Reply(250, None, (hostname, *self.extensions())))
        else:
            self._reply(reply(250, None, hostname))
        return None

    def _ehlo(self, args: str) -> Event | None:
        return self._hello(args, extended=True)

    def _helo_command(self, args: str) -> Event | None:
        return self._hello(args, extended=False)

    def _mail_parameters(self) -> frozenset[str]:
        if not self._extended:
            return _NO_PARAMETERS
        s = self._settings
        allowed = {"SIZE"}
        if s.eight_bit_mime:
            allowed.add("BODY")
        if s.smtputf8:
            allowed.add("SMTPUTF8")
        if s.dsn:
            allowed |= {"RET", "ENVID"}
        if self.auth_offered:
            allowed.add("AUTH")
        return frozenset(allowed)

    def _mail_command(self, args: str) -> Event | None:
        if self._helo is None:
            return self._refuse(503, "5.5.1", "Send EHLO or HELO first")
        if self._mail is not None:
            return self._refuse(503, "5.5.1", "Nested MAIL command")
        if self._settings.require_auth and not self._authenticated:
            return self._refuse(530, "5.7.0", "Authentication required")
        parsed = parse_mail(args, self._mail_parameters())
        if isinstance(parsed, Reply):
            return self._reply(parsed)
        size = parsed.parameters.size
        if size is not None and size > self._settings.max_message_size:
            return self._refuse(552, "5.3.4", "Message size exceeds fixed limit")
        if not parsed.sender.isascii() and not parsed.parameters.smtputf8:
            return self._refuse(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
        return MailFrom(parsed.sender, parsed.parameters)

    def _rcpt_command(self, args: str) -> Event | None:
        if self._mail is None:
            return self._refuse(503, "5.5.1", "Need MAIL before RCPT")
        if self._accepted >= self._settings.max_recipients:
            return self._refuse(452, "4.5.3", "Too many recipients")
        allowed = _DSN_RCPT_PARAMETERS if self._settings.dsn and self._extended else _NO_PARAMETERS
        parsed = parse_rcpt(args, allowed)
        if isinstance(parsed, Reply):
            return self._reply(parsed)
        if not parsed.recipient.isascii() and not self._mail.parameters.smtputf8:
            return self._refuse(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
        return RcptTo(parsed.recipient, parsed.parameters)

    def _data_command(self, args: str) -> Event | None:
        if args:
            return self._refuse(501, "5.5.4", "Syntax: DATA")
        if self._mail is None:
            return self._refuse(503, "5.5.1", "Need MAIL command")
        if not self._recipients:
            return self._refuse(554, "5.5.1", "No valid recipients")
        if self._chunks is not None:
            return self._refuse(503, "5.5.1", "DATA not allowed after BDAT")
        s = self._settings
        self._data = DataReader(s.max_message_size, s.max_text_line)
        self._state = SessionState.DATA
        self._reply(_GO_AHEAD)
        return None

    def _end_of_data(self, reader: DataReader) -> Event | None:
        self._state = SessionState.COMMAND
        mail, recipients = self._mail, tuple(self._recipients)
        assert mail is not None
        if reader.problems:
            return self._refuse_message(reader.problems)
        self._data = None
        return MessageReceived(mail.sender, mail.parameters, recipients, reader.body)

    def _refuse_message(self, problems: set[DataProblem]) -> Event | None:
        self._reset_transaction()
        if DataProblem.TOO_BIG in problems:
            return self._refuse(552, "5.3.4", "Message size exceeds fixed limit")
        if DataProblem.LINE_TOO_LONG in problems:
            return self._refuse(500, "5.5.6", "Line too long")
        if DataProblem.NUL in problems:
            return self._refuse(550, "5.6.0", "NUL character not allowed in message")
        return self._refuse(550, "5.5.2", "Bare CR or LF not allowed in message")

    def _bdat(self, args: str) -> Event | None:
        words = args.split(" ")
        size_text = words[0]
        if (
            len(words) > 2
            or not (size_text.isascii() and size_text.isdigit())
            or len(size_text) > _MAX_SIZE_DIGITS
            or (len(words) == 2 and words[1].upper() != "LAST")
        ):
            # Where the chunk ends is unknown: nothing after it can be read as a command.
            self._reply(_BDAT_SYNTAX)
            self._state = SessionState.CLOSED
            return None
        size = int(size_text)
        s = self._settings
        refusal: Reply | None = None
        if not s.chunking:
            refusal = reply(502, "5.5.1", "BDAT not available")
        elif self._mail is None:
            refusal = reply(503, "5.5.1", "Need MAIL command")
        elif not self._recipients:
            refusal = reply(554, "5.5.1", "No valid recipients")
        elif (0 if self._chunks is None else len(self._chunks)) + size > s.max_message_size:
            refusal = reply(552, "5.3.4", "Message size exceeds fixed limit")
        elif self._chunks is None:
            self._chunks = bytearray()
        self._chunk_size = self._chunk_left = size
        self._chunk_last = len(words) == 2
        self._chunk_refusal = refusal
        self._state = SessionState.CHUNK
        return None

    def _end_of_chunk(self) -> Event | None:
        self._state = SessionState.COMMAND
        refusal, self._chunk_refusal = self._chunk_refusal, None
        if refusal is not None:
            if refusal.code == 552:
                self._reset_transaction()
            return self._reply(refusal)
        if not self._chunk_last:
            return self._reply(reply(250, "2.0.0", f"{self._chunk_size} octets received"))
        mail, recipients, chunks = self._mail, tuple(self._recipients), self._chunks
        assert mail is not None and chunks is not None
        self._chunks = None
        body = bytes(chunks)
        problems = message_problems(body, self._settings.max_text_line)
        if problems:
            return self._refuse_message(problems)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        return MessageReceived(mail.sender, mail.parameters, recipients, body)

    def _rset(self, args: str) -> Event | None:
        if args:
            return self._refuse(501, "5.5.4", "Syntax: RSET")
        self._reset_transaction()
        return self._reply(_OK)

    def _noop(self, args: str) -> Event | None:
        return self._reply(_OK)

    def _help(self, args: str) -> Event | None:
        return self._reply(
            Reply(
                214,
                "2.0.0",
                (
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                    "STARTTLS AUTH; see RFC 5321",
                ),
            )
        )

    def _vrfy(self, args: str) -> Event | None:
        if not args.strip(" "):
            return self._refuse(501, "5.5.4", "Syntax: VRFY address")
        return self._refuse(252, "2.1.5", "Cannot verify the address; send mail to try it")

    def _expn(self, args: str) -> Event | None:
        return self._refuse(502, "5.5.1", "EXPN not supported")

    def _quit(self, args: str) -> Event | None:
        return Quit()

    def _starttls(self, args: str) -> Event | None:
        if self._tls:
            return self._refuse(503, "5.5.1", "TLS already active")
        if not self._settings.starttls:
            return self._refuse(502, "5.5.1", "STARTTLS not available")
        if args:
            return self._refuse(501, "5.5.4", "Syntax: STARTTLS")
        return StartTLS()

    def _auth(self, args: str) -> Event | None:
        s = self._settings
        if not s.auth_mechanisms:
            return self._refuse(502, "5.5.1", "AUTH not available")
        if not self._extended:
            return self._refuse(503, "5.5.1", "Send EHLO first")
        if self._authenticated:
            return self._refuse(503, "5.5.1", "Already authenticated")
        if self._mail is not None:
            return self._refuse(503, "5.5.1", "AUTH not allowed during a mail transaction")
        if not self.auth_offered:
            return self._refuse(538, "5.7.11", "Encryption required for authentication")
        name, _, initial_text = args.partition(" ")
        name = name.upper()
        self._auth_count += 1
        challenge = (
            sasl.cram_md5_challenge(f"{self._auth_nonce}.{self._auth_count}", s.hostname)
            if self._auth_nonce
            else b""
        )
        mechanism = sasl.server_mechanism(name, challenge) if name in s.auth_mechanisms else None
        if mechanism is None:
            return self._refuse(504, "5.5.4", "Unrecognized authentication type")
        initial: bytes | None = None
        if initial_text:
            initial = sasl.decode_response(initial_text)
            if initial is None:
                return self._refuse(501, "5.5.2", "Invalid base64 data")
        self._mechanism = mechanism
        self._mechanism_name = name
        return self._auth_step(mechanism.start(initial))

    def _auth_step(self, step: sasl.Step) -> Event | None:
        if isinstance(step, sasl.Challenge):
            self._state = SessionState.AUTH
            self._reply(reply(334, None, sasl.encode_challenge(step.data)))
            return None
        self._state = SessionState.COMMAND
        self._mechanism = None
        if isinstance(step, sasl.Malformed):
            return self._refuse(501, "5.5.2", "Malformed authentication data")
        if isinstance(step, sasl.HashedCredentials):
            return Authenticate(
                self._mechanism_name, "", step.login, step.digest, challenge=step.challenge
            )
        return Authenticate(self._mechanism_name, step.authzid, step.login, step.password)

    def _auth_line(self, line: Line) -> Event | None:
        mechanism = self._mechanism
        assert mechanism is not None
        if line.overflow or line.has_bare_cr_or_lf:
            self._state = SessionState.COMMAND
            self._mechanism = None
            return (
                self._refuse(500, "5.5.6", "Line too long")
                if line.overflow
                else (self._refuse(500, "5.5.2", "Bare CR or LF in command"))
            )
        text = line.content.decode("ascii", "replace")
        if text == "*":
            self._state = SessionState.COMMAND
            self._mechanism = None
            return self._refuse(501, "5.0.0", "Authentication cancelled")
        data = sasl.decode_response(text)
        if data is None:
            self._state = SessionState.COMMAND
            self._mechanism = None
            return self._refuse(501, "5.5.2", "Invalid base64 data")
        return self._auth_step(mechanism.respond(data))


_Handler = Callable[[ServerCore, str], Event | None]

_COMMANDS: dict[str, _Handler] = {
    "EHLO": ServerCore._ehlo,
    "HELO": ServerCore._helo_command,
    "MAIL": ServerCore._mail_command,
    "RCPT": ServerCore._rcpt_command,
    "DATA": ServerCore._data_command,
    "BDAT": ServerCore._bdat,
    "RSET": ServerCore._rset,
    "NOOP": ServerCore._noop,
    "HELP": ServerCore._help,
    "VRFY": ServerCore._vrfy,
    "EXPN": ServerCore._expn,
    "QUIT": ServerCore._quit,
    "STARTTLS": ServerCore._starttls,
    "AUTH": ServerCore._auth,
}
