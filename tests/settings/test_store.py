"""
Tests for L{mdtwist.settings.store}: the TOML documents and the receipts.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mdtwist.interfaces import ISettingsSource
from mdtwist.settings.model import (
    GLOBAL,
    Security,
    ServerFacts,
    Service,
    SettingsDocument,
    SettingsError,
)
from mdtwist.settings.store import (
    Policy,
    Receipt,
    ReceiptStore,
    SettingsSource,
    SettingsStore,
    behind,
    check_domain,
)


class SettingsStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(self.mktemp())
        self.store = SettingsStore(self.directory)
        self.store.load()

    def test_empty_directory(self) -> None:
        """
        A directory that does not exist yet holds no documents.
        """
        self.assertEqual(self.store.scopes(), [])
        self.assertIsNone(self.store.document(GLOBAL))
        self.assertEqual(self.store.document_or_empty("a.test").revision, 0)

    def test_save_and_load(self) -> None:
        """
        Saved documents are TOML files beside each other and read back the same.
        """
        document = SettingsDocument(scope=GLOBAL).with_value("general.organization", "X", "t1")
        domain = SettingsDocument(scope="a.test").with_value("advanced.imap.port", 143, "t2")
        self.store.save(document)
        self.store.save(domain.with_inherit(False, "t3"))
        self.assertTrue((self.directory / "global.toml").is_file())
        text = (self.directory / "domains" / "a.test.toml").read_text()
        self.assertIn("inherit = false", text)
        self.assertIn("[advanced.imap]\nport = 143", text)
        again = SettingsStore(self.directory)
        again.load()
        self.assertEqual(again.scopes(), [GLOBAL, "a.test"])
        self.assertEqual(again.document(GLOBAL), document)
        self.assertEqual(again.document("a.test").revision, 2)  # type: ignore[union-attr]

    def test_refresh_picks_up_hand_edits(self) -> None:
        """
        A file edited by hand is read again; nothing changed means nothing is read.
        """
        self.assertFalse(self.store.changed())
        path = self.directory / "global.toml"
        self.directory.mkdir()
        path.write_text('revision = 5\n[general]\norganization = "Hand"\n')
        self.assertTrue(self.store.changed())
        self.assertEqual(self.store.refresh(), ())
        self.assertEqual(self.store.document(GLOBAL).values, {"general.organization": "Hand"})  # type: ignore[union-attr]
        self.assertFalse(self.store.changed())

    def test_bad_file_keeps_last_good(self) -> None:
        """
        A file that no longer reads is reported (file and field named) and the last good
        documents stay in force.
        """
        self.store.save(
            SettingsDocument(scope=GLOBAL).with_value("general.organization", "Good", "t")
        )
        path = self.directory / "global.toml"
        path.write_text('[advanced.imap]\nsecurity = "ssl"\n')
        os.utime(path, ns=(1, 1))
        problems = self.store.refresh()
        self.assertEqual(len(problems), 1)
        self.assertTrue(problems[0].startswith(f"{path}: advanced.imap.security: must be one of"))
        self.assertEqual(self.store.document(GLOBAL).values["general.organization"], "Good")  # type: ignore[union-attr]
        path.write_text("not = [toml")
        self.assertIn("not valid TOML", self.store.refresh()[0])

    def test_load_refuses_bad_files(self) -> None:
        """
        At start-up every problem is reported at once.
        """
        (self.directory / "domains").mkdir(parents=True)
        (self.directory / "global.toml").write_text("[general]\nemail = 1\n")
        (self.directory / "domains" / "a.test.toml").write_text("[general]\nx = 1\n")
        e = self.assertRaises(SettingsError, SettingsStore(self.directory).load)
        self.assertEqual(len(e.problems), 2)

    def test_delete(self) -> None:
        """
        Deleting a domain's document makes it follow the global one again.
        """
        self.store.save(
            SettingsDocument(scope="a.test").with_value("general.organization", "A", "t")
        )
        self.assertTrue(self.store.delete("a.test"))
        self.assertIsNone(self.store.document("a.test"))
        self.assertFalse(self.store.delete("a.test"))

    def test_domain_names(self) -> None:
        """
        A domain becomes a file name, so only plain domain names are accepted.
        """
        self.assertEqual(check_domain("Example.TEST."), "example.test")
        for bad in ("../etc", "a/b", "", ".a", "a..b"):
            self.assertRaises(SettingsError, check_domain, bad)


class ReceiptStoreTests(SynchronousTestCase):
    def test_served_and_applied(self) -> None:
        """
        Receipts join what each client applied with what its account was last served; a
        reader opened read-only sees them.
        """
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        store = ReceiptStore(path)
        store.record_served("a@x.test", "v1-a", "s1", 10.0)
        store.record_applied("a@x.test", "laptop", "v1-a", "5.0", 11.0)
        store.record_applied("a@x.test", "laptop", "v1-a", "5.1", 12.0)
        store.record_served("a@x.test", "v1-b", "s2", 13.0)
        reader = ReceiptStore(path, read_only=True)
        [receipt] = reader.receipts()
        reader.close()
        store.close()
        self.assertEqual(
            receipt, Receipt("a@x.test", "laptop", "v1-a", "5.1", 12.0, "v1-b", "s2", 13.0)
        )
        self.assertEqual(behind(receipt, {}), "has not applied the version it was served")

    def test_cannot_open(self) -> None:
        """
        A database that cannot be opened is a SettingsError naming it.
        """
        e = self.assertRaises(SettingsError, ReceiptStore, Path("/nonexistent/dir/x.sqlite"))
        self.assertIn("/nonexistent/dir/x.sqlite: cannot open", e.problems[0])


class SettingsSourceTests(SynchronousTestCase):
    def test_interface(self) -> None:
        """
        The source provides ISettingsSource; the push is "anywhere" when the configuration or
        any document turns it on.
        """
        store = SettingsStore(Path(self.mktemp()))
        store.load()
        facts = ServerFacts(
            hostname="h.test", imap=Service("h.test", 993, Security.IMPLICIT_TLS), submission=()
        )
        source = SettingsSource(store, facts, Policy())
        verifyObject(ISettingsSource, source)
        self.assertFalse(source.push_anywhere())
        store.save(SettingsDocument(scope="a.test").with_value("policy.push_enabled", True, "t"))
        self.assertTrue(source.push_anywhere())
        self.assertTrue(source.merged("A.TEST").values["policy.push_enabled"])
        self.assertTrue(
            SettingsSource(SettingsStore(Path("x")), facts, Policy(True)).push_anywhere()
        )
        self.assertEqual(source.refresh(), ())
