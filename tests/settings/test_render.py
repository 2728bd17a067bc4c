"""
Tests for L{mdtwist.settings.render}: outputs parsed back.
"""

from __future__ import annotations

from collections.abc import Mapping
from xml.etree import ElementTree as ET

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.settings.model import (
    MacroContext,
    Security,
    ServerFacts,
    Service,
    Value,
    defaults,
    merge,
)
from mdtwist.settings.render import (
    AUTODISCOVER_RESPONSE,
    ClientProfile,
    autoconfig_xml,
    autodiscover_error,
    client_profile,
    placeholders,
    profile_identifier,
    srv_records,
)

FACTS = ServerFacts(
    hostname="mail.example.test",
    imap=Service("mail.example.test", 993, Security.IMPLICIT_TLS),
    submission=(
        Service("mail.example.test", 465, Security.IMPLICIT_TLS),
        Service("mail.example.test", 587, Security.STARTTLS),
    ),
)


def profile(
    facts: ServerFacts = FACTS, values: Mapping[str, Value] | None = None
) -> ClientProfile:
    base = defaults(facts)
    base.update(values or {})
    merged = merge(base, None, None)
    return client_profile(merged, "example.test", facts, placeholders("example.test", facts))


class SRVTests(SynchronousTestCase):
    def test_rfc8314_records(self) -> None:
        """
        Implicit TLS is preferred (priority 0) over STARTTLS (5); what is not offered gets the
        target "." (RFC 6186 3.4).
        """
        lines = srv_records(profile(), https_port=443)
        records = {line.split()[0]: line.split()[1:] for line in lines}
        self.assertEqual(
            records["_imaps._tcp.example.test."],
            ["3600", "IN", "SRV", "0", "1", "993", "mail.example.test."],
        )
        self.assertEqual(records["_imap._tcp.example.test."][3:], ["0", "0", "0", "."])
        self.assertEqual(
            records["_submissions._tcp.example.test."][3:], ["0", "1", "465", "mail.example.test."]
        )
        self.assertEqual(
            records["_submission._tcp.example.test."][3:], ["5", "1", "587", "mail.example.test."]
        )
        self.assertEqual(records["_pop3._tcp.example.test."][3:], ["0", "0", "0", "."])
        self.assertEqual(records["_autodiscover._tcp.example.test."][3:6], ["0", "1", "443"])

    def test_plaintext_not_published(self) -> None:
        """
        A plaintext service is never advertised.
        """
        facts = ServerFacts(
            hostname="h.example.test",
            imap=Service("h.example.test", 143, Security.NONE),
            submission=(Service("h.example.test", 25, Security.NONE),),
        )
        lines = srv_records(profile(facts))
        self.assertTrue(all(line.endswith(" 0 0 0 .") for line in lines))


class AutoconfigTests(SynchronousTestCase):
    def test_placeholders(self) -> None:
        """
        Per-user macros become Thunderbird's placeholders, or nothing when it has none.
        """
        p = profile(
            values={
                "general.login_name": "$MAILBOX$",
                "general.account_name": "$USERFIRSTNAME$ at $DOMAIN$",
            }
        )
        self.assertEqual(p.login_name, "%EMAILLOCALPART%")
        self.assertEqual(p.account_name, " at example.test")
        root = ET.fromstring(autoconfig_xml(p))
        self.assertEqual(
            root.findtext("emailProvider/incomingServer/username"), "%EMAILLOCALPART%"
        )

    def test_no_auth_smtp(self) -> None:
        """
        SMTP without authentication says "none" and gives no user name.
        """
        root = ET.fromstring(
            autoconfig_xml(profile(values={"advanced.smtp_auth.required": False}))
        )
        outgoing = root.find("emailProvider/outgoingServer")
        assert outgoing is not None
        self.assertEqual(outgoing.findtext("authentication"), "none")
        self.assertIsNone(outgoing.find("username"))


class AutodiscoverTests(SynchronousTestCase):
    def test_error(self) -> None:
        """
        The error answer parses and carries code, message, time and id.
        """
        root = ET.fromstring(
            autodiscover_error(600, "Invalid Request", time="01:02:03", error_id="1")
        )
        error = root.find(f"{{{AUTODISCOVER_RESPONSE}}}Response/{{{AUTODISCOVER_RESPONSE}}}Error")
        assert error is not None
        self.assertEqual((error.get("Time"), error.get("Id")), ("01:02:03", "1"))
        self.assertEqual(error.findtext(f"{{{AUTODISCOVER_RESPONSE}}}ErrorCode"), "600")

    def test_starttls_is_encryption_tls(self) -> None:
        """
        STARTTLS is Encryption=TLS; plaintext is SSL=off with Encryption=None.
        """
        from mdtwist.settings.render import autodiscover_xml

        user = MacroContext(address="a@example.test", fqdn="mail.example.test")
        base = defaults(FACTS)
        base.update({"advanced.imap.security": "starttls", "advanced.imap.port": 143})
        p = client_profile(merge(base, None, None), "example.test", FACTS, user)
        body = autodiscover_xml(p, personal=False).decode()
        self.assertIn("<Port>143</Port>\n        <LoginName>a@example.test</LoginName>", body)
        imap = body.split("<Type>SMTP</Type>")[0]
        self.assertIn("<SSL>on</SSL>", imap)
        self.assertIn("<Encryption>TLS</Encryption>", imap)


class IdentifierTests(SynchronousTestCase):
    def test_stable_and_distinct(self) -> None:
        """
        Identifiers depend on host and address only (not on case).
        """
        one = profile_identifier("mail.example.test", "A@example.test")
        self.assertEqual(one, profile_identifier("mail.example.test", "a@example.test"))
        self.assertNotEqual(one, profile_identifier("mail.example.test", "b@example.test"))
        self.assertTrue(one.startswith("test.example.mail.mdtwist.mail."))
