"""Tests for L{mdtwist.directory.commands}: C{mdtwistctl account}."""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main
from mdtwist.config import Config
from mdtwist.directory import commands
from mdtwist.directory.file import parse_accounts
from mdtwist.directory.passwords import hash_password, verify_password
from mdtwist.minger.client import Peer, Result
from mdtwist.sharing.service import AccountCheck, SharingPeer

CONFIG = """
[server]
hostname = "mx.example.test"

[[smtp.listen]]
endpoint = "tcp:2525:interface=127.0.0.1"
mode = "mx"

[directory]
backend = "file"

[directory.file]
path = "accounts.toml"

[spool]
directory = "spool"

[control]
socket = "{socket}"

[delivery]
maildir_root = "mail"
"""

SHARING = """
[sharing]
enable = true

[[sharing.peers]]
host = "127.0.0.1:2526"
minger_port = 4069

[[sharing.peers]]
host = "127.0.0.2:2526"
minger_port = 4069
"""

HASH = hash_password("old-pw")

ACCOUNTS = f"""# Our accounts; keep this comment.
domains = ["example.test"]

[[account]]
address = "alice@example.test"
password = "{HASH}"
name = "Alice"   # the boss
aliases = ["boss@example.test"]

[[account]]
address = "bob@example.test"
password = "{HASH}"
enabled = false
"""


class AccountCommandTests(SynchronousTestCase):
    """
    The commands on a private configuration; no server runs, so nothing is reloaded.
    """

    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.directory.mkdir()
        self.config = self.directory / "mdtwist.toml"
        # Nothing listens there (a short path: a UNIX socket's is at most 107 bytes).
        short = Path(tempfile.mkdtemp(prefix="mdtwist-"))
        self.addCleanup(shutil.rmtree, short, ignore_errors=True)
        self.config.write_text(CONFIG.format(socket=short / "control.sock"))
        self.accounts = self.directory / "accounts.toml"
        self.accounts.write_text(ACCOUNTS)
        os.chmod(self.accounts, 0o640)
        self.asked: list[str] = []
        self.answers: dict[str, Result] = {}

        def ask_peers(config: Config, address: str) -> AccountCheck:
            self.asked.append(address)
            peers = [
                SharingPeer(peer.route, Peer(peer.host, peer.minger_port))
                for peer in config.sharing.peers
            ]
            return AccountCheck(
                tuple((peer, self.answers.get(peer.route, Result.UNKNOWN)) for peer in peers)
            )

        self.patch(commands, "ask_peers", ask_peers)

    def ctl(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(
            ["--config", str(self.config), *args], stdin=io.StringIO(stdin), stdout=out, stderr=err
        )
        return status, out.getvalue(), err.getvalue()

    def table(self) -> dict[str, object]:
        parsed = parse_accounts(self.accounts.read_bytes(), self.accounts)
        return {address: account for address, account in parsed.by_address.items()}

    def test_list(self) -> None:
        """
        One line per account with its state, name and aliases; C{--json} and C{--domain}.
        """
        status, out, err = self.ctl("account", "list")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out.splitlines(),
            [
                "alice@example.test  enabled   Alice  aliases: boss@example.test",
                "bob@example.test  disabled",
                "2 accounts",
            ],
        )
        status, out, _ = self.ctl("account", "list", "--json")
        rows = json.loads(out)
        self.assertEqual(rows[0]["login"], "alice@example.test")
        self.assertEqual([r["enabled"] for r in rows], [True, False])
        status, out, _ = self.ctl("account", "list", "--domain", "other.test")
        self.assertEqual(out, "0 accounts\n")

    def test_add(self) -> None:
        """
        The new account is in the file with the password's hash; the comments stay, the mode
        of the file too, and the note says the server is not running.
        """
        status, out, err = self.ctl(
            "account",
            "add",
            "carol@example.test",
            "--name",
            "Carol C",
            "--alias",
            "cc@example.test",
            stdin="carol-pw\n",
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.splitlines()[0], "Added carol@example.test")
        self.assertIn("Not reloaded: the server is not running", out)
        text = self.accounts.read_text()
        self.assertTrue(text.startswith("# Our accounts; keep this comment.\n"))
        self.assertIn("# the boss", text)
        self.assertEqual(os.stat(self.accounts).st_mode & 0o777, 0o640)
        parsed = parse_accounts(text.encode(), self.accounts)
        carol = parsed.by_address["cc@example.test"]
        self.assertEqual((carol.address, carol.display_name), ("carol@example.test", "Carol C"))
        self.assertTrue(verify_password(parsed.hashes["carol@example.test"], "carol-pw"))
        self.assertEqual(self.asked, [])  # no sharing configured
        self.assertEqual([p.name for p in self.directory.iterdir() if p.name.startswith(".")], [])

    def test_add_refused(self) -> None:
        """
        A used address, a foreign domain, a bad address or an empty password change nothing.
        """
        before = self.accounts.read_bytes()
        status, _, err = self.ctl("account", "add", "boss@example.test", stdin="x\n")
        self.assertEqual(status, 1)
        self.assertIn("address boss@example.test is already used by account[0]", err)
        status, _, err = self.ctl("account", "add", "x@other.test", stdin="x\n")
        self.assertIn("domain other.test is not in domains", err)
        status, _, err = self.ctl("account", "add", "not an address", stdin="x\n")
        self.assertIn("is not an address", err)
        status, _, err = self.ctl("account", "add", "dave@example.test", stdin="\n")
        self.assertEqual(err, "mdtwistctl: empty password\n")
        self.assertEqual(self.accounts.read_bytes(), before)

    def test_disable_enable_passwd(self) -> None:
        """
        Disable, enable and a new password change only that account.
        """
        self.assertEqual(self.ctl("account", "disable", "alice@example.test")[0], 0)
        self.assertFalse(self.table()["alice@example.test"].enabled)  # type: ignore[attr-defined]
        self.assertEqual(self.ctl("account", "enable", "bob@example.test")[0], 0)
        self.assertTrue(self.table()["bob@example.test"].enabled)  # type: ignore[attr-defined]
        status, out, _ = self.ctl("account", "passwd", "BOB@example.test", stdin="new-pw\n")
        self.assertEqual(out.splitlines()[0], "New password for bob@example.test")
        parsed = parse_accounts(self.accounts.read_bytes(), self.accounts)
        self.assertTrue(verify_password(parsed.hashes["bob@example.test"], "new-pw"))
        self.assertTrue(verify_password(parsed.hashes["alice@example.test"], "old-pw"))
        status, _, err = self.ctl("account", "disable", "boss@example.test")
        self.assertEqual(
            (status, err),
            (1, "mdtwistctl: boss@example.test is an alias of alice@example.test; name that\n"),
        )
        status, _, err = self.ctl("account", "disable", "nobody@example.test")
        self.assertEqual(err, "mdtwistctl: no account nobody@example.test\n")

    def test_broken_file(self) -> None:
        """
        A file with problems is not changed; its problems are named.
        """
        self.accounts.write_text(ACCOUNTS.replace('domains = ["example.test"]', "domains = 3"))
        status, _, err = self.ctl("account", "disable", "alice@example.test")
        self.assertEqual(status, 1)
        self.assertIn("domains: expected an array of strings", err)
        self.assertIn("has problems; fix them before changing it", err)

    def test_ldap_backend(self) -> None:
        """
        With LDAP there is no file to manage: said so.
        """
        text = self.config.read_text().replace(
            '[directory]\nbackend = "file"\n\n[directory.file]\npath = "accounts.toml"\n',
            '[directory]\nbackend = "ldap"\n\n[directory.ldap]\nurl = "ldap://127.0.0.1"\n'
            'base_dn = "dc=example"\ndomains = ["example.test"]\n',
        )
        self.config.write_text(text)
        status, _, err = self.ctl("account", "list")
        self.assertEqual(status, 1)
        self.assertIn("the accounts are in ldap, not in an accounts file", err)

    def test_sharing_all_unknown(self) -> None:
        """
        With Domain Sharing on, every peer is asked about the address and each alias; when all
        say unknown the account is added.
        """
        self.config.write_text(self.config.read_text() + SHARING)
        status, out, err = self.ctl(
            "account", "add", "carol@example.test", "--alias", "cc@example.test", stdin="pw\n"
        )
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.asked, ["carol@example.test", "cc@example.test"])
        self.assertIn("carol@example.test: 127.0.0.1:2526  unknown\n", out)
        self.assertIn("carol@example.test", self.table())

    def test_sharing_exists_on_peer(self) -> None:
        """
        A peer that has the address refuses the account, even with C{--force}.
        """
        self.config.write_text(self.config.read_text() + SHARING)
        self.answers["127.0.0.2:2526"] = Result.ACTIVE
        before = self.accounts.read_bytes()
        status, _, err = self.ctl("account", "add", "carol@example.test", "--force", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("carol@example.test exists on the Domain Sharing peer 127.0.0.2:2526", err)
        self.assertEqual(self.accounts.read_bytes(), before)

    def test_sharing_peer_silent(self) -> None:
        """
        A peer that cannot be asked refuses the account unless C{--force}.
        """
        self.config.write_text(self.config.read_text() + SHARING)
        self.answers["127.0.0.1:2526"] = Result.TIMEOUT
        status, _, err = self.ctl("account", "add", "carol@example.test", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("cannot verify that no Domain Sharing peer has the address", err)
        self.assertIn("--force adds it anyway", err)
        self.assertNotIn("carol@example.test", self.table())
        status, _, err = self.ctl("account", "add", "carol@example.test", "--force", stdin="pw\n")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("carol@example.test", self.table())
