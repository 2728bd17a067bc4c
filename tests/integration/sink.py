"""
Postfix's smtp-sink as an MX host or smart host for outbound tests.

smtp-sink runs as the C{postfix} user (it refuses to run as root), so its dump directory lives
in a short 0755 directory of its own under the system temp directory, removed on stop.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.integration.peers import find_program, free_port, start_process, stop_process


class Sink:
    """
    One smtp-sink process that writes each message it accepts to a file.

    @ivar address: the loopback address it listens on.
    @ivar port: its port.
    """

    def __init__(self, address: str = "127.0.0.1", options: Sequence[str] = ()) -> None:
        """
        @param address: a loopback address (127.0.0.0/8).
        @param options: more smtp-sink options, e.g. C{("-f", "RCPT", "-B", "550 5.1.1 no")}.
        """
        self.address = address
        self.port = free_port(address)
        self.options = tuple(options)
        self.directory = Path(tempfile.mkdtemp(prefix="sink-"))
        os.chmod(self.directory, 0o755)
        self.dump = self.directory / "mail"
        self.dump.mkdir()
        os.chmod(self.dump, 0o777)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start it and wait until it accepts connections.
        """
        self.process = start_process(
            [
                find_program("smtp-sink"),
                "-u",
                "postfix",
                "-h",
                f"sink-{self.address}",
                "-d",
                f"{self.dump}/%H%M%S.",
                *self.options,
                f"{self.address}:{self.port}",
                "256",
            ],
            self.directory / "sink.log",
            ports=(self.port,),
            host=self.address,
        )

    def stop(self) -> None:
        """
        Stop it by its PID and remove its directory.
        """
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)
        shutil.rmtree(self.directory, ignore_errors=True)

    def messages(self) -> list[bytes]:
        """
        @return: every message received completely so far, each with smtp-sink's
            C{X-Mail-Args} and C{X-Rcpt-Args} lines that show the envelope.
        """
        if not self.dump.is_dir():
            return []
        # smtp-sink writes a message into its file as it arrives: a file it still has open is
        # not complete yet (once closed, a file is never opened again). List first, then look
        # at the open files: a file created between the two is not listed, where the other
        # order would take a file opened meanwhile for a complete one.
        listed = sorted(self.dump.iterdir())
        writing = self._open_files()
        return [path.read_bytes() for path in listed if str(path) not in writing]

    def _open_files(self) -> set[str]:
        # The paths of the files smtp-sink has open now, from /proc.
        if self.process is None:
            return set()
        descriptors = Path(f"/proc/{self.process.pid}/fd")
        paths: set[str] = set()
        try:
            entries = list(descriptors.iterdir())
        except OSError:
            return paths
        for entry in entries:
            try:
                paths.add(os.readlink(entry))
            except OSError:
                continue  # closed meanwhile
        return paths


class SmartHost:
    """
    A private aiosmtpd smart host that requires STARTTLS and AUTH (see smarthost_server.py).

    @ivar port: its port on 127.0.0.1.
    @ivar certificate: its certificate (also the CA to trust: it is self-signed).
    """

    def __init__(self, directory: Path, login: str, password: str) -> None:
        """
        @param directory: a private directory for its certificate, log and messages.
        @param login: the AUTH login it accepts.
        @param password: the password it accepts.
        """
        from tests.support.tls import make_certificate

        self.directory = directory.resolve()
        self.port = free_port()
        self.certificate, self.key = make_certificate(self.directory / "tls", "smarthost.test")
        self.mail = self.directory / "mail"
        self.mail.mkdir(parents=True)
        self.login = login
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """
        Start it and wait until it accepts connections.
        """
        import sys

        script = Path(__file__).with_name("smarthost_server.py")
        self.process = start_process(
            [
                sys.executable,
                str(script),
                str(self.port),
                str(self.certificate),
                str(self.key),
                self.login,
                self.password,
                str(self.mail),
            ],
            self.directory / "smarthost.log",
            ports=(self.port,),
        )

    def stop(self) -> None:
        """
        Stop it by its PID.
        """
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def messages(self) -> list[bytes]:
        """
        @return: the messages it accepted, each with C{X-Test-*} envelope lines on top.
        """
        return [path.read_bytes() for path in sorted(self.mail.iterdir())]
