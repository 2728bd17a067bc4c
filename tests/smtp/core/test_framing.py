"""Tests for L{mdtwist.smtp.core.framing}."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.framing import (
    DataProblem,
    DataReader,
    DotStuffer,
    Line,
    LineBuffer,
    dot_stuff,
    message_problems,
)
from tests.smtp.core.helpers import bytewise, whole


def _lines(chunks: list[bytes], max_length: int = 20) -> list[Line]:
    buffer = LineBuffer()
    result = []
    for chunk in chunks:
        buffer.feed(chunk)
        while (line := buffer.read_line(max_length)) is not None:
            result.append(line)
    return result


def _read(
    chunks: list[bytes], max_size: int = 1000, max_line: int = 20
) -> tuple[DataReader, bool, bytes]:
    buffer = LineBuffer()
    reader = DataReader(max_size, max_line)
    done = False
    for chunk in chunks:
        buffer.feed(chunk)
        if not done:
            done = reader.read(buffer)
    return reader, done, buffer.take_all()


class LineBufferTests(SynchronousTestCase):
    """Tests for L{LineBuffer}."""

    def test_crlf_only(self) -> None:
        """Lines end only at CRLF; a bare LF or CR stays inside the line, whatever the chunking."""
        for chunk in (whole, bytewise):
            self.assertEqual(
                _lines(chunk(b"a\nb\r\nc\rd\r\ne")),
                [Line(b"a\nb"), Line(b"c\rd")],
            )
            self.assertTrue(Line(b"a\nb").has_bare_cr_or_lf)

    def test_overflow(self) -> None:
        """
        An over-long line is reported once, as an overflow without content.

        The limit counts the CRLF; the next line is read normally.
        """
        data = b"x" * 19 + b"\r\n" + b"y" * 18 + b"\r\nok\r\n"
        for chunk in (whole, bytewise):
            self.assertEqual(
                _lines(chunk(data)),
                [Line(b"", overflow=True), Line(b"y" * 18), Line(b"ok")],
            )

    def test_overflow_does_not_buffer(self) -> None:
        """The bytes of an over-long line are dropped as they arrive."""
        buffer = LineBuffer()
        buffer.feed(b"z" * 10000)
        self.assertIsNone(buffer.read_line(20))
        self.assertEqual(len(buffer), 0)
        buffer.feed(b"z\r")
        self.assertIsNone(buffer.read_line(20))
        buffer.feed(b"\nnext\r\n")
        self.assertEqual(buffer.read_line(20), Line(b"", overflow=True))
        self.assertEqual(buffer.read_line(20), Line(b"next"))

    def test_clear(self) -> None:
        """C{clear} drops everything buffered."""
        buffer = LineBuffer()
        buffer.feed(b"RSET\r\nNOOP\r\n")
        buffer.clear()
        self.assertIsNone(buffer.read_line(20))


class DataReaderTests(SynchronousTestCase):
    """Tests for L{DataReader}."""

    def test_end_marker_and_unstuffing(self) -> None:
        """CRLF.CRLF ends the message; a leading dot is removed; later bytes stay buffered."""
        for chunk in (whole, bytewise):
            reader, done, rest = _read(chunk(b"a\r\n..b\r\n.c\r\n.\r\nNOOP\r\n"))
            self.assertTrue(done)
            self.assertEqual(reader.body, b"a\r\n.b\r\nc\r\n")
            self.assertEqual(rest, b"NOOP\r\n")
            self.assertEqual(reader.problems, set())

    def test_empty_message(self) -> None:
        """A lone end marker is an empty message."""
        reader, done, _ = _read([b".\r\n"])
        self.assertTrue(done)
        self.assertEqual(reader.body, b"")

    def test_non_standard_markers(self) -> None:
        """None of the smuggling markers ends DATA; each marks a bare CR or LF."""
        probes = [b"\n.\n", b"\r.\r", b"\r.\n", b"\n.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"]
        for probe in probes:
            for chunk in (whole, bytewise):
                reader, done, _ = _read(chunk(b"a" + probe + b"b\r\n"))
                self.assertFalse(done, probe)
                self.assertEqual(reader.problems, {DataProblem.BARE_CR_LF}, probe)

    def test_too_big_and_too_long(self) -> None:
        """Size and line-length problems are recorded and reading goes on to the end marker."""
        reader, done, _ = _read([b"0123456789\r\n" * 3 + b".\r\n"], max_size=30)
        self.assertTrue(done)
        self.assertEqual(reader.problems, {DataProblem.TOO_BIG})
        self.assertEqual(reader.body, b"")
        reader, done, rest = _read([b"x" * 50 + b"\r\n.\r\nQUIT\r\n"])
        self.assertTrue(done)
        self.assertEqual(reader.problems, {DataProblem.LINE_TOO_LONG})
        self.assertEqual(rest, b"QUIT\r\n")


class DotStufferTests(SynchronousTestCase):
    """Tests for L{DotStuffer}: the output never depends on the chunk boundaries."""

    def test_stuffing(self) -> None:
        """A dot at the start of any line is doubled and the end marker is added."""
        self.assertEqual(dot_stuff(b".a\r\nb\r\n.\r\n"), b"..a\r\nb\r\n..\r\n.\r\n")

    def test_every_boundary(self) -> None:
        """Cutting the message at every offset gives the same bytes as encoding it whole."""
        message = b"x\r\n.\r\n..y\r\nz\r\n.\r\n"
        expected = dot_stuff(message)
        for cut in range(len(message) + 1):
            stuffer = DotStuffer()
            out = stuffer.encode(message[:cut]) + stuffer.encode(message[cut:]) + stuffer.finish()
            self.assertEqual(out, expected, cut)
        stuffer = DotStuffer()
        out = b"".join(stuffer.encode(b) for b in bytewise(message)) + stuffer.finish()
        self.assertEqual(out, expected)

    def test_bare_line_ends_and_missing_final_crlf(self) -> None:
        """Bare CR and LF become CRLF; a message without a final CRLF gets one before the dot."""
        self.assertEqual(dot_stuff(b"a\nb\rc"), b"a\r\nb\r\nc\r\n.\r\n")
        self.assertEqual(dot_stuff(b"a\r"), b"a\r\n.\r\n")
        self.assertEqual(dot_stuff(b""), b".\r\n")
        self.assertEqual(dot_stuff(b"a\n.b"), b"a\r\n..b\r\n.\r\n")


def _reference_read(
    chunks: list[bytes], max_size: int, max_line: int
) -> tuple[bool, bytes, int, set[DataProblem], list[Line | bytes]]:
    """
    Read a message line by line with L{LineBuffer.read_line}, the way L{DataReader} reads it
    without its fast path: the rules of the module docstring, one line at a time.
    """
    buffer = LineBuffer()
    body = bytearray()
    size = 0
    problems: set[DataProblem] = set()
    done = False
    for chunk in chunks:
        buffer.feed(chunk)
        while not done and (line := buffer.read_line(max_line)) is not None:
            if line.overflow:
                problems.add(DataProblem.LINE_TOO_LONG)
                continue
            content = line.content
            if content == b".":
                done = True
                break
            if content.startswith(b"."):
                content = content[1:]
            if line.has_bare_cr_or_lf:
                problems.add(DataProblem.BARE_CR_LF)
            if b"\x00" in content:
                problems.add(DataProblem.NUL)
            size += len(content) + 2
            if size > max_size:
                problems.add(DataProblem.TOO_BIG)
                body.clear()
            if not problems:
                body += content + b"\r\n"
    return done, bytes(body), size, problems, _rest(buffer)


def _rest(buffer: LineBuffer) -> list[Line | bytes]:
    """What follows the message: the complete lines, then the bytes of an incomplete one."""
    rest: list[Line | bytes] = []
    while (line := buffer.read_line(100)) is not None:
        rest.append(line)
    rest.append(buffer.take_all())
    return rest


class DataReaderFastPathTests(SynchronousTestCase):
    """
    L{DataReader} takes every complete clean line at once; it must read exactly like the
    line-by-line reader, wherever the chunks are cut.
    """

    def check(self, chunks: list[bytes], max_size: int = 1000, max_line: int = 20) -> None:
        """Read C{chunks} with L{DataReader} and with the reference; compare everything."""
        buffer = LineBuffer()
        reader = DataReader(max_size, max_line)
        done = False
        for chunk in chunks:
            buffer.feed(chunk)
            if not done:
                done = reader.read(buffer)
        got = (done, reader.body, reader.size, reader.problems, _rest(buffer))
        self.assertEqual(got, _reference_read(chunks, max_size, max_line), chunks)

    def test_every_cut(self) -> None:
        """Cutting a message at any one or two offsets does not change what is read."""
        message = b"a\r\n..b\r\n\r\n.c\r\nxyz\r\n.\r\nQUIT\r\n"
        for cut in range(len(message) + 1):
            self.check([message[:cut], message[cut:]])
            for second in range(cut, len(message) + 1, 3):
                self.check([message[:cut], message[cut:second], message[second:]])

    def test_problem_after_clean_lines(self) -> None:
        """
        Clean lines are taken at once; a bare LF, a bare CR or an over-long line in the same
        chunk or in a later one is still recorded, and reading goes on to the end marker.
        """
        for bad in [
            b"b\nc\r\n",
            b"b\rc\r\n",
            b"y" * 30 + b"\r\n",
            b"\r\r\n",
            b"z\n\r\n",
            b"b\n\rc\r\n",
            b"\n\r\r\n",
            b"n\x00ul\r\n",
            b"\x00" * 30 + b"\r\n",
        ]:
            message = b"a\r\n.a\r\n" + bad + b"d\r\n.\r\nNOOP\r\n"
            self.check([message])
            self.check([b"a\r\n.a\r\n", bad + b"d\r\n.\r\nNOOP\r\n"])
            self.check(bytewise(message))

    def test_line_at_the_limit(self) -> None:
        """A line exactly as long as the limit is clean; one byte more is too long."""
        for length in (17, 18, 19, 20):
            message = b"a\r\n" + b"x" * length + b"\r\nb\r\n.\r\n"
            self.check([message])
            self.check([message[:5], message[5:]])

    def test_long_line_anywhere_in_a_large_chunk(self) -> None:
        """
        In a chunk of many lines, one line at the limit, or one byte over it, is judged the
        same wherever it stands: first, last, or between short lines of any length.
        """
        rng = random.Random(1000)
        for position in (0, 1, 7, 63, 127):
            for length in (18, 19, 20):
                lines = [b"x" * rng.randrange(0, 19) + b"\r\n" for _ in range(128)]
                lines[position] = b"y" * length + b"\r\n"
                message = b"".join(lines) + b".\r\n"
                self.check([message], max_size=100_000)
                self.check([message[:1000], message[1000:]], max_size=100_000)

    def test_too_big_inside_a_chunk(self) -> None:
        """
        The size limit crossed inside a chunk of clean lines: counted line by line, the body
        is dropped, and later lines are counted but not kept.
        """
        message = b"0123456789\r\n" * 5 + b".\r\n"
        for max_size in (11, 12, 13, 24, 59, 60, 61):
            self.check([message], max_size=max_size)
            self.check([message[:30], message[30:]], max_size=max_size)

    def test_overflow_across_chunks(self) -> None:
        """An over-long line cut across chunks is dropped as it arrives, then the rest reads."""
        message = b"a\r\n" + b"x" * 45 + b"\r\n.b\r\n.\r\n"
        for cut in range(len(message) + 1):
            self.check([message[:cut], message[cut:]])

    def test_random_messages(self) -> None:
        """Random messages made of awkward pieces, cut at random, read like the reference."""
        pieces = [b".", b"..", b"\r", b"\n", b"\r\n", b"x", b"yy" * 5, b"\r\n.\r\n", b"\r\n."]
        rng = random.Random(5321)
        for _ in range(400):
            message = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 25)))
            message += rng.choice([b"\r\n.\r\n", b"", b"\r\n.\r\nRSET\r\n"])
            cuts = sorted(rng.randrange(len(message) + 1) for _ in range(rng.randrange(4)))
            chunks = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
            self.check(chunks, max_size=rng.choice([8, 40, 1000]), max_line=20)


class DotStufferFastPathTests(SynchronousTestCase):
    """L{DotStuffer} leaves a chunk whose line ends are all CRLF alone, apart from the dots."""

    def test_crlf_only(self) -> None:
        """A CRLF-only chunk comes out as it went in, with its leading dots doubled."""
        self.assertEqual(dot_stuff(b"a\r\nb\r\n"), b"a\r\nb\r\n.\r\n")
        self.assertEqual(dot_stuff(b".a\r\n.\r\n"), b"..a\r\n..\r\n.\r\n")

    def test_as_many_cr_as_lf(self) -> None:
        """As many CRs as LFs, but not in pairs, are still bare line ends."""
        self.assertEqual(dot_stuff(b"a\n\rb"), b"a\r\n\r\nb\r\n.\r\n")
        self.assertEqual(dot_stuff(b"a\r\n\n\rb"), b"a\r\n\r\n\r\nb\r\n.\r\n")


class TakeTests(SynchronousTestCase):
    """L{LineBuffer.take}: raw bytes for BDAT chunks, between line reads."""

    def test_take_then_read_line(self) -> None:
        """
        Taking bytes from the front keeps the line search right: a CRLF found after the
        take ends the line that is left.
        """
        buffer = LineBuffer()
        buffer.feed(b"abcd")
        self.assertIsNone(buffer.read_line(100))
        self.assertEqual(buffer.take(2), b"ab")
        buffer.feed(b"\r\nrest")
        self.assertEqual(buffer.read_line(100), Line(b"cd"))
        self.assertEqual(buffer.take(10), b"rest")
        self.assertEqual(buffer.take(10), b"")


class MessageProblemsTests(SynchronousTestCase):
    """L{message_problems}: the rules of DATA for a message that came in one piece."""

    def test_problems(self) -> None:
        """Bare CR, bare LF, NUL and over-long lines are found; clean messages have none."""
        self.assertEqual(message_problems(b"a\r\nb\r\n"), set())
        self.assertEqual(message_problems(b"a\r\nb"), set())
        self.assertEqual(message_problems(b"a\nb\r\n"), {DataProblem.BARE_CR_LF})
        self.assertEqual(message_problems(b"a\rb\r\n"), {DataProblem.BARE_CR_LF})
        self.assertEqual(message_problems(b"x" * 9 + b"\r\n", 10), {DataProblem.LINE_TOO_LONG})
        self.assertEqual(message_problems(b"x" * 8 + b"\r\n", 10), set())
        self.assertEqual(message_problems(b"a\x00b\r\n"), {DataProblem.NUL})
