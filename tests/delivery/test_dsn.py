"""Tests for L{mdtwist.delivery.dsn}."""

from __future__ import annotations

import email
import email.policy
import email.utils
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery.dsn import (
    DEFAULT_MAX_ORIGINAL,
    Action,
    DSNRequests,
    DSNTexts,
    RecipientReport,
    build_dsn,
    decode_xtext,
    notice_envelope,
    notice_recipient,
    restrict_requests,
    split_header_section,
    wants_notice,
)
from mdtwist.envelope import BodyType, ClientInfo, Envelope, Recipient
from tests.support.dsn import parse, parts

ORIGINAL = (
    b"Received: from client.example ([192.0.2.1]) by mx.example\r\n"
    b"Message-ID: <orig-1@client.example>\r\n"
    b"Subject: quarterly report\r\n"
    b"\r\n"
    b"the body\r\n"
)
NOW = 1_700_000_000.0
ARRIVAL = NOW - 3600


def envelope(**changes: Any) -> Envelope:
    """@return: the envelope of the original, with changes."""
    base = Envelope(
        sender="alice@client.example",
        recipients=(
            Recipient("bob@far.example", orcpt="rfc822;Bob+2Bx@far.example"),
            Recipient("carol@far.example"),
        ),
        client=ClientInfo(address="192.0.2.1", helo="client.example"),
        arrival=ARRIVAL,
        envid="QQ+2B314",
    )
    return attrs.evolve(base, **changes)


def failed(recipient: Recipient, diagnostic: str = "550 5.1.1 no such user") -> RecipientReport:
    """@return: a failure report from far.example's MX."""
    return RecipientReport(
        recipient, Action.FAILED, "5.1.1", diagnostic, "mx.far.example", NOW - 10
    )


class WantsNoticeTests(SynchronousTestCase):
    """Tests for L{wants_notice}: RFC 3461 C{NOTIFY} and the null sender."""

    def test_null_sender(self) -> None:
        """No notice of any kind is sent about a message from the null sender."""
        for notify in (None, frozenset({"SUCCESS", "FAILURE", "DELAY"})):
            for action in Action:
                self.assertFalse(wants_notice("", Recipient("a@b", notify=notify), action))

    def test_default(self) -> None:
        """Without C{NOTIFY}, failures and delays are reported, deliveries are not."""
        recipient = Recipient("a@b")
        self.assertTrue(wants_notice("s@x", recipient, Action.FAILED))
        self.assertTrue(wants_notice("s@x", recipient, Action.DELAYED))
        self.assertFalse(wants_notice("s@x", recipient, Action.DELIVERED))

    def test_never(self) -> None:
        """C{NOTIFY=NEVER} asks for no notice at all."""
        recipient = Recipient("a@b", notify=frozenset({"NEVER"}))
        self.assertEqual([wants_notice("s@x", recipient, a) for a in Action], [False] * 4)

    def test_combinations(self) -> None:
        """Each C{NOTIFY} keyword asks for its own kind only, in any case."""
        cases = {
            frozenset({"SUCCESS"}): [False, False, True, True],
            frozenset({"DELAY"}): [False, True, False, False],
            frozenset({"failure"}): [True, False, False, False],
            frozenset({"FAILURE", "DELAY"}): [True, True, False, False],
        }
        for notify, expected in cases.items():
            recipient = Recipient("a@b", notify=notify)
            self.assertEqual([wants_notice("s@x", recipient, a) for a in Action], expected, notify)


class HelperTests(SynchronousTestCase):
    """Tests for the small helpers of L{mdtwist.delivery.dsn}."""

    def test_xtext(self) -> None:
        """C{+XX} escapes are decoded; a malformed escape stays as it is."""
        self.assertEqual(decode_xtext("a+2Bb+3Dc"), "a+b=c")
        self.assertEqual(decode_xtext("x+zz+4"), "x+zz+4")

    def test_source_route(self) -> None:
        """A source-routed sender gets its notice at the final mailbox."""
        self.assertEqual(notice_recipient("@a.example,@b.example:u@d.example"), "u@d.example")
        self.assertEqual(notice_recipient("u@d.example"), "u@d.example")

    def test_split_header_section(self) -> None:
        """The header section ends at the first empty line; without one it is everything."""
        self.assertEqual(split_header_section(b"A: 1\r\n\r\nbody\r\n"), (b"A: 1\r\n", b"body\r\n"))
        self.assertEqual(split_header_section(b"A: 1"), (b"A: 1\r\n", b""))
        self.assertEqual(split_header_section(b"\r\nbody"), (b"", b"body"))

    def test_notice_envelope(self) -> None:
        """A notice goes from the null sender to the original sender."""
        notice = notice_envelope(envelope(), "mx.example", NOW, b"x")
        self.assertEqual(notice.sender, "")
        self.assertEqual([r.address for r in notice.recipients], ["alice@client.example"])
        self.assertEqual((notice.arrival, notice.body_type), (NOW, BodyType.SEVEN_BIT))
        self.assertEqual(
            notice_envelope(envelope(), "mx.example", NOW, b"\xc3\xa9").body_type,
            BodyType.EIGHT_BIT_MIME,
        )

    def test_no_notice_envelope_for_null_sender(self) -> None:
        """Making a notice envelope for the null sender is refused."""
        self.assertRaises(ValueError, notice_envelope, envelope(sender=""), "mx", NOW, b"")


class BuildDSNTests(SynchronousTestCase):
    """Tests for L{build_dsn}, read back with the standard library's C{email} package."""

    def build(
        self, reports: list[RecipientReport], original: bytes = ORIGINAL, **changes: Any
    ) -> bytes:
        """@return: a notice from mx.example about the test envelope."""
        return build_dsn(
            "mx.example",
            envelope(**changes),
            reports,
            original,
            NOW,
            "<dsn-1@mx.example>",
            max_original=1024,
        )

    def test_failure(self) -> None:
        """
        A failure notice is a multipart/report of delivery-status in three parts.

        The headers name the MAILER-DAEMON, the original sender, a failure subject, the
        threading headers and C{Auto-Submitted}; the whole original is attached.
        """
        recipients = envelope().recipients
        data = self.build([failed(recipients[0]), failed(recipients[1], "no such mailbox")])
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        message = parse(data)
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(message["From"], "Mail Delivery System <MAILER-DAEMON@mx.example>")
        self.assertEqual(message["To"], "alice@client.example")
        self.assertEqual(message["Subject"], DSNTexts().failure_subject)
        self.assertEqual(message["Auto-Submitted"], "auto-replied")
        self.assertEqual(message["Message-ID"], "<dsn-1@mx.example>")
        self.assertEqual(message["In-Reply-To"], "<orig-1@client.example>")
        self.assertEqual(message["References"], "<orig-1@client.example>")
        self.assertEqual(message["MIME-Version"], "1.0")
        self.assertEqual(email.utils.parsedate_to_datetime(message["Date"]).timestamp(), NOW)
        human, status, original = parts(message)
        self.assertEqual(human.get_content_type(), "text/plain")
        text = human.get_payload(decode=True)
        assert isinstance(text, bytes)
        self.assertIn(b"<bob@far.example>: 550 5.1.1 no such user", text)
        self.assertIn(b"<carol@far.example>: no such mailbox", text)
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        blocks = parts(status)
        self.assertEqual(len(blocks), 3)
        self.assertEqual(blocks[0]["Reporting-MTA"], "dns; mx.example")
        self.assertEqual(blocks[0]["Original-Envelope-Id"], "QQ+314")
        self.assertEqual(blocks[0]["Received-From-MTA"], "dns; client.example ([192.0.2.1])")
        self.assertEqual(
            email.utils.parsedate_to_datetime(blocks[0]["Arrival-Date"]).timestamp(), ARRIVAL
        )
        bob, carol = blocks[1], blocks[2]
        self.assertEqual(bob["Original-Recipient"], "rfc822; Bob+x@far.example")
        self.assertEqual(bob["Final-Recipient"], "rfc822; bob@far.example")
        self.assertEqual(bob["Action"], "failed")
        self.assertEqual(bob["Status"], "5.1.1")
        self.assertEqual(bob["Remote-MTA"], "dns; mx.far.example")
        self.assertEqual(bob["Diagnostic-Code"], "smtp; 550 5.1.1 no such user")
        self.assertEqual(
            email.utils.parsedate_to_datetime(bob["Last-Attempt-Date"]).timestamp(), NOW - 10
        )
        self.assertIsNone(bob["Will-Retry-Until"])
        self.assertIsNone(carol["Original-Recipient"])
        self.assertEqual(carol["Diagnostic-Code"], "x-mdtwist; no such mailbox")
        self.assertEqual(original.get_content_type(), "message/rfc822")
        [attached] = parts(original)
        self.assertEqual(attached["Subject"], "quarterly report")
        self.assertEqual(attached.get_payload(), "the body\r\n")

    def test_delay(self) -> None:
        """
        A delay notice says until when the server retries and attaches only the headers.
        """
        report = RecipientReport(
            envelope().recipients[1],
            Action.DELAYED,
            "4.4.1",
            "connection refused",
            None,
            NOW,
            ARRIVAL + 5 * 86400,
        )
        message = parse(self.build([report]))
        self.assertEqual(message["Subject"], DSNTexts().delay_subject)
        human, status, original = parts(message)
        _, block = parts(status)
        self.assertEqual((block["Action"], block["Status"]), ("delayed", "4.4.1"))
        self.assertIsNone(block["Remote-MTA"])
        self.assertEqual(
            email.utils.parsedate_to_datetime(block["Will-Retry-Until"]).timestamp(),
            ARRIVAL + 5 * 86400,
        )
        text = human.get_payload(decode=True)
        assert isinstance(text, bytes)
        self.assertIn(email.utils.formatdate(ARRIVAL + 5 * 86400, usegmt=True).encode(), text)
        self.assertEqual(original.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: quarterly report", original.get_content())
        self.assertNotIn("the body", original.get_content())

    def test_delivered(self) -> None:
        """A success notice has the success subject and action C{delivered}."""
        report = RecipientReport(envelope().recipients[0], Action.DELIVERED, "2.0.0", "")
        message = parse(self.build([report]))
        self.assertEqual(message["Subject"], DSNTexts().success_subject)
        _, block = parts(parts(message)[1])
        self.assertEqual((block["Action"], block["Status"]), ("delivered", "2.0.0"))
        self.assertIsNone(block["Diagnostic-Code"])

    def test_ret_hdrs(self) -> None:
        """With C{RET=HDRS} only the header section of the original is returned."""
        message = parse(self.build([failed(envelope().recipients[0])], ret="HDRS"))
        self.assertEqual(parts(message)[2].get_content_type(), "text/rfc822-headers")

    def test_large_original(self) -> None:
        """An original above the size cap is returned as its header section only."""
        big = ORIGINAL + b"x" * 2000 + b"\r\n"
        message = parse(self.build([failed(envelope().recipients[0])], original=big))
        self.assertEqual(parts(message)[2].get_content_type(), "text/rfc822-headers")

    def test_no_envid_no_message_id(self) -> None:
        """Without ENVID and without a Message-ID those fields are left out."""
        data = self.build(
            [failed(envelope().recipients[1])], original=b"Subject: x\r\n\r\nbody\r\n", envid=None
        )
        message = parse(data)
        self.assertIsNone(message["In-Reply-To"])
        self.assertIsNone(parts(parts(message)[1])[0]["Original-Envelope-Id"])

    def test_status_defaults(self) -> None:
        """A missing or malformed status is reported as the default of the action."""
        recipient = envelope().recipients[0]
        data = self.build(
            [
                RecipientReport(recipient, Action.FAILED, ""),
                RecipientReport(recipient, Action.DELIVERED, "5.1.1"),
            ]
        )
        blocks = parts(parts(parse(data))[1])
        self.assertEqual([b["Status"] for b in blocks[1:]], ["5.0.0", "2.0.0"])

    def test_boundary_not_in_content(self) -> None:
        """The boundary does not occur in the original, even one that tries to guess it."""
        first = self.build([failed(envelope().recipients[0])])
        boundary = parse(first).get_boundary()
        assert boundary is not None
        tricky = ORIGINAL + b"--" + boundary.encode() + b"\r\n"
        message = parse(self.build([failed(envelope().recipients[0])], original=tricky))
        self.assertNotEqual(message.get_boundary(), boundary)
        self.assertEqual(len(parts(message)), 3)

    def test_custom_texts(self) -> None:
        """The subjects and texts are configurable."""
        texts = DSNTexts(failure_subject="Unzustellbar", failure_text="Leider nicht.")
        data = build_dsn(
            "mx.example",
            envelope(),
            [failed(envelope().recipients[0])],
            ORIGINAL,
            NOW,
            "<x@mx.example>",
            texts=texts,
        )
        message = parse(data)
        self.assertEqual(message["Subject"], "Unzustellbar")
        text = parts(message)[0].get_payload(decode=True)
        assert isinstance(text, bytes)
        self.assertIn(b"Leider nicht.", text)

    def test_nothing_to_report(self) -> None:
        """A notice that reports no recipient is refused."""
        self.assertRaises(ValueError, self.build, [])


class SizeLimitTests(SynchronousTestCase):
    """
    A notice returns at most L{DEFAULT_MAX_ORIGINAL} bytes of the original (Postfix's
    C{bounce_size_limit}, 50 000): whole up to it, its header section alone beyond it, and a
    header section that is itself larger is cut at a line end.
    """

    def build(self, original: bytes) -> bytes:
        return build_dsn(
            "mx.example",
            envelope(),
            [failed(envelope().recipients[0])],
            original,
            NOW,
            "<dsn-1@mx.example>",
        )

    def test_default_is_postfix(self) -> None:
        """The default limit is 50 000 bytes."""
        self.assertEqual(DEFAULT_MAX_ORIGINAL, 50_000)

    def test_whole_up_to_the_limit(self) -> None:
        """An original of exactly the limit is returned whole; one byte more, headers only."""
        head = b"Subject: big\r\n\r\n"
        body = b"x" * 98 + b"\r\n"
        fits = head + body * ((DEFAULT_MAX_ORIGINAL - len(head)) // len(body))
        fits += b"y" * (DEFAULT_MAX_ORIGINAL - len(fits) - 2) + b"\r\n"
        self.assertEqual(len(fits), DEFAULT_MAX_ORIGINAL)
        self.assertEqual(parts(parse(self.build(fits)))[2].get_content_type(), "message/rfc822")
        bigger = fits + b"z\r\n"
        notice = self.build(bigger)
        self.assertEqual(parts(parse(notice))[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"xxxx", notice)
        self.assertLess(len(notice), 5000)

    def test_huge_header_section_cut(self) -> None:
        """
        A header section over the limit is cut at the end of a line within the limit.
        """
        line = b"X-Filler: " + b"h" * 88 + b"\r\n"
        original = line * 1000 + b"\r\nbody\r\n"
        notice = self.build(original)
        third = parts(parse(notice))[2]
        self.assertEqual(third.get_content_type(), "text/rfc822-headers")
        self.assertEqual(notice.count(line), DEFAULT_MAX_ORIGINAL // len(line))
        self.assertLess(len(notice), DEFAULT_MAX_ORIGINAL + 5000)


class RestrictRequestsTests(SynchronousTestCase):
    """
    L{restrict_requests} applies the C{smtp.dsn} choice to an untrusted client's envelope.
    """

    def original(self) -> Envelope:
        return envelope(
            recipients=(
                Recipient("a@x.example", notify=frozenset({"SUCCESS"}), orcpt="rfc822;a@x"),
                Recipient("b@x.example", notify=frozenset({"SUCCESS", "FAILURE"})),
                Recipient("c@x.example", notify=frozenset({"NEVER"})),
                Recipient("d@x.example"),
            ),
            ret="FULL",
        )

    def test_honour(self) -> None:
        """C{honour} keeps the envelope as it is."""
        self.assertEqual(restrict_requests(self.original(), DSNRequests.HONOUR), self.original())

    def test_limited(self) -> None:
        """
        C{limited} drops C{SUCCESS} (an empty C{NOTIFY} becomes C{NEVER}, so no notice is
        added that the client did not ask for), sets C{RET=HDRS}, and keeps the rest.
        """
        limited = restrict_requests(self.original(), DSNRequests.LIMITED)
        self.assertEqual(
            [r.notify for r in limited.recipients],
            [frozenset({"NEVER"}), frozenset({"FAILURE"}), frozenset({"NEVER"}), None],
        )
        self.assertEqual(limited.recipients[0].orcpt, "rfc822;a@x")
        self.assertEqual((limited.ret, limited.envid), ("HDRS", "QQ+2B314"))
        self.assertFalse(any(wants_notice("s@y", r, Action.DELIVERED) for r in limited.recipients))

    def test_ignore(self) -> None:
        """C{ignore} drops every DSN parameter."""
        ignored = restrict_requests(self.original(), DSNRequests.IGNORE)
        self.assertEqual([(r.notify, r.orcpt) for r in ignored.recipients], [(None, None)] * 4)
        self.assertEqual((ignored.ret, ignored.envid), (None, None))
