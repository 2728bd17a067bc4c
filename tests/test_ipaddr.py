"""
Tests for L{mdtwist.ipaddr}.
"""

from __future__ import annotations

import ipaddress

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.ipaddr import in_networks, peer_ip

NETWORKS = (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))


class PeerIPTests(SynchronousTestCase):
    """
    L{peer_ip}: an address in the form access checks compare.
    """

    def test_plain(self) -> None:
        """
        IPv4 and IPv6 addresses come back as they are.
        """
        self.assertEqual(peer_ip("192.0.2.7"), ipaddress.ip_address("192.0.2.7"))
        self.assertEqual(peer_ip("2001:db8::1"), ipaddress.ip_address("2001:db8::1"))

    def test_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address comes back as its IPv4 address.
        """
        self.assertEqual(peer_ip("::ffff:192.0.2.7"), ipaddress.ip_address("192.0.2.7"))

    def test_zone(self) -> None:
        """
        The zone of a link-local IPv6 address is dropped: one peer, one address.
        """
        self.assertEqual(peer_ip("fe80::1%eth0"), ipaddress.ip_address("fe80::1"))
        self.assertEqual(peer_ip("fe80::1%2"), peer_ip("fe80::1"))

    def test_not_an_address(self) -> None:
        """
        A text that is no IP address gives L{None}.
        """
        for text in ("", "localhost", "192.0.2", "::ffff:nope"):
            self.assertIsNone(peer_ip(text), text)


class InNetworksTests(SynchronousTestCase):
    """
    L{in_networks}: whether a peer is in one of the networks.
    """

    def test_inside_and_outside(self) -> None:
        """
        An address in a network is in, the mapped form of one too; others are not, and a text
        that is no address never is.
        """
        self.assertTrue(in_networks("192.0.2.200", NETWORKS))
        self.assertTrue(in_networks("::ffff:192.0.2.200", NETWORKS))
        self.assertTrue(in_networks("2001:db8:1::5", NETWORKS))
        self.assertFalse(in_networks("198.51.100.1", NETWORKS))
        self.assertFalse(in_networks("::ffff:198.51.100.1", NETWORKS))
        self.assertFalse(in_networks("not-an-ip", NETWORKS))
        self.assertFalse(in_networks("192.0.2.1", ()))
