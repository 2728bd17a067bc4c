"""
Tests for L{mdtwist.smtp.tls}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.errors import ConfigError
from mdtwist.smtp.tls import ReloadableTLS, server_tls_options
from tests.support.tls import make_certificate


class ServerTLSOptionsTests(SynchronousTestCase):
    """
    The STARTTLS certificate is loaded and checked at start-up.
    """

    def test_loads(self) -> None:
        """
        A matching certificate and key give options whose context holds the certificate.
        """
        cert, key = make_certificate(Path(self.mktemp()))
        options = server_tls_options(cert, key)
        self.assertIsNotNone(options.getContext())

    def test_mismatched_key(self) -> None:
        """
        A key that does not belong to the certificate is a configuration error.
        """
        cert, _ = make_certificate(Path(self.mktemp()))
        _, other_key = make_certificate(Path(self.mktemp()))
        error = self.assertRaises(ConfigError, server_tls_options, cert, other_key)
        self.assertIn("not a usable certificate and key", error.problems[0])

    def test_not_a_certificate(self) -> None:
        """
        A file without a PEM certificate, or a missing file, is a configuration error.
        """
        base = Path(self.mktemp())
        _, key = make_certificate(base)
        self.assertRaises(ConfigError, server_tls_options, key, key)
        error = self.assertRaises(ConfigError, server_tls_options, base / "missing.pem", key)
        self.assertIn("cannot read", error.problems[0])


class ReloadableTLSTests(SynchronousTestCase):
    """
    L{ReloadableTLS}: the STARTTLS certificate read again on reload.
    """

    def _subject(self, tls: ReloadableTLS) -> str:
        certificate = tls.serverConnectionForTLS(None).get_certificate()
        assert certificate is not None
        return str(certificate.get_subject().CN)

    def test_reload(self) -> None:
        """
        New connections get the certificate the files hold after a reload; a reload that
        fails reports why and keeps the old certificate.
        """
        directory = Path(self.mktemp())
        cert, key = make_certificate(directory, "old.example")
        tls = ReloadableTLS(cert, key)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, tls))
        self.assertEqual(self._subject(tls), "old.example")
        make_certificate(directory, "new.example")
        self.assertEqual(self._subject(tls), "old.example")
        self.assertEqual(tls.reload(), [])
        self.assertEqual(self._subject(tls), "new.example")
        cert.write_text("not a certificate")
        [problem] = tls.reload()
        self.assertEqual(problem, f"{cert}: no PEM certificate in the file")
        self.assertEqual(self._subject(tls), "new.example")
