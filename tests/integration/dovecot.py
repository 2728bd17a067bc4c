"""
A private Dovecot for integration tests: LMTP (and POP3) on free loopback ports, and IMAP
(STARTTLS and implicit TLS) when given a certificate.

Users live in a passwd-file; mail is stored as Maildir under the private directory, owned by
uid/gid 65534 (mail processes refuse to run as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.integration.peers import find_program, free_port, start_process, stop_process

_MAIL_UID = 65534


class Dovecot:
    """
    One private Dovecot instance.

    @ivar lmtp_port: the LMTP port.
    @ivar pop3_port: the POP3 port.
    @ivar imap_port: the IMAP port (STARTTLS), when IMAP is on.
    @ivar imaps_port: the IMAP port with implicit TLS, when IMAP is on.
    """

    def __init__(
        self,
        directory: Path,
        users: Mapping[str, str],
        *,
        imap_tls: tuple[Path, Path] | None = None,
    ) -> None:
        """
        Write the configuration.

        @param directory: where Dovecot's log is copied when it stops.
        @param users: address -> plain password.
        @param imap_tls: certificate and key files: serve IMAP with them.
        """
        # Dovecot's own processes (auth, lmtp) run as other users and must reach every file,
        # and a Unix socket path must stay under 108 bytes; trial's temp directories are
        # private (0700) and deep, so Dovecot gets a short 0755 directory of its own.
        self.log_copy = directory
        self.directory = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.lmtp_port = free_port()
        self.pop3_port = free_port()
        self.imap_port = free_port() if imap_tls else 0
        self.imaps_port = free_port() if imap_tls else 0
        self.process: subprocess.Popen[bytes] | None = None
        d = self.directory
        for sub in ("run", "state", "mail"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # login and auth processes run as other users and must reach it
        lines = [
            f"{address}:{{PLAIN}}{password}:{_MAIL_UID}:{_MAIL_UID}::{d / 'mail' / address}::"
            for address, password in users.items()
        ]
        (d / "users").write_text("\n".join(lines) + "\n")
        os.chmod(d / "users", 0o644)
        imap = ""
        if imap_tls is not None:
            shutil.copy(imap_tls[0], d / "cert.pem")
            shutil.copy(imap_tls[1], d / "key.pem")
            imap = f"""
protocols = $protocols imap
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port}
    ssl = yes
  }}
}}
"""
        (d / "dovecot.conf").write_text(
            f"""
protocols = lmtp pop3
listen = 127.0.0.1
base_dir = {d}/run
state_dir = {d}/state
instance_name = mdtwist-test-{self.lmtp_port}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
ssl = {"yes" if imap_tls else "no"}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 100
mail_location = maildir:~/Maildir
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
{imap}
"""
        )
        subprocess.run(["chown", "-R", f"{_MAIL_UID}:{_MAIL_UID}", str(d / "mail")], check=True)

    def start(self) -> None:
        """
        Start Dovecot in the foreground and wait for both ports.
        """
        self.process = start_process(
            [find_program("dovecot"), "-F", "-c", str(self.directory / "dovecot.conf")],
            self.directory / "dovecot.out",
            ports=tuple(
                p for p in (self.lmtp_port, self.pop3_port, self.imap_port, self.imaps_port) if p
            ),
        )

    def stop(self) -> None:
        """
        Stop Dovecot by its PID.
        """
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
        self.log_copy.mkdir(parents=True, exist_ok=True)
        for name in ("dovecot.log", "dovecot.out"):
            if (self.directory / name).exists():
                shutil.copy(self.directory / name, self.log_copy / name)
        shutil.rmtree(self.directory, ignore_errors=True)

    def messages(self, address: str) -> list[bytes]:
        """
        @param address: a user.
        @return: the messages in the user's Maildir C{new} folder.
        """
        folder = self.directory / "mail" / address / "Maildir" / "new"
        if not folder.is_dir():
            return []
        return [path.read_bytes() for path in sorted(folder.iterdir())]
