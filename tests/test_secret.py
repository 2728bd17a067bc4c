"""
Tests for L{mdtwist.secret}.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.envelope import ClientInfo
from mdtwist.secret import Secret


class SecretTests(SynchronousTestCase):
    """
    A L{Secret} gives its value only when asked by name.
    """

    def test_reveal(self) -> None:
        """
        L{Secret.reveal} returns the value.
        """
        self.assertEqual(Secret("hunter2").reveal(), "hunter2")

    def test_repr_and_str_hide_the_value(self) -> None:
        """
        Neither C{repr} nor C{str} shows the value, also inside another value's repr.
        """
        secret = Secret("hunter2")
        for text in (
            repr(secret),
            str(secret),
            repr(ClientInfo("192.0.2.1", "h", password=secret)),
        ):
            self.assertNotIn("hunter2", text)
        self.assertEqual(repr(secret), "Secret('***')")

    def test_compared_by_value(self) -> None:
        """
        Two secrets with the same value are equal; a secret cannot be changed.
        """
        self.assertEqual(Secret("a"), Secret("a"))
        self.assertNotEqual(Secret("a"), Secret("b"))
        self.assertRaises(
            attrs.exceptions.FrozenInstanceError, setattr, Secret("a"), "_value", "b"
        )
