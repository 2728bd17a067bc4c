# -*- test-case-name: tests.smtp.test_tls -*-
"""
TLS settings for the SMTP listeners (STARTTLS).
"""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet.ssl import CertificateOptions, TLSVersion

from mdtwist.errors import ConfigError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def server_tls_options(certificate: Path, private_key: Path) -> CertificateOptions:
    """
    Build the server side of TLS from PEM files.

    @param certificate: the server certificate, optionally followed by its chain.
    @param private_key: the private key of the server certificate.
    @return: options for C{transport.startTLS}, TLS 1.2 or newer.
    @raise ConfigError: when a file cannot be read or does not hold what it should.
    """
    try:
        certs = _PEM_CERT.findall(certificate.read_bytes())
        if not certs:
            raise ConfigError([f"{certificate}: no PEM certificate in the file"])
        chain = [crypto.load_certificate(crypto.FILETYPE_PEM, pem) for pem in certs]
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, private_key.read_bytes())
        options = CertificateOptions(
            privateKey=key,
            certificate=chain[0],
            extraCertChain=chain[1:],
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )
        options.getContext()  # checks now that the key belongs to the certificate
        return options
    except OSError as e:
        raise ConfigError([f"{e.filename}: cannot read: {e.strerror}"]) from None
    except (crypto.Error, SSL.Error) as e:
        raise ConfigError(
            [f"{certificate}, {private_key}: not a usable certificate and key: {e}"]
        ) from None
