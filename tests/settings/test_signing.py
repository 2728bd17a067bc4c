"""
Tests for L{mdtwist.settings.signing}: signed profiles verify with OpenSSL.
"""

from __future__ import annotations

import base64
import plistlib
import shutil
import subprocess
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.settings.model import SettingsError
from mdtwist.settings.signing import ProfileSigner
from tests.settings.test_web import Harness
from tests.support.tls import make_certificate


def openssl_verify(signed: bytes, ca: Path, directory: Path) -> bytes:
    """
    Verify a DER CMS signature with the openssl program and return the signed content.
    """
    program = shutil.which("openssl")
    assert program is not None, "openssl is installed by tools/install-peers.sh"
    (directory / "signed.der").write_bytes(signed)
    subprocess.run(
        [
            program,
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(directory / "signed.der"),
            "-CAfile",
            str(ca),
            "-out",
            str(directory / "content"),
        ],
        check=True,
        capture_output=True,
    )
    return (directory / "content").read_bytes()


class SigningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.cert, self.key = make_certificate(self.directory / "signing", "profiles.example.test")

    def test_signed_profile_verifies(self) -> None:
        """
        The signature verifies against the signing certificate and holds the profile.
        """
        data = plistlib.dumps({"PayloadType": "Configuration"})
        signed = ProfileSigner(self.cert, self.key).sign(data)
        self.assertEqual(openssl_verify(signed, self.cert, self.directory), data)

    def test_served_signed(self) -> None:
        """
        With a signer, GET /mc/v1/apple.mobileconfig serves the signed profile.
        """
        harness = Harness(self.directory / "web")
        self.addCleanup(harness.receipts.close)
        harness.resource.sign_profile = ProfileSigner(self.cert, self.key).sign
        token = base64.b64encode(b"alice@example.test:alice-pw").decode()
        response = harness.request(
            "GET", "/mc/v1/apple.mobileconfig", headers={"Authorization": f"Basic {token}"}
        )
        self.assertEqual(response.status, 200)
        profile = plistlib.loads(openssl_verify(response.body, self.cert, self.directory))
        self.assertEqual(profile["PayloadContent"][0]["EmailAddress"], "alice@example.test")

    def test_key_must_match(self) -> None:
        """
        A key that is not the certificate's is refused, naming both files.
        """
        other_cert, _ = make_certificate(self.directory / "other")
        e = self.assertRaises(SettingsError, ProfileSigner, other_cert, self.key)
        self.assertIn("the key is not the certificate's", e.problems[0])
        e = self.assertRaises(SettingsError, ProfileSigner, self.directory / "none.pem", self.key)
        self.assertIn("cannot read", e.problems[0])
