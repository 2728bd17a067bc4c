"""
Tests for L{mdtwist.directory.model}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.model import Account


class AccountTests(SynchronousTestCase):
    """
    An account answers to its primary address and its aliases.
    """

    def test_addresses(self) -> None:
        """
        L{Account.addresses} lists the primary address first, then the aliases in order.
        """
        account = Account(
            "alice@example.test",
            "alice",
            "example.test",
            "alice@example.test",
            aliases=("a@example.test", "ali@example.test"),
        )
        self.assertEqual(
            account.addresses, ("alice@example.test", "a@example.test", "ali@example.test")
        )

    def test_defaults(self) -> None:
        """
        A new account is enabled and has no smart-host or gateway login of its own.
        """
        account = Account("bob@example.test", "bob", "example.test", "bob")
        self.assertEqual(account.addresses, ("bob@example.test",))
        self.assertTrue(account.enabled)
        self.assertIsNone(account.smarthost_login)
        self.assertIsNone(account.gateway_login)
