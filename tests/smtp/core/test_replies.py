"""Tests for L{mdtwist.smtp.core.replies}."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.errors import RemoteProtocolError
from mdtwist.smtp.core.replies import Reply, ReplyParser, reply
from tests.smtp.core.helpers import bytewise, whole


def _parse(chunks: list[bytes]) -> list[Reply]:
    parser = ReplyParser()
    result = []
    for chunk in chunks:
        parser.feed(chunk)
        while (next_reply := parser.next_reply()) is not None:
            result.append(next_reply)
    return result


class ReplyTests(SynchronousTestCase):
    """Tests for L{Reply}."""

    def test_single_line(self) -> None:
        """A one-line reply is code, space, enhanced code, text, CRLF."""
        self.assertEqual(reply(250, "2.1.0", "Ok").to_bytes(), b"250 2.1.0 Ok\r\n")
        self.assertEqual(reply(354, None, "Go").to_bytes(), b"354 Go\r\n")

    def test_multi_line(self) -> None:
        """Lines before the last use a hyphen; the enhanced code is on every line."""
        self.assertEqual(
            Reply(550, "5.7.1", ("a", "b")).to_bytes(), b"550-5.7.1 a\r\n550 5.7.1 b\r\n"
        )

    def test_validation(self) -> None:
        """Codes outside 200-599, enhanced codes of another class, and CR/LF in text fail."""
        self.assertRaises(ValueError, reply, 199, None, "x")
        self.assertRaises(ValueError, reply, 250, "5.0.0", "x")
        self.assertRaises(ValueError, reply, 250, "2.0", "x")
        self.assertRaises(ValueError, reply, 250, "2.0.0", "a\r\nMAIL")
        self.assertRaises(ValueError, Reply, 250, "2.0.0", ())

    def test_properties(self) -> None:
        """C{category}, C{is_positive} and C{text} describe the reply."""
        r = Reply(451, "4.3.0", ("a", "b"))
        self.assertEqual((r.category, r.is_positive, r.text), (4, False, "a\nb"))


class ReplyParserTests(SynchronousTestCase):
    """Tests for L{ReplyParser}, fed whole and one byte at a time."""

    def test_round_trip(self) -> None:
        """Encoded replies parse back to equal values."""
        replies = [
            reply(220, None, "mx ESMTP"),
            Reply(250, None, ("mx", "PIPELINING", "SIZE 10")),
            Reply(550, "5.1.1", ("No such user", "really")),
            reply(334, None, ""),
        ]
        data = b"".join(r.to_bytes() for r in replies)
        for chunk in (whole, bytewise):
            self.assertEqual(_parse(chunk(data)), replies)

    def test_bare_code(self) -> None:
        """A line with only a code is a reply with an empty text."""
        self.assertEqual(_parse([b"250\r\n"]), [reply(250, None, "")])

    def test_malformed(self) -> None:
        """
        Malformed replies raise L{RemoteProtocolError}.

        Bad codes, bad separators, changing codes and over-long lines are malformed.
        """
        for data in [b"25 x\r\n", b"250x\r\n", b"650 x\r\n", b"250-a\r\n251 b\r\n", b"hello\r\n"]:
            parser = ReplyParser()
            parser.feed(data)
            self.assertRaises(RemoteProtocolError, parser.next_reply)
        parser = ReplyParser(max_line=10)
        parser.feed(b"250 " + b"x" * 20 + b"\r\n")
        self.assertRaises(RemoteProtocolError, parser.next_reply)

    def test_incomplete(self) -> None:
        """A multi-line reply is returned only once its last line arrived."""
        parser = ReplyParser()
        parser.feed(b"250-a\r\n")
        self.assertIsNone(parser.next_reply())
        parser.feed(b"250 b\r\n")
        self.assertEqual(parser.next_reply(), Reply(250, None, ("a", "b")))
