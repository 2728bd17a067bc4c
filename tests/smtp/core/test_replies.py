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


class ReplyEncodingTests(SynchronousTestCase):
    """L{Reply.to_bytes} for one-line replies matches the general multi-line form."""

    def test_single_line_forms(self) -> None:
        """Empty text, no enhanced code, and UTF-8 text encode like the multi-line form."""
        self.assertEqual(reply(250, None, "").to_bytes(), b"250 \r\n")
        self.assertEqual(reply(334, None).to_bytes(), b"334 \r\n")
        self.assertEqual(reply(250, "2.0.0", "").to_bytes(), b"250 2.0.0 \r\n")
        self.assertEqual(
            reply(250, "2.1.5", "J\u00f6rg ok").to_bytes(), "250 2.1.5 J\u00f6rg ok\r\n".encode()
        )
        self.assertEqual(
            Reply(250, None, ("a", "b", "c")).to_bytes(), b"250-a\r\n250-b\r\n250 c\r\n"
        )


class FeedLineTests(SynchronousTestCase):
    """Tests for L{ReplyParser.feed_line}: lines framed by the caller."""

    def _feed(self, *lines: bytes) -> list[Reply | None]:
        parser = ReplyParser()
        return [parser.feed_line(line) for line in lines]

    def test_single_line(self) -> None:
        """
        A one-line reply: the enhanced code is taken off the text when its class matches; an
        enhanced code alone leaves an empty text.
        """
        self.assertEqual(self._feed(b"250 2.1.0 Sender ok"), [reply(250, "2.1.0", "Sender ok")])
        self.assertEqual(self._feed(b"250 2.1.0"), [reply(250, "2.1.0", "")])
        self.assertEqual(self._feed(b"250 5.1.0 odd"), [reply(250, None, "5.1.0 odd")])
        self.assertEqual(self._feed(b"354 3.0.0 go"), [reply(354, None, "3.0.0 go")])
        self.assertEqual(self._feed(b"250 2.1.0x"), [reply(250, None, "2.1.0x")])
        self.assertEqual(self._feed(b"250"), [reply(250, None, "")])
        self.assertEqual(self._feed(b"250 "), [reply(250, None, "")])

    def test_multi_line(self) -> None:
        """
        A multi-line reply completes on its last line; the enhanced code of the first line is
        taken off every line that carries it.
        """
        self.assertEqual(
            self._feed(b"550-5.7.1 a", b"550-5.7.1", b"550-b", b"550 5.7.1 c"),
            [None, None, None, Reply(550, "5.7.1", ("a", "", "b", "c"))],
        )
        self.assertEqual(
            self._feed(b"250-mx", b"250-2.0.0 x", b"250 SIZE 10"),
            [None, None, Reply(250, None, ("mx", "2.0.0 x", "SIZE 10"))],
        )

    def test_multi_line_in_pieces(self) -> None:
        """
        A multi-line reply with enhanced codes, fed in pieces cut anywhere, parses like the
        same reply fed whole, and the parser is ready for the next reply afterwards.
        """
        data = b"250-2.0.0 mx\r\n250-2.0.0 PIPELINING\r\n250 2.0.0 SIZE 10\r\n251 2.1.5 ok\r\n"
        expected = [
            Reply(250, "2.0.0", ("mx", "PIPELINING", "SIZE 10")),
            reply(251, "2.1.5", "ok"),
        ]
        for cut in range(len(data) + 1):
            self.assertEqual(_parse([data[:cut], data[cut:]]), expected, cut)
        self.assertEqual(_parse(bytewise(data)), expected)

    def test_malformed(self) -> None:
        """Codes outside 200-599, a bad separator or too short a line raise."""
        for line in [b"199 x", b"600 x", b"2a0 x", b"25", b"250x", b"", b" 250 x", b"\xff50 x"]:
            parser = ReplyParser()
            self.assertRaises(RemoteProtocolError, parser.feed_line, line)

    def test_errors_forget_the_reply(self) -> None:
        """
        A reply refused for its text (not UTF-8, bare CR or LF) is forgotten: the next reply
        parses on its own, even with another code.
        """
        for bad in [b"250 \xff", b"250 a\rb", b"250 a\nb"]:
            parser = ReplyParser()
            self.assertIsNone(parser.feed_line(b"250-first"))
            self.assertRaises(RemoteProtocolError, parser.feed_line, bad)
            self.assertEqual(parser.feed_line(b"451 4.3.0 later"), reply(451, "4.3.0", "later"))

    def test_error_order(self) -> None:
        """Text that is not UTF-8 is reported before a bare CR or LF, whichever line holds it."""
        parser = ReplyParser()
        parser.feed_line(b"250-a\rb")
        with self.assertRaises(RemoteProtocolError) as caught:
            parser.feed_line(b"250 \xff")
        self.assertEqual(str(caught.exception), "reply text is not UTF-8")
        parser = ReplyParser()
        with self.assertRaises(RemoteProtocolError) as caught:
            parser.feed_line(b"250 a\nb")
        self.assertEqual(str(caught.exception), "bare CR or LF in reply")
