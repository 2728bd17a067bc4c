# -*- test-case-name: tests.smtp.test_policy -*-
"""
Who may send to whom: the receive policy of an SMTP listener.

Rules, in order, for a recipient:
  1. A bare C{postmaster}, and C{postmaster} at any local domain, is always accepted
     (RFC 5321 section 4.5.1).
  2. A recipient in a local domain is accepted when the directory has an enabled account for it;
     an unknown one is refused with C{550 5.1.1}, a disabled one with C{550 5.2.1}; a directory
     that cannot answer gives C{451 4.3.0} (never a 5xx).
  3. Any other recipient is relayed only for an authenticated session or a client in a trusted
     network; otherwise C{554 5.7.1}. Address tricks (C{%}, C{!}, quoted C{@}, source routes)
     never route mail off the server: the forward-path has already lost its source route, and
     only the domain after the last C{@} decides, so C{user%foreign@local} is a local address.

A sender, with C{sender_must_match_login} (MDaemon's "sender must match the authenticated
account"; on by default for submission listeners): an authenticated session may only use an
address of its own account (its primary address or an alias: the directory finds the account
it logged in as), or the null sender; any other is refused with C{553 5.7.1}, as Postfix's
C{reject_sender_login_mismatch} does. An unauthenticated session is not checked here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mdtwist.address import parse_address
from mdtwist.envelope import ClientInfo
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory, IReceivePolicy
from mdtwist.logging import escape_text
from mdtwist.smtp.core.replies import Reply

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SENDER_OK = Reply(250, "2.1.0", ("Sender ok",))
RECIPIENT_OK = Reply(250, "2.1.5", ("Recipient ok",))
NO_SUCH_USER = Reply(550, "5.1.1", ("No such user here",))
DISABLED = Reply(550, "5.2.1", ("Mailbox disabled",))
BAD_ADDRESS = Reply(501, "5.1.3", ("Bad recipient address syntax",))
RELAY_DENIED = Reply(554, "5.7.1", ("Relay access denied",))
TRY_LATER = Reply(451, "4.3.0", ("Directory unavailable, try again later",))


def not_owned(sender: str) -> Reply:
    """
    @param sender: the refused reverse-path.
    @return: the C{553 5.7.1} refusal of a sender that is not the logged-in account's.
    """
    return Reply(553, "5.7.1", (f"<{sender}>: Sender address not owned by the logged-in user",))


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """
    @param items: networks in CIDR form (C{192.0.2.0/24}, C{::1/128}) or single addresses.
    @return: the networks.
    @raise ValueError: for an item that is not a network.
    """
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


@implementer(IReceivePolicy)
class ReceivePolicy:
    """
    The policy of one listener.
    """

    log = Logger()

    def __init__(
        self,
        directory: IDirectory,
        *,
        trusted_networks: Iterable[Network] = (),
        sender_must_match_login: bool = False,
    ) -> None:
        """
        @param directory: the account directory.
        @param trusted_networks: clients that may relay without authenticating.
        @param sender_must_match_login: refuse a C{MAIL FROM} of an authenticated session
            whose address is not one of its own account's.
        """
        self._directory = directory
        self._trusted = tuple(trusted_networks)
        self._sender_login = sender_must_match_login

    def trusted(self, client: ClientInfo) -> bool:
        """
        @param client: a client.
        @return: whether its address is in a trusted network.
        """
        return self._trusted_client(client)

    def _trusted_client(self, client: ClientInfo) -> bool:
        try:
            address = ipaddress.ip_address(client.address)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)

    def check_sender(self, client: ClientInfo, sender: str) -> Deferred[Reply]:
        """
        See L{IReceivePolicy.check_sender}. Without C{sender_must_match_login} any sender is
        accepted (listeners that need AUTH before MAIL enforce it in the SMTP core); with it,
        see the module docstring.
        """
        if not self._sender_login or client.user is None or not sender:
            return succeed(SENDER_OK)
        return Deferred.fromCoroutine(self._check_sender_login(client.user, sender))

    async def _check_sender_login(self, user: str, sender: str) -> Reply:
        try:
            account = await self._directory.find(sender)
        except DirectoryUnavailable:
            self.log.warn("directory unavailable for {mail_from}", mail_from=escape_text(sender))
            return TRY_LATER
        # The session's user is the account's login (or, for a directory that logs in by
        # address, one of its addresses): either way the sender's account is the session's.
        if account is not None and user.casefold() in {
            name.casefold() for name in (account.login, *account.addresses)
        }:
            return SENDER_OK
        self.log.info(
            "sender {mail_from} refused: not owned by {user}",
            mail_from=escape_text(sender),
            user=escape_text(user),
        )
        return not_owned(sender)

    def check_recipient(self, client: ClientInfo, sender: str, recipient: str) -> Deferred[Reply]:
        """
        See L{IReceivePolicy.check_recipient}.
        """
        return Deferred.fromCoroutine(self._check_recipient(client, recipient))

    async def _check_recipient(self, client: ClientInfo, recipient: str) -> Reply:
        if recipient.lower() == "postmaster":
            return RECIPIENT_OK
        address = parse_address(recipient)
        if address is None:
            return BAD_ADDRESS
        try:
            domains = await self._directory.domains()
            if address.domain in domains:
                if address.local.lower() == "postmaster":
                    return RECIPIENT_OK
                account = await self._directory.find(recipient)
                if account is None:
                    return NO_SUCH_USER
                return RECIPIENT_OK if account.enabled else DISABLED
        except DirectoryUnavailable:
            self.log.warn("directory unavailable for {rcpt}", rcpt=recipient)
            return TRY_LATER
        if client.user is not None or self._trusted_client(client):
            return RECIPIENT_OK
        self.log.info("relay denied from {peer} to {rcpt}", peer=client.address, rcpt=recipient)
        return RELAY_DENIED
