"""
An in-memory account directory for tests of whatever asks one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mdtwist.address import address_key
from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory

#: The account of L{FakeDirectory} when none are given: alice, who logs in as C{alice}.
ALICE = Account(address="alice@example.com", mailbox="alice", domain="example.com", login="alice")


@implementer(IDirectory)
class FakeDirectory:
    """
    An in-memory directory: by default one account C{alice@example.com} (login C{alice},
    password C{secret}) in the local domain C{example.com}.

    @ivar accounts: the accounts.
    @ivar account: the first account (alice by default).
    @ivar local_domains: the local domains.
    @ivar passwords: the password of each login.
    @ivar unavailable: when set, every call fails with L{DirectoryUnavailable}.
    @ivar lookups: the addresses given to L{find}, in order.
    @ivar logins: the logins given to L{authenticate}, in order.
    """

    def __init__(
        self,
        accounts: Iterable[Account] = (ALICE,),
        domains: Iterable[str] = ("example.com",),
        passwords: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param accounts: the accounts.
        @param domains: the local domains.
        @param passwords: the password of each login; by default C{alice} has C{secret}.
        """
        self.accounts = list(accounts)
        self.local_domains = frozenset(domains)
        self.passwords = dict(passwords if passwords is not None else {"alice": "secret"})
        self.unavailable = False
        self.lookups: list[str] = []
        self.logins: list[str] = []

    @property
    def account(self) -> Account:
        """The first account."""
        return self.accounts[0]

    def _owner(self, address: str) -> Account | None:
        key = address_key(address)
        for account in self.accounts:
            if key in {address_key(a) for a in account.addresses}:
                return account
        return None

    def find(self, address: str) -> Deferred[Account | None]:
        """
        Find the account that has C{address} among its addresses, ignoring case.

        @param address: the address.
        @return: a Deferred with the account or L{None}.
        """
        self.lookups.append(address)
        if self.unavailable:
            return fail(DirectoryUnavailable("directory down"))
        return succeed(self._owner(address))

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        """
        Check a password given with a login name or an account's address.

        @param login: the login.
        @param password: the password.
        @return: a Deferred with the account when both are right, else L{None}.
        """
        self.logins.append(login)
        if self.unavailable:
            return fail(DirectoryUnavailable("directory down"))
        account = next((a for a in self.accounts if a.login == login), None)
        if account is None and "@" in login:
            account = self._owner(login)
        if account is None or self.passwords.get(account.login) != password:
            return succeed(None)
        return succeed(account)

    def domains(self) -> Deferred[frozenset[str]]:
        """
        List the local domains.

        @return: a Deferred with the domains.
        """
        if self.unavailable:
            return fail(DirectoryUnavailable("directory down"))
        return succeed(self.local_domains)
