"""Small fakes of the collaborators of the SMTP glue."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from mdtwist.envelope import ClientInfo, Envelope
from mdtwist.errors import SpoolError
from mdtwist.interfaces import IReceivePolicy, ISpool
from mdtwist.route import Route
from mdtwist.smtp.core.replies import Reply, reply
from mdtwist.smtp.decision import RecipientDecision
from tests.support.directory import FakeDirectory as FakeDirectory  # re-exported: now shared


@implementer(IReceivePolicy)
class FakePolicy:
    """
    A receive policy that accepts everything, or holds its answers, or fails.

    @ivar calls: C{(method, client, *addresses)} for every call.
    @ivar hold: when true, answers are Deferreds kept in L{held} for the test to fire.
    @ivar held: the pending Deferreds.
    @ivar error: an exception to fail every call with, or L{None}.
    @ivar recipient_reply: the reply to every recipient.
    @ivar routes: the route of each recipient address accepted (others are remote).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.hold = False
        self.held: list[Deferred[Reply]] = []
        self.error: Exception | None = None
        self.recipient_reply = reply(250, "2.1.5", "Recipient ok")
        self.routes: dict[str, Route] = {}

    def _answer(self, answer: Reply) -> Deferred[Reply]:
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            d: Deferred[Reply] = Deferred()
            self.held.append(d)
            return d
        return succeed(answer)

    def check_sender(self, client: ClientInfo, sender: str) -> Deferred[Reply]:
        """
        Record the call and answer C{250 2.1.0}.

        @param client: the client.
        @param sender: the sender.
        @return: the answer.
        """
        self.calls.append(("sender", client, sender))
        return self._answer(reply(250, "2.1.0", "Sender ok"))

    def check_recipient(
        self, client: ClientInfo, sender: str, recipient: str
    ) -> Deferred[RecipientDecision]:
        """
        Record the call and answer with L{recipient_reply}; an accepted recipient gets the
        route L{routes} has for it, else a remote route.

        @param client: the client.
        @param sender: the sender.
        @param recipient: the recipient.
        @return: the answer.
        """
        self.calls.append(("recipient", client, sender, recipient))

        def decide(answer: Reply) -> RecipientDecision:
            if not answer.is_positive:
                return RecipientDecision(answer)
            return RecipientDecision(answer, self.routes.get(recipient, Route.remote()))

        return self._answer(self.recipient_reply).addCallback(decide)


@implementer(ISpool)
class FakeSpool:
    """
    A spool in memory.

    @ivar messages: the stored C{(envelope, body)} pairs.
    @ivar hold: when true, enqueue returns a Deferred kept in L{held}; the message is stored
        only when the test fires it with a queue id.
    @ivar held: the pending Deferreds.
    @ivar error: an exception to fail every call with, or L{None}.
    """

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, bytes]] = []
        self.hold = False
        self.held: list[Deferred[str]] = []
        self.error: Exception | None = None

    def enqueue(self, envelope: Envelope, body: bytes) -> Deferred[str]:
        """
        Store the message.

        @param envelope: the envelope.
        @param body: the message.
        @return: a Deferred of the queue id.
        """
        if self.error is not None:
            return fail(self.error)
        if self.hold:
            d: Deferred[str] = Deferred()

            def store(queue_id: str) -> str:
                self.messages.append((envelope, body))
                return queue_id

            self.held.append(d)
            return d.addCallback(store)
        self.messages.append((envelope, body))
        return succeed(f"Q{len(self.messages)}")


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):  # type: ignore[misc]
    """
    A L{StringTransport} that records C{startTLS}.

    @ivar tls_context: the context passed to C{startTLS}, or L{None}.
    """

    tls_context: object = None

    def startTLS(self, contextFactory: object) -> None:  # noqa: N802, N803
        """
        Record the context.

        @param contextFactory: the context.
        """
        self.tls_context = contextFactory


def spool_error() -> SpoolError:
    """@return: a spool error, as a full disk gives."""
    return SpoolError("disk full")
