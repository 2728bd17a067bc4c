# -*- test-case-name: tests.spool.test_model -*-
"""
The values of the queue: what the spool stores and the queue runner reads and writes.

Pure: standard library and attrs only. The spool store and the delivery code both import
these values from here, so neither needs the other. L{Route} and L{RouteKind} (defined in
L{mdtwist.route}, beside the envelope that carries them) are re-exported here.
"""

from __future__ import annotations

import enum
import os

import attrs

from mdtwist.envelope import Envelope, RecipientState
from mdtwist.route import Route, RouteKind

__all__ = [
    "MessageKind",
    "Notice",
    "Queue",
    "QueueEntry",
    "QueuedMessage",
    "RecipientProgress",
    "RecipientResult",
    "Route",
    "RouteKind",
    "StoredBody",
]


class StoredBody(bytes):
    """
    The body of a message that the spool keeps in a file of its own (one above its inline
    limit): the bytes of the file, and its path.

    It is bytes like any body, but it pickles as its path, and unpickles by reading the file.
    So a Maildir write sent to a delivery worker process (L{mdtwist.delivery.workers}) carries
    the file's name instead of the message: the worker reads the spool's file itself, and the
    server does not push a large message through a pipe for every copy. The spool never
    changes the file while the message is queued; it deletes it once the message has left the
    queue, after its last delivery is recorded.

    @ivar path: the file, absolute.
    """

    path: str

    def __new__(cls, data: bytes, path: str) -> StoredBody:
        """
        @param data: the file's content.
        @param path: the file (made absolute).
        """
        body = super().__new__(cls, data)
        body.path = os.path.abspath(path)
        return body

    @classmethod
    def read(cls, path: str) -> StoredBody:
        """
        @param path: a body file, absolute.
        @return: its content.
        @raise OSError: when it cannot be read.
        """
        with open(path, "rb") as f:
            return cls(f.read(), path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_read_stored_body, (self.path,))


def _read_stored_body(path: str) -> StoredBody:
    # What a pickled StoredBody calls: a module-level function, pickled by name. (Not the
    # class method itself: once twisted.persisted.styles is imported, as in the server,
    # methods pickle by their class's type and do not unpickle.)
    return StoredBody.read(path)


class Queue(enum.Enum):
    """
    The queue a message is in.
    """

    #: Delivered and retried by the queue runner.
    ACTIVE = "active"
    #: Parked with a reason for a person to look at; never retried.
    BAD = "bad"
    #: Held by the operator (C{mdtwistctl queue hold}): kept, not attempted until released.
    HOLD = "hold"


class MessageKind(enum.Enum):
    """
    Where a queued message comes from.
    """

    #: Mail handed to us by a client.
    MESSAGE = "message"
    #: A delivery status notification we generated; never answered by another one.
    NOTICE = "notice"


@attrs.frozen
class QueueEntry:
    """
    One line of a queue listing.

    @ivar queue_id: the queue id.
    @ivar arrival: arrival time, seconds since the epoch.
    @ivar size: the size of the stored message in bytes.
    @ivar sender: the reverse-path (C{""} for the null sender).
    @ivar recipients: how many recipients the message has.
    @ivar pending: how many of them are still pending.
    @ivar attempts: delivery attempts made so far.
    @ivar next_attempt: when the next attempt is due, seconds since the epoch.
    @ivar queue: the queue it is in.
    @ivar reason: why it is in the bad queue, or L{None}.
    @ivar kind: where it comes from.
    """

    queue_id: str
    arrival: float
    size: int
    sender: str
    recipients: int
    pending: int
    attempts: int
    next_attempt: float
    queue: Queue = Queue.ACTIVE
    reason: str | None = None
    kind: MessageKind = MessageKind.MESSAGE


@attrs.frozen
class RecipientProgress:
    """
    What the queue remembers about one recipient besides its envelope state.

    @ivar delay_notified: whether the sender was told that delivery to it is delayed.
    @ivar remote_mta: the server that gave the last result, or L{None}.
    @ivar last_attempt: when delivery to it was last tried, or L{None}.
    """

    delay_notified: bool = False
    remote_mta: str | None = None
    last_attempt: float | None = None


@attrs.frozen
class QueuedMessage:
    """
    A message in the spool, with its envelope and the state of each recipient.

    @ivar queue_id: the queue id.
    @ivar envelope: the envelope; each recipient carries its delivery state.
    @ivar size: the size of the stored message in bytes.
    @ivar attempts: delivery attempts made so far.
    @ivar next_attempt: when the next attempt is due, seconds since the epoch.
    @ivar body: the message itself, or L{None} when it was not asked for.
    @ivar kind: where it comes from.
    @ivar queue: the queue it is in.
    @ivar reason: why it is in the bad queue, or L{None}.
    @ivar progress: per recipient, in the order of L{Envelope.recipients}, what the queue
        remembers besides its state; empty when not known.
    """

    queue_id: str
    envelope: Envelope
    size: int
    attempts: int
    next_attempt: float
    body: bytes | None = attrs.field(default=None, repr=False)
    kind: MessageKind = MessageKind.MESSAGE
    queue: Queue = Queue.ACTIVE
    reason: str | None = None
    progress: tuple[RecipientProgress, ...] = ()


@attrs.frozen
class RecipientResult:
    """
    The outcome of one delivery attempt for one recipient.

    @ivar position: the recipient's index in L{Envelope.recipients}.
    @ivar state: L{RecipientState.DELIVERED} or L{RecipientState.FAILED} (final), or
        L{RecipientState.PENDING} for a temporary failure.
    @ivar status: the enhanced status code (C{2.0.0}, C{4.4.1}, C{5.1.1}).
    @ivar diagnostic: the reply or reason. For an SMTP reply, the whole reply as received
        (C{550 5.1.1 no such user}): notices report a diagnostic that starts with a reply code
        as C{Diagnostic-Code: smtp; ...}.
    @ivar remote_mta: the host name of the server that gave the result, or L{None}.
    @ivar retry_after: for a temporary failure, the least wait in seconds before this
        recipient is tried again, or L{None} for the normal schedule. A remote delivery sets it
        to L{QueuePolicy.delay_after_temp_error
        <mdtwist.delivery.schedule.QueuePolicy.delay_after_temp_error>} after an SMTP 4xx reply;
        the message's next attempt is then no sooner.
    @ivar relay_address: the IP address of C{remote_mta} when a connection was made, for the
        mail log (not stored).
    """

    position: int
    state: RecipientState
    status: str = ""
    diagnostic: str = ""
    remote_mta: str | None = None
    retry_after: float | None = None
    relay_address: str | None = None


@attrs.frozen
class Notice:
    """
    A message the spool queues in the same transaction as a recorded attempt
    (L{mdtwist.spool.store.SQLiteSpool.record}).

    @ivar envelope: its envelope (for a DSN: from the null sender to the original sender).
    @ivar body: the message.
    @ivar kind: where it comes from.
    """

    envelope: Envelope
    body: bytes = attrs.field(repr=False)
    kind: MessageKind = MessageKind.NOTICE
