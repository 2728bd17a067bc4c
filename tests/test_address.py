"""
Tests for L{mdtwist.address}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.address import Address, address_key, parse_address


class AddressTests(SynchronousTestCase):
    """
    Addresses split at the last @ and compare without regard to case.
    """

    def test_split(self) -> None:
        """
        The domain is lower-cased and loses a trailing dot; the local part keeps its case.
        """
        self.assertEqual(parse_address("Alice@Example.COM."), Address("Alice", "example.com"))
        self.assertEqual(str(parse_address("Alice@Example.COM")), "Alice@example.com")

    def test_key(self) -> None:
        """
        The lookup key is all lower-case.
        """
        self.assertEqual(address_key("Alice@Example.COM"), "alice@example.com")

    def test_last_at(self) -> None:
        """
        A quoted local part holding an @ is split at the last one.
        """
        self.assertEqual(parse_address('"a@b"@c.test'), Address('"a@b"', "c.test"))

    def test_implausible(self) -> None:
        """
        Empty sides, missing @, controls, spaces, filter syntax and over-long text are refused.
        """
        for text in (
            "",
            "alice",
            "@a.test",
            "alice@",
            "a b@c.test",
            "a\x00@c.test",
            "*)(uid=*",
            "a(b)@c.test",
            "a\\2a@c.test",
            "x" * 250 + "@a.test",
        ):
            self.assertIsNone(parse_address(text), text)
