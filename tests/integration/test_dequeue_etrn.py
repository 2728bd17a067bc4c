"""
Our ETRN client against a real ETRN server: a private Postfix holds mail for the office's
domain until asked, and the office (our daemon) asks on its queue runs and through
C{mdtwistctl dequeue run}.
"""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon
from tests.integration.peers import free_port
from tests.integration.postfix_etrn import HoldingPostfix
from tests.integration.test_smtp_daemon import wait_for

DOMAIN = "etrn.test"
ALICE = f"alice@{DOMAIN}"
#: A held message whose body has lines that start with a dot.
BODY = (
    b"From: sender@remote.test\r\nTo: alice@etrn.test\r\nSubject: held for ETRN {n}\r\n\r\n"
    b".a line that starts with a dot\r\n..\r\nthe end\r\n"
)


def signal_table(port: int, every: int) -> str:
    """The office's [dequeue] table: ETRN for its domain to the Postfix port."""
    return f"""
[dequeue]
every = {every}

[[dequeue.signal]]
domain = "{DOMAIN}"
host = "127.0.0.1"
port = {port}
text = "ETRN {DOMAIN}"
"""


class ETRNPostfixTests(SynchronousTestCase):
    """The office's ETRN makes Postfix release the mail it held."""

    def office(self, postfix_port: int, every: int) -> Daemon:
        daemon = Daemon(
            Path(self.mktemp()), domain=DOMAIN, extra=signal_table(postfix_port, every)
        )
        self.addCleanup(daemon.stop)
        return daemon

    def provider(self, office: Daemon, port: int | None = None) -> HoldingPostfix:
        postfix = HoldingPostfix(DOMAIN, office.mx_port, port)
        self.addCleanup(postfix.stop)
        postfix.start()
        return postfix

    def hold(self, postfix: HoldingPostfix, count: int) -> None:
        """Queue messages at Postfix and wait until they are held (deferred)."""
        for n in range(count):
            postfix.inject(ALICE, BODY.replace(b"{n}", str(n).encode()))
        self.assertTrue(wait_for(lambda: postfix.deferred() == count, timeout=30.0), postfix.log())

    def test_signal_on_queue_run(self) -> None:
        """
        Mail held at Postfix (it moves only on a flush) reaches the office's mailbox after
        the office's first queue run sends ETRN; the lines starting with a dot arrive intact.
        """
        port = free_port()
        office = self.office(port, every=0)
        postfix = self.provider(office, port)
        self.hold(postfix, 2)
        # Only now does the office start, so its first run's ETRN is what releases the mail.
        office.start()
        self.assertTrue(
            wait_for(lambda: len(office.messages(ALICE)) == 2, timeout=60.0),
            office.log() + postfix.log(),
        )
        for message in office.messages(ALICE):
            lines = message.replace(b"\r\n", b"\n").split(b"\n")
            self.assertEqual(
                lines[-4:], [b".a line that starts with a dot", b"..", b"the end", b""]
            )
        self.assertTrue(
            wait_for(lambda: "Dequeue signal for etrn.test" in office.log()), office.log()
        )
        self.assertIn(
            f"etrn.test to 127.0.0.1:{postfix.port}: sent: Queuing started", office.log()
        )
        self.assertEqual(postfix.deferred(), 0)

    def test_refused_then_mdtwistctl(self) -> None:
        """
        The first signal finds no server (connection refused: logged, nothing crashes); once
        Postfix holds mail, C{mdtwistctl dequeue run} signals at once and the mail arrives.
        """
        port = free_port()
        office = self.office(port, every=100000)
        office.start()
        self.assertTrue(
            wait_for(lambda: "cannot connect to 127.0.0.1" in office.log()), office.log()
        )
        postfix = self.provider(office, port)
        self.hold(postfix, 1)
        done = office.ctl("dequeue", "run", DOMAIN)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, "etrn.test: sent 250: Queuing started\n")
        self.assertTrue(
            wait_for(lambda: len(office.messages(ALICE)) == 1, timeout=60.0),
            office.log() + postfix.log(),
        )
        unknown = office.ctl("dequeue", "run", "nowhere.test")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no enabled dequeue signal for 'nowhere.test'", unknown.stderr)
