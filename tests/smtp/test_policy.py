"""
Tests for L{mdtwist.smtp.policy}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mdtwist.directory.model import Account
from mdtwist.envelope import ClientInfo
from mdtwist.errors import DirectoryUnavailable
from mdtwist.interfaces import IDirectory, IReceivePolicy, ISharingLookup
from mdtwist.route import LookupBudget, Route, SharingAnswer
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.decision import RECIPIENT_OK, RecipientDecision
from mdtwist.smtp.policy import (
    NO_SUCH_USER,
    SHARING_UNAVAILABLE,
    TRUSTED_VERDICTS,
    ReceivePolicy,
    parse_networks,
)
from tests.support.logs import capture_logs

ALICE = Account(address="alice@local.test", mailbox="alice", domain="local.test", login="alice")
GONE = Account(
    address="gone@local.test", mailbox="gone", domain="local.test", login="gone", enabled=False
)
STRANGER = ClientInfo(address="203.0.113.9", helo="stranger.test")
FRIEND = ClientInfo(address="192.0.2.7", helo="friend.test")
BOB = Account(address="bob@second.test", mailbox="bob", domain="second.test", login="bob")
AUTHED = ClientInfo(address="203.0.113.9", helo="laptop", user="alice")


@implementer(IDirectory)
class TwoAccounts:
    """
    A directory for local.test (alice, her alias a.l, and a disabled account) and second.test;
    can be switched off.
    """

    down = False

    def __init__(self) -> None:
        self.extra: dict[str, Account] = {}

    def find(self, address: str) -> Deferred[Account | None]:
        if self.down:
            return fail(DirectoryUnavailable("down"))
        known = {"alice@local.test": ALICE, "a.l@local.test": ALICE, "gone@local.test": GONE}
        return succeed({**known, **self.extra}.get(address.lower()))

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        return succeed(None)

    def domains(self) -> Deferred[frozenset[str]]:
        if self.down:
            return fail(DirectoryUnavailable("down"))
        return succeed(frozenset({"local.test", "second.test"}))


class ReceivePolicyTests(SynchronousTestCase):
    """
    Local recipients are checked against the directory; everything else needs a right to relay.
    """

    def setUp(self) -> None:
        self.directory = TwoAccounts()
        self.policy = ReceivePolicy(
            self.directory, trusted_networks=parse_networks(["192.0.2.0/24", "::1"])
        )

    def decide(self, recipient: str, client: ClientInfo = STRANGER) -> RecipientDecision:
        """
        @return: the policy's decision for a recipient.
        """
        return self.successResultOf(self.policy.check_recipient(client, "s@x.test", recipient))

    def rcpt(self, recipient: str, client: ClientInfo = STRANGER) -> tuple[int, str | None]:
        """
        @return: the code and enhanced status of the reply to a recipient.
        """
        reply: Reply = self.decide(recipient, client).reply
        return reply.code, reply.enhanced

    def test_interface(self) -> None:
        """
        The policy provides L{IReceivePolicy}.
        """
        self.assertTrue(verifyObject(IReceivePolicy, self.policy))

    def test_local_recipients(self) -> None:
        """
        Known local addresses are accepted in any case; unknown ones get 550 5.1.1, disabled
        ones 550 5.2.1.
        """
        self.assertEqual(self.rcpt("alice@local.test"), (250, "2.1.5"))
        self.assertEqual(self.rcpt("ALICE@Local.Test"), (250, "2.1.5"))
        self.assertEqual(self.rcpt("nobody@local.test"), (550, "5.1.1"))
        self.assertEqual(self.rcpt("gone@local.test"), (550, "5.2.1"))

    def test_local_route(self) -> None:
        """
        An accepted local recipient goes to its account's primary address, whatever case or
        alias it was given in.
        """
        self.assertEqual(self.decide("ALICE@Local.Test").route, Route.local("alice@local.test"))
        self.assertEqual(self.decide("a.l@local.test").route, Route.local("alice@local.test"))
        self.assertIsNone(self.decide("nobody@local.test").route)

    def test_postmaster_without_mailbox(self) -> None:
        """
        With no postmaster mailbox configured and no postmaster account, postmaster cannot be
        delivered, so it is refused at RCPT (never accepted to bounce later).
        """
        self.assertEqual(self.rcpt("postmaster"), (550, "5.1.1"))
        self.assertEqual(self.rcpt("PostMaster@local.test"), (550, "5.1.1"))

    def test_postmaster_mailbox(self) -> None:
        """
        Bare postmaster and postmaster at every local domain, in any case, reach the configured
        mailbox, from anyone.
        """
        policy = ReceivePolicy(self.directory, postmaster="alice@local.test")
        for rcpt in (
            "postmaster",
            "PostMaster",
            "postmaster@local.test",
            "POSTMASTER@second.test",
        ):
            decision = self.successResultOf(policy.check_recipient(STRANGER, "s@x.test", rcpt))
            self.assertEqual(decision, RecipientDecision.accept(Route.local("alice@local.test")))

    def test_postmaster_account_wins(self) -> None:
        """
        An account that has a postmaster address itself receives its mail, not the configured
        mailbox.
        """
        self.directory.extra["postmaster@second.test"] = BOB
        policy = ReceivePolicy(self.directory, postmaster="alice@local.test")
        decision = self.successResultOf(
            policy.check_recipient(STRANGER, "s@x.test", "postmaster@second.test")
        )
        self.assertEqual(decision.route, Route.local("bob@second.test"))
        decision = self.successResultOf(
            policy.check_recipient(STRANGER, "s@x.test", "postmaster@local.test")
        )
        self.assertEqual(decision.route, Route.local("alice@local.test"))

    def test_postmaster_not_relayed(self) -> None:
        """
        Postmaster at a foreign domain is an ordinary remote address.
        """
        capture_logs(self)
        policy = ReceivePolicy(self.directory, postmaster="alice@local.test")
        decision = self.successResultOf(
            policy.check_recipient(STRANGER, "s@x.test", "postmaster@foreign.test")
        )
        self.assertEqual(decision.reply.code, 554)

    def test_remote_route(self) -> None:
        """
        A relayed recipient gets the remote route.
        """
        self.assertEqual(
            self.decide("x@foreign.test", FRIEND), RecipientDecision.accept(Route.remote())
        )

    def test_gateway_domain(self) -> None:
        """
        A recipient in a gateway domain is accepted from anyone and held for the gateway.
        """
        policy = ReceivePolicy(self.directory, gateway_domains=["Gate.Test"])
        decision = self.successResultOf(
            policy.check_recipient(STRANGER, "s@x.test", "anyone@gate.test")
        )
        self.assertEqual(decision, RecipientDecision.accept(Route.gateway_hold("gate.test")))

    def test_decision_needs_route_when_accepting(self) -> None:
        """
        A decision carries a route exactly when its reply accepts.
        """
        self.assertRaises(ValueError, RecipientDecision, RECIPIENT_OK)
        self.assertRaises(ValueError, RecipientDecision, NO_SUCH_USER, Route.remote())

    def test_directory_down(self) -> None:
        """
        A directory that cannot answer gives 451 4.3.0, never a 5xx.
        """
        capture_logs(self)
        self.directory.down = True
        self.assertEqual(self.rcpt("alice@local.test"), (451, "4.3.0"))
        self.assertEqual(self.rcpt("nobody@local.test"), (451, "4.3.0"))

    def test_no_relay_for_strangers(self) -> None:
        """
        A stranger cannot send to other domains, whatever address trick it uses.
        """
        capture_logs(self)
        for rcpt in (
            "victim@foreign.test",
            "victim@foreign.test.",
            "victim%foreign.test@other.test",
            "foreign.test!victim@other.test",
            '"victim@foreign.test"@other.test',
        ):
            self.assertEqual(self.rcpt(rcpt), (554, "5.7.1"), rcpt)

    def test_tricks_on_local_domain_stay_local(self) -> None:
        """
        Address tricks aimed at a local domain are local addresses that do not exist.
        """
        for rcpt in (
            "victim%foreign.test@local.test",
            "foreign.test!victim@local.test",
            '"victim@foreign.test"@local.test',
            "alice%local.test@local.test",
        ):
            self.assertEqual(self.rcpt(rcpt), (550, "5.1.1"), rcpt)

    def test_relay_for_trusted_and_authenticated(self) -> None:
        """
        Trusted networks (also as IPv4-mapped IPv6) and authenticated sessions may relay.
        """
        self.assertEqual(self.rcpt("x@foreign.test", FRIEND), (250, "2.1.5"))
        self.assertEqual(self.rcpt("x@foreign.test", AUTHED), (250, "2.1.5"))
        mapped = ClientInfo(address="::ffff:192.0.2.9", helo="h")
        self.assertEqual(self.rcpt("x@foreign.test", mapped), (250, "2.1.5"))
        self.assertEqual(self.rcpt("x@foreign.test", ClientInfo("::1", "h")), (250, "2.1.5"))

    def test_trusted_verdicts_remembered(self) -> None:
        """
        The trusted-network verdict of each client address is remembered, in a bounded
        table: asked about more addresses than it holds, it starts over and still answers
        each one right, and a text that is no address is never trusted.
        """
        for n in range(TRUSTED_VERDICTS + 10):
            client = ClientInfo(address=f"198.51.{n // 256}.{n % 256}", helo="h")
            self.assertFalse(self.policy.trusted(client))
            self.assertTrue(self.policy.trusted(FRIEND))
            self.assertLessEqual(len(self.policy._trusted_verdicts), TRUSTED_VERDICTS)
        self.assertFalse(self.policy.trusted(ClientInfo(address="not-an-ip", helo="h")))
        self.assertFalse(self.policy.trusted(ClientInfo(address="not-an-ip", helo="h")))
        self.assertTrue(self.policy.trusted(ClientInfo(address="::ffff:192.0.2.9", helo="h")))

    def test_bad_syntax(self) -> None:
        """
        A forward-path that is not an address gets 501 5.1.3.
        """
        self.assertEqual(self.rcpt("nobody"), (501, "5.1.3"))

    def test_any_sender(self) -> None:
        """
        Any sender, the null sender too, is accepted; AUTH rules are the listener's.
        """
        for sender in ("", "a@b.test", "alice@local.test"):
            reply = self.successResultOf(self.policy.check_sender(STRANGER, sender))
            self.assertEqual((reply.code, reply.enhanced), (250, "2.1.0"))


@implementer(ISharingLookup)
class FakeSharing:
    """
    A Domain Sharing lookup with fixed answers.

    @ivar answers: the answer per address; others are not found.
    @ivar calls: the addresses looked up.
    @ivar error: an exception to fail with, or L{None}.
    @ivar cached: addresses answered without asking the peers (they do not spend a budget).
    @ivar locals: the addresses it was told have a local account.
    """

    def __init__(self) -> None:
        self.answers: dict[str, SharingAnswer] = {}
        self.calls: list[str] = []
        self.error: Exception | None = None
        self.cached: set[str] = set()
        self.locals: list[str] = []

    def lookup(
        self, address: str, client: ClientInfo, budget: LookupBudget | None = None
    ) -> Deferred[SharingAnswer]:
        self.calls.append(address)
        if self.error is not None:
            return fail(self.error)
        if address not in self.cached and budget is not None and not budget.spend(address):
            return succeed(SharingAnswer.unavailable())
        return succeed(self.answers.get(address, SharingAnswer.not_found()))

    def local_account(self, address: str) -> None:
        self.locals.append(address)


class SharingTests(SynchronousTestCase):
    """
    A local address without a local account is asked of the Domain Sharing lookup.
    """

    def setUp(self) -> None:
        self.sharing = FakeSharing()
        self.policy = ReceivePolicy(TwoAccounts(), sharing=self.sharing)

    def decide(self, recipient: str) -> RecipientDecision:
        """
        @return: the policy's decision for a recipient from a stranger.
        """
        return self.successResultOf(self.policy.check_recipient(STRANGER, "s@x.test", recipient))

    def test_interface(self) -> None:
        """
        The fake provides L{ISharingLookup}, so the tests use the interface as it is.
        """
        self.assertTrue(verifyObject(ISharingLookup, self.sharing))

    def test_found(self) -> None:
        """
        An address a peer has is accepted with a route to that peer.
        """
        self.sharing.answers["carol@local.test"] = SharingAnswer.found("peer.test:2525")
        self.assertEqual(
            self.decide("carol@local.test"),
            RecipientDecision.accept(Route.sharing_peer("peer.test:2525")),
        )

    def test_not_found(self) -> None:
        """
        An address no peer has is refused with 550 5.1.1.
        """
        self.assertEqual(self.decide("nobody@local.test"), RecipientDecision(NO_SUCH_USER))
        self.assertEqual(self.sharing.calls, ["nobody@local.test"])

    def test_unavailable(self) -> None:
        """
        A lookup that cannot tell, or fails, gives 451 4.4.3: the client tries again later.
        """
        capture_logs(self)
        self.sharing.answers["dan@local.test"] = SharingAnswer.unavailable()
        self.assertEqual(self.decide("dan@local.test"), RecipientDecision(SHARING_UNAVAILABLE))
        self.sharing.error = RuntimeError("boom")
        self.assertEqual(self.decide("eve@local.test"), RecipientDecision(SHARING_UNAVAILABLE))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_local_accounts_first(self) -> None:
        """
        Local accounts, disabled ones and remote addresses never reach the lookup.
        """
        capture_logs(self)
        self.assertEqual(self.decide("alice@local.test").route, Route.local("alice@local.test"))
        self.assertEqual(self.decide("gone@local.test").reply.enhanced, "5.2.1")
        self.assertEqual(self.decide("x@foreign.test").reply.code, 554)
        self.assertEqual(self.sharing.calls, [])

    def test_postmaster_not_shared(self) -> None:
        """
        Postmaster is never looked up on peers: without a mailbox here it is refused.
        """
        self.assertEqual(self.decide("postmaster@local.test").reply.code, 550)
        self.assertEqual(self.sharing.calls, [])

    def test_local_account_told(self) -> None:
        """
        A recipient with a local account is passed on to the lookup, so that a cached route
        for it is forgotten.
        """
        self.decide("Alice@local.test")
        self.assertEqual(self.sharing.locals, ["Alice@local.test"])

    def test_session_cap(self) -> None:
        """
        One session may have at most C{sharing_lookups_per_session} distinct addresses asked
        about at the peers; past that, 451 4.4.3 without asking. The same address again, a
        cached address and a new session are not held back.
        """
        capture_logs(self)
        policy = ReceivePolicy(TwoAccounts(), sharing=self.sharing, sharing_lookups_per_session=2)
        self.assertTrue(verifyObject(IReceivePolicy, policy.for_session()))
        session = policy.for_session()
        self.sharing.cached.add("cached@local.test")
        self.sharing.answers["cached@local.test"] = SharingAnswer.found("peer.test:25")

        def decide(recipient: str, policy: IReceivePolicy = session) -> Reply:
            decision = self.successResultOf(
                policy.check_recipient(STRANGER, "s@x.test", recipient)
            )
            return decision.reply

        self.assertEqual(decide("one@local.test"), NO_SUCH_USER)
        self.assertEqual(decide("two@local.test"), NO_SUCH_USER)
        self.assertEqual(decide("three@local.test"), SHARING_UNAVAILABLE)
        self.assertEqual(decide("One@local.test"), NO_SUCH_USER)
        self.assertEqual(decide("cached@local.test").code, 250)
        self.assertEqual(decide("three@local.test", policy.for_session()), NO_SUCH_USER)
        # The policy itself, used without a session, has no cap.
        self.assertEqual(decide("four@local.test", policy), NO_SUCH_USER)


class SenderLoginTests(SynchronousTestCase):
    """
    With C{sender_must_match_login}, an authenticated session may only send as its own
    account (primary address or alias) or with the null sender.
    """

    def setUp(self) -> None:
        self.directory = TwoAccounts()
        self.policy = ReceivePolicy(self.directory, sender_must_match_login=True)

    def check(self, client: ClientInfo, sender: str) -> Reply:
        return self.successResultOf(self.policy.check_sender(client, sender))

    def test_own_addresses(self) -> None:
        """
        The account's primary address, in any case, and an alias of it (the directory finds
        the account for it) are accepted; so is the null sender. A session whose user is one
        of the account's addresses (not its login) is the same account.
        """
        alias = Account(
            address="alice@local.test",
            mailbox="alice",
            domain="local.test",
            login="alice",
            aliases=("al@local.test",),
        )
        self.directory.find = lambda address: succeed(  # type: ignore[method-assign]
            alias if address.lower() in alias.addresses else None
        )
        for sender in ["alice@local.test", "Alice@LOCAL.test", "al@local.test", ""]:
            self.assertEqual(self.check(AUTHED, sender).code, 250, sender)
        by_address = ClientInfo(address="203.0.113.9", helo="laptop", user="Al@local.test")
        self.assertEqual(self.check(by_address, "alice@local.test").code, 250)

    def test_other_addresses_refused(self) -> None:
        """
        Another account's address, an unknown local address and a foreign address are refused
        with C{553 5.7.1} naming the sender; the refusal is logged with sender and login
        escaped.
        """
        events = capture_logs(self)
        for sender in ["gone@local.test", "bob@local.test", "ceo@bank.example"]:
            answer = self.check(AUTHED, sender)
            self.assertEqual((answer.code, answer.enhanced), (553, "5.7.1"), sender)
            self.assertEqual(
                answer.lines, (f"<{sender}>: Sender address not owned by the logged-in user",)
            )
        self.check(ClientInfo(address="203.0.113.9", helo="x", user="al\r\nice"), "a@b.example")
        self.assertIn("al\\x0d\\x0aice", [e.get("user") for e in events])

    def test_unauthenticated_and_off(self) -> None:
        """
        An unauthenticated session is not checked (the listener decides whether it may send
        at all), and without the setting no session is.
        """
        self.assertEqual(self.check(STRANGER, "ceo@bank.example").code, 250)
        off = ReceivePolicy(self.directory)
        self.assertEqual(self.successResultOf(off.check_sender(AUTHED, "bob@x.example")).code, 250)

    def test_directory_down(self) -> None:
        """
        A directory that cannot answer gives C{451 4.3.0}, never a 5xx.
        """
        self.directory.down = True
        answer = self.check(AUTHED, "alice@local.test")
        self.assertEqual((answer.code, answer.enhanced), (451, "4.3.0"))
