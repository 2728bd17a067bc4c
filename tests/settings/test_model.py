"""
Tests for L{mdtwist.settings.model}: schema, documents, merge, macros, versions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from mdtwist.settings.model import (
    FIELDS,
    GLOBAL,
    AddinRule,
    MacroContext,
    Security,
    ServerFacts,
    Service,
    SettingsDocument,
    SettingsError,
    Value,
    check_value,
    client_supported,
    content,
    defaults,
    document_from_mapping,
    document_to_mapping,
    expand,
    macro_reference,
    merge,
    parse_client_version,
    parse_text_value,
    served_document,
    version_of,
)

FACTS = ServerFacts(
    hostname="mail.example.test",
    imap=Service("mail.example.test", 993, Security.IMPLICIT_TLS),
    submission=(
        Service("mail.example.test", 465, Security.IMPLICIT_TLS),
        Service("mail.example.test", 587, Security.STARTTLS),
    ),
)
ALICE = MacroContext(
    address="alice.smith@example.test",
    display_name="Alice Smith",
    first_name="Alice",
    last_name="Smith",
    fqdn="mail.example.test",
)
T = "2026-12-05T09:00:00Z"


def base(push: bool = True, allow_override: bool = False) -> dict[str, Value]:
    values = defaults(FACTS)
    values["policy.push_enabled"] = push
    values["policy.allow_override"] = allow_override
    return values


def doc(scope: str, **values: object) -> SettingsDocument:
    return SettingsDocument(
        scope=scope,
        values={
            k.replace("__", "."): check_value(k.replace("__", "."), v) for k, v in values.items()
        },
    )


class SchemaTests(SynchronousTestCase):
    def test_defaults_are_valid(self) -> None:
        """
        Every default passes its own field's check, and the screens are MDaemon's eight.
        """
        for field in FIELDS:
            check_value(
                field.path,
                list(field.default) if isinstance(field.default, tuple) else field.default,
            )
        screens = {f.screen for f in FIELDS} - {"policy"}
        self.assertEqual(
            screens,
            {
                "general",
                "advanced",
                "folders",
                "send_receive",
                "misc",
                "database",
                "signature",
                "addins",
            },
        )

    def test_defaults_from_listeners(self) -> None:
        """
        The advanced screen's defaults are the server's own IMAP and preferred submission.
        """
        facts = ServerFacts(
            hostname="h.example",
            imap=Service("h.example", 143, Security.STARTTLS),
            submission=(Service("h.example", 2587, Security.STARTTLS),),
        )
        values = defaults(facts)
        self.assertEqual(values["advanced.imap.security"], "starttls")
        self.assertEqual(values["advanced.imap.port"], 143)
        self.assertEqual(values["advanced.smtp.port"], 2587)

    def test_security_is_an_enum(self) -> None:
        """
        Security takes implicit-tls, starttls or none; SSL/TLS words are refused.
        """
        for good in ("implicit-tls", "starttls", "none"):
            self.assertEqual(check_value("advanced.imap.security", good), good)
        for bad in ("ssl", "SSL", "tls", True):
            e = self.assertRaises(SettingsError, check_value, "advanced.imap.security", bad)
            self.assertIn("advanced.imap.security:", e.problems[0])

    def test_wrong_types(self) -> None:
        """
        Ports are integers in range, flags are booleans, unknown paths are named.
        """
        self.assertRaises(SettingsError, check_value, "advanced.imap.port", 0)
        self.assertRaises(SettingsError, check_value, "advanced.imap.port", "993")
        self.assertRaises(SettingsError, check_value, "database.purge_on_exit", 1)
        e = self.assertRaises(SettingsError, check_value, "general.colour", "red")
        self.assertEqual(e.problems, ("general.colour: unknown setting",))


class MacroTests(SynchronousTestCase):
    def test_unknown_macro_refused_on_save(self) -> None:
        """
        An unknown macro is refused, and the error names the field.
        """
        e = self.assertRaises(SettingsError, check_value, "general.organization", "$COMPANY$")
        self.assertEqual(
            e.problems,
            ("general.organization: unknown macro $COMPANY$ (see the macro reference)",),
        )
        e = self.assertRaises(
            SettingsError, parse_text_value, "signature.text", "Regards, $USERNAME$ $NOPE$"
        )
        self.assertIn("signature.text: unknown macro $NOPE$", e.problems[0])

    def test_macro_only_where_allowed(self) -> None:
        """
        A field whose schema takes no macros refuses one.
        """
        e = self.assertRaises(SettingsError, check_value, "folders.special_use.sent", "$MAILBOX$")
        self.assertIn("folders.special_use.sent: macros are not allowed", e.problems[0])
        self.assertEqual(check_value("folders.special_use.sent", "Sent Items"), "Sent Items")

    def test_expand_known_macros(self) -> None:
        """
        The required macros expand to the user's values.
        """
        text = "$USERNAME$|$EMAIL$|$DOMAIN$|$FQDN$|$MAILBOX$|$USERFIRSTNAME$|$USERLASTNAME$"
        self.assertEqual(
            expand(text, ALICE),
            "Alice Smith|alice.smith@example.test|example.test|mail.example.test|alice.smith"
            "|Alice|Smith",
        )
        self.assertEqual(
            expand("$USERFIRSTINITIAL$$USERLASTINITIAL$-$MAILBOXFIRSTCHARS3$", ALICE), "AS-ali"
        )

    def test_dollar_literal_and_no_rescan(self) -> None:
        """
        C{$$} is a dollar sign; text from a macro is never expanded again.
        """
        sneaky = MacroContext(address="x@example.test", display_name="$EMAIL$")
        self.assertEqual(expand("$USERNAME$ costs $$5", sneaky), "$EMAIL$ costs $5")

    def test_username_falls_back_to_names(self) -> None:
        """
        Without a display name, C{$USERNAME$} is first and last name.
        """
        user = MacroContext(address="b@example.test", first_name="Bob", last_name="Jones")
        self.assertEqual(expand("$USERNAME$", user), "Bob Jones")
        self.assertEqual(expand("[$USERLASTNAME$]", MacroContext(address="c@x")), "[]")

    def test_reference_lists_required_macros(self) -> None:
        """
        The macro reference lists at least the macros the issue requires.
        """
        names = {row["macro"] for row in macro_reference()}
        for name in (
            "USERNAME",
            "EMAIL",
            "DOMAIN",
            "FQDN",
            "MAILBOX",
            "USERFIRSTNAME",
            "USERLASTNAME",
        ):
            self.assertIn(f"${name}$", names)


class DocumentTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """
        A document written as nested tables reads back the same.
        """
        document = SettingsDocument(
            scope="example.test",
            values={
                "general.organization": "Example",
                "advanced.imap.port": 143,
                "folders.selected": ("INBOX", "Work"),
                "addins.rules": (AddinRule("Foo", "disable"),),
            },
            revision=3,
            modified=T,
            inherit=False,
        )
        data = document_to_mapping(document)
        self.assertEqual(data["advanced"], {"imap": {"port": 143}})
        self.assertEqual(document_from_mapping("example.test", data), document)

    def test_every_problem_named(self) -> None:
        """
        A bad document is refused with one line per problem, each naming its field.
        """
        e = self.assertRaises(
            SettingsError,
            document_from_mapping,
            GLOBAL,
            {
                "general": {"colour": "red", "email": 5},
                "advanced": {"imap": {"port": -1}},
                "inherit": False,
            },
        )
        self.assertEqual(
            sorted(e.problems),
            [
                "advanced.imap.port: must be from 1 to 65535",
                "general.colour: unknown setting",
                "general.email: expected a string",
                "inherit: only a domain document can replace the global one",
            ],
        )

    def test_null_means_inherit(self) -> None:
        """
        A JSON null in an imported document leaves the field out (it is inherited).
        """
        document = document_from_mapping("example.test", {"general": {"organization": None}})
        self.assertEqual(document.values, {})

    def test_noop_save_keeps_revision(self) -> None:
        """
        Setting a field to the value it has changes nothing, not even the revision.
        """
        document = SettingsDocument(scope=GLOBAL).with_value("general.organization", "X", T)
        self.assertEqual(document.revision, 1)
        self.assertIs(document.with_value("general.organization", "X", "later"), document)
        changed = document.with_value("general.organization", None, "later")
        self.assertEqual((changed.revision, changed.values), (2, {}))

    def test_text_values(self) -> None:
        """
        Command-line text becomes typed values.
        """
        self.assertIs(parse_text_value("database.purge_on_exit", "off"), False)
        self.assertEqual(parse_text_value("advanced.smtp.port", "587"), 587)
        self.assertEqual(parse_text_value("folders.selected", "INBOX, Work"), ("INBOX", "Work"))
        self.assertEqual(
            parse_text_value("addins.rules", "Foo Add-in=disable,Bar=allow"),
            (AddinRule("Foo Add-in", "disable"), AddinRule("Bar", "allow")),
        )
        self.assertRaises(SettingsError, parse_text_value, "addins.rules", "Foo=remove")
        self.assertRaises(SettingsError, parse_text_value, "advanced.smtp.port", "many")


class MergeTests(SynchronousTestCase):
    def test_sparse_override(self) -> None:
        """
        A domain document changes only the fields it sets; the rest come from global.
        """
        merged = merge(
            base(),
            doc(
                GLOBAL,
                general__organization="Global Ltd",
                database__purge_bodies_older_than_days=10,
            ),
            doc("example.test", general__organization="Domain Ltd"),
        )
        self.assertEqual(merged.values["general.organization"], "Domain Ltd")
        self.assertEqual(merged.values["database.purge_bodies_older_than_days"], 10)
        self.assertEqual(merged.sources, ("defaults", "global@0", "domain:example.test@0"))

    def test_unset_resets_to_global(self) -> None:
        """
        A field removed from the domain document (TOML has no null) falls back to global.
        """
        domain = doc("example.test", general__organization="Domain Ltd").with_value(
            "general.organization", None, T
        )
        merged = merge(base(), doc(GLOBAL, general__organization="Global Ltd"), domain)
        self.assertEqual(merged.values["general.organization"], "Global Ltd")

    def test_full_replacement(self) -> None:
        """
        C{inherit = false} ignores the global document; defaults fill the rest.
        """
        domain = doc("example.test", general__account_name="Domain").with_inherit(False, T)
        merged = merge(base(), doc(GLOBAL, general__organization="Global Ltd"), domain)
        self.assertEqual(merged.values["general.organization"], "")
        self.assertEqual(merged.values["general.account_name"], "Domain")
        self.assertNotIn("global@0", merged.sources)

    def test_rules_merge_by_name(self) -> None:
        """
        Add-in rules merge by name without regard to case; other lists replace.
        """
        merged = merge(
            base(),
            doc(
                GLOBAL,
                addins__rules=[
                    {"name": "Foo", "action": "disable"},
                    {"name": "Bar", "action": "allow"},
                ],
                folders__selected=["A", "B"],
            ),
            doc(
                "example.test",
                addins__rules=[{"name": "foo", "action": "allow"}],
                folders__selected=["C"],
            ),
        )
        self.assertEqual(
            merged.values["addins.rules"], (AddinRule("foo", "allow"), AddinRule("Bar", "allow"))
        )
        self.assertEqual(merged.values["folders.selected"], ("C",))

    def test_locked(self) -> None:
        """
        Without allow_override the settings are locked; a domain override unlocks that domain.
        """
        global_doc = doc(GLOBAL)
        self.assertTrue(merge(base(), global_doc, None).locked)
        unlocked = merge(base(), global_doc, doc("example.test", policy__allow_override=True))
        self.assertFalse(unlocked.locked)
        self.assertTrue(content(unlocked, ALICE)["policy"]["allow_override"])
        self.assertTrue(content(merge(base(), global_doc, None), ALICE)["policy"]["locked"])


class VersionTests(SynchronousTestCase):
    def test_rename_changes_version(self) -> None:
        """
        A user rename changes the expanded document and so its version.
        """
        merged = merge(base(), None, None)
        before = served_document(merged, ALICE)
        renamed = MacroContext(address=ALICE.address, display_name="Alice Jones", fqdn=ALICE.fqdn)
        after = served_document(merged, renamed)
        self.assertNotEqual(before["version"], after["version"])
        self.assertEqual(after["screens"]["general"]["display_name"], "Alice Jones")

    def test_revision_alone_does_not_change_version(self) -> None:
        """
        A save that ends where it started bumps the revision but not the version.
        """
        document = doc(GLOBAL, general__organization="X")
        there_and_back = document.with_value("general.organization", "Y", T).with_value(
            "general.organization", "X", T
        )
        self.assertEqual(there_and_back.revision, 2)
        one = served_document(merge(base(), document, None), ALICE)
        two = served_document(merge(base(), there_and_back, None), ALICE)
        self.assertEqual(one["version"], two["version"])
        self.assertNotEqual(one["sources"], two["sources"])

    def test_change_in_use_changes_version(self) -> None:
        """
        Changing a field changes the version.
        """
        one = served_document(merge(base(), doc(GLOBAL), None), ALICE)
        two = served_document(
            merge(base(), doc(GLOBAL, database__compact_on_exit=False), None), ALICE
        )
        self.assertNotEqual(one["version"], two["version"])

    def test_version_form(self) -> None:
        """
        The version is v1- and 22 base64url characters, stable for the same content.
        """
        version = version_of({"a": 1, "b": [1, 2]})
        self.assertRegex(version, r"^v1-[A-Za-z0-9_-]{22}$")
        self.assertEqual(version, version_of({"b": [1, 2], "a": 1}))


class ClientVersionTests(SynchronousTestCase):
    def test_gates(self) -> None:
        """
        Settings need client 4.0; the add-ins screen needs 5.0.
        """
        self.assertFalse(client_supported(parse_client_version("3.9.9")))
        self.assertTrue(client_supported(parse_client_version("4.0")))
        self.assertTrue(client_supported(None))
        merged = merge(base(), None, None)
        self.assertNotIn("addins", content(merged, ALICE, (4, 9))["screens"])
        self.assertIn("addins", content(merged, ALICE, (5,))["screens"])
        self.assertIn("addins", content(merged, ALICE, None)["screens"])
        self.assertEqual(parse_client_version("5.1.2-beta"), (5, 1, 2))
        self.assertIsNone(parse_client_version("beta"))


_PURITY = """
import sys
import mdtwist.settings.model, mdtwist.settings.render
print(",".join(sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))))
"""


class PurityTests(SynchronousTestCase):
    def test_no_twisted(self) -> None:
        """
        The model and the renderers import no Twisted module.
        """
        root = Path(mdtwist.__file__).parents[1]
        result = subprocess.run(
            [sys.executable, "-c", _PURITY], capture_output=True, text=True, cwd=root, check=True
        )
        self.assertEqual(result.stdout.strip(), "")
