# -*- test-case-name: tests.smtp.test_server -*-
"""
The inbound SMTP glue: one L{SMTPServerProtocol} per connection around a sans-IO L{ServerCore}.

Theory of operation: the protocol feeds received bytes to the core and then pulls events, one
at a time. Each event becomes a call to a collaborator (the receive policy, the spool, the
directory) that returns a Deferred of a L{Reply}; until that Deferred fires the protocol pulls
no further event, so pipelined commands wait in the core's buffer and replies leave in order.
When the buffer grows past L{SessionLimits.max_buffer} while we wait, the transport is paused.
Failures of the collaborators become 4xx replies: C{451 4.3.0} for the policy, C{452 4.3.1}
for a L{SpoolError}, C{454 4.7.0} for the directory during AUTH. AUTH goes through the
L{LoginPortal} (service C{"smtp"} unless the factory says otherwise), which also holds the
brute-force limit shared with every other protocol: C{535 5.7.8} for wrong credentials,
C{454 4.7.0} when the login is throttled or the directory cannot answer. Every timeout runs
on the injected clock.

Extension commands (ETRN, ATRN ...) go to the handler registered for their verb with the
factory; an answer with C{turn_to} and a C{250} turns the connection round: once the reply is
written the session detaches (L{SMTPServerProtocol.detach}) and the
L{mdtwist.smtp.switch.SwitchingProtocol} it runs in continues with the protocol C{turn_to}
builds, fed the bytes that followed the command.
"""

from __future__ import annotations

import itertools
import secrets
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias, cast

import attrs
from twisted.cred.credentials import ICredentials, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
    IProtocol,
    IReactorTime,
    ISSLTransport,
    ITLSTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mdtwist import maillog, metrics
from mdtwist.delivery.dsn import DSNRequests, restrict_requests
from mdtwist.directory.model import Account
from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient
from mdtwist.errors import DirectoryUnavailable, LoginThrottled, SpoolError
from mdtwist.interfaces import IReceivePolicy, ISessionPolicies, ISpool
from mdtwist.logging import escape_text
from mdtwist.portal import CramMD5Response, LoginPortal
from mdtwist.route import Route, duplicate_key
from mdtwist.secret import Secret
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
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.core.sasl import HashedCredentials
from mdtwist.smtp.core.server import ServerCore, ServerSettings, SessionState
from mdtwist.smtp.core.trace import count_received, received_header, with_protocol
from mdtwist.smtp.deadlines import Deadlines
from mdtwist.smtp.decision import RecipientDecision
from mdtwist.smtp.eager import write_now
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.switch import switcher_of

BUSY = reply(421, "4.7.0", "Too many connections from your address, try again later")
SERVER_BUSY = reply(421, "4.3.2", "Too many connections, try again later")
TIMEOUT = reply(421, "4.4.2", "Timeout, closing connection")
SHUTTING_DOWN = reply(421, "4.3.2", "Server shutting down, try again later")
POLICY_FAILED = reply(451, "4.3.0", "Temporary lookup failure, try again later")
SPOOL_FULL = reply(452, "4.3.1", "Insufficient system storage, try again later")
SPOOL_FAILED = reply(451, "4.3.0", "Local error in processing, try again later")
TOO_MANY_HOPS = reply(554, "5.4.6", "Too many hops, mail loop detected")
AUTH_OK = reply(235, "2.7.0", "Authentication successful")
AUTH_BAD = reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_UNAVAILABLE = reply(454, "4.7.0", "Temporary authentication failure")
AUTH_BLOCKED = reply(454, "4.7.0", "Too many authentication failures, try again later")
TLS_READY = reply(220, "2.0.0", "Ready to start TLS")
TLS_UNAVAILABLE = reply(454, "4.7.0", "TLS not available")
BYE = reply(221, "2.0.0", "Bye")
#: The longest wait, in seconds, for a client's name before the connect line is logged without.
REVERSE_NAME_TIMEOUT = 10.0
#: Seconds between two checks of the sessions' timeouts: a session times out at most this late.
DEADLINE_CHECK_INTERVAL = 1.0
COMMAND_FAILED = reply(451, "4.3.0", "Local error in processing, try again later")
CANNOT_TURN = reply(451, "4.3.0", "Cannot turn this connection round")
NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")


@attrs.frozen
class CommandAnswer:
    """
    What an extension command's handler answers.

    @ivar reply: the reply (2xx, 4xx or 5xx, with an enhanced status code).
    @ivar turn_to: when set and the reply is C{250}: builds the protocol that takes the
        connection over right after the reply (ATRN's provider becomes an SMTP client). The
        session must run inside a L{mdtwist.smtp.switch.SwitchingProtocol}.
    """

    reply: Reply
    turn_to: Callable[[], IProtocol] | None = None


#: An extension command's handler: called with the session and the command, answers with a
#: L{CommandAnswer} or a Deferred of one.
CommandHandler: TypeAlias = Callable[
    ["SMTPServerProtocol", ExtensionCommand], "CommandAnswer | Deferred[CommandAnswer]"
]


@attrs.frozen
class SessionLimits:
    """
    Limits the glue enforces on top of the core's.

    The brute-force limit on AUTH is the L{LoginPortal}'s, shared with the other protocols.

    @ivar max_sessions_per_ip: concurrent sessions per client IP; more get C{421 4.7.0}.
    @ivar idle_timeout: seconds to wait for a command (RFC 5321 4.5.3.2.7: at least 300).
    @ivar data_timeout: seconds to wait for the next message bytes in DATA.
    @ivar hop_limit: the most C{Received:} lines a message may carry (RFC 5321 6.3).
    @ivar max_buffer: unprocessed bytes held while an answer is pending before the transport
        is paused.
    """

    max_sessions_per_ip: int = 20
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    hop_limit: int = 100
    max_buffer: int = 256 * 1024


class SessionTally:
    """
    The SMTP sessions open in this process, over every listener, and their limit.

    One tally is shared by all the listeners of a process; with C{server.processes} above 1
    each process has its own (counted per process, like the per-address limit).

    @ivar limit: the most sessions open at once; the next connection is greeted with
        C{421 4.3.2} and closed.
    @ivar open: the sessions open now.
    """

    def __init__(self, limit: int) -> None:
        """
        @param limit: the most concurrent sessions, at least 1.
        """
        self.limit = limit
        self.open = 0

    def take(self) -> bool:
        """
        Count a new session if there is room for it.

        @return: whether it was counted.
        """
        if self.open >= self.limit:
            return False
        self.open += 1
        return True

    def give_back(self) -> None:
        """
        Forget a session counted by L{take}.
        """
        self.open -= 1


def listener_settings(
    settings: ServerSettings, mode: ListenerMode, tls_available: bool
) -> ServerSettings:
    """
    Adapt core settings to a listener's mode.

    STARTTLS is offered only when a TLS context exists and the listener is not implicit TLS;
    C{smtps} starts with TLS active; C{submission} and C{smtps} require AUTH before MAIL.

    @param settings: the configured settings.
    @param mode: the listener mode.
    @param tls_available: whether a TLS context for STARTTLS was given.
    @return: the settings the sessions of this listener run with.
    """
    smtps = mode is ListenerMode.SMTPS
    return attrs.evolve(
        settings,
        starttls=tls_available and not smtps,
        tls_active=smtps,
        require_auth=settings.require_auth or mode is not ListenerMode.MX,
    )


#: This process's mark in session ids: random, so that the ids of an earlier run of the
#: server do not come up again in the same log.
_SESSION_PREFIX = secrets.token_hex(2)
_session_numbers = itertools.count(1)


def new_session_id() -> str:
    """
    A session id unique in this process and unlikely to repeat across restarts.

    @return: such as C{3fa9-1c}: this process's random mark, a dash, a hexadecimal count.
    """
    return f"{_SESSION_PREFIX}-{next(_session_numbers):x}"


class SMTPServerFactory(Factory):
    """
    Builds one L{SMTPServerProtocol} per connection and keeps the per-IP counters.

    @ivar settings: the core settings after L{listener_settings}.
    @ivar mode: the listener mode.
    @ivar policy: the receive policy.
    @ivar spool: the spool.
    @ivar portal: checks AUTH credentials.
    @ivar clock: the clock for timeouts and delays.
    @ivar tls: the context factory for STARTTLS, or L{None}.
    @ivar limits: the session limits.
    @ivar keep_auth_password: whether AUTH passwords are kept with the messages.
    @ivar login_service: the service label AUTH logs in with at the portal.
    @ivar listener: the listener's name in the mail log (C{mx}, C{submission}, C{smtps}, C{odmr}).
    @ivar open_sessions: the sessions open now (counted ones), for the drain at shutdown.
    @ivar deadlines: the sessions' timeouts.
    @ivar closing: the server is shutting down: new sessions get C{421 4.3.2}.
    """

    #: No "Starting factory" lines: the mail log says what the listener does.
    noisy = False

    def __init__(
        self,
        *,
        settings: ServerSettings,
        mode: ListenerMode,
        policy: IReceivePolicy,
        spool: ISpool,
        portal: LoginPortal,
        clock: IReactorTime,
        tls: IOpenSSLServerConnectionCreator | None = None,
        limits: SessionLimits | None = None,
        keep_auth_password: bool = False,
        login_service: str = "smtp",
        commands: Mapping[str, CommandHandler] | None = None,
        tally: SessionTally | None = None,
        dsn_untrusted: DSNRequests | None = None,
        trusted: Callable[[ClientInfo], bool] | None = None,
        reverse_name: Callable[[str], Deferred[str | None]] | None = None,
        listener: str | None = None,
    ) -> None:
        """
        Set up a listener.

        @param settings: the core settings; C{starttls}, C{tls_active} and C{require_auth}
            are adapted to C{mode} (see L{listener_settings}).
        @param mode: C{mx}, C{submission} or C{smtps}.
        @param policy: decides MAIL FROM and RCPT TO.
        @param spool: stores accepted messages.
        @param portal: checks AUTH credentials and holds the brute-force limit.
        @param clock: every timeout and delay uses it.
        @param tls: the server TLS context for STARTTLS; without it STARTTLS is not offered.
        @param limits: the session limits; L{SessionLimits} defaults when L{None}.
        @param keep_auth_password: keep the password of a successful AUTH with the session's
            messages (in L{ClientInfo.password}), for smart hosts that want the sender's own
            mailbox password (MDaemon's C{ISPAUTHUsePasswords}); off by default.
        @param login_service: the service label of AUTH at the portal: C{"smtp"} (directory
            accounts), or C{"gateway"} for a listener where gateways log in (there CRAM-MD5
            can be offered, as the gateway checker holds cleartext secrets).
        @param commands: handlers of extension commands by verb (case does not matter); the
            verbs are advertised in the EHLO reply.
        @param tally: the sessions of the whole process and their limit, shared with the other
            listeners; without it this listener has no limit but the per-address one.
        @param dsn_untrusted: how the DSN requests of a client that did not authenticate and
            is not C{trusted} are honoured (C{smtp.dsn}); L{None} to honour them all.
        @param trusted: whether a client is in a trusted network; none is without it.
        @param reverse_name: finds a client's name from its address for the mail log (see
            L{mdtwist.delivery.mx.MXResolver.reverse_name}); without it the address stands in.
        @param listener: the listener's name in the mail log's connect lines; the mode's
            (C{mx}, C{submission}, C{smtps}) by default.
        """
        self.settings = listener_settings(settings, mode, tls is not None)
        self.commands = {verb.upper(): h for verb, h in (commands or {}).items()}
        if self.commands:
            self.settings = attrs.evolve(
                self.settings, commands=(*self.settings.commands, *self.commands)
            )
        self.mode = mode
        self.listener = listener or mode.value
        self.policy = policy
        self.spool = spool
        self.portal = portal
        self.clock = clock
        self.tls = tls
        self.limits = limits or SessionLimits()
        self.keep_auth_password = keep_auth_password
        self.login_service = login_service
        self.tally = tally
        self.dsn_untrusted = dsn_untrusted
        self.trusted = trusted
        self.reverse_name = reverse_name
        self._sessions: defaultdict[str, int] = defaultdict(int)
        self.open_sessions: set[SMTPServerProtocol] = set()
        self.deadlines: Deadlines[SMTPServerProtocol] = Deadlines(clock, DEADLINE_CHECK_INTERVAL)
        self.closing = False

    @override
    def buildProtocol(self, addr: object) -> SMTPServerProtocol:
        return SMTPServerProtocol(self, new_session_id())

    def session_opened(self, address: str) -> Reply | None:
        """
        Count a new session from an address.

        @param address: the client IP.
        @return: L{None} when it is within the limits and was counted; else the reply that
            refuses it (C{421 4.3.2} when the process is full, C{421 4.7.0} when the address
            has too many sessions), and it was not counted.
        """
        if self.closing:
            return SHUTTING_DOWN
        if self._sessions.get(address, 0) >= self.limits.max_sessions_per_ip:
            return BUSY
        if self.tally is not None and not self.tally.take():
            return SERVER_BUSY
        self._sessions[address] += 1
        return None

    def session_closed(self, address: str) -> None:
        """
        Forget a session counted by L{session_opened}.

        @param address: the client IP.
        """
        self._sessions[address] -= 1
        if self._sessions[address] <= 0:
            del self._sessions[address]
        if self.tally is not None:
            self.tally.give_back()

    def sessions(self, address: str) -> int:
        """
        Count the open sessions from an address.

        @param address: the client IP.
        @return: the number of open sessions from it.
        """
        return self._sessions.get(address, 0)


@implementer(IHandshakeListener)
class SMTPServerProtocol(Protocol):
    """
    One inbound SMTP session.

    @ivar session: the session id used in log events.
    @ivar core: the protocol core.
    """

    log = Logger()

    def __init__(self, factory: SMTPServerFactory, session: str) -> None:
        """
        Prepare a session; it starts with C{connectionMade}.

        @param factory: the listener's factory.
        @param session: the session id.
        """
        self._factory = factory
        self.session = session
        # A CRAM-MD5 challenge must be unique: a random nonce per session, when it is offered.
        nonce = secrets.token_hex(8) if "CRAM-MD5" in factory.settings.auth_mechanisms else ""
        self.core = ServerCore(factory.settings, auth_nonce=nonce)
        self._peer = ""
        self._counted = False
        self._user: str | None = None
        self._password: Secret | None = None
        self._waiting = False
        self._processing = False
        self._paused = False
        self._gone = False
        self._detached = False
        # The routes of the transaction's recipients, in the core's order, and their
        # duplicate keys: made at its first accepted recipient, dropped by each accepted
        # MAIL FROM (an idle session holds neither).
        self._routes: list[Route] = []
        self._accepted: set[tuple[str, str]] | None = None
        self._add_recipient = True
        self._auth: Deferred[Account] | None = None
        self._turn_to: Callable[[], IProtocol] | None = None
        # For the mail log: the TLS in use, the messages accepted and the commands refused.
        self._tls: tuple[str, str] | None = None
        self._messages = 0
        self._rejects = 0
        self._client_name: str | None = None
        self._connect_logged = False
        self._lookup: Deferred[str | None] | None = None
        # The policy of this session (see _session_policy), made at its first MAIL FROM:
        # an idle session holds none.
        self._policy: IReceivePolicy | None = None
        # Shutting down: None (no), False (close when no transaction is open), True (close
        # as soon as no answer of ours is pending).
        self._closing: bool | None = None

    @property
    def client(self) -> ClientInfo:
        """What is known of the client now (address, HELO name, login, TLS)."""
        return self._client()

    def detach(self) -> bytes:
        """
        Let go of the connection without closing it, for another protocol to take it over:
        timers are cancelled, the session stops counting against its address, a paused
        transport is resumed, and no further event is processed or reply written; a later
        C{connectionLost} releases nothing twice.

        @return: the bytes received and not yet read by the core.
        """
        if self._detached:
            return b""
        self._detached = True
        self._gone = True
        self._cancel_timer()
        self._cancel_auth()
        self._cancel_lookup()
        self._release()
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        unread = self.core.detach()
        self.log.info(
            "SMTP session handed over", session=self.session, peer=self._peer, unread=len(unread)
        )
        return unread

    # -- the mail log --

    def _who(self) -> dict[str, Any]:
        # The session's fields of every mail-log line; the connect line goes first.
        self._log_connect()
        return {"session": self.session, "peer": self._peer, "client_name": self._client_name}

    def _log_connect(self) -> None:
        if not self._connect_logged:
            self._connect_logged = True
            maillog.connected(
                session=self.session,
                peer=self._peer,
                client_name=self._client_name,
                listener=self._factory.listener,
            )

    def _named(self, name: str | None) -> None:
        self._lookup = None
        self._client_name = name
        self._log_connect()

    def _unnamed(self, failure: Failure) -> None:
        # Timed out, cancelled with the session, or a resolver that failed: no name.
        self._lookup = None
        self._log_connect()

    def _cancel_lookup(self) -> None:
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            lookup.cancel()
        self._log_connect()

    def close_when_idle(self, *, now: bool = False) -> None:
        """
        The server is shutting down: end the session with C{421 4.3.2} as soon as no
        transaction is open (a message being received is finished first), or with C{now}
        as soon as no answer of ours is pending.

        @param now: do not wait for the client to finish its transaction.
        """
        self._closing = now or bool(self._closing)
        self._close_if_idle()

    def _close_if_idle(self) -> bool:
        # Close a session that is shutting down when it may be; returns whether it did.
        if self._closing is None or self._gone or self._waiting:
            return False
        if not self._closing and (
            self.core.sender is not None or self.core.state is not SessionState.COMMAND
        ):
            return False
        self.log.info(
            "SMTP session closed: server shutting down", session=self.session, peer=self._peer
        )
        self._cancel_timer()
        self.core.abort(SHUTTING_DOWN)
        self._flush(now=True)
        self.transport.loseConnection()  # type: ignore[union-attr]
        return True

    def _release(self) -> None:
        self._factory.open_sessions.discard(self)
        if self._counted:
            self._counted = False
            self._factory.session_closed(self._peer)
            metrics.session_closed(self._factory.mode.value)

    # -- Twisted callbacks --

    @override
    def connectionMade(self) -> None:
        if not self.core.tls_active and ISSLTransport.providedBy(self.transport):
            # Already encrypted (a connection turned round inside TLS): say so in the trace
            # and offer no STARTTLS; the handshake is over, its parameters are known.
            self.core = ServerCore(attrs.evolve(self.core.settings, tls_active=True))
            self._tls = _tls_parameters(self.transport)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self._peer = str(getattr(peer, "host", peer))
        refusal = self._factory.session_opened(self._peer)
        self._counted = refusal is None
        metrics.session_opened(self._factory.mode.value, accepted=refusal is None)
        reverse = self._factory.reverse_name
        if reverse is not None and refusal is None:
            # The connect line waits for the client's name (never the greeting); any other
            # line of the session comes after it, with the name if it is known by then.
            lookup: Deferred[str | None] = maybeDeferred(reverse, self._peer)
            lookup.addTimeout(REVERSE_NAME_TIMEOUT, self._factory.clock)
            self._lookup = lookup
            lookup.addCallbacks(self._named, self._unnamed)
        else:
            self._log_connect()
        if refusal is None:
            self._factory.open_sessions.add(self)
            self.core.start()
        elif refusal is SHUTTING_DOWN:
            self.core.start(refusal)
        elif refusal is SERVER_BUSY:
            self.log.warn(
                "too many sessions in this process, refused {peer}",
                session=self.session,
                peer=self._peer,
            )
            self.core.start(refusal)
        else:
            self.log.warn("too many sessions from {peer}", session=self.session, peer=self._peer)
            self.core.start(refusal)
        self._process()

    @override
    def dataReceived(self, data: bytes) -> None:
        self.core.receive_data(data)
        self._process()

    @override
    def connectionLost(self, reason: Failure | None = None) -> None:
        self._gone = True
        self._cancel_timer()
        self._cancel_auth()
        self._cancel_lookup()
        self._release()
        if not self._detached:
            tls_version, tls_cipher = self._tls or (None, None)
            maillog.disconnected(
                **self._who(),
                tls_version=tls_version,
                tls_cipher=tls_cipher,
                user=self._user,
                messages=self._messages,
                rejects=self._rejects,
            )

    def handshakeCompleted(self) -> None:  # noqa: N802 (IHandshakeListener)
        """
        The TLS handshake is done (implicit TLS, or after STARTTLS): log its version and cipher.
        """
        self._tls = _tls_parameters(self.transport)
        maillog.tls_established(
            **self._who(),
            tls_version=self._tls[0],
            tls_cipher=self._tls[1],
        )

    # -- the event loop --

    def _process(self) -> None:
        if self._processing or self._gone:
            return
        self._processing = True
        try:
            while not self._waiting and not self._gone:
                if self._closing is not None and self._close_if_idle():
                    return
                event = self.core.next_event()
                for verb, refusal in self.core.take_refusals():
                    self._log_refusal(verb, refusal, rcpt=None)
                if event is Sentinel.CLOSE:
                    if self.core.sync_error is not None:
                        self.log.warn(
                            "improper command pipelining after {command} from {peer}",
                            session=self.session,
                            peer=self._peer,
                            command=self.core.sync_error,
                        )
                    self._cancel_timer()
                    self._flush(now=True)
                    self.transport.loseConnection()  # type: ignore[union-attr]
                    return
                if event is Sentinel.NEED_DATA or event is Sentinel.PAUSED:
                    break
                self._waiting = True
                self._dispatch(event).addCallback(self._answer, event)
        finally:
            self._processing = False
        # The replies of one pass leave together: PIPELINING answered in one segment.
        self._flush()
        if (
            self._waiting
            and not self._paused
            and self.core.buffered > self._factory.limits.max_buffer
        ):
            self._paused = True
            self.transport.pauseProducing()  # type: ignore[union-attr]
        self._schedule_timeout()

    def _dispatch(self, event: Event) -> Deferred[Reply]:
        if isinstance(event, MailFrom):
            return self._check(self._session_policy().check_sender, self._client(), event.sender)
        if isinstance(event, RcptTo):
            return self._check_recipient(event)
        if isinstance(event, MessageReceived):
            return self._enqueue(event)
        if isinstance(event, Authenticate):
            return self._authenticate(event)
        if isinstance(event, StartTLS):
            return _now(TLS_READY if self._factory.tls is not None else TLS_UNAVAILABLE)
        if isinstance(event, ExtensionCommand):
            return self._extension(event)
        assert isinstance(event, Quit)
        return _now(BYE)

    def _answer(self, answer: Reply, event: Event) -> None:
        self._waiting = False
        if self._gone:
            return
        if answer.category in (4, 5):
            self._refused(event, answer)
        if isinstance(event, MailFrom) and answer.is_positive:
            self._routes = []
            self._accepted = None
        add, self._add_recipient = self._add_recipient, True
        if not answer.is_positive and isinstance(event, MailFrom | RcptTo | MessageReceived):
            stage = "mail" if isinstance(event, MailFrom) else "rcpt"
            stage = "data" if isinstance(event, MessageReceived) else stage
            metrics.refused(stage, answer.code, answer.enhanced)
        self.core.send(answer, add_recipient=add)
        turn_to, self._turn_to = self._turn_to, None
        switching = (isinstance(event, StartTLS) and answer.code == 220) or (
            turn_to is not None and answer.code == 250
        )
        # Inside a pass of _process the reply waits for the others of the pass, unless the
        # connection changes hands (TLS, a turn) right after it.
        self._flush(now=switching)
        if isinstance(event, StartTLS) and answer.code == 220:
            assert self._factory.tls is not None
            ITLSTransport(self.transport).startTLS(self._factory.tls)
            self.core.start_tls()
            self._user = None
            self._password = None
        if turn_to is not None and answer.code == 250:
            self._turn(turn_to)
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self._process()

    def _refused(self, event: Event, answer: Reply) -> None:
        # One mail-log line per refused command (a refused recipient, a refused message ...).
        if isinstance(event, MessageReceived):
            self._log_refusal("DATA", answer, rcpt=None, mail_from=event.sender)
        elif isinstance(event, ExtensionCommand):
            self._log_refusal(event.verb, answer, rcpt=None)
        elif isinstance(event, MailFrom):
            self._log_refusal("MAIL", answer, rcpt=None, mail_from=event.sender)
        else:
            rcpt = event.recipient if isinstance(event, RcptTo) else None
            self._log_refusal(_VERBS.get(type(event), ""), answer, rcpt=rcpt)

    def _log_refusal(
        self, command: str, answer: Reply, *, rcpt: str | None, mail_from: str | None = None
    ) -> None:
        self._rejects += 1
        maillog.refused(
            **self._who(),
            command=command,
            code=answer.code,
            enhanced=answer.enhanced,
            reason=" ".join(answer.lines),
            mail_from=self.core.sender if mail_from is None else mail_from,
            rcpt=rcpt,
            helo=self.core.helo,
        )

    def _flush(self, *, now: bool = False) -> None:
        # Send what the core has for the client; within a pass of _process only when C{now}
        # (the pass sends the rest when it ends).
        if self._gone or (self._processing and not now):
            return
        data = self.core.data_to_send()
        if data:
            write_now(self.transport, data)  # type: ignore[arg-type]

    def _extension(self, event: ExtensionCommand) -> Deferred[Reply]:
        handler = self._factory.commands.get(event.verb)
        if handler is None:  # a verb in the settings without a handler
            return _now(NOT_IMPLEMENTED)
        # A handler answers at once or with a Deferred; maybeDeferred takes either.
        call = cast(Callable[..., Any], handler)
        d: Deferred[CommandAnswer] = maybeDeferred(call, self, event)

        def answered(answer: CommandAnswer) -> Reply:
            if answer.reply.category not in (2, 4, 5) or answer.reply.enhanced is None:
                self.log.error(
                    "{command} handler gave an unfit reply {code}",
                    session=self.session,
                    peer=self._peer,
                    command=event.verb,
                    code=answer.reply.code,
                )
                return COMMAND_FAILED
            if answer.turn_to is not None and answer.reply.code == 250:
                if switcher_of(self) is None:
                    self.log.error(
                        "cannot turn the connection round: no switching protocol",
                        session=self.session,
                        peer=self._peer,
                        command=event.verb,
                    )
                    return CANNOT_TURN
                self._turn_to = answer.turn_to
            return answer.reply

        def failed(failure: Failure) -> Reply:
            self.log.failure(
                "{command} failed",
                failure,
                session=self.session,
                peer=self._peer,
                command=event.verb,
            )
            return COMMAND_FAILED

        return d.addCallbacks(answered, failed)

    def _turn(self, turn_to: Callable[[], IProtocol]) -> None:
        switcher = switcher_of(self)
        assert switcher is not None
        unread = self.detach()
        switcher.switch_to(turn_to(), unread)

    # -- timeouts --

    def _cancel_timer(self) -> None:
        self._factory.deadlines.clear(self)

    def _schedule_timeout(self) -> None:
        if self._gone or self.core.state is SessionState.CLOSED:
            self._cancel_timer()
            return
        if self._waiting:
            # Our own collaborator is busy, not the client: the deadline stays, but when it
            # passes it starts afresh (deadline_passed), and the answer moves it anyway.
            return
        self._factory.deadlines.set(self, self._timeout())

    def _timeout(self) -> float:
        limits = self._factory.limits
        if self.core.state is SessionState.DATA or self.core.state is SessionState.CHUNK:
            return limits.data_timeout
        return limits.idle_timeout

    def deadline_passed(self) -> None:
        """
        The client said nothing for the timeout: the session ends with C{421 4.4.2}; while
        our own answer is pending, the wait starts afresh instead.
        """
        if self._waiting:
            self._factory.deadlines.set(self, self._timeout())
            return
        maillog.timed_out(
            **self._who(),
            state=self.core.state.name,
        )
        self.core.abort(TIMEOUT)
        self._flush(now=True)
        self.transport.loseConnection()  # type: ignore[union-attr]

    # -- collaborators --

    def _client(self) -> ClientInfo:
        return ClientInfo(
            address=self._peer,
            helo=self.core.helo or "",
            user=self._user,
            tls=self._tls_description(),
            password=self._password,
        )

    def _sender(self) -> str:
        return self.core.sender or ""

    def _tls_description(self) -> str | None:
        if not self.core.tls_active:
            return None
        version, cipher = self._tls or _tls_parameters(self.transport)
        return f"{version} {cipher}" if cipher else version

    def _check(self, method: Callable[..., Deferred[Reply]], *args: object) -> Deferred[Reply]:
        d: Deferred[Reply] = maybeDeferred(method, *args)
        return d.addErrback(self._lookup_failed)

    def _session_policy(self) -> IReceivePolicy:
        # The policy of this session: a view of its own when the policy keeps per-session
        # state (the budget of Domain Sharing lookups), made when first needed.
        policy = self._policy
        if policy is None:
            policy = self._factory.policy
            if ISessionPolicies.providedBy(policy):
                policy = ISessionPolicies(policy).for_session()
            self._policy = policy
        return policy

    def _check_recipient(self, event: RcptTo) -> Deferred[Reply]:
        d: Deferred[RecipientDecision] = maybeDeferred(
            self._session_policy().check_recipient,
            self._client(),
            self._sender(),
            event.recipient,
        )
        return d.addCallback(self._decided, event).addErrback(self._lookup_failed)

    def _decided(self, decision: RecipientDecision, event: RcptTo) -> Reply:
        # Keep the route of an accepted recipient; a second recipient that reaches the same
        # mailbox is answered the same but not added again (one copy is delivered).
        if decision.route is None or not decision.reply.is_positive:
            return decision.reply
        key = duplicate_key(event.recipient, decision.route)
        if self._accepted is None:
            self._accepted = set()
        if key in self._accepted:
            self.log.info(
                "duplicate recipient {rcpt} not added again",
                session=self.session,
                peer=self._peer,
                rcpt=event.recipient,
            )
            self._add_recipient = False
        else:
            self._accepted.add(key)
            self._routes.append(decision.route)
        return decision.reply

    def _lookup_failed(self, failure: Failure) -> Reply:
        if not failure.check(DirectoryUnavailable):
            self.log.failure(
                "receive policy failed", failure, session=self.session, peer=self._peer
            )
        return POLICY_FAILED

    def _enqueue(self, event: MessageReceived) -> Deferred[Reply]:
        hops = count_received(event.body)
        if hops > self._factory.limits.hop_limit:
            # The mail log's reject line says it (554 5.4.6 Too many hops).
            return _now(TOO_MANY_HOPS)
        client = self._client()
        now = self._factory.clock.seconds()
        parameters = event.mail_parameters
        envelope = Envelope(
            sender=event.sender,
            recipients=tuple(
                Recipient(
                    r.recipient, notify=r.parameters.notify, orcpt=r.parameters.orcpt, route=route
                )
                for r, route in zip(event.recipients, self._routes, strict=True)
            ),
            client=client,
            arrival=now,
            body_type=BodyType(parameters.body) if parameters.body else BodyType.SEVEN_BIT,
            smtputf8=parameters.smtputf8,
            ret=parameters.ret,
            envid=parameters.envid,
            size=parameters.size,
        )
        restriction = self._factory.dsn_untrusted
        if restriction is not None and client.user is None:
            trusted = self._factory.trusted
            if trusted is None or not trusted(client):
                envelope = restrict_requests(envelope, restriction)
        trace = received_header(
            helo=client.helo,
            client_address=client.address,
            hostname=self.core.settings.hostname,
            protocol=with_protocol(
                extended=self.core.extended,
                tls=self.core.tls_active,
                authenticated=self.core.authenticated,
            ),
            when=now,
            tls=client.tls,
            recipient=event.recipients[0].recipient if len(event.recipients) == 1 else None,
        )
        d: Deferred[str] = maybeDeferred(self._factory.spool.enqueue, envelope, trace + event.body)
        return d.addCallbacks(self._queued, self._not_queued, callbackArgs=(event,))

    def _queued(self, queue_id: str, event: MessageReceived) -> Reply:
        metrics.message_accepted(self._factory.mode.value, len(event.body))
        self._messages += 1
        maillog.accepted(
            queue_id=queue_id,
            **self._who(),
            mail_from=event.sender,
            msg_size=len(event.body),
            nrcpt=len(event.recipients),
            message_id=maillog.message_id(event.body),
            user=self._user,
        )
        return reply(250, "2.0.0", f"Ok: queued as {queue_id}")

    def _not_queued(self, failure: Failure) -> Reply:
        if failure.check(SpoolError):
            self.log.error(
                "spool refused message: {error}",
                session=self.session,
                peer=self._peer,
                error=str(failure.value),
            )
            return SPOOL_FULL
        self.log.failure("spool failed", failure, session=self.session, peer=self._peer)
        return SPOOL_FAILED

    def _authenticate(self, event: Authenticate) -> Deferred[Reply]:
        factory = self._factory
        if event.authzid and event.authzid != event.login:
            self.log.info(
                "AUTH refused for {user}: may not act as another user",
                session=self.session,
                peer=self._peer,
                user=escape_text(event.login),
            )
            return _now(AUTH_BAD)
        credentials: ICredentials
        if event.challenge is not None:
            credentials = CramMD5Response(
                HashedCredentials(event.login, event.challenge, event.password)
            )
        else:
            credentials = UsernamePassword(
                event.login.encode("utf-8"), event.password.encode("utf-8")
            )
        d: Deferred[Account] = maybeDeferred(
            factory.portal.login_with, self._peer, credentials, service=factory.login_service
        )
        self._auth = d
        replied = d.addBoth(self._auth_done).addCallbacks(
            self._auth_result, self._auth_error, callbackArgs=(event.mechanism,)
        )
        if factory.keep_auth_password and event.challenge is None:
            password = Secret(event.password)

            def keep(answer: Reply) -> Reply:
                if answer.code == 235:
                    self._password = password
                return answer

            replied.addCallback(keep)
        return replied

    def _auth_done(self, result: Account | Failure) -> Account | Failure:
        self._auth = None
        return result

    def _cancel_auth(self) -> None:
        # A login still waiting (the portal's throttling delay, a slow directory) ends with
        # the session; its reply would go nowhere.
        pending, self._auth = self._auth, None
        if pending is not None:
            pending.cancel()

    def _auth_result(self, account: Account, mechanism: str) -> Reply:
        self._user = account.login
        maillog.logged_in(
            **self._who(),
            user=account.login,
            method=mechanism,
        )
        return AUTH_OK

    def _auth_error(self, failure: Failure) -> Reply:
        # The portal has logged a failed or throttled login (address, escaped login).
        if failure.check(UnauthorizedLogin):
            return AUTH_BAD
        if failure.check(LoginThrottled):
            return AUTH_BLOCKED
        if not failure.check(DirectoryUnavailable, CancelledError):
            self.log.failure("AUTH check failed", failure, session=self.session, peer=self._peer)
        return AUTH_UNAVAILABLE


#: The verb of each command event, for the mail log.
_VERBS: dict[type, str] = {RcptTo: "RCPT", Authenticate: "AUTH", StartTLS: "STARTTLS"}


def _tls_parameters(transport: object) -> tuple[str, str]:
    # The TLS version and cipher of a connection, from its OpenSSL connection: the transport's
    # handle under implicit TLS, the TLS layer's after STARTTLS on a TCP transport.
    for holder in (transport, getattr(transport, "protocol", None)):
        try:
            handle: Any = holder.getHandle()  # type: ignore[union-attr]
            version = handle.get_protocol_version_name()
            cipher = handle.get_cipher_name()
        except Exception:
            continue
        return str(version), "" if cipher is None else str(cipher)
    return "TLS", ""


def _now(answer: Reply) -> Deferred[Reply]:
    d: Deferred[Reply] = Deferred()
    d.callback(answer)
    return d
