# -*- test-case-name: tests.test_ipaddr -*-
"""
The IP address of a peer, in the one form every access check compares.

A listener on an IPv6 socket that also takes IPv4 connections sees an IPv4 client as an
IPv4-mapped IPv6 address (C{::ffff:192.0.2.7}); configured networks are written as IPv4
networks. L{peer_ip} therefore gives such an address as its IPv4 address, and L{in_networks}
checks it against the networks that way. The zone of a link-local IPv6 address
(C{fe80::1%eth0}) is dropped, so that one peer is one address whichever interface it came
by. Standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: An IP address.
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: An IP network.
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_ip(text: str) -> IPAddress | None:
    """
    @param text: an address as a socket or a configuration gives it.
    @return: the address without a zone, an IPv4-mapped IPv6 address as its IPv4 address;
        L{None} when C{text} is no IP address.
    """
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(text: str, networks: Iterable[Network]) -> bool:
    """
    @param text: a peer's address.
    @param networks: networks.
    @return: whether the address (see L{peer_ip}) is in one of them; C{False} when C{text} is
        no IP address.
    """
    address = peer_ip(text)
    return address is not None and any(address in network for network in networks)
