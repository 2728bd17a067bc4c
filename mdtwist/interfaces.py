"""
The plugin points of mdtwist, as zope interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from mdtwist.directory.model import Account
    from mdtwist.envelope import ClientInfo, Envelope
    from mdtwist.route import LookupBudget, SharingAnswer
    from mdtwist.settings.model import Merged
    from mdtwist.smtp.core.replies import Reply
    from mdtwist.smtp.decision import RecipientDecision


class IDirectory(Interface):
    """
    The account directory: who has a mailbox here, and who may log in.

    Every method returns a L{Deferred}. A directory that cannot answer fails that Deferred with
    L{mdtwist.errors.DirectoryUnavailable}; it never answers "no such account" in that case.
    """

    def find(address: str) -> Deferred[Account | None]:
        """
        Find the account that owns an address (primary address or alias).

        The domain is compared without regard to case, and so is the local part.

        @param address: an address such as C{alice@example.com}.
        @return: a Deferred firing with the account, or L{None} when no account has it.
        """

    def authenticate(login: str, password: str) -> Deferred[Account | None]:
        """
        Check a login and password.

        @param login: the login name or any address of the account.
        @param password: the password as the client sent it.
        @return: a Deferred firing with the account when the password is right and the account
            is enabled, else L{None}.
        """

    def domains() -> Deferred[frozenset[str]]:
        """
        @return: a Deferred firing with the local domains, lower-case.
        """


class ISpool(Interface):
    """
    The durable message store.
    """

    def enqueue(envelope: Envelope, body: bytes) -> Deferred[str]:
        """
        Store a message durably.

        @param envelope: the envelope.
        @param body: the message as received (headers and body, CRLF line ends, dots unstuffed).
        @return: a Deferred firing with the new queue id once the message is on stable storage;
            it fails with L{mdtwist.errors.SpoolError} when the message could not be stored, and
            then nothing of it is kept.
        """


class IReceivePolicy(Interface):
    """
    Decides, for one listener, which senders and recipients an SMTP session may use.

    Every reply is sent as it is: a 2xx accepts, a 4xx or 5xx refuses. A directory that cannot
    answer gives C{451 4.3.0}, never a 5xx.
    """

    def check_sender(client: ClientInfo, sender: str) -> Deferred[Reply]:
        """
        @param client: the session's client (address, HELO name, authenticated user, TLS).
        @param sender: the reverse-path without brackets; C{""} for the null sender.
        @return: a Deferred firing with the reply to C{MAIL FROM}.
        """

    def check_recipient(
        client: ClientInfo, sender: str, recipient: str
    ) -> Deferred[RecipientDecision]:
        """
        Decide one recipient: the reply, and where the recipient goes when it is accepted.

        @param client: the session's client.
        @param sender: the reverse-path of the transaction.
        @param recipient: the forward-path without brackets (a bare C{postmaster} is allowed).
        @return: a Deferred firing with the decision: the reply to C{RCPT TO} and, for a 2xx,
            the recipient's route (L{mdtwist.route.Route}), stored with it in the spool.
        """


class ISessionPolicies(Interface):
    """
    A receive policy that keeps some state per SMTP session (such as the session's budget of
    Domain Sharing lookups): the SMTP glue asks it for a view of its own for each session.
    """

    def for_session() -> IReceivePolicy:
        """
        @return: the policy of one new session; it lives as long as the session.
        """


class ISharingLookup(Interface):
    """
    Domain Sharing: finds the peer server that has the mailbox of an address in one of our
    domains when no local account has it.
    """

    def lookup(
        address: str, client: ClientInfo, budget: LookupBudget | None = None
    ) -> Deferred[SharingAnswer]:
        """
        @param address: the recipient, in a local domain, with no local account.
        @param client: the SMTP client asking (for logs and rate limits).
        @param budget: the SMTP session's budget of lookups at the peers; a lookup that
            would ask the peers once it is spent is L{mdtwist.route.SharingStatus.UNAVAILABLE}
            without asking. L{None}: no limit.
        @return: a Deferred firing with the answer: found on a peer (its C{host:port}), found
            nowhere, or cannot tell now. It does not fail: a lookup that cannot be made is
            L{mdtwist.route.SharingStatus.UNAVAILABLE}.
        """

    def local_account(address: str) -> None:
        """
        Tell it that a local account has the address now: any route it remembers for the
        address is forgotten (in the background; nothing to wait for).

        @param address: the recipient as given, in a local domain, with a local account.
        """


class ISettingsSource(Interface):
    """
    The client settings in force: per domain, the merge of the defaults (the server's own
    services), the configuration's switches, the global document and the domain's document.
    """

    facts = Attribute("the L{mdtwist.settings.model.ServerFacts} the defaults come from")

    def merged(domain: str) -> Merged:
        """
        @param domain: a domain, lower-case.
        @return: its settings before macros.
        """

    def push_anywhere() -> bool:
        """
        @return: whether the push is on for any domain.
        """

    def refresh() -> tuple[str, ...]:
        """
        Read changed settings again.

        @return: one line per problem of a failed reload (the last good settings stay), or
            C{()}.
        """
