# -*- test-case-name: tests.smtp.core.test_framing -*-
"""
Byte framing shared by both roles: CRLF lines, the DATA reader, and the dot-stuffing encoder.

Rules:
 - a line ends only at CR LF; a CR or LF anywhere else is content, and callers decide what a
   bare CR or LF means (the server refuses it);
 - a line longer than the limit is never buffered whole: its bytes are dropped as they arrive
   and the line is reported, once its CRLF arrives, as an overflow;
 - DATA ends only at the exact sequence CR LF "." CR LF, counted from the CRLF that ended the
   DATA command: nothing else (LF.LF, CR.CR, LF.CRLF, CRLF.LF ...) ends it.

Buffering is linear: the search for CRLF resumes where the last search stopped.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import enum
import re

import attrs

#: The default limit for command lines, CRLF included (RFC 5321 4.5.3.1.4).
MAX_COMMAND_LINE = 512

#: The default limit for text lines, CRLF included (RFC 5321 4.5.3.1.6).
MAX_TEXT_LINE = 1000

_CRLF = b"\r\n"

#: A byte no text line may hold (RFC 2045 section 2.7, RFC 6152).
_NUL = b"\x00"

#: The end of DATA, from the CRLF of the line before it.
_END_MARKER = b"\r\n.\r\n"

#: The end of DATA as the first line (an empty message).
_END_FIRST = b".\r\n"

#: A stuffed dot: a CRLF and the dot that opens the next line.
_STUFFED = b"\r\n."


@attrs.frozen
class Line:
    """
    One line taken from a L{LineBuffer}.

    @ivar content: the line without its CRLF (empty when C{overflow}).
    @ivar overflow: whether the line was longer than the limit; its bytes were dropped.
    """

    content: bytes
    overflow: bool = False

    @property
    def has_bare_cr_or_lf(self) -> bool:
        """Whether the line holds a CR or LF that is not part of its terminating CRLF."""
        return b"\r" in self.content or b"\n" in self.content


#: The one value every over-long line is reported as.
_OVERFLOW = Line(b"", overflow=True)


class LineBuffer:
    """A receive buffer that hands out CRLF-terminated lines."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._searched = 0
        self._overflowing = False

    def __len__(self) -> int:
        """@return: the number of bytes buffered."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """
        Append received bytes.

        @param data: the bytes.
        """
        self._buffer += data

    def clear(self) -> None:
        """Drop everything buffered (used after the C{220} to STARTTLS)."""
        self._buffer.clear()
        self._searched = 0
        self._overflowing = False

    def take_all(self) -> bytes:
        """
        Remove and return everything buffered, complete line or not.

        @return: the bytes.
        """
        data = bytes(self._buffer)
        self.clear()
        return data

    def take(self, count: int) -> bytes:
        """
        Remove and return up to C{count} bytes as they are, lines or not (a BDAT chunk).

        @param count: the most bytes to take.
        @return: the bytes; fewer than C{count} (or none) when fewer are buffered.
        """
        buffer = self._buffer
        data = bytes(buffer[:count])
        del buffer[:count]
        self._searched = max(0, self._searched - len(data))
        return data

    def read_line(self, max_length: int) -> Line | None:
        """
        Take the next line.

        @param max_length: the longest line allowed, CRLF included.
        @return: the line; or L{None} when no complete line is buffered.
        """
        buffer = self._buffer
        searched = self._searched
        # Resume one byte early: a CR at the end of the last search may start a CRLF.
        end = buffer.find(_CRLF, searched - 1 if searched else 0)
        if end < 0:
            self._searched = len(buffer)
            if len(buffer) > max_length - 1 or self._overflowing:
                # Too long already: drop what we have, but keep a final CR that may be the
                # start of the CRLF that ends the line.
                keep = 1 if buffer.endswith(b"\r") else 0
                del buffer[: len(buffer) - keep]
                self._searched = keep
                self._overflowing = True
            return None
        self._searched = 0
        if self._overflowing or end + 2 > max_length:
            del buffer[: end + 2]
            self._overflowing = False
            return _OVERFLOW
        content = bytes(buffer[:end])
        del buffer[: end + 2]
        return Line(content)

    def _take_clean_lines(self, max_length: int) -> tuple[bytes, bool] | None:
        """
        Take, in one piece, every complete line up to the end marker of DATA, if all are clean.

        This is L{DataReader}'s fast path: the lines are taken only when none of them is too
        long or holds a bare CR or LF and the buffer does not start inside an over-long line;
        otherwise nothing is taken and the caller reads line by line.

        @param max_length: the longest line allowed, CRLF included.
        @return: the lines with their CRLFs and whether the end marker (taken too) followed
            them; or L{None} when nothing was taken.
        """
        buffer = self._buffer
        if self._overflowing:
            return None
        searched = self._searched
        if buffer.find(_CRLF, searched - 1 if searched else 0) < 0:
            return None  # no complete line: read_line knows what to do with a partial one
        if buffer.startswith(_END_FIRST):
            del buffer[:3]
            self._searched = 0
            return b"", True
        marker = buffer.find(_END_MARKER)
        if marker >= 0:
            stop, taken, done = marker + 2, marker + 5, True
        else:
            stop = buffer.rfind(_CRLF) + 2
            taken, done = stop, False
        lines = bytes(buffer[:stop])
        if stop > max_length and _has_long_line(lines, max_length):
            return None
        crlf = lines.count(_CRLF)
        # Clean when the CRs and LFs are exactly those of the CRLFs (which cannot overlap):
        # one pass that drops them all, rather than a count of each.
        if stop - len(lines.translate(None, b"\r\n")) != 2 * crlf:
            return None
        del buffer[:taken]
        # Without the end marker, what is left holds no CRLF: the next search starts after it.
        self._searched = 0 if done else len(buffer)
        return lines, done


def _has_long_line(lines: bytes, max_length: int) -> bool:
    # Whether a line of `lines` (which ends with a line end) is longer than max_length, its
    # LF included. Each step jumps to the last line start within max_length bytes of the
    # current one: every line between them is short enough. So a step covers about
    # max_length bytes, however short the lines, and no line is made into an object.
    start, end = 0, len(lines)
    while start < end:
        last = lines.rfind(b"\n", start, start + max_length)
        if last < 0:
            return True
        start = last + 1
    return False


class DataProblem(enum.Enum):
    """Why a message read by L{DataReader} must be refused."""

    TOO_BIG = "too-big"
    LINE_TOO_LONG = "line-too-long"
    BARE_CR_LF = "bare-cr-lf"
    NUL = "nul"


def message_problems(message: bytes, max_line: int = MAX_TEXT_LINE) -> set[DataProblem]:
    """
    Check a message that arrived in one piece (BDAT chunks) by the rules DATA enforces line by
    line: CRLF line ends only, no line longer than the limit.

    @param message: the message as received.
    @param max_line: the longest text line, CRLF included.
    @return: the problems found (never L{DataProblem.TOO_BIG}: the size is checked on arrival).
    """
    problems: set[DataProblem] = set()
    crlf = message.count(_CRLF)
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        problems.add(DataProblem.BARE_CR_LF)
    if len(message) + 2 > max_line and max(map(len, message.split(_CRLF))) + 2 > max_line:
        problems.add(DataProblem.LINE_TOO_LONG)
    if _NUL in message:
        problems.add(DataProblem.NUL)
    return problems


class DataReader:
    """
    Reads the text of one message after C{354}: unstuffs dots, counts bytes, finds the end.

    The reader keeps reading to the real end marker whatever goes wrong; problems are recorded
    and reported when the message ends, so that nothing inside a refused message is ever taken
    for a command.

    While nothing went wrong, the reader takes every complete line buffered in one piece (one
    search for the end marker, one count of CR and LF, one unstuffing C{replace}); a piece with
    an over-long line or a bare CR or LF, or one that makes the message too big, is read line by
    line instead, so the outcome never depends on how the bytes were cut.

    @ivar problems: the problems seen so far.
    @ivar size: the number of message bytes seen (unstuffed, CRLF line ends).
    """

    def __init__(self, max_size: int, max_line: int = MAX_TEXT_LINE) -> None:
        """
        Start reading one message.

        @param max_size: the largest message kept; beyond it the bytes are counted, not kept.
        @param max_line: the longest text line, CRLF included.
        """
        self._max_size = max_size
        self._max_line = max_line
        self._body = bytearray()
        self.size = 0
        self.problems: set[DataProblem] = set()

    def read(self, lines: LineBuffer) -> bool:
        """
        Consume lines from C{lines} until the end marker or the end of the buffer.

        @param lines: the connection's receive buffer.
        @return: whether the end marker was reached (the bytes after it stay in C{lines}).
        """
        if not self.problems:
            # Fast path: every complete line at once, while nothing went wrong. A line that is
            # too long or holds a bare CR or LF leaves the work to the line-by-line reader.
            taken = lines._take_clean_lines(self._max_line)
            if taken is not None:
                text, done = taken
                if text.startswith(b"."):
                    text = text[1:]
                if _STUFFED in text:
                    text = text.replace(_STUFFED, _CRLF)
                size = self.size + len(text)
                if size <= self._max_size and _NUL not in text:
                    self.size = size
                    self._body += text
                else:
                    # Too big or holding a NUL: count and refuse line by line, like the
                    # reader below.
                    for content in text.split(_CRLF)[:-1]:
                        if _NUL in content:
                            self.problems.add(DataProblem.NUL)
                        self._add(content)
                if done:
                    return True
        while True:
            line = lines.read_line(self._max_line)
            if line is None:
                return False
            if line.overflow:
                self.problems.add(DataProblem.LINE_TOO_LONG)
                continue
            content = line.content
            if content == b".":
                return True
            if content.startswith(b"."):
                content = content[1:]
            if line.has_bare_cr_or_lf:
                self.problems.add(DataProblem.BARE_CR_LF)
            if _NUL in content:
                self.problems.add(DataProblem.NUL)
            self._add(content)

    def _add(self, content: bytes) -> None:
        # One unstuffed line, without its CRLF.
        self.size += len(content) + 2
        if self.size > self._max_size:
            self.problems.add(DataProblem.TOO_BIG)
            self._body.clear()
        if not self.problems:
            self._body += content
            self._body += _CRLF

    @property
    def body(self) -> bytes:
        """The message, CRLF line ends, dots unstuffed (empty once a problem was seen)."""
        return bytes(self._body)


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


class DotStuffer:
    """
    Encodes a message for DATA (the client role), one chunk at a time.

    Every line end becomes CRLF (a bare CR or LF in a stored message never reaches the wire as
    such), a dot that opens a line is doubled, and L{finish} adds the end marker. The output does
    not depend on where the chunks are cut: a CR at the end of a chunk is held back until the
    next byte shows whether an LF follows.
    """

    def __init__(self) -> None:
        self._at_line_start = True
        self._held_cr = False

    def encode(self, chunk: bytes) -> bytes:
        """
        Encode the next chunk of the message.

        @param chunk: message bytes.
        @return: the bytes to send.
        """
        if self._held_cr:
            chunk = b"\r" + chunk
            self._held_cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._held_cr = True
        if not chunk:
            return b""
        crlf = chunk.count(_CRLF)
        if chunk.count(b"\r") == crlf and chunk.count(b"\n") == crlf:
            text = chunk  # every line end is a CRLF already (the usual case)
        else:
            text = _LINE_ENDS.sub(_CRLF, chunk)
        if self._at_line_start and text.startswith(b"."):
            text = b"." + text
        text = text.replace(b"\r\n.", b"\r\n..")
        self._at_line_start = text.endswith(_CRLF)
        return text

    def finish(self) -> bytes:
        """
        End the message.

        @return: the last bytes to send: a held CR as CRLF, a CRLF if the message did not end
            with one, and the end marker C{.} CRLF.
        """
        tail = b""
        if self._held_cr:
            tail = _CRLF
            self._held_cr = False
            self._at_line_start = True
        if not self._at_line_start:
            tail += _CRLF
        self._at_line_start = True
        return tail + b"." + _CRLF


def dot_stuff(message: bytes) -> bytes:
    """
    Encode a whole message for DATA, end marker included.

    @param message: the message.
    @return: the bytes to send after C{354}.
    """
    stuffer = DotStuffer()
    return stuffer.encode(message) + stuffer.finish()
