"""
Tests for L{mdtwist.directory.passwords}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.passwords import hash_password, is_supported_hash, verify_password
from tests.directory.test_file import ssha


class PasswordTests(SynchronousTestCase):
    """
    Stored hashes are checked; plain text and broken hashes never match.
    """

    def test_argon2id_round_trip(self) -> None:
        """
        A new hash is argon2id and matches only its own password.
        """
        stored = hash_password("correct horse")
        self.assertTrue(stored.startswith("$argon2id$"))
        self.assertTrue(verify_password(stored, "correct horse"))
        self.assertFalse(verify_password(stored, "correct horsE"))

    def test_openldap_argon2_prefix(self) -> None:
        """
        OpenLDAP's {ARGON2} prefix in front of an argon2id hash is accepted.
        """
        stored = "{ARGON2}" + hash_password("pw")
        self.assertTrue(is_supported_hash(stored))
        self.assertTrue(verify_password(stored, "pw"))

    def test_ssha(self) -> None:
        """
        An {SSHA} value (as slappasswd writes it) matches its password.
        """
        stored = ssha("secret", b"\x01\x02\x03\x04")
        self.assertTrue(is_supported_hash(stored))
        self.assertTrue(verify_password(stored, "secret"))
        self.assertFalse(verify_password(stored, "Secret"))

    def test_unsupported(self) -> None:
        """
        Plain text, other schemes and broken values are not supported and never match.
        """
        for stored in ("secret", "{SHA}abc", "{SSHA}!!!", "{SSHA}YWJj", "$argon2i$v=19$x"):
            self.assertFalse(is_supported_hash(stored), stored)
            self.assertFalse(verify_password(stored, "secret"), stored)

    def test_empty_password(self) -> None:
        """
        An empty password never matches.
        """
        self.assertFalse(verify_password(hash_password(""), ""))
