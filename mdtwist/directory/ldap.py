# -*- test-case-name: tests.directory.test_ldap,tests.integration.test_ldap_slapd -*-
"""
The account directory in an LDAP server, read with ldap3.

Theory of operation:

    - Every ldap3 call is blocking, so each request is one plain function handed to the C{run}
      callable (L{mdtwist.threadpool.ThreadPoolService.run} in production), which calls it on the
      directory's own thread pool. Nothing here touches the reactor from a worker thread.
    - Each worker thread keeps one service connection (C{SAFE_SYNC} strategy, bound with the
      configured C{bind_dn}, or anonymous) in a L{threading.local}; it is opened on first use.
    - A request that fails on the way (socket error, timeout, failed service bind, a result code
      other than success) drops that thread's connection and is tried once more on a new one. So a
      restarted server costs no error at all; a server that is down costs two quick failures and
      L{DirectoryUnavailable}. An unavailable server is never reported as "no such account".
    - Values from the outside (an address, a login) enter a filter only after
      C{escape_filter_chars}, by plain substitution of C{{address}} or C{{login}}.
    - More than one entry for one address or login is an administrator's mistake, not an answer:
      it is logged and reported as L{DirectoryUnavailable}, so that mail is kept, not bounced.
    - Passwords are checked by a bind as the user's DN on a separate, short-lived connection (the
      default), or by an LDAP compare of the password attribute on the service connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.core.results import (
    RESULT_COMPARE_FALSE,
    RESULT_COMPARE_TRUE,
    RESULT_INVALID_CREDENTIALS,
    RESULT_NO_SUCH_ATTRIBUTE,
    RESULT_NO_SUCH_OBJECT,
    RESULT_SIZE_LIMIT_EXCEEDED,
    RESULT_SUCCESS,
)
from ldap3.utils.conv import escape_filter_chars
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from mdtwist.address import Address, parse_address
from mdtwist.config import LDAPAttributes, LDAPAuthMethod, LDAPConfig
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory
from mdtwist.logging import escape_text
from mdtwist.secret import Secret

T = TypeVar("T")

#: Makes a new, unopened ldap3 connection for a user DN and password (both L{None} for an
#: anonymous connection). The directory opens it, starts TLS if configured, and binds.
ConnectionFactory: TypeAlias = Callable[[str | None, str | None], ldap3.Connection]

#: What an ldap3 operation returns under a thread-safe strategy: status, result, response, request.
#: The request part may hold a password: it is never logged.
_Outcome: TypeAlias = "tuple[bool, dict[str, Any], list[dict[str, Any]] | None, Any]"

#: An entry as the search response gives it: C{dn}, C{attributes}, C{type} ...
_Entry: TypeAlias = Mapping[str, Any]


class _ResultError(Exception):
    """
    The server answered an operation with a result code we cannot use.

    @ivar code: the LDAP result code.
    """

    def __init__(self, operation: str, result: Mapping[str, Any]) -> None:
        self.code = result.get("result")
        super().__init__(f"{operation} failed: {result.get('description')} ({self.code})")


#: The failures we expect from talking to a server. ldap3 also lets other exceptions out of its
#: socket and decoding code; those are retried too, but logged with their traceback.
_EXPECTED = (LDAPException, OSError, _ResultError)


class _ThreadState(threading.local):
    """
    The service connection of one worker thread.

    @ivar connection: the open, bound connection, or L{None} before the first request and after
        a failure.
    @ivar generation: the directory's generation when the connection was opened; a connection
        from before the last L{LDAPDirectory.close} is not used again.
    """

    connection: ldap3.Connection | None = None
    generation: int = 0


def default_connection_factory(config: LDAPConfig) -> ConnectionFactory:
    """
    Make the factory of real network connections for a configuration.

    Connections use the C{SAFE_SYNC} strategy and the configured timeouts, and never chase
    referrals. C{ldaps://} URLs and C{start_tls} verify the server certificate against
    C{config.ca_file}, or against the system's CA store when no file is given, and check that it
    names the host of the URL.

    @param config: the LDAP settings.
    @return: a factory of unopened connections.
    """
    parts = urlsplit(config.url)
    host = parts.hostname or ""
    use_ssl = parts.scheme == "ldaps"
    port = parts.port or (636 if use_ssl else 389)
    ca_file = str(config.ca_file) if config.ca_file is not None else None

    def connect(user: str | None, password: str | None) -> ldap3.Connection:
        tls = None
        if use_ssl or config.start_tls:
            tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=ca_file,
                sni=None if _is_ip_address(host) else host,
            )
        # One Server object per connection: ldap3 keeps per-server state about addresses that
        # failed, which must not outlive the connection that saw the failure.
        server = ldap3.Server(
            host,
            port=port,
            use_ssl=use_ssl,
            tls=tls,
            get_info=ldap3.NONE,
            connect_timeout=config.connect_timeout,
        )
        return ldap3.Connection(
            server,
            user=user,
            password=password,
            client_strategy=ldap3.SAFE_SYNC,
            # ldap3 packs this into SO_RCVTIMEO as whole seconds: a float makes open() fail.
            receive_timeout=max(1, math.ceil(config.receive_timeout)),
            auto_referrals=False,
            read_only=True,
        )

    return connect


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def fill_filter(template: str, placeholder: str, value: str) -> str:
    """
    Put a value into a filter template, escaped so it can only ever match as a literal.

    Plain substitution, not C{str.format}: other braces in the template stay as they are.

    @param template: a filter such as C{(mail={address})}.
    @param placeholder: the placeholder to replace, such as C{{address}}.
    @param value: the value from outside (an address, a login name).
    @return: the filter to send.
    """
    escaped: str = escape_filter_chars(value)
    return template.replace(placeholder, escaped)


def _by_key(address: Address) -> str:
    return address.key


def primary_address(mails: Sequence[Address], login: str | None) -> Address:
    """
    Choose the primary address of an entry among its C{mail} values, whatever order the
    server returned them in (LDAP values have none): the value whose local part is the login
    (C{uid}), in any case; otherwise the lowest value in lower case.

    The Maildir is named after the primary address's local part (or after the configured
    C{attributes.mailbox}), so this choice must not change from one search to the next.

    @param mails: the usable C{mail} values, at least one.
    @param login: the login attribute's value, or L{None}.
    @return: the primary address.
    """
    ordered = sorted(mails, key=_by_key)
    if login:
        for address in ordered:
            if address.local.lower() == login.lower():
                return address
    return ordered[0]


def _requested_attributes(names: LDAPAttributes) -> list[str]:
    # The attributes a search asks for: every configured one except the password.
    wanted = [
        names.mail,
        names.alias,
        names.display_name,
        names.first_name,
        names.last_name,
        names.login,
        names.status,
        names.smarthost_login,
        names.smarthost_password,
        names.gateway_login,
        names.mailbox,
    ]
    result: list[str] = []
    for name in wanted:
        if name and name.lower() not in (r.lower() for r in result):
            result.append(name)
    return result


def _values(attributes: Mapping[str, Any], name: str) -> list[str]:
    # All values of an attribute as text; none when the name is empty or absent. The lookup
    # ignores case, as LDAP attribute names do.
    if not name:
        return []
    found: Any = None
    for key, value in attributes.items():
        if key.lower() == name.lower():
            found = value
            break
    if found is None:
        return []
    items = found if isinstance(found, list | tuple) else [found]
    return [
        item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in items
    ]


def _first(attributes: Mapping[str, Any], name: str) -> str | None:
    values = _values(attributes, name)
    return values[0] if values else None


@implementer(IDirectory)
class LDAPDirectory:
    """
    An L{IDirectory} backed by an LDAP server.

    @ivar log: the logger; events carry C{rcpt} or C{user}, C{dn}, C{elapsed_ms} and C{error}.
    """

    log = Logger()

    def __init__(
        self,
        config: LDAPConfig,
        run: Callable[..., Deferred[Any]],
        *,
        connection_factory: ConnectionFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Make a directory; it connects on its first request, not here.

        @param config: the LDAP settings.
        @param run: calls a blocking function with arguments on the directory's thread pool and
            returns a Deferred of its result, as L{mdtwist.threadpool.ThreadPoolService.run}.
        @param connection_factory: makes unopened connections; by default
            L{default_connection_factory} of C{config}. Tests pass one for ldap3's C{MOCK_SYNC}.
        @param clock: a monotonic clock in seconds, used only for C{elapsed_ms} in log events.
        """
        self._config = config
        self._run = run
        self._factory = connection_factory or default_connection_factory(config)
        self._clock = clock
        self._state = _ThreadState()
        # Every open service connection, whichever thread holds it, so close() can reach them.
        self._open_connections: set[ldap3.Connection] = set()
        self._lock = threading.Lock()
        self._generation = 0
        self._attributes = _requested_attributes(config.attributes)
        self._disabled_values = frozenset(v.strip().lower() for v in config.disabled_values)

    # IDirectory

    def find(self, address: str) -> Deferred[Account | None]:
        """
        Find the account that owns an address, as its primary address or an alias.

        @param address: the address; one that is not plausible (see
            L{mdtwist.address.parse_address}) finds nothing without asking the server.
        @return: a Deferred firing with the account (which may be disabled) or L{None}; it fails
            with L{DirectoryUnavailable} when the server cannot be reached or answers with more
            than one entry.
        """
        parsed = parse_address(address)
        if parsed is None:
            return defer.succeed(None)
        result: Deferred[Account | None] = self._run(self._find, parsed.key)
        return result

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        """
        Check a login name (or any address of the account) and its password.

        @param login: the login name or an address.
        @param password: the password as the client sent it; an empty one is refused without
            asking the server (to LDAP, a bind with an empty password is an anonymous bind that
            succeeds).
        @return: a Deferred firing with the account when the password is right and the account
            is enabled, else L{None}; it fails with L{DirectoryUnavailable} when the server
            cannot answer.
        """
        if not login or not password:
            return defer.succeed(None)
        result: Deferred[Account | None] = self._run(self._authenticate, login, password)
        return result

    def domains(self) -> Deferred[frozenset[str]]:
        """
        The local domains, as configured: LDAP has no cheap, standard way to list mail domains.

        @return: a Deferred that has fired with the configured domains, lower-case.
        """
        return defer.succeed(frozenset(d.lower() for d in self._config.domains))

    def close(self) -> None:
        """
        Close the kept service connections of all threads.

        This blocks (it sends an unbind on each connection), and must only be called while no
        request is running: when the directory's thread pool is idle or stopped, as at
        shutdown. A later request opens a new connection.
        """
        with self._lock:
            self._generation += 1
            connections, self._open_connections = self._open_connections, set()
        for connection in connections:
            _close(connection)

    # Blocking parts: these run on the directory's thread pool.

    def _find(self, key: str) -> Account | None:
        query = fill_filter(self._config.filter, "{address}", key)
        start = self._clock()

        def lookup(connection: ldap3.Connection) -> Account | None:
            entry = self._single(self._search(connection, query), {"rcpt": escape_text(key)})
            dn = None if entry is None else str(entry.get("dn"))
            self.log.debug(
                "LDAP lookup of {rcpt} found {dn}",
                rcpt=escape_text(key),
                dn=dn,
                elapsed_ms=self._elapsed_ms(start),
            )
            return None if entry is None else self._account(entry)

        return self._with_retry(lookup, {"rcpt": escape_text(key)})

    def _authenticate(self, login: str, password: str) -> Account | None:
        query = fill_filter(self._config.auth_filter, "{login}", login)
        fields: dict[str, object] = {"user": escape_text(login)}
        start = self._clock()

        def check(connection: ldap3.Connection) -> Account | None:
            entry = self._single(self._search(connection, query), fields)
            if entry is None:
                return None
            dn = str(entry["dn"])
            account = self._account(entry)
            if not account.enabled:
                self.log.info("LDAP login refused: account {dn} is disabled", dn=dn, **fields)
                return None
            if self._config.auth_method is LDAPAuthMethod.COMPARE:
                ok = self._compare_password(connection, dn, password)
            else:
                ok = self._bind_as(dn, password)
            self.log.debug(
                "LDAP login of {user} as {dn}: {outcome}",
                dn=dn,
                outcome="accepted" if ok else "wrong password",
                elapsed_ms=self._elapsed_ms(start),
                **fields,
            )
            return account if ok else None

        return self._with_retry(check, fields)

    def _with_retry(
        self, operation: Callable[[ldap3.Connection], T], fields: Mapping[str, object]
    ) -> T:
        """
        Run an operation on this thread's connection; on a failure, once more on a new one.

        @raise DirectoryUnavailable: when the second try fails too.
        """
        start = self._clock()
        try:
            return operation(self._connection())
        except DirectoryUnavailable:
            raise
        except Exception as e:
            self._drop_connection()
            self._log_failure(
                "LDAP request failed, retrying on a new connection: {error}", e, fields
            )
        try:
            return operation(self._connection())
        except DirectoryUnavailable:
            raise
        except Exception as e:
            self._drop_connection()
            self._log_failure(
                "LDAP directory unavailable: {error}",
                e,
                {**fields, "elapsed_ms": self._elapsed_ms(start)},
                final=True,
            )
            raise DirectoryUnavailable(f"LDAP server {self._config.url}: {e}") from e

    def _log_failure(
        self, text: str, error: Exception, fields: Mapping[str, object], final: bool = False
    ) -> None:
        # Expected failures are one line; anything else keeps its traceback.
        level = LogLevel.error if final else LogLevel.warn
        if isinstance(error, _EXPECTED):
            self.log.emit(level, text, error=str(error), **fields)
        else:
            self.log.failure(text, Failure(error), level, error=repr(error), **fields)

    def _connection(self) -> ldap3.Connection:
        # The calling thread's service connection, opened and bound on first use.
        connection = self._state.connection
        if connection is None or self._state.generation != self._generation:
            password = self._config.bind_password
            connection = self._open(
                self._config.bind_dn or None,
                password.reveal() if self._config.bind_dn and password is not None else None,
            )
            self._state.connection = connection
            self._state.generation = self._generation
            with self._lock:
                self._open_connections.add(connection)
        return connection

    def _drop_connection(self) -> None:
        connection, self._state.connection = self._state.connection, None
        if connection is not None:
            with self._lock:
                self._open_connections.discard(connection)
            _close(connection)

    def _open(self, user: str | None, password: str | None) -> ldap3.Connection:
        """
        Open a connection, start TLS if configured, and bind.

        @raise _ResultError: when the bind is refused (the result code is kept in C{code}).
        """
        connection = self._factory(user, password)
        try:
            connection.open(read_server_info=False)
            if self._config.start_tls:
                started = cast("_Outcome", connection.start_tls(read_server_info=False))
                if not started[0]:
                    raise _ResultError("StartTLS", started[1] or {})
            bound = cast("_Outcome", connection.bind(read_server_info=False))
            if not bound[0]:
                raise _ResultError("bind", bound[1])
        except BaseException:
            _close(connection)
            raise
        return connection

    def _search(self, connection: ldap3.Connection, query: str) -> list[_Entry]:
        """
        Search the subtree of the base DN.

        At most two entries come back: enough to see that an answer is ambiguous.

        @return: the entries found; none when the base DN does not exist.
        @raise _ResultError: when the server answers with an error.
        """
        _, result, response, _ = cast(
            "_Outcome",
            connection.search(
                self._config.base_dn,
                query,
                ldap3.SUBTREE,
                attributes=self._attributes,
                size_limit=2,
            ),
        )
        entries: list[_Entry] = [e for e in response or () if e.get("type") == "searchResEntry"]
        code = result.get("result")
        if code == RESULT_NO_SUCH_OBJECT:
            return []
        if code == RESULT_SIZE_LIMIT_EXCEEDED and len(entries) > 1:
            return entries
        if code != RESULT_SUCCESS:
            raise _ResultError("search", result)
        return entries

    def _single(self, entries: Sequence[_Entry], fields: Mapping[str, object]) -> _Entry | None:
        # The one entry found, or None; more than one is bad data that must not bounce mail.
        if not entries:
            return None
        if len(entries) > 1:
            dns = [str(e.get("dn")) for e in entries]
            self.log.error(
                "LDAP data is ambiguous: more than one entry matches, e.g. {dn}", dn=dns, **fields
            )
            raise DirectoryUnavailable(f"more than one LDAP entry matches: {', '.join(dns)}")
        return entries[0]

    def _bind_as(self, dn: str, password: str) -> bool:
        """
        Check a password by binding as the user on a connection of its own.

        @return: whether the bind succeeded; L{False} on C{invalidCredentials}.
        @raise _ResultError: for any other refusal.
        """
        try:
            connection = self._open(dn, password)
        except _ResultError as e:
            if e.code == RESULT_INVALID_CREDENTIALS:
                return False
            raise
        _close(connection)
        return True

    def _compare_password(self, connection: ldap3.Connection, dn: str, password: str) -> bool:
        """
        Check a password with an LDAP compare on the service connection.

        @return: whether the server says the value matches.
        @raise _ResultError: when the server cannot compare (no rights, for example).
        """
        _, result, _, _ = cast(
            "_Outcome", connection.compare(dn, self._config.attributes.password, password)
        )
        code = result.get("result")
        if code == RESULT_COMPARE_TRUE:
            return True
        if code in (RESULT_COMPARE_FALSE, RESULT_NO_SUCH_ATTRIBUTE):
            return False
        raise _ResultError("compare", result)

    def _account(self, entry: _Entry) -> Account:
        """
        Map an entry to an account.

        @raise DirectoryUnavailable: when the entry has no usable mail address (bad data).
        """
        names = self._config.attributes
        attributes: Mapping[str, Any] = entry.get("attributes") or {}
        dn = str(entry.get("dn"))
        mails = self._addresses(dn, _values(attributes, names.mail))
        if not mails:
            self.log.error("LDAP entry {dn} has no usable mail address", dn=dn)
            raise DirectoryUnavailable(f"LDAP entry {dn} has no usable mail address")
        login = _first(attributes, names.login)
        primary = primary_address(mails, login)
        mailbox = primary.local
        if names.mailbox:
            chosen = sorted(_values(attributes, names.mailbox))
            if chosen:
                mailbox = chosen[0]
        aliases: list[str] = []
        seen = {primary.key}
        for alias in (
            *sorted(mails, key=_by_key),
            *self._addresses(dn, _values(attributes, names.alias)),
        ):
            if alias.key not in seen:
                seen.add(alias.key)
                aliases.append(str(alias))
        status = {v.strip().lower() for v in _values(attributes, names.status)}
        smarthost_password = _first(attributes, names.smarthost_password)
        return Account(
            address=str(primary),
            mailbox=mailbox,
            domain=primary.domain,
            login=login or str(primary),
            aliases=tuple(aliases),
            display_name=_first(attributes, names.display_name) or "",
            first_name=_first(attributes, names.first_name) or "",
            last_name=_first(attributes, names.last_name) or "",
            enabled=not (status & self._disabled_values),
            smarthost_login=_first(attributes, names.smarthost_login),
            smarthost_password=None if smarthost_password is None else Secret(smarthost_password),
            gateway_login=_first(attributes, names.gateway_login),
        )

    def _addresses(self, dn: str, values: Sequence[str]) -> list[Address]:
        # Parse attribute values as addresses, leaving out (and logging) the unusable ones.
        result: list[Address] = []
        for value in values:
            parsed = parse_address(value.strip())
            if parsed is None:
                self.log.warn("LDAP entry {dn} has an unusable address, ignored", dn=dn)
            else:
                result.append(parsed)
        return result

    def _elapsed_ms(self, start: float) -> int:
        return round((self._clock() - start) * 1000)


def _close(connection: ldap3.Connection) -> None:
    # Unbind and close a connection that is being thrown away; errors do not matter then.
    # ldap3 leaves the socket open when open() failed, and unbind() does nothing then.
    with contextlib.suppress(LDAPException, OSError):
        connection.unbind()
    sock = connection.socket
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
