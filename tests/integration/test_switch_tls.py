"""
The role change of L{mdtwist.smtp.switch} over a real TLS connection on loopback: the customer
starts TLS, turns the connection round, and the provider delivers over the same TLS session.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from mdtwist.smtp.client import trust_root_from_pem
from mdtwist.smtp.core.client import RecipientStatus, SessionStatus, StartTLSPolicy
from mdtwist.smtp.switch import SwitchingProtocol, switching, switching_for
from mdtwist.smtp.tls import server_tls_options
from tests.smtp.test_switch import BODY_BACK, BODY_OUT, TURNING, Sides
from tests.support.tls import make_certificate

reactor: Any = _reactor


def wait_until(predicate: Callable[[], bool], what: str) -> Deferred[None]:
    """
    Wait, a bounded number of short steps, until C{predicate} holds.

    @param predicate: the condition.
    @param what: what is awaited, for the failure message.
    @return: fires when it holds; fails after about ten seconds.
    """

    @inlineCallbacks
    def loop() -> Generator[Deferred[Any], Any, None]:
        for _ in range(1000):
            if predicate():
                return
            yield deferLater(reactor, 0.01, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    return loop()


class TurnOverTLSTests(TestCase):
    """Our client and server over TCP and STARTTLS on 127.0.0.1, roles swapped mid-connection."""

    timeout = 30

    @inlineCallbacks
    def test_turn_inside_tls(self) -> Generator[Deferred[Any], Any, None]:
        """
        The customer requires STARTTLS (certificate checked), delivers one message, sends
        TURN; after the 250 its SMTP server greets over the same TLS session and receives the
        provider's message with its dot-stuffed lines intact; both sessions record TLS, and
        both ends close after QUIT.
        """
        cert, key = make_certificate(Path(self.mktemp()))
        clock: IReactorTime = reactor
        sides = Sides(clock, tls_active=True, provider_tls=server_tls_options(cert, key))
        trust = trust_root_from_pem(cert)
        customer, turned = sides.customer(
            starttls=StartTLSPolicy.REQUIRED,
            tls_options=lambda: optionsForClientTLS("localhost", trustRoot=trust),
        )
        listening = switching(sides.provider)
        port = reactor.listenTCP(0, listening, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        connecting = switching_for(customer)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, timeout=10)
        outer = yield endpoint.connect(connecting)
        self.assertIsInstance(outer, SwitchingProtocol)

        self.assertEqual((yield turned), TURNING)
        yield wait_until(lambda: sides.back is not None, "the provider's client role")
        assert sides.back is not None and sides.provider_client is not None
        back = yield sides.back
        self.assertEqual(back.transactions[0].recipients[0].status, RecipientStatus.DELIVERED)
        ended = yield sides.provider_client.ended
        self.assertEqual(ended.status, SessionStatus.COMPLETED)
        yield wait_until(
            lambda: not listening.protocols and not connecting.protocols, "both ends to close"
        )

        out = yield sides.out
        self.assertEqual(out.transactions[0].recipients[0].status, RecipientStatus.DELIVERED)
        [(envelope_out, stored_out)] = sides.provider_spool.messages
        self.assertTrue(stored_out.endswith(BODY_OUT))
        [(envelope_back, stored_back)] = sides.customer_spool.messages
        self.assertTrue(stored_back.endswith(BODY_BACK))
        self.assertEqual(envelope_back.sender, "held@provider.example")
        for envelope in (envelope_out, envelope_back):
            assert envelope.client.tls is not None, envelope
            self.assertTrue(envelope.client.tls.startswith("TLSv1."), envelope.client.tls)
        self.assertEqual(outer.switches, 1)
        self.assertEqual(sides.provider.sessions("127.0.0.1"), 0)
        self.assertEqual(sides.customer_server.sessions("127.0.0.1"), 0)
