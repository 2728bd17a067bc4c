# -*- test-case-name: tests.smtp.test_eager -*-
"""
Replies sent at once: a write that skips the reactor's write-readiness round trip.

A Twisted TCP transport buffers every C{write}, registers its socket for writing and sends on
the next reactor iteration, then unregisters it: two C{epoll_ctl} calls and one more trip
through the reactor for every SMTP reply, on a socket whose send buffer is empty nearly always.
L{write_now} sends at once with one C{send} when nothing is queued before the data, and hands
only what the kernel did not take to C{transport.write}, which keeps order, flow control and
the discovery of a lost connection as they are.

It does so only for Twisted's plain TCP transports (not under TLS, not a wrapper) whose write
buffer is empty; anything else goes through C{transport.write} unchanged.

Only the SMTP server uses it, once per pass over the client's commands, so a reply still leaves
as one segment. The SMTP client does not: a message leaves as several writes (commands, body
blocks, the final dot), and sent one by one the last small one waits under Nagle's algorithm
for the peer's delayed acknowledgement, 40 ms per message (measured 2026-12-05: relaying fell
from about 1 800 to 430 messages per second); Twisted's write buffer sends them together.
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport

#: The transports whose socket is sent to directly (server and client ends of plain TCP).
_PLAIN = (tcp.Server, tcp.Client)


def _idle(transport: tcp.Connection) -> bool:
    # Connected, not closing, not under TLS, and nothing waiting in its buffers: data sent
    # now cannot overtake data written before.
    return bool(
        transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and not transport._tempDataLen  # Twisted's write buffers, private but stable
        and transport.offset == len(transport.dataBuffer)
    )


def write_now(transport: ITransport, data: bytes) -> None:
    """
    Write C{data}, sending it at once when the transport is plain TCP with nothing buffered.

    @param transport: the connection's transport.
    @param data: the bytes to write.
    """
    if type(transport) in _PLAIN and _idle(transport):  # type: ignore[arg-type]
        try:
            sent = transport.socket.send(data)  # type: ignore[attr-defined]
        except OSError:
            # Would block, interrupted, or the connection is broken: Twisted's own write
            # retries or finds the loss and closes the connection the usual way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
