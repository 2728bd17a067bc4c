# -*- test-case-name: tests.settings.test_discover -*-
"""
The discovery probe: C{mdtwistctl discover ADDRESS} finds how a mail client can reach a
mailbox, in the order a client's "test and get account settings" tries servers.

Theory of operation. L{candidates} lists the tries of one order (C{mdaemon}: the MDaemon
Connector's; C{thunderbird}: Thunderbird's guessing after its stable sort; C{rfc8314}: implicit
TLS, then STARTTLS, never plaintext), best first. L{probe} runs them concurrently (at most
C{parallel} at a time) but decides by priority: a try's result is taken only when every try
before it has failed, and then the tries after it are cancelled. Each try connects (implicit
TLS wraps the connection; STARTTLS requires the capability and upgrades), verifies the
certificate against the host name tried, reads the capabilities and, with a password, logs in
once. Logins of one protocol take turns, and after a server rejected the password no other try
of that protocol sends it (no password spraying); plaintext tries never send it unless allowed.
Host names can be mapped to addresses and ports to other ports, so tests run on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import ipaddress
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredLock,
    DeferredSemaphore,
    TimeoutError,
    fail,
    succeed,
)
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionDone,
    DNSLookupError,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from typing_extensions import override

from mdtwist.logging import quiet
from mdtwist.settings.model import Security


class Protocol(enum.Enum):
    """
    The service a try is for.
    """

    IMAP = "imap"
    SMTP = "smtp"


class Order(enum.Enum):
    """
    Whose order of tries to follow.
    """

    MDAEMON = "mdaemon"
    THUNDERBIRD = "thunderbird"
    RFC8314 = "rfc8314"


@attrs.frozen
class Try:
    """
    One connection attempt.
    """

    protocol: Protocol
    host: str
    port: int
    security: Security


def candidates(domain: str, order: Order) -> list[Try]:
    """
    The tries of one order, best first, IMAP then SMTP.

    @param domain: the mail domain.
    @param order: whose order.
    @return: the tries.
    """
    d = domain.lower().rstrip(".")
    tls, starttls, plain = Security.IMPLICIT_TLS, Security.STARTTLS, Security.NONE
    imap, smtp = Protocol.IMAP, Protocol.SMTP
    tries: list[Try] = []
    if order is Order.MDAEMON:
        imap_hosts = [f"mail.{d}", f"imap.{d}", d, f"imap.mail.{d}"]
        smtp_hosts = [f"mail.{d}", f"smtp.{d}", d, f"smtp.mail.{d}"]
        for host in imap_hosts:
            tries += [Try(imap, host, 993, tls), Try(imap, host, 143, starttls)]
        tries += [Try(imap, host, 143, plain) for host in imap_hosts]
        for host in smtp_hosts:
            for port in (587, 25, 465):
                tries += [Try(smtp, host, port, tls), Try(smtp, host, port, starttls)]
        tries += [Try(smtp, host, port, plain) for host in smtp_hosts for port in (587, 25, 465)]
    elif order is Order.THUNDERBIRD:
        imap_hosts = [f"imap.{d}", f"mail.{d}", d]
        smtp_hosts = [f"smtp.{d}", f"mail.{d}", d]
        raw = [
            Try(imap, host, port, security)
            for host in imap_hosts
            for port, security in ((143, starttls), (993, tls), (143, plain))
        ]
        raw += [
            Try(smtp, host, port, security)
            for host in smtp_hosts
            for port, security in (
                (587, starttls),
                (25, starttls),
                (465, tls),
                (587, plain),
                (25, plain),
            )
        ]
        # Thunderbird's stable sort: encrypted before plain, implicit TLS before STARTTLS.
        rank = {tls: 0, starttls: 1, plain: 2}
        tries = sorted(raw, key=lambda t: (t.protocol is smtp, rank[t.security]))
    else:
        imap_hosts = [f"imap.{d}", f"mail.{d}", d]
        smtp_hosts = [f"smtp.{d}", f"mail.{d}", d]
        tries = [Try(imap, host, 993, tls) for host in imap_hosts]
        tries += [Try(imap, host, 143, starttls) for host in imap_hosts]
        tries += [Try(smtp, host, 465, tls) for host in smtp_hosts]
        tries += [Try(smtp, host, 587, starttls) for host in smtp_hosts]
    return tries


class Stage(enum.Enum):
    """
    How far a try got.
    """

    RESOLVE = "resolve"
    CONNECT = "connect"
    TLS = "tls"
    GREETING = "greeting"
    CAPABILITY = "capability"
    STARTTLS = "starttls"
    AUTH = "auth"
    DONE = "done"


@attrs.frozen
class Outcome:
    """
    The result of one try.

    @ivar attempt: the try.
    @ivar ok: whether it works (with the password, when one was given and sent).
    @ivar stage: the last stage reached.
    @ivar detail: what happened, for people.
    @ivar capabilities: what the server advertised (after TLS).
    @ivar authenticated: C{True}/C{False} when a login was tried, else L{None}.
    """

    attempt: Try
    ok: bool
    stage: Stage
    detail: str
    capabilities: tuple[str, ...] = ()
    authenticated: bool | None = None


@attrs.define
class Options:
    """
    How to probe.

    @ivar login: the login name (usually the address).
    @ivar password: the password, or L{None} to test reachability only.
    @ivar allow_plaintext_auth: send the password over an unencrypted connection.
    @ivar resolve: host name -> address to connect to (the certificate is still checked
        against the host name).
    @ivar ports: port -> port to connect to instead.
    @ivar only_mapped: skip host names that C{resolve} does not map (no DNS at all).
    @ivar timeout: seconds per try.
    @ivar parallel: tries at once.
    @ivar tls: makes the TLS client options for a host name.
    """

    login: str
    password: str | None
    tls: Callable[[str], IOpenSSLClientConnectionCreator]
    allow_plaintext_auth: bool = False
    resolve: Mapping[str, str] = attrs.field(factory=dict)
    ports: Mapping[int, int] = attrs.field(factory=dict)
    only_mapped: bool = False
    timeout: float = 8.0
    parallel: int = 8


class _Failed(Exception):
    def __init__(self, stage: Stage, detail: str, authenticated: bool | None = None) -> None:
        super().__init__(detail)
        self.stage = stage
        self.detail = detail
        self.authenticated = authenticated


class _Lines(LineReceiver):
    # Hands received lines to whoever waits for them; the dialogs are coroutines.
    delimiter = b"\r\n"
    MAX_LENGTH = 16384

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.lines: list[bytes] = []
        self.waiter: Deferred[bytes] | None = None
        self.lost: Failure | None = None

    @override
    def lineReceived(self, line: bytes) -> None:
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.callback(line)
        else:
            self.lines.append(line)

    @override
    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    @override
    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.errback(reason)

    def read(self) -> Deferred[bytes]:
        if self.lines:
            return succeed(self.lines.pop(0))
        if self.lost is not None:
            return fail(self.lost)
        waiter: Deferred[bytes] = Deferred()
        self.waiter = waiter
        return waiter.addTimeout(self.timeout, self.clock)

    def write_line(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")  # type: ignore[union-attr]

    def start_tls(self, options: IOpenSSLClientConnectionCreator) -> None:
        self.transport.startTLS(options)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _text(line: bytes) -> str:
    # Server text, safe to print: control characters escaped.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in line.decode("latin-1"))


def _quoted(text: str) -> bytes:
    # An IMAP quoted string.
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8") + b'"'


class _Auth:
    # Logins of one protocol take turns; after a rejection nobody sends the password again,
    # and after an acceptance only better tries (a lower rank) still log in.
    def __init__(self) -> None:
        self.lock = DeferredLock()
        self.rejected = False
        self.accepted_rank: int | None = None


class Prober:
    """
    Runs tries against real servers.
    """

    def __init__(self, reactor: Any, options: Options, tries: Sequence[Try] = ()) -> None:
        """
        @param reactor: the reactor (TCP, time, name resolution).
        @param options: how to probe.
        @param tries: the tries in priority order (a try after one whose login worked does
            not log in).
        """
        self.reactor = reactor
        self.options = options
        self.auth = {Protocol.IMAP: _Auth(), Protocol.SMTP: _Auth()}
        self.rank = {attempt: i for i, attempt in enumerate(tries)}

    def run(self, attempt: Try) -> Deferred[Outcome]:
        """
        Run one try.

        @param attempt: the try.
        @return: a Deferred firing with its outcome (never failing; cancelling stops it).
        """
        return Deferred.fromCoroutine(self._run(attempt))

    async def _run(self, attempt: Try) -> Outcome:
        options = self.options
        address = options.resolve.get(attempt.host.lower())
        if address is None and options.only_mapped:
            return Outcome(attempt, False, Stage.RESOLVE, "not mapped (--only-mapped)")
        port = options.ports.get(attempt.port, attempt.port)
        endpoint: Any
        if address is not None and _is_ip(address):
            # A mapped address: connect to it directly, no name resolution at all.
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = kind(self.reactor, address, port, timeout=int(options.timeout) or 1)
        else:
            endpoint = HostnameEndpoint(
                self.reactor, address or attempt.host, port, timeout=options.timeout
            )
        if attempt.security is Security.IMPLICIT_TLS:
            endpoint = wrapClientTLS(options.tls(attempt.host), endpoint)
        lines = _Lines(self.reactor, options.timeout)
        stage = Stage.CONNECT
        try:
            await endpoint.connect(quiet(Factory.forProtocol(lambda: lines)))
        except DNSLookupError:
            return Outcome(attempt, False, Stage.RESOLVE, "the host name does not resolve")
        except ConnectingCancelledError:
            raise
        except (ConnectError, TimeoutError) as e:
            return Outcome(attempt, False, stage, f"cannot connect: {e.__class__.__name__}")
        try:
            if attempt.protocol is Protocol.IMAP:
                return await self._imap(attempt, lines)
            return await self._smtp(attempt, lines)
        except _Failed as e:
            return Outcome(attempt, False, e.stage, e.detail, authenticated=e.authenticated)
        except CancelledError:
            raise
        except TimeoutError:
            return Outcome(attempt, False, stage, "timed out")
        except Exception as e:  # a lost connection, mostly: say how
            return Outcome(attempt, False, stage, _describe(e))
        finally:
            lines.close()

    async def _read(self, lines: _Lines, stage: Stage) -> bytes:
        try:
            return await lines.read()
        except CancelledError:
            raise
        except TimeoutError:
            raise _Failed(stage, "timed out") from None
        except Exception as e:
            raise _Failed(stage, _describe(e)) from None

    async def _imap(self, attempt: Try, lines: _Lines) -> Outcome:
        stage = Stage.TLS if attempt.security is Security.IMPLICIT_TLS else Stage.GREETING
        greeting = await self._read(lines, stage)
        if not greeting.startswith((b"* OK", b"* PREAUTH")):
            raise _Failed(Stage.GREETING, f"not an IMAP greeting: {_text(greeting[:80])}")
        capabilities = await self._imap_command(lines, b"c1", b"CAPABILITY", Stage.CAPABILITY)
        if attempt.security is Security.STARTTLS:
            if "STARTTLS" not in capabilities:
                raise _Failed(Stage.STARTTLS, "STARTTLS is not offered")
            await self._imap_command(lines, b"c2", b"STARTTLS", Stage.STARTTLS)
            lines.start_tls(self.options.tls(attempt.host))
            capabilities = await self._imap_command(lines, b"c3", b"CAPABILITY", Stage.TLS)
        authenticated = await self._login(attempt, lines, capabilities)
        lines.write_line(b"c9 LOGOUT")
        return self._outcome(attempt, capabilities, authenticated)

    async def _imap_command(
        self, lines: _Lines, tag: bytes, command: bytes, stage: Stage
    ) -> tuple[str, ...]:
        lines.write_line(tag + b" " + command)
        capabilities: tuple[str, ...] = ()
        while True:
            line = await self._read(lines, stage)
            if line.upper().startswith(b"* CAPABILITY "):
                capabilities = tuple(line[13:].decode("ascii", "replace").upper().split())
            elif line.startswith(tag + b" "):
                if line[len(tag) + 1 :].upper().startswith(b"OK"):
                    return capabilities
                raise _Failed(stage, f"{command.decode()}: {_text(line[len(tag) + 1 :])}")

    async def _smtp(self, attempt: Try, lines: _Lines) -> Outcome:
        stage = Stage.TLS if attempt.security is Security.IMPLICIT_TLS else Stage.GREETING
        code, text = await self._smtp_reply(lines, stage)
        if code != 220:
            raise _Failed(Stage.GREETING, f"greeting {code} {text}")
        capabilities = await self._ehlo(lines)
        if attempt.security is Security.STARTTLS:
            if "STARTTLS" not in capabilities:
                raise _Failed(Stage.STARTTLS, "STARTTLS is not offered")
            lines.write_line(b"STARTTLS")
            code, text = await self._smtp_reply(lines, Stage.STARTTLS)
            if code != 220:
                raise _Failed(Stage.STARTTLS, f"STARTTLS: {code} {text}")
            lines.start_tls(self.options.tls(attempt.host))
            capabilities = await self._ehlo(lines, Stage.TLS)
        authenticated = await self._login(attempt, lines, capabilities)
        lines.write_line(b"QUIT")
        return self._outcome(attempt, capabilities, authenticated)

    async def _smtp_reply(self, lines: _Lines, stage: Stage) -> tuple[int, str]:
        texts = []
        while True:
            line = await self._read(lines, stage)
            if len(line) < 3 or not line[:3].isdigit():
                raise _Failed(stage, f"not an SMTP reply: {_text(line[:80])}")
            texts.append(_text(line[4:]))
            if line[3:4] != b"-":
                return int(line[:3]), " / ".join(texts)

    async def _ehlo(self, lines: _Lines, stage: Stage = Stage.CAPABILITY) -> tuple[str, ...]:
        lines.write_line(b"EHLO probe.invalid")
        code, text = await self._smtp_reply(lines, stage)
        if code != 250:
            raise _Failed(stage, f"EHLO: {code} {text}")
        keywords = [part.strip().split(" ")[0].upper() for part in text.split(" / ")[1:]]
        auth = [
            f"AUTH={mech.upper()}"
            for part in text.split(" / ")[1:]
            if part.upper().startswith("AUTH ")
            for mech in part.split()[1:]
        ]
        return tuple(keywords + auth)

    async def _login(
        self, attempt: Try, lines: _Lines, capabilities: tuple[str, ...]
    ) -> bool | None:
        options = self.options
        if options.password is None:
            return None
        if attempt.security is Security.NONE and not options.allow_plaintext_auth:
            return None
        auth = self.auth[attempt.protocol]
        await auth.lock.acquire()
        try:
            if auth.rejected:
                raise _Failed(Stage.AUTH, "not tried: the password was rejected by another try")
            rank = self.rank.get(attempt, 0)
            if auth.accepted_rank is not None and auth.accepted_rank < rank:
                raise _Failed(Stage.AUTH, "not tried: a better try already logged in")
            if attempt.protocol is Protocol.IMAP:
                accepted = await self._imap_login(lines, capabilities)
            else:
                accepted = await self._smtp_login(lines, capabilities)
            if not accepted:
                auth.rejected = True
                raise _Failed(Stage.AUTH, "the login was rejected", authenticated=False)
            if auth.accepted_rank is None or rank < auth.accepted_rank:
                auth.accepted_rank = rank
            return True
        finally:
            auth.lock.release()

    async def _imap_login(self, lines: _Lines, capabilities: tuple[str, ...]) -> bool:
        password = self.options.password or ""
        login = self.options.login
        if "LOGINDISABLED" not in capabilities:
            lines.write_line(b"c4 LOGIN " + _quoted(login) + b" " + _quoted(password))
        else:
            lines.write_line(b"c4 AUTHENTICATE PLAIN")
            challenge = await self._read(lines, Stage.AUTH)
            if not challenge.startswith(b"+"):
                raise _Failed(Stage.AUTH, f"AUTHENTICATE: {_text(challenge)}")
            lines.write_line(base64.b64encode(f"\0{login}\0{password}".encode()))
        while True:
            line = await self._read(lines, Stage.AUTH)
            if line.startswith(b"c4 "):
                return line[3:].upper().startswith(b"OK")

    async def _smtp_login(self, lines: _Lines, capabilities: tuple[str, ...]) -> bool:
        if "AUTH=PLAIN" not in capabilities:
            raise _Failed(Stage.AUTH, "AUTH PLAIN is not offered")
        token = base64.b64encode(f"\0{self.options.login}\0{self.options.password}".encode())
        lines.write_line(b"AUTH PLAIN " + token)
        code, text = await self._smtp_reply(lines, Stage.AUTH)
        if code == 235:
            return True
        if code in (535, 534, 530):
            return False
        raise _Failed(Stage.AUTH, f"AUTH: {code} {text}")

    def _outcome(
        self, attempt: Try, capabilities: tuple[str, ...], authenticated: bool | None
    ) -> Outcome:
        if authenticated:
            detail = "works, the login was accepted"
        elif attempt.security is Security.NONE and self.options.password is not None:
            detail = "would work unencrypted (the password was not sent)"
        else:
            detail = "reachable"
        return Outcome(attempt, True, Stage.DONE, detail, capabilities, authenticated)


def _describe(error: BaseException) -> str:
    if isinstance(error, Failure) and error.value is not None:
        error = error.value
    if isinstance(error, SSL.Error):
        text = str(error)
        if "certificate verify failed" in text or "verify" in text.lower():
            return f"certificate not accepted: {text}"
        return f"TLS failed: {text}"
    from service_identity import VerificationError

    if isinstance(error, VerificationError):
        return f"certificate does not match the host name: {error}"
    return f"connection lost: {error.__class__.__name__}: {error}"


async def probe(prober: Prober, tries: Sequence[Try]) -> list[Outcome]:
    """
    Run tries concurrently and decide by priority, per protocol.

    @param prober: runs one try.
    @param tries: the tries, best first.
    @return: the outcome of every try that ran to its end, in the order of C{tries}; tries
        cancelled because a better one already worked are left out.
    """
    semaphore = DeferredSemaphore(prober.options.parallel)
    results: dict[int, Outcome] = {}
    running: dict[int, Deferred[Outcome]] = {}
    done: Deferred[None] = Deferred()
    decided: set[Protocol] = set()

    def settle() -> None:
        for protocol in Protocol:
            if protocol in decided:
                continue
            for i, attempt in enumerate(tries):
                if attempt.protocol is not protocol:
                    continue
                if i not in results:
                    break
                if results[i].ok:
                    decided.add(protocol)
                    for j, deferred in list(running.items()):
                        if j > i and tries[j].protocol is protocol and j not in results:
                            deferred.cancel()
                    break
            else:
                decided.add(protocol)
        if len(decided) == len(Protocol) and not done.called:
            done.callback(None)

    def start(i: int) -> None:
        attempt = tries[i]
        if attempt.protocol in decided:
            return
        deferred = semaphore.run(prober.run, attempt)
        running[i] = deferred

        def finished(outcome: Outcome) -> None:
            results[i] = outcome
            running.pop(i, None)
            settle()

        def cancelled(failure: Failure) -> None:
            running.pop(i, None)
            if not failure.check(CancelledError, ConnectingCancelledError):
                results[i] = Outcome(attempt, False, Stage.CONNECT, f"failed: {failure.value!r}")
            settle()

        deferred.addCallbacks(finished, cancelled)

    for i in range(len(tries)):
        start(i)
    settle()
    await done
    return [results[i] for i in sorted(results)]


def chosen(outcomes: Sequence[Outcome], tries: Sequence[Try]) -> dict[Protocol, Outcome]:
    """
    @param outcomes: what L{probe} returned.
    @param tries: the tries in priority order.
    @return: per protocol, the best try that worked; none for a protocol whose server
        rejected the password (a plaintext try that "would work" proves nothing then).
    """
    best: dict[Protocol, Outcome] = {}
    rank = {attempt: i for i, attempt in enumerate(tries)}
    rejected = rejected_protocols(outcomes)
    for outcome in sorted(outcomes, key=lambda o: rank[o.attempt]):
        protocol = outcome.attempt.protocol
        if outcome.ok and protocol not in best and protocol not in rejected:
            best[protocol] = outcome
    return best


def rejected_protocols(outcomes: Sequence[Outcome]) -> set[Protocol]:
    """
    @param outcomes: what L{probe} returned.
    @return: the protocols whose server rejected the password (nothing is chosen for them).
    """
    return {o.attempt.protocol for o in outcomes if o.authenticated is False}


def fragment(best: Mapping[Protocol, Outcome], login: str) -> dict[str, Any]:
    """
    The settings a client would take from the result: MC C{general} and C{advanced} screens.

    @param best: per protocol, the chosen try.
    @param login: the login name.
    @return: a partial settings document.
    """
    general: dict[str, Any] = {"login_name": login}
    advanced: dict[str, Any] = {}
    for protocol, key in ((Protocol.IMAP, "incoming_server"), (Protocol.SMTP, "outgoing_server")):
        outcome = best.get(protocol)
        if outcome is None:
            continue
        attempt = outcome.attempt
        general[key] = attempt.host
        advanced[protocol.value] = {"security": attempt.security.value, "port": attempt.port}
    return {"general": general, "advanced": advanced}


# --- mdtwistctl discover ----------------------------------------------------------------------


def add_parser(commands: Any) -> None:
    """
    Add the C{discover} command to C{mdtwistctl}'s parser.

    @param commands: the sub-parsers object of the top parser.
    """
    parser = commands.add_parser(
        "discover", help="find the IMAP and SMTP settings of an address, as a client would"
    )
    parser.add_argument("address", metavar="ADDRESS")
    parser.add_argument("--order", choices=[o.value for o in Order], default="mdaemon")
    parser.add_argument("--login", help="the login name (default: the address)")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    parser.add_argument("--allow-plaintext-auth", action="store_true")
    parser.add_argument(
        "--resolve",
        action="append",
        default=[],
        metavar="NAME=ADDRESS",
        help="connect to ADDRESS for host NAME (the certificate is checked against NAME)",
    )
    parser.add_argument(
        "--port-map",
        action="append",
        default=[],
        metavar="PORT=PORT",
        help="connect to another port instead (e.g. 993=10993)",
    )
    parser.add_argument(
        "--only-mapped", action="store_true", help="skip host names --resolve does not map"
    )
    parser.add_argument("--ca-file", metavar="FILE", help="trust these CAs (default: system)")
    parser.add_argument("--timeout", type=float, default=8.0, help="seconds per try")
    parser.add_argument("--parallel", type=int, default=8, help="tries at once")
    parser.add_argument("--json", action="store_true", help="print JSON")


class UsageError(Exception):
    """
    A bad C{discover} argument; the message is for the user.
    """


def options_from(arguments: Any, password: str | None) -> Options:
    """
    @param arguments: the parsed C{discover} command line.
    @param password: the password read, or L{None}.
    @return: the probe's options.
    @raise UsageError: for a bad mapping or CA file.
    """
    from pathlib import Path

    from twisted.internet.ssl import optionsForClientTLS, platformTrust

    from mdtwist.smtp.client import trust_root_from_pem

    resolve = {}
    for item in arguments.resolve:
        name, equals, address = item.partition("=")
        if not equals or not name or not address:
            raise UsageError(f"--resolve {item!r}: write NAME=ADDRESS")
        resolve[name.strip().lower()] = address.strip()
    ports = {}
    for item in arguments.port_map:
        before, equals, after = item.partition("=")
        if not (equals and before.isdigit() and after.isdigit()):
            raise UsageError(f"--port-map {item!r}: write PORT=PORT")
        ports[int(before)] = int(after)
    try:
        trust = trust_root_from_pem(Path(arguments.ca_file)) if arguments.ca_file else None
    except (OSError, Exception) as e:
        raise UsageError(f"--ca-file: cannot use it: {e}") from None
    root = trust if trust is not None else platformTrust()

    def tls(host: str) -> IOpenSSLClientConnectionCreator:
        creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(host, trustRoot=root)
        return creator

    if "@" not in arguments.address:
        raise UsageError(f"{arguments.address!r} is not an address")
    return Options(
        login=arguments.login or arguments.address,
        password=password,
        tls=tls,
        allow_plaintext_auth=arguments.allow_plaintext_auth,
        resolve=resolve,
        ports=ports,
        only_mapped=arguments.only_mapped,
        timeout=arguments.timeout,
        parallel=max(1, arguments.parallel),
    )


def report(
    tries: Sequence[Try],
    outcomes: Sequence[Outcome],
    login: str,
    *,
    as_json: bool,
) -> tuple[str, int]:
    """
    @param tries: the tries in priority order.
    @param outcomes: their outcomes (cancelled tries left out).
    @param login: the login name.
    @param as_json: JSON instead of a table.
    @return: the text and the exit status: 0 both found, 2 only one, 1 none.
    """
    import json

    best = chosen(outcomes, tries)
    status = {2: 0, 1: 2, 0: 1}[len(best)]
    settings = fragment(best, login)
    if as_json:
        rows = [
            {
                "protocol": o.attempt.protocol.value,
                "host": o.attempt.host,
                "port": o.attempt.port,
                "security": o.attempt.security.value,
                "ok": o.ok,
                "stage": o.stage.value,
                "detail": o.detail,
                "capabilities": list(o.capabilities),
                "authenticated": o.authenticated,
            }
            for o in outcomes
        ]
        chosen_rows = {p.value: rows[outcomes.index(o)] for p, o in best.items()}
        document = {
            "tries": rows,
            "chosen": chosen_rows,
            "credentials_rejected": sorted(p.value for p in rejected_protocols(outcomes)),
            "settings": settings,
        }
        text = json.dumps(document, indent=1)
        return text + "\n", status
    lines = []
    for o in outcomes:
        a = o.attempt
        mark = "ok " if o.ok else "-- "
        lines.append(
            f"{mark}{a.protocol.value:<4} {a.host:<28} {a.port:>5} {a.security.value:<12}"
            f" {o.stage.value:<10} {o.detail}"
        )
    rejected = rejected_protocols(outcomes)
    for protocol in Protocol:
        pick = best.get(protocol)
        if pick is not None:
            found = f"{pick.attempt.host}:{pick.attempt.port} {pick.attempt.security.value}"
        else:
            found = "credentials rejected" if protocol in rejected else "none found"
        lines.append(f"{protocol.value}: {found}")
    lines.append(json.dumps(settings, indent=1))
    return "\n".join(lines) + "\n", status


def main(arguments: Any, password: str | None) -> tuple[str, int]:
    """
    Run the probe on the global reactor (for C{mdtwistctl}).

    @param arguments: the parsed C{discover} command line.
    @param password: the password, or L{None}.
    @return: the report and the exit status.
    @raise UsageError: for bad arguments.
    """
    from twisted.internet.task import react

    options = options_from(arguments, password)
    tries = candidates(arguments.address.rpartition("@")[2], Order(arguments.order))
    result: list[tuple[str, int]] = []

    async def run(reactor: Any) -> None:
        outcomes = await probe(Prober(reactor, options, tries), tries)
        result.append(report(tries, outcomes, options.login, as_json=arguments.json))

    with contextlib.suppress(SystemExit):  # react ends the program otherwise
        react(lambda r: Deferred.fromCoroutine(run(r)))
    return result[0] if result else ("the probe failed\n", 1)
