"""
Run the real mdtwist daemon (C{python -m twisted mdtwist}) for integration tests.

The daemon gets a private directory with its configuration, accounts, certificate, spool and
mailboxes, and free loopback ports for an C{mx} and a C{submission} listener.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

from mdtwist.directory.passwords import hash_password
from mdtwist.spool.store import SpoolReader
from tests.integration.peers import free_port, start_process, stop_process
from tests.support.tls import make_certificate

#: Test accounts: address -> password. All in the domain example.test.
PASSWORDS = {"alice@example.test": "alice-pw", "bob@example.test": "bob-pw"}

_ROOT = Path(__file__).resolve().parents[2]


class Daemon:
    """
    One mdtwist process with its private directory.

    @ivar directory: the private directory.
    @ivar mx_port: the port of the C{mx} listener.
    @ivar submission_port: the port of the C{submission} listener.
    @ivar process: the running process, or L{None}.
    """

    def __init__(
        self,
        directory: Path,
        *,
        trusted_networks: Sequence[str] = (),
        smtp_extra: str = "",
        delivery: str = "",
        queue: str = "",
        outbound: str = "",
        domain: str = "example.test",
        server_extra: str = "",
        accounts_extra: str = "",
        extra: str = "",
        extra_ports: Sequence[int] = (),
        interface: str = "127.0.0.1",
        hostname: str = "mail.example.test",
        accounts: Mapping[str, str] | None = None,
        logger: str = "mdtwist.logging.text_observer",
    ) -> None:
        """
        Write the configuration; the process starts with L{start}.

        @param directory: an empty private directory.
        @param trusted_networks: networks that may relay without AUTH.
        @param smtp_extra: more TOML lines for the C{[smtp]} table.
        @param delivery: the C{[delivery]} table's lines; Maildir under the directory by default.
        @param queue: more lines for the C{[queue]} table; C{remote_interval} and
            C{delay_after_temp_error} are 1 s unless given here.
        @param outbound: lines for the C{[outbound]} table. Unless they name C{dns_servers},
            DNS goes to a loopback port where nothing listens (every lookup fails at once and
            temporarily), so no test ever asks a resolver outside this machine.
        @param domain: the local domain; its accounts are alice and bob with the passwords of
            L{PASSWORDS}.
        @param server_extra: more TOML lines for the C{[server]} table.
        @param accounts_extra: more lines for the C{[directory.file]} table.
        @param extra: more TOML tables, appended at the end (such as C{[[http.listen]]}).
        @param extra_ports: more ports L{start} waits for (those of C{extra}'s listeners).
        @param interface: the loopback address the SMTP listeners bind to.
        @param hostname: C{server.hostname}.
        @param accounts: the accounts (address -> password) instead of L{PASSWORDS}; their
            addresses are used as they are.
        @param logger: the log observer factory given to C{twistd --logger} (text lines, or
            C{mdtwist.logging.json_observer} for JSON).
        """
        directory = directory.resolve()
        self.directory = directory
        self.interface = interface
        self.mx_port = free_port(interface)
        self.submission_port = free_port(interface)
        self.process: subprocess.Popen[bytes] | None = None
        self.extra_ports = tuple(extra_ports)
        self.logger = logger
        directory.mkdir(parents=True, exist_ok=True)
        # A UNIX socket's path is limited to 107 bytes: the control socket lives in a short
        # private directory, removed with this object.
        control = Path(tempfile.mkdtemp(prefix="mdtwist-control-"))
        weakref.finalize(self, shutil.rmtree, control, ignore_errors=True)
        self.control_socket = control / "control.sock"
        self.certificate, self.key = make_certificate(directory / "tls", "mail.example.test")
        lines = [f'domains = ["{domain}"]']
        for address, password in (accounts or PASSWORDS).items():
            if accounts is None:
                address = address.replace("example.test", domain)
            lines += [
                "[[account]]",
                f'address = "{address}"',
                f'password = "{hash_password(password)}"',
            ]
        (directory / "accounts.toml").write_text("\n".join(lines) + "\n")
        networks = ", ".join(f'"{n}"' for n in trusted_networks)
        self.config = directory / "mdtwist.toml"
        self.config.write_text(
            f"""
[server]
hostname = "{hostname}"
{server_extra}

[smtp]
trusted_networks = [{networks}]
{smtp_extra}

[tls]
certificate = "tls/cert.pem"
private_key = "tls/key.pem"

[[smtp.listen]]
endpoint = "tcp:{self.mx_port}:interface={interface}"
mode = "mx"

[[smtp.listen]]
endpoint = "tcp:{self.submission_port}:interface={interface}"
mode = "submission"

[directory]
backend = "file"

[directory.file]
path = "accounts.toml"
{accounts_extra}

[spool]
directory = "spool"

[delivery]
{delivery or 'maildir_root = "mail"'}
run_interval = 1.0

[queue]
{"" if "remote_interval" in queue else "remote_interval = 1.0"}
{"" if "delay_after_temp_error" in queue else "delay_after_temp_error = 1.0"}
{queue}

[control]
socket = "{self.control_socket}"

[outbound]
{outbound if "dns_servers" in outbound else 'dns_servers = ["127.0.0.1:9"]' + chr(10) + outbound}

{extra}
"""
        )
        self.log_path = directory / "mdtwist.log"

    @property
    def spool(self) -> Path:
        """
        The spool directory.
        """
        return self.directory / "spool"

    def maildir(self, address: str) -> Path:
        """
        @param address: a local address, such as C{alice@example.test}.
        @return: its Maildir C{new} folder.
        """
        local, domain = address.split("@")
        return self.directory / "mail" / domain / local / "Maildir" / "new"

    def messages(self, address: str) -> list[bytes]:
        """
        @param address: a local address.
        @return: the messages delivered to it so far.
        """
        folder = self.maildir(address)
        if not folder.is_dir():
            return []
        return [path.read_bytes() for path in sorted(folder.iterdir())]

    def queue_ids(self) -> list[str]:
        """
        @return: the queue ids the spool holds (read from the database, as C{mdtwistctl}
            does).
        """
        reader = SpoolReader(self.spool)
        try:
            return [entry.queue_id for entry in reader.list()]
        finally:
            reader.close()

    def command(self, *extra: str) -> list[str]:
        """
        @return: the command line that runs the daemon in the foreground.
        """
        twistd = str(Path(sys.executable).parent / "twistd")
        return [
            twistd,
            "--nodaemon",
            "--pidfile=",
            "--logger",
            self.logger,
            "mdtwist",
            "--config",
            str(self.config),
            *extra,
        ]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """
        Run C{mdtwistctl --config <this daemon's configuration> ARGS}.

        @param args: the command and its options.
        @return: the finished program, with its output as text.
        """
        program = str(Path(sys.executable).parent / "mdtwistctl")
        return subprocess.run(
            [program, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60.0,
            check=False,
            cwd=_ROOT,
        )

    def start(self) -> None:
        """
        Start the daemon and wait until both listeners accept connections.
        """
        env = dict(os.environ, PYTHONPATH=str(_ROOT))
        self.process = start_process(
            self.command(),
            self.log_path,
            ports=(self.mx_port, self.submission_port, *self.extra_ports),
            host=self.interface,
            env=env,
            cwd=_ROOT,
            timeout=30.0,
        )

    def stop(self) -> int:
        """
        Stop the daemon with SIGTERM (SIGKILL after a grace period).

        @return: its exit status.
        """
        process, self.process = self.process, None
        return stop_process(process, grace=20.0) if process is not None else 0

    def kill(self) -> None:
        """
        Kill the daemon at once with SIGKILL, as a crash would.
        """
        process, self.process = self.process, None
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def log(self) -> str:
        """
        @return: everything the daemon wrote so far.
        """
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
