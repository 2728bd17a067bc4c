"""Tests for L{mdtwist.portal}: the one login portal, its checkers and its limit."""

from __future__ import annotations

import hashlib
import hmac

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernameHashedPassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import Interface
from zope.interface.verify import verifyObject

from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable, LoginThrottled, MdtwistError
from mdtwist.login_limits import LoginLimits
from mdtwist.portal import (
    GATEWAY,
    AccountId,
    AccountRealm,
    CramMD5Response,
    DirectoryChecker,
    GatewayChecker,
    IAccountAvatar,
    LoginPortal,
    build_login_portal,
)
from mdtwist.secret import Secret
from mdtwist.smtp.core.sasl import HashedCredentials
from tests.smtp.fakes import FakeDirectory
from tests.support.logs import capture_logs

LIMITS = LoginLimits(max_failures=3, window=60.0, delay=5.0)
GATEWAYS = {"Relay.Example": Secret("gw-secret")}
CHALLENGE = b"<1.1@mx.example>"


def cram(login: str, secret: bytes) -> CramMD5Response:
    """
    Make the CRAM-MD5 response a client with C{secret} would send.

    @param login: the login.
    @param secret: the secret.
    @return: the credentials.
    """
    digest = hmac.new(secret, CHALLENGE, hashlib.md5).hexdigest()
    return CramMD5Response(HashedCredentials(login, CHALLENGE, digest))


class PortalTestsBase(SynchronousTestCase):
    """A portal over a fake directory, with a clock and the gateway secrets."""

    def setUp(self) -> None:
        """Make the directory, the clock and the portal."""
        self.directory = FakeDirectory()
        self.clock = Clock()
        self.portal = build_login_portal(
            self.directory, self.clock, limits=LIMITS, gateway_secrets=GATEWAYS
        )

    def login(
        self, password: str = "secret", login: str = "alice", address: str = "192.0.2.1"
    ) -> Deferred[Account]:
        """Log in at the C{smtp} service."""
        return self.portal.login(address, login, password, service="smtp")


class InterfaceTests(SynchronousTestCase):
    """The checkers and the realm provide Twisted's interfaces."""

    def test_verify(self) -> None:
        """C{verifyObject} passes for both checkers and the realm."""
        self.assertTrue(verifyObject(ICredentialsChecker, DirectoryChecker(FakeDirectory())))
        self.assertTrue(verifyObject(ICredentialsChecker, GatewayChecker(GATEWAYS)))
        self.assertTrue(verifyObject(IRealm, AccountRealm()))
        response = cram("relay.example", b"gw-secret")
        self.assertTrue(verifyObject(IUsernameHashedPassword, response))

    def test_throttled_is_not_unauthorized(self) -> None:
        """L{LoginThrottled} is an mdtwist error, not a wrong password."""
        self.assertTrue(issubclass(LoginThrottled, MdtwistError))
        self.assertFalse(issubclass(LoginThrottled, UnauthorizedLogin))

    def test_realm_wants_its_interface(self) -> None:
        """The realm refuses other avatar interfaces and avatar ids that carry no account."""
        realm = AccountRealm()
        account = FakeDirectory().account
        self.assertRaises(
            NotImplementedError, realm.requestAvatar, AccountId(account), None, Interface
        )
        self.assertRaises(UnauthorizedLogin, realm.requestAvatar, (), None, IAccountAvatar)
        interface, avatar, logout = realm.requestAvatar(AccountId(account), None, IAccountAvatar)
        self.assertIs(interface, IAccountAvatar)
        self.assertIs(avatar, account)
        logout()


class DirectoryLoginTests(PortalTestsBase):
    """Logins of directory accounts."""

    def test_success(self) -> None:
        """The right password gives the account."""
        self.assertEqual(self.successResultOf(self.login()), self.directory.account)
        self.assertEqual(self.directory.logins, ["alice"])

    def test_wrong_password(self) -> None:
        """A wrong password fails with L{UnauthorizedLogin}."""
        self.failureResultOf(self.login("wrong"), UnauthorizedLogin)

    def test_disabled_account(self) -> None:
        """An account the directory hands back disabled is refused all the same."""
        disabled = Account(
            address="bob@example.com",
            mailbox="bob",
            domain="example.com",
            login="bob",
            enabled=False,
        )
        directory = FakeDirectory()
        directory.authenticate = lambda login, password: succeed(disabled)  # type: ignore[method-assign]
        portal = build_login_portal(directory, self.clock)
        self.failureResultOf(
            portal.login("192.0.2.1", "bob", "pw", service="http"), UnauthorizedLogin
        )

    def test_directory_down(self) -> None:
        """
        A directory that cannot answer fails the login with L{DirectoryUnavailable}, and that
        counts as no failure.
        """
        self.directory.unavailable = True
        for _ in range(LIMITS.max_failures + 1):
            self.failureResultOf(self.login(), DirectoryUnavailable)
        self.assertEqual(len(self.portal.limiter), 0)

    def test_bytes_not_utf8(self) -> None:
        """Credentials whose login is not UTF-8 are refused without asking the directory."""
        credentials = UsernamePassword(b"\xffalice", b"secret")
        d = self.portal.login_with("192.0.2.1", credentials, service="http")
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(self.directory.logins, [])

    def test_cram_md5_cannot_be_checked(self) -> None:
        """
        The directory holds no cleartext secret, so a CRAM-MD5 response for a directory
        service is refused (and counted), without asking the directory.
        """
        d = self.portal.login_with("192.0.2.1", cram("alice", b"secret"), service="smtp")
        self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(self.directory.logins, [])
        self.assertEqual(len(self.portal.limiter), 2)


class LimitTests(PortalTestsBase):
    """The brute-force limit: per client address and per login name, for every service."""

    def test_per_address(self) -> None:
        """
        Failures from one address with different logins, across services, throttle that
        address: even the right password then fails with L{LoginThrottled}, after the delay,
        without asking the directory. Another address still logs in.
        """
        self.failureResultOf(self.login("x", "bob"), UnauthorizedLogin)
        d = self.portal.login("192.0.2.1", "carol", "x", service="http")
        self.failureResultOf(d, UnauthorizedLogin)
        d = self.portal.login("192.0.2.1", "relay.example", "x", service=GATEWAY)
        self.failureResultOf(d, UnauthorizedLogin)
        asked = list(self.directory.logins)
        throttled = self.login()
        self.assertNoResult(throttled)
        self.clock.advance(LIMITS.delay - 0.5)
        self.assertNoResult(throttled)
        self.clock.advance(0.5)
        self.failureResultOf(throttled, LoginThrottled)
        self.assertEqual(self.directory.logins, asked)
        self.successResultOf(self.login(address="192.0.2.2"))

    def test_per_login(self) -> None:
        """
        Failures of one login name (any case) from several addresses throttle that name from
        every address; other names still log in from those addresses.
        """
        for i, login in enumerate(("alice", "ALICE", "Alice")):
            self.failureResultOf(self.login("x", login, f"192.0.2.{i}"), UnauthorizedLogin)
        throttled = self.login(address="198.51.100.9")
        self.clock.advance(LIMITS.delay)
        self.failureResultOf(throttled, LoginThrottled)
        self.directory.account = Account(
            address="bob@example.com", mailbox="bob", domain="example.com", login="bob"
        )
        self.failureResultOf(self.login("x", "bob", "192.0.2.0"), UnauthorizedLogin)

    def test_window(self) -> None:
        """After the window the failures are forgotten and the login works again."""
        for login in ("a", "b", "c"):
            self.failureResultOf(self.login("x", login), UnauthorizedLogin)
        self.clock.advance(LIMITS.window)
        self.successResultOf(self.login())

    def test_success_does_not_count(self) -> None:
        """Successful logins never throttle."""
        for _ in range(LIMITS.max_failures * 2):
            self.successResultOf(self.login())


class LogTests(PortalTestsBase):
    """What a failed login leaves in the log."""

    def test_failed_login_line(self) -> None:
        """
        A failed login is logged with the service, the client address and the login with its
        control characters escaped; the password appears in no event.
        """
        events = capture_logs(self)
        self.failureResultOf(self.login("hunter2", "ev\r\nil\x1b[0m"), UnauthorizedLogin)
        [event] = [e for e in events if e["log_format"].startswith("{service} login failed")]
        self.assertEqual(event["service"], "smtp")
        self.assertEqual(event["peer"], "192.0.2.1")
        self.assertEqual(event["user"], "ev\\x0d\\x0ail\\x1b[0m")
        self.assertNotIn("hunter2", repr(list(events)))

    def test_throttled_line(self) -> None:
        """A throttled login is logged as such, without the password."""
        for login in ("a", "b", "c"):
            self.failureResultOf(self.login("x", login), UnauthorizedLogin)
        events = capture_logs(self)
        self.login("hunter2")
        [event] = events
        self.assertIn("too many recent failures", event["log_format"])
        self.assertEqual((event["user"], event["peer"]), ("alice", "192.0.2.1"))
        self.assertNotIn("hunter2", repr(event))


class GatewayTests(PortalTestsBase):
    """Logins at the C{gateway} service go to the gateway checker."""

    def test_password(self) -> None:
        """
        The configured secret logs a gateway in (login without regard to case), without
        asking the directory; the avatar names the gateway login.
        """
        d = self.portal.login("192.0.2.1", "relay.example", "gw-secret", service=GATEWAY)
        account = self.successResultOf(d)
        self.assertEqual(account.login, "Relay.Example")
        self.assertEqual(account.gateway_login, "Relay.Example")
        self.assertEqual(self.directory.logins, [])

    def test_wrong_password_and_unknown_gateway(self) -> None:
        """A wrong secret, an unknown gateway and a directory account all fail."""
        for login, password in (
            ("relay.example", "wrong"),
            ("other.example", "gw-secret"),
            ("alice", "secret"),
        ):
            d = self.portal.login("192.0.2.1", login, password, service=GATEWAY)
            self.failureResultOf(d, UnauthorizedLogin)

    def test_cram_md5(self) -> None:
        """A CRAM-MD5 response made with the gateway's secret logs in; another does not."""
        d = self.portal.login_with(
            "192.0.2.1", cram("relay.example", b"gw-secret"), service=GATEWAY
        )
        self.assertEqual(self.successResultOf(d).gateway_login, "Relay.Example")
        d = self.portal.login_with("192.0.2.1", cram("relay.example", b"guess"), service=GATEWAY)
        self.failureResultOf(d, UnauthorizedLogin)

    def test_own_portals(self) -> None:
        """
        L{LoginPortal} takes one portal per service label; other labels use the default.
        """
        realm = AccountRealm()
        portal = LoginPortal(
            Portal(realm, [DirectoryChecker(self.directory)]),
            clock=self.clock,
            services={"odmr": Portal(realm, [GatewayChecker(GATEWAYS)])},
        )
        d = portal.login("192.0.2.1", "relay.example", "gw-secret", service="odmr")
        self.successResultOf(d)
        d = portal.login("192.0.2.1", "relay.example", "gw-secret", service=GATEWAY)
        self.failureResultOf(d, UnauthorizedLogin)
