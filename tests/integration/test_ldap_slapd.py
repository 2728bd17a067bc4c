"""
Integration tests of L{mdtwist.directory.ldap} against a real OpenLDAP slapd.

Each test builds its own slapd (see L{tests.integration.slapd}) on free loopback ports and talks
to it from a real thread pool, as the server does.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads
from twisted.trial.unittest import TestCase

from mdtwist.config import LDAPAttributes, LDAPAuthMethod
from mdtwist.directory.ldap import LDAPDirectory
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.secret import Secret
from mdtwist.threadpool import ThreadPoolService
from tests.integration.slapd import (
    PASSWORDS,
    ROOT_DN,
    ROOT_PASSWORD,
    Slapd,
    directory_config,
    start_slapd,
)

#: Attempts to get past the filter with special characters in an address or login.
INJECTIONS = ("*)(uid=*", "*", "alice@example.com)(|(mail=*", "*@example.com", "alice*", "a\\2a")


class _SlapdTestCase(TestCase):
    """
    Common set-up: a running slapd and the directory's thread pool.

    Both are stopped at clean-up.
    """

    tls = False

    def setUp(self) -> None:
        """
        Start slapd, then a thread pool for the directory.

        Clean-ups run in reverse: the pool stops first, then slapd.
        """
        self.slapd: Slapd = start_slapd(self, tls=self.tls)
        self.pool = ThreadPoolService(cast(IReactorFromThreads, reactor), "directory", 4)
        self.pool.startService()
        self.addCleanup(self.pool.stopService)

    def directory(self, **changes: Any) -> LDAPDirectory:
        """
        Make a directory for this slapd.

        @param changes: settings that differ from L{directory_config}.
        @return: the directory, running its requests on the pool.
        """
        directory = LDAPDirectory(directory_config(self.slapd, **changes), self.pool.run)
        self.addCleanup(directory.close)
        return directory

    async def find(self, directory: LDAPDirectory, address: str) -> Account:
        """
        Look up an address that must be found.

        @param directory: the directory.
        @param address: the address.
        @return: the account.
        """
        account = await directory.find(address)
        if account is None:
            self.fail(f"{address} was not found")
        return account


class SlapdLookupTests(_SlapdTestCase):
    """
    Lookups by address against slapd.

    Addresses are compared without regard to case, and filter characters are only literals.
    """

    async def test_primary_address(self) -> None:
        """
        The primary address finds the account with all its attributes.

        The C{mail} values after the first and the C{mailLocalAddress} values are aliases.
        """
        account = await self.find(self.directory(), "alice@example.com")
        self.assertEqual(
            account,
            Account(
                address="alice@example.com",
                mailbox="alice",
                domain="example.com",
                login="alice",
                aliases=("a.example@example.com", "ally@example.org"),
                display_name="Alice Example",
                first_name="Alice",
                last_name="Example",
                enabled=True,
            ),
        )

    async def test_primary_not_by_value_order(self) -> None:
        """
        The server returns C{mail} values in the order they were stored; the primary address (and
        so the Maildir) does not follow it: it is the value whose local part is the C{uid},
        else the lowest value, found by any of the addresses.
        """
        directory = self.directory()
        for address in ("zz.grace@example.com", "grace@example.com"):
            account = await self.find(directory, address)
            assert account is not None
            self.assertEqual(
                (account.address, account.mailbox, account.aliases),
                ("grace@example.com", "grace", ("zz.grace@example.com",)),
            )
        account = await self.find(directory, "zz.heidi@example.com")
        assert account is not None
        self.assertEqual((account.address, account.mailbox), ("b.heidi@example.com", "b.heidi"))
        named = self.directory(
            attributes=LDAPAttributes(
                alias="mailLocalAddress", status="employeeType", mailbox="uid"
            )
        )
        account = await self.find(named, "b.heidi@example.com")
        assert account is not None
        self.assertEqual(account.mailbox, "hg")

    async def test_aliases(self) -> None:
        """
        A second C{mail} value and a C{mailLocalAddress} value find the same account.

        The account's address is still the first C{mail} value.
        """
        directory = self.directory()
        for address in ("a.example@example.com", "ally@example.org"):
            account = await self.find(directory, address)
            self.assertEqual(account.address, "alice@example.com")

    async def test_case_insensitive(self) -> None:
        """
        Local part and domain are matched without regard to case.

        Bob's C{mail} is stored as C{Bob@Example.COM}; his primary address keeps the local part
        as stored and has the domain in lower case.
        """
        directory = self.directory()
        for address in ("ALICE@Example.Com", "A.Example@EXAMPLE.COM", "Ally@example.ORG"):
            account = await self.find(directory, address)
            self.assertEqual(account.login, "alice")
        bob = await self.find(directory, "bob@example.com")
        self.assertEqual((bob.address, bob.login), ("Bob@example.com", "bob"))

    async def test_unknown(self) -> None:
        """
        Addresses that no entry has find nothing.

        This includes a known local part in another domain.
        """
        directory = self.directory()
        for address in ("nobody@example.com", "alice@example.org", "alice@example.net"):
            self.assertIsNone(await directory.find(address))

    async def test_disabled(self) -> None:
        """
        Dave's C{employeeType: disabled} makes his account disabled.

        It is found, but cannot log in with the right password.
        """
        directory = self.directory()
        dave = await self.find(directory, "dave@example.com")
        self.assertFalse(dave.enabled)
        self.assertIsNone(await directory.authenticate("dave", PASSWORDS["dave"]))
        alice = await self.find(directory, "alice@example.com")
        self.assertTrue(alice.enabled)

    async def test_ambiguous(self) -> None:
        """
        An address that two entries have makes the directory unavailable.

        The message is kept (4xx) instead of going to one of them or bouncing.
        """
        directory = self.directory()
        with self.assertRaises(DirectoryUnavailable):
            await directory.find("shared@example.com")
        with self.assertRaises(DirectoryUnavailable):
            await directory.authenticate("shared@example.com", PASSWORDS["erin"])

    async def test_filter_injection(self) -> None:
        """
        Filter characters in an address match only themselves.

        Wildcards and injected filter parts find nothing.
        """
        directory = self.directory()
        for address in INJECTIONS:
            self.assertIsNone(await directory.find(address), address)

    async def test_service_account(self) -> None:
        """
        Lookups work with a service bind DN too.

        A wrong service password is "unavailable", never "no such account".
        """
        directory = self.directory(bind_dn=ROOT_DN, bind_password=Secret(ROOT_PASSWORD))
        account = await self.find(directory, "carol@example.org")
        self.assertEqual(account.login, "carol")
        wrong = self.directory(bind_dn=ROOT_DN, bind_password=Secret("wrong"))
        with self.assertRaises(DirectoryUnavailable):
            await wrong.find("carol@example.org")
        with self.assertRaises(DirectoryUnavailable):
            await wrong.authenticate("carol", PASSWORDS["carol"])

    async def test_domains(self) -> None:
        """
        The local domains are the configured ones.

        LDAP is not asked.
        """
        self.assertEqual(
            await self.directory().domains(), frozenset({"example.com", "example.org"})
        )


class SlapdAuthenticationTests(_SlapdTestCase):
    """
    Logins against slapd, by bind as the user and by compare.

    Every password storage scheme slapd knows works with bind.
    """

    async def test_password_schemes(self) -> None:
        """
        Alice ({SSHA}), Bob (plain) and Carol ({CRYPT}) log in with their passwords.

        Each login gives the account.
        """
        directory = self.directory()
        for login, address in (
            ("alice", "alice@example.com"),
            ("bob", "Bob@example.com"),
            ("carol", "carol@example.org"),
        ):
            account = await directory.authenticate(login, PASSWORDS[login])
            self.assertIsNotNone(account, login)
            assert account is not None
            self.assertEqual(account.address, address)

    async def test_login_by_mail(self) -> None:
        """
        Any C{mail} value works as the login, in any case.

        The account is the same as by uid.
        """
        directory = self.directory()
        for login, user in (
            ("alice@example.com", "alice"),
            ("A.Example@Example.com", "alice"),
            ("bob@example.com", "bob"),
            ("carol@EXAMPLE.org", "carol"),
        ):
            account = await directory.authenticate(login, PASSWORDS[user])
            self.assertIsNotNone(account, login)
            assert account is not None
            self.assertEqual(account.login, user)

    async def test_wrong_password(self) -> None:
        """
        A wrong password, another account's password or an unknown login gives L{None}.

        None of these is an error.
        """
        directory = self.directory()
        self.assertIsNone(await directory.authenticate("alice", "wrong"))
        self.assertIsNone(await directory.authenticate("alice", PASSWORDS["bob"]))
        self.assertIsNone(await directory.authenticate("carol", "carolpw2"))
        self.assertIsNone(await directory.authenticate("nobody", "alicepw"))

    async def test_empty_password(self) -> None:
        """
        An empty password never logs in.

        slapd would accept it as an anonymous bind.
        """
        self.assertIsNone(await self.directory().authenticate("alice", ""))

    async def test_filter_injection(self) -> None:
        """
        Wildcards and injected filter parts in a login log nobody in.

        Each is tried with every known password.
        """
        directory = self.directory()
        for login in INJECTIONS:
            for password in PASSWORDS.values():
                self.assertIsNone(await directory.authenticate(login, password), login)

    async def test_compare(self) -> None:
        """
        With C{auth_method = compare}, the password is compared by the service account.

        The root DN may compare C{userPassword}; Bob's plain password matches, a wrong one
        does not.
        """
        directory = self.directory(
            bind_dn=ROOT_DN,
            bind_password=Secret(ROOT_PASSWORD),
            auth_method=LDAPAuthMethod.COMPARE,
        )
        account = await directory.authenticate("bob", PASSWORDS["bob"])
        self.assertIsNotNone(account)
        self.assertIsNone(await directory.authenticate("bob", "wrong"))

    async def test_compare_not_allowed(self) -> None:
        """
        An anonymous service connection may not compare passwords.

        The directory is then unavailable: no password is taken as wrong.
        """
        directory = self.directory(auth_method=LDAPAuthMethod.COMPARE)
        with self.assertRaises(DirectoryUnavailable):
            await directory.authenticate("bob", PASSWORDS["bob"])


class SlapdRestartTests(_SlapdTestCase):
    """
    A stopped slapd is "unavailable", and a restarted one works again.

    The same directory object is used throughout.
    """

    async def test_stop_and_start(self) -> None:
        """
        While slapd is stopped, lookups and logins fail with L{DirectoryUnavailable}.

        They never answer "no such account". After a restart on the same port they work again
        at once, through the same L{LDAPDirectory}, though its kept connections are dead.
        """
        directory = self.directory()
        # Open connections on several pool threads.
        for _ in range(4):
            await self.find(directory, "alice@example.com")
            self.assertIsNotNone(await directory.authenticate("bob", PASSWORDS["bob"]))

        self.slapd.stop()
        for _ in range(3):
            with self.assertRaises(DirectoryUnavailable):
                await directory.find("alice@example.com")
            with self.assertRaises(DirectoryUnavailable):
                await directory.find("nobody@example.com")
            with self.assertRaises(DirectoryUnavailable):
                await directory.authenticate("bob", PASSWORDS["bob"])

        self.slapd.start()
        for _ in range(4):
            account = await self.find(directory, "alice@example.com")
            self.assertEqual(account.login, "alice")
            self.assertIsNone(await directory.find("nobody@example.com"))
            self.assertIsNotNone(await directory.authenticate("bob", PASSWORDS["bob"]))

    async def test_restart_between_requests(self) -> None:
        """
        A restart between two requests costs no error.

        The dead kept connection is replaced on the spot.
        """
        directory = self.directory()
        await self.find(directory, "alice@example.com")
        self.slapd.stop()
        self.slapd.start()
        account = await self.find(directory, "alice@example.com")
        self.assertEqual(account.login, "alice")


class SlapdTLSTests(_SlapdTestCase):
    """
    LDAPS and StartTLS against slapd with a certificate from a test CA.

    A certificate that the configured CA did not sign is refused.
    """

    tls = True

    async def _check_works(self, **changes: Any) -> None:
        # A lookup and a login (which binds on a connection of its own) both work.
        directory = self.directory(**changes)
        account = await self.find(directory, "alice@example.com")
        self.assertEqual(account.login, "alice")
        self.assertIsNotNone(await directory.authenticate("alice", PASSWORDS["alice"]))

    async def _check_refused(self, **changes: Any) -> None:
        # Both a lookup and a login fail as unavailable.
        directory = self.directory(**changes)
        with self.assertRaises(DirectoryUnavailable):
            await directory.find("alice@example.com")
        with self.assertRaises(DirectoryUnavailable):
            await directory.authenticate("alice", PASSWORDS["alice"])

    async def test_ldaps(self) -> None:
        """
        An C{ldaps://} URL with the CA that signed the server certificate works.

        Lookups and logins go over TLS.
        """
        await self._check_works(url=self.slapd.tls_url, ca_file=self.slapd.ca_file)

    async def test_ldaps_wrong_ca(self) -> None:
        """
        An C{ldaps://} server whose certificate the configured CA did not sign is unavailable.

        No request is sent over the unverified connection.
        """
        await self._check_refused(url=self.slapd.tls_url, ca_file=self.slapd.other_ca_file)

    async def test_ldaps_system_store(self) -> None:
        """
        Without a CA file the system store is used, and it does not know the test CA.

        The directory is then unavailable.
        """
        await self._check_refused(url=self.slapd.tls_url)

    async def test_start_tls(self) -> None:
        """
        StartTLS on the plain port with the right CA works.

        Lookups and logins go over TLS.
        """
        await self._check_works(start_tls=True, ca_file=self.slapd.ca_file)

    async def test_start_tls_wrong_ca(self) -> None:
        """
        StartTLS with a CA that did not sign the server certificate is unavailable.

        The connection is not used without TLS either.
        """
        await self._check_refused(start_tls=True, ca_file=self.slapd.other_ca_file)

    async def test_ldaps_wrong_name(self) -> None:
        """
        A certificate from the right CA that does not name the server's host is refused.

        Here a second slapd has a certificate for C{other.example} only.
        """
        other = start_slapd(self, tls=True, certificate_names=("DNS:other.example",))
        directory = LDAPDirectory(
            directory_config(other, url=other.tls_url, ca_file=other.ca_file), self.pool.run
        )
        self.addCleanup(directory.close)
        with self.assertRaises(DirectoryUnavailable):
            await directory.find("alice@example.com")

    async def test_attributes_over_tls(self) -> None:
        """
        The attribute mapping is the same over TLS.

        Here the alias attribute is switched off in the settings.
        """
        directory = self.directory(
            url=self.slapd.tls_url,
            ca_file=self.slapd.ca_file,
            attributes=LDAPAttributes(alias="", status="employeeType"),
        )
        account = await self.find(directory, "alice@example.com")
        self.assertEqual(account.aliases, ("a.example@example.com",))
