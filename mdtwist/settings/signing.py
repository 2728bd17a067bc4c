# -*- test-case-name: tests.settings.test_signing -*-
"""
Signing Apple configuration profiles (CMS SignedData, DER), so devices show them as verified.

Use a certificate of its own for this (not the web server's TLS key): the signature only says
who made the profile.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from mdtwist.settings.model import SettingsError


class ProfileSigner:
    """
    Signs profiles with one certificate (and sends its chain along).
    """

    def __init__(self, certificate: Path, private_key: Path) -> None:
        """
        @param certificate: PEM: the signing certificate, then its chain.
        @param private_key: PEM: its private key (RSA or EC).
        @raise SettingsError: when the files cannot be read or do not belong together.
        """
        try:
            chain = x509.load_pem_x509_certificates(certificate.read_bytes())
            key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
        except OSError as e:
            raise SettingsError([f"{e.filename}: cannot read: {e.strerror}"]) from None
        except ValueError as e:
            raise SettingsError([f"{certificate}, {private_key}: not usable: {e}"]) from None
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise SettingsError([f"{private_key}: the key must be RSA or EC"])
        if chain[0].public_key() != key.public_key():
            raise SettingsError(
                [f"{certificate}, {private_key}: the key is not the certificate's"]
            )
        self._certificate = chain[0]
        self._chain = chain[1:]
        self._key = key

    def sign(self, data: bytes) -> bytes:
        """
        @param data: the profile (a property list).
        @return: the signed profile: DER CMS SignedData with the profile inside.
        """
        builder = pkcs7.PKCS7SignatureBuilder().set_data(data)
        builder = builder.add_signer(self._certificate, self._key, hashes.SHA256())
        for extra in self._chain:
            builder = builder.add_certificate(extra)
        signed: bytes = builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        return signed
