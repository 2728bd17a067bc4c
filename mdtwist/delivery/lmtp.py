# -*- test-case-name: tests.delivery.test_lmtp -*-
"""
Local delivery over LMTP (RFC 2033) to a mailbox server such as Dovecot.

Theory of operation: each copy is one short session on a client endpoint, run by the SMTP
client glue (L{SMTPClientProtocol}) over a client core in LMTP mode, which says C{LHLO},
stuffs the message and reads one reply per accepted recipient after the data. This module only
starts the session, hands it one transaction, turns the recipient's verdict into a
L{DeliveryResult} and says C{QUIT}. A 2xx final reply is a delivery, 4xx is temporary and 5xx
permanent; a refused or dropped connection, a malformed reply or a timeout (each reply is
waited for at most C{timeout} seconds) are temporary, so the message stays queued.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
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
from mdtwist.envelope import Recipient
from mdtwist.logging import quiet
from mdtwist.smtp.client import ClientTimeouts, DeliveryReport, Destination, SMTPClientProtocol
from mdtwist.smtp.core.client import (
    ClientCore,
    ClientSettings,
    RecipientOutcome,
    RecipientStatus,
    StartTLSPolicy,
    Transaction,
)

log = Logger()


@attrs.frozen
class LMTPServer(Destination):
    """
    The LMTP server, named for the logs by its endpoint rather than C{host:port}.
    """

    @property
    def label(self) -> str:
        """C{LMTP} and the endpoint, for logs."""
        return f"LMTP {self.host}"


def result_of(outcome: RecipientOutcome, server: str = "server") -> DeliveryResult:
    """
    Turn the verdict of the LMTP session on the recipient into a delivery result.

    @param outcome: the verdict.
    @param server: names the LMTP server (its endpoint), for the result's C{relay}.
    @return: delivered for 2xx, permanent for 5xx (or a permanent check before MAIL),
        temporary for everything else (always with a C{4.x.x} code).
    """
    relay = f"lmtp:{server}"
    if outcome.status is RecipientStatus.DELIVERED:
        return DeliveryResult(
            DeliveryStatus.DELIVERED, outcome.enhanced, "delivered over LMTP", relay
        )
    code = "" if outcome.code is None else f"{outcome.code} "
    reason = f"LMTP {outcome.phase.value}: {code}{outcome.text}"[:300]
    if outcome.status is RecipientStatus.PERMANENT:
        return DeliveryResult(DeliveryStatus.PERMANENT, outcome.enhanced, reason, relay)
    enhanced = outcome.enhanced if outcome.enhanced.startswith("4.") else "4.0.0"
    return DeliveryResult(DeliveryStatus.TEMPORARY, enhanced, reason, relay)


def _no_tls() -> IOpenSSLClientConnectionCreator:
    raise AssertionError("LMTP sessions never start TLS")  # StartTLSPolicy.NEVER


class LMTPSession(SMTPClientProtocol):
    """
    One LMTP session that delivers one copy to one recipient.

    @ivar result: fires once with the L{DeliveryResult}, as soon as the recipient's reply is
        in (C{QUIT} follows).
    """

    def __init__(
        self,
        hostname: str,
        sender: str,
        recipient: str,
        body: bytes,
        clock: IReactorTime,
        timeout: float,
        server: str = "server",
    ) -> None:
        """
        @param hostname: our name, for C{LHLO}.
        @param sender: the envelope sender (C{""} for the null sender).
        @param recipient: the recipient address.
        @param body: the message, CRLF line ends.
        @param clock: drives the timeouts.
        @param timeout: seconds to wait for each reply (and for each block of the message).
        @param server: names the LMTP server in logs.
        @raise ValueError: an address holds a space, a control character or a bracket.
        """
        settings = ClientSettings(hostname, starttls=StartTLSPolicy.NEVER, lmtp=True)
        timeouts = ClientTimeouts(**dict.fromkeys(attrs.fields_dict(ClientTimeouts), timeout))
        super().__init__(ClientCore(settings), LMTPServer(server, 0), clock, timeouts, _no_tls)
        self.result: Deferred[DeliveryResult] = Deferred()
        self._transaction = Transaction(sender, [Recipient(recipient)], body)

    @override
    def connectionMade(self) -> None:
        super().connectionMade()
        self.run([self._transaction]).addCallback(self._done)

    def _done(self, report: DeliveryReport) -> None:
        [transaction] = report.transactions
        [outcome] = transaction.recipients
        self.result.callback(result_of(outcome, self.destination.host))
        self.quit()


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
        server: str = "server",
    ) -> None:
        """
        @param endpoint: makes the client endpoint of the LMTP server.
        @param clock: drives the timeouts.
        @param hostname: our name, for C{LHLO}.
        @param timeout: seconds to wait for each reply.
        @param server: names the LMTP server in logs (its endpoint description).
        """
        self._endpoint = endpoint
        self._clock = clock
        self._hostname = hostname
        self._timeout = timeout
        self._server = server

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
        try:
            session = LMTPSession(
                self._hostname,
                sender,
                account.address,
                body,
                self._clock,
                self._timeout,
                self._server,
            )
        except ValueError as e:
            result = DeliveryResult(DeliveryStatus.PERMANENT, "5.1.3", f"LMTP: {e}")
            return succeed(result)
        connecting = self._endpoint().connect(quiet(Factory.forProtocol(lambda: session)))

        def refused(reason: Failure) -> DeliveryResult:
            log.warn(
                "LMTP connection for {rcpt} failed: {error}",
                rcpt=recipient,
                error=reason.getErrorMessage(),
            )
            relay = f"lmtp:{self._server}"
            return DeliveryResult(
                DeliveryStatus.TEMPORARY, "4.4.1", "LMTP server unreachable", relay
            )

        def connected(_: object) -> Deferred[DeliveryResult]:
            return session.result

        return connecting.addCallbacks(connected, refused)
