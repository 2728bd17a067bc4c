"""Tests for L{mdtwist.smtp.core.params}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.params import (
    MailCommand,
    MailParameters,
    RcptCommand,
    RcptParameters,
    parse_mail,
    parse_rcpt,
)
from mdtwist.smtp.core.replies import Reply


class PathTests(SynchronousTestCase):
    """Tests for the path syntax of MAIL and RCPT."""

    def _sender(self, text: str) -> str:
        parsed = parse_mail(text)
        assert isinstance(parsed, MailCommand), parsed
        return parsed.sender

    def _recipient(self, text: str) -> str:
        parsed = parse_rcpt(text)
        assert isinstance(parsed, RcptCommand), parsed
        return parsed.recipient

    def test_plain_and_null(self) -> None:
        """
        A normal address and the null sender parse.

        The keyword is case-insensitive and a space after the colon is tolerated.
        """
        self.assertEqual(self._sender("FROM:<a@b.example>"), "a@b.example")
        self.assertEqual(self._sender("from: <>"), "")
        self.assertEqual(self._recipient("To:<B@X.Example.>"), "B@X.Example.")

    def test_postmaster(self) -> None:
        """A bare C{postmaster} is a valid recipient in any case, but not a valid sender."""
        self.assertEqual(self._recipient("TO:<Postmaster>"), "Postmaster")
        self.assertIsInstance(parse_mail("FROM:<postmaster>"), Reply)
        self.assertIsInstance(parse_rcpt("TO:<>"), Reply)

    def test_source_route_dropped(self) -> None:
        """A source route is accepted and dropped."""
        self.assertEqual(
            self._recipient("TO:<@a.example,@[192.0.2.1]:u@d.example>"), "u@d.example"
        )
        self.assertIsInstance(parse_rcpt("TO:<@a.example u@d.example>"), Reply)

    def test_quoted_local_parts(self) -> None:
        """
        A quoted local part keeps its quotes unless its content is a plain dot-string.

        A quoted C{@} or C{>} stays in the local part.
        """
        self.assertEqual(self._recipient('TO:<"john.doe"@d.example>'), "john.doe@d.example")
        self.assertEqual(
            self._recipient('TO:<"v@t.example"@d.example>'), '"v@t.example"@d.example'
        )
        self.assertEqual(self._recipient('TO:<"a>b"@d.example>'), '"a>b"@d.example')

    def test_closing_bracket(self) -> None:
        """
        Without a quote the path ends at the first C{>}; a quote anywhere, even in a parameter
        after the path, is honoured the same way.
        """
        self.assertEqual(_codes(parse_mail("FROM:<a@b.example>> SIZE=1")), (501, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<a@b.example SIZE=1")), (501, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<a>b@c.example>")), (501, "5.5.4"))
        parsed = parse_mail('FROM:<a@b.example> ENVID="x>"')
        assert isinstance(parsed, MailCommand), parsed
        self.assertEqual((parsed.sender, parsed.parameters.envid), ("a@b.example", '"x>"'))
        self.assertEqual(_codes(parse_rcpt('TO:<"a>b@d.example>')), (501, "5.5.4"))

    def test_routing_tricks_stay_local(self) -> None:
        """C{%} and C{!} stay in the local part; a double C{@} and a missing domain are refused."""
        self.assertEqual(self._recipient("TO:<v%t.example@d.example>"), "v%t.example@d.example")
        self.assertEqual(self._recipient("TO:<t!v@d.example>"), "t!v@d.example")
        for bad in ["TO:<v@t@d.example>", "TO:<v>", "TO:v@d.example", "TO:<v@>", "TO:<v@d"]:
            result = parse_rcpt(bad)
            self.assertIsInstance(result, Reply, bad)

    def test_address_literals(self) -> None:
        """IPv4 and IPv6 address literals are valid domains."""
        self.assertEqual(self._recipient("TO:<v@[192.0.2.9]>"), "v@[192.0.2.9]")
        self.assertEqual(self._recipient("TO:<v@[IPv6:2001:db8::1]>"), "v@[IPv6:2001:db8::1]")

    def test_error_codes(self) -> None:
        """
        Bad syntax is C{501 5.5.4}.

        A bad sender mailbox C{501 5.1.7}; a bad recipient C{501 5.1.3}.
        """
        self.assertEqual(_codes(parse_mail("TO:<a@b>")), (501, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<a b@c>")), (501, "5.1.7"))
        self.assertEqual(_codes(parse_rcpt("TO:<a..b@c>")), (501, "5.1.3"))
        self.assertEqual(_codes(parse_mail("FROM:<a@b>junk")), (501, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<" + "a" * 300 + "@b>")), (501, "5.1.7"))


def _codes(result: object) -> tuple[int, str | None]:
    assert isinstance(result, Reply), result
    return result.code, result.enhanced


class ParameterTests(SynchronousTestCase):
    """Tests for ESMTP parameters."""

    def test_mail_parameters(self) -> None:
        """All known MAIL parameters are parsed into typed values."""
        parsed = parse_mail(
            "FROM:<a@b> SIZE=123 body=8bitmime SMTPUTF8 RET=hdrs ENVID=x+2By AUTH=<>"
        )
        assert isinstance(parsed, MailCommand)
        self.assertEqual(
            parsed.parameters,
            MailParameters(
                size=123, body="8BITMIME", smtputf8=True, ret="HDRS", envid="x+2By", auth="<>"
            ),
        )

    def test_rcpt_parameters(self) -> None:
        """NOTIFY and ORCPT are parsed."""
        parsed = parse_rcpt("TO:<a@b> NOTIFY=success,Delay ORCPT=rfc822;a+40b")
        assert isinstance(parsed, RcptCommand)
        self.assertEqual(
            parsed.parameters,
            RcptParameters(notify=frozenset({"SUCCESS", "DELAY"}), orcpt="rfc822;a+40b"),
        )

    def test_unknown_and_not_allowed(self) -> None:
        """Unknown parameters, and known ones the caller does not allow, are C{555 5.5.4}."""
        self.assertEqual(_codes(parse_mail("FROM:<a@b> XFOO=1")), (555, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<a@b> SIZE=1", frozenset())), (555, "5.5.4"))
        self.assertEqual(_codes(parse_rcpt("TO:<a@b> SIZE=1")), (555, "5.5.4"))

    def test_binarymime_not_supported(self) -> None:
        """
        C{BODY=BINARYMIME} (in any case) is C{555 5.5.4}: BINARYMIME is never offered.
        """
        self.assertEqual(_codes(parse_mail("FROM:<a@b> BODY=BINARYMIME")), (555, "5.5.4"))
        self.assertEqual(_codes(parse_mail("FROM:<a@b> BODY=binarymime")), (555, "5.5.4"))

    def test_no_c1_controls_in_addresses(self) -> None:
        """
        A C1 control (U+0080 to U+009F) in a local part or a domain is bad syntax; other
        non-ASCII text (SMTPUTF8) is fine.
        """
        for path in ["<a\x85b@c.example>", "<a@c\x9b.example>", '<"a\x85"@c.example>']:
            self.assertEqual(_codes(parse_mail(f"FROM:{path} SMTPUTF8")), (501, "5.1.7"), path)
            self.assertEqual(_codes(parse_rcpt(f"TO:{path}")), (501, "5.1.3"), path)
        parsed = parse_mail("FROM:<zoë\xa0x@exämple.test> SMTPUTF8")
        assert isinstance(parsed, MailCommand)
        self.assertEqual(parsed.sender, "zoë\xa0x@exämple.test")

    def test_malformed_and_repeated(self) -> None:
        """Repeated parameters and bad values are C{501 5.5.4}."""
        for text in [
            "FROM:<a@b> SIZE=1 size=2",
            "FROM:<a@b> SIZE=x",
            "FROM:<a@b> SIZE",
            "FROM:<a@b> BODY=9BIT",
            "FROM:<a@b> RET=ALL",
            "FROM:<a@b> SMTPUTF8=yes",
            "FROM:<a@b> ENVID=a+zz",
            "FROM:<a@b> =x",
        ]:
            self.assertEqual(_codes(parse_mail(text)), (501, "5.5.4"), text)
        for text in [
            "TO:<a@b> NOTIFY=NEVER,SUCCESS",
            "TO:<a@b> NOTIFY=SOMETIMES",
            "TO:<a@b> NOTIFY=SUCCESS,SUCCESS",
            "TO:<a@b> ORCPT=rfc822",
        ]:
            self.assertEqual(_codes(parse_rcpt(text)), (501, "5.5.4"), text)
