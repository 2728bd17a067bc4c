"""
An in-memory UDP network, a reactor whose C{listenUDP} opens ports on it, and a directory of a
few accounts, for Minger and Domain Sharing tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from zope.interface import implementer

from mdtwist.directory.model import Account
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory

Address = tuple[str, int]


class FakeUDPPort:
    """
    A UDP port on a L{FakeNetwork}.

    @ivar connected: the address it is connected to, or L{None}.
    @ivar stopped: whether it was closed.
    """

    def __init__(self, network: FakeNetwork, address: Address, protocol: DatagramProtocol):
        self.network = network
        self.address = address
        self.protocol = protocol
        self.connected: Address | None = None
        self.stopped = False

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        target = addr if addr is not None else self.connected
        assert target is not None
        self.network.queue.append((self.address, (target[0], target[1]), packet))

    def connect(self, host: str, port: int) -> None:
        self.connected = (host, port)

    def stopListening(self) -> None:  # noqa: N802 - Twisted's name
        self.stopped = True
        self.network.ports.pop(self.address, None)
        self.protocol.doStop()

    def getHost(self) -> IPv4Address:  # noqa: N802 - Twisted's name
        return IPv4Address("UDP", *self.address)


class FakeNetwork:
    """
    Datagrams between L{FakeUDPPort}s, delivered when L{flush} is called.

    @ivar ports: the open ports by address.
    @ivar queue: datagrams sent and not yet delivered: (source, destination, payload).
    @ivar delivered: every datagram delivered so far.
    @ivar lose: decides whether a datagram is lost on the way (by default none is).
    """

    def __init__(self) -> None:
        self.ports: dict[Address, FakeUDPPort] = {}
        self.queue: list[tuple[Address, Address, bytes]] = []
        self.delivered: list[tuple[Address, Address, bytes]] = []
        self.lose: Callable[[Address, Address, bytes], bool] = lambda src, dst, data: False
        self._next_port = 40000

    def next_port(self) -> int:
        self._next_port += 1
        return self._next_port

    def flush(self) -> None:
        """
        Deliver queued datagrams, including those sent while delivering, until none is left.
        """
        while self.queue:
            source, target, data = self.queue.pop(0)
            port = self.ports.get(target)
            if port is None or self.lose(source, target, data):
                continue
            if port.connected is not None and port.connected != source:
                continue
            self.delivered.append((source, target, data))
            port.protocol.datagramReceived(data, source)


class FakeUDPReactor(MemoryReactorClock):
    """
    A memory reactor and clock whose UDP ports live on a L{FakeNetwork}.

    @ivar resolved: host names the fake resolver knows.
    """

    def __init__(self, network: FakeNetwork | None = None, host: str = "127.0.0.1") -> None:
        super().__init__()
        self.network = network if network is not None else FakeNetwork()
        self.host = host
        self.resolved: dict[str, str] = {}

    def listenUDP(  # noqa: N802 - Twisted's name
        self,
        port: int,
        protocol: DatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,  # noqa: N803 - Twisted's name
    ) -> FakeUDPPort:
        host = interface or self.host
        number = port or self.network.next_port()
        opened = FakeUDPPort(self.network, (host, number), protocol)
        self.network.ports[opened.address] = opened
        protocol.makeConnection(opened)  # type: ignore[arg-type]
        return opened

    def resolve(self, name: str, timeout: Any = None) -> Deferred[str]:
        if name in self.resolved:
            return succeed(self.resolved[name])
        return fail(OSError(f"no address for {name}"))


def account(address: str, *, enabled: bool = True, aliases: tuple[str, ...] = ()) -> Account:
    """
    @return: an account with that primary address.
    """
    local, domain = address.split("@")
    return Account(
        address=address,
        mailbox=local,
        domain=domain,
        login=address,
        aliases=aliases,
        enabled=enabled,
    )


@implementer(IDirectory)
class Directory:
    """
    A directory of a few accounts in the domain C{example.com}.

    @ivar unavailable: when true, every call fails with L{DirectoryUnavailable}.
    @ivar finds: the addresses looked up.
    """

    def __init__(self, *accounts: Account, domains: frozenset[str] = frozenset({"example.com"})):
        self._accounts = {a.lower(): acc for acc in accounts for a in acc.addresses}
        self._domains = domains
        self.unavailable = False
        self.finds: list[str] = []

    def find(self, address: str) -> Deferred[Account | None]:
        self.finds.append(address)
        if self.unavailable:
            return fail(DirectoryUnavailable("down"))
        return succeed(self._accounts.get(address.lower()))

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        return succeed(None)

    def domains(self) -> Deferred[frozenset[str]]:
        if self.unavailable:
            return fail(DirectoryUnavailable("down"))
        return succeed(self._domains)
