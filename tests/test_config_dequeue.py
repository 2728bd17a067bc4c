"""
Tests for the C{[dequeue]} table of L{mdtwist.config}: the signals that ask a provider to
release held mail.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.config import DequeueConfig, DequeueSignalConfig, load_config
from mdtwist.dequeue.signal import SignalMode
from mdtwist.errors import ConfigError
from tests.test_config import GOOD

SIGNALS = """
[dequeue]
every = 3

[[dequeue.signal]]
domain = "Office.Example."
host = "mail.provider.test"
text = "ETRN office.example"

[[dequeue.signal]]
domain = "branch.example"
host = "192.0.2.9"
port = 366
text = "ATRN branch.example,branch.example.org"
login = "branch.example"
password_file = "atrn.secret"
allow_plaintext_auth = true

[[dequeue.signal]]
domain = "finger.example"
host = "isp.test"
port = 79
mode = "raw"
text = "office"
timeout = 5
enable = false
"""


class DequeueConfigTests(SynchronousTestCase):
    """
    The per-domain signals and the global "every N runs".
    """

    def write(self, text: str) -> Path:
        directory = Path(self.mktemp())
        directory.mkdir()
        path = directory / "mdtwist.toml"
        path.write_text(GOOD + text)
        secret = directory / "atrn.secret"
        secret.write_text("s3cret\n")
        os.chmod(secret, 0o600)
        return path

    def problems(self, text: str) -> list[str]:
        path = self.write(text)
        error = self.assertRaises(ConfigError, load_config, path)
        prefix = f"{path}: "
        for line in error.problems:
            self.assertTrue(line.startswith(prefix), line)
        return [line[len(prefix) :] for line in error.problems]

    def test_defaults(self) -> None:
        """Without the table there is no signal, and N is 0."""
        config = load_config(self.write(""))
        self.assertEqual(config.dequeue, DequeueConfig())

    def test_signals(self) -> None:
        """Every key is read; the domain is lower case without its trailing dot."""
        config = load_config(self.write(SIGNALS))
        self.assertEqual(config.dequeue.every, 3)
        etrn, atrn, finger = config.dequeue.signals
        self.assertEqual(
            etrn,
            DequeueSignalConfig(
                domain="office.example", host="mail.provider.test", text="ETRN office.example"
            ),
        )
        self.assertEqual(
            (atrn.port, atrn.login, atrn.allow_plaintext_auth), (366, "branch.example", True)
        )
        assert atrn.password is not None
        self.assertEqual(atrn.password.reveal(), "s3cret")
        self.assertEqual(
            (finger.mode, finger.port, finger.enable, finger.timeout),
            (SignalMode.RAW, 79, False, 5.0),
        )

    def test_atrn_needs_auth(self) -> None:
        """An ATRN without a login is refused, naming the key."""
        problems = self.problems(
            '[[dequeue.signal]]\ndomain = "a.example"\nhost = "h"\ntext = "ATRN a.example"\n'
        )
        self.assertEqual(
            problems, ["dequeue.signal[0].login: ATRN needs AUTH: set login and password"]
        )

    def test_bad_atrn_list(self) -> None:
        """A malformed ATRN list is refused."""
        problems = self.problems(
            '[[dequeue.signal]]\ndomain = "a.example"\nhost = "h"\nlogin = "l"\n'
            'password = "p"\ntext = "ATRN a.example,,b.example"\n'
        )
        self.assertEqual(problems, ["dequeue.signal[0].text: '' is not a domain name"])

    def test_auth_needs_ehlo(self) -> None:
        """AUTH without EHLO cannot work: refused."""
        problems = self.problems(
            '[[dequeue.signal]]\ndomain = "a.example"\nhost = "h"\nlogin = "l"\n'
            'password = "p"\nehlo = false\ntext = "ETRN a.example"\n'
        )
        self.assertEqual(
            problems,
            ["dequeue.signal[0].ehlo: AUTH needs EHLO: set ehlo = true or drop the login"],
        )

    def test_login_without_password(self) -> None:
        """A login needs a password."""
        problems = self.problems(
            '[[dequeue.signal]]\ndomain = "a.example"\nhost = "h"\nlogin = "l"\n'
        )
        self.assertEqual(
            problems, ["dequeue.signal[0].login: give both login and password (or password_file)"]
        )

    def test_raw_refuses_smtp_keys(self) -> None:
        """Raw mode has no EHLO, AUTH or ATRN."""
        problems = self.problems(
            '[[dequeue.signal]]\ndomain = "a.example"\nhost = "h"\nmode = "raw"\n'
            'login = "l"\npassword = "p"\ntext = "ATRN a.example"\n'
        )
        self.assertEqual(
            problems,
            [
                'dequeue.signal[0].login: has no meaning with mode = "raw"',
                'dequeue.signal[0].password: has no meaning with mode = "raw"',
                'dequeue.signal[0].mode: ATRN needs mode = "smtp"',
            ],
        )

    def test_bad_values(self) -> None:
        """Missing keys, bad types, a bad port, a text of two lines, N below 0, a repeat."""
        problems = self.problems(
            "[dequeue]\nevery = -1\n"
            '[[dequeue.signal]]\nhost = "h h"\nport = 70000\nmode = "telnet"\ntext = "a\\nb"\n'
            '[[dequeue.signal]]\ndomain = "x.example"\nhost = "h"\n'
            '[[dequeue.signal]]\ndomain = "X.example"\nhost = "h"\ncolour = 1\n'
        )
        self.assertEqual(
            problems,
            [
                "dequeue.every: must be 0 (every run) or more",
                "dequeue.signal[0].domain: required value is missing",
                "dequeue.signal[0].mode: must be one of 'smtp', 'raw', got 'telnet'",
                "dequeue.signal[0].port: must be at most 65535",
                "dequeue.signal[0].host: must be a host name or an IP address",
                "dequeue.signal[0].text: must be one line of printable ASCII, no outer spaces",
                "dequeue.signal[2].colour: unknown key",
                "dequeue.signal[2].domain: 'x.example' has a signal already",
            ],
        )
