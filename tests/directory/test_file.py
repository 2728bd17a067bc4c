"""
Tests for L{mdtwist.directory.file}.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.directory.cache import CachedDirectory
from mdtwist.directory.file import AccountsWatch, FileDirectory
from mdtwist.directory.passwords import hash_password
from mdtwist.errors import ConfigError
from mdtwist.interfaces import IDirectory
from tests.support.logs import capture_logs
from tests.support.runners import run_inline

ALICE_HASH = hash_password("alicepw")


def ssha(password: str, salt: bytes = b"saltsalt") -> str:
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


ACCOUNTS = f"""
domains = ["Example.test"]

[[account]]
address = "alice@example.test"
password = "{ALICE_HASH}"
name = "Alice Example"
first_name = "Alice"
last_name = "Example"
aliases = ["a.example@Example.TEST"]
smarthost_login = "alice-relay"
smarthost_password = "relay-secret"

[[account]]
address = "bob@example.test"
login = "bob"
password = "{ssha("bobpw")}"

[[account]]
address = "dave@example.test"
password = "{ALICE_HASH}"
enabled = false
"""


class FileDirectoryTests(SynchronousTestCase):
    """
    The accounts file answers lookups and logins, and follows edits of the file.
    """

    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        self.path.write_text(ACCOUNTS)
        self.clock = Clock()
        self.directory = FileDirectory(self.path, run_inline)
        self.cache = CachedDirectory(
            self.directory, self.clock, ttl=60.0, negative_ttl=5.0, size=100
        )
        self.watch = AccountsWatch(self.directory.check, self.cache.forget, self.clock, 1.0)
        self.watch.startService()
        self.addCleanup(self.watch.stopService)

    def find(self, address: str) -> object:
        return self.successResultOf(self.directory.find(address))

    def test_interface(self) -> None:
        """
        The file directory provides L{IDirectory}.
        """
        self.assertTrue(verifyObject(IDirectory, self.directory))

    def test_find_primary_and_alias(self) -> None:
        """
        An account is found by its primary address and by its aliases, with all its fields.
        """
        alice = self.successResultOf(self.directory.find("alice@example.test"))
        assert alice is not None
        self.assertEqual(alice.mailbox, "alice")
        self.assertEqual(alice.domain, "example.test")
        self.assertEqual(alice.display_name, "Alice Example")
        self.assertEqual((alice.first_name, alice.last_name), ("Alice", "Example"))
        self.assertEqual(alice.aliases, ("a.example@example.test",))
        self.assertEqual(alice.smarthost_login, "alice-relay")
        assert alice.smarthost_password is not None
        self.assertEqual(alice.smarthost_password.reveal(), "relay-secret")
        self.assertIs(self.find("a.example@example.test"), alice)

    def test_find_ignores_case(self) -> None:
        """
        Domain and local part are compared without regard to case.
        """
        self.assertIs(self.find("ALICE@EXAMPLE.Test"), self.find("alice@example.test"))
        self.assertIsNotNone(self.find("alice@example.test."))

    def test_find_unknown(self) -> None:
        """
        Unknown and implausible addresses find nothing.
        """
        self.assertIsNone(self.find("carol@example.test"))
        self.assertIsNone(self.find("alice@other.test"))
        self.assertIsNone(self.find("*)(uid=*"))
        self.assertIsNone(self.find(""))

    def test_disabled_account_is_found_but_cannot_log_in(self) -> None:
        """
        A disabled account is found (so callers can refuse it) with enabled false, and its
        correct password does not log in.
        """
        dave = self.find("dave@example.test")
        assert dave is not None
        self.assertFalse(dave.enabled)  # type: ignore[attr-defined]
        self.assertIsNone(
            self.successResultOf(self.directory.authenticate("dave@example.test", "alicepw"))
        )

    def test_authenticate(self) -> None:
        """
        The right password logs in by address, alias or login name; argon2id and {SSHA} work.
        """
        alice = self.find("alice@example.test")
        for login in ("alice@example.test", "A.Example@example.test"):
            self.assertIs(
                self.successResultOf(self.directory.authenticate(login, "alicepw")), alice
            )
        bob = self.successResultOf(self.directory.authenticate("bob", "bobpw"))
        assert bob is not None
        self.assertEqual(bob.address, "bob@example.test")

    def test_authenticate_wrong(self) -> None:
        """
        A wrong or empty password, or an unknown login, does not log in.
        """
        for login, password in [
            ("alice@example.test", "wrong"),
            ("alice@example.test", ""),
            ("nobody@example.test", "alicepw"),
            ("bob", "BOBPW"),
        ]:
            self.assertIsNone(self.successResultOf(self.directory.authenticate(login, password)))

    def test_unknown_login_checks_a_hash(self) -> None:
        """
        An unknown login costs a password check too, so timing does not reveal which exist.
        """
        calls: list[str] = []

        def counting(f: Callable[..., object], *args: object) -> Deferred[object]:
            calls.append(getattr(f, "__name__", ""))
            return run_inline(f, *args)

        directory = FileDirectory(self.path, counting)
        self.successResultOf(directory.authenticate("nobody@example.test", "x"))
        self.assertEqual(calls, ["verify_password"])

    def test_domains(self) -> None:
        """
        The local domains are listed in lower case.
        """
        self.assertEqual(
            self.successResultOf(self.directory.domains()), frozenset({"example.test"})
        )

    def rewrite(self, text: str) -> None:
        self.path.write_text(text)
        # Make sure the change is visible even on a file system with coarse timestamps.
        info = os.stat(self.path)
        os.utime(self.path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))

    def test_reload_after_change(self) -> None:
        """
        An edit of the file is picked up by the watch after the check interval, without a
        restart and without waiting for the cache in front of the directory to expire.
        """
        events = capture_logs(self)
        found = self.successResultOf(self.cache.find("bob@example.test"))
        self.assertIsNotNone(found)
        self.rewrite(ACCOUNTS.replace("bob@example.test", "robert@example.test"))
        self.clock.advance(0.5)
        self.assertIsNotNone(self.successResultOf(self.cache.find("bob@example.test")))
        self.clock.advance(0.5)
        self.assertIsNone(self.successResultOf(self.cache.find("bob@example.test")))
        self.assertIsNotNone(self.successResultOf(self.cache.find("robert@example.test")))
        self.assertEqual([e["count"] for e in events if "reloaded:" in e["log_format"]], [4])

    def test_unchanged_file_is_not_read_again(self) -> None:
        """
        L{FileDirectory.check} reads nothing and says so when the file did not change.
        """
        self.assertFalse(self.directory.check())

    def test_bad_edit_keeps_last_good_data(self) -> None:
        """
        An edit that breaks the file is logged with one line per problem, once, and the old
        accounts stay.
        """
        events = capture_logs(self)
        self.rewrite(ACCOUNTS + "\n[[account]]\naddress = 'x@elsewhere.test'\n")
        self.clock.advance(1.0)
        self.clock.advance(1.0)
        self.assertIsNotNone(self.find("alice@example.test"))
        problems = [e["problem"] for e in events if "not reloaded" in e["log_format"]]
        self.assertEqual(len(problems), 2)
        self.assertIn("account[3].address: domain elsewhere.test is not in domains", problems[0])
        self.assertIn("account[3].password: required", problems[1])

    def test_watch_stops(self) -> None:
        """
        A stopped watch checks no more.
        """
        self.watch.stopService()
        self.rewrite(ACCOUNTS.replace("bob@example.test", "robert@example.test"))
        self.clock.advance(5.0)
        self.assertIsNotNone(self.find("bob@example.test"))

    def test_file_removed_keeps_last_good_data(self) -> None:
        """
        A removed file is logged and the old accounts stay.
        """
        capture_logs(self)
        self.path.unlink()
        self.clock.advance(1.0)
        self.assertIsNotNone(self.find("alice@example.test"))

    def test_reload_now(self) -> None:
        """
        L{FileDirectory.reload} reads the file at once, before the check interval has passed,
        and the next periodic check starts from then.
        """
        events = capture_logs(self)
        self.rewrite(ACCOUNTS.replace("bob@example.test", "robert@example.test"))
        self.assertEqual(self.directory.reload(), [])
        self.assertIsNone(self.find("bob@example.test"))
        self.assertIsNotNone(self.find("robert@example.test"))
        self.assertEqual([e["count"] for e in events if "reloaded" in e["log_format"]], [4])

    def test_reload_broken_file(self) -> None:
        """
        A broken file is not used by L{FileDirectory.reload}: it returns the problems and the
        last good accounts stay.
        """
        capture_logs(self)
        self.rewrite("domains = [")
        problems = self.directory.reload()
        self.assertEqual(len(problems), 1)
        self.assertIn("not valid TOML", problems[0])
        self.assertIsNotNone(self.find("alice@example.test"))


class AccountsFileErrorTests(SynchronousTestCase):
    """
    A bad accounts file at start-up stops start-up with one line per problem.
    """

    def problems(self, text: str) -> list[str]:
        path = Path(self.mktemp())
        path.write_text(text)
        error = self.assertRaises(ConfigError, FileDirectory, path, run_inline)
        return [line.split(": ", 1)[1] for line in error.problems]

    def test_missing_file(self) -> None:
        """
        A missing file is reported.
        """
        path = Path(self.mktemp())
        error = self.assertRaises(ConfigError, FileDirectory, path, run_inline)
        self.assertEqual(error.problems, (f"{path}: cannot read: No such file or directory",))

    def test_plain_password_refused(self) -> None:
        """
        A password that is not a supported hash is refused.
        """
        text = 'domains = ["a.test"]\n[[account]]\naddress = "x@a.test"\npassword = "plain"\n'
        self.assertEqual(
            self.problems(text),
            [
                "account[0].password: not an argon2id or {SSHA} hash "
                "(plain text passwords are not stored)"
            ],
        )

    def test_duplicate_address(self) -> None:
        """
        An address used by two accounts is refused, naming the entry it duplicates; so is a
        login.
        """
        text = (
            f'domains = ["a.test"]\n[[account]]\naddress = "x@a.test"\npassword = "{ALICE_HASH}"\n'
            f'[[account]]\naddress = "y@a.test"\naliases = ["X@a.test"]\n'
            f'password = "{ALICE_HASH}"\n'
        )
        self.assertEqual(
            self.problems(text),
            ["account[1]: address X@a.test is already used by account[0] (x@a.test)"],
        )
        text = (
            f'domains = ["a.test"]\n[[account]]\naddress = "x@a.test"\npassword = "{ALICE_HASH}"\n'
            f'login = "same"\n[[account]]\naddress = "y@a.test"\nlogin = "Same"\n'
            f'password = "{ALICE_HASH}"\n'
        )
        self.assertEqual(
            self.problems(text),
            ["account[1].login: login Same is already used by account[0] (x@a.test)"],
        )

    def test_unknown_and_wrong_keys(self) -> None:
        """
        Unknown keys and wrong types are named with their account index.
        """
        text = (
            'domains = ["a.test"]\nfoo = 1\n[[account]]\naddress = "x@a.test"\n'
            f'password = "{ALICE_HASH}"\nenabled = "yes"\nquota = 5\n'
        )
        self.assertEqual(
            sorted(self.problems(text)),
            [
                "account[0].enabled: expected true or false",
                "account[0].quota: unknown key",
                "foo: unknown key",
            ],
        )
