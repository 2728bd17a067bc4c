"""
Tests for L{mdtwist.delivery.remote} with a fake resolver and a fake SMTP client.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.delivery.hosts import FailedHosts, MXHost, MXResult, MXResultKind
from mdtwist.delivery.remote import RemoteDelivery, SmartHostAccess
from mdtwist.delivery.router import Mode, RoutingPolicy, parse_host_spec
from mdtwist.directory.model import Account
from mdtwist.envelope import ClientInfo, Envelope, Recipient, RecipientState
from mdtwist.route import Route
from mdtwist.secret import Secret
from mdtwist.smtp.client import DeliveryReport, Destination
from mdtwist.smtp.core.client import (
    Credentials,
    Phase,
    RecipientOutcome,
    RecipientStatus,
    SessionOutcome,
    SessionStatus,
    Transaction,
    TransactionOutcome,
)
from mdtwist.smtp.modes import TLSMode
from mdtwist.spool.model import QueuedMessage, RecipientResult
from tests.spool.fakes import FakeDirectory
from tests.support.logs import capture_logs

#: How a fake host answers a recipient address: (status, code, enhanced, text).
Answer = tuple[RecipientStatus, int | None, str, str]


@attrs.define
class FakeResolver:
    """
    Answers every domain with the same MX hosts.
    """

    hosts: tuple[MXHost, ...]

    def resolve(self, domain: str) -> Deferred[MXResult]:
        return succeed(MXResult(MXResultKind.MX, self.hosts))

    def resolve_address(self, name: str) -> Deferred[MXResult]:
        return succeed(
            MXResult(MXResultKind.ADDRESS, (MXHost(name.strip("[]"), 0, ("192.0.2.99",)),))
        )


@attrs.define
class FakeClient:
    """
    An SMTP client whose hosts answer from a script, and that records every session.

    @ivar answers: address -> function from recipient address to its answer; an address
        missing here refuses connections.
    """

    answers: dict[str, Callable[[str], Answer]]
    sessions: list[tuple[str, Destination, tuple[str, ...]]] = attrs.Factory(list)

    def deliver(
        self,
        endpoint: IStreamClientEndpoint,
        destination: Destination,
        transactions: Sequence[Transaction],
        *,
        queue_id: str | None = None,
    ) -> Deferred[DeliveryReport]:
        address = endpoint.address  # type: ignore[attr-defined]
        [transaction] = transactions
        rcpts = tuple(r.address for r in transaction.recipients)
        self.sessions.append((address, destination, rcpts))
        script = self.answers.get(address)
        if script is None:
            session = SessionOutcome(SessionStatus.CONNECTION_FAILED, Phase.CONNECT)
            return succeed(DeliveryReport((), session))
        outcomes = tuple(RecipientOutcome(rcpt, *script(rcpt), phase=Phase.RCPT) for rcpt in rcpts)
        report = DeliveryReport(
            (TransactionOutcome(transaction, outcomes, True),),
            SessionOutcome(SessionStatus.COMPLETED, Phase.QUIT),
        )
        return succeed(report)


@attrs.frozen
class FakeEndpoint:
    """
    Stands for a client endpoint; only its address is looked at.
    """

    address: str
    port: int


ACCEPT: Answer = (RecipientStatus.DELIVERED, 250, "2.0.0", "ok")


def message(*recipients: str, user: str | None = None) -> QueuedMessage:
    envelope = Envelope(
        sender="alice@local.test",
        recipients=tuple(Recipient(r) for r in recipients),
        client=ClientInfo("192.0.2.1", "client.test", user=user),
        arrival=0.0,
    )
    return QueuedMessage("0000000001", envelope, 10, 0, 0.0, b"Subject: x\r\n\r\nbody\r\n")


class RemoteDeliveryTests(SynchronousTestCase):
    """
    Recipients get one result each, from the hosts' answers and the routing rules.
    """

    def remote(
        self,
        answers: dict[str, Callable[[str], Answer]],
        *,
        policy: RoutingPolicy | None = None,
        access: SmartHostAccess | None = None,
        abort: bool = False,
        directory: FakeDirectory | None = None,
    ) -> tuple[RemoteDelivery, FakeClient, FailedHosts]:
        hosts = (
            MXHost("mx1.remote.test", 10, ("192.0.2.1",)),
            MXHost("mx2.remote.test", 20, ("192.0.2.2",)),
        )
        client = FakeClient(answers)
        failed = FailedHosts()
        self.clock = Clock()
        remote = RemoteDelivery(
            policy=policy or RoutingPolicy(),
            resolver=FakeResolver(hosts),  # type: ignore[arg-type]
            client=client,  # type: ignore[arg-type]
            failed_hosts=failed,
            connect=lambda address, port: FakeEndpoint(address, port),  # type: ignore[arg-type,return-value]
            directory=directory or FakeDirectory([], ["local.test"]),
            smart_host=access or SmartHostAccess(),
            abort_on_rcpt_5xx=abort,
            delay_after_temp_error=180.0,
            clock=self.clock,
        )
        return remote, client, failed

    def deliver(self, remote: RemoteDelivery, msg: QueuedMessage) -> list[RecipientResult]:
        positions = list(range(len(msg.envelope.recipients)))
        results: Sequence[RecipientResult] = self.successResultOf(
            Deferred.fromCoroutine(remote(msg, positions))
        )
        return list(results)

    def test_delivered_by_best_mx(self) -> None:
        """
        The best MX takes the message; the result names it as the remote MTA, with the
        address it was reached at (for the mail log).
        """
        remote, client, _ = self.remote({"192.0.2.1": lambda r: ACCEPT})
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual((result.state, result.status), (RecipientState.DELIVERED, "2.0.0"))
        self.assertEqual(result.remote_mta, "mx1.remote.test")
        self.assertEqual(result.relay_address, "192.0.2.1")
        self.assertEqual([s[0] for s in client.sessions], ["192.0.2.1"])

    def test_permanent_failure_keeps_reply(self) -> None:
        """
        A 5xx from the only MX fails the recipient with the whole reply as its diagnostic,
        and the host and address that gave it.
        """
        hard: Answer = (RecipientStatus.PERMANENT, 550, "5.1.1", "no such user")
        remote, _, _ = self.remote({"192.0.2.1": lambda r: hard, "192.0.2.2": lambda r: hard})
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(
            (result.state, result.status, result.diagnostic, result.relay_address),
            (RecipientState.FAILED, "5.1.1", "550 5.1.1 no such user", "192.0.2.2"),
        )

    def test_unreachable_host_is_remembered(self) -> None:
        """
        A host that refuses connections is marked down and the next MX takes the message.
        """
        remote, client, failed = self.remote({"192.0.2.2": lambda r: ACCEPT})
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(result.state, RecipientState.DELIVERED)
        self.assertTrue(failed.is_down("192.0.2.1", 25, self.clock.seconds()))
        self.assertEqual([s[0] for s in client.sessions], ["192.0.2.1", "192.0.2.2"])
        # The next message skips the dead host.
        self.deliver(remote, message("bob@remote.test"))
        self.assertEqual([s[0] for s in client.sessions][2:], ["192.0.2.2"])

    def test_dead_hosts_not_tried_again(self) -> None:
        """
        When every host refused a connection, the next messages are deferred without a
        connection until the first host's down period ends (the dead-host cache), and ask the
        queue to wait that long; then one message tries the hosts again.
        """
        capture_logs(self)
        remote, client, _ = self.remote({})
        [first] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual((first.state, first.status), (RecipientState.PENDING, "4.4.1"))
        self.assertEqual(first.retry_after, 300.0)
        self.assertEqual(len(client.sessions), 2)
        self.clock.advance(100)
        for _ in range(3):
            [later] = self.deliver(remote, message("bob@remote.test"))
            self.assertEqual((later.state, later.status), (RecipientState.PENDING, "4.4.1"))
            self.assertEqual(later.retry_after, 200.0)
            self.assertIn("failed recently", later.diagnostic)
        self.assertEqual(len(client.sessions), 2)
        self.clock.advance(200)
        [probe] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(len(client.sessions), 4)
        self.assertEqual(probe.retry_after, 600.0)

    def test_forget_failed_hosts(self) -> None:
        """
        After L{RemoteDelivery.forget_failed_hosts} (an operator's queue run) the dead hosts
        are tried again at once.
        """
        capture_logs(self)
        remote, client, _ = self.remote({})
        self.deliver(remote, message("bob@remote.test"))
        client.answers["192.0.2.1"] = lambda r: ACCEPT
        self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(len(client.sessions), 2)
        remote.forget_failed_hosts()
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(result.state, RecipientState.DELIVERED)
        self.assertEqual([s[0] for s in client.sessions][2:], ["192.0.2.1"])

    def test_4xx_defers_with_delay(self) -> None:
        """
        A 4xx from every host keeps the recipient pending, asks for the delay after a 4xx, and
        keeps the full reply as the diagnostic.
        """
        soft: Answer = (RecipientStatus.TEMPORARY, 451, "4.3.0", "try later")
        remote, _, _ = self.remote({"192.0.2.1": lambda r: soft, "192.0.2.2": lambda r: soft})
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(result.state, RecipientState.PENDING)
        self.assertEqual(result.retry_after, 180.0)
        self.assertEqual(result.diagnostic, "451 4.3.0 try later")

    def test_mixed_5xx_and_4xx_defers(self) -> None:
        """
        A 5xx from one MX and a 4xx from the other defers (bounce only when no host gave a
        4xx, MDaemon's default).
        """
        hard: Answer = (RecipientStatus.PERMANENT, 550, "5.7.1", "no")
        soft: Answer = (RecipientStatus.TEMPORARY, 450, "4.2.0", "busy")
        remote, _, _ = self.remote({"192.0.2.1": lambda r: hard, "192.0.2.2": lambda r: soft})
        [result] = self.deliver(remote, message("bob@remote.test"))
        self.assertEqual(result.state, RecipientState.PENDING)

    def test_abort_on_rcpt_5xx_retries_the_others_at_once(self) -> None:
        """
        With abort-on-5xx, the refused recipient fails and the others go out at once in a
        new transaction to the same host.
        """
        calls: list[str] = []

        def answer(rcpt: str) -> Answer:
            calls.append(rcpt)
            if rcpt == "bad@remote.test":
                return (RecipientStatus.PERMANENT, 550, "5.1.1", "unknown")
            if len(calls) <= 2:
                return (RecipientStatus.RETRY_NOW, None, "4.0.0", "aborted")
            return ACCEPT

        remote, client, _ = self.remote(
            {"192.0.2.1": answer}, policy=RoutingPolicy(bounce_on_first_5xx=True), abort=True
        )
        results = self.deliver(remote, message("bad@remote.test", "good@remote.test"))
        self.assertEqual(
            [(r.position, r.state) for r in results],
            [(0, RecipientState.FAILED), (1, RecipientState.DELIVERED)],
        )
        self.assertEqual(
            [s[2] for s in client.sessions],
            [("bad@remote.test", "good@remote.test"), ("good@remote.test",)],
        )
        self.assertTrue(all(s[1].abort_on_rcpt_5xx for s in client.sessions))

    def smart_policy(self) -> RoutingPolicy:
        return RoutingPolicy(mode=Mode.SMARTHOST, smart_host=parse_host_spec("[relay.test]:587"))

    def test_smarthost_global_credentials(self) -> None:
        """
        In smart-host mode all recipients go in one transaction with the global login.
        """
        access = SmartHostAccess(
            tls=TLSMode.VERIFIED, credentials=Credentials("relay", Secret("pw"))
        )
        remote, client, _ = self.remote(
            {"192.0.2.99": lambda r: ACCEPT}, policy=self.smart_policy(), access=access
        )
        results = self.deliver(remote, message("a@one.test", "b@two.test"))
        self.assertEqual({r.state for r in results}, {RecipientState.DELIVERED})
        [(_, destination, rcpts)] = client.sessions
        self.assertEqual(rcpts, ("a@one.test", "b@two.test"))
        self.assertEqual(
            (destination.host, destination.port, destination.tls),
            ("relay.test", 587, TLSMode.VERIFIED),
        )
        assert destination.credentials is not None
        self.assertEqual(destination.credentials.login, "relay")

    def test_per_account_credentials(self) -> None:
        """
        With per-account AUTH, the sending account's own smart-host login is used; an
        account without one falls back to the global login.
        """
        directory = FakeDirectory(
            [
                Account(
                    address="alice@local.test",
                    mailbox="alice",
                    domain="local.test",
                    login="alice@local.test",
                    smarthost_login="alice-relay",
                    smarthost_password=Secret("alice-pw"),
                )
            ],
            ["local.test"],
        )
        access = SmartHostAccess(credentials=Credentials("global", Secret("g")), per_account=True)
        remote, client, _ = self.remote(
            {"192.0.2.99": lambda r: ACCEPT},
            policy=self.smart_policy(),
            access=access,
            directory=directory,
        )
        self.deliver(remote, message("x@one.test", user="alice@local.test"))
        other = attrs.evolve(
            message("y@one.test"),
            envelope=attrs.evolve(message("y@one.test").envelope, sender="carol@local.test"),
        )
        self.deliver(remote, other)
        logins = [s[1].credentials.login if s[1].credentials else None for s in client.sessions]
        self.assertEqual(logins, ["alice-relay", "global"])

    def test_pop_before_smtp_refused_defers(self) -> None:
        """
        A refused POP3 login defers every recipient (4.7.0) without contacting the smart host.
        """
        access = SmartHostAccess(pop_login=lambda: succeed(False))
        remote, client, _ = self.remote(
            {"192.0.2.99": lambda r: ACCEPT}, policy=self.smart_policy(), access=access
        )
        [result] = self.deliver(remote, message("x@one.test"))
        self.assertEqual((result.state, result.status), (RecipientState.PENDING, "4.7.0"))
        self.assertEqual(client.sessions, [])

    def test_dead_smart_host_no_login(self) -> None:
        """
        While the smart host is in the dead-host cache, a message is deferred without a
        POP-before-SMTP login: the login is made again for the attempt that connects.
        """
        capture_logs(self)
        logins: list[int] = []

        def pop_login() -> Deferred[bool]:
            logins.append(1)
            return succeed(True)

        access = SmartHostAccess(pop_login=pop_login)
        remote, client, _ = self.remote({}, policy=self.smart_policy(), access=access)
        [first] = self.deliver(remote, message("x@one.test"))
        self.assertEqual((first.status, len(logins), len(client.sessions)), ("4.4.1", 1, 1))
        [later] = self.deliver(remote, message("y@one.test"))
        self.assertEqual((later.state, later.status), (RecipientState.PENDING, "4.4.1"))
        self.assertIn("failed recently", later.diagnostic)
        self.assertEqual((len(logins), len(client.sessions)), (1, 1))
        self.clock.advance(300)
        self.deliver(remote, message("z@one.test"))
        self.assertEqual((len(logins), len(client.sessions)), (2, 2))

    def test_mailbox_password(self) -> None:
        """
        With mailbox passwords (ISPAUTHUsePasswords), the login of the session and the
        password it authenticated with are sent; without a kept password, the global login.
        """
        access = SmartHostAccess(
            credentials=Credentials("global", Secret("g")), per_account=True, mailbox_password=True
        )
        remote, client, _ = self.remote(
            {"192.0.2.99": lambda r: ACCEPT}, policy=self.smart_policy(), access=access
        )
        kept = message("x@one.test", user="alice@local.test")
        kept = attrs.evolve(
            kept,
            envelope=attrs.evolve(
                kept.envelope,
                client=attrs.evolve(kept.envelope.client, password=Secret("mailbox-pw")),
            ),
        )
        self.deliver(remote, kept)
        self.deliver(remote, message("y@one.test"))
        sent = [s[1].credentials for s in client.sessions]
        assert sent[0] is not None and sent[1] is not None
        self.assertEqual(
            (sent[0].login, sent[0].password.reveal()), ("alice@local.test", "mailbox-pw")
        )
        self.assertEqual(sent[1].login, "global")


def routed(*recipients: Recipient) -> QueuedMessage:
    """
    @return: a queued message for recipients that carry their routes.
    """
    plain = message()
    return attrs.evolve(plain, envelope=attrs.evolve(plain.envelope, recipients=recipients))


class RouteTests(SynchronousTestCase):
    """
    Remote delivery acts on each recipient's stored route.
    """

    def test_sharing_peer(self) -> None:
        """
        A sharing-peer recipient goes to the peer's address records on the peer's port, never
        through MX and never to the smart host; a remote one in the same message still goes to
        the smart host.
        """
        client = FakeClient({"192.0.2.99": lambda r: ACCEPT})
        # No MX host at all: a recipient routed through MX could not be delivered.
        resolver = FakeResolver(())
        remote = RemoteDelivery(
            policy=RoutingPolicy(mode=Mode.SMARTHOST, smart_host=parse_host_spec("[smart.test]")),
            resolver=resolver,  # type: ignore[arg-type]
            client=client,  # type: ignore[arg-type]
            failed_hosts=FailedHosts(),
            connect=lambda address, port: FakeEndpoint(address, port),  # type: ignore[arg-type,return-value]
            directory=FakeDirectory([], ["local.test"]),
            smart_host=SmartHostAccess(),
        )
        msg = routed(
            Recipient("carol@local.test", route=Route.sharing_peer("peer.test:2526")),
            Recipient("bob@remote.test", route=Route.remote()),
        )
        results = self.successResultOf(Deferred.fromCoroutine(remote(msg, [0, 1])))
        self.assertEqual(
            sorted((r.position, r.state, r.remote_mta) for r in results),
            [
                (0, RecipientState.DELIVERED, "peer.test"),
                (1, RecipientState.DELIVERED, "smart.test"),
            ],
        )
        self.assertEqual(
            [(d.host, d.port, rcpts) for _, d, rcpts in client.sessions],
            [("peer.test", 2526, ("carol@local.test",)), ("smart.test", 25, ("bob@remote.test",))],
        )

    def peer_delivery(
        self,
        answer: Answer,
        forgotten: list[str],
        resolver: FakeResolver | None = None,
        **policy: object,
    ) -> tuple[RemoteDelivery, FakeClient]:
        client = FakeClient({"192.0.2.99": lambda r: answer})
        remote = RemoteDelivery(
            policy=RoutingPolicy(**policy),  # type: ignore[arg-type]
            resolver=resolver or FakeResolver(()),  # type: ignore[arg-type]
            client=client,  # type: ignore[arg-type]
            failed_hosts=FailedHosts(),
            connect=lambda address, port: FakeEndpoint(address, port),  # type: ignore[arg-type,return-value]
            directory=FakeDirectory([], ["local.test"]),
            smart_host=SmartHostAccess(),
            forget_peer_address=forgotten.append,
        )
        return remote, client

    def test_peer_unknown_forgotten(self) -> None:
        """
        A peer's C{550 5.1.1} bounces the recipient and hands its address to
        C{forget_peer_address} (the sharing cache drops it); a remote recipient's 5.1.1 and
        a peer's 4xx do not.
        """
        capture_logs(self)
        forgotten: list[str] = []
        unknown: Answer = (RecipientStatus.PERMANENT, 550, "5.1.1", "no such user")
        resolver = FakeResolver((MXHost("mx.remote.test", 10, ("192.0.2.99",)),))
        remote, _ = self.peer_delivery(unknown, forgotten, resolver)
        msg = routed(
            Recipient("carol@local.test", route=Route.sharing_peer("peer.test:2526")),
            Recipient("bob@remote.test", route=Route.remote()),
        )
        results = self.successResultOf(Deferred.fromCoroutine(remote(msg, [0, 1])))
        self.assertEqual(
            [(r.state, r.status) for r in results], [(RecipientState.FAILED, "5.1.1")] * 2
        )
        self.assertEqual(forgotten, ["carol@local.test"])
        busy: Answer = (RecipientStatus.TEMPORARY, 451, "4.3.0", "try later")
        remote, _ = self.peer_delivery(busy, forgotten)
        results = self.successResultOf(Deferred.fromCoroutine(remote(msg, [0])))
        self.assertEqual([r.state for r in results], [RecipientState.PENDING])
        self.assertEqual(forgotten, ["carol@local.test"])

    def test_peer_smarthost_fallback(self) -> None:
        """
        With C{sharing_smarthost_fallback} a peer's 4xx hands the recipient to the smart
        host; without it (the default) the recipient is deferred and the smart host is never
        contacted.
        """
        busy: Answer = (RecipientStatus.TEMPORARY, 451, "4.3.0", "try later")
        msg = routed(Recipient("carol@local.test", route=Route.sharing_peer("peer.test:2526")))
        smart = parse_host_spec("[smart.test]")
        for fallback, hosts in ((False, ["peer.test"]), (True, ["peer.test", "smart.test"])):
            remote, client = self.peer_delivery(
                busy,
                [],
                mode=Mode.DIRECT_THEN_SMARTHOST,
                smart_host=smart,
                sharing_smarthost_fallback=fallback,
            )
            self.successResultOf(Deferred.fromCoroutine(remote(msg, [0])))
            self.assertEqual([d.host for _, d, _ in client.sessions], hosts)

    def test_bad_peer_stays_pending(self) -> None:
        """
        A stored peer that is not a host specification keeps its recipient pending (C{4.3.5})
        and does not hold up the others.
        """
        capture_logs(self)
        client = FakeClient({"192.0.2.1": lambda r: ACCEPT})
        remote = RemoteDelivery(
            policy=RoutingPolicy(),
            resolver=FakeResolver((MXHost("mx1.remote.test", 10, ("192.0.2.1",)),)),  # type: ignore[arg-type]
            client=client,  # type: ignore[arg-type]
            failed_hosts=FailedHosts(),
            connect=lambda address, port: FakeEndpoint(address, port),  # type: ignore[arg-type,return-value]
            directory=FakeDirectory([], ["local.test"]),
            smart_host=SmartHostAccess(),
        )
        msg = routed(
            Recipient("carol@local.test", route=Route.sharing_peer("bad host:x")),
            Recipient("bob@remote.test"),
        )
        results = self.successResultOf(Deferred.fromCoroutine(remote(msg, [0, 1])))
        self.assertEqual(
            sorted((r.position, r.state, r.status) for r in results),
            [(0, RecipientState.PENDING, "4.3.5"), (1, RecipientState.DELIVERED, "2.0.0")],
        )
