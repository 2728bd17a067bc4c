"""
An office without a fixed address runs mdtwist as the ODMR customer of another mdtwist acting
as its gateway: both real daemons on loopback. The gateway holds the office's mail for two
domains; the office's ATRN (on its first queue run, and through C{mdtwistctl dequeue run})
turns its own connection round, and the mail arrives intact in the office's mailboxes.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.directory.passwords import hash_password
from tests.integration.daemon import Daemon
from tests.integration.peers import free_port
from tests.integration.test_gateway_provider import (
    GATEWAY,
    OTHER,
    SECRET,
    gateway_tables,
    held_count,
    queued,
    send,
    wait_for,
)

CAROL = f"carol@{GATEWAY}"
DAVE = f"dave@{OTHER}"


class OfficeAndGatewayTests(SynchronousTestCase):
    """Two mdtwist daemons: a gateway (provider) and an office (ODMR customer)."""

    def gateway(self) -> tuple[Daemon, int]:
        odmr_port = free_port()
        daemon = Daemon(
            Path(self.mktemp()),
            extra=gateway_tables(odmr_port),
            extra_ports=(odmr_port,),
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        return daemon, odmr_port

    def office(self, odmr_port: int, every: int = 100000, processes: int = 1) -> Daemon:
        daemon = Daemon(
            Path(self.mktemp()),
            domain=GATEWAY,
            server_extra=f"processes = {processes}",
            extra=f"""
[dequeue]
every = {every}

[[dequeue.signal]]
domain = "{GATEWAY}"
host = "127.0.0.1"
port = {odmr_port}
text = "ATRN {GATEWAY},{OTHER}"
login = "{GATEWAY}"
password = "{SECRET}"
""",
        )
        (daemon.directory / "accounts.toml").write_text(
            f'domains = ["{GATEWAY}", "{OTHER}"]\n'
            + "".join(
                f'[[account]]\naddress = "{address}"\npassword = "{hash_password("pw")}"\n'
                for address in (CAROL, DAVE)
            )
        )
        self.addCleanup(daemon.stop)
        return daemon

    def test_office_fetches_its_mail(self) -> None:
        """
        Held mail for both domains (a dot-stuffed line included) reaches the office's
        mailboxes after the ATRN of its first queue run; the gateway delivered its own local
        recipient normally and its queue empties. Mail held later is released by
        C{mdtwistctl dequeue run}, which reports the turn.
        """
        gateway, odmr_port = self.gateway()
        body = "first line\n.a line starting with a dot\n..two dots\nend\n"
        send(gateway.mx_port, [CAROL, "alice@example.test"], body, subject="one")
        send(gateway.mx_port, [DAVE], "second message\n", subject="two")
        wait_for(lambda: held_count(gateway) == 2, "two held recipients")

        office = self.office(odmr_port)
        office.start()
        wait_for(
            lambda: office.messages(CAROL) and office.messages(DAVE),
            "the released mail at the office",
        )
        [carol] = office.messages(CAROL)
        self.assertIn(
            b"\n.a line starting with a dot\n..two dots\nend\n", carol.replace(b"\r\n", b"\n")
        )
        [dave] = office.messages(DAVE)
        self.assertIn(b"second message", dave)
        # The office took STARTTLS on the ODMR listener, so the mail crossed the turned
        # connection encrypted: the office, now the server, says so in its Received header.
        self.assertRegex(gateway.log(), r"TLS from 127\.0\.0\.1\[127\.0\.0\.1\] tls=TLSv1\.[23]")
        self.assertRegex(dave, rb"Received: from [^\n]*\n?[^\n]*with ESMTPS")
        self.assertTrue(gateway.messages("alice@example.test"))
        wait_for(lambda: queued(gateway) == 0, "an empty gateway queue")
        self.assertIn("released", office.log())

        send(gateway.mx_port, [CAROL], "third message\n", subject="three")
        wait_for(lambda: held_count(gateway) == 1, "one more held recipient")
        done = office.ctl("dequeue", "run", GATEWAY)
        self.assertEqual(done.returncode, 0, done.stderr + office.log())
        self.assertTrue(done.stdout.startswith(f"{GATEWAY}: released 250"), done.stdout)
        wait_for(lambda: len(office.messages(CAROL)) == 2, "the third message at the office")
        wait_for(lambda: queued(gateway) == 0, "an empty gateway queue again")

    def test_two_processes(self) -> None:
        """
        With two processes the office signals from its first process (and answers
        C{mdtwistctl dequeue run} there): the mail of both domains arrives, once.
        """
        gateway, odmr_port = self.gateway()
        send(gateway.mx_port, [CAROL], "for carol\n", subject="one")
        send(gateway.mx_port, [DAVE], "for dave\n", subject="two")
        wait_for(lambda: held_count(gateway) == 2, "two held recipients")
        office = self.office(odmr_port, every=0, processes=2)
        office.start()
        wait_for(
            lambda: office.messages(CAROL) and office.messages(DAVE),
            "the released mail at the office",
        )
        wait_for(lambda: queued(gateway) == 0, "an empty gateway queue")
        # Asked again: nothing is waiting (453), or a scheduled signal is still running.
        done = office.ctl("dequeue", "run")
        self.assertRegex(done.stdout + done.stderr, rf"^{GATEWAY}: (no-mail 453|busy)")
        self.assertEqual(len(office.messages(CAROL)), 1)
        self.assertEqual(len(office.messages(DAVE)), 1)
