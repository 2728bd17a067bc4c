# -*- test-case-name: tests.smtp.test_switch -*-
"""
One connection, several protocols in turn: what ATRN (RFC 2645) needs to turn a connection round.

Theory of operation: the protocol the transport knows is a L{SwitchingProtocol}, and it never
changes; it forwards everything to an inner protocol and is that protocol's transport. To change
roles, the inner protocol detaches itself (its C{detach()} cancels its timers, releases what it
counted, unregisters its producer and returns the bytes it received but did not read) and asks
its switcher to install the next protocol with L{SwitchingProtocol.switch_to}, which connects it
and feeds it those bytes, in the same call, so no byte of the stream is lost or read twice.

Under TLS this keeps working because nothing here assigns C{transport.protocol}: C{startTLS} on
a TCP transport puts the TLS layer in front of the protocol it knows, which is our switching
protocol, and an implicit TLS listener wraps it from the start; the inner protocols only ever
write to the switching protocol, which writes to whatever its transport is.

Roles ask for the switch where the byte stream says so: the SMTP client glue after a single-line
C{250} to a command that turns the connection
(L{mdtwist.smtp.client.SMTPClientProtocol.command} with C{turn_to}), the SMTP server glue after
sending the C{250} of an extension command whose handler asked for it
(L{mdtwist.smtp.server.CommandAnswer.turn_to}).
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import IHandshakeListener, IProtocol, IProtocolFactory, ITransport
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import directlyProvides, implementer, providedBy

log = Logger()


@implementer(IHandshakeListener)
class SwitchingProtocol(ProtocolWrapper):
    """
    The protocol a transport knows for a connection whose protocol may change.

    It is the transport of its inner protocol (C{wrappedProtocol}): writes, producers,
    C{startTLS} and the rest go through to the real transport.

    @ivar switches: how many times the inner protocol was replaced.
    """

    switches = 0

    @property
    def inner(self) -> IProtocol | None:
        """The protocol bytes go to now; L{None} once the connection is lost."""
        inner: IProtocol | None = self.wrappedProtocol
        return inner

    def handshakeCompleted(self) -> None:  # noqa: N802 - IHandshakeListener's name
        """
        Tell the inner protocol that the TLS handshake is done, when it wants to know.
        """
        inner = self.wrappedProtocol
        if IHandshakeListener.providedBy(inner):
            inner.handshakeCompleted()

    def switch_to(self, new: IProtocol, unread: bytes = b"") -> None:
        """
        Make C{new} the inner protocol on the live connection: connect it (its
        C{connectionMade} runs, with this switching protocol as its transport), then feed it
        C{unread}.

        The previous inner protocol must have detached itself first: it gets no further call.

        @param new: the protocol that takes over.
        @param unread: the bytes the previous protocol received and did not read.
        @raise RuntimeError: the connection is already lost.
        """
        if self.wrappedProtocol is None or not self.connected:
            raise RuntimeError("cannot switch protocols on a lost connection")
        self.wrappedProtocol = new
        self.switches += 1
        # Provide what the transport provides now: after STARTTLS that includes ISSLTransport.
        directlyProvides(self, providedBy(self.transport))
        log.debug(
            "connection switched to {protocol}",
            protocol=type(new).__name__,
            unread=len(unread),
        )
        new.makeConnection(cast(ITransport, self))
        if unread and self.wrappedProtocol is new and not self.disconnecting:
            new.dataReceived(unread)


class SwitchingFactory(WrappingFactory[SwitchingProtocol]):
    """
    Wraps a factory so that each of its protocols runs inside a L{SwitchingProtocol}: the one
    thing a listener or a connection has to say to allow a role change on its connections.
    """

    protocol = SwitchingProtocol
    #: No "Starting factory" lines for the wrapper (the wrapped factory decides for itself).
    noisy = False


def switching(factory: IProtocolFactory) -> SwitchingFactory:
    """
    Wrap a factory's protocols in L{SwitchingProtocol}s (for a listener, e.g. the ODMR one).

    @param factory: the factory of the first protocol of each connection.
    @return: the factory to give the endpoint.
    """
    return SwitchingFactory(factory)


def switching_for(protocol: IProtocol) -> SwitchingFactory:
    """
    A factory for one outgoing connection whose first protocol is built already (e.g. the
    ATRN client's SMTP client protocol), wrapped in a L{SwitchingProtocol}.

    @param protocol: the first protocol of the connection.
    @return: the factory to give C{endpoint.connect}; its Deferred fires with the
        L{SwitchingProtocol}.
    """
    return SwitchingFactory(Factory.forProtocol(lambda: protocol))


def switcher_of(protocol: IProtocol) -> SwitchingProtocol | None:
    """
    The switching protocol a protocol runs in.

    @param protocol: a connected protocol.
    @return: its L{SwitchingProtocol} (its transport), or L{None} when it runs without one.
    """
    transport = getattr(protocol, "transport", None)
    return transport if isinstance(transport, SwitchingProtocol) else None
