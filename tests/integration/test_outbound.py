"""
Outbound delivery end to end: the real daemon, a DNS server on loopback (dnsmasq), smtp-sink
as MX hosts, an aiosmtpd smart host that requires STARTTLS and AUTH, and Dovecot for
POP-before-SMTP.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.dns import DNSServer, start_dns_server
from tests.integration.dovecot import Dovecot
from tests.integration.peers import free_port
from tests.integration.sink import Sink, SmartHost
from tests.integration.test_smtp_daemon import wait_for
from tests.support.dsn import parse, recipient_blocks

ALICE = "alice@example.test"


def one_mx(dns: DNSServer) -> None:
    """
    example.org has one MX host, mx1.example.org at 127.0.0.2.
    """
    dns.mx("example.org", 10, "mx1.example.org")
    dns.address("mx1.example.org", "127.0.0.2")


def two_mx(dns: DNSServer) -> None:
    """
    example.org has mx1 (preference 10, 127.0.0.2) and mx2 (preference 20, 127.0.0.3).
    """
    one_mx(dns)
    dns.mx("example.org", 20, "mx2.example.org")
    dns.address("mx2.example.org", "127.0.0.3")


class OutboundTests(SynchronousTestCase):
    """
    Mail for other domains leaves through MX hosts or the smart host, and failures bounce.
    """

    def dns(self, setup: Callable[[DNSServer], None]) -> DNSServer:
        return start_dns_server(self, ["example.org", "nullmx.test"], setup)

    def sink(self, address: str, *options: str, port: int | None = None) -> Sink:
        sink = Sink(address, options)
        if port is not None:
            sink.port = port
        sink.start()
        self.addCleanup(sink.stop)
        return sink

    def daemon(self, dns: DNSServer, mx_port: int, outbound: str = "", queue: str = "") -> Daemon:
        host, port = dns.endpoint
        daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            queue=queue,
            outbound=f'dns_servers = ["{host}:{port}"]\nmx_port = {mx_port}\n{outbound}',
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def send(self, daemon: Daemon, *recipients: str, sender: str = ALICE) -> None:
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
            refused = client.sendmail(
                sender, list(recipients), b"Subject: outbound test\r\n\r\nhello there\r\n"
            )
        self.assertEqual(refused, {})

    def spool_entries(self, daemon: Daemon) -> list[object]:
        reader = SpoolReader(daemon.spool)
        try:
            return list(reader.list())
        finally:
            reader.close()

    def bounce(self, daemon: Daemon) -> EmailMessage:
        """
        Wait for the one DSN in alice's mailbox and parse it.
        """
        self.assertTrue(
            wait_for(lambda: len(daemon.messages(ALICE)) >= 1, 30), daemon.log()[-3000:]
        )
        [raw] = daemon.messages(ALICE)
        message = parse(raw)
        self.assertEqual(message.get_content_type(), "multipart/report")
        self.assertEqual(message.get_param("report-type"), "delivery-status")
        self.assertEqual(message["Return-Path"], "<>")
        return message

    def test_direct_to_best_mx(self) -> None:
        """
        Mail goes to the domain's MX host with the original envelope, and leaves the spool.
        """
        port = free_port("127.0.0.2")
        mx = self.sink("127.0.0.2", port=port)
        dns = self.dns(one_mx)
        daemon = self.daemon(dns, port)
        self.send(daemon, "bob@example.org", "carol@example.org")
        self.assertTrue(wait_for(lambda: len(mx.messages()) == 1), daemon.log()[-3000:])
        [message] = mx.messages()
        self.assertIn(b"X-Mail-Args: <alice@example.test>", message)
        self.assertIn(b"X-Rcpt-Args: <bob@example.org>", message)
        self.assertIn(b"X-Rcpt-Args: <carol@example.org>", message)
        self.assertIn(b"Subject: outbound test", message)
        self.assertTrue(wait_for(lambda: self.spool_entries(daemon) == []))

    def test_dead_mx_then_next_preference(self) -> None:
        """
        When the best MX refuses connections, the next preference takes the mail.
        """
        port = free_port("127.0.0.3")
        mx2 = self.sink("127.0.0.3", port=port)

        daemon = self.daemon(self.dns(two_mx), port)
        self.send(daemon, "bob@example.org")
        self.assertTrue(wait_for(lambda: len(mx2.messages()) == 1), daemon.log()[-3000:])

    def test_null_mx_bounces(self) -> None:
        """
        A domain with a null MX (RFC 7505) bounces at once with 5.1.10 in a DSN to the sender.
        """
        dns = self.dns(lambda d: d.null_mx("nullmx.test"))
        daemon = self.daemon(dns, free_port())
        self.send(daemon, "bob@nullmx.test")
        [entry] = recipient_blocks(self.bounce(daemon))
        self.assertEqual(entry["Action"], "failed")
        self.assertEqual(entry["Status"], "5.1.10")
        self.assertEqual(entry["Final-Recipient"], "rfc822; bob@nullmx.test")
        self.assertTrue(wait_for(lambda: self.spool_entries(daemon) == []))

    def test_rcpt_5xx_bounces_with_the_remote_reply(self) -> None:
        """
        A 5xx to RCPT from the only MX host fails the recipient; the DSN quotes the reply.
        """
        port = free_port("127.0.0.2")
        self.sink("127.0.0.2", "-f", "RCPT", "-B", "550 5.1.1 no such user here", port=port)
        dns = self.dns(one_mx)
        daemon = self.daemon(dns, port)
        self.send(daemon, "nobody@example.org")
        [entry] = recipient_blocks(self.bounce(daemon))
        self.assertEqual(entry["Status"], "5.1.1")
        self.assertIn("smtp; 550 5.1.1", entry["Diagnostic-Code"])
        self.assertEqual(entry["Remote-MTA"], "dns; mx1.example.org")

    def test_bounce_on_first_5xx_option(self) -> None:
        """
        With a 5xx from the best MX and a working second MX: by default the second MX gets
        the mail; with bounce_on_first_5xx the recipient bounces at once.
        """
        port = free_port("127.0.0.2")
        self.sink("127.0.0.2", "-f", "RCPT", "-B", "550 5.7.1 not here", port=port)
        mx2 = self.sink("127.0.0.3", port=port)

        dns = self.dns(two_mx)
        daemon = self.daemon(dns, port)
        self.send(daemon, "bob@example.org")
        self.assertTrue(wait_for(lambda: len(mx2.messages()) == 1), daemon.log()[-3000:])
        strict = self.daemon(dns, port, outbound="bounce_on_first_5xx = true")
        self.send(strict, "carol@example.org")
        [entry] = recipient_blocks(self.bounce(strict))
        self.assertEqual(entry["Status"], "5.7.1")
        self.assertEqual(len(mx2.messages()), 1)

    def test_no_address_defers_or_bounces(self) -> None:
        """
        A domain with neither MX nor A stays queued by default; with bounce_if_no_mx_or_a it
        bounces at once (5.4.4).
        """
        dns = self.dns(lambda d: d.txt("noaddr.example.org", "no mail here"))
        patient = self.daemon(dns, free_port())
        self.send(patient, "bob@noaddr.example.org")
        strict = self.daemon(dns, free_port(), outbound="bounce_if_no_mx_or_a = true")
        self.send(strict, "bob@noaddr.example.org")
        [entry] = recipient_blocks(self.bounce(strict))
        self.assertEqual(entry["Status"], "5.4.4")
        [queued] = self.spool_entries(patient)
        self.assertEqual(queued.pending, 1)  # type: ignore[attr-defined]
        self.assertEqual(patient.messages(ALICE), [])

    def test_abort_on_rcpt_5xx_against_mdtwist(self) -> None:
        """
        With abort_on_rcpt_5xx, against a second mdtwist as the MX of example.org: the
        unknown recipient (550 5.1.1 at RCPT) bounces and the known one is still delivered,
        in a new transaction.
        """
        destination = Daemon(Path(self.mktemp()), domain="example.org")
        destination.start()
        self.addCleanup(destination.stop)

        def zone(d: DNSServer) -> None:
            d.mx("example.org", 10, "mx1.example.org")
            d.address("mx1.example.org", "127.0.0.1")

        daemon = self.daemon(
            self.dns(zone), destination.mx_port, outbound="abort_on_rcpt_5xx = true"
        )
        self.send(daemon, "nobody@example.org", "bob@example.org")
        self.assertTrue(
            wait_for(lambda: len(destination.messages("bob@example.org")) == 1),
            daemon.log()[-3000:],
        )
        [entry] = recipient_blocks(self.bounce(daemon))
        self.assertEqual(entry["Final-Recipient"], "rfc822; nobody@example.org")
        self.assertEqual(entry["Status"], "5.1.1")
        # The first transaction was aborted (RSET, no DATA) because of the 550.
        self.assertIn("not delivered to bob@example.org via mx1.example.org", daemon.log())
        self.assertIn("retry-now", daemon.log())

    def test_temporary_failure_gives_up_with_dsn(self) -> None:
        """
        A 4xx keeps the message queued; when its lifetime is over, the sender gets a failure
        DSN with 4.4.7 and the last remote reply.
        """
        port = free_port("127.0.0.2")
        self.sink("127.0.0.2", "-r", "RCPT", port=port)
        dns = self.dns(one_mx)
        daemon = self.daemon(dns, port, queue="lifetime_days = 0.00005")
        self.send(daemon, "bob@example.org")
        [entry] = recipient_blocks(self.bounce(daemon))
        self.assertEqual(entry["Action"], "failed")
        self.assertEqual(entry["Status"], "4.4.7")
        self.assertIn("smtp; 4", entry["Diagnostic-Code"])


class SmartHostTests(SynchronousTestCase):
    """
    The smart host: AUTH after verified STARTTLS, POP-before-SMTP, and direct-then-smart-host.
    """

    def setUp(self) -> None:
        self.smarthost = SmartHost(Path(self.mktemp()), "relay-user", "relay-pass")
        self.smarthost.start()
        self.addCleanup(self.smarthost.stop)

    def daemon(self, outbound: str, dns: DNSServer | None = None, mx_port: int = 25) -> Daemon:
        lines = [
            f'smarthost = "[127.0.0.1]:{self.smarthost.port}"',
            f'smarthost_ca_file = "{self.smarthost.certificate}"',
            outbound,
        ]
        if dns is not None:
            host, port = dns.endpoint
            lines += [f'dns_servers = ["{host}:{port}"]', f"mx_port = {mx_port}"]
        daemon = Daemon(
            Path(self.mktemp()),
            trusted_networks=["127.0.0.0/8"],
            outbound="\n".join(lines) + "\n",
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def send(self, daemon: Daemon, *recipients: str) -> None:
        with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=20) as client:
            client.sendmail(ALICE, list(recipients), b"Subject: via relay\r\n\r\nhi\r\n")

    def test_all_through_smarthost_with_auth(self) -> None:
        """
        In smarthost mode, recipients in two domains go in one transaction over verified
        STARTTLS with AUTH to the smart host.
        """
        daemon = self.daemon(
            'mode = "smarthost"\nsmarthost_login = "relay-user"\nsmarthost_password = "relay-pass"'
        )
        self.send(daemon, "bob@one.test", "carol@two.test")
        self.assertTrue(
            wait_for(lambda: len(self.smarthost.messages()) == 1), daemon.log()[-3000:]
        )
        [message] = self.smarthost.messages()
        self.assertIn(b"X-Test-Auth: relay-user", message)
        self.assertIn(b"X-Test-Rcpt-To: bob@one.test,carol@two.test", message)
        self.assertNotIn("relay-pass", daemon.log())

    def test_wrong_password_defers(self) -> None:
        """
        A 535 from the smart host defers the message; it is not bounced.
        """
        daemon = self.daemon(
            'mode = "smarthost"\nsmarthost_login = "relay-user"\nsmarthost_password = "wrong"'
        )
        self.send(daemon, "bob@one.test")
        reader = SpoolReader(daemon.spool)
        self.addCleanup(reader.close)

        def attempted() -> bool:
            entries = reader.list()
            return len(entries) == 1 and entries[0].attempts >= 2

        self.assertTrue(wait_for(attempted), daemon.log()[-3000:])
        [entry] = reader.list()
        message = reader.load(entry.queue_id)
        assert message is not None
        [recipient] = message.envelope.recipients
        self.assertEqual(recipient.state.value, "pending")
        self.assertEqual(recipient.status, "4.7.8")
        self.assertEqual(self.smarthost.messages(), [])
        self.assertEqual(daemon.messages(ALICE), [])

    def test_pop_before_smtp(self) -> None:
        """
        With POP-before-SMTP, a POP3 login to Dovecot comes first; then the smart host gets the
        message (this smart host also wants AUTH, which the daemon gives).
        """
        dovecot = Dovecot(Path(self.mktemp()), {"popper@example.test": "pop-pass"})
        dovecot.start()
        self.addCleanup(dovecot.stop)
        daemon = self.daemon(
            'mode = "smarthost"\nsmarthost_login = "relay-user"\n'
            'smarthost_password = "relay-pass"\n'
            f'pop_before_smtp = true\npop_server = "127.0.0.1:{dovecot.pop3_port}"\n'
            'pop_login = "popper@example.test"\npop_password = "pop-pass"'
        )
        self.send(daemon, "bob@one.test")
        self.assertTrue(
            wait_for(lambda: len(self.smarthost.messages()) == 1), daemon.log()[-3000:]
        )
        log = (dovecot.directory / "dovecot.log").read_text()
        self.assertIn("user=<popper@example.test>", log)

    def test_direct_then_smarthost(self) -> None:
        """
        In direct_then_smarthost mode, a resolvable domain goes direct and a domain that does
        not resolve goes to the smart host.
        """
        port = free_port("127.0.0.2")
        mx = Sink("127.0.0.2")
        mx.port = port
        mx.start()
        self.addCleanup(mx.stop)

        dns = start_dns_server(self, ["example.org"], one_mx)
        daemon = self.daemon(
            'mode = "direct_then_smarthost"\nsmarthost_login = "relay-user"\n'
            'smarthost_password = "relay-pass"',
            dns,
            port,
        )
        self.send(daemon, "bob@example.org")
        self.send(daemon, "carol@missing.example.org")
        self.assertTrue(wait_for(lambda: len(mx.messages()) == 1), daemon.log()[-3000:])
        self.assertTrue(
            wait_for(lambda: len(self.smarthost.messages()) == 1), daemon.log()[-3000:]
        )
        self.assertIn(b"carol@missing.example.org", self.smarthost.messages()[0])
        self.assertNotIn(b"bob@example.org", self.smarthost.messages()[0])


class MailboxPasswordTests(SynchronousTestCase):
    """
    MDaemon's ISPAUTHUsePasswords: the smart host gets the sender's own login and password.
    """

    def test_sender_credentials_reach_the_smarthost(self) -> None:
        """
        Alice authenticates on submission; the smart host, which knows only alice's
        credentials, accepts her message; the password is in no log line.
        """
        smarthost = SmartHost(Path(self.mktemp()), ALICE, PASSWORDS[ALICE])
        smarthost.start()
        self.addCleanup(smarthost.stop)
        daemon = Daemon(
            Path(self.mktemp()),
            outbound=(
                f'mode = "smarthost"\nsmarthost = "[127.0.0.1]:{smarthost.port}"\n'
                f'smarthost_ca_file = "{smarthost.certificate}"\n'
                "per_account_auth = true\nper_account_mailbox_password = true\n"
            ),
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        context = ssl.create_default_context(cafile=str(daemon.certificate))
        with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=20) as client:
            client.starttls(context=context)
            client.login(ALICE, PASSWORDS[ALICE])
            client.sendmail(ALICE, ["bob@one.test"], b"Subject: own login\r\n\r\nhi\r\n")
        self.assertTrue(wait_for(lambda: len(smarthost.messages()) == 1), daemon.log()[-3000:])
        [received] = smarthost.messages()
        self.assertIn(f"X-Test-Auth: {ALICE}".encode(), received)
        self.assertNotIn(PASSWORDS[ALICE], daemon.log())
