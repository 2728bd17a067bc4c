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
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*))?", re.DOTALL)

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
        out = []
        last = len(self.lines) - 1
        for index, line in enumerate(self.lines):
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
        self._pending: list[tuple[int, bytes]] = []

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
            match = _REPLY_LINE.fullmatch(line.content)
            if match is None:
                raise RemoteProtocolError("malformed reply line")
            code = int(match.group(1))
            if self._pending and self._pending[0][0] != code:
                raise RemoteProtocolError("reply code changed inside a multi-line reply")
            self._pending.append((code, match.group(3) or b""))
            if match.group(2) != b"-":
                return self._finish()

    def _finish(self) -> Reply:
        code = self._pending[0][0]
        try:
            texts = [text.decode("utf-8") for _, text in self._pending]
        except UnicodeDecodeError:
            raise RemoteProtocolError("reply text is not UTF-8") from None
        finally:
            self._pending = []
        enhanced: str | None = None
        first, _, _ = texts[0].partition(" ")
        if _ENHANCED.fullmatch(first) and first[0] == str(code)[0]:
            enhanced = first
            prefix = first + " "
            texts = [
                t[len(prefix) :] if t.startswith(prefix) else ("" if t == first else t)
                for t in texts
            ]
        if any("\r" in t or "\n" in t for t in texts):
            raise RemoteProtocolError("bare CR or LF in reply")
        return Reply(code, enhanced, tuple(texts))
