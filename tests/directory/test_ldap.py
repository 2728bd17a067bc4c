"""
Tests for L{mdtwist.directory.ldap}.

They run against ldap3's in-memory C{MOCK_SYNC} server, wrapped to answer like C{SAFE_SYNC}.
"""

from __future__ import annotations

import ssl
import struct
from typing import Any

import attrs
import ldap3
from ldap3.core.exceptions import LDAPSessionTerminatedByServerError, LDAPSocketOpenError
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.config import LDAPAttributes, LDAPAuthMethod, LDAPConfig
from mdtwist.directory.ldap import LDAPDirectory, default_connection_factory, fill_filter
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory
from mdtwist.secret import Secret
from tests.support.runners import run_inline

BASE = "dc=example,dc=com"
ADMIN = "cn=admin,dc=example,dc=com"
ALICE = "uid=alice,ou=people,dc=example,dc=com"

CONFIG = LDAPConfig(
    url="ldap://ldap.invalid",
    base_dn=BASE,
    domains=frozenset({"example.com", "Example.ORG"}),
    bind_dn=ADMIN,
    bind_password=Secret("adminpw"),
    attributes=LDAPAttributes(
        status="employeeType",
        smarthost_login="mdSmarthostLogin",
        smarthost_password="mdSmarthostPassword",
        gateway_login="mdGatewayLogin",
    ),
)


class _FakeConnection(ldap3.Connection):
    """
    A C{MOCK_SYNC} connection that answers like C{SAFE_SYNC}.

    Its L{FakeLDAP} owner can make it fail or answer with a given result.
    """

    owner: FakeLDAP

    def search(self, search_base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        self.owner.filters.append(search_filter)
        if self.owner.search_failures:
            self.owner.search_failures -= 1
            raise LDAPSessionTerminatedByServerError("session terminated by server")
        self.owner.requested.append(list(kwargs.get("attributes") or ()))
        if self.owner.search_result is not None:
            return (False, self.owner.search_result, [], None)
        if self.owner.search_response is not None:
            return (False, {"result": 0}, self.owner.search_response, None)
        return super().search(search_base, search_filter, *args, **kwargs)

    def compare(self, dn: Any, attribute: Any, value: Any, controls: Any = None) -> Any:
        if self.owner.compare_result is not None:
            return (False, self.owner.compare_result, None, None)
        return super().compare(dn, attribute, value, controls)


class FakeLDAP:
    """
    An in-memory LDAP server and a connection factory for it that counts what it is asked.

    @ivar opened: the (user, password) of every connection made, in order.
    @ivar filters: every search filter sent, in order.
    @ivar down: when true, making a connection fails as with a refused TCP connection.
    @ivar broken: when set, making a connection raises this (ldap3 lets some odd errors out).
    @ivar search_failures: how many of the next searches fail as on a dead connection.
    @ivar search_result: when set, every search answers with this result.
    @ivar search_response: when set, every search succeeds with these entries, as given (the
        values of an attribute in the order the test chooses).
    @ivar requested: the attributes each search asked for, in order.
    @ivar compare_result: when set, every compare answers with this result.
    """

    def __init__(self) -> None:
        self.server = ldap3.Server("mock-ldap", get_info=ldap3.NONE)
        self.opened: list[tuple[str | None, str | None]] = []
        self.filters: list[str] = []
        self.down = False
        self.broken: Exception | None = None
        self.search_failures = 0
        self.search_result: dict[str, Any] | None = None
        self.search_response: list[dict[str, Any]] | None = None
        self.requested: list[list[str]] = []
        self.compare_result: dict[str, Any] | None = None
        self._admin = self.connect(None, None)
        self.add(ADMIN, {"objectClass": "person", "cn": "admin", "userPassword": "adminpw"})
        self.opened.clear()

    def add(self, dn: str, attributes: dict[str, Any]) -> None:
        """
        Store an entry.

        @param dn: its DN.
        @param attributes: its attributes.
        """
        self._admin.strategy.add_entry(dn, attributes)

    def connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        """
        The connection factory.

        @param user: the DN to bind as, or L{None}.
        @param password: its password, or L{None}.
        @return: a new unopened connection.
        @raise LDAPSocketOpenError: when L{down} is set.
        """
        self.opened.append((user, password))
        if self.broken is not None:
            raise self.broken
        if self.down:
            raise LDAPSocketOpenError("socket connection error while opening: refused")
        connection = _FakeConnection(
            self.server, user=user, password=password, client_strategy=ldap3.MOCK_SYNC
        )
        # Answer (status, result, response, request) as the thread-safe strategies do.
        connection.strategy.thread_safe = True
        connection.owner = self
        return connection


def _alice() -> dict[str, Any]:
    return {
        "objectClass": ["inetOrgPerson"],
        "uid": "alice",
        "cn": "Alice Example",
        "givenName": "Alice",
        "sn": "Example",
        "mail": ["Alice@Example.COM", "a.example@example.com"],
        "mailLocalAddress": ["ally@Example.ORG", "a.example@EXAMPLE.com", "not an address"],
        "userPassword": "alicepw",
        "employeeType": "staff",
        "mdSmarthostLogin": "alice-relay",
        "mdSmarthostPassword": "relaypw",
        "mdGatewayLogin": "alice-gw",
    }


def _capture_events(case: SynchronousTestCase) -> EventLoggingObserver:
    # Collect the log events of one test.
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    case.addCleanup(globalLogPublisher.removeObserver, observer)
    return observer


class LDAPDirectoryTests(SynchronousTestCase):
    """
    Lookups in L{LDAPDirectory}.

    Entries are mapped to accounts, and bad data is never taken for "no such account".
    """

    def setUp(self) -> None:
        """
        Start a fake server with some accounts, and capture log events.

        The events are in C{self.events}.
        """
        self.ldap = FakeLDAP()
        self.ldap.add(ALICE, _alice())
        self.ldap.add(
            "uid=bob,ou=people,dc=example,dc=com",
            {
                "objectClass": ["inetOrgPerson"],
                "uid": "bob",
                "cn": "Bob",
                "sn": "Example",
                "mail": "bob@example.com",
                "userPassword": "bobpw",
            },
        )
        self.ldap.add(
            "uid=dave,ou=people,dc=example,dc=com",
            {
                "objectClass": ["inetOrgPerson"],
                "uid": "dave",
                "cn": "Dave",
                "sn": "Example",
                "mail": "dave@example.com",
                "userPassword": "davepw",
                "employeeType": " Disabled ",
            },
        )
        self.events = _capture_events(self)

    def directory(self, config: LDAPConfig = CONFIG) -> LDAPDirectory:
        """
        Make a directory on the fake server whose work runs at once on this thread.

        @param config: the settings.
        @return: the directory.
        """
        return LDAPDirectory(config, run_inline, connection_factory=self.ldap.connect)

    def find(self, directory: LDAPDirectory, address: str) -> Account | None:
        """
        Look an address up and return the result.

        @param directory: the directory to ask.
        @param address: the address.
        @return: what C{find} fired with.
        """
        return self.successResultOf(directory.find(address))

    def test_interface(self) -> None:
        """
        L{LDAPDirectory} provides L{IDirectory}.

        C{verifyObject} checks the methods and their signatures.
        """
        self.assertTrue(verifyObject(IDirectory, self.directory()))

    def test_find_primary_address(self) -> None:
        """
        An entry found by its first C{mail} value becomes an account with every field mapped.

        The primary address has its domain in lower case; the other C{mail} values and the alias
        values are aliases (without duplicates or unusable values); names, login, smart host
        and gateway come from their attributes.
        """
        account = self.find(self.directory(), "alice@example.com")
        self.assertEqual(
            account,
            Account(
                address="Alice@example.com",
                mailbox="Alice",
                domain="example.com",
                login="alice",
                aliases=("a.example@example.com", "ally@example.org"),
                display_name="Alice Example",
                first_name="Alice",
                last_name="Example",
                enabled=True,
                smarthost_login="alice-relay",
                smarthost_password=Secret("relaypw"),
                gateway_login="alice-gw",
            ),
        )

    def test_find_alias(self) -> None:
        """
        An address held in the alias attribute finds the same account.

        The account's primary address is still the first C{mail} value.
        """
        account = self.find(self.directory(), "ally@example.org")
        assert account is not None
        self.assertEqual(account.address, "Alice@example.com")

    def test_find_normalises_case(self) -> None:
        """
        The address is looked up in its normalised form.

        Upper-case letters in the local part and domain, and a trailing dot, make no difference.
        """
        account = self.find(self.directory(), "A.Example@EXAMPLE.COM.")
        assert account is not None
        self.assertEqual(account.login, "alice")
        self.assertIn("mail=a.example@example.com)", self.ldap.filters[-1])

    def test_find_unknown(self) -> None:
        """
        An address that no entry has finds nothing.

        The answer is L{None}, a definite "no such account".
        """
        self.assertIsNone(self.find(self.directory(), "nobody@example.com"))

    def test_find_implausible_address(self) -> None:
        """
        Something that is not a plausible address finds nothing.

        The server is not even asked.
        """
        directory = self.directory()
        for text in ("", "alice", "@example.com", "a(b)@example.com", "x\\2a@example.com"):
            self.assertIsNone(self.find(directory, text))
        self.assertEqual(self.ldap.opened, [])

    def test_find_escapes_address(self) -> None:
        """
        Filter characters in an address are escaped.

        A C{*} matches only itself, so it finds nothing.
        """
        directory = self.directory()
        self.assertIsNone(self.find(directory, "*@example.com"))
        self.assertIsNone(self.find(directory, "*"))
        self.assertIn("mail=\\2a@example.com)", self.ldap.filters[0])

    def test_fill_filter(self) -> None:
        """
        The value replaces the placeholder, escaped.

        Other braces in the template stay as written.
        """
        self.assertEqual(
            fill_filter("(&(mail={address})(description={x}))", "{address}", "a*)(uid=*\\"),
            "(&(mail=a\\2a\\29\\28uid=\\2a\\5c)(description={x}))",
        )

    def test_login_defaults_to_address(self) -> None:
        """
        Without a login attribute value, the login is the primary address.

        Optional attributes that the entry lacks are empty or L{None}.
        """
        self.ldap.add(
            "cn=carol,ou=people,dc=example,dc=com",
            {
                "objectClass": ["inetOrgPerson"],
                "cn": "Carol",
                "sn": "C",
                "mail": "carol@example.com",
            },
        )
        account = self.find(self.directory(), "carol@example.com")
        assert account is not None
        self.assertEqual(account.login, "carol@example.com")
        self.assertEqual(account.aliases, ())
        self.assertEqual(account.first_name, "")
        self.assertIsNone(account.smarthost_login)
        self.assertIsNone(account.smarthost_password)
        self.assertIsNone(account.gateway_login)

    def test_unused_attributes(self) -> None:
        """
        An attribute whose configured name is empty is not used.

        Its field keeps the default even though the entry has a value. Without a login
        attribute, the primary address is the lowest C{mail} value.
        """
        config = attrs.evolve(
            CONFIG,
            attributes=LDAPAttributes(alias="", login="", display_name="", smarthost_login=""),
        )
        account = self.find(self.directory(config), "alice@example.com")
        assert account is not None
        self.assertEqual(account.aliases, ("Alice@example.com",))
        self.assertEqual(account.login, "a.example@example.com")
        self.assertEqual(account.display_name, "")
        self.assertIsNone(account.smarthost_login)

    def test_value_order_does_not_matter(self) -> None:
        """
        LDAP returns the values of an attribute in no fixed order: an entry whose C{mail}
        values come back in either order gives the same account, so its mail goes to one
        Maildir. The primary address is the value whose local part is the login (C{uid});
        without such a value, the lowest one.
        """
        for uid, expected in [("carol", "carol@example.com"), ("cbx", "c.b@example.com")]:
            accounts = []
            for mails in (
                ["carol@example.com", "c.b@example.com", "Z@example.com"],
                ["Z@example.com", "c.b@example.com", "carol@example.com"],
            ):
                self.ldap.search_response = [
                    {
                        "type": "searchResEntry",
                        "dn": "uid=carol,ou=people,dc=example,dc=com",
                        "attributes": {"uid": [uid], "mail": mails},
                    }
                ]
                account = self.find(self.directory(), "z@example.com")
                assert account is not None
                accounts.append(account)
            first, second = accounts
            self.assertEqual(first, second)
            self.assertEqual(first.address, expected)
            self.assertEqual(first.mailbox, expected.split("@")[0])

    def test_mailbox_attribute(self) -> None:
        """
        With C{attributes.mailbox} set (C{uid}), the Maildir is named after its value, in
        whatever order the C{mail} values come; an entry without it falls back to the primary
        address's local part.
        """
        config = attrs.evolve(CONFIG, attributes=LDAPAttributes(mailbox="uid"))
        account = self.find(self.directory(config), "a.example@example.com")
        assert account is not None
        self.assertEqual((account.mailbox, account.address), ("alice", "Alice@example.com"))
        self.assertIn("uid", self.ldap.requested[-1])
        self.ldap.search_response = [
            {
                "type": "searchResEntry",
                "dn": "cn=x,dc=example,dc=com",
                "attributes": {"mail": ["x.y@example.com"]},
            }
        ]
        account = self.find(self.directory(config), "x.y@example.com")
        assert account is not None
        self.assertEqual(account.mailbox, "x.y")

    def test_disabled_account(self) -> None:
        """
        An entry whose status attribute holds a disabled value is a disabled account.

        The value is compared without regard to case or surrounding spaces. The account is
        found, but cannot log in even with the right password.
        """
        directory = self.directory()
        account = self.find(directory, "dave@example.com")
        assert account is not None
        self.assertFalse(account.enabled)
        self.assertIsNone(self.successResultOf(directory.authenticate("dave", "davepw")))

    def test_status_not_configured(self) -> None:
        """
        Without a status attribute every account is enabled.

        A status value in the entry then means nothing.
        """
        config = attrs.evolve(CONFIG, attributes=LDAPAttributes())
        account = self.find(self.directory(config), "dave@example.com")
        assert account is not None
        self.assertTrue(account.enabled)

    def test_entry_without_mail(self) -> None:
        """
        An entry that matches but has no usable mail address is bad data.

        The directory is unavailable, rather than answering "no such account".
        """
        config = attrs.evolve(CONFIG, filter="(uid={address})")
        self.ldap.add(
            "uid=x@example.com,ou=people,dc=example,dc=com",
            {"objectClass": ["inetOrgPerson"], "uid": "x@example.com", "cn": "X", "sn": "X"},
        )
        self.failureResultOf(self.directory(config).find("x@example.com"), DirectoryUnavailable)

    def test_ambiguous_find(self) -> None:
        """
        Two entries with the same address make the directory unavailable.

        So the message is kept, not bounced, and an error naming the entries is logged.
        """
        self.ldap.add(
            "uid=alice2,ou=people,dc=example,dc=com",
            {
                "objectClass": ["inetOrgPerson"],
                "uid": "alice2",
                "cn": "A",
                "sn": "A",
                "mail": ["alice@example.com"],
            },
        )
        self.failureResultOf(self.directory().find("alice@example.com"), DirectoryUnavailable)
        errors = [e for e in self.events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("alice2", formatEvent(errors[0]))
        self.assertEqual(errors[0]["rcpt"], "alice@example.com")

    def test_ambiguous_login(self) -> None:
        """
        A login that matches two entries makes the directory unavailable.

        Neither entry's password is tried.
        """
        self.ldap.add(
            "uid=bob,ou=other,dc=example,dc=com",
            {
                "objectClass": ["inetOrgPerson"],
                "uid": "bob",
                "cn": "B",
                "sn": "B",
                "mail": "b@example.com",
            },
        )
        self.failureResultOf(self.directory().authenticate("bob", "bobpw"), DirectoryUnavailable)

    def test_missing_base_dn(self) -> None:
        """
        A base DN that does not exist holds no accounts.

        The server's C{noSuchObject} is an answer, not a failure.
        """
        config = attrs.evolve(CONFIG, base_dn="ou=missing,dc=example,dc=com")
        self.assertIsNone(self.find(self.directory(config), "alice@example.com"))

    def test_domains(self) -> None:
        """
        The local domains are the configured ones.

        They are given in lower case.
        """
        self.assertEqual(
            self.successResultOf(self.directory().domains()),
            frozenset({"example.com", "example.org"}),
        )


class LDAPAuthenticationTests(SynchronousTestCase):
    """
    Password checks of L{LDAPDirectory}.

    Passwords are checked by a bind as the user, or by an LDAP compare.
    """

    def setUp(self) -> None:
        """
        Start a fake server with some accounts, and capture log events.

        The events are in C{self.events}.
        """
        self.ldap = FakeLDAP()
        self.ldap.add(ALICE, _alice())
        self.events = _capture_events(self)

    def directory(self, method: LDAPAuthMethod = LDAPAuthMethod.BIND) -> LDAPDirectory:
        """
        Make a directory on the fake server.

        @param method: how passwords are checked.
        @return: the directory.
        """
        config = attrs.evolve(CONFIG, auth_method=method)
        return LDAPDirectory(config, run_inline, connection_factory=self.ldap.connect)

    def test_bind_by_uid_and_mail(self) -> None:
        """
        The right password logs in by login name or by any address.

        Each check binds as the user's DN on a connection of its own, next to the one kept for
        searches.
        """
        directory = self.directory()
        for login in ("alice", "Alice@Example.COM", "a.example@example.com"):
            account = self.successResultOf(directory.authenticate(login, "alicepw"))
            assert account is not None
            self.assertEqual(account.address, "Alice@example.com")
        self.assertEqual(
            self.ldap.opened,
            [(ADMIN, "adminpw"), (ALICE, "alicepw"), (ALICE, "alicepw"), (ALICE, "alicepw")],
        )

    def test_bind_wrong_password(self) -> None:
        """
        A wrong password gives L{None}.

        So does an unknown login.
        """
        directory = self.directory()
        self.assertIsNone(self.successResultOf(directory.authenticate("alice", "wrong")))
        self.assertIsNone(self.successResultOf(directory.authenticate("nobody", "alicepw")))

    def test_empty_password(self) -> None:
        """
        An empty password or login is refused without asking the server.

        To LDAP, a bind with an empty password is an anonymous bind, which succeeds.
        """
        directory = self.directory()
        self.assertIsNone(self.successResultOf(directory.authenticate("alice", "")))
        self.assertIsNone(self.successResultOf(directory.authenticate("", "alicepw")))
        self.assertEqual(self.ldap.opened, [])

    def test_login_escaped(self) -> None:
        """
        Filter characters in a login are escaped.

        Wildcards and injected filter parts match nothing and log nobody in.
        """
        directory = self.directory()
        for login in ("*", "*)(uid=*", "alice)(|(uid=*", "al*"):
            self.assertIsNone(self.successResultOf(directory.authenticate(login, "alicepw")))
        self.assertIn("uid=\\2a\\29\\28uid=\\2a)", self.ldap.filters[1])
        self.assertNotIn((ALICE, "alicepw"), self.ldap.opened)

    def test_compare(self) -> None:
        """
        With C{auth_method = compare}, the password is compared on the search connection.

        The right one gives the account, a wrong one L{None}; no connection is made per login.
        """
        directory = self.directory(LDAPAuthMethod.COMPARE)
        account = self.successResultOf(directory.authenticate("alice", "alicepw"))
        assert account is not None
        self.assertEqual(account.login, "alice")
        self.assertIsNone(self.successResultOf(directory.authenticate("alice", "wrong")))
        self.assertEqual(self.ldap.opened, [(ADMIN, "adminpw")])

    def test_compare_refused(self) -> None:
        """
        A compare that the server refuses makes the directory unavailable.

        Missing access rights are never taken for a wrong password.
        """
        self.ldap.compare_result = {"result": 50, "description": "insufficientAccessRights"}
        directory = self.directory(LDAPAuthMethod.COMPARE)
        self.failureResultOf(directory.authenticate("alice", "alicepw"), DirectoryUnavailable)

    def test_passwords_never_logged(self) -> None:
        """
        Neither the user's password nor the service password appears in any log event.

        This holds on success, on a wrong password, on a retry and when the server is down.
        """
        directory = self.directory()
        self.successResultOf(directory.authenticate("alice", "alicepw"))
        self.successResultOf(directory.authenticate("alice", "wrong-pw-123"))
        self.ldap.search_failures = 1
        self.successResultOf(directory.authenticate("alice", "alicepw"))
        self.ldap.down = True
        self.ldap.search_failures = 1
        self.failureResultOf(directory.authenticate("alice", "alicepw"), DirectoryUnavailable)
        self.assertTrue(len(self.events) > 0)
        for event in self.events:
            text = formatEvent(event) + repr(event)
            for secret in ("alicepw", "wrong-pw-123", "adminpw"):
                self.assertNotIn(secret, text)


class LDAPFailureTests(SynchronousTestCase):
    """
    L{LDAPDirectory} retries a failed request once, on a new connection.

    When the retry fails too the directory is unavailable, never "no such account".
    """

    def setUp(self) -> None:
        """
        Start a fake server with some accounts, and capture log events.

        The events are in C{self.events}.
        """
        self.ldap = FakeLDAP()
        self.ldap.add(ALICE, _alice())
        self.directory = LDAPDirectory(CONFIG, run_inline, connection_factory=self.ldap.connect)
        self.events = _capture_events(self)

    def test_server_down(self) -> None:
        """
        When no connection can be made, lookups and logins fail with L{DirectoryUnavailable}.

        Each is tried twice, and logs a warning and then an error.
        """
        self.ldap.down = True
        self.failureResultOf(self.directory.find("alice@example.com"), DirectoryUnavailable)
        self.assertEqual(len(self.ldap.opened), 2)
        self.failureResultOf(self.directory.authenticate("alice", "alicepw"), DirectoryUnavailable)
        self.assertEqual(len(self.ldap.opened), 4)
        self.assertEqual([e["log_level"].name for e in self.events], ["warn", "error"] * 2)

    def test_dead_connection_recovers(self) -> None:
        """
        A kept connection that the server has closed is dropped.

        The request succeeds on a new connection, without an error, as after a server restart.
        """
        self.assertIsNotNone(self.successResultOf(self.directory.find("alice@example.com")))
        self.ldap.search_failures = 1
        self.assertIsNotNone(self.successResultOf(self.directory.find("alice@example.com")))
        self.assertEqual(len(self.ldap.opened), 2)
        retries = [e for e in self.events if "retrying" in e["log_format"]]
        self.assertEqual(len(retries), 1)
        self.assertEqual([e for e in self.events if e["log_level"].name == "error"], [])

    def test_fails_twice(self) -> None:
        """
        A request that fails on the retry too is L{DirectoryUnavailable}.

        The next request opens a new connection and works.
        """
        self.ldap.search_failures = 2
        self.failureResultOf(self.directory.find("alice@example.com"), DirectoryUnavailable)
        self.assertIsNotNone(self.successResultOf(self.directory.find("alice@example.com")))
        self.assertEqual(len(self.ldap.opened), 3)

    def test_unexpected_exception(self) -> None:
        """
        An exception that is not one of ldap3's own also makes the directory unavailable.

        ldap3 lets some errors of its socket code out as they are; both attempts log one with
        its traceback.
        """
        self.ldap.broken = struct.error("required argument is not an integer")
        self.failureResultOf(self.directory.find("alice@example.com"), DirectoryUnavailable)
        self.assertEqual(len(self.ldap.opened), 2)
        self.assertEqual(len(self.flushLoggedErrors(struct.error)), 2)

    def test_error_result(self) -> None:
        """
        A search result code other than success or C{noSuchObject} is a failure.

        Here the server answers C{busy}, and the directory is unavailable.
        """
        self.ldap.search_result = {"result": 51, "description": "busy", "type": "searchResDone"}
        self.failureResultOf(self.directory.find("alice@example.com"), DirectoryUnavailable)
        self.failureResultOf(self.directory.authenticate("alice", "alicepw"), DirectoryUnavailable)

    def test_service_bind_refused(self) -> None:
        """
        A refused bind with the configured service account makes the directory unavailable.

        It is neither "no such account" nor "wrong password".
        """
        config = attrs.evolve(CONFIG, bind_password=Secret("not-the-password"))
        directory = LDAPDirectory(config, run_inline, connection_factory=self.ldap.connect)
        self.failureResultOf(directory.find("alice@example.com"), DirectoryUnavailable)
        self.failureResultOf(directory.authenticate("alice", "alicepw"), DirectoryUnavailable)

    def test_close(self) -> None:
        """
        C{close} closes the kept connection, and the next request opens a new one.

        The closed connection is not used again.
        """
        made: list[ldap3.Connection] = []

        def factory(user: str | None, password: str | None) -> ldap3.Connection:
            made.append(self.ldap.connect(user, password))
            return made[-1]

        directory = LDAPDirectory(CONFIG, run_inline, connection_factory=factory)
        self.assertIsNotNone(self.successResultOf(directory.find("alice@example.com")))
        directory.close()
        self.assertTrue(made[0].closed)
        self.assertIsNotNone(self.successResultOf(directory.find("alice@example.com")))
        self.assertEqual(len(made), 2)
        self.assertFalse(made[1].closed)

    def test_anonymous(self) -> None:
        """
        Without a bind DN the service connection is anonymous.

        A configured bind password is then not sent.
        """
        config = attrs.evolve(CONFIG, bind_dn="")
        directory = LDAPDirectory(config, run_inline, connection_factory=self.ldap.connect)
        self.assertIsNotNone(self.successResultOf(directory.find("alice@example.com")))
        self.assertEqual(self.ldap.opened, [(None, None)])


class ConnectionFactoryTests(SynchronousTestCase):
    """
    L{default_connection_factory} makes connections with the configured settings.

    Making one does not connect.
    """

    def test_plain(self) -> None:
        """
        An C{ldap://} URL gives a thread-safe connection without TLS.

        The timeouts are set, and referrals are not followed.
        """
        config = attrs.evolve(
            CONFIG, url="ldap://127.0.0.1:3890", connect_timeout=2.5, receive_timeout=7.0
        )
        connection = default_connection_factory(config)(ADMIN, "adminpw")
        self.assertEqual(connection.strategy_type, ldap3.SAFE_SYNC)
        self.assertEqual((connection.server.host, connection.server.port), ("127.0.0.1", 3890))
        self.assertFalse(connection.server.ssl)
        self.assertIsNone(connection.server.tls)
        self.assertEqual(connection.server.connect_timeout, 2.5)
        self.assertEqual(connection.receive_timeout, 7)
        self.assertFalse(connection.auto_referrals)
        self.assertEqual(connection.user, ADMIN)

    def test_receive_timeout_whole_seconds(self) -> None:
        """
        The receive timeout is rounded up to whole seconds, at least one.

        ldap3 packs it into C{SO_RCVTIMEO} as an integer and fails on a fraction.
        """
        for timeout, expected in ((0.2, 1), (2.5, 3), (4.0, 4)):
            config = attrs.evolve(CONFIG, receive_timeout=timeout)
            connection = default_connection_factory(config)(None, None)
            self.assertEqual(connection.receive_timeout, expected)
            self.assertIsInstance(connection.receive_timeout, int)

    def test_ldaps(self) -> None:
        """
        An C{ldaps://} URL uses SSL, on port 636 by default.

        The server's certificate must verify against the configured CA file.
        """
        ca_file = self.mktemp()
        with open(ca_file, "w") as f:
            f.write("placeholder")
        config = attrs.evolve(CONFIG, url="ldaps://ldap.example.com", ca_file=ca_file)
        connection = default_connection_factory(config)(None, None)
        self.assertTrue(connection.server.ssl)
        self.assertEqual(connection.server.port, 636)
        self.assertEqual(connection.server.tls.validate, ssl.CERT_REQUIRED)
        self.assertEqual(connection.server.tls.ca_certs_file, ca_file)
        self.assertEqual(connection.server.tls.sni, "ldap.example.com")

    def test_start_tls(self) -> None:
        """
        With C{start_tls} the connection is plain at first.

        Without a CA file the certificate is verified against the system store.
        """
        config = attrs.evolve(CONFIG, url="ldap://ldap.example.com", start_tls=True)
        connection = default_connection_factory(config)(None, None)
        self.assertFalse(connection.server.ssl)
        self.assertEqual(connection.server.port, 389)
        self.assertEqual(connection.server.tls.validate, ssl.CERT_REQUIRED)
        self.assertIsNone(connection.server.tls.ca_certs_file)
