"""Helpers for the core tests: chunking strategies and a scripted glue for L{ServerCore}."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.smtp.core.events import (
    Authenticate,
    Event,
    MailFrom,
    MessageReceived,
    Quit,
    RcptTo,
    Sentinel,
    StartTLS,
)
from mdtwist.smtp.core.replies import Reply, ReplyParser, reply
from mdtwist.smtp.core.server import ServerCore, ServerSettings, SessionState

Chunker = Callable[[bytes], list[bytes]]

if TYPE_CHECKING:
    _Base = SynchronousTestCase
else:
    _Base = object


def whole(data: bytes) -> list[bytes]:
    """
    Feed everything at once.

    @param data: the bytes.
    @return: one chunk.
    """
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    """
    Feed one byte at a time.

    @param data: the bytes.
    @return: one chunk per byte.
    """
    return [data[i : i + 1] for i in range(len(data))]


def default_answer(event: Event) -> Reply:
    """
    Answer like a permissive glue: accept everything; the password C{secret} is right.

    @param event: the event.
    @return: the reply.
    """
    if isinstance(event, MailFrom):
        return reply(250, "2.1.0", "Sender ok")
    if isinstance(event, RcptTo):
        return reply(250, "2.1.5", "Recipient ok")
    if isinstance(event, MessageReceived):
        return reply(250, "2.0.0", "Ok: queued as Q1")
    if isinstance(event, Authenticate):
        if event.password == "secret":
            return reply(235, "2.7.0", "Authentication successful")
        return reply(535, "5.7.8", "Authentication credentials invalid")
    if isinstance(event, StartTLS):
        return reply(220, "2.0.0", "Ready to start TLS")
    assert isinstance(event, Quit)
    return reply(221, "2.0.0", "Bye")


def parse_replies(data: bytes) -> list[Reply]:
    """
    Split server output into replies.

    @param data: everything the server sent.
    @return: the replies.
    """
    parser = ReplyParser()
    parser.feed(data)
    result = []
    while (next_reply := parser.next_reply()) is not None:
        result.append(next_reply)
    return result


class ScriptedGlue:
    """
    Drives a core the way the real glue does, answering each event at once.

    @ivar core: the core.
    @ivar events: every event seen.
    @ivar output: every byte the core produced.
    @ivar closed: whether the core asked to close.
    """

    def __init__(
        self, core: ServerCore, answer: Callable[[Event], Reply] = default_answer
    ) -> None:
        """
        Start the session (the greeting goes to L{output}).

        @param core: a new core.
        @param answer: how to answer events.
        """
        self.core = core
        self.events: list[Event] = []
        self.output = bytearray()
        self.closed = False
        self._answer = answer
        core.start()
        self.output += core.data_to_send()

    def feed(self, chunks: Iterable[bytes]) -> None:
        """
        Feed chunks one by one, processing all events after each.

        @param chunks: the chunks.
        """
        for chunk in chunks:
            self.core.receive_data(chunk)
            self.pump()

    def pump(self) -> None:
        """Process events until the core needs data, pauses, or closes."""
        while True:
            event = self.core.next_event()
            self.output += self.core.data_to_send()
            if event is Sentinel.NEED_DATA:
                return
            if event is Sentinel.CLOSE:
                self.closed = True
                return
            if event is Sentinel.PAUSED:
                if self.core.state is SessionState.TLS_PENDING:
                    self.core.start_tls()
                    continue
                return
            self.events.append(event)
            self.core.send(self._answer(event))
            self.output += self.core.data_to_send()

    def replies(self) -> list[Reply]:
        """@return: the replies sent so far, greeting included."""
        return parse_replies(bytes(self.output))

    def codes(self) -> list[tuple[int, str | None]]:
        """@return: code and enhanced code of every reply sent so far, greeting included."""
        return [(r.code, r.enhanced) for r in self.replies()]


class ConversationMixin(_Base):
    """
    Base for conversation tests that run once per chunking strategy.

    @cvar chunk: how to cut the client's bytes.
    """

    chunk: Chunker

    def converse(
        self,
        data: bytes,
        settings: ServerSettings | None = None,
        answer: Callable[[Event], Reply] = default_answer,
    ) -> ScriptedGlue:
        """
        Run a whole conversation.

        @param data: everything the client sends.
        @param settings: the core settings (by default a plain MX on C{mx.example} without
            command synchronisation, since C{data} may hold the client's whole side).
        @param answer: how the glue answers events.
        @return: the glue, with events and output.
        """
        core = ServerCore(
            settings or ServerSettings(hostname="mx.example", forbid_unauth_pipelining=False)
        )
        glue = ScriptedGlue(core, answer)
        glue.feed(self.chunk(data))
        return glue
