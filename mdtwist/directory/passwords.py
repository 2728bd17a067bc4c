# -*- test-case-name: tests.directory.test_passwords -*-
"""
Stored password hashes: argon2id (what we write) and C{{SSHA}} (what LDIF exports carry).

A stored value is one of:
  - C{$argon2id$...}, or the same behind OpenLDAP's C{{ARGON2}} prefix;
  - C{{SSHA}base64(sha1(password + salt) + salt)}.
Anything else never matches: plain text passwords are not accepted in the accounts file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

_HASHER = PasswordHasher()
_SSHA = "{SSHA}"
_ARGON2 = "{ARGON2}"


def hash_password(password: str) -> str:
    """
    @param password: a new password.
    @return: its argon2id hash, in the PHC string form.
    """
    return _HASHER.hash(password)


def is_supported_hash(stored: str) -> bool:
    """
    @param stored: a value from the accounts file.
    @return: whether it has a form that L{verify_password} can check.
    """
    if stored.upper().startswith(_SSHA):
        return _ssha_parts(stored) is not None
    return _argon2_part(stored).startswith("$argon2id$")


def verify_password(stored: str, password: str) -> bool:
    """
    Check a password against a stored hash, in constant time for a given hash.

    @param stored: the stored hash.
    @param password: the password to check.
    @return: whether they match. An empty password never matches.
    """
    if not password:
        return False
    if stored.upper().startswith(_SSHA):
        parts = _ssha_parts(stored)
        if parts is None:
            return False
        digest, salt = parts
        candidate = hashlib.sha1(password.encode("utf-8") + salt).digest()
        return hmac.compare_digest(candidate, digest)
    try:
        return _HASHER.verify(_argon2_part(stored), password)
    except (Argon2Error, InvalidHashError):
        return False


def _argon2_part(stored: str) -> str:
    return stored[len(_ARGON2) :] if stored.upper().startswith(_ARGON2) else stored


def _ssha_parts(stored: str) -> tuple[bytes, bytes] | None:
    try:
        raw = base64.b64decode(stored[len(_SSHA) :], validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) <= 20:
        return None
    return raw[:20], raw[20:]
