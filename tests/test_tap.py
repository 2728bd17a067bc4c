"""
Tests for L{mdtwist.tap} and L{mdtwist.services}: what the daemon builds from a configuration.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from socket import AF_INET

from twisted.application.service import MultiService
from twisted.internet.defer import execute
from twisted.internet.testing import MemoryReactorClock
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.affinity import VARIABLE
from mdtwist.config import load_config
from mdtwist.services import leftover_shards
from mdtwist.smtp.modes import ListenerMode
from mdtwist.smtp.server import SMTPServerFactory
from mdtwist.spool.store import DATABASE_NAME, SQLiteSpool, shard_directory
from mdtwist.tap import Options, build, hangup_installer
from tests.spool.fakes import make_envelope
from tests.support.logs import capture_logs
from tests.support.tls import make_certificate

_ETC = Path(__file__).resolve().parent.parent / "etc"


class _DemoCase(SynchronousTestCase):
    # A private copy of the demo configuration, with its accounts and a certificate.

    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        (self.root / "etc").mkdir(parents=True)
        shutil.copy(_ETC / "accounts.toml", self.root / "etc")
        make_certificate(self.root / "var" / "tls")
        self.config = self.root / "etc" / "mdtwist.toml"
        # The tree is the same on every machine: no CPU pinning (test_cpu_pin has it).
        host = 'hostname = "mail.example.test"'
        text = (_ETC / "mdtwist.toml").read_text()
        self.config.write_text(text.replace(host, f"{host}\npin_cpus = false"))


class BuildTests(_DemoCase):
    """
    makeService builds the named children and opens exactly the configured listeners.
    """

    def build(self, *args: str) -> tuple[MultiService, MemoryReactorClock]:
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        reactor = MemoryReactorClock()
        service = build(options, reactor, stderr=io.StringIO())
        assert isinstance(service, MultiService)
        return service, reactor

    def test_children(self) -> None:
        """
        The service tree has its named children: the spool lock first (so it is let go last),
        then the pools, then the listeners, and the control socket last (so it closes first).
        """
        service, _ = self.build()
        self.assertEqual(
            [child.name for child in service],
            [
                "spool-lock",
                "accounts-watch",
                "directory",
                "spool-io",
                "spool-read",
                "delivery-io",
                "spool",
                "smtp-client-close",
                "queue",
                "smtp-0-mx",
                "smtp-1-submission",
                "settings-io",
                "settings-receipts-close",
                "http-0",
                "http-1",
                "control",
            ],
        )

    def test_maildir_workers_stop_after_the_queue(self) -> None:
        """
        With C{delivery.maildir_processes} the Maildir workers are a child that comes before
        the queue runner, so that they stop after it.
        """
        text = self.config.read_text().replace("# maildir_processes = 0", "maildir_processes = 2")
        self.config.write_text(text)
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(names[names.index("queue") - 1], "maildir-workers")

    def test_listeners(self) -> None:
        """
        Starting the service listens on exactly the configured ports and interfaces, each with
        an SMTP factory of the listener's mode.
        """
        service, reactor = self.build()
        self.assertEqual(reactor.tcpServers, [])
        service.privilegedStartService()
        listening = {
            (port, interface): factory for port, factory, _, interface in reactor.tcpServers
        }
        self.assertEqual(
            sorted(listening),
            [(2525, "127.0.0.1"), (2587, "127.0.0.1"), (8080, "127.0.0.1"), (8443, "127.0.0.1")],
        )
        smtp = {key for key, f in listening.items() if isinstance(f, SMTPServerFactory)}
        self.assertEqual(smtp, {(2525, "127.0.0.1"), (2587, "127.0.0.1")})
        modes = {key: f.mode for key, f in listening.items() if isinstance(f, SMTPServerFactory)}
        self.assertEqual(
            modes,
            {(2525, "127.0.0.1"): ListenerMode.MX, (2587, "127.0.0.1"): ListenerMode.SUBMISSION},
        )

    def test_extra_listener(self) -> None:
        """
        A third [[smtp.listen]] table gives a third listener with its mode in its name.
        """
        self.config.write_text(
            self.config.read_text()
            + '\n[[smtp.listen]]\nendpoint = "tcp:2465:interface=127.0.0.2"\nmode = "smtps"\n'
        )
        service, reactor = self.build()
        self.assertEqual(service.getServiceNamed("smtp-2-smtps").name, "smtp-2-smtps")
        service.privilegedStartService()
        self.assertIn((2465, "127.0.0.2"), [(p, i) for p, _, _, i in reactor.tcpServers])

    def test_help_hides_internal_options(self) -> None:
        """
        C{--help} lists the operator's options, not those a parent gives its children (which
        still parse).
        """
        text = Options().getUsage(width=80)
        self.assertIn("--config=", text)
        self.assertIn("--check", text)
        self.assertNotIn("--shard", text)
        self.assertNotIn("--listen-fds", text)
        self.assertNotIn("Internal", text)
        options = Options()
        options.parseOptions(["--shard", "1", "--listen-fds", "3"])
        self.assertEqual((options["shard"], options["listen-fds"]), (1, [3]))

    def run_build(self, *args: str) -> tuple[int, str]:
        code, text, _ = self.run_build_out(*args)
        return code, text

    def run_build_out(self, *args: str) -> tuple[int, str, str]:
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        stderr, stdout = io.StringIO(), io.StringIO()
        error = self.assertRaises(
            SystemExit, build, options, MemoryReactorClock(), stderr, stdout=stdout
        )
        return int(error.code or 0), stderr.getvalue(), stdout.getvalue()

    def test_check_good(self) -> None:
        """
        --check on a good file exits 0 and says so on standard output, nothing on standard
        error.
        """
        code, errors, text = self.run_build_out("--check")
        self.assertEqual((code, errors), (0, ""))
        self.assertEqual(text, f"{self.config}: configuration is valid\n")

    def test_check_warns_without_postmaster(self) -> None:
        """
        Without C{server.postmaster}, --check still passes (on standard output) but warns on
        standard error that mail to postmaster will be refused.
        """
        text = self.config.read_text()
        self.assertIn('postmaster = "alice@example.test"', text)
        self.config.write_text(text.replace('postmaster = "alice@example.test"', ""))
        code, errors, text = self.run_build_out("--check")
        [warning] = errors.splitlines()
        self.assertEqual(code, 0)
        self.assertTrue(warning.startswith(f"{self.config}: server.postmaster: warning: not set"))
        self.assertEqual(text, f"{self.config}: configuration is valid\n")

    def test_check_bad(self) -> None:
        """
        A bad file exits 1 with one line per problem, with or without --check.
        """
        self.config.write_text(
            self.config.read_text().replace("tcp:2525:interface=127.0.0.1", "tcp:x") + "\n[oops]\n"
        )
        for args in (("--check",), ()):
            code, text = self.run_build(*args)
            lines = text.splitlines()
            self.assertEqual(code, 1)
            self.assertEqual(len(lines), 2, lines)
            self.assertTrue(lines[0].startswith(f"{self.config}: "))
            self.assertIn("oops: unknown key", text)
            self.assertIn("smtp.listen[0].endpoint: not a valid server endpoint", text)

    def test_bad_accounts_file(self) -> None:
        """
        A broken accounts file stops start-up with its problems.
        """
        (self.root / "etc" / "accounts.toml").write_text('domains = "x"\n')
        code, text = self.run_build("--check")
        self.assertEqual(code, 1)
        self.assertIn("accounts.toml: domains: expected an array of strings", text)

    def test_missing_accounts_file(self) -> None:
        """
        A missing accounts file is named by its key, C{directory.file.path}.
        """
        (self.root / "etc" / "accounts.toml").unlink()
        code, text = self.run_build("--check")
        self.assertEqual(code, 1)
        [line] = text.splitlines()
        self.assertTrue(line.startswith(f"{self.config}: directory.file.path: cannot read "), line)
        self.assertTrue(line.endswith("accounts.toml: No such file or directory"), line)

    def test_spool_locked(self) -> None:
        """
        A second server on the same spool is refused with one line naming the spool directory
        and the PID of the process that holds it; --check is not (it locks nothing).
        """
        self.build()
        code, text = self.run_build()
        self.assertEqual(code, 1)
        [line] = text.splitlines()
        self.assertTrue(line.startswith(f"{self.config}: spool.directory: "), line)
        self.assertTrue(
            line.endswith(f"spool is in use by another process (PID {os.getpid()})"), line
        )
        self.assertEqual(self.run_build("--check")[0], 0)

    def test_unusable_spool(self) -> None:
        """
        A spool directory that cannot be created stops start-up with a clear line.
        """
        (self.root / "var" / "spool").parent.mkdir(exist_ok=True)
        (self.root / "var" / "spool").write_text("a file, not a directory")
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("spool.directory: cannot use", text)

    def test_spool_database_unreadable(self) -> None:
        """
        A spool whose database file is not a database stops start-up with the reason.
        """
        spool = self.root / "var" / "spool"
        spool.mkdir(parents=True)
        (spool / DATABASE_NAME).write_bytes(b"not a database" * 100)
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("spool.directory: cannot use", text)
        self.assertIn("file is not a database", text)

    def test_unusable_maildir_root(self) -> None:
        """
        A Maildir root that cannot be created stops start-up with a clear line.
        """
        (self.root / "var").mkdir(exist_ok=True)
        (self.root / "var" / "mail").write_text("a file, not a directory")
        code, text = self.run_build()
        self.assertEqual(code, 1)
        self.assertIn("delivery.maildir_root: cannot use", text)

    def test_cpu_pin(self) -> None:
        """
        With C{server.pin_cpus} (the default) and two CPUs or more, the step that pins the
        process comes right after the spool lock, before any thread pool starts.
        """
        self.config.write_text(self.config.read_text().replace("pin_cpus = false", ""))
        self.addCleanup(os.environ.pop, VARIABLE, None)
        os.environ[VARIABLE] = "0,1"
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(names[:3], ["spool-lock", "cpu-pin", "accounts-watch"])

    def test_no_cpu_pin_on_one_cpu(self) -> None:
        """
        With one CPU there is nothing to pin.
        """
        self.config.write_text(self.config.read_text().replace("pin_cpus = false", ""))
        self.addCleanup(os.environ.pop, VARIABLE, None)
        os.environ[VARIABLE] = "3"
        service, _ = self.build()
        self.assertNotIn("cpu-pin", [child.name for child in service])

    def test_ldap_closed_after_its_pool(self) -> None:
        """
        With the LDAP backend, the step that unbinds LDAP connections comes before the
        directory pool, so that it runs after the pool has stopped (children stop in reverse).
        """
        text = self.config.read_text().replace('backend = "file"', 'backend = "ldap"')
        text += (
            '\n[directory.ldap]\nurl = "ldap://127.0.0.1:3890"\n'
            'base_dn = "dc=example,dc=com"\ndomains = ["example.test"]\n'
        )
        self.config.write_text(text)
        service, _ = self.build()
        names = [child.name for child in service]
        self.assertEqual(names[:3], ["spool-lock", "directory-close", "directory"])


class ProcessesTests(_DemoCase):
    """
    What the tree looks like with C{server.processes}, in the parent and in a child.
    """

    def setUp(self) -> None:
        super().setUp()
        host = 'hostname = "mail.example.test"'
        self.config.write_text(self.config.read_text().replace(host, host + "\nprocesses = 2"))
        self.spool = self.root / "var" / "spool"

    def build(self, *args: str) -> tuple[MultiService, MemoryReactorClock]:
        options = Options()
        options.parseOptions(["--config", str(self.config), *args])
        reactor = MemoryReactorClock()
        service = build(options, reactor, stderr=io.StringIO(), argv=["twistd", "mdtwist"])
        assert isinstance(service, MultiService)
        return service, reactor

    def test_parent(self) -> None:
        """
        The parent listens through its supervisor (the last child of the tree, so it stops
        first): one socket per listener for itself, served by the reactor.
        """
        text = self.config.read_text()
        self.config.write_text(text.replace("tcp:2525", "tcp:0").replace("tcp:2587", "tcp:0"))
        service, reactor = self.build()
        names = [child.name for child in service]
        # The HTTP listeners (client settings) run in this first process only.
        self.assertEqual(names[-4:], ["http-0", "http-1", "shards", "control"])
        self.assertFalse([name for name in names if name.startswith("smtp-0")])
        supervisor = service.getServiceNamed("shards")
        supervisor.privilegedStartService()
        self.addCleanup(supervisor.stopService)
        self.assertEqual([family for _, family, _ in reactor.adoptedPorts], [AF_INET, AF_INET])

    def test_child(self) -> None:
        """
        A child owns its shard's spool, serves the sockets it was handed and watches its parent.
        """
        service, _ = self.build("--shard", "1", "--listen-fds", "3,4")
        names = [child.name for child in service]
        self.assertEqual(names[-3:], ["parent-link", "smtp-0-mx", "smtp-1-submission"])
        self.assertTrue((self.spool / "shard-1" / DATABASE_NAME).is_file())

    def test_draining_child(self) -> None:
        """
        A child without sockets only drains its spool, and watches for it to be empty.
        """
        service, _ = self.build("--shard", "3")
        names = [child.name for child in service]
        self.assertEqual(names[-3:], ["queue", "parent-link", "drain-watch"])

    def test_wrong_number_of_sockets(self) -> None:
        """
        A child handed fewer sockets than there are listeners does not start.
        """
        options = Options()
        options.parseOptions(["--config", str(self.config), "--shard", "1", "--listen-fds", "3"])
        stderr = io.StringIO()
        error = self.assertRaises(SystemExit, build, options, MemoryReactorClock(), stderr)
        self.assertEqual(error.code, 1)
        self.assertIn("handed 1 listening sockets for 2 listeners", stderr.getvalue())

    def test_bad_internal_options(self) -> None:
        """
        --shard out of range, --listen-fds that are not descriptors, and sockets for shard 0
        are usage errors.
        """
        for args in (
            ["--shard", "256"],
            ["--shard", "x"],
            ["--shard", "1", "--listen-fds", "1"],
            ["--listen-fds", "3"],
        ):
            self.assertRaises(
                UsageError, Options().parseOptions, ["--config", str(self.config), *args]
            )

    def test_leftover_shards(self) -> None:
        """
        A shard beyond C{processes} gets a draining child when its active queue holds mail or
        its database cannot be read; an empty one, or one with only parked mail, does not.
        """
        config = load_config(self.config)
        for shard, action in ((2, "queue"), (3, "park"), (4, "empty"), (5, "garbage")):
            directory = shard_directory(self.spool, shard)
            if action == "garbage":
                directory.mkdir(parents=True)
                (directory / DATABASE_NAME).write_bytes(b"not a database" * 100)
                continue
            spool = SQLiteSpool(directory, execute, shard=shard)
            spool.open()
            if action != "empty":
                queued = self.successResultOf(
                    spool.enqueue(make_envelope("alice@example.test"), b"x\r\n")
                )
                if action == "park":
                    self.successResultOf(spool.park(queued, "test"))
            spool.close()
        self.assertEqual(leftover_shards(config), [2, 5])


class HangupTests(_DemoCase):
    """
    SIGHUP reloads, through the reactor thread.
    """

    def test_installer(self) -> None:
        """
        The handler L{hangup_installer} installs only hands the action to the reactor.
        """
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)
        handed: list[object] = []

        class Reactor:
            def callFromThread(self, f: object) -> None:  # noqa: N802
                handed.append(f)

        def action() -> None:
            raise AssertionError("called in the signal handler")

        hangup_installer(Reactor())(action)
        handler = signal.getsignal(signal.SIGHUP)
        assert callable(handler)
        handler(signal.SIGHUP, None)
        self.assertEqual(handed, [action])

    def test_reload(self) -> None:
        """
        The service tree gives the installer the reload of C{mdtwistctl reload}.
        """
        events = capture_logs(self)
        actions: list[Callable[[], object]] = []
        options = Options()
        options.parseOptions(["--config", str(self.config)])
        build(options, MemoryReactorClock(), stderr=io.StringIO(), on_hangup=actions.append)
        [action] = actions
        action()
        formats = [e["log_format"] for e in events]
        self.assertIn("SIGHUP: reloading", formats)
        self.assertIn("accounts file {path} reloaded: {count} addresses", formats)
        self.assertIn(
            "Reloaded the accounts, the TLS certificate and the client settings", formats
        )
