"""
Gateway domains on the real daemon, provider side: mail for a gateway domain is held; the real
fetchmail releases it as an ODMR customer (ATRN on our ODMR listener, handing the mail to
Postfix's smtp-sink) and as an ETRN client; with C{[server] processes = 2} too.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader, existing_shards, shard_directory
from tests.integration.daemon import Daemon
from tests.integration.peers import find_program, free_port
from tests.integration.sink import Sink

#: The most seconds a test waits for something to happen.
_WAIT = 30.0

GATEWAY = "office.test"
OTHER = "branch.test"
SECRET = "gw-secret"


def wait_for(condition: Callable[[], object], what: str) -> object:
    """Poll a condition until it holds; fail after L{_WAIT} seconds."""
    deadline = time.monotonic() + _WAIT
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def held_count(daemon: Daemon) -> int:
    """The recipients held for gateway domains in every shard of a daemon's spool."""
    total = 0
    for shard in existing_shards(daemon.spool):
        reader = SpoolReader(shard_directory(daemon.spool, shard))
        try:
            for entry in reader.list():
                message = reader.load(entry.queue_id)
                assert message is not None
                total += sum(
                    1
                    for r in message.envelope.recipients
                    if r.state.value == "pending"
                    and r.route is not None
                    and r.route.kind.value == "gateway-hold"
                )
        finally:
            reader.close()
    return total


def queued(daemon: Daemon) -> int:
    """The messages queued in every shard."""
    total = 0
    for shard in existing_shards(daemon.spool):
        reader = SpoolReader(shard_directory(daemon.spool, shard))
        try:
            total += len(reader.list())
        finally:
            reader.close()
    return total


def send(port: int, recipients: list[str], body: str, subject: str = "held") -> None:
    """Send one message to the daemon's mx listener."""
    message = EmailMessage()
    message["From"] = "sender@remote.test"
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message.set_content(body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        data = message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        client.sendmail("sender@remote.test", recipients, data)


class FetchmailRun:
    """
    One run of the real fetchmail with its own home and pid file, the rc text on stdin.
    """

    def __init__(self, home: Path) -> None:
        """
        @param home: a private directory of the test for fetchmail's files (made here).
        """
        home.mkdir(parents=True)
        self.home = home

    def run(self, rc: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run fetchmail once in the foreground; return the finished process."""
        env = dict(os.environ, FETCHMAILHOME=str(self.home))
        return subprocess.run(
            [
                find_program("fetchmail"),
                "-v",
                "--nodetach",
                "--pidfile",
                str(self.home / "fetchmail.pid"),
                "-f",
                "-",
            ],
            input="set no syslog\n" + rc,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )


def gateway_tables(odmr_port: int, **options: str) -> str:
    """The [[gateway]] tables of the two test gateways and the [provider] table."""
    lines = [
        "[provider]",
        f'odmr_listen = "tcp:{odmr_port}:interface=127.0.0.1"',
        "idle_timeout = 20",
        "turned_timeout = 10",
    ]
    for domain in (GATEWAY, OTHER):
        lines += [
            "[[gateway]]",
            f'domain = "{domain}"',
            f'login = "{GATEWAY}"',
            f'password = "{SECRET}"',
            *(f"{k} = {v}" for k, v in options.items()),
        ]
    return "\n".join(lines) + "\n"


class _Base(SynchronousTestCase):
    processes = 1

    def start(self, **options: str) -> Daemon:
        self.odmr_port = free_port()
        directory = Path(self.mktemp())
        daemon = Daemon(
            directory,
            server_extra=f"processes = {self.processes}",
            extra=gateway_tables(self.odmr_port, **options),
            extra_ports=(self.odmr_port,),
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        self.daemon = daemon
        return daemon

    def sink(self, *options: str) -> Sink:
        sink = Sink(options=options)
        sink.start()
        self.addCleanup(sink.stop)
        return sink

    def odmr(
        self, sink_port: int, domains: str = f"{GATEWAY},{OTHER}", password: str = SECRET
    ) -> subprocess.CompletedProcess[str]:
        rc = (
            f"poll 127.0.0.1 protocol ODMR service {self.odmr_port} timeout 30\n"
            f'  user "{GATEWAY}" password "{password}" fetchdomains {domains}\n'
            f"  smtphost 127.0.0.1/{sink_port}\n"
        )
        return FetchmailRun(Path(self.mktemp())).run(rc)


class ODMRWithFetchmailTests(_Base):
    """
    The real fetchmail as our ODMR customer.
    """

    def test_release_to_fetchmail(self) -> None:
        """
        Mail for two gateway domains is held (nothing is delivered by the queue runner); fetchmail
        logs in with CRAM-MD5, sends ATRN for both, and the messages arrive at its smtp-sink
        with their envelopes (only the gateway recipients; a dot-stuffed line intact). The
        local recipient of the same message was delivered normally, and the queue is empty.
        """
        daemon = self.start()
        body = "first line\n.a line starting with a dot\n..two dots\nend\n"
        send(daemon.mx_port, [f"carol@{GATEWAY}", "alice@example.test"], body)
        send(daemon.mx_port, [f"dave@{OTHER}"], "second message\n")
        wait_for(lambda: held_count(daemon) == 2, "two held recipients")
        wait_for(lambda: daemon.messages("alice@example.test"), "alice's copy")
        sink = self.sink()
        result = self.odmr(sink.port)
        self.assertEqual(result.returncode, 0, result.stderr)
        messages = wait_for(lambda: len(sink.messages()) == 2 and sink.messages(), "two messages")
        assert isinstance(messages, list)
        joined = b"\n".join(messages)
        self.assertIn(f"<carol@{GATEWAY}>".encode(), joined)
        self.assertIn(f"<dave@{OTHER}>".encode(), joined)
        self.assertNotIn(b"alice@example.test>\r\nX-Rcpt", joined)
        self.assertIn(b"\n.a line starting with a dot\n..two dots\nend\n", joined)
        wait_for(lambda: queued(daemon) == 0, "an empty queue")

    def test_nothing_held_453(self) -> None:
        """
        With nothing held, ATRN gets 453 and fetchmail ends with status 0 (not an error).
        """
        self.start()
        sink = self.sink()
        result = self.odmr(sink.port)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("453", result.stderr + result.stdout)
        self.assertEqual(sink.messages(), [])

    def test_foreign_domain_450(self) -> None:
        """
        A list with a domain the login does not own is refused whole with 450 (fetchmail
        exit 4), and the held mail stays held.
        """
        daemon = self.start()
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        sink = self.sink()
        result = self.odmr(sink.port, domains=f"{GATEWAY},stranger.test")
        self.assertEqual(result.returncode, 4, result.stderr)
        self.assertEqual(held_count(daemon), 1)
        self.assertEqual(sink.messages(), [])

    def test_atrn_before_auth_530(self) -> None:
        """
        On the real daemon's ODMR listener: EHLO lists AUTH CRAM-MD5 and ATRN, MAIL gets 502,
        ATRN before AUTH gets 530, and QUIT works.
        """
        daemon = self.start()
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        with smtplib.SMTP("127.0.0.1", self.odmr_port, timeout=30) as client:
            code, text = client.ehlo("office")
            self.assertEqual(code, 250)
            self.assertIn(b"AUTH CRAM-MD5", text)
            self.assertIn(b"ATRN", text)
            self.assertEqual(client.docmd("MAIL", "FROM:<a@remote.test>")[0], 502)
            self.assertEqual(client.docmd("ATRN", GATEWAY)[0], 530)
        wait_for(lambda: held_count(daemon) == 1, "the mail still held")

    def test_wrong_password_535(self) -> None:
        """
        A wrong password gets 535 (fetchmail's authentication failure), the mail stays held.
        """
        daemon = self.start()
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        sink = self.sink()
        result = self.odmr(sink.port, password="wrong")
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("535", daemon.log() + result.stderr + result.stdout)
        self.assertEqual(held_count(daemon), 1)

    def test_listener_down_keeps_mail(self) -> None:
        """
        Fetchmail's local listener is down: it closes right after our 250; the mail stays
        held, nothing bounces (no notice is queued).
        """
        daemon = self.start()
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        result = self.odmr(free_port())
        self.assertEqual(result.returncode, 2, result.stderr)
        wait_for(lambda: "ATRN session" in daemon.log(), "the end of the turned session")
        self.assertEqual(held_count(daemon), 1)
        self.assertEqual(queued(daemon), 1)

    def test_busy_451(self) -> None:
        """
        While one ATRN session for the domains runs (its customer's MTA answers slowly), a
        second one gets 451 (fetchmail exit 8).
        """
        daemon = self.start()
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        slow = self.sink("-w", "5")
        home = FetchmailRun(Path(self.mktemp()))
        env = dict(os.environ, FETCHMAILHOME=str(home.home))
        rc = (
            f"set no syslog\npoll 127.0.0.1 protocol ODMR service {self.odmr_port} timeout 30\n"
            f'  user "{GATEWAY}" password "{SECRET}" fetchdomains {GATEWAY}\n'
            f"  smtphost 127.0.0.1/{slow.port}\n"
        )
        running = subprocess.Popen(
            [
                find_program("fetchmail"),
                "-v",
                "--nodetach",
                "--pidfile",
                str(home.home / "p"),
                "-f",
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert running.stdin is not None
        running.stdin.write(rc)
        running.stdin.close()
        try:
            wait_for(lambda: "turning the connection" in daemon.log(), "the first turn")
            second = self.odmr(self.sink().port, domains=GATEWAY)
            self.assertEqual(second.returncode, 8, second.stderr)
        finally:
            running.wait(_WAIT)


class ETRNWithFetchmailTests(_Base):
    """
    The real fetchmail as an ETRN client; the released mail goes over a new connection to the
    gateway's configured host (an smtp-sink).
    """

    def etrn(
        self, port: int, auth: bool, domains: str = GATEWAY
    ) -> subprocess.CompletedProcess[str]:
        rc = f"poll 127.0.0.1 protocol ETRN service {port} timeout 30"
        if auth:
            rc += f' esmtpname "{GATEWAY}" esmtppassword "{SECRET}"'
        rc += f'\n  user "{GATEWAY}" fetchdomains {domains}\n'
        return FetchmailRun(Path(self.mktemp())).run(rc)

    def test_etrn_with_auth(self) -> None:
        """
        ETRN needs AUTH (the default): fetchmail logs in with CRAM-MD5 on the ODMR listener and
        sends ETRN; the reply is 253 and the held mail arrives at the configured host.
        """
        sink = self.sink()
        daemon = self.start(etrn_deliver_to=f'"[127.0.0.1]:{sink.port}"')
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "released by ETRN\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        result = self.etrn(self.odmr_port, auth=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("253", result.stderr + result.stdout)
        wait_for(lambda: len(sink.messages()) == 1, "the released message")
        self.assertIn(f"<carol@{GATEWAY}>".encode(), sink.messages()[0])
        wait_for(lambda: queued(daemon) == 0, "an empty queue")

    def test_etrn_without_auth_refused(self) -> None:
        """
        Without AUTH, ETRN on the mx listener gets 530 and the mail stays held.
        """
        sink = self.sink()
        daemon = self.start(etrn_deliver_to=f'"[127.0.0.1]:{sink.port}"')
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "held\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        result = self.etrn(daemon.mx_port, auth=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("530", result.stderr + result.stdout)
        self.assertEqual(held_count(daemon), 1)
        self.assertEqual(sink.messages(), [])

    def test_etrn_no_auth_needed(self) -> None:
        """
        With C{etrn_requires_auth = false}, ETRN without AUTH on the mx listener releases the
        mail; a second ETRN finds nothing waiting (251).
        """
        sink = self.sink()
        daemon = self.start(
            etrn_deliver_to=f'"[127.0.0.1]:{sink.port}"', etrn_requires_auth="false"
        )
        send(daemon.mx_port, [f"carol@{GATEWAY}"], "released by ETRN\n")
        wait_for(lambda: held_count(daemon) == 1, "a held recipient")
        result = self.etrn(daemon.mx_port, auth=False)
        self.assertEqual(result.returncode, 0, result.stderr)
        wait_for(lambda: len(sink.messages()) == 1, "the released message")
        wait_for(lambda: queued(daemon) == 0, "an empty queue")
        again = self.etrn(daemon.mx_port, auth=False, domains=f"{GATEWAY},{OTHER}")
        self.assertIn("251", again.stderr + again.stdout)
        # fetchmail stops at the 251: it never asks for the second domain.
        self.assertEqual(daemon.log().count(f"ETRN {GATEWAY} from"), 2)
        self.assertNotIn(f"ETRN {OTHER}", daemon.log())


def held_per_shard(daemon: Daemon) -> dict[int, int]:
    """The messages queued in each shard."""
    counts = {}
    for shard in existing_shards(daemon.spool):
        reader = SpoolReader(shard_directory(daemon.spool, shard))
        try:
            counts[shard] = len(reader.list())
        finally:
            reader.close()
    return counts


class TwoProcessesTests(_Base):
    """
    With C{[server] processes = 2} held mail sits in both spool shards; one ATRN or ETRN,
    whichever process takes it, releases all of it, each message once.
    """

    processes = 2

    def fill_both_shards(self, daemon: Daemon) -> int:
        # Connections are spread over the processes by the kernel: send until both shards
        # hold mail (bounded).
        for index in range(60):
            send(daemon.mx_port, [f"carol@{GATEWAY}"], f"message {index}\n", f"held {index}")
            sent = index + 1

            def all_held(n: int = sent) -> bool:
                return held_count(daemon) == n

            wait_for(all_held, f"{sent} held recipients")
            if sent >= 4 and len([k for k, n in held_per_shard(daemon).items() if n]) == 2:
                return sent
        raise AssertionError("the kernel never gave a connection to the second process")

    def subjects(self, sink: Sink) -> list[str]:
        found = []
        for message in sink.messages():
            for line in message.split(b"\n"):
                if line.startswith(b"Subject: "):
                    found.append(line[9:].decode())
        return sorted(found)

    def test_atrn_releases_every_shard(self) -> None:
        """
        Fetchmail's ATRN (the ODMR listener is in the first process) receives the held mail of
        both shards, each message once, and both shards end empty.
        """
        daemon = self.start()
        sent = self.fill_both_shards(daemon)
        sink = self.sink()
        result = self.odmr(sink.port, domains=GATEWAY)
        self.assertEqual(result.returncode, 0, result.stderr)
        wait_for(lambda: queued(daemon) == 0, "an empty queue")
        self.assertEqual(
            self.subjects(self.sink_of(sink)), sorted(f"held {i}" for i in range(sent))
        )

    def sink_of(self, sink: Sink) -> Sink:
        wait_for(lambda: sink.messages(), "the sink's messages")
        return sink

    def test_etrn_releases_every_shard_once(self) -> None:
        """
        ETRN without AUTH on the shared mx listener, sent several times in a row (each may go
        to either process): every held message of both shards arrives at the gateway's host
        exactly once.
        """
        sink = self.sink()
        daemon = self.start(
            etrn_deliver_to=f'"[127.0.0.1]:{sink.port}"', etrn_requires_auth="false"
        )
        sent = self.fill_both_shards(daemon)
        for _ in range(4):
            with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=30) as client:
                client.ehlo("office")
                code, _ = client.docmd("ETRN", GATEWAY)
                self.assertIn(code, (251, 253))
        wait_for(lambda: queued(daemon) == 0, "an empty queue")
        self.assertEqual(self.subjects(sink), sorted(f"held {i}" for i in range(sent)))

    def test_operator_release(self) -> None:
        """
        C{mdtwistctl gateway held} counts the held mail of both shards (as text and as JSON)
        and C{mdtwistctl gateway release} sends all of it to the gateway's host, each message
        once; a domain that is no gateway is named as skipped, with status 1.
        """
        sink = self.sink()
        daemon = self.start(etrn_deliver_to=f'"[127.0.0.1]:{sink.port}"')
        sent = self.fill_both_shards(daemon)
        held = daemon.ctl("gateway", "held", "--json")
        self.assertEqual(held.returncode, 0, held.stderr)
        self.assertEqual(
            json.loads(held.stdout),
            {
                "domains": [{"domain": GATEWAY, "messages": sent, "recipients": sent}],
                "missing": [],
            },
        )
        text = daemon.ctl("gateway", "held")
        self.assertEqual(text.stdout, f"{GATEWAY}  {sent} messages, {sent} recipients\n")
        released = daemon.ctl("gateway", "release", GATEWAY, "nope.test")
        self.assertEqual(released.returncode, 1)
        self.assertEqual(released.stdout, f"Releasing {GATEWAY}: {sent} held messages\n")
        self.assertIn("nope.test: skipped", released.stderr)
        wait_for(lambda: queued(daemon) == 0, "an empty queue")
        self.assertEqual(self.subjects(sink), sorted(f"held {i}" for i in range(sent)))
        empty = daemon.ctl("gateway", "held").stdout
        self.assertEqual(empty, "No mail is held for a gateway domain\n")
