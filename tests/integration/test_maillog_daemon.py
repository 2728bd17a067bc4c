"""
The mail log of the real daemon: one message followed from the client's connection to its
deliveries by its session id and queue id, in the text log and in the JSON log.

The message is sent over the submission listener with STARTTLS and AUTH (stdlib C{smtplib}),
from 127.0.0.3, whose name laptop.example.org the daemon looks up (C{smtp.reverse_lookup}), to
a local mailbox, to a mailbox at example.org (an smtp-sink MX host found through a dnsmasq on
loopback) and to an unknown local address, which is refused at RCPT.
"""

from __future__ import annotations

import json
import re
import smtplib
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

import mdtwist
from tests.integration.daemon import PASSWORDS, Daemon
from tests.integration.dns import DNSServer, start_dns_server
from tests.integration.peers import find_program
from tests.integration.sink import Sink
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"
REMOTE = "bob@example.org"
UNKNOWN = "nobody@example.test"
MESSAGE_ID = "<maillog-test.1@laptop.example.test>"
#: The client's address and the name its PTR record gives (and that leads back to it).
CLIENT_ADDRESS = "127.0.0.3"
CLIENT_NAME = "laptop.example.org"
CLIENT = f"{CLIENT_NAME}[{CLIENT_ADDRESS}]"
_ROOT = Path(__file__).resolve().parents[2]


def _no_verify() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class MailLogTests(SynchronousTestCase):
    """
    The daemon's mail log ties a session to its queue id, and the queue id to every delivery.
    """

    def setUp(self) -> None:
        self.sink = Sink("127.0.0.2")
        self.sink.start()
        self.addCleanup(self.sink.stop)

        def setup(dns: DNSServer) -> None:
            dns.mx("example.org", 10, "mx1.example.org")
            dns.address("mx1.example.org", "127.0.0.2")
            dns.address(CLIENT_NAME, CLIENT_ADDRESS)  # with its PTR record

        self.dns = start_dns_server(self, ["example.org"], setup)

    def run_daemon(self, logger: str) -> Daemon:
        host, port = self.dns.endpoint
        daemon = Daemon(
            Path(self.mktemp()),
            outbound=f'dns_servers = ["{host}:{port}"]\nmx_port = {self.sink.port}\n',
            smtp_extra="reverse_lookup = true",
            logger=logger,
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon

    def send(self, daemon: Daemon, named: Callable[[], bool]) -> None:
        """
        Send the message from L{CLIENT_ADDRESS}; before the first command, wait until
        C{named} says the connect line (logged once the name is known) is there.
        """
        with smtplib.SMTP(
            "127.0.0.1", daemon.submission_port, timeout=20, source_address=(CLIENT_ADDRESS, 0)
        ) as client:
            self.assertTrue(wait_for(named), daemon.log()[-3000:])
            client.ehlo("laptop.example.test")
            client.starttls(context=_no_verify())
            client.ehlo("laptop.example.test")
            client.login(ALICE, PASSWORDS[ALICE])
            refused = client.sendmail(
                ALICE,
                [ALICE, REMOTE, UNKNOWN],
                f"Message-ID: {MESSAGE_ID}\r\nSubject: log test\r\n\r\nhello\r\n".encode(),
            )
        self.assertEqual(list(refused), [UNKNOWN])

    def test_text(self) -> None:
        """
        In the text log, the first line names the version; the accepted line gives the queue
        id and session id; the session's lines say connect, TLS, login, the refused
        recipient and disconnect; the queue id's lines give each delivery and the removal.
        No line of the DNS client's UDP chatter is there.
        """
        daemon = self.run_daemon("mdtwist.logging.text_observer")
        self.send(daemon, lambda: f"connect from {CLIENT} listener=submission" in daemon.log())
        self.assertTrue(
            wait_for(lambda: re.search(r"\] [0-9A-F]{12}: removed", daemon.log()) is not None),
            daemon.log()[-3000:],
        )
        log = daemon.log()
        lines = log.splitlines()
        self.assertIn(f"mdtwist {mdtwist.__version__} starting", lines[0])
        accepted = re.search(
            r"\[mdtwist\.maillog#info\] ([0-9A-F]{12}): accepted session=(\S+)"
            rf" client={re.escape(CLIENT)} from=<alice@example\.test> size=(\d+)"
            rf" nrcpt=2 message_id={re.escape(MESSAGE_ID)} user=alice@example\.test$",
            log,
            re.M,
        )
        assert accepted is not None, log
        queue_id, session = accepted.group(1), accepted.group(2)
        mine = [line.split("] ", 1)[1] for line in lines if f"] {session}: " in line]
        self.assertEqual(len(mine), 5, mine)
        client = CLIENT
        self.assertEqual(mine[0], f"{session}: connect from {client} listener=submission")
        self.assertRegex(
            mine[1], rf"^{session}: TLS from {re.escape(client)} tls=TLSv1\.[23] cipher=\S+$"
        )
        self.assertEqual(
            mine[2],
            f"{session}: login from {client} user=alice@example.test method=PLAIN",
        )
        self.assertEqual(
            mine[3],
            f"{session}: reject RCPT from {client}: 550 5.1.1 No such user here;"
            f" from=<{ALICE}> to=<{UNKNOWN}> helo=laptop.example.test",
        )
        self.assertRegex(
            mine[4],
            rf"^{session}: disconnect from {re.escape(client)} tls=TLSv1\.[23]"
            r" cipher=\S+ user=alice@example\.test messages=1 rejects=1$",
        )
        deliveries = [line.split("] ", 1)[1] for line in lines if f"] {queue_id}: " in line]
        local = [line for line in deliveries if f"to=<{ALICE}>" in line]
        remote = [line for line in deliveries if f"to=<{REMOTE}>" in line]
        self.assertEqual(len(local), 1, deliveries)
        self.assertRegex(
            local[0],
            rf"^{queue_id}: to=<{ALICE}> mailbox=<{ALICE}> relay=local\[-\] delay=\d+\.\d\d"
            r" attempt=1 dsn=2\.0\.0 status=sent \(delivered to Maildir\) next=-$",
        )
        self.assertEqual(len(remote), 1, deliveries)
        self.assertRegex(
            remote[0],
            rf"^{queue_id}: to=<{REMOTE}> mailbox=<{REMOTE}>"
            r" relay=mx1\.example\.org\[127\.0\.0\.2\] delay=\d+\.\d\d attempt=1 dsn=2\.0\.0"
            r" status=sent \(250 2\.0\.0 Ok.*\) next=-$",
        )
        self.assertEqual(deliveries[-1], f"{queue_id}: removed")
        self.assertEqual(len(self.sink.messages()), 1)
        self.assertNotIn("DNSDatagramProtocol", log)
        self.assertNotIn("UDP Port", log)
        self.assertNotIn("Starting factory", log)
        self.assertNotIn(PASSWORDS[ALICE], log)

    def test_json(self) -> None:
        """
        The JSON log holds the same events with the same fields: the accepted event names the
        session, and the session's and the queue id's events follow the message through.
        """
        daemon = self.run_daemon("mdtwist.logging.json_observer")

        def events() -> list[dict[str, Any]]:
            return [json.loads(line) for line in daemon.log().splitlines() if line.strip()]

        self.send(
            daemon,
            lambda: any(
                e.get("client_name") == CLIENT_NAME and e.get("listener") == "submission"
                for e in events()
            ),
        )

        def removed() -> bool:
            return any(e.get("log_format") == "{queue_id}: removed" for e in events())

        self.assertTrue(wait_for(removed), daemon.log()[-3000:])
        everything = events()
        self.assertEqual(everything[0]["version"], mdtwist.__version__)
        mail = [e for e in everything if e.get("log_namespace") == "mdtwist.maillog"]
        [accepted] = [e for e in mail if e["log_format"].startswith("{queue_id}: accepted")]
        self.assertEqual(
            {
                k: accepted[k]
                for k in ("peer", "client_name", "mail_from", "nrcpt", "message_id", "user")
            },
            {
                "peer": CLIENT_ADDRESS,
                "client_name": CLIENT_NAME,
                "mail_from": ALICE,
                "nrcpt": 2,
                "message_id": MESSAGE_ID,
                "user": ALICE,
            },
        )
        session, queue_id = accepted["session"], accepted["queue_id"]
        steps = [
            e["log_format"].split(" ", 2)[1]
            for e in mail
            if e.get("session") == session and "queue_id" not in e
        ]
        self.assertEqual(steps, ["connect", "TLS", "login", "reject", "disconnect"])
        [refused] = [e for e in mail if e.get("session") == session and "rcpt" in e]
        self.assertEqual(
            (refused["command"], refused["code"], refused["enhanced"], refused["rcpt"]),
            ("RCPT", 550, "5.1.1", UNKNOWN),
        )
        [disconnect] = [e for e in mail if e.get("session") == session and "rejects" in e]
        self.assertRegex(disconnect["tls_version"], r"^TLSv1\.[23]$")
        self.assertEqual((disconnect["user"], disconnect["messages"]), (ALICE, 1))
        deliveries = {
            e["rcpt"]: e for e in mail if e.get("queue_id") == queue_id and "status" in e
        }
        self.assertEqual(sorted(deliveries), sorted([ALICE, REMOTE]))
        self.assertEqual(
            {k: deliveries[REMOTE][k] for k in ("relay", "relay_address", "enhanced", "status")},
            {
                "relay": "mx1.example.org",
                "relay_address": "127.0.0.2",
                "enhanced": "2.0.0",
                "status": "sent",
            },
        )
        self.assertEqual(
            {k: deliveries[ALICE][k] for k in ("relay", "status", "next_attempt")},
            {"relay": "local", "status": "sent", "next_attempt": "-"},
        )


class Fail2banTests(SynchronousTestCase):
    """
    The fail2ban filter shipped in C{etc/fail2ban/mdtwist.conf} finds the client address of
    every failed and throttled login in the daemon's text log, whatever the login says.
    """

    def test_filter(self) -> None:
        """
        C{fail2ban-regex} matches each failure line of the portal, once, with the client's
        address, even for a login that holds C{from} and another address.
        """
        daemon = Daemon(Path(self.mktemp()))
        daemon.start()
        self.addCleanup(daemon.stop)
        for login in ["bob@example.test", "evil from 10.9.9.9", "x\r\ny"]:
            with smtplib.SMTP("127.0.0.1", daemon.submission_port, timeout=20) as client:
                client.ehlo("laptop.example.test")
                client.starttls(context=_no_verify())
                client.ehlo("laptop.example.test")
                with self.assertRaises(smtplib.SMTPAuthenticationError):
                    client.login(login, "wrong")
        self.assertTrue(
            wait_for(lambda: "too many recent failures" in daemon.log()), daemon.log()[-3000:]
        )
        wanted = [line for line in daemon.log().splitlines() if "[mdtwist.portal#" in line]
        found = subprocess.run(
            [
                find_program("fail2ban-regex"),
                "--verbose",
                str(daemon.log_path),
                str(_ROOT / "etc" / "fail2ban" / "mdtwist.conf"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        hosts = re.findall(r"^\|\s+(\S+)\s+\w{3} \w{3} [ \d]\d ", found, re.M)
        self.assertEqual(hosts, ["127.0.0.1"] * len(wanted), found)
        self.assertIn(f"{len(wanted)} matched", found)
        self.assertGreaterEqual(len(wanted), 4)
