# -*- test-case-name: tests.smtp.test_tls -*-
"""
TLS settings for the SMTP listeners (STARTTLS).
"""

from __future__ import annotations

import re
from pathlib import Path

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, TLSVersion
from zope.interface import implementer

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


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableTLS:
    """
    The STARTTLS context, read again from its files on L{reload} (C{mdtwistctl reload},
    SIGHUP): connections after a reload get the new certificate; running ones keep theirs.
    """

    def __init__(self, certificate: Path, private_key: Path) -> None:
        """
        Load the files now.

        @param certificate: the server certificate, optionally followed by its chain.
        @param private_key: the private key of the server certificate.
        @raise ConfigError: as L{server_tls_options}.
        """
        self._certificate = certificate
        self._private_key = private_key
        self._options = server_tls_options(certificate, private_key)

    def reload(self) -> list[str]:
        """
        Read the certificate and key again; on a problem the old ones stay in use.

        @return: the problems; empty when the new files are in use.
        """
        try:
            self._options = server_tls_options(self._certificate, self._private_key)
        except ConfigError as e:
            return list(e.problems)
        return []

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:  # noqa: N802, N803
        """
        Start the server side of one TLS connection with the current certificate.

        @param tlsProtocol: the TLS protocol (unused).
        @return: the OpenSSL connection.
        """
        return SSL.Connection(self._options.getContext(), None)
