"""Tests for L{mdtwist.cli}."""

from __future__ import annotations

import errno
import getpass
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from mdtwist import cli
from mdtwist.cli import main
from mdtwist.control.client import ControlClientError, connect_error
from mdtwist.directory.passwords import verify_password
from mdtwist.envelope import Recipient, RecipientState
from mdtwist.spool import commands as queue_commands
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
        self.assertEqual(lines[2], "2 messages in the active queue")

    def test_list_bad_queue(self) -> None:
        """C{queue list} lists the bad queue apart, with each message's reason."""
        status, out, _ = self.run_cli("queue", "list", "--spool", str(self.spool_dir))
        self.assertEqual(status, 0)
        lines = out.splitlines()
        self.assertEqual(lines[3:5], ["", "Bad queue:"])
        self.assertEqual(lines[5].split()[0], self.parked)
        self.assertTrue(lines[5].endswith("  <s@remote.example>  mail loop: 101 hops"), lines[5])
        self.assertEqual(lines[6], "1 message in the bad queue")

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
        """
        A missing command or sub-command is a usage error with status 2; without C{--spool}
        and without a configuration file, C{queue list} says what it looked for.
        """
        self.assertEqual(self.run_cli()[0], 2)
        self.assertEqual(self.run_cli("queue")[0], 2)
        status, out, err = self.run_cli("queue", "list")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("no configuration file (etc/mdtwist.toml or ", err)
        self.assertIn("; give --config FILE", err)


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
            ["000000000001", "010000000001", "2 messages in the active queue", ""],
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


class ServerCommandTests(SynchronousTestCase):
    """
    C{mdtwistctl status}, C{queue run} and C{reload}: finding the socket from the
    configuration, the answers shown, and the errors.
    """

    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        self.config = directory / "mdtwist.toml"
        self.config.write_text('[spool]\ndirectory = "spool"\n')
        self.socket = directory / "spool" / "control.sock"
        self.answers: dict[str, Any] = {}
        self.calls: list[tuple[Path, str]] = []

        def call(path: Path, command: type[amp.Command], arguments: Any = None) -> Any:
            self.calls.append((path, command.commandName.decode()))
            answer = self.answers[command.commandName.decode()]
            if isinstance(answer, Exception):
                raise answer
            return answer

        self.patch(cli, "call", call)
        self.patch(queue_commands, "call", call)

    def run_cli(self, *argv: str, defaults: Sequence[Path] = ()) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), stdout=out, stderr=err, default_configs=defaults)
        return status, out.getvalue(), err.getvalue()

    def test_status(self) -> None:
        """
        C{status} prints the version, the processes, the listeners and a table of the
        shards with the totals; a shard that did not answer is marked. The socket is
        C{control.sock} in the configuration's spool directory.
        """
        self.answers["status"] = {
            "version": "1.2",
            "processes": 3,
            "listeners": ["mx tcp:25"],
            "shards": [
                {"shard": 0, "pid": 10, "active": 2, "held": 0, "bad": 1},
                {"shard": 1, "pid": 11, "active": 3, "held": 4, "bad": 0},
            ],
            "missing": [2],
            "active": 5,
            "held": 4,
            "bad": 1,
        }
        status, out, err = self.run_cli("--config", str(self.config), "status")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(
            out.splitlines(),
            [
                "mdtwist 1.2, 3 processes",
                "Listening: mx tcp:25",
                "Shard       PID    Active      Held       Bad",
                "    0        10         2         0         1",
                "    1        11         3         4         0",
                "    2         -         ?         ?         ?  (not answering)",
                "Total                   5         4         1",
            ],
        )
        self.assertEqual(self.calls, [(self.socket, "status")])
        status, out, _ = self.run_cli("--config", str(self.config), "status", "--json")
        self.assertEqual(json.loads(out), self.answers["status"])

    def test_queue_run(self) -> None:
        """
        C{queue run} says in how many processes a run started; a process that did not answer
        is named and makes the status 1.
        """
        self.answers["queue-run"] = {"shards": [0], "missing": []}
        self.assertEqual(
            self.run_cli("--config", str(self.config), "queue", "run"),
            (0, "Queue run started in 1 process\n", ""),
        )
        self.answers["queue-run"] = {"shards": [0, 2], "missing": [1]}
        self.assertEqual(
            self.run_cli("--config", str(self.config), "queue", "run"),
            (
                1,
                "Queue run started in 2 processes\n",
                "mdtwistctl: the process of shard 1 did not answer\n",
            ),
        )

    def test_reload(self) -> None:
        """
        C{reload} says where it reloaded, or prints each problem and exits with status 1.
        """
        self.answers["reload"] = {"shards": [0, 1], "missing": [], "problems": []}
        self.assertEqual(
            self.run_cli("--config", str(self.config), "reload"),
            (0, "Reloaded in 2 processes\n", ""),
        )
        self.answers["reload"] = {"shards": [0], "missing": [], "problems": ["a.toml: bad"]}
        self.assertEqual(
            self.run_cli("--config", str(self.config), "reload"),
            (1, "", "mdtwistctl: not reloaded: a.toml: bad\n"),
        )

    def test_errors(self) -> None:
        """
        A server that is not running and a socket the user may not use are one line each,
        with status 1.
        """
        for number in (errno.ECONNREFUSED, errno.EACCES):
            error = connect_error(self.socket, OSError(number, os.strerror(number)))
            for command in ("status", "reload"):
                self.answers[command] = error
                self.assertEqual(
                    self.run_cli("--config", str(self.config), command),
                    (1, "", f"mdtwistctl: {error}\n"),
                )

    def test_default_configuration(self) -> None:
        """
        Without C{--config}, the first default file that exists is read; with none, the
        error names them.
        """
        self.answers["status"] = ControlClientError("stop here")
        missing = self.config.parent / "missing.toml"
        self.run_cli("status", defaults=[missing, self.config])
        self.assertEqual(self.calls, [(self.socket, "status")])
        self.assertEqual(
            self.run_cli("status", defaults=[missing]),
            (1, "", f"mdtwistctl: no configuration file ({missing}); give --config FILE\n"),
        )

    def test_bad_configuration(self) -> None:
        """
        A configuration without a spool directory is named.
        """
        self.config.write_text("[spool]\n")
        self.assertEqual(
            self.run_cli("--config", str(self.config), "status"),
            (1, "", f"mdtwistctl: {self.config}: spool.directory: required value is missing\n"),
        )

    def test_queue_list_from_configuration(self) -> None:
        """
        The queue reading commands find the spool in the configuration; C{--spool} overrides
        it.
        """
        status, _, err = self.run_cli("--config", str(self.config), "queue", "list")
        self.assertEqual(status, 1)
        self.assertIn(str(self.socket.parent), err)
        other = self.config.parent / "other"
        status, _, err = self.run_cli(
            "--config", str(self.config), "queue", "list", "--spool", str(other)
        )
        self.assertEqual(status, 1)
        self.assertIn(str(other), err)


class FakeErrorTerminal(io.StringIO):
    """Standard error that claims to be a terminal (where a progress bar shows)."""

    def isatty(self) -> bool:
        """
        Claim to be a terminal.

        @return: C{True}.
        """
        return True


class QueueActionCommandTests(SynchronousTestCase):
    """
    C{mdtwistctl queue ACTION}: choosing the messages from the spool, batches sent to the
    server (a fake here), progress, confirmation and output.
    """

    def setUp(self) -> None:
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        self.config = directory / "mdtwist.toml"
        self.config.write_text('[spool]\ndirectory = "spool"\n')
        spool = SQLiteSpool(directory / "spool", run_now)
        self.addCleanup(spool.close)
        self.ids = [
            self.successResultOf(
                spool.enqueue(
                    make_envelope(f"r{i}@one.example" if i % 2 else "x@two.example"), BODY
                )
            )
            for i in range(150)
        ]
        self.batches: list[tuple[str, list[str]]] = []

        def call(path: Path, command: type[amp.Command], arguments: Any = None) -> Any:
            assert arguments is not None
            self.batches.append((arguments["action"], arguments["ids"]))
            ids = arguments["ids"]
            return {
                "done": ids[1:],
                "refused": [{"queue_id": ids[0], "reason": "already held"}],
                "shards": [0],
                "missing": [],
            }

        self.patch(queue_commands, "call", call)

    def run_cli(
        self, *argv: str, stdin: io.StringIO | None = None, err: io.StringIO | None = None
    ) -> tuple[int, str, str]:
        out = io.StringIO()
        err = io.StringIO() if err is None else err
        status = main(
            ["--config", str(self.config), *argv],
            stdin=stdin or io.StringIO(),
            stdout=out,
            stderr=err,
        )
        return status, out.getvalue(), err.getvalue()

    def test_batches_and_progress(self) -> None:
        """
        The chosen ids go in batches of 100; on a terminal a progress bar shows; refusals are
        named and make the status 1; the count of what was done has the right plural.
        """
        status, out, err = self.run_cli(
            "queue", "hold", "--domain", "one.example", err=FakeErrorTerminal()
        )
        chosen = self.ids[1::2]
        self.assertEqual([action for action, _ in self.batches], ["hold"])
        self.assertEqual(self.batches[0][1], chosen)
        self.assertEqual(status, 1)
        self.assertEqual(out, "74 messages held\n")
        self.assertIn(f"mdtwistctl: {chosen[0]}: already held\n", err)
        self.batches.clear()
        status, out, err = self.run_cli("queue", "hold", "--all", err=FakeErrorTerminal())
        self.assertEqual([len(ids) for _, ids in self.batches], [100, 50])
        self.assertIn("Hold", err)
        self.assertIn("/150 ", err)
        self.assertEqual(out, "148 messages held\n")

    def test_no_progress_without_terminal(self) -> None:
        """
        Without a terminal there is no progress bar; C{--json} prints the outcome.
        """
        status, out, err = self.run_cli("queue", "retry", "--all", "--json")
        self.assertEqual(status, 1)  # the fake server refuses one id per batch
        self.assertNotIn("%", err)
        outcome = json.loads(out)
        self.assertEqual(len(outcome["done"]), 148)
        self.assertEqual(len(outcome["refused"]), 2)
        self.assertEqual(outcome["missing"], [])

    def test_confirmation(self) -> None:
        """
        Delete and bounce ask on a terminal; anything but yes does nothing. Without a
        terminal they need --yes.
        """
        status, _, err = self.run_cli("queue", "delete", self.ids[0], stdin=FakeTerminal("n\n"))
        self.assertEqual((status, self.batches), (1, []))
        self.assertIn("Delete 1 message? [y/N] ", err)
        self.assertIn("mdtwistctl: nothing done\n", err)
        status, _, err = self.run_cli("queue", "bounce", "--all")
        self.assertEqual((status, self.batches), (1, []))
        self.assertIn("Bounce 150 messages? Give --yes", err)
        self.run_cli("queue", "delete", self.ids[0], stdin=FakeTerminal("yes\n"))
        self.assertEqual(self.batches, [("delete", [self.ids[0]])])

    def test_selection_errors(self) -> None:
        """
        Without ids or conditions the action is refused; a bad id is named.
        """
        status, _, err = self.run_cli("queue", "release")
        self.assertEqual(status, 1)
        self.assertIn("say which messages", err)
        status, _, err = self.run_cli("queue", "release", "ZZZ")
        self.assertEqual(err, "mdtwistctl: 'ZZZ' is not a queue id\n")
        self.assertEqual(self.batches, [])

    def test_list_json_and_filters(self) -> None:
        """
        C{queue list} takes the same conditions and prints JSON when asked.
        """
        status, out, _ = self.run_cli("queue", "list", "--recipient", "R3@one.EXAMPLE", "--json")
        [entry] = json.loads(out)
        self.assertEqual(entry["queue_id"], self.ids[3])
        self.assertEqual((entry["queue"], entry["pending"], entry["recipients"]), ("active", 1, 1))
        status, out, _ = self.run_cli("queue", "show", self.ids[3], "--json")
        self.assertEqual(status, 0)
        shown = json.loads(out)
        self.assertEqual(shown["recipients"][0]["address"], "r3@one.example")


class ToolTests(SynchronousTestCase):
    """
    The tool as a whole: every command explains itself, and --config reaches every command.
    """

    def test_bare_lists_commands(self) -> None:
        """
        Bare C{mdtwistctl}, or a group without its subcommand, lists what it offers.
        """
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main([], stdout=out, stderr=err), 2)
        for command in ("queue", "account", "reload", "status", "sharing", "settings"):
            self.assertIn(f"    {command}", out.getvalue())
        out = io.StringIO()
        self.assertEqual(main(["account"], stdout=out, stderr=err), 2)
        for command in ("list", "add", "disable", "passwd"):
            self.assertIn(f"    {command}", out.getvalue())

    def test_every_command_has_help(self) -> None:
        """
        Every command and subcommand has a line of help in its group's list.
        """
        parser = cli._parser()
        missing: list[str] = []

        def walk(parser: Any, prefix: str) -> None:
            for action in parser._actions:
                if action.__class__.__name__ == "_SubParsersAction":
                    helps = {choice.dest: choice.help for choice in action._choices_actions}
                    for name, sub in action.choices.items():
                        if not helps.get(name):
                            missing.append(f"{prefix}{name}")
                        walk(sub, f"{prefix}{name} ")

        walk(parser, "")
        self.assertEqual(missing, [])

    def test_config_reaches_subcommands(self) -> None:
        """
        C{--config} before the command is the one C{sharing check} reads (its own option
        after the command still works).
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        config = directory / "mdtwist.toml"
        config.write_text("not toml [")
        for argv in (
            ["--config", str(config), "sharing", "check", "a@example.test"],
            ["sharing", "check", "a@example.test", "--config", str(config)],
        ):
            out, err = io.StringIO(), io.StringIO()
            self.assertEqual(main(argv, stdout=out, stderr=err), 1)
            self.assertIn(f"{config}: not valid TOML", err.getvalue())
