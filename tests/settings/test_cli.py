"""
Tests for C{mdtwistctl settings} (L{mdtwist.settings.cli}) through L{mdtwist.cli.main}.
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main
from mdtwist.settings.store import RECEIPTS_NAME, ReceiptStore
from tests.support.tls import make_certificate


class SettingsCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_certificate(self.root / "tls", "mail.example.test")
        self.config = self.root / "mdtwist.toml"
        tls = f"privateKey={self.root}/tls/key.pem:certKey={self.root}/tls/cert.pem"
        self.config.write_text(
            f"""
[server]
hostname = "mail.example.test"

[tls]
certificate = "tls/cert.pem"
private_key = "tls/key.pem"

[[smtp.listen]]
endpoint = "tcp:2587:interface=127.0.0.1"
mode = "submission"

[[smtp.listen]]
endpoint = "ssl:2465:interface=127.0.0.1:{tls}"
mode = "smtps"

[[http.listen]]
endpoint = "tcp:8443:interface=127.0.0.1"
tls = true

[directory]
backend = "file"

[directory.file]
path = "accounts.toml"

[spool]
directory = "spool"

[delivery]
maildir_root = "mail"
"""
        )

    def run_command(self, *args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["settings", *args, "--config", str(self.config)], stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    def test_set_then_noop(self) -> None:
        """
        Set saves a new revision; the same value again changes nothing.
        """
        code, out, _ = self.run_command("set", "general.organization", "Example $DOMAIN$")
        self.assertEqual(code, 0)
        self.assertIn("global: saved revision 1", out)
        path = self.root / "client-settings" / "global.toml"
        data = tomllib.loads(path.read_text())
        self.assertEqual(data["general"], {"organization": "Example $DOMAIN$"})
        code, out, _ = self.run_command("set", "general.organization", "Example $DOMAIN$")
        self.assertEqual((code, out), (0, "global: unchanged (revision 1)\n"))

    def test_unknown_macro_names_field(self) -> None:
        """
        An unknown macro is refused with the field named, and nothing is written.
        """
        code, _, err = self.run_command("set", "signature.text", "$COMPANY$")
        self.assertEqual(code, 1)
        self.assertEqual(
            err, "mdtwistctl: signature.text: unknown macro $COMPANY$ (see the macro reference)\n"
        )
        self.assertFalse((self.root / "client-settings").exists())

    def test_domain_unset_and_inherit(self) -> None:
        """
        A domain document takes fields, inherit false, and unset.
        """
        self.run_command("set", "--domain", "Example.test", "advanced.imap.port", "143")
        self.run_command("set", "--domain", "example.test", "inherit", "false")
        code, out, _ = self.run_command("unset", "--domain", "example.test", "advanced.imap.port")
        self.assertEqual((code, out.split(" to ")[0]), (0, "example.test: saved revision 3"))
        code, out, _ = self.run_command("show", "--domain", "example.test")
        data = tomllib.loads(out)
        self.assertEqual((data["revision"], data["inherit"]), (3, False))
        self.assertNotIn("advanced", data)

    def test_import_json_with_null(self) -> None:
        """
        Import takes a JSON document; null leaves a field to be inherited; errors name fields.
        """
        source = self.root / "import.json"
        source.write_text(json.dumps({"general": {"organization": "X", "email": None}}))
        self.assertEqual(self.run_command("import", str(source))[0], 0)
        code, out, _ = self.run_command("show", "--merged")
        merged = tomllib.loads(out)
        self.assertEqual(merged["general"]["organization"], "X")
        self.assertEqual(merged["general"]["email"], "$EMAIL$")
        self.assertEqual(merged["advanced"]["smtp"], {"port": 2465, "security": "implicit-tls"})
        source.write_text(json.dumps({"general": {"colour": "red"}}))
        code, _, err = self.run_command("import", str(source))
        self.assertEqual(code, 1)
        self.assertIn("import.json: general.colour: unknown setting", err)

    def test_srv(self) -> None:
        """
        Srv prints the records from the listeners: smtps preferred over submission.
        """
        code, out, _ = self.run_command("srv", "example.test")
        self.assertEqual(code, 0)
        lines = {line.split()[0]: line.split()[4:] for line in out.splitlines()}
        self.assertEqual(
            lines["_submissions._tcp.example.test."], ["0", "1", "2465", "mail.example.test."]
        )
        self.assertEqual(
            lines["_submission._tcp.example.test."], ["5", "1", "2587", "mail.example.test."]
        )
        self.assertEqual(
            lines["_autodiscover._tcp.example.test."], ["0", "1", "8443", "mail.example.test."]
        )

    def test_status_lists_clients_behind(self) -> None:
        """
        Status lists a client that did not apply what it was served.
        """
        self.assertEqual(self.run_command("status")[1], "no client has reported yet\n")
        (self.root / "spool").mkdir()
        receipts = ReceiptStore(self.root / "spool" / RECEIPTS_NAME)
        receipts.record_served("a@example.test", "v1-new", "", 1.0)
        receipts.record_applied("a@example.test", "laptop", "v1-old", "5.0", 2.0)
        receipts.record_served("b@example.test", "v1-x", "", 1.0)
        receipts.record_applied("b@example.test", "phone", "v1-x", "5.0", 2.0)
        receipts.close()
        code, out, _ = self.run_command("status")
        self.assertEqual(code, 0)
        self.assertEqual(
            out,
            "a@example.test  laptop  5.0  applied v1-old at 1970-01-01T00:00:02Z:"
            " has not applied the version it was served\n1 of 2 clients behind\n",
        )

    def test_references(self) -> None:
        """
        Fields and macros print the schema and the macro reference.
        """
        self.assertIn(
            "advanced.imap.security  choice implicit-tls|starttls|none",
            self.run_command("fields")[1],
        )
        self.assertIn("$FQDN$: ", self.run_command("macros")[1])
