# -*- test-case-name: tests.test_portal -*-
"""
One login portal for every protocol: SMTP AUTH now, HTTP Basic and gateway logins next.

Theory of operation: L{LoginPortal.login} (or L{LoginPortal.login_with} for credentials other
than a password, such as a CRAM-MD5 response) first asks the brute-force limiter
(L{mdtwist.login_limits.FailureLimiter}) whether the client address or the login name failed
too often lately; if so, the attempt is not checked and fails with L{LoginThrottled} after the
configured delay on the injected clock. Otherwise the credentials go to a real
L{twisted.cred.portal.Portal}, chosen by the C{service} label: each label may have its own
portal (its own checkers), and every other label uses the default one. A wrong login or password
is remembered by the limiter under the address and the login name and logged (service, client
address and login, control characters escaped, never the password); it fails with
L{UnauthorizedLogin}. A directory that cannot answer fails with L{DirectoryUnavailable} and
counts nothing.

The checkers and the realm:

 - L{DirectoryChecker} checks L{IUsernamePassword} against an L{IDirectory} (the file and the
   LDAP backends alike, through C{IDirectory.authenticate}). It cannot check a CRAM-MD5
   response (L{IUsernameHashedPassword}): the directory keeps password hashes, or checks a
   password by binding with it, and neither can verify a keyed digest. So SMTP AUTH does not
   offer CRAM-MD5 to directory accounts.
 - L{GatewayChecker} checks gateway logins (ETRN/ATRN) against cleartext secrets from the
   configuration, for both L{IUsernamePassword} and L{IUsernameHashedPassword}.
 - L{AccountRealm} hands out the L{Account} a checker found as the avatar (interface
   L{IAccountAvatar}). A checker names it with an L{AccountId}, a C{bytes} login that carries
   the account along.

To give a service its own checkers, pass C{services={"gateway": Portal(AccountRealm(),
[GatewayChecker(secrets)])}} to L{LoginPortal} (L{build_login_portal} does this for
C{"gateway"}); a login with C{service="gateway"} then goes to that portal and every other
service to the default portal. The limiter is shared by all services.

HTTP Basic (client settings) should call L{LoginPortal.login} with the request's client address
and C{service="http"} (401 for L{UnauthorizedLogin}, 503 for L{LoginThrottled} and
L{DirectoryUnavailable}) rather than put C{twisted.web.guard} before it: guard's checkers never
see the client address, so the limit could count only per login name.

The limiter lives in memory: with C{server.processes} above 1 each process counts its own
failures (like C{smtp.max_sessions_per_ip}). Attempts already being checked are not counted
until they fail, so a client with many parallel sessions gets one round of guesses in flight
beyond the limit before every further attempt is throttled.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import (
    ICredentials,
    IUsernameHashedPassword,
    IUsernamePassword,
    UsernamePassword,
)
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from mdtwist.directory.model import Account
from mdtwist.errors import LoginThrottled
from mdtwist.interfaces import IDirectory
from mdtwist.logging import escape_text
from mdtwist.login_limits import FailureLimiter, LoginLimits
from mdtwist.secret import Secret
from mdtwist.smtp.core.sasl import HashedCredentials

#: The service label whose logins go to the gateway checker (see L{build_login_portal}).
GATEWAY = "gateway"

log = Logger()


class IAccountAvatar(Interface):
    """
    The avatar interface of our realm: the avatar is the L{Account} that logged in.
    """


class AccountId(bytes):
    """
    An avatar id: the account's login, UTF-8, carrying the L{Account} itself to the realm.

    @ivar account: the account that logged in.
    """

    account: Account

    def __new__(cls, account: Account) -> AccountId:
        """
        @param account: the account that logged in.
        @return: the avatar id.
        """
        self = super().__new__(cls, account.login.encode("utf-8"))
        self.account = account
        return self


@implementer(IRealm)
class AccountRealm:
    """
    Hands out the account a checker found (an L{AccountId}) as the L{IAccountAvatar}.
    """

    def requestAvatar(  # noqa: N802 (Twisted's name)
        self,
        avatarId: bytes | tuple[()],  # noqa: N803
        mind: object,
        *interfaces: Any,
    ) -> tuple[Any, object, Callable[[], None]]:
        """
        Give the account as the avatar.

        @param avatarId: an L{AccountId}.
        @param mind: ignored.
        @param interfaces: must include L{IAccountAvatar}.
        @return: C{(IAccountAvatar, account, logout)}; logging out does nothing.
        @raise NotImplementedError: when L{IAccountAvatar} is not asked for.
        @raise UnauthorizedLogin: when the id does not carry an account (an anonymous login).
        """
        if IAccountAvatar not in interfaces:
            raise NotImplementedError("only IAccountAvatar")
        if not isinstance(avatarId, AccountId):
            raise UnauthorizedLogin("no account")
        return IAccountAvatar, avatarId.account, _nothing


def _nothing() -> None:
    # Logging out of an account holds nothing to release.
    pass


def _text(value: bytes | str) -> str | None:
    # Credentials may carry bytes (twisted.web, UsernamePassword) or text: one decoding here.
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def username_of(credentials: ICredentials) -> str:
    """
    The login name credentials carry, as text (for the limiter and the log).

    @param credentials: credentials with a C{username} (bytes or text).
    @return: the name; undecodable bytes are replaced.
    """
    value = getattr(credentials, "username", "")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


@implementer(IUsernameHashedPassword)
class CramMD5Response:
    """
    A CRAM-MD5 response from the SASL core as L{IUsernameHashedPassword} credentials.

    @ivar username: the login, UTF-8.
    """

    def __init__(self, response: HashedCredentials) -> None:
        """
        @param response: what the client sent, with the challenge it answers.
        """
        self._response = response
        self.username = response.login.encode("utf-8")

    def checkPassword(self, password: bytes | str) -> bool:  # noqa: N802 (Twisted's name)
        """
        Tell whether the response was made with a cleartext secret.

        @param password: the secret.
        @return: whether it matches (compared in constant time).
        """
        secret = password.encode("utf-8") if isinstance(password, str) else password
        return self._response.check(secret)


def _account(account: Account | None) -> AccountId:
    if account is None or not account.enabled:
        raise UnauthorizedLogin("wrong login or password")
    return AccountId(account)


@implementer(ICredentialsChecker)
class DirectoryChecker:
    """
    Checks logins and passwords against the account directory.
    """

    credentialInterfaces = (IUsernamePassword,)  # noqa: N815 (Twisted's name)

    def __init__(self, directory: IDirectory) -> None:
        """
        @param directory: the directory (file or LDAP backend).
        """
        self._directory = directory

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:  # noqa: N802
        """
        Check a password with L{IDirectory.authenticate}.

        @param credentials: L{IUsernamePassword} credentials.
        @return: a Deferred firing with the enabled account's L{AccountId}; failing with
            L{UnauthorizedLogin} for a wrong login or password or a disabled account, and
            with L{mdtwist.errors.DirectoryUnavailable} when the directory cannot answer.
        """
        login = _text(credentials.username)
        password = _text(credentials.password)
        if not login or password is None:
            return _refused()
        d: Deferred[Account | None] = maybeDeferred(self._directory.authenticate, login, password)
        return d.addCallback(_account)


def _refused() -> Deferred[bytes | tuple[()]]:
    d: Deferred[bytes | tuple[()]] = Deferred()
    d.errback(UnauthorizedLogin("wrong login or password"))
    return d


@implementer(ICredentialsChecker)
class GatewayChecker:
    """
    Checks gateway logins (ETRN/ATRN) against cleartext secrets from the configuration.

    Both a password (L{IUsernamePassword}) and a keyed digest such as a CRAM-MD5 response
    (L{IUsernameHashedPassword}) can be checked, since the secret is known. The login names
    compare without regard to case. The avatar is an L{Account} whose C{login} and
    C{gateway_login} are the gateway login; it has no mailbox of its own.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)  # noqa: N815

    def __init__(self, secrets: Mapping[str, Secret]) -> None:
        """
        @param secrets: each gateway login and its secret.
        """
        self._secrets = {login.casefold(): (login, secret) for login, secret in secrets.items()}

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:  # noqa: N802
        """
        Check a gateway login.

        @param credentials: L{IUsernamePassword} or L{IUsernameHashedPassword} credentials.
        @return: a Deferred firing with the gateway's L{AccountId}, or failing with
            L{UnauthorizedLogin}.
        """
        login = _text(credentials.username)
        entry = self._secrets.get(login.casefold()) if login else None
        if entry is None:
            return _refused()
        name, secret = entry
        expected = secret.reveal().encode("utf-8")
        if IUsernamePassword.providedBy(credentials):
            offered = credentials.password
            if isinstance(offered, str):
                offered = offered.encode("utf-8")
            ok = hmac.compare_digest(expected, offered)
        else:
            ok = bool(credentials.checkPassword(expected))
        if not ok:
            return _refused()
        local, _, domain = name.rpartition("@")
        account = Account(
            address=name,
            mailbox=local or name,
            domain=domain.lower() if local else "",
            login=name,
            gateway_login=name,
        )
        d: Deferred[bytes | tuple[()]] = Deferred()
        d.callback(AccountId(account))
        return d


class LoginPortal:
    """
    Every login of every protocol, behind one brute-force limit.

    @ivar limiter: the failure counts, shared by all services.
    """

    def __init__(
        self,
        default: Portal,
        *,
        clock: IReactorTime,
        limits: LoginLimits | None = None,
        services: Mapping[str, Portal] | None = None,
    ) -> None:
        """
        @param default: the portal for every service not in C{services}.
        @param clock: the clock for the limiter's window and the throttling delay.
        @param limits: the brute-force limits; L{LoginLimits} defaults when L{None}.
        @param services: a portal of its own for some service labels (C{"gateway"}).
        """
        self._default = default
        self._services = dict(services or {})
        self._clock = clock
        self.limiter = FailureLimiter(limits or LoginLimits())

    def login(
        self, client_address: str, login: str, password: str, *, service: str
    ) -> Deferred[Account]:
        """
        Check a login and password.

        @param client_address: the client's IP address.
        @param login: the login name as the client sent it.
        @param password: the password; never logged.
        @param service: a short label for the log (C{"smtp"}, C{"http"}, C{"gateway"}); it
            also chooses the portal.
        @return: a Deferred firing with the enabled account; failing with
            L{UnauthorizedLogin} (wrong login or password, disabled account),
            L{LoginThrottled} (too many recent failures, after the delay) or
            L{mdtwist.errors.DirectoryUnavailable}; any other failure of a checker passes
            through unchanged.
        """
        credentials = UsernamePassword(login.encode("utf-8"), password.encode("utf-8"))
        return self.login_with(client_address, credentials, service=service)

    def login_with(
        self, client_address: str, credentials: ICredentials, *, service: str
    ) -> Deferred[Account]:
        """
        Check any credentials with a C{username} (for example a L{CramMD5Response}).

        @param client_address: the client's IP address.
        @param credentials: the credentials.
        @param service: as for L{login}.
        @return: as for L{login}; credentials no checker of the service handles fail with
            L{UnauthorizedLogin}.
        """
        login = username_of(credentials)
        if self.limiter.throttled(client_address, login, self._clock.seconds()):
            log.warn(
                "{service} login refused for {user} from {peer}: too many recent failures",
                service=service,
                user=escape_text(login),
                peer=escape_text(client_address),
            )
            return deferLater(self._clock, self.limiter.limits.delay, _throttled)
        portal = self._services.get(service, self._default)
        d = portal.login(credentials, None, IAccountAvatar)
        return d.addCallbacks(_avatar, self._failed, errbackArgs=(client_address, login, service))

    def _failed(self, failure: Failure, client_address: str, login: str, service: str) -> Any:
        if not failure.check(LoginFailed):
            return failure
        self.limiter.failed(client_address, login, self._clock.seconds())
        log.info(
            "{service} login failed for {user} from {peer}",
            service=service,
            user=escape_text(login),
            peer=escape_text(client_address),
        )
        if failure.check(UnauthorizedLogin):
            return failure
        raise UnauthorizedLogin("no checker for these credentials")


def _throttled() -> Account:
    raise LoginThrottled("too many recent login failures")


def _avatar(result: tuple[Any, object, Callable[[], None]]) -> Account:
    _, avatar, _ = result
    assert isinstance(avatar, Account)
    return avatar


def build_login_portal(
    directory: IDirectory,
    clock: IReactorTime,
    *,
    limits: LoginLimits | None = None,
    gateway_secrets: Mapping[str, Secret] | None = None,
) -> LoginPortal:
    """
    Build the server's portal: directory accounts for every service, and the gateway
    secrets for C{service="gateway"}.

    @param directory: the account directory.
    @param clock: the clock.
    @param limits: the brute-force limits.
    @param gateway_secrets: each gateway login and its secret; none when L{None}.
    @return: the portal.
    """
    realm = AccountRealm()
    return LoginPortal(
        Portal(realm, [DirectoryChecker(directory)]),
        clock=clock,
        limits=limits,
        services={GATEWAY: Portal(realm, [GatewayChecker(gateway_secrets or {})])},
    )
