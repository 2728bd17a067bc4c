# -*- test-case-name: tests.smtp.test_policy -*-
"""
Who may send to whom, and where each accepted recipient goes: the receive policy of a listener.

Each recipient gets a L{mdtwist.smtp.decision.RecipientDecision}: the reply and, when
accepted, its route (L{mdtwist.route.Route}), which the SMTP glue stores with the recipient.
Rules, in order:
  1. The route kind comes from L{mdtwist.route.classify}, by the domain after the last C{@}
     only; something that is no address gets C{501 5.1.3}. Address tricks (C{%}, C{!}, quoted
     C{@}, source routes) never route mail off the server: C{user%foreign@local} is a local
     address.
  2. A recipient in a gateway domain is accepted and held for the gateway (route
     C{GATEWAY_HOLD}).
  3. A recipient in a local domain is accepted when a mailbox receives it
     (L{mdtwist.directory.mailbox.find_mailbox}: the account with that address; for a bare
     C{postmaster} or C{postmaster} at a local domain without an account of its own, the
     configured postmaster mailbox); the route is C{LOCAL} to that account's primary address.
     A disabled account gives C{550 5.2.1}. With no mailbox: a C{postmaster} address is refused
     with C{550 5.1.1} (never accepted to bounce later); another address is asked of the
     Domain Sharing lookup when there is one (found: route C{SHARING_PEER}; found nowhere:
     C{550 5.1.1}; cannot tell: C{451 4.4.3}), else refused with C{550 5.1.1}. A directory
     that cannot answer gives C{451 4.3.0} (never a 5xx). One session may have at most
     C{sharing_lookups_per_session} distinct addresses asked about at the peers (cache hits
     do not count; see L{ReceivePolicy.for_session}); past that, an address the cache does
     not know gets C{451 4.4.3} without asking: temporary, so a real sender retries it in a
     later session, while a session sweeping for valid addresses learns nothing more.
  4. Any other recipient is relayed (route C{REMOTE}) only for an authenticated session or a
     client in a trusted network; otherwise C{554 5.7.1}.

A sender, with C{sender_must_match_login} (MDaemon's "sender must match the authenticated
account"; on by default for submission listeners): an authenticated session may only use an
address of its own account (its primary address or an alias: the directory finds the account
it logged in as), or the null sender; any other is refused with C{553 5.7.1}, as Postfix's
C{reject_sender_login_mismatch} does. An unauthenticated session is not checked here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mdtwist.address import parse_address
from mdtwist.directory.mailbox import find_mailbox
from mdtwist.envelope import ClientInfo
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory, IReceivePolicy, ISessionPolicies, ISharingLookup
from mdtwist.ipaddr import Network, in_networks
from mdtwist.logging import escape_text
from mdtwist.route import (
    POSTMASTER,
    LookupBudget,
    Route,
    RouteKind,
    SharingStatus,
    classify,
    is_postmaster,
)
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.decision import RecipientDecision

SENDER_OK = Reply(250, "2.1.0", ("Sender ok",))
NO_SUCH_USER = Reply(550, "5.1.1", ("No such user here",))
DISABLED = Reply(550, "5.2.1", ("Mailbox disabled",))
BAD_ADDRESS = Reply(501, "5.1.3", ("Bad recipient address syntax",))
RELAY_DENIED = Reply(554, "5.7.1", ("Relay access denied",))
TRY_LATER = Reply(451, "4.3.0", ("Directory unavailable, try again later",))
SHARING_UNAVAILABLE = Reply(451, "4.4.3", ("Mailbox lookup unavailable, try again later",))


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


#: The default most distinct addresses one SMTP session may have looked up at the sharing peers.
SHARING_LOOKUPS_PER_SESSION = 20

#: Client addresses whose trusted-network verdict a listener remembers (then it starts over).
TRUSTED_VERDICTS = 4096


@implementer(IReceivePolicy, ISessionPolicies)
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
        postmaster: str | None = None,
        sharing: ISharingLookup | None = None,
        gateway_domains: Collection[str] = frozenset(),
        sender_must_match_login: bool = False,
        sharing_lookups_per_session: int = SHARING_LOOKUPS_PER_SESSION,
    ) -> None:
        """
        @param directory: the account directory.
        @param trusted_networks: clients that may relay without authenticating.
        @param postmaster: the mailbox that receives mail for C{postmaster} (bare and at every
            local domain) unless an account has that address itself; L{None}: none.
        @param sharing: finds the Domain Sharing peer of a local address without a local
            account; L{None}: such an address is unknown.
        @param gateway_domains: domains whose mail is accepted and held for their gateway.
        @param sender_must_match_login: refuse a C{MAIL FROM} of an authenticated session
            whose address is not one of its own account's.
        @param sharing_lookups_per_session: the most distinct addresses one session (see
            L{for_session}) may have asked about at the sharing peers.
        """
        self._directory = directory
        self._trusted = tuple(trusted_networks)
        self._trusted_verdicts: dict[str, bool] = {}
        self._postmaster = postmaster
        self._sharing = sharing
        self._gateways = frozenset(domain.lower() for domain in gateway_domains)
        self._sender_login = sender_must_match_login
        self._lookups_per_session = sharing_lookups_per_session

    def for_session(self) -> IReceivePolicy:
        """
        See L{ISessionPolicies.for_session}: the view of one SMTP session, with its own budget
        of Domain Sharing lookups.
        """
        return SessionPolicy(self, LookupBudget(self._lookups_per_session))

    def trusted(self, client: ClientInfo) -> bool:
        """
        @param client: a client.
        @return: whether its address is in a trusted network.
        """
        return self._trusted_client(client)

    def _trusted_client(self, client: ClientInfo) -> bool:
        # Asked for every recipient and message; the verdict of an address is remembered.
        verdict = self._trusted_verdicts.get(client.address)
        if verdict is None:
            verdict = in_networks(client.address, self._trusted)
            if len(self._trusted_verdicts) >= TRUSTED_VERDICTS:
                self._trusted_verdicts.clear()
            self._trusted_verdicts[client.address] = verdict
        return verdict

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

    def check_recipient(
        self,
        client: ClientInfo,
        sender: str,
        recipient: str,
        budget: LookupBudget | None = None,
    ) -> Deferred[RecipientDecision]:
        """
        See L{IReceivePolicy.check_recipient}.

        @param budget: the session's budget of Domain Sharing lookups; L{None}: no limit.
        """
        return Deferred.fromCoroutine(self._check_recipient(client, recipient, budget))

    async def _check_recipient(
        self, client: ClientInfo, recipient: str, budget: LookupBudget | None
    ) -> RecipientDecision:
        if recipient.lower() != POSTMASTER and parse_address(recipient) is None:
            return RecipientDecision.refuse(BAD_ADDRESS)
        try:
            domains = await self._directory.domains()
            route = classify(recipient, domains, self._gateways)
            assert route is not None
            if route.kind is RouteKind.LOCAL:
                return await self._local(client, recipient, domains, budget)
        except DirectoryUnavailable:
            self.log.warn("directory unavailable for {rcpt}", rcpt=recipient)
            return RecipientDecision.refuse(TRY_LATER)
        if route.kind is RouteKind.GATEWAY_HOLD:
            return RecipientDecision.accept(route)
        if client.user is not None or self._trusted_client(client):
            return RecipientDecision.accept(route)
        self.log.info("relay denied from {peer} to {rcpt}", peer=client.address, rcpt=recipient)
        return RecipientDecision.refuse(RELAY_DENIED)

    async def _local(
        self,
        client: ClientInfo,
        recipient: str,
        domains: frozenset[str],
        budget: LookupBudget | None,
    ) -> RecipientDecision:
        account = await find_mailbox(
            self._directory, recipient, postmaster=self._postmaster, local_domains=domains
        )
        if account is not None:
            if not account.enabled:
                return RecipientDecision.refuse(DISABLED)
            if self._sharing is not None:
                self._sharing.local_account(recipient)
            return RecipientDecision.accept(Route.local(account.address))
        if self._sharing is None or is_postmaster(recipient, domains):
            return RecipientDecision.refuse(NO_SUCH_USER)
        try:
            answer = await self._sharing.lookup(recipient, client, budget)
        except Exception:
            self.log.failure("sharing lookup for {rcpt} failed", rcpt=recipient)
            return RecipientDecision.refuse(SHARING_UNAVAILABLE)
        if answer.status is SharingStatus.FOUND:
            assert answer.peer is not None
            return RecipientDecision.accept(Route.sharing_peer(answer.peer))
        if answer.status is SharingStatus.NOT_FOUND:
            return RecipientDecision.refuse(NO_SUCH_USER)
        self.log.warn("sharing lookup unavailable for {rcpt}", rcpt=recipient)
        return RecipientDecision.refuse(SHARING_UNAVAILABLE)


@implementer(IReceivePolicy)
class SessionPolicy:
    """
    The receive policy of one SMTP session: the listener's L{ReceivePolicy} with the session's
    budget of Domain Sharing lookups.

    @ivar budget: the session's budget.
    """

    def __init__(self, policy: ReceivePolicy, budget: LookupBudget) -> None:
        """
        @param policy: the listener's policy.
        @param budget: the new session's budget.
        """
        self._policy = policy
        self.budget = budget

    def check_sender(self, client: ClientInfo, sender: str) -> Deferred[Reply]:
        """
        See L{IReceivePolicy.check_sender}.
        """
        return self._policy.check_sender(client, sender)

    def check_recipient(
        self, client: ClientInfo, sender: str, recipient: str
    ) -> Deferred[RecipientDecision]:
        """
        See L{IReceivePolicy.check_recipient}.
        """
        return self._policy.check_recipient(client, sender, recipient, self.budget)
