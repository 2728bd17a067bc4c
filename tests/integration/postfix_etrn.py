"""
A private Postfix that holds mail for a domain until an ETRN asks for it: the provider our
dequeue signal client talks to in the integration tests.

The instance has its own configuration and queue in a temporary directory, listens on a free
loopback port, and leaves the system's Postfix alone. Mail for the held domain goes to a
transport that is listed in C{defer_transports}, so Postfix keeps it until a flush, which is
what ETRN (RFC 1985) asks for; the flush delivers it to the next hop given here (the office's
SMTP port). C{master} starts as root and its daemons run as the C{postfix} user, so the
directory is made under the system temp directory with every parent searchable.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import tempfile
import time
from pathlib import Path

from tests.integration.peers import PeerError, find_program, free_port, run_checked, wait_for_port

#: The master.cf services besides smtpd (no chroot anywhere).
_SERVICES = """\
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
smtp      unix  - - n -     - smtp
etrnonly  unix  - - n -     - smtp
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class HoldingPostfix:
    """
    A private Postfix that holds the mail of one domain until ETRN.

    @ivar port: its SMTP port on 127.0.0.1.
    @ivar directory: its private directory.
    """

    def __init__(self, held_domain: str, next_hop_port: int, port: int | None = None) -> None:
        """
        Write the configuration; L{start} starts the instance.

        @param held_domain: the domain whose mail is held until ETRN.
        @param next_hop_port: where that mail goes when released (127.0.0.1).
        @param port: the SMTP port; a free one when L{None}.
        """
        self.held_domain = held_domain
        self.port = port or free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="pfx-"))
        os.chmod(self.directory, 0o755)
        self._postfix = find_program("postfix")
        self._master = 0
        etc, spool, data = (self.directory / n for n in ("etc", "spool", "data"))
        for folder in (etc, spool, data):
            folder.mkdir()
            folder.chmod(0o755)
        shutil.chown(data, "postfix", "postfix")
        (etc / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {spool}
data_directory = {data}
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.test
mydomain = relay.test
myorigin = relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
local_transport = error:local delivery disabled
alias_maps =
alias_database =
relay_domains = {held_domain}
transport_maps = inline:{{ {held_domain}=etrnonly:[127.0.0.1]:{next_hop_port} }}
defer_transports = etrnonly
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_etrn_restrictions = permit_mynetworks, reject
maillog_file_prefixes = {self.directory}
maillog_file = {self.directory}/maillog
smtp_host_lookup = native
disable_dns_lookups = yes
smtputf8_enable = no
biff = no
"""
        )
        (etc / "master.cf").write_text(f"127.0.0.1:{self.port} inet n - n - - smtpd\n" + _SERVICES)

    @property
    def log_path(self) -> Path:
        """Its mail log."""
        return self.directory / "maillog"

    def _postfix_command(self, *args: str) -> str:
        # Postfix's commands want a terminal for their error messages: run them under script.
        command = " ".join([self._postfix, "-c", str(self.directory / "etc"), *args])
        return run_checked(["script", "-qec", command, "/dev/null"])

    def start(self) -> None:
        """
        Check the configuration (which makes the queue folders), start master, wait for the
        port.

        @raise PeerError: when the configuration is refused or the port does not open.
        """
        output = self._postfix_command("check")
        if "fatal" in output or "error" in output:
            raise PeerError(f"postfix check: {output}")
        self._postfix_command("start")
        pid_file = self.directory / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 30.0
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise PeerError(f"postfix did not write {pid_file}")
            time.sleep(0.05)
        self._master = int(pid_file.read_text().strip())
        wait_for_port(self.port, timeout=30.0, log_path=self.log_path)

    def stop(self) -> None:
        """
        Stop master with SIGTERM (its daemons go with it), SIGKILL after 20 s; remove the
        directory.
        """
        if self._master:
            pid, self._master = self._master, 0
            try:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 20.0
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # The daemons master started exit when master's pipes close; wait for them to let
            # go of the queue before removing it.
            deadline = time.monotonic() + 20.0
            while self._children_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        shutil.rmtree(self.directory, ignore_errors=True)

    def _children_alive(self) -> bool:
        # Any process whose command line names this instance's configuration or queue.
        marker = str(self.directory).encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (
                    marker in (entry / "cmdline").read_bytes()
                    or marker in os.readlink(entry / "cwd").encode()
                ):
                    return True
            except OSError:
                continue
        return False

    def inject(self, recipient: str, body: bytes, sender: str = "sender@remote.test") -> None:
        """
        Queue a message for the held domain through Postfix's SMTP port.

        @param recipient: the recipient.
        @param body: the message (headers and body, CRLF line ends).
        @param sender: the envelope sender.
        """
        with smtplib.SMTP("127.0.0.1", self.port, local_hostname="client.test", timeout=30) as s:
            s.sendmail(sender, [recipient], body)

    def deferred(self) -> int:
        """
        @return: how many messages wait in the deferred queue (held mail is there).
        """
        total = 0
        for _folder, _dirs, files in os.walk(self.directory / "spool" / "deferred"):
            total += len(files)
        return total

    def log(self) -> str:
        """@return: the mail log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still "exists"; master is not our child (postfix start forks).
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
