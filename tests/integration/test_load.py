"""
Load and crash tests of the real daemon: Postfix's smtp-source, and kill -9 in mid-run.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import threading
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.spool.store import SpoolReader
from tests.integration.daemon import Daemon
from tests.integration.peers import find_program
from tests.integration.test_smtp_daemon import wait_for

ALICE = "alice@example.test"
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def spool_count(daemon: Daemon) -> int:
    """
    @return: how many messages the daemon's spool holds.
    """
    reader = SpoolReader(daemon.spool)
    try:
        return len(reader.list())
    finally:
        reader.close()


class SMTPSourceTests(SynchronousTestCase):
    """
    smtp-source sends 5000 messages over 20 parallel sessions.
    """

    #: The daemon's C{[delivery]} lines (its default when empty).
    delivery = ""

    def test_every_message_lands_exactly_once(self) -> None:
        """
        All 5000 messages are accepted, each lands once in the Maildir, and the spool empties.

        smtp-source opens a session as soon as it has closed one, before the server may have
        seen the close: the per-address limit is above its 20 sessions.
        """
        daemon = Daemon(
            Path(self.mktemp()), smtp_extra="max_sessions_per_ip = 40", delivery=self.delivery
        )
        daemon.start()
        self.addCleanup(daemon.stop)
        result = subprocess.run(
            [
                "timeout",
                "300",
                find_program("smtp-source"),
                "-s",
                "20",
                "-m",
                "5000",
                "-l",
                "1024",
                "-f",
                "sender@client.test",
                "-t",
                ALICE,
                "-M",
                "client.test",
                f"127.0.0.1:{daemon.mx_port}",
            ],
            capture_output=True,
            text=True,
            timeout=320,
            check=False,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        folder = daemon.maildir(ALICE)
        self.assertTrue(
            wait_for(lambda: folder.is_dir() and len(list(folder.iterdir())) >= 5000, 300),
            daemon.log()[-2000:],
        )
        self.assertTrue(wait_for(lambda: spool_count(daemon) == 0, 60))
        self.assertEqual(len(list(folder.iterdir())), 5000)


class CrashTests(SynchronousTestCase):
    """
    kill -9 in the middle of a load run loses no message that got its 250.
    """

    #: The daemon's C{[delivery]} lines (its default when empty).
    delivery = ""

    def test_kill_9_loses_nothing(self) -> None:
        """
        20 clients send messages with unique Message-IDs; the daemon is killed with SIGKILL
        mid-run and started again on the same spool. Every message that got its 250 is
        delivered afterwards, and none twice: a copy that reached the Maildir before the spool
        recorded it (the crash window) is found there by its name and not delivered again.
        """
        daemon = Daemon(Path(self.mktemp()), delivery=self.delivery)
        daemon.start()
        self.addCleanup(daemon.stop)
        accepted: list[str] = []
        lock = threading.Lock()

        def client(number: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", daemon.mx_port, timeout=30) as smtp:
                    for i in range(2000):
                        message_id = f"crash-{number}-{i}@client.test"
                        smtp.sendmail(
                            "sender@client.test",
                            [ALICE],
                            f"Message-ID: <{message_id}>\r\nSubject: crash\r\n\r\n"
                            f"{'x' * 900}\r\n".encode(),
                        )
                        with lock:
                            accepted.append(message_id)
            except (OSError, smtplib.SMTPException):
                return

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(20)]
        for thread in threads:
            thread.start()
        self.assertTrue(wait_for(lambda: len(accepted) >= 500, 120), "load did not start")
        daemon.kill()
        for thread in threads:
            thread.join(60)
        self.assertFalse(any(thread.is_alive() for thread in threads))
        with lock:
            acknowledged = list(accepted)
        daemon.start()
        self.assertTrue(wait_for(lambda: spool_count(daemon) == 0, 300), daemon.log()[-2000:])
        delivered: dict[str, int] = {}
        for message in daemon.messages(ALICE):
            match = _MESSAGE_ID.search(message)
            assert match is not None
            key = match.group(1).decode()
            delivered[key] = delivered.get(key, 0) + 1
        lost = [message_id for message_id in acknowledged if message_id not in delivered]
        duplicates = sum(count - 1 for count in delivered.values())
        print(
            f"\ncrash test: {len(acknowledged)} acknowledged, {len(delivered)} distinct "
            f"delivered, {duplicates} duplicates, {len(lost)} lost"
        )
        self.assertEqual(lost, [])
        self.assertGreaterEqual(len(delivered), len(acknowledged))
        self.assertEqual(duplicates, 0)


#: Maildir files written by two worker processes.
WORKERS = 'maildir_root = "mail"\nmaildir_processes = 2'


class SMTPSourceWorkersTests(SMTPSourceTests):
    """
    The same load with the Maildir written by worker processes.
    """

    delivery = WORKERS


class CrashWorkersTests(CrashTests):
    """
    The same crash with the Maildir written by worker processes: the workers end with the
    killed daemon, and what they wrote counts as written.
    """

    delivery = WORKERS
