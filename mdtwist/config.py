# -*- test-case-name: tests.test_config -*-
"""
The runtime configuration: a TOML file read into frozen attrs classes.

Theory of operation: L{load_config} parses the file with C{tomllib}, then walks it with a small
reader that knows the path of every value. Each problem (an unknown key, a wrong type, a missing
required value, an unreadable secret file, an endpoint Twisted cannot parse) is recorded as one
line C{file: key: reason}; the walk goes on so that one run reports every problem, and
L{ConfigError} carries them all. Array entries are counted from 0, as in C{smtp.listen[0]}.

Relative paths in the file are taken relative to the directory that holds the file.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import stat
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    clientFromString,
    serverFromString,
)
from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver
from zope.interface import implementer

from mdtwist.address import parse_address
from mdtwist.delivery.dsn import DSNRequests
from mdtwist.delivery.router import HostSpecError, Mode, parse_host_spec
from mdtwist.delivery.schedule import QueuePolicy
from mdtwist.dequeue.gateways import DAY, EtrnTarget, Gateway, ProviderSettings, normalise_domain
from mdtwist.dequeue.signal import SignalMode, atrn_domains
from mdtwist.errors import ConfigError
from mdtwist.ipaddr import Network
from mdtwist.secret import Secret
from mdtwist.settings.model import Security
from mdtwist.smtp.modes import ListenerMode as ListenerMode  # re-exported: its old home
from mdtwist.smtp.modes import TLSMode

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)


class LocalDelivery(enum.Enum):
    """
    Where local mailboxes live: Maildir folders of our own, or an LMTP server such as Dovecot.
    """

    MAILDIR = "maildir"
    LMTP = "lmtp"


class DirectoryBackend(enum.Enum):
    """
    Where accounts live.
    """

    FILE = "file"
    LDAP = "ldap"


class LDAPAuthMethod(enum.Enum):
    """
    How an LDAP directory checks a password: bind as the user, or compare C{userPassword}.
    """

    BIND = "bind"
    COMPARE = "compare"


@attrs.frozen
class ServerConfig:
    """
    @ivar hostname: the name this server gives in greetings and C{Received:} lines.
    @ivar processes: how many processes serve mail; each owns a shard of the spool, and all
        share the SMTP listeners (see L{mdtwist.shards}).
    @ivar postmaster: the mailbox that receives mail for C{postmaster} (bare and at every
        local domain) unless an account has that address itself; L{None}: not set.
    @ivar drain_timeout: seconds a stopping server gives its SMTP sessions to finish the
        message they are receiving (see L{mdtwist.drain}).
    @ivar pin_cpus: with two or more CPUs, keep each server process on one CPU and its
        Maildir workers on the others (L{mdtwist.affinity}).
    """

    hostname: str
    processes: int = 1
    postmaster: str | None = None
    drain_timeout: float = 30.0
    pin_cpus: bool = True


@attrs.frozen
class ListenConfig:
    """
    @ivar endpoint: a Twisted server endpoint string, such as C{tcp:25:interface=127.0.0.1}.
    @ivar mode: the role of the listener.
    @ivar sender_login_match: whether an authenticated client may only send as its own account
        (MDaemon's "sender must match the authenticated account"); on by default for
        C{submission} and C{smtps}, off for C{mx}.
    """

    endpoint: str
    mode: ListenerMode
    sender_login_match: bool = False


@attrs.frozen
class SMTPConfig:
    """
    The SMTP listeners and the limits they share.

    @ivar listen: the SMTP listeners.
    @ivar trusted_networks: client networks that may relay without authenticating (CIDR).
    @ivar allow_plaintext_auth: whether AUTH is offered before TLS.
    @ivar max_message_size: the largest message accepted, in bytes (advertised in SIZE).
    @ivar max_recipients: recipients per message; more get C{452 4.5.3}.
    @ivar max_errors: errors per session before it is closed.
    @ivar max_sessions_per_ip: concurrent sessions from one client address.
    @ivar max_auth_failures: failed logins (of any protocol, through the login portal) per
        client address, and per login name, within C{auth_failure_window} before further
        logins of that address or name are refused.
    @ivar auth_failure_window: seconds over which login failures are counted.
    @ivar command_timeout: seconds to wait for the next command (RFC 5321 4.5.3.2: >= 300).
    @ivar data_timeout: seconds to wait for the next chunk of message data.
    @ivar hop_limit: the most C{Received:} lines a message may already carry.
    @ivar max_command_line: the longest command line, in bytes with CRLF.
    @ivar max_text_line: the longest message line, in bytes with CRLF.
    @ivar forbid_unauth_pipelining: close with C{554 5.5.0} a client that does not wait for a
        reply it must wait for (RFC 2920; Postfix's C{smtpd_forbid_unauth_pipelining}).
    @ivar max_sessions: concurrent sessions per process over all listeners; more are greeted
        with C{421 4.3.2} (100, as Postfix's C{default_process_limit}).
    @ivar reverse_lookup: look up each client's name (a PTR record that leads back to the
        address) for the mail log.
    @ivar dsn: how the DSN requests of clients that neither authenticated nor are in a
        trusted network are honoured.
    """

    listen: tuple[ListenConfig, ...]
    trusted_networks: tuple[str, ...] = ()
    allow_plaintext_auth: bool = False
    max_message_size: int = 52_428_800
    max_recipients: int = 100
    max_errors: int = 10
    max_sessions_per_ip: int = 20
    max_auth_failures: int = 5
    auth_failure_window: float = 300.0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    hop_limit: int = 100
    max_command_line: int = 512
    max_text_line: int = 1000
    forbid_unauth_pipelining: bool = True
    max_sessions: int = 100
    reverse_lookup: bool = False
    dsn: DSNRequests = DSNRequests.LIMITED


@attrs.frozen
class TLSConfig:
    """
    The certificate offered by STARTTLS.

    @ivar certificate: PEM file with the certificate (and its chain).
    @ivar private_key: PEM file with the private key (mode 0600).
    """

    certificate: Path
    private_key: Path


@attrs.frozen
class SpoolConfig:
    """
    @ivar directory: where the spool database and large bodies live.
    @ivar inline_limit: bodies up to this size (bytes) are stored in the database itself.
    """

    directory: Path
    inline_limit: int = 65536


@attrs.frozen
class DeliveryConfig:
    """
    Local delivery.

    @ivar local: Maildir folders of our own, or an LMTP server.
    @ivar maildir_root: the root of the Maildir tree (C{ROOT/domain/mailbox/Maildir}).
    @ivar lmtp_endpoint: a Twisted client endpoint string for the LMTP server.
    @ivar concurrency: messages in delivery at the same time (per process), counted from the
        load to the spool's commit of the outcome, so more than the connections to one host.
    @ivar run_interval: seconds between periodic queue runs.
    @ivar maildir_processes: worker processes that write Maildir files (per server process),
        each on C{concurrency} threads of its own; 0: threads of the server process write
        them (L{mdtwist.delivery.workers}).
    @ivar maildir_process_idle: seconds a Maildir worker may have nothing to do before it ends.
    @ivar direct_max_recipients: the most recipients of a message, all local, delivered before
        the reply to DATA instead of queued first (L{mdtwist.delivery.direct}); 0: every
        message is queued first.
    """

    local: LocalDelivery = LocalDelivery.MAILDIR
    maildir_root: Path | None = None
    lmtp_endpoint: str = ""
    concurrency: int = 20
    run_interval: float = 60.0
    maildir_processes: int = 0
    maildir_process_idle: float = 100.0
    direct_max_recipients: int = 10


@attrs.frozen
class FileDirectoryConfig:
    """
    @ivar path: the accounts file.
    @ivar check_interval: seconds between checks of the file for changes.
    """

    path: Path
    check_interval: float


@attrs.frozen
class LDAPAttributes:
    """
    The names of the LDAP attributes mdtwist reads; an empty name means "not used".

    C{mailbox} names the Maildir of an account (such as C{uid}); when it is not used, or an
    entry has no value, the Maildir is named after the local part of the primary address.
    """

    mail: str = "mail"
    alias: str = "mailLocalAddress"
    display_name: str = "cn"
    first_name: str = "givenName"
    last_name: str = "sn"
    login: str = "uid"
    password: str = "userPassword"
    status: str = ""
    smarthost_login: str = ""
    smarthost_password: str = ""
    gateway_login: str = ""
    mailbox: str = ""


@attrs.frozen
class LDAPConfig:
    """
    How to reach and read an LDAP directory.

    C{filter} and C{auth_filter} are templates: C{{address}} and C{{login}} are replaced by the
    escaped value.
    """

    url: str
    base_dn: str
    domains: frozenset[str]
    start_tls: bool = False
    ca_file: Path | None = None
    bind_dn: str = ""
    bind_password: Secret | None = None
    filter: str = "(&(objectClass=inetOrgPerson)(|(mail={address})(mailLocalAddress={address})))"
    auth_filter: str = "(&(objectClass=inetOrgPerson)(|(uid={login})(mail={login})))"
    auth_method: LDAPAuthMethod = LDAPAuthMethod.BIND
    disabled_values: frozenset[str] = frozenset({"disabled", "false", "0", "no", "inactive"})
    connect_timeout: float = 5.0
    receive_timeout: float = 5.0
    pool_size: int = 4
    attributes: LDAPAttributes = LDAPAttributes()


@attrs.frozen
class CacheConfig:
    """
    @ivar ttl: seconds a found account is remembered.
    @ivar negative_ttl: seconds an unknown address is remembered.
    @ivar size: the most entries kept.
    """

    ttl: float = 60.0
    negative_ttl: float = 5.0
    size: int = 10000


@attrs.frozen
class DirectoryConfig:
    """
    @ivar backend: which backend holds the accounts.
    @ivar file: settings of the file backend (when chosen).
    @ivar ldap: settings of the LDAP backend (when chosen).
    @ivar cache: the cache in front of either.
    """

    backend: DirectoryBackend
    file: FileDirectoryConfig | None
    ldap: LDAPConfig | None
    cache: CacheConfig


@attrs.frozen
class OutboundConfig:
    """
    Outbound delivery: routing, the smart host and its credentials, the MDaemon options.

    @ivar mode: direct, all through the smart host, or direct with the smart host on problems.
    @ivar smarthost: C{host}, C{[host]} (no MX lookup) or either with C{:port}; C{""} if none.
    @ivar smarthost_tls: TLS towards the smart host (verified by default).
    @ivar smarthost_ca_file: CA file to verify the smart host with; L{None}: system store.
    @ivar smarthost_login: the global smart-host AUTH login; C{""} for no AUTH.
    @ivar smarthost_password: its password.
    @ivar smarthost_plaintext_auth: whether AUTH may be sent before TLS.
    @ivar per_account_auth: use the sending account's own smart-host login when it has one.
    @ivar per_account_mailbox_password: with per-account AUTH, send the password the sender
        authenticated with (MDaemon's C{ISPAUTHUsePasswords}); off by default. mdtwist stores
        only password hashes, so this keeps each authenticated sender's plaintext password
        with the message in the (private) spool until it leaves the queue.
    @ivar pop_before_smtp: log in to a POP3 server before each smart-host session.
    @ivar pop_server: C{host:port} of that POP3 server.
    @ivar pop_login: the POP3 login.
    @ivar pop_password: the POP3 password.
    @ivar mx_tls: TLS towards MX hosts (opportunistic by default).
    @ivar mx_port: the TCP port of MX hosts (25; tests point it at a free port).
    @ivar abort_on_rcpt_5xx: a 5xx to any RCPT aborts the transaction (MDaemon option).
    @ivar bounce_if_no_mx_or_a: bounce at once when the domain has no MX and no A record.
    @ivar bounce_on_first_5xx: bounce at the first 5xx from any MX host.
    @ivar dns_servers: C{address:port} of the DNS servers; empty: C{/etc/resolv.conf}.
    @ivar ipv6: whether IPv6 addresses of MX hosts are used.
    @ivar max_connections_per_host: parallel connections to one host.
    @ivar connect_timeout: seconds to wait for a TCP connection.
    """

    mode: Mode = Mode.DIRECT
    smarthost: str = ""
    smarthost_tls: TLSMode = TLSMode.VERIFIED
    smarthost_ca_file: Path | None = None
    smarthost_login: str = ""
    smarthost_password: Secret | None = None
    smarthost_plaintext_auth: bool = False
    per_account_auth: bool = False
    per_account_mailbox_password: bool = False
    pop_before_smtp: bool = False
    pop_server: str = ""
    pop_login: str = ""
    pop_password: Secret | None = None
    mx_tls: TLSMode = TLSMode.OPPORTUNISTIC
    mx_port: int = 25
    abort_on_rcpt_5xx: bool = False
    bounce_if_no_mx_or_a: bool = False
    bounce_on_first_5xx: bool = False
    dns_servers: tuple[str, ...] = ()
    ipv6: bool = True
    max_connections_per_host: int = 5
    connect_timeout: float = 30.0


@attrs.frozen
class ControlConfig:
    """
    The control channel (C{[control]}).

    @ivar socket: the UNIX socket C{mdtwistctl} talks to; L{None}: C{control.sock} in the
        spool directory.
    """

    socket: Path | None = None


@attrs.frozen
class MingerConfig:
    """
    The Minger server (C{[minger]}): answers sharing peers whether an address is hosted here.

    @ivar enable: run the server (in the first process only).
    @ivar interface: the IP address to listen on (UDP).
    @ivar port: the UDP port.
    @ivar secret: the shared secret (at least 16 characters); required unless C{anonymous}.
    @ivar anonymous: also answer queries that carry no credentials.
    @ivar foreign_aliases_active: count local aliases of accounts elsewhere as active.
    @ivar allowed_sources: networks whose queries are answered; L{None}: the addresses of the
        C{[sharing]} peers.
    @ivar hardened_sources: networks that must use the hardened (HMAC-SHA256) form.
    @ivar reply_to_denied: answer status 1 to other sources instead of dropping silently.
    @ivar rate: queries per second answered for one source.
    @ivar burst: queries one source may send at once.
    @ivar global_rate: queries per second answered for all sources together.
    @ivar unknown_budget: "no such address" answers one source may get per C{unknown_window}.
    @ivar unknown_window: seconds over which those answers are counted.
    @ivar unknown_pause: seconds a source that spent its budget gets no answers.
    """

    enable: bool = False
    interface: str = "127.0.0.1"
    port: int = 4069
    secret: Secret | None = None
    anonymous: bool = False
    foreign_aliases_active: bool = False
    allowed_sources: tuple[str, ...] | None = None
    hardened_sources: tuple[str, ...] = ()
    reply_to_denied: bool = False
    rate: float = 50.0
    burst: int = 200
    global_rate: float = 500.0
    unknown_budget: int = 100
    unknown_window: float = 600.0
    unknown_pause: float = 600.0


@attrs.frozen
class SharingPeerConfig:
    """
    One Domain Sharing peer (C{[[sharing.peers]]}).

    @ivar host: its host name or IP address.
    @ivar smtp_port: its SMTP port (where mail for the addresses it hosts goes).
    @ivar minger_port: its Minger (UDP) port.
    @ivar password: the Minger shared secret it expects, or L{None} for anonymous queries.
    @ivar hardened: use the hardened form with it (both sides mdtwist, and configured so).
    """

    host: str
    smtp_port: int = 25
    minger_port: int = 4069
    password: Secret | None = None
    hardened: bool = False

    @property
    def route(self) -> str:
        """
        Its SMTP address as C{host:port} (C{[address]:port} for IPv6).
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.smtp_port}"


@attrs.frozen
class SharingConfig:
    """
    Domain Sharing (C{[sharing]}): the users of a local domain spread over several servers.

    @ivar enable: ask the peers about local-domain addresses that have no account here.
    @ivar peers: the other servers, in order of preference.
    @ivar no_smarthost_on_error: never send Domain Sharing mail to the smart host when
        delivery to the peer fails (MDaemon's option; on by default).
    @ivar timeout: seconds to wait for a Minger reply to one datagram.
    @ivar attempts: datagrams sent at most per Minger lookup.
    @ivar lookups_per_session: the most distinct addresses one SMTP session may have asked
        about at the peers (cache hits do not count); past it such recipients get 451.
    """

    enable: bool = False
    peers: tuple[SharingPeerConfig, ...] = ()
    no_smarthost_on_error: bool = True
    timeout: float = 2.0
    attempts: int = 3
    lookups_per_session: int = 20


@attrs.frozen
class HTTPListenConfig:
    """
    @ivar endpoint: a Twisted server endpoint string (C{ssl:} for HTTPS with its own
        certificate files).
    @ivar tls: serve HTTPS on a C{tcp:} endpoint with the C{[tls]} certificate.
    """

    endpoint: str
    tls: bool = False


@attrs.frozen
class HTTPConfig:
    """
    @ivar listen: the HTTP(S) listeners (client settings, autoconfig, Autodiscover).
    """

    listen: tuple[HTTPListenConfig, ...] = ()


@attrs.frozen
class ClientSettingsConfig:
    """
    Client settings (C{[settings]}): the switches and where the documents live.

    @ivar push_enabled: push client settings to users (off by default).
    @ivar allow_override: users may change pushed settings (off: every screen locked).
    @ivar directory: the directory of the settings documents (TOML files).
    @ivar hostname: the host name clients connect to (C{$FQDN$}); C{""}: C{server.hostname}.
    @ivar imap_host: the IMAP server users read mail on; C{""}: the host name.
    @ivar imap_port: its port.
    @ivar imap_security: its connection security.
    @ivar submission: C{SECURITY:PORT} of each submission service clients should use,
        preferred first; empty: the C{submission} and C{smtps} listeners' ports.
    @ivar profile_certificate: PEM certificate (and chain) that signs Apple profiles.
    @ivar profile_private_key: its private key (mode 0600).
    """

    directory: Path
    push_enabled: bool = False
    allow_override: bool = False
    hostname: str = ""
    imap_host: str = ""
    imap_port: int = 993
    imap_security: Security = Security.IMPLICIT_TLS
    submission: tuple[tuple[Security, int], ...] = ()
    profile_certificate: Path | None = None
    profile_private_key: Path | None = None


@attrs.frozen
class MetricsConfig:
    """
    The Prometheus endpoint (C{[metrics]}): C{GET /metrics} on the C{[[http.listen]]}
    listeners.

    @ivar enable: serve it.
    @ivar allowed_networks: the client networks (CIDR) that may read it; others get 403.
    """

    enable: bool = False
    allowed_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@attrs.frozen
class DequeueSignalConfig:
    """
    One domain's signal to the host that holds its mail (C{[[dequeue.signal]]}; MDaemon's
    Domain Manager > Dequeuing).

    @ivar domain: the domain (names the signal in logs and C{mdtwistctl dequeue run DOMAIN}).
    @ivar host: the host name or IP address to signal.
    @ivar port: its port: 25 for ETRN and QSND, 366 usual for ATRN, 79 for FINGER.
    @ivar enable: whether the signal is sent.
    @ivar text: what is sent (C{ETRN example.com}, C{ATRN a.example,b.example}, C{QSND x}, any
        line); empty: just connect.
    @ivar mode: C{smtp} or C{raw} (see L{SignalMode}).
    @ivar ehlo: send EHLO before the text (SMTP mode).
    @ivar login: the AUTH login; empty for no AUTH (ATRN needs it).
    @ivar password: the AUTH password.
    @ivar starttls: use STARTTLS when the host offers it.
    @ivar allow_plaintext_auth: allow AUTH PLAIN or LOGIN without TLS (CRAM-MD5 never needs
        it).
    @ivar timeout: raw mode: seconds to read before closing.
    """

    domain: str
    host: str
    port: int = 25
    enable: bool = True
    text: str = ""
    mode: SignalMode = SignalMode.SMTP
    ehlo: bool = True
    login: str = ""
    password: Secret | None = None
    starttls: bool = True
    allow_plaintext_auth: bool = False
    timeout: float = 10.0


@attrs.frozen
class DequeueConfig:
    """
    The dequeue signals (C{[dequeue]}).

    @ivar every: signal on every this many queue runs (runs 1, N+1, 2N+1 ...); 0 for every run.
    @ivar signals: one per domain.
    """

    every: int = 0
    signals: tuple[DequeueSignalConfig, ...] = ()


@attrs.frozen
class Config:
    """
    The whole configuration.

    @ivar path: the file it was read from.
    @ivar queue: the retry queue and notice settings (C{[queue]}).
    """

    path: Path
    server: ServerConfig
    smtp: SMTPConfig
    directory: DirectoryConfig
    spool: SpoolConfig
    delivery: DeliveryConfig
    tls: TLSConfig | None = None
    outbound: OutboundConfig = OutboundConfig()
    queue: QueuePolicy = attrs.field(factory=QueuePolicy)
    control: ControlConfig = ControlConfig()
    minger: MingerConfig = MingerConfig()
    sharing: SharingConfig = SharingConfig()
    http: HTTPConfig = HTTPConfig()
    settings: ClientSettingsConfig | None = None
    dequeue: DequeueConfig = DequeueConfig()
    #: The gateway domains we hold mail for (C{[[gateway]]}).
    gateways: tuple[Gateway, ...] = ()
    #: The provider side of dequeuing (C{[provider]}).
    provider: ProviderSettings = attrs.field(factory=ProviderSettings)
    metrics: MetricsConfig = MetricsConfig()

    def control_socket(self) -> Path:
        """
        @return: the control socket: C{control.socket}, or C{control.sock} in the spool
            directory.
        """
        return control_socket(self.control, self.spool.directory)


def config_warnings(config: Config) -> list[str]:
    """
    Find what is allowed but probably not meant: lines for C{--check} to print.

    @param config: a valid configuration.
    @return: one line per warning, each C{file: key: warning: reason}.
    """
    warnings = []
    if config.server.postmaster is None:
        warnings.append(
            f"{config.path}: server.postmaster: warning: not set, so RCPT TO:<postmaster> is"
            " refused, and postmaster@<local domain> too unless an account has that address"
        )
    if not config.provider.odmr_listen:
        for i, gateway in enumerate(config.gateways):
            if gateway.honour_atrn or (gateway.honour_etrn and gateway.etrn_requires_auth):
                warnings.append(
                    f"{config.path}: gateway[{i}]: warning: {gateway.domain} can only log in"
                    " on the ODMR listener, and provider.odmr_listen is not set"
                )
    return warnings


_MISSING: Any = object()


class _Reader:
    """
    Reads typed values out of nested TOML tables and records every problem with its key path.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        self.base = source.parent
        self.problems: list[str] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(f"{self.source}: {key}: {reason}")

    def table(self, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> _Table:
        unknown = sorted(set(data) - allowed)
        for key in unknown:
            self.problem(_join(prefix, key), "unknown key")
        return _Table(self, data, prefix)


class _Table:
    def __init__(self, reader: _Reader, data: Mapping[str, Any], prefix: str) -> None:
        self.reader = reader
        self.data = data
        self.prefix = prefix

    def key(self, name: str) -> str:
        return _join(self.prefix, name)

    def value(self, name: str, kind: type[T], default: T = _MISSING) -> T:
        if name not in self.data:
            if default is _MISSING:
                self.reader.problem(self.key(name), "required value is missing")
            return default
        raw = self.data[name]
        if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
            raw = float(raw)
        if not isinstance(raw, kind) or (kind is not bool and isinstance(raw, bool)):
            self.reader.problem(
                self.key(name),
                f"expected {_TYPE_NAMES.get(kind, kind.__name__)}, got {_kind(raw)}",
            )
            return default
        return raw

    def string(self, name: str, default: str = _MISSING, *, empty_ok: bool = True) -> str:
        result = self.value(name, str, default)
        if result is _MISSING:
            return "" if default is _MISSING and name not in self.data else result
        if not empty_ok and result == "" and name in self.data:
            self.reader.problem(self.key(name), "must not be empty")
        return result

    def positive(self, name: str, kind: type[T], default: T) -> T:
        result = self.value(name, kind, default)
        if name in self.data and result is not default and result <= 0:  # type: ignore[operator]
            self.reader.problem(self.key(name), "must be greater than 0")
            return default
        return result

    def choice(self, name: str, kind: type[E], default: E = _MISSING) -> E:
        text = self.value(name, str, _MISSING if default is _MISSING else default.value)
        if text is _MISSING:
            return default
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            self.reader.problem(self.key(name), f"must be one of {allowed}, got {text!r}")
            return default

    def strings(self, name: str, default: tuple[str, ...] = _MISSING) -> tuple[str, ...]:
        items = self.value(name, list, _MISSING if default is _MISSING else list(default))
        if items is _MISSING:
            return default
        if not all(isinstance(i, str) for i in items):
            self.reader.problem(self.key(name), "expected an array of strings")
            return default if default is not _MISSING else ()
        return tuple(items)

    def path(self, name: str, default: Path | None = _MISSING) -> Path | None:
        fallback: Any = _MISSING if default is _MISSING else ""
        text = self.string(name, fallback, empty_ok=False)
        if text is _MISSING or text == "":
            return default
        return self.reader.base / text

    def subtable(self, name: str, allowed: set[str], required: bool = False) -> _Table | None:
        data = self.value(name, dict, _MISSING if required else {})
        if data is _MISSING:
            return None
        return self.reader.table(data, self.key(name), allowed)

    def secret(self, name: str) -> Secret | None:
        """
        Read a secret given inline as C{name} or in a file named by C{name_file}.
        """
        inline = self.value(name, str, None)
        file_name = self.string(f"{name}_file", "", empty_ok=False)
        if inline is not None and file_name:
            self.reader.problem(self.key(name), f"give either {name} or {name}_file, not both")
            return None
        if inline is not None:
            return Secret(inline)
        if not file_name:
            return None
        return _read_secret_file(
            self.reader, self.key(f"{name}_file"), self.reader.base / file_name
        )


_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


def _kind(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return name
    return type(value).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _read_secret_file(reader: _Reader, key: str, path: Path) -> Secret | None:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            reader.problem(key, f"{path} is readable by group or others (use chmod 600)")
            return None
        value = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reader.problem(key, f"cannot read {path}: {getattr(e, 'strerror', None) or e}")
        return None
    return Secret(value.rstrip("\r\n"))


@implementer(IReactorPluggableNameResolver)
class _ParseOnlyReactor:
    """
    Stands in for the reactor while Twisted parses an endpoint string; parsing never runs it.

    @ivar nameResolver: never used: resolving happens only when an endpoint connects.
    """

    nameResolver: IHostnameResolver | None = None  # noqa: N815 (Twisted's interface)

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:  # noqa: N802
        """
        Refuse: nothing is ever resolved while parsing.

        @param resolver: unused.
        @raise NotImplementedError: always.
        """
        raise NotImplementedError("a parse-only reactor resolves nothing")


def _check_systemd_endpoint(reader: _Reader, key: str, description: str) -> None:
    # Outside systemd (no LISTEN_FDS: "--check", "mdtwistctl check") no socket was handed
    # over, so only the form of a systemd: endpoint can be checked.
    options = dict(part.partition("=")[::2] for part in description.split(":")[1:])
    unknown = sorted(set(options) - {"domain", "index", "name"})
    if unknown or options.get("domain") not in ("INET", "INET6", "UNIX"):
        reader.problem(
            key, "a systemd: endpoint takes domain=INET|INET6|UNIX and index=N or name=NAME"
        )
    elif ("index" in options) == ("name" in options):
        reader.problem(key, "a systemd: endpoint takes either index=N or name=NAME")
    elif "index" in options and not options["index"].isdigit():
        reader.problem(key, "index must be a number (0 for the first socket)")


def _check_endpoint(reader: _Reader, key: str, description: str) -> None:
    if description.startswith("systemd:") and "LISTEN_FDS" not in os.environ:
        _check_systemd_endpoint(reader, key, description)
        return
    try:
        endpoint = serverFromString(_ParseOnlyReactor(), description)
    except Exception as e:  # Twisted's parsers raise many kinds; each is a config problem.
        reader.problem(key, f"not a valid server endpoint: {e or type(e).__name__}")
        return
    if not isinstance(endpoint, _SHAREABLE_ENDPOINTS):
        return  # not TCP (unix:, systemd:): nothing more to check here
    # Twisted keeps what a TCP endpoint listens on in these attributes and nowhere public.
    port: int = endpoint._port
    interface: str = endpoint._interface
    if not 0 <= port <= 65535:
        reader.problem(key, f"port {port} is out of range (0 to 65535)")
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            reader.problem(key, f"interface {interface} is not an IP address")


def _check_client_endpoint(reader: _Reader, key: str, description: str) -> None:
    try:
        clientFromString(_ParseOnlyReactor(), description)
    except Exception as e:  # Twisted's parsers raise many kinds; each is a config problem.
        reader.problem(key, f"not a valid client endpoint: {e or type(e).__name__}")


#: The most processes C{server.processes} allows: one spool shard each, and a queue id has room
#: for 256 shards.
MAX_PROCESSES = 64


def _server(reader: _Reader, top: _Table) -> ServerConfig:
    table = top.subtable(
        "server",
        {"hostname", "processes", "postmaster", "drain_timeout", "pin_cpus"},
        required=True,
    )
    if table is None:
        return ServerConfig(hostname="")
    processes = table.positive("processes", int, 1)
    if processes > MAX_PROCESSES:
        reader.problem(table.key("processes"), f"must be at most {MAX_PROCESSES}")
    postmaster: str | None = table.string("postmaster", "") or None
    if postmaster is not None and parse_address(postmaster) is None:
        reader.problem(table.key("postmaster"), f"{postmaster!r} is not a mail address")
    elif table.data.get("postmaster") == "":
        reader.problem(table.key("postmaster"), "must not be empty")
    return ServerConfig(
        hostname=table.string("hostname", empty_ok=False),
        processes=processes,
        postmaster=postmaster,
        drain_timeout=table.positive("drain_timeout", float, ServerConfig("").drain_timeout),
        pin_cpus=table.value("pin_cpus", bool, ServerConfig("").pin_cpus),
    )


_SMTP_LIMITS = {
    "max_message_size": int,
    "max_recipients": int,
    "max_errors": int,
    "max_sessions_per_ip": int,
    "max_sessions": int,
    "max_auth_failures": int,
    "auth_failure_window": float,
    "command_timeout": float,
    "data_timeout": float,
    "hop_limit": int,
    "max_command_line": int,
    "max_text_line": int,
}


def _smtp(reader: _Reader, top: _Table) -> SMTPConfig:
    table = top.subtable(
        "smtp",
        {
            "listen",
            "trusted_networks",
            "allow_plaintext_auth",
            "forbid_unauth_pipelining",
            "dsn",
            "reverse_lookup",
            *_SMTP_LIMITS,
        },
    )
    assert table is not None
    raw = table.value("listen", list, [])
    listeners: list[ListenConfig] = []
    for i, item in enumerate(raw):
        key = f"smtp.listen[{i}]"
        if not isinstance(item, dict):
            reader.problem(key, f"expected a table, got {_kind(item)}")
            continue
        entry = reader.table(item, key, {"endpoint", "mode", "sender_login_match"})
        endpoint = entry.string("endpoint", empty_ok=False)
        mode = entry.choice("mode", ListenerMode)
        if endpoint:
            _check_endpoint(reader, entry.key("endpoint"), endpoint)
        login_match = entry.value("sender_login_match", bool, mode is not ListenerMode.MX)
        listeners.append(
            ListenConfig(endpoint=endpoint, mode=mode, sender_login_match=login_match)
        )
    networks = table.strings("trusted_networks", ())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            reader.problem(table.key("trusted_networks"), str(e))
    defaults = SMTPConfig(listen=())
    limits = {
        name: table.positive(name, kind, getattr(defaults, name))
        for name, kind in _SMTP_LIMITS.items()
    }
    if limits["max_command_line"] < 512:
        reader.problem(table.key("max_command_line"), "must be at least 512 (RFC 5321 4.5.3.1.4)")
    if limits["max_text_line"] < 1000:
        reader.problem(table.key("max_text_line"), "must be at least 1000 (RFC 5321 4.5.3.1.6)")
    return SMTPConfig(
        listen=tuple(listeners),
        trusted_networks=networks,
        allow_plaintext_auth=table.value("allow_plaintext_auth", bool, False),
        forbid_unauth_pipelining=table.value("forbid_unauth_pipelining", bool, True),
        dsn=table.choice("dsn", DSNRequests, DSNRequests.LIMITED),
        reverse_lookup=table.value("reverse_lookup", bool, False),
        **limits,
    )


def _tls(reader: _Reader, top: _Table) -> TLSConfig | None:
    table = top.subtable("tls", {"certificate", "private_key"})
    assert table is not None
    if not table.data:
        return None
    certificate = table.path("certificate")
    private_key = table.path("private_key")
    if certificate is None or private_key is None:
        return None
    if not os.access(certificate, os.R_OK):
        reader.problem(table.key("certificate"), f"cannot read {certificate}")
    _read_secret_file(reader, table.key("private_key"), private_key)
    return TLSConfig(certificate=certificate, private_key=private_key)


def _spool(reader: _Reader, top: _Table) -> SpoolConfig:
    table = top.subtable("spool", {"directory", "inline_limit"}, required=True)
    if table is None:
        return SpoolConfig(directory=Path())
    directory = table.path("directory") or Path()
    return SpoolConfig(
        directory=directory,
        inline_limit=table.positive("inline_limit", int, SpoolConfig(Path()).inline_limit),
    )


#: The most Maildir worker processes C{delivery.maildir_processes} allows per server process.
MAX_MAILDIR_PROCESSES = 16

#: The most recipients C{delivery.direct_max_recipients} allows: the reply to DATA waits for
#: every copy.
MAX_DIRECT_RECIPIENTS = 100


def _delivery(reader: _Reader, top: _Table) -> DeliveryConfig:
    table = top.subtable(
        "delivery",
        {
            "local",
            "maildir_root",
            "lmtp_endpoint",
            "concurrency",
            "run_interval",
            "maildir_processes",
            "maildir_process_idle",
            "direct_max_recipients",
        },
    )
    assert table is not None
    defaults = DeliveryConfig()
    local = table.choice("local", LocalDelivery, defaults.local)
    maildir_root = table.path("maildir_root", None)
    lmtp_endpoint = table.string("lmtp_endpoint", "")
    if local is LocalDelivery.MAILDIR and maildir_root is None:
        reader.problem(table.key("maildir_root"), "required when local = 'maildir'")
    if local is LocalDelivery.LMTP:
        if not lmtp_endpoint:
            reader.problem(table.key("lmtp_endpoint"), "required when local = 'lmtp'")
        else:
            _check_client_endpoint(reader, table.key("lmtp_endpoint"), lmtp_endpoint)
    workers = table.value("maildir_processes", int, defaults.maildir_processes)
    if not 0 <= workers <= MAX_MAILDIR_PROCESSES:
        reader.problem(
            table.key("maildir_processes"), f"must be from 0 to {MAX_MAILDIR_PROCESSES}"
        )
        workers = defaults.maildir_processes
    direct = table.value("direct_max_recipients", int, defaults.direct_max_recipients)
    if not 0 <= direct <= MAX_DIRECT_RECIPIENTS:
        reader.problem(
            table.key("direct_max_recipients"), f"must be from 0 to {MAX_DIRECT_RECIPIENTS}"
        )
        direct = defaults.direct_max_recipients
    return DeliveryConfig(
        local=local,
        maildir_root=maildir_root,
        lmtp_endpoint=lmtp_endpoint,
        concurrency=table.positive("concurrency", int, defaults.concurrency),
        run_interval=table.positive("run_interval", float, defaults.run_interval),
        maildir_processes=workers,
        maildir_process_idle=table.positive(
            "maildir_process_idle", float, defaults.maildir_process_idle
        ),
        direct_max_recipients=direct,
    )


def _domains(table: _Table, name: str) -> frozenset[str]:
    return frozenset(d.lower().rstrip(".") for d in table.strings(name, ()))


def _ldap(reader: _Reader, table: _Table) -> LDAPConfig:
    url = table.string("url", empty_ok=False)
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            reader.problem(
                table.key("url"), "must look like ldap://host:port or ldaps://host:port"
            )
        else:
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as e:
                reader.problem(table.key("url"), str(e))
    defaults = LDAPConfig(url="", base_dn="", domains=frozenset())
    domains = _domains(table, "domains")
    if "domains" in table.data and not domains:
        reader.problem(table.key("domains"), "must list at least one local domain")
    elif "domains" not in table.data:
        reader.problem(table.key("domains"), "required value is missing")
    attr_table = table.subtable("attributes", set(attrs.fields_dict(LDAPAttributes)))
    attributes = LDAPAttributes(
        **{
            name: attr_table.string(name, default) if attr_table else default
            for name, default in attrs.asdict(LDAPAttributes()).items()
        }
    )
    config = LDAPConfig(
        url=url,
        base_dn=table.string("base_dn", empty_ok=False),
        domains=domains,
        start_tls=table.value("start_tls", bool, False),
        ca_file=table.path("ca_file", None),
        bind_dn=table.string("bind_dn", ""),
        bind_password=table.secret("bind_password"),
        filter=table.string("filter", defaults.filter, empty_ok=False),
        auth_filter=table.string("auth_filter", defaults.auth_filter, empty_ok=False),
        auth_method=table.choice("auth_method", LDAPAuthMethod, defaults.auth_method),
        disabled_values=frozenset(
            v.lower() for v in table.strings("disabled_values", tuple(defaults.disabled_values))
        ),
        connect_timeout=table.positive("connect_timeout", float, defaults.connect_timeout),
        receive_timeout=table.positive("receive_timeout", float, defaults.receive_timeout),
        pool_size=table.positive("pool_size", int, defaults.pool_size),
        attributes=attributes,
    )
    for name, placeholder in (("filter", "{address}"), ("auth_filter", "{login}")):
        if placeholder not in getattr(config, name):
            reader.problem(table.key(name), f"must contain {placeholder}")
    if config.auth_method is LDAPAuthMethod.COMPARE and not attributes.password:
        reader.problem(
            table.key("auth_method"),
            "'compare' needs the password attribute (attributes.password must not be empty)",
        )
    if url.startswith("ldaps:") and config.start_tls:
        reader.problem(table.key("start_tls"), "ldaps:// is already TLS; drop start_tls")
    return config


_LDAP_KEYS = {
    "url",
    "base_dn",
    "domains",
    "start_tls",
    "ca_file",
    "bind_dn",
    "bind_password",
    "bind_password_file",
    "filter",
    "auth_filter",
    "auth_method",
    "disabled_values",
    "connect_timeout",
    "receive_timeout",
    "pool_size",
    "attributes",
}


def _directory(reader: _Reader, top: _Table) -> DirectoryConfig:
    table = top.subtable("directory", {"backend", "file", "ldap", "cache"}, required=True)
    if table is None:
        return DirectoryConfig(DirectoryBackend.FILE, None, None, CacheConfig())
    backend = table.choice("backend", DirectoryBackend)
    file_config = ldap_config = None
    file_table = table.subtable("file", {"path", "check_interval"}, required=False)
    ldap_table = table.subtable("ldap", _LDAP_KEYS, required=False)
    if backend is DirectoryBackend.FILE and file_table is not None:
        path = file_table.path("path")
        interval = file_table.positive("check_interval", float, 1.0)
        if path is not None:
            file_config = FileDirectoryConfig(path=path, check_interval=interval)
    elif backend is DirectoryBackend.LDAP:
        if "ldap" not in table.data:
            reader.problem(
                table.key("ldap"), "backend is 'ldap' but the [directory.ldap] table is missing"
            )
        elif ldap_table is not None:
            ldap_config = _ldap(reader, ldap_table)
    cache_table = table.subtable("cache", {"ttl", "negative_ttl", "size"})
    base = CacheConfig()
    cache = base
    if cache_table is not None:
        cache = CacheConfig(
            ttl=cache_table.value("ttl", float, base.ttl),
            negative_ttl=cache_table.value("negative_ttl", float, base.negative_ttl),
            size=cache_table.positive("size", int, base.size),
        )
        for name in ("ttl", "negative_ttl"):
            if getattr(cache, name) < 0:
                reader.problem(cache_table.key(name), "must not be negative")
    return DirectoryConfig(backend=backend, file=file_config, ldap=ldap_config, cache=cache)


def parse_host_port(text: str) -> tuple[str, int] | None:
    """
    Parse C{host:port} (C{[address]:port} for IPv6).

    @param text: the setting.
    @return: host (without brackets) and port, or L{None} when it is not of that form.
    """
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def _outbound(reader: _Reader, top: _Table) -> OutboundConfig:
    defaults = OutboundConfig()
    table = top.subtable(
        "outbound",
        set(attrs.fields_dict(OutboundConfig)) | {"smarthost_password_file", "pop_password_file"},
    )
    assert table is not None
    flags = {
        name: table.value(name, bool, getattr(defaults, name))
        for name in (
            "smarthost_plaintext_auth",
            "per_account_auth",
            "per_account_mailbox_password",
            "pop_before_smtp",
            "abort_on_rcpt_5xx",
            "bounce_if_no_mx_or_a",
            "bounce_on_first_5xx",
            "ipv6",
        )
    }
    config = OutboundConfig(
        mode=table.choice("mode", Mode, defaults.mode),
        smarthost=table.string("smarthost", ""),
        smarthost_tls=table.choice("smarthost_tls", TLSMode, defaults.smarthost_tls),
        smarthost_ca_file=table.path("smarthost_ca_file", None),
        smarthost_login=table.string("smarthost_login", ""),
        smarthost_password=table.secret("smarthost_password"),
        pop_server=table.string("pop_server", ""),
        pop_login=table.string("pop_login", ""),
        pop_password=table.secret("pop_password"),
        mx_tls=table.choice("mx_tls", TLSMode, defaults.mx_tls),
        mx_port=table.positive("mx_port", int, defaults.mx_port),
        dns_servers=table.strings("dns_servers", ()),
        max_connections_per_host=table.positive(
            "max_connections_per_host", int, defaults.max_connections_per_host
        ),
        connect_timeout=table.positive("connect_timeout", float, defaults.connect_timeout),
        **flags,
    )
    if config.mode is not Mode.DIRECT and not config.smarthost:
        reader.problem(table.key("smarthost"), f"required when mode = '{config.mode.value}'")
    if config.smarthost:
        try:
            parse_host_spec(config.smarthost)
        except HostSpecError as e:
            reader.problem(table.key("smarthost"), str(e))
    # A secret given in a file that could not be used has its own problem line already.
    given = {
        name for name in ("smarthost_password", "pop_password") if f"{name}_file" in table.data
    }
    if (
        config.smarthost_login
        and config.smarthost_password is None
        and "smarthost_password" not in given
    ):
        reader.problem(table.key("smarthost_password"), "required with smarthost_login")
    if config.pop_before_smtp:
        if parse_host_port(config.pop_server) is None:
            reader.problem(table.key("pop_server"), "must be host:port with pop_before_smtp")
        if not config.pop_login or (config.pop_password is None and "pop_password" not in given):
            reader.problem(table.key("pop_login"), "pop_login and pop_password are required")
    if config.per_account_mailbox_password and not config.per_account_auth:
        reader.problem(
            table.key("per_account_mailbox_password"), "only has a meaning with per_account_auth"
        )
    if config.mx_tls is TLSMode.VERIFIED:
        reader.problem(
            table.key("mx_tls"),
            "MX hosts are not verified (no DANE/MTA-STS yet): use 'opportunistic' or 'none'",
        )
    for server in config.dns_servers:
        if parse_host_port(server) is None:
            reader.problem(table.key("dns_servers"), f"{server!r} is not address:port")
    return config


_DAY = 86400.0
_QUEUE_SECONDS = (
    "remote_residency",
    "remote_interval",
    "minimal_backoff",
    "maximal_backoff",
    "delay_after_temp_error",
)
_QUEUE_FLAGS = ("delay_notice", "delivered_after_delay_notice", "bad_queue_undeliverable_notices")
_QUEUE_TEXTS = ("failure_subject", "delay_subject", "success_subject")


def _queue(reader: _Reader, top: _Table, hop_limit: int) -> QueuePolicy:
    defaults = QueuePolicy()
    keys = {*_QUEUE_SECONDS, *_QUEUE_FLAGS, *_QUEUE_TEXTS, "lifetime_days", "notice_lifetime_days"}
    table = top.subtable("queue", keys)
    assert table is not None
    values: dict[str, Any] = {
        name: table.value(name, float, getattr(defaults, name)) for name in _QUEUE_SECONDS
    }
    values.update(
        {name: table.value(name, bool, getattr(defaults, name)) for name in _QUEUE_FLAGS}
    )
    for name in ("lifetime", "notice_lifetime"):
        values[name] = table.value(f"{name}_days", float, getattr(defaults, name) / _DAY) * _DAY
    texts = attrs.evolve(
        defaults.texts,
        **{
            name: table.string(name, getattr(defaults.texts, name), empty_ok=False)
            for name in _QUEUE_TEXTS
        },
    )
    try:
        return QueuePolicy(**values, hop_limit=hop_limit, texts=texts)
    except ValueError as e:
        reader.problem("queue", str(e))
        return defaults


def _networks(reader: _Reader, table: _Table, name: str) -> tuple[str, ...]:
    networks = table.strings(name, ())
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            reader.problem(table.key(name), str(e))
    return networks


#: The shortest Minger secret accepted (MDaemon's rule).
MIN_MINGER_SECRET = 16


def _minger(reader: _Reader, top: _Table, sharing: SharingConfig) -> MingerConfig:
    defaults = MingerConfig()
    table = top.subtable("minger", set(attrs.fields_dict(MingerConfig)) | {"secret_file"})
    assert table is not None
    allowed = None
    if "allowed_sources" in table.data:
        allowed = _networks(reader, table, "allowed_sources")
    config = MingerConfig(
        enable=table.value("enable", bool, False),
        interface=table.string("interface", defaults.interface, empty_ok=False),
        port=table.positive("port", int, defaults.port),
        secret=table.secret("secret"),
        anonymous=table.value("anonymous", bool, False),
        foreign_aliases_active=table.value("foreign_aliases_active", bool, False),
        allowed_sources=allowed,
        hardened_sources=_networks(reader, table, "hardened_sources"),
        reply_to_denied=table.value("reply_to_denied", bool, False),
        rate=table.positive("rate", float, defaults.rate),
        burst=table.positive("burst", int, defaults.burst),
        global_rate=table.positive("global_rate", float, defaults.global_rate),
        unknown_budget=table.positive("unknown_budget", int, defaults.unknown_budget),
        unknown_window=table.positive("unknown_window", float, defaults.unknown_window),
        unknown_pause=table.positive("unknown_pause", float, defaults.unknown_pause),
    )
    secret_key = table.key("secret_file" if "secret_file" in table.data else "secret")
    if config.port > 65535:
        reader.problem(table.key("port"), "must be at most 65535")
    try:
        ipaddress.ip_address(config.interface)
    except ValueError:
        reader.problem(table.key("interface"), "must be an IP address (such as 127.0.0.1)")
    if config.secret is not None:
        text = config.secret.reveal()
        if len(text) < MIN_MINGER_SECRET:
            reader.problem(secret_key, f"must be at least {MIN_MINGER_SECRET} characters")
        elif not all("!" <= c <= "~" for c in text):
            reader.problem(secret_key, "must be printable ASCII without spaces")
    if not config.enable:
        return config
    if config.secret is None and not config.anonymous:
        reader.problem(table.key("secret"), "required unless anonymous = true")
    if config.hardened_sources and config.secret is None:
        reader.problem(table.key("hardened_sources"), "the hardened form needs a secret")
    if config.allowed_sources is None and not sharing.peers:
        reader.problem(
            table.key("allowed_sources"),
            "required when [sharing] lists no peers (the default allows only the peers)",
        )
    return config


def _sharing_peer(reader: _Reader, key: str, item: object) -> SharingPeerConfig | None:
    if not isinstance(item, dict):
        reader.problem(key, f"expected a table, got {_kind(item)}")
        return None
    entry = reader.table(
        item, key, {"host", "minger_port", "password", "password_file", "hardened"}
    )
    text = entry.string("host", empty_ok=False)
    host, port = text, 25
    if text.startswith("[") or text.count(":") == 1:
        parsed = parse_host_port(text)
        if parsed is None:
            reader.problem(entry.key("host"), "must be host or host:port ([address]:port)")
            return None
        host, port = parsed
    if not host or any(c.isspace() for c in host):
        reader.problem(entry.key("host"), "must be host or host:port ([address]:port)")
        return None
    peer = SharingPeerConfig(
        host=host,
        smtp_port=port,
        minger_port=entry.positive("minger_port", int, 4069),
        password=entry.secret("password"),
        hardened=entry.value("hardened", bool, False),
    )
    if peer.minger_port > 65535:
        reader.problem(entry.key("minger_port"), "must be at most 65535")
    if peer.hardened and peer.password is None:
        reader.problem(entry.key("hardened"), "the hardened form needs a password")
    return peer


def _sharing(reader: _Reader, top: _Table) -> SharingConfig:
    defaults = SharingConfig()
    table = top.subtable("sharing", set(attrs.fields_dict(SharingConfig)))
    assert table is not None
    peers = []
    raw = table.value("peers", list, [])
    for i, item in enumerate(raw):
        peer = _sharing_peer(reader, f"{table.key('peers')}[{i}]", item)
        if peer is not None:
            peers.append(peer)
    config = SharingConfig(
        enable=table.value("enable", bool, False),
        peers=tuple(peers),
        no_smarthost_on_error=table.value("no_smarthost_on_error", bool, True),
        timeout=table.positive("timeout", float, defaults.timeout),
        attempts=table.positive("attempts", int, defaults.attempts),
        lookups_per_session=table.positive(
            "lookups_per_session", int, defaults.lookups_per_session
        ),
    )
    if config.enable and not raw:
        reader.problem(table.key("peers"), "list at least one peer when enable = true")
    return config


def parse_config(data: Mapping[str, Any], source: Path) -> Config:
    """
    Turn parsed TOML into a L{Config}.

    @param data: the TOML document as C{tomllib} returns it.
    @param source: the file it came from (named in problems; base of relative paths).
    @return: the configuration.
    @raise ConfigError: with every problem found.
    """
    reader = _Reader(source)
    top = reader.table(
        data,
        "",
        {
            "server",
            "smtp",
            "tls",
            "directory",
            "spool",
            "delivery",
            "outbound",
            "queue",
            "control",
            "minger",
            "sharing",
            "http",
            "settings",
            "dequeue",
            "gateway",
            "provider",
            "metrics",
        },
    )
    sharing = _sharing(reader, top)
    smtp = _smtp(reader, top)
    config = Config(
        path=source,
        server=_server(reader, top),
        smtp=smtp,
        tls=_tls(reader, top),
        directory=_directory(reader, top),
        spool=_spool(reader, top),
        delivery=_delivery(reader, top),
        outbound=_outbound(reader, top),
        queue=_queue(reader, top, smtp.hop_limit),
        control=_control(reader, top),
        minger=_minger(reader, top, sharing),
        sharing=sharing,
        http=_http(reader, top),
        settings=_settings(reader, top),
        dequeue=_dequeue(reader, top),
        gateways=_gateways(reader, top),
        provider=_provider(reader, top),
        metrics=_metrics(reader, top),
    )
    if config.metrics.enable and not config.http.listen:
        reader.problem("metrics.enable", "needs an [[http.listen]] listener to serve /metrics")
    if config.tls is None:
        for i, listen in enumerate(config.http.listen):
            if listen.tls:
                reader.problem(f"http.listen[{i}].tls", "needs the [tls] certificate")
    _check_shared_listeners(reader, config)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def _metrics(reader: _Reader, top: _Table) -> MetricsConfig:
    defaults = MetricsConfig()
    table = top.subtable("metrics", set(attrs.fields_dict(MetricsConfig)))
    assert table is not None
    networks = table.strings("allowed_networks", defaults.allowed_networks)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as e:
            reader.problem(table.key("allowed_networks"), str(e))
    return MetricsConfig(
        enable=table.value("enable", bool, defaults.enable), allowed_networks=networks
    )


def _dequeue_signal(reader: _Reader, key: str, item: object) -> DequeueSignalConfig | None:
    if not isinstance(item, dict):
        reader.problem(key, f"expected a table, got {_kind(item)}")
        return None
    entry = reader.table(
        item, key, set(attrs.fields_dict(DequeueSignalConfig)) | {"password_file"}
    )
    defaults = DequeueSignalConfig(domain="", host="")
    signal = DequeueSignalConfig(
        domain=entry.string("domain", empty_ok=False).rstrip(".").lower(),
        host=entry.string("host", empty_ok=False),
        port=entry.positive("port", int, defaults.port),
        enable=entry.value("enable", bool, True),
        text=entry.string("text", ""),
        mode=entry.choice("mode", SignalMode, SignalMode.SMTP),
        ehlo=entry.value("ehlo", bool, True),
        login=entry.string("login", ""),
        password=entry.secret("password"),
        starttls=entry.value("starttls", bool, True),
        allow_plaintext_auth=entry.value("allow_plaintext_auth", bool, False),
        timeout=entry.positive("timeout", float, defaults.timeout),
    )
    if signal.port > 65535:
        reader.problem(entry.key("port"), "must be at most 65535")
    if any(c.isspace() for c in signal.host):
        reader.problem(entry.key("host"), "must be a host name or an IP address")
    if signal.text != signal.text.strip() or not all(
        c.isprintable() and c.isascii() for c in signal.text
    ):
        reader.problem(entry.key("text"), "must be one line of printable ASCII, no outer spaces")
        return signal
    try:
        domains = atrn_domains(signal.text)
    except ValueError as e:
        reader.problem(entry.key("text"), str(e))
        return signal
    if signal.mode is SignalMode.RAW:
        for name in ("ehlo", "login", "password", "password_file"):
            if name in entry.data and (name != "ehlo" or signal.ehlo):
                reader.problem(entry.key(name), 'has no meaning with mode = "raw"')
        if domains is not None:
            reader.problem(entry.key("mode"), 'ATRN needs mode = "smtp"')
        return signal
    if bool(signal.login) != (signal.password is not None):
        reader.problem(entry.key("login"), "give both login and password (or password_file)")
    if domains is not None and not signal.login:
        reader.problem(entry.key("login"), "ATRN needs AUTH: set login and password")
    if signal.login and not signal.ehlo:
        reader.problem(entry.key("ehlo"), "AUTH needs EHLO: set ehlo = true or drop the login")
    return signal


def _dequeue(reader: _Reader, top: _Table) -> DequeueConfig:
    table = top.subtable("dequeue", {"every", "signal"})
    assert table is not None
    every = table.value("every", int, 0)
    if every < 0:
        reader.problem(table.key("every"), "must be 0 (every run) or more")
        every = 0
    signals: list[DequeueSignalConfig] = []
    seen: set[str] = set()
    for i, item in enumerate(table.value("signal", list, [])):
        key = f"{table.key('signal')}[{i}]"
        signal = _dequeue_signal(reader, key, item)
        if signal is None:
            continue
        if signal.domain and signal.domain in seen:
            reader.problem(f"{key}.domain", f"{signal.domain!r} has a signal already")
        seen.add(signal.domain)
        signals.append(signal)
    return DequeueConfig(every=every, signals=tuple(signals))


def _http(reader: _Reader, top: _Table) -> HTTPConfig:
    table = top.subtable("http", {"listen"})
    assert table is not None
    listeners = []
    for i, item in enumerate(table.value("listen", list, [])):
        key = f"http.listen[{i}]"
        if not isinstance(item, dict):
            reader.problem(key, f"expected a table, got {_kind(item)}")
            continue
        entry = reader.table(item, key, {"endpoint", "tls"})
        endpoint = entry.string("endpoint", empty_ok=False)
        tls = entry.value("tls", bool, False)
        if endpoint:
            _check_endpoint(reader, entry.key("endpoint"), endpoint)
            if tls and endpoint.startswith("ssl:"):
                reader.problem(entry.key("tls"), "an ssl: endpoint is TLS already; drop tls")
        listeners.append(HTTPListenConfig(endpoint=endpoint, tls=tls))
    return HTTPConfig(listen=tuple(listeners))


def _service(reader: _Reader, key: str, text: str) -> tuple[Security, int] | None:
    security, colon, port = text.rpartition(":")
    try:
        result = Security(security), int(port)
    except ValueError:
        result = None
    if not colon or result is None or not 0 < result[1] < 65536:
        allowed = ", ".join(s.value for s in Security)
        reader.problem(key, f"{text!r} is not SECURITY:PORT (SECURITY one of {allowed})")
        return None
    return result


def _settings(reader: _Reader, top: _Table) -> ClientSettingsConfig:
    keys = set(attrs.fields_dict(ClientSettingsConfig))
    table = top.subtable("settings", keys)
    assert table is not None
    defaults = ClientSettingsConfig(directory=reader.base / "client-settings")
    submission = []
    for text in table.strings("submission", ()):
        service = _service(reader, table.key("submission"), text)
        if service is not None:
            submission.append(service)
    port = table.positive("imap_port", int, defaults.imap_port)
    if port > 65535:
        reader.problem(table.key("imap_port"), "must be at most 65535")
    certificate = table.path("profile_certificate", None)
    private_key = table.path("profile_private_key", None)
    if (certificate is None) != (private_key is None):
        reader.problem(
            table.key("profile_certificate"), "give profile_certificate and profile_private_key"
        )
    if certificate is not None and not os.access(certificate, os.R_OK):
        reader.problem(table.key("profile_certificate"), f"cannot read {certificate}")
    if private_key is not None:
        _read_secret_file(reader, table.key("profile_private_key"), private_key)
    return ClientSettingsConfig(
        profile_certificate=certificate,
        profile_private_key=private_key,
        directory=table.path("directory", defaults.directory) or defaults.directory,
        push_enabled=table.value("push_enabled", bool, False),
        allow_override=table.value("allow_override", bool, False),
        hostname=table.string("hostname", ""),
        imap_host=table.string("imap_host", ""),
        imap_port=port,
        imap_security=table.choice("imap_security", Security, defaults.imap_security),
        submission=tuple(submission),
    )


#: The endpoints whose sockets several processes can share (C{SO_REUSEPORT} needs TCP).
_SHAREABLE_ENDPOINTS = (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint)


def _check_shared_listeners(reader: _Reader, config: Config) -> None:
    # Several processes share a listener through SO_REUSEPORT sockets, which needs TCP.
    if config.server.processes == 1:
        return
    for i, listen in enumerate(config.smtp.listen):
        try:
            endpoint = serverFromString(_ParseOnlyReactor(), listen.endpoint)
        except Exception:
            continue  # already reported by _check_endpoint
        if not isinstance(endpoint, _SHAREABLE_ENDPOINTS):
            reader.problem(
                f"smtp.listen[{i}].endpoint",
                "with server.processes above 1, use a tcp:, tcp6: or ssl: endpoint",
            )


#: The longest path a UNIX socket may have on Linux (C{sun_path} holds 108 bytes with a NUL).
MAX_SOCKET_PATH = 107


def control_socket(control: ControlConfig, spool: Path) -> Path:
    """
    Where the control socket is.

    @param control: the C{[control]} settings.
    @param spool: the spool directory.
    @return: C{control.socket}, or C{control.sock} in the spool directory.
    """
    return control.socket if control.socket is not None else spool / "control.sock"


def _control(reader: _Reader, top: _Table) -> ControlConfig:
    table = top.subtable("control", {"socket"})
    assert table is not None
    socket = table.path("socket", None)
    if socket is not None and len(os.fsencode(socket)) > MAX_SOCKET_PATH:
        reader.problem(
            table.key("socket"), f"{socket} is longer than {MAX_SOCKET_PATH} bytes (UNIX socket)"
        )
    return ControlConfig(socket=socket)


#: The configuration files tried, in this order, when none is named (C{twistd mdtwist} and
#: C{mdtwistctl} without C{--config}).
DEFAULT_CONFIG_FILES = (Path("etc/mdtwist.toml"), Path("/etc/mdtwist/mdtwist.toml"))


def default_config_file(candidates: tuple[Path, ...] = DEFAULT_CONFIG_FILES) -> Path:
    """
    Find the configuration file to use when none is named.

    @param candidates: the files tried, in order.
    @return: the first that exists, or the first of all (so that the error names it).
    """
    for path in candidates:
        if path.is_file():
            return path
    return candidates[0]


def load_locations(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """
    Read only where the spool and the control socket are (for C{mdtwistctl}, which needs no
    more and should work while other parts of the file are being edited).

    @param path: the TOML file.
    @return: the spool directory and the control socket.
    @raise ConfigError: when the file cannot be read, or those keys are bad or missing.
    """
    source = Path(path)
    data = _load_toml(source, None)
    reader = _Reader(source)
    top = _Table(reader, data, "")
    spool_table = top.value("spool", dict, {})
    spool = _Table(reader, spool_table, "spool").path("directory")
    control = _control(reader, top)
    if reader.problems or spool is None:
        raise ConfigError(reader.problems)
    return spool, control_socket(control, spool)


def load_config(
    path: str | os.PathLike[str], *, loader: Callable[[Path], bytes] | None = None
) -> Config:
    """
    Read and check a configuration file.

    @param path: the TOML file.
    @param loader: reads the file's bytes (for tests); by default the file is read from disk.
    @return: the configuration.
    @raise ConfigError: when the file cannot be read, is not TOML, or has problems.
    """
    source = Path(path)
    return parse_config(_load_toml(source, loader), source)


def _load_toml(source: Path, loader: Callable[[Path], bytes] | None) -> dict[str, Any]:
    try:
        raw = loader(source) if loader is not None else source.read_bytes()
        return tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise ConfigError([f"{source}: cannot read: {e.strerror or e}"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError([f"{source}: not valid TOML: {e}"]) from None


_GATEWAY_KEYS = {
    "domain",
    "login",
    "password",
    "password_file",
    "honour_etrn",
    "honour_atrn",
    "etrn_requires_auth",
    "auth_any_address",
    "allowed_networks",
    "one_atrn_session",
    "etrn_deliver_to",
    "etrn_port",
    "hold_days",
}


def _gateway(reader: _Reader, key: str, item: object) -> Gateway | None:
    if not isinstance(item, dict):
        reader.problem(key, f"expected a table, got {_kind(item)}")
        return None
    entry = reader.table(item, key, _GATEWAY_KEYS)
    text = entry.string("domain", empty_ok=False)
    domain = normalise_domain(text) if text else None
    if text and domain is None:
        reader.problem(entry.key("domain"), f"{text!r} is not a domain name")
    login = entry.string("login", domain or "", empty_ok=False).lower()
    password = entry.secret("password")
    etrn_auth = entry.value("etrn_requires_auth", bool, True)
    honour_atrn = entry.value("honour_atrn", bool, True)
    if password is None and (honour_atrn or etrn_auth):
        reader.problem(
            entry.key("password"),
            "required (or password_file) while honour_atrn or etrn_requires_auth is on",
        )
    networks: list[Network] = []
    for net in entry.strings("allowed_networks", ()):
        try:
            networks.append(ipaddress.ip_network(net, strict=False))
        except ValueError:
            reader.problem(entry.key("allowed_networks"), f"{net!r} is not a network")
    deliver_to = entry.string("etrn_deliver_to", "mx", empty_ok=False)
    host = ""
    if deliver_to in ("mx", "requester"):
        target = EtrnTarget(deliver_to)
    else:
        target, host = EtrnTarget.HOST, deliver_to
        try:
            parse_host_spec(host)
        except HostSpecError as e:
            reader.problem(
                entry.key("etrn_deliver_to"), f"must be 'mx', 'requester' or a host: {e}"
            )
    if target is EtrnTarget.REQUESTER and not etrn_auth:
        reader.problem(
            entry.key("etrn_deliver_to"),
            "'requester' needs etrn_requires_auth = true (else anyone could take the mail)",
        )
    port = entry.positive("etrn_port", int, 25)
    if port > 65535:
        reader.problem(entry.key("etrn_port"), "must be at most 65535")
    days = entry.positive("hold_days", float, 7.0)
    if domain is None:
        return None
    return Gateway(
        domain=domain,
        login=login or domain,
        password=password,
        honour_etrn=entry.value("honour_etrn", bool, True),
        honour_atrn=honour_atrn,
        etrn_requires_auth=etrn_auth,
        auth_any_address=entry.value("auth_any_address", bool, True),
        allowed_networks=tuple(networks),
        one_atrn_session=entry.value("one_atrn_session", bool, False),
        etrn_target=target,
        etrn_host=host,
        etrn_port=port,
        hold_time=days * DAY,
    )


def _gateways(reader: _Reader, top: _Table) -> tuple[Gateway, ...]:
    raw = top.value("gateway", list, [])
    gateways: list[Gateway] = []
    passwords: dict[str, Secret | None] = {}
    for i, item in enumerate(raw):
        key = f"gateway[{i}]"
        gateway = _gateway(reader, key, item)
        if gateway is None:
            continue
        if any(g.domain == gateway.domain for g in gateways):
            reader.problem(f"{key}.domain", f"{gateway.domain} is listed twice")
            continue
        if gateway.login in passwords and passwords[gateway.login] != gateway.password:
            reader.problem(
                f"{key}.password",
                f"login {gateway.login} is used by another gateway with another password",
            )
        passwords.setdefault(gateway.login, gateway.password)
        gateways.append(gateway)
    return tuple(gateways)


def _provider(reader: _Reader, top: _Table) -> ProviderSettings:
    defaults = ProviderSettings()
    table = top.subtable("provider", set(attrs.fields_dict(ProviderSettings)))
    assert table is not None
    listen = table.string("odmr_listen", "")
    if listen:
        _check_endpoint(reader, table.key("odmr_listen"), listen)
    return ProviderSettings(
        odmr_listen=listen,
        etrn_per_session=table.positive("etrn_per_session", int, defaults.etrn_per_session),
        idle_timeout=table.positive("idle_timeout", float, defaults.idle_timeout),
        turned_timeout=table.positive("turned_timeout", float, defaults.turned_timeout),
    )
