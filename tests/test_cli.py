"""Tests for L{mdtwist.cli}."""

from __future__ import annotations

import getpass
import io
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main
from mdtwist.directory.passwords import verify_password
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.spool.model import RecipientResult
from mdtwist.spool.store import SQLiteSpool, shard_directory
from tests.spool.fakes import make_envelope, run_now

BODY = b"Subject: secret stuff\r\n\r\nbody text\r\n"


class FakeTerminal(io.StringIO):
    """Standard input that claims to be a terminal."""

    def isatty(self) -> bool:
        """
        Claim to be a terminal.

        @return: C{True}.
        """
        return True


class CLITestCase(SynchronousTestCase):
    """Runs C{mdtwistctl} with captured output."""

    def run_cli(self, *argv: str, stdin: io.StringIO | None = None) -> tuple[int, str, str]:
        """
        Run the command.

        @return: the exit status, the output and the error output.
        """
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), stdin=stdin or io.StringIO(), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()


class QueueCommandTests(CLITestCase):
    """Tests for C{mdtwistctl queue}."""

    def setUp(self) -> None:
        """Make a spool with two messages; it stays open, as it is while the server runs."""
        self.spool_dir = Path(self.mktemp())
        spool = SQLiteSpool(self.spool_dir, run_now)
        self.addCleanup(spool.close)
        first = make_envelope(
            Recipient(
                "a@example.com", notify=frozenset({"FAILURE"}), orcpt="rfc822;a@example.com"
            ),
            "b@example.com",
        )
        self.first = self.successResultOf(spool.enqueue(first, BODY))
        self.second = self.successResultOf(
            spool.enqueue(make_envelope("c@example.com", sender=""), BODY)
        )
        self.parked = self.successResultOf(spool.enqueue(make_envelope("d@example.com"), BODY))
        self.successResultOf(spool.park(self.parked, "mail loop: 101 hops"))
        self.successResultOf(
            spool.record(
                self.first,
                [RecipientResult(1, RecipientState.FAILED, "5.1.1", "no such user")],
                1300,
            )
        )

    def test_list(self) -> None:
        """C{queue list} prints id, arrival, size, sender and recipients of each message."""
        status, out, err = self.run_cli("queue", "list", "--spool", str(self.spool_dir))
        self.assertEqual((status, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(len(lines), 7)
        self.assertEqual(
            lines[0].split(),
            [
                self.first,
                "1970-01-01T00:16:40Z",
                str(len(BODY)),
                "<s@remote.example>",
                "1/2",
                "pending",
            ],
        )
        self.assertEqual(lines[1].split()[3:5], ["<>", "1/1"])
        self.assertEqual(lines[2], "2 messages")

    def test_list_bad_queue(self) -> None:
        """C{queue list} lists the bad queue apart, with each message's reason."""
        status, out, _ = self.run_cli("queue", "list", "--spool", str(self.spool_dir))
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[3:5], ["", "Bad queue:"])
        self.assertEqual(lines[5].split()[0], self.parked)
        self.assertTrue(lines[5].endswith("  <s@remote.example>  mail loop: 101 hops"), lines[5])
        self.assertEqual(lines[6], "1 messages in the bad queue")

    def test_show_bad_queue(self) -> None:
        """C{queue show} of a parked message names the bad queue and the reason."""
        status, out, _ = self.run_cli("queue", "show", self.parked, "--spool", str(self.spool_dir))
        self.assertEqual(status, 0)
        self.assertIn("Queue: bad\nBad-Queue-Reason: mail loop: 101 hops\nKind: message\n", out)

    def test_show(self) -> None:
        """C{queue show} prints the envelope and each recipient's state, without the body."""
        status, out, err = self.run_cli(
            "queue", "show", self.first, "--spool", str(self.spool_dir)
        )
        self.assertEqual((status, err), (0, ""))
        self.assertIn(f"Queue-Id: {self.first}\nQueue: active\nKind: message\n", out)
        self.assertIn("Client: 192.0.2.1 helo=client.example\n", out)
        self.assertIn("Next-Attempt: 1970-01-01T00:21:40Z\n", out)
        self.assertIn(
            "Recipient: <a@example.com> pending attempts=0 status=- notify=FAILURE"
            " orcpt=rfc822;a@example.com\n",
            out,
        )
        self.assertIn(
            "Recipient: <b@example.com> failed attempts=1 status=5.1.1 notify=- orcpt=-"
            " no such user\n",
            out,
        )
        self.assertNotIn("secret stuff", out)

    def test_show_body(self) -> None:
        """C{queue show --body} prints the message after the envelope."""
        status, out, _ = self.run_cli(
            "queue", "show", self.second.lower(), "--body", "--spool", str(self.spool_dir)
        )
        self.assertEqual(status, 0)
        self.assertTrue(out.endswith("\n\n" + BODY.decode()), out)

    def test_show_unknown(self) -> None:
        """Asking for a message that is not queued is an error, reported on standard error."""
        status, out, err = self.run_cli("queue", "show", "FFFFFF", "--spool", str(self.spool_dir))
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"mdtwistctl: no message FFFFFF in {self.spool_dir}\n")

    def test_no_spool(self) -> None:
        """A directory without a spool is an error naming the database file."""
        missing = self.mktemp()
        status, out, err = self.run_cli("queue", "list", "--spool", missing)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no spool database", err)
        self.assertFalse(Path(missing).exists())

    def test_usage(self) -> None:
        """A missing command or sub-command is a usage error with status 2."""
        self.assertEqual(self.run_cli()[0], 2)
        self.assertEqual(self.run_cli("queue")[0], 2)
        status, out, err = self.run_cli("queue", "list")
        self.assertEqual((status, out), (2, ""))
        self.assertIn("--spool", err)


class ShardedQueueCommandTests(CLITestCase):
    """Tests for C{mdtwistctl queue} on a spool of several shards (one per server process)."""

    def setUp(self) -> None:
        """
        Make shards 0 and 1 of a spool, each with an active and a parked message.

        Shard 1 gets its messages first; they stay open, as they are while the server runs.
        """
        self.spool_dir = Path(self.mktemp())
        shards = {
            shard: SQLiteSpool(shard_directory(self.spool_dir, shard), run_now, shard=shard)
            for shard in (1, 0)
        }
        self.active: list[str] = []
        self.parked: list[str] = []
        for shard, spool in shards.items():
            self.addCleanup(spool.close)
            self.active.append(
                self.successResultOf(spool.enqueue(make_envelope("a@example.com"), BODY))
            )
            parked = self.successResultOf(spool.enqueue(make_envelope("b@example.com"), BODY))
            self.successResultOf(spool.park(parked, f"parked in shard {shard}"))
            self.parked.append(parked)

    def test_list(self) -> None:
        """
        C{queue list} lists every shard's messages: the active queue first, then the bad queue.

        Within each queue the messages are in queue id order, so shard 0's come first.
        """
        status, out, err = self.run_cli("queue", "list", "--spool", str(self.spool_dir))
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(self.active, ["010000000001", "000000000001"])
        lines = out.splitlines()
        self.assertEqual(
            [line.split()[0] for line in lines[:2]] + lines[2:4],
            ["000000000001", "010000000001", "2 messages", ""],
        )
        self.assertEqual(lines[4], "Bad queue:")
        self.assertEqual(
            [(line.split()[0], line.split()[-1]) for line in lines[5:7]],
            [("000000000002", "0"), ("010000000002", "1")],
        )
        self.assertEqual(lines[7:], ["2 messages in the bad queue"])

    def test_show(self) -> None:
        """C{queue show} reads a message from the shard its id names."""
        for queue_id in self.active + self.parked:
            status, out, err = self.run_cli(
                "queue", "show", queue_id, "--spool", str(self.spool_dir)
            )
            self.assertEqual((status, err), (0, ""))
            self.assertIn(f"Queue-Id: {queue_id}\n", out)
        status, out, _ = self.run_cli(
            "queue", "show", "010000000002", "--spool", str(self.spool_dir)
        )
        self.assertIn("Bad-Queue-Reason: parked in shard 1\n", out)

    def test_show_unknown_in_shard(self) -> None:
        """An id of an existing shard that holds no such message is no message."""
        status, out, err = self.run_cli(
            "queue", "show", "010000000009", "--spool", str(self.spool_dir)
        )
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"mdtwistctl: no message 010000000009 in {self.spool_dir}\n")

    def test_show_missing_shard(self) -> None:
        """An id of a shard that does not exist is no message, as for an unknown id."""
        (self.spool_dir / "shard-5").mkdir()
        for queue_id in ("020000000001", "050000000001"):
            status, out, err = self.run_cli(
                "queue", "show", queue_id, "--spool", str(self.spool_dir)
            )
            self.assertEqual((status, out), (1, ""))
            self.assertEqual(err, f"mdtwistctl: no message {queue_id} in {self.spool_dir}\n")

    def test_show_no_spool(self) -> None:
        """In a directory without any spool, C{queue show} names the missing database."""
        missing = self.mktemp()
        status, out, err = self.run_cli("queue", "show", "010000000001", "--spool", missing)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no spool database", err)


class HashPasswordTests(CLITestCase):
    """Tests for C{mdtwistctl hash-password}."""

    def test_from_stdin(self) -> None:
        """The first line of standard input is hashed with argon2id."""
        status, out, err = self.run_cli("hash-password", stdin=io.StringIO("s3cret pass\n"))
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith("$argon2id$"), out)
        self.assertTrue(verify_password(out.strip(), "s3cret pass"))

    def test_empty(self) -> None:
        """An empty password is refused."""
        status, out, err = self.run_cli("hash-password", stdin=io.StringIO("\n"))
        self.assertEqual((status, out, err), (1, "", "mdtwistctl: empty password\n"))

    def test_terminal_asks_twice(self) -> None:
        """On a terminal the password is asked for twice, without echo; a mismatch is refused."""
        answers = iter(["one", "two"])
        self.patch(getpass, "getpass", lambda prompt: next(answers))
        status, out, err = self.run_cli("hash-password", stdin=FakeTerminal())
        self.assertEqual((status, out, err), (1, "", "mdtwistctl: the passwords differ\n"))
        answers = iter(["same", "same"])
        status, out, _ = self.run_cli("hash-password", stdin=FakeTerminal())
        self.assertEqual(status, 0)
        self.assertTrue(verify_password(out.strip(), "same"))
