# -*- test-case-name: tests.smtp.core.test_replies -*-
"""
SMTP replies: the value the server sends and the parser the client reads them with.

A reply is a three-digit code, an optional enhanced status code (RFC 2034, RFC 3463) and one or
more text lines. On the wire every line repeats the code, lines before the last use C{-} after
the code, and the enhanced code (when there is one) opens the text of every line.

Pure: standard library and attrs only.
"""

from __future__ import annotations

import re

import attrs

from mdtwist.smtp.core.errors import RemoteProtocolError
from mdtwist.smtp.core.framing import LineBuffer

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")

#: Every valid reply code as it opens a reply line, and its value.
_CODES = {b"%d" % code: code for code in range(200, 600)}

#: What may follow the code: a space (last line), a hyphen (more lines follow) or nothing.
_SEPARATORS = frozenset({b" ", b"-", b""})

#: The class digit of an enhanced status code, by the category of the reply code.
_CLASS_DIGITS = {2: "2", 3: "3", 4: "4", 5: "5"}

#: The longest reply line the parser accepts, CRLF included. RFC 5321 4.5.3.1.5 says 512, but
#: real servers send longer lines, so the client is lenient up to this many octets.
MAX_REPLY_LINE = 4096


def _lines(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _check_enhanced(
    instance: Reply, attribute: attrs.Attribute[str | None], value: str | None
) -> None:
    if value is None:
        return
    if not _ENHANCED.fullmatch(value) or value[0] != str(instance.code)[0]:
        raise ValueError(f"enhanced status {value!r} does not fit reply code {instance.code}")


def _check_code(instance: Reply, attribute: attrs.Attribute[int], value: int) -> None:
    if not 200 <= value <= 599:
        raise ValueError(f"reply code {value} is outside 200-599")


def _check_lines(
    instance: Reply, attribute: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    if not value:
        raise ValueError("a reply needs at least one line")
    for line in value:
        if "\r" in line or "\n" in line:
            raise ValueError("reply text must not contain CR or LF")


@attrs.frozen
class Reply:
    """
    One SMTP reply.

    @ivar code: the three-digit reply code.
    @ivar enhanced: the enhanced status code such as C{"2.1.0"}, or L{None}; its class digit must
        equal the first digit of C{code}.
    @ivar lines: the text lines, at least one (it may be empty).
    """

    code: int = attrs.field(validator=_check_code)
    enhanced: str | None = attrs.field(validator=_check_enhanced)
    lines: tuple[str, ...] = attrs.field(converter=_lines, validator=_check_lines)

    @property
    def category(self) -> int:
        """The first digit of the code: 2 done, 3 go on, 4 temporary, 5 permanent failure."""
        return self.code // 100

    @property
    def is_positive(self) -> bool:
        """Whether this is a 2xx reply."""
        return self.category == 2

    @property
    def text(self) -> str:
        """The text lines joined with newlines (for logs and error messages)."""
        return "\n".join(self.lines)

    def to_bytes(self) -> bytes:
        """
        Encode the reply for the wire.

        @return: the reply lines, each ending in CRLF, UTF-8 encoded (the text is ASCII unless a
            caller put UTF-8 in it on purpose).
        """
        lines = self.lines
        if len(lines) == 1:
            if self.enhanced is None:
                return f"{self.code} {lines[0]}\r\n".encode()
            return f"{self.code} {self.enhanced} {lines[0]}\r\n".encode()
        out = []
        last = len(lines) - 1
        for index, line in enumerate(lines):
            separator = " " if index == last else "-"
            text = line if self.enhanced is None else f"{self.enhanced} {line}"
            out.append(f"{self.code}{separator}{text}")
        return ("\r\n".join(out) + "\r\n").encode("utf-8")


def reply(code: int, enhanced: str | None, *lines: str) -> Reply:
    """
    Build a reply in one call: C{reply(250, "2.1.0", "Ok")}.

    @param code: the reply code.
    @param enhanced: the enhanced status code, or L{None}.
    @param lines: the text lines.
    @return: the reply.
    """
    return Reply(code, enhanced, lines or ("",))


class ReplyParser:
    """
    Reads replies from a server (the client role): feed bytes, take complete replies.

    Lines end only at CRLF. A line that does not start with a code in 200-599 followed by a space,
    a hyphen or nothing, a continuation line whose code differs from the first, or an over-long
    line raises L{RemoteProtocolError}. The enhanced status code is recognised when it opens the
    first line and its class digit matches the code; it is then stripped from every line that
    carries it.
    """

    def __init__(self, max_line: int = MAX_REPLY_LINE) -> None:
        """@param max_line: the longest line accepted, CRLF included."""
        self._buffer = LineBuffer()
        self._max_line = max_line
        self._code = 0
        self._pending: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """
        Add received bytes.

        @param data: bytes from the server.
        """
        self._buffer.feed(data)

    def next_reply(self) -> Reply | None:
        """
        Take the next complete reply.

        @return: the reply, or L{None} when more bytes are needed.
        @raise RemoteProtocolError: the server sent a malformed reply.
        """
        while True:
            line = self._buffer.read_line(self._max_line)
            if line is None:
                return None
            if line.overflow:
                raise RemoteProtocolError("reply line too long")
            answer = self.feed_line(line.content)
            if answer is not None:
                return answer

    def feed_line(self, content: bytes) -> Reply | None:
        """
        Take one reply line that the caller framed itself, instead of bytes from L{feed}.

        @param content: the line without its CRLF; the caller enforces the length limit.
        @return: the reply this line completes, or L{None} when more lines are needed.
        @raise RemoteProtocolError: the line is malformed, or completes a malformed reply.
        """
        code = _CODES.get(content[:3])
        separator = content[3:4]
        if code is None or separator not in _SEPARATORS:
            raise RemoteProtocolError("malformed reply line")
        if not self._pending:
            self._code = code
        elif code != self._code:
            raise RemoteProtocolError("reply code changed inside a multi-line reply")
        self._pending.append(content[4:])
        if separator == b"-":
            return None
        return self._finish(code)

    def _finish(self, code: int) -> Reply:
        lines, self._pending = self._pending, []
        texts = _decode(lines)
        first, _, rest = texts[0].partition(" ")
        if first[:1] != _CLASS_DIGITS[code // 100] or not _ENHANCED.fullmatch(first):
            return Reply(code, None, tuple(texts))
        if len(texts) == 1:
            return Reply(code, first, (rest,))  # the usual reply: one line
        prefix = first + " "
        texts = [
            t[len(prefix) :] if t.startswith(prefix) else ("" if t == first else t) for t in texts
        ]
        return Reply(code, first, tuple(texts))


def _decode(lines: list[bytes]) -> list[str]:
    """
    Decode the texts of the lines of one reply.

    @param lines: the text of each line, after the code and the separator.
    @return: the texts.
    @raise RemoteProtocolError: a text is not UTF-8, or holds a bare CR or LF.
    """
    try:
        texts = [line.decode("utf-8") for line in lines]
    except UnicodeDecodeError:
        raise RemoteProtocolError("reply text is not UTF-8") from None
    joined = lines[0] if len(lines) == 1 else b"".join(lines)
    if b"\r" in joined or b"\n" in joined:
        raise RemoteProtocolError("bare CR or LF in reply")
    return texts
