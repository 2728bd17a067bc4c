"""
The two servers under test: the real mdtwist daemon and a private Postfix instance.

Both run on a free loopback port with every file under one parent directory, and are stopped by
their own process ids. A server gets ready for each run with L{BenchServer.prepare} (mdtwist: a
new daemon on a fresh spool and Maildir; Postfix: its queue drained) and is done with
L{BenchServer.finish}.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from bench.procfs import tree_pids
from mdtwist.control.client import ControlClientError, call
from mdtwist.control.commands import QueueRun
from mdtwist.directory.passwords import hash_password
from mdtwist.spool.store import DATABASE_NAME, existing_shards, shard_directory
from tests.integration.peers import (
    PeerError,
    find_program,
    free_port,
    run_checked,
    start_process,
    stop_process,
    wait_for_port,
)

#: The repository root: twistd runs here so that it finds the mdtwist plugin.
ROOT = Path(__file__).resolve().parents[1]

#: The recipient of every benchmark message; its domain is local on both servers.
RECIPIENT = "rcpt@example.test"

#: The envelope sender of every benchmark message.
SENDER = "sender@client.test"


class BenchServer(Protocol):
    """
    A server that smtp-source can be pointed at, run after run.
    """

    name: str

    @property
    def port(self) -> int:
        """
        The loopback port to send to in the current run.
        """

    @property
    def pid(self) -> int:
        """
        The process at the top of the server's process tree.
        """

    def prepare(self) -> None:
        """
        Get ready for a run: a fresh spool, or an empty queue.
        """

    def delivered(self, count: int) -> bool:
        """
        Tell whether the background delivery of the current run is done.

        @param count: how many deliveries the run asked for: messages times recipients.
        """

    def finish(self) -> None:
        """
        End the current run.
        """

    def close(self) -> None:
        """
        Stop every process of the server.
        """


def _count_files(folder: Path) -> int:
    # How many entries a directory holds (0 when it does not exist yet).
    try:
        with os.scandir(folder) as entries:
            return sum(1 for _ in entries)
    except FileNotFoundError:
        return 0


def add_delivery_options(parser: argparse.ArgumentParser) -> None:
    """
    Add C{--maildir-processes}, C{--concurrency} and C{--queue-first}, mdtwist's
    C{[delivery]} options of a run.

    @param parser: the bench's parser.
    """
    parser.add_argument(
        "--maildir-processes", type=int, default=0, metavar="N",
        help="mdtwist's delivery.maildir_processes (default: 0, threads)",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=0, metavar="N",
        help="mdtwist's delivery.concurrency (default: the configuration's default)",
    )  # fmt: skip
    add_queue_first_option(parser)


def add_queue_first_option(parser: argparse.ArgumentParser) -> None:
    """
    Add C{--queue-first}: mdtwist queues local mail before delivering it.

    @param parser: the bench's parser.
    """
    parser.add_argument(
        "--queue-first", action="store_true",
        help="mdtwist queues every message first (delivery.direct_max_recipients = 0), as"
        " before local mail was delivered ahead of the reply; its row name ends in -q",
    )  # fmt: skip


def queue_first_option(options: argparse.Namespace) -> str:
    """
    @param options: parsed options with C{--queue-first} (L{add_queue_first_option}).
    @return: the C{[delivery]} line it gives, with its line break before it, or C{""}.
    """
    return "\ndirect_max_recipients = 0" if options.queue_first else ""


def delivery_options(options: argparse.Namespace) -> str:
    """
    @param options: parsed options with those of L{add_delivery_options}.
    @return: the TOML lines they give the C{[delivery]} table.
    """
    lines = f"maildir_processes = {options.maildir_processes}"
    lines += f"\nconcurrency = {options.concurrency}" if options.concurrency else ""
    return lines + queue_first_option(options)


def worker_name(processes: int, maildir_processes: int, queue_first: bool = False) -> str:
    """
    @param processes: C{server.processes}.
    @param maildir_processes: C{delivery.maildir_processes}.
    @param queue_first: whether every message is queued first (C{--queue-first}).
    @return: the row name of mdtwist run so: C{mdtwist}, C{mdtwist-2p}, C{mdtwist-w2},
        C{mdtwist-w1-q}...
    """
    name = "mdtwist" if processes == 1 else f"mdtwist-{processes}p"
    name = name if not maildir_processes else f"{name}-w{maildir_processes}"
    return f"{name}-q" if queue_first else name


class MdtwistServer:
    """
    The real mdtwist daemon (twistd), started afresh for every run.

    @ivar name: C{"mdtwist"}.
    @ivar parent: the directory holding one subdirectory per run.
    @ivar profile_dir: when set, the next daemon runs under L{bench.profiled_twistd} and writes
        its profiles here.
    """

    name = "mdtwist"

    def __init__(
        self,
        parent: Path,
        *,
        smtp_extra: str = "",
        delivery_extra: str = "",
        extra: str = "",
        processes: int = 1,
        max_sessions: int | None = None,
        max_sessions_per_ip: int = 1000,
        accounts: Sequence[str] = (RECIPIENT,),
        code: Path = ROOT,
        name: str | None = None,
    ) -> None:
        """
        @param parent: an empty directory; each run gets C{run-N} below it.
        @param code: the checkout whose C{mdtwist} the daemon runs (another one than this for
            a before/after comparison in one series).
        @param name: the row's name, instead of C{mdtwist} (C{mdtwist-Np} with processes).
        @param accounts: the addresses of the accounts file, all of L{RECIPIENT}'s domain; each
            has its own Maildir.
        @param max_sessions: C{smtp.max_sessions}, or L{None} for the default.
        @param max_sessions_per_ip: C{smtp.max_sessions_per_ip}.
        @param smtp_extra: more TOML lines for the C{[smtp]} table.
        @param delivery_extra: more TOML lines for the C{[delivery]} table.
        @param extra: more TOML tables, appended to the configuration (such as C{[outbound]}).
        @param processes: the daemon's C{server.processes}.
        """
        self.parent = parent
        self.processes = processes
        if processes > 1:
            self.name = f"mdtwist-{processes}p"
        if name is not None:
            self.name = name
        self._code = code
        limits = f"max_sessions_per_ip = {max_sessions_per_ip}\n"
        if max_sessions is not None:
            limits += f"max_sessions = {max_sessions}\n"
        self._smtp_extra = limits + smtp_extra
        self._delivery_extra = delivery_extra
        self._extra = extra
        self._accounts = tuple(accounts)
        self.profile_dir: Path | None = None
        self._runs = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._directory = parent
        self._port = 0
        self._hash = hash_password("bench-password")
        self.config_path: Path | None = None

    @property
    def port(self) -> int:
        """
        The mx listener's port in the current run.
        """
        return self._port

    @property
    def pid(self) -> int:
        """
        The twistd process id in the current run.
        """
        if self._process is None:
            raise PeerError("mdtwist is not running")
        return self._process.pid

    @property
    def maildir(self) -> Path:
        """
        The recipient's C{Maildir/new} folder in the current run.
        """
        return self._new_folder(RECIPIENT)

    def _new_folder(self, address: str) -> Path:
        # An account's Maildir/new folder in the current run.
        local, domain = address.split("@")
        return self._directory / "mail" / domain / local / "Maildir" / "new"

    @property
    def log_path(self) -> Path:
        """
        The current daemon's output.
        """
        return self._directory / "mdtwist.log"

    def queued(self) -> int:
        """
        Count the messages in the current run's spool, with a read-only SQLite connection.

        @return: how many messages the spool holds (in any queue and shard); 0 before the spool
            exists.
        """
        return sum(self.shard_counts())

    @staticmethod
    def _count(directory: Path) -> int:
        # The messages in one spool shard, with a read-only connection.
        database = directory / DATABASE_NAME
        db = sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=10.0)
        try:
            (count,) = db.execute("SELECT count(*) FROM message").fetchone()
        finally:
            db.close()
        return int(count)

    def shard_counts(self) -> list[int]:
        """
        Count the messages in each spool shard of the current run.

        @return: the counts, shard 0 first.
        """
        root = self._directory / "spool"
        return [self._count(shard_directory(root, k)) for k in existing_shards(root)]

    def prepare(self) -> None:
        """
        Write a fresh configuration, spool and Maildir, and start the daemon.
        """
        self._runs += 1
        self._directory = self.parent / f"run-{self._runs}"
        self._directory.mkdir()
        self._port = free_port()
        config = self._write_config()
        self.config_path = Path(config)
        command = [
            *self._launcher(),
            "--nodaemon",
            "--pidfile=",
            "--logger",
            "mdtwist.logging.text_observer",
            "mdtwist",
            "--config",
            config,
        ]
        self.before_start(self._directory)
        env = dict(os.environ, PYTHONPATH=str(self._code))
        self._process = start_process(
            command, self.log_path, ports=(self._port,), env=env, cwd=self._code, timeout=60.0
        )

    def before_start(self, run_directory: Path) -> None:
        """
        Called with the run's directory, its configuration written, before the daemon starts
        (a subclass seeds the spool here).

        @param run_directory: the run's directory.
        """

    def _launcher(self) -> list[str]:
        # twistd itself, or twistd inside the profiling wrapper.
        if self.profile_dir is None:
            return [str(Path(sys.executable).parent / "twistd")]
        wrapper = ROOT / "bench" / "profiled_twistd.py"
        return [sys.executable, str(wrapper), str(self.profile_dir)]

    def _write_config(self) -> str:
        # The daemon's configuration and accounts file; returns the configuration's path.
        domain = RECIPIENT.split("@")[1]
        (self._directory / "accounts.toml").write_text(
            f'domains = ["{domain}"]\n'
            + "".join(
                f'[[account]]\naddress = "{address}"\npassword = "{self._hash}"\n'
                for address in self._accounts
            )
        )
        config = self._directory / "mdtwist.toml"
        config.write_text(
            f"""[server]
hostname = "mx.{domain}"
processes = {self.processes}

[smtp]
{self._smtp_extra}

[[smtp.listen]]
endpoint = "tcp:{self._port}:interface=127.0.0.1"
mode = "mx"

[directory]
backend = "file"

[directory.file]
path = "accounts.toml"

[spool]
directory = "spool"

[delivery]
local = "maildir"
maildir_root = "mail"
{self._delivery_extra}

{self._extra}
"""
        )
        return str(config)

    def queue_run(self) -> None:
        """
        Ask the daemon for a queue run (what C{mdtwistctl queue run} sends, from this process
        so that no interpreter start-up is timed): every queued message is tried now and the
        dead-host cache is forgotten, as C{postqueue -f} does for Postfix.

        @raise PeerError: when the control channel fails.
        """
        try:
            call(self._directory / "spool" / "control.sock", QueueRun)
        except ControlClientError as e:
            raise PeerError(f"queue run: {e}") from e

    def delivered(self, count: int) -> bool:
        """
        Tell whether the accounts' Maildirs hold every message of the run.

        @param count: how many deliveries the run asked for: messages times recipients.
        """
        return sum(_count_files(self._new_folder(a)) for a in self._accounts) >= count

    def finish(self) -> None:
        """
        Stop the daemon and delete the run's directory.
        """
        self.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def close(self) -> None:
        """
        Stop the daemon (SIGTERM, SIGKILL after 60 s), if it runs.
        """
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, grace=60.0)


#: The Postfix queue folders that hold mail not yet delivered.
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


class PostfixServer:
    """
    A private Postfix instance: configuration and queue in one directory, discard delivery.

    @ivar name: C{"postfix"}.
    @ivar directory: the instance's directory (C{etc}, C{spool}, C{data}, C{maillog}).
    """

    name = "postfix"

    def __init__(self, directory: Path, *, extra_main_cf: str = "") -> None:
        """
        Write the configuration, check it, and start the instance.

        @param directory: an empty directory.
        @param extra_main_cf: more main.cf lines, appended (a later line overrides an earlier
            one), such as C{relayhost = ...}.
        @raise PeerError: when the configuration is refused or the port does not open.
        """
        self.directory = directory
        self._extra_main_cf = extra_main_cf
        self._port = free_port()
        self._postfix = find_program("postfix")
        self._write_config()
        self._check()
        self._master = 0
        self._start()

    @property
    def port(self) -> int:
        """
        The smtpd port.
        """
        return self._port

    @property
    def pid(self) -> int:
        """
        The master process id.
        """
        return self._master

    def _write_config(self) -> None:
        # main.cf and master.cf in etc/; the queue in spool/, the data in data/.
        etc, spool, data = (self.directory / n for n in ("etc", "spool", "data"))
        for folder in (self.directory, etc, spool, data):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        shutil.chown(data, "postfix", "postfix")
        (etc / "main.cf").write_text(_main_cf(self.directory) + self._extra_main_cf)
        (etc / "master.cf").write_text(_master_cf(self._port))

    def _check(self) -> None:
        # "postfix check" (which also creates the queue folders); its errors need a tty.
        command = f"{self._postfix} -c {self.directory / 'etc'} check"
        output = run_checked(["script", "-qec", command, "/dev/null"])
        if "fatal" in output or "error" in output:
            raise PeerError(f"postfix check: {output}")

    def _start(self) -> None:
        # "postfix start" puts master in the background; its pid is in spool/pid/master.pid.
        run_checked(
            ["script", "-qec", f"{self._postfix} -c {self.directory / 'etc'} start", "/dev/null"]
        )
        pid_file = self.directory / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 30.0
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise PeerError(f"postfix did not write {pid_file}")
            time.sleep(0.05)
        self._master = int(pid_file.read_text().strip())
        wait_for_port(self._port, timeout=30.0, log_path=self.directory / "maillog")

    def queued(self, queues: Sequence[str] = _QUEUES) -> int:
        """
        Count the messages in the queue.

        @param queues: the queue folders to count, by default all that hold undelivered mail.
        @return: how many queue files wait in those folders.
        """
        total = 0
        for queue in queues:
            for _folder, _dirs, files in os.walk(self.directory / "spool" / queue):
                total += len(files)
        return total

    def prepare(self) -> None:
        """
        Wait (at most 300 s) until the queue is empty.

        @raise PeerError: when it does not drain.
        """
        deadline = time.monotonic() + 300.0
        while self.queued():
            if time.monotonic() > deadline:
                raise PeerError(f"postfix queue still holds {self.queued()} messages")
            time.sleep(0.1)

    def delivered(self, count: int) -> bool:
        """
        Tell whether the queue is empty again.

        @param count: how many deliveries the run asked for (not needed: the queue is empty
            then).
        """
        return self.queued() == 0

    def flush(self) -> None:
        """
        Ask for the delivery of every deferred message now (C{postqueue -f}), which also ends
        the qmgr's "dead destination" throttles.

        @raise PeerError: when postqueue fails.
        """
        postqueue = find_program("postqueue")
        run_checked(["script", "-qec", f"{postqueue} -c {self.directory / 'etc'} -f", "/dev/null"])

    def finish(self) -> None:
        """
        Nothing to do: the instance stays up for the next run.
        """

    def close(self) -> None:
        """
        Stop master with SIGTERM, then SIGKILL whatever of its tree is left after 20 s.
        """
        if not self._master:
            return
        pids = tree_pids(self._master)
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + 20.0
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        _signal_all([pid for pid in pids if _alive(pid)], signal.SIGKILL)
        self._master = 0


class PostfixMaildirServer(PostfixServer):
    """
    A private Postfix like L{PostfixServer}, but delivering into a Maildir as mdtwist does:
    C{example.test} is a virtual mailbox domain, and virtual(8) writes every message for it
    into one Maildir under the instance's C{mail/} folder, or with C{mailboxes} every
    recipient's copy into that recipient's own Maildir.
    """

    name = "postfix-maildir"

    def __init__(
        self, directory: Path, *, mailboxes: Sequence[str] = (), extra_main_cf: str = ""
    ) -> None:
        """
        Write the configuration, check it, and start the instance.

        @param directory: an empty directory.
        @param mailboxes: addresses of C{example.test}, each with a Maildir of its own (a
            C{texthash} table), the only recipients accepted then; when empty, every local part
            of the domain is delivered into L{RECIPIENT}'s Maildir (a C{static} table).
        @param extra_main_cf: more main.cf lines, appended (such as C{message_size_limit}).
        @raise PeerError: when the configuration is refused or the port does not open.
        """
        owner = pwd.getpwnam("postfix")
        mail = directory / "mail"
        mail.mkdir(parents=True)
        os.chown(mail, owner.pw_uid, owner.pw_gid)
        maps = "static:example.test/rcpt/Maildir/"
        if mailboxes:
            table = directory / "etc" / "mailboxes"
            table.parent.mkdir(parents=True)
            table.write_text("".join(f"{a} {_mailbox_path(a)}\n" for a in mailboxes))
            maps = f"texthash:{table}"
        super().__init__(
            directory,
            extra_main_cf=(
                "mydestination = localhost\n"
                "virtual_mailbox_domains = example.test\n"
                f"virtual_mailbox_base = {mail}\n"
                f"virtual_mailbox_maps = {maps}\n"
                f"virtual_minimum_uid = {owner.pw_uid}\n"
                f"virtual_uid_maps = static:{owner.pw_uid}\n"
                f"virtual_gid_maps = static:{owner.pw_gid}\n"
                f"{extra_main_cf}"
            ),
        )
        self.maildir = mail / _mailbox_path(RECIPIENT)
        self._maildirs = [mail / _mailbox_path(a) for a in mailboxes] or [self.maildir]

    def prepare(self) -> None:
        """
        Wait until the queue is empty, then empty the Maildirs.

        @raise PeerError: when the queue does not drain.
        """
        super().prepare()
        for maildir in self._maildirs:
            shutil.rmtree(maildir, ignore_errors=True)

    def delivered(self, count: int) -> bool:
        """
        Tell whether the Maildirs hold every message of the run.

        @param count: how many deliveries the run asked for: messages times recipients.
        """
        files = sum(_count_files(maildir / "new") for maildir in self._maildirs)
        return files >= count and self.queued() == 0


def _mailbox_path(address: str) -> str:
    # Where virtual(8) keeps an address's Maildir, below virtual_mailbox_base.
    local, domain = address.split("@")
    return f"{domain}/{local}/Maildir/"


def _signal_all(pids: list[int], number: signal.Signals) -> None:
    # Send a signal to each of the given processes, ignoring those already gone.
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)


def _alive(pid: int) -> bool:
    # Whether a process exists and is not a zombie.
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _main_cf(directory: Path) -> str:
    # Postfix main.cf: private paths, example.test local, every local part accepted, discarded.
    return f"""compatibility_level = 3.6
queue_directory = {directory}/spool
data_directory = {directory}/data
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.example.test
mydomain = example.test
myorigin = $mydomain
mydestination = example.test, localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
local_recipient_maps =
local_transport = discard:local
alias_maps =
alias_database =
biff = no
smtputf8_enable = no
maillog_file_prefixes = {directory}
maillog_file = {directory}/maillog
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
"""


#: master.cf services other than smtpd: name, type, private, unpriv, wakeup, maxproc, command.
_SERVICES = (
    ("pickup", "unix", "n", "-", "60", "1", "pickup"),
    ("cleanup", "unix", "n", "-", "-", "0", "cleanup"),
    ("qmgr", "unix", "n", "-", "300", "1", "qmgr"),
    ("rewrite", "unix", "-", "-", "-", "-", "trivial-rewrite"),
    ("bounce", "unix", "-", "-", "-", "0", "bounce"),
    ("defer", "unix", "-", "-", "-", "0", "bounce"),
    ("trace", "unix", "-", "-", "-", "0", "bounce"),
    ("verify", "unix", "-", "-", "-", "1", "verify"),
    ("flush", "unix", "n", "-", "1000?", "0", "flush"),
    ("proxymap", "unix", "-", "-", "-", "-", "proxymap"),
    ("showq", "unix", "n", "-", "-", "-", "showq"),
    ("error", "unix", "-", "-", "-", "-", "error"),
    ("retry", "unix", "-", "-", "-", "-", "error"),
    ("discard", "unix", "-", "-", "-", "-", "discard"),
    ("virtual", "unix", "-", "n", "-", "-", "virtual"),
    ("smtp", "unix", "-", "-", "-", "-", "smtp"),
    ("relay", "unix", "-", "-", "-", "-", "smtp"),
    ("anvil", "unix", "-", "-", "-", "1", "anvil"),
    ("scache", "unix", "-", "-", "-", "1", "scache"),
    ("postlog", "unix-dgram", "n", "-", "-", "1", "postlogd"),
)


def _master_cf(port: int) -> str:
    # Postfix master.cf: smtpd on the loopback port, no chroot anywhere.
    lines = [f"127.0.0.1:{port} inet n - n - - smtpd"]
    for name, kind, private, unpriv, wakeup, maxproc, command in _SERVICES:
        lines.append(f"{name} {kind} {private} {unpriv} n {wakeup} {maxproc} {command}")
    return "\n".join(lines) + "\n"
