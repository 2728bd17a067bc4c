# -*- test-case-name: tests.delivery.test_lmtp -*-
"""
Local delivery over LMTP (RFC 2033) to a mailbox server such as Dovecot.

Theory of operation: each copy is one short LMTP session on a client endpoint: greeting,
C{LHLO}, C{MAIL FROM}, C{RCPT TO}, C{DATA}, the dot-stuffed message, then the recipient's own
reply (LMTP answers per recipient after the end of data). Replies are read with the SMTP core's
L{ReplyParser}; the message is encoded with its L{DotStuffer}, so no bare CR or LF reaches the
wire and dots are stuffed at every line. A 2xx final reply is a delivery, 4xx is temporary and
5xx is permanent; a refused connection, a dropped connection, a malformed reply or the timeout
are temporary, so the message stays queued.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from typing_extensions import override
from zope.interface import implementer

from mdtwist.delivery.local import (
    CopyId,
    DeliveryResult,
    DeliveryStatus,
    ILocalDelivery,
    forwarding_loop,
)
from mdtwist.directory.model import Account
from mdtwist.smtp.core.errors import RemoteProtocolError
from mdtwist.smtp.core.framing import dot_stuff
from mdtwist.smtp.core.replies import Reply, ReplyParser

log = Logger()

#: What each step of the session waits for, and what it sends on success.
_EXPECTED = {"greeting": 220, "lhlo": 250, "mail": 250, "rcpt": 250, "data": 354, "final": 250}


def result_of(reply: Reply, step: str) -> DeliveryResult:
    """
    Turn a failing reply into a delivery result.

    @param reply: the reply that ended the session.
    @param step: the step it answered, for the reason text.
    @return: a temporary result for 4xx (and anything odd), a permanent one for 5xx.
    """
    permanent = reply.code >= 500
    enhanced = reply.enhanced or ("5.0.0" if permanent else "4.0.0")
    status = DeliveryStatus.PERMANENT if permanent else DeliveryStatus.TEMPORARY
    if not permanent and not enhanced.startswith("4."):
        enhanced = "4.0.0"
    return DeliveryResult(status, enhanced, f"LMTP {step}: {reply.code} {reply.text}"[:300])


class LMTPSession(Protocol):
    """
    One LMTP session that delivers one copy to one recipient.

    @ivar result: fires once with the L{DeliveryResult}.
    """

    def __init__(
        self,
        hostname: str,
        sender: str,
        recipient: str,
        body: bytes,
        clock: IReactorTime,
        timeout: float,
    ) -> None:
        """
        @param hostname: our name, for C{LHLO}.
        @param sender: the envelope sender (C{""} for the null sender).
        @param recipient: the recipient address.
        @param body: the message, CRLF line ends.
        @param clock: drives the timeout.
        @param timeout: seconds the whole session may take.
        """
        self.result: Deferred[DeliveryResult] = Deferred()
        self._hostname = hostname
        self._sender = sender
        self._recipient = recipient
        self._body = body
        self._clock = clock
        self._timeout = timeout
        self._parser = ReplyParser()
        self._step = "greeting"
        self._timer: IDelayedCall | None = None

    @override
    def connectionMade(self) -> None:
        self._timer = self._clock.callLater(self._timeout, self._timed_out)

    @override
    def dataReceived(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while not self.result.called and (reply := self._parser.next_reply()) is not None:
                self._answer(reply)
        except RemoteProtocolError as e:
            self._finish(
                DeliveryResult(DeliveryStatus.TEMPORARY, "4.5.0", f"LMTP {self._step}: {e}")
            )

    def _answer(self, reply: Reply) -> None:
        if reply.code != _EXPECTED[self._step]:
            self._finish(result_of(reply, self._step))
            return
        step = self._step
        if step == "final":
            self._finish(
                DeliveryResult(
                    DeliveryStatus.DELIVERED, reply.enhanced or "2.0.0", "delivered over LMTP"
                )
            )
            return
        following = {
            "greeting": "lhlo",
            "lhlo": "mail",
            "mail": "rcpt",
            "rcpt": "data",
            "data": "final",
        }
        self._step = following[step]
        assert self.transport is not None
        if self._step == "lhlo":
            self.transport.write(b"LHLO " + self._hostname.encode("ascii") + b"\r\n")
        elif self._step == "mail":
            self.transport.write(self._path_command(b"MAIL FROM:", self._sender))
        elif self._step == "rcpt":
            self.transport.write(self._path_command(b"RCPT TO:", self._recipient))
        elif self._step == "data":
            self.transport.write(b"DATA\r\n")
        else:
            self.transport.write(dot_stuff(self._body))

    def _path_command(self, verb: bytes, address: str) -> bytes:
        wire = address.encode("utf-8")
        extra = b" SMTPUTF8" if verb.startswith(b"MAIL") and not address.isascii() else b""
        return verb + b"<" + wire + b">" + extra + b"\r\n"

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(
            DeliveryResult(DeliveryStatus.TEMPORARY, "4.4.2", f"LMTP {self._step}: timeout")
        )

    def _finish(self, result: DeliveryResult) -> None:
        if self.result.called:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.transport is not None:
            if result.status is not DeliveryStatus.TEMPORARY or self._step != "greeting":
                self.transport.write(b"QUIT\r\n")
            self.transport.loseConnection()
        self.result.callback(result)

    @override
    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if not self.result.called:
            self.result.callback(
                DeliveryResult(
                    DeliveryStatus.TEMPORARY, "4.4.2", f"LMTP {self._step}: connection lost"
                )
            )


@implementer(ILocalDelivery)
class LMTPDelivery:
    """
    L{ILocalDelivery} over LMTP: one session per copy.
    """

    def __init__(
        self,
        endpoint: Callable[[], IStreamClientEndpoint],
        clock: IReactorTime,
        hostname: str,
        timeout: float = 300.0,
    ) -> None:
        """
        @param endpoint: makes the client endpoint of the LMTP server.
        @param clock: drives the session timeout.
        @param hostname: our name, for C{LHLO}.
        @param timeout: seconds one session may take.
        """
        self._endpoint = endpoint
        self._clock = clock
        self._hostname = hostname
        self._timeout = timeout

    def deliver(
        self,
        account: Account,
        recipient: str,
        body: bytes,
        sender: str = "",
        copy: CopyId | None = None,
    ) -> Deferred[DeliveryResult]:
        """
        Deliver one copy to the LMTP server, which is asked for the account's primary address.

        @param account: the account.
        @param recipient: the envelope recipient this copy is for.
        @param body: the message.
        @param sender: the envelope sender.
        @param copy: not used: an LMTP server cannot be asked whether it has a copy already.
        @return: a Deferred firing with the result (never failing); a forwarding loop (see
            L{forwarding_loop}) fails at once, without asking the LMTP server.
        """
        loop = forwarding_loop(account, recipient, body)
        if loop is not None:
            log.warn("Not delivered to {rcpt}: {reason}", rcpt=recipient, reason=loop.reason)
            return succeed(loop)
        session = LMTPSession(
            self._hostname, sender, account.address, body, self._clock, self._timeout
        )
        connecting = self._endpoint().connect(Factory.forProtocol(lambda: session))

        def refused(reason: Failure) -> DeliveryResult:
            log.warn(
                "LMTP connection for {rcpt} failed: {error}",
                rcpt=recipient,
                error=reason.getErrorMessage(),
            )
            return DeliveryResult(DeliveryStatus.TEMPORARY, "4.4.1", "LMTP server unreachable")

        def connected(_: object) -> Deferred[DeliveryResult]:
            return session.result

        return connecting.addCallbacks(connected, refused)
