"""
Domain Sharing between three real mdtwist daemons on loopback.

Each daemon listens on an address of its own (127.0.0.2, .3 and .4) with its own SMTP and
Minger ports, hosts different users of C{example.test} and names the other two as sharing
peers. Mail sent to any of them for any user lands in the right Maildir; a stopped peer
gives 451 for the addresses only it could confirm, and gets its mail once it is back; the
cache survives a restart; mail from a peer is not fanned out again; C{mdtwistctl sharing
check} refuses an address a peer has. The scenario runs twice: once with every daemon in one
process, once with the first at C{[server] processes = 2}.
"""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Callable
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.integration.daemon import Daemon

SECRET = "Kx7pQ2vL9sT4wZ8mN3bR6yH1"

#: Each daemon's loopback address and the users it hosts.
SITES = {
    "a": ("127.0.0.2", ("alice@example.test",)),
    "b": ("127.0.0.3", ("bob@example.test",)),
    "c": ("127.0.0.4", ("carol@example.test", "dave@example.test")),
}


def free_udp_port(host: str) -> int:
    """
    @param host: a loopback address.
    @return: a UDP port on it that nothing is bound to now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """
    Wait until C{check()} is true.

    @param what: what is awaited, for the failure message.
    @param check: the condition.
    @param timeout: the most seconds to wait.
    @raise AssertionError: when the time is up first.
    """
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        time.sleep(0.05)


class ThreeSites(SynchronousTestCase):
    """
    Three daemons sharing C{example.test}.

    @cvar processes: C{[server] processes} of daemon C{a}.
    """

    processes = 1

    def setUp(self) -> None:
        root = Path(self.mktemp())
        self.daemons: dict[str, Daemon] = {}
        minger: dict[str, int] = {}
        for name, (host, users) in SITES.items():
            self.daemons[name] = Daemon(
                root / name,
                interface=host,
                hostname=f"mail-{name}.example.test",
                accounts={user: f"{user}-pw" for user in users},
                server_extra=f"processes = {self.processes}" if name == "a" else "",
            )
            minger[name] = free_udp_port(host)
        for name, daemon in self.daemons.items():
            host = SITES[name][0]
            peers = "".join(
                f"""
[[sharing.peers]]
host = "{SITES[other][0]}:{self.daemons[other].mx_port}"
minger_port = {minger[other]}
password = "{SECRET}"
"""
                for other in self.daemons
                if other != name
            )
            with daemon.config.open("a") as config:
                config.write(
                    f"""
[minger]
enable = true
interface = "{host}"
port = {minger[name]}
secret = "{SECRET}"
# The peers' queries come from 127.0.0.1 (their sockets are not bound to their address).
allowed_sources = ["127.0.0.0/8"]

[sharing]
enable = true
timeout = 0.5
attempts = 2
{peers}"""
                )
        for daemon in self.daemons.values():
            self.addCleanup(daemon.stop)
            daemon.start()

    def send(
        self, site: str, recipients: list[str], source: str = "127.0.0.1"
    ) -> dict[str, tuple[int, bytes]]:
        """
        Send one message to a daemon's MX listener.

        @param site: the daemon.
        @param recipients: the recipients.
        @param source: the client's own address.
        @return: the reply to each RCPT TO.
        """
        daemon = self.daemons[site]
        replies: dict[str, tuple[int, bytes]] = {}
        with smtplib.SMTP(
            daemon.interface, daemon.mx_port, timeout=30, source_address=(source, 0)
        ) as client:
            client.ehlo("client.example.net")
            client.mail("sender@example.net")
            for recipient in recipients:
                replies[recipient] = client.rcpt(recipient)
            if any(code == 250 for code, _ in replies.values()):
                body = f"Subject: to {', '.join(recipients)}\r\n\r\nhello\r\n"
                code, _ = client.data(body.encode())
                self.assertEqual(code, 250)
            else:
                client.rset()
        return replies

    def codes(self, replies: dict[str, tuple[int, bytes]]) -> dict[str, int]:
        return {rcpt: code for rcpt, (code, _) in replies.items()}

    def owner(self, user: str) -> Daemon:
        [site] = [name for name, (_, users) in SITES.items() if user in users]
        return self.daemons[site]

    def wait_delivered(self, user: str, count: int) -> None:
        daemon = self.owner(user)
        wait_for(f"{count} messages for {user}", lambda: len(daemon.messages(user)) >= count)
        self.assertEqual(len(daemon.messages(user)), count)

    def test_sharing(self) -> None:
        """
        The whole scenario, step by step.
        """
        users = ["alice@example.test", "bob@example.test", "carol@example.test"]
        # Mail to any daemon for any user lands in the owner's Maildir.
        for round_, site in enumerate(("a", "b", "c"), start=1):
            replies = self.send(site, [*users, "nobody@example.test"])
            self.assertEqual(
                self.codes(replies),
                {**dict.fromkeys(users, 250), "nobody@example.test": 550},
            )
            self.assertIn(b"5.1.1", replies["nobody@example.test"][1])
            for user in users:
                self.wait_delivered(user, round_)
        for name, daemon in self.daemons.items():
            others = [u for u in users if u not in SITES[name][1]]
            for user in others:
                self.assertEqual(daemon.messages(user), [], f"{user} delivered on {name}")

        # Loop guard: a peer (by its address) handing us mail for a user we do not host is
        # refused at once; nothing is asked of the peers.
        replies = self.send("a", ["dave@example.test"], source=SITES["b"][0])
        self.assertEqual(self.codes(replies), {"dave@example.test": 550})
        wait_for("the loop guard's log line", lambda: "not asked about again" in self.a_log())

        # The check before an account is created: refused for an address a peer has.
        taken = self.daemons["a"].ctl("sharing", "check", "carol@example.test")
        self.assertEqual(taken.returncode, 1, taken.stdout + taken.stderr)
        self.assertIn("already exists on a peer", taken.stdout)
        free = self.daemons["a"].ctl("sharing", "check", "erin@example.test")
        self.assertEqual(free.returncode, 0, free.stdout + free.stderr)

        # The cache is on disk and survives a restart of a.
        listed = self.daemons["a"].ctl("sharing", "cache", "list")
        self.assertIn(f"carol@example.test  {SITES['c'][0]}:", listed.stdout)
        self.daemons["c"].stop()
        self.daemons["a"].stop()
        self.daemons["a"].start()
        # c is down: carol is still accepted (from the cache, kept across the restart) and
        # queued; dave, whom only c could confirm, gets 451; bob still goes to b.
        replies = self.send("a", ["carol@example.test", "dave@example.test", "bob@example.test"])
        self.assertEqual(
            self.codes(replies),
            {"carol@example.test": 250, "dave@example.test": 451, "bob@example.test": 250},
        )
        self.assertIn(b"4.4.3", replies["dave@example.test"][1])
        self.wait_delivered("bob@example.test", 4)
        self.assertEqual(len(self.owner("carol@example.test").messages("carol@example.test")), 3)
        # c is back: the queued message reaches carol, and dave is found.
        self.daemons["c"].start()
        self.wait_delivered("carol@example.test", 4)
        replies = self.send("a", ["dave@example.test"])
        self.assertEqual(self.codes(replies), {"dave@example.test": 250})
        self.wait_delivered("dave@example.test", 1)

    def a_log(self) -> str:
        return self.daemons["a"].log()


class ThreeSitesTwoProcesses(ThreeSites):
    """
    L{ThreeSites} with daemon C{a} running two processes (one cache, two sharing services).
    """

    processes = 2
