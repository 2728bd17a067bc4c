"""Tests for L{mdtwist.smtp.core.trace}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.trace import (
    address_literal,
    count_received,
    date_time,
    received_header,
    trace_from,
    with_protocol,
)


class TraceTests(SynchronousTestCase):
    """Tests for hop counting and the C{Received:} header."""

    def test_count_only_header_section(self) -> None:
        """
        Only C{Received:} lines of the header section count, in any case.

        Continuation lines and body lines do not.
        """
        message = b"Received: a\r\n\tb\r\nRECEIVED: c\r\nSubject: x\r\n\r\nReceived: body\r\n"
        self.assertEqual(count_received(message), 2)

    def test_count_without_body_or_header(self) -> None:
        """
        A message that is all header counts every C{Received:} line; one that starts with
        the empty line has no header, so nothing counts.
        """
        self.assertEqual(count_received(b"Received: a\r\nReceived: b\r\n"), 2)
        self.assertEqual(count_received(b"Received: a\r\nReceived: b"), 2)
        self.assertEqual(count_received(b"\r\nReceived: a\r\n"), 0)
        self.assertEqual(count_received(b"Received: a\r\n\r\n" + b"Received: b\r\n" * 1000), 1)

    def test_with_protocol(self) -> None:
        """The C{with} keyword follows RFC 3848."""
        cases = {
            (False, False, False): "SMTP",
            (True, False, False): "ESMTP",
            (True, True, False): "ESMTPS",
            (True, False, True): "ESMTPA",
            (True, True, True): "ESMTPSA",
        }
        for (extended, tls, auth), expected in cases.items():
            self.assertEqual(
                with_protocol(extended=extended, tls=tls, authenticated=auth), expected
            )

    def test_literals(self) -> None:
        """IPv6 addresses get the C{IPv6:} tag."""
        self.assertEqual(address_literal("192.0.2.1"), "[192.0.2.1]")
        self.assertEqual(address_literal("2001:db8:0::1"), "[IPv6:2001:db8::1]")

    def test_header(self) -> None:
        """
        The header names HELO, IP, host, protocol, TLS, recipient and date.

        It is folded with CRLF and a tab.
        """
        header = received_header(
            helo="c.example",
            client_address="192.0.2.1",
            hostname="mx.example",
            protocol="ESMTPS",
            when=0.0,
            tls="TLSv1.3 TLS_AES_128_GCM_SHA256",
            recipient="b@mx.example",
        )
        self.assertEqual(
            header,
            b"Received: from c.example ([192.0.2.1])\r\n"
            b"\tby mx.example (mdtwist) with ESMTPS\r\n"
            b"\t(TLSv1.3 TLS_AES_128_GCM_SHA256)\r\n"
            b"\tfor <b@mx.example>; Thu, 01 Jan 1970 00:00:00 +0000\r\n",
        )

    def test_date_time(self) -> None:
        """
        The stamp is the second's, in UTC; the messages of one second share it, and the next
        second gets its own.
        """
        self.assertEqual(date_time(1_796_000_000), "Mon, 30 Nov 2026 00:53:20 +0000")
        stamps = {
            received_header(
                helo="c.example",
                client_address="192.0.2.1",
                hostname="mx.example",
                protocol="ESMTP",
                when=when,
                tls=None,
                recipient=None,
            ).rpartition(b"; ")[2]
            for when in (1_796_000_000.0, 1_796_000_000.999)
        }
        self.assertEqual(stamps, {b"Mon, 30 Nov 2026 00:53:20 +0000\r\n"})
        self.assertEqual(date_time(1_796_000_001), "Mon, 30 Nov 2026 00:53:21 +0000")

    def test_helo_not_a_domain(self) -> None:
        """
        A HELO name that is neither a domain nor an address literal is not put in the
        C{from} clause as sent: the client's address stands there, and the name follows in a
        comment with every character that could end the clause, the comment or the line
        written as C{%XX}. Domains and literals are kept as sent.
        """
        self.assertEqual(trace_from("c.example", "192.0.2.1"), "from c.example ([192.0.2.1])")
        self.assertEqual(trace_from("[192.0.2.9]", "192.0.2.1"), "from [192.0.2.9] ([192.0.2.1])")
        self.assertEqual(
            trace_from("x;y=z", "192.0.2.1"), "from [192.0.2.1] (invalid HELO x%3By%3Dz)"
        )
        self.assertEqual(
            trace_from('a(b)\\c"\x7f', "::1"),
            "from [IPv6:::1] (invalid HELO a%28b%29%5Cc%22%7F)",
        )
        self.assertEqual(
            trace_from("zoë.example", "192.0.2.1"),
            "from [192.0.2.1] (invalid HELO zo%C3%AB.example)",
        )
        header = received_header(
            helo="x;for <a@b>",
            client_address="192.0.2.1",
            hostname="mx",
            protocol="SMTP",
            when=0.0,
        )
        self.assertTrue(
            header.startswith(b"Received: from [192.0.2.1] (invalid HELO x%3Bfor%20%3Ca")
        )
        self.assertEqual(header.count(b";"), 1)
