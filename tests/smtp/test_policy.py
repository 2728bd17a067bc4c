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
from mdtwist.interfaces import IDirectory, IReceivePolicy
from mdtwist.smtp.core.replies import Reply
from mdtwist.smtp.policy import ReceivePolicy, parse_networks
from tests.support.logs import capture_logs

ALICE = Account(address="alice@local.test", mailbox="alice", domain="local.test", login="alice")
GONE = Account(
    address="gone@local.test", mailbox="gone", domain="local.test", login="gone", enabled=False
)
STRANGER = ClientInfo(address="203.0.113.9", helo="stranger.test")
FRIEND = ClientInfo(address="192.0.2.7", helo="friend.test")
AUTHED = ClientInfo(address="203.0.113.9", helo="laptop", user="alice")


@implementer(IDirectory)
class TwoAccounts:
    """
    A directory for local.test with alice and a disabled account; can be switched off.
    """

    down = False

    def find(self, address: str) -> Deferred[Account | None]:
        if self.down:
            return fail(DirectoryUnavailable("down"))
        return succeed({"alice@local.test": ALICE, "gone@local.test": GONE}.get(address.lower()))

    def authenticate(self, login: str, password: str) -> Deferred[Account | None]:
        return succeed(None)

    def domains(self) -> Deferred[frozenset[str]]:
        if self.down:
            return fail(DirectoryUnavailable("down"))
        return succeed(frozenset({"local.test"}))


class ReceivePolicyTests(SynchronousTestCase):
    """
    Local recipients are checked against the directory; everything else needs a right to relay.
    """

    def setUp(self) -> None:
        self.directory = TwoAccounts()
        self.policy = ReceivePolicy(
            self.directory, trusted_networks=parse_networks(["192.0.2.0/24", "::1"])
        )

    def rcpt(self, recipient: str, client: ClientInfo = STRANGER) -> tuple[int, str | None]:
        reply: Reply = self.successResultOf(
            self.policy.check_recipient(client, "s@x.test", recipient)
        )
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

    def test_postmaster_always(self) -> None:
        """
        Bare postmaster and postmaster at a local domain are accepted from anyone.
        """
        self.assertEqual(self.rcpt("postmaster"), (250, "2.1.5"))
        self.assertEqual(self.rcpt("PostMaster"), (250, "2.1.5"))
        self.assertEqual(self.rcpt("postmaster@local.test"), (250, "2.1.5"))

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
