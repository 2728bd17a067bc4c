"""
A counting smtp-sink: the smart host of the outbound benchmark.

The sink keeps one loopback port for the whole series and is started and stopped once per run,
so that the servers under test can queue their mail while nothing listens there. It writes each
message it accepts to a file (C{-d}) in a dump folder on tmpfs, so that counting the files is
cheap and the sink does not pay the root disk's file-creation cost; the folder is emptied before
every start. smtp-sink drops to the C{postfix} user, so the folders are 0755 and 0777.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.integration.peers import (
    PeerError,
    find_program,
    free_port,
    port_accepts,
    start_process,
    stop_process,
)

#: Where the dump folder goes by default: tmpfs, when the machine has it.
DEFAULT_DUMP_PARENT = Path("/dev/shm")


class CountingSink:
    """
    One smtp-sink on 127.0.0.1 that can be stopped and started again on the same port.

    @ivar port: its port.
    @ivar directory: its private directory (the log and the dump folder).
    @ivar dump: the folder that gets one file per message.
    """

    def __init__(self, parent: Path | None = None) -> None:
        """
        @param parent: where to make the private directory; L{DEFAULT_DUMP_PARENT} when it
            exists, else the system temp directory.
        """
        if parent is None and DEFAULT_DUMP_PARENT.is_dir():
            parent = DEFAULT_DUMP_PARENT
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="mdtwist-sink-", dir=parent))
        self.directory.chmod(0o755)
        self.dump = self.directory / "mail"
        self.log_path = self.directory / "sink.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """
        The smtp-sink process id.
        """
        if self._process is None:
            raise PeerError("smtp-sink is not running")
        return self._process.pid

    def start(self) -> None:
        """
        Empty the dump folder and start smtp-sink; return when its port accepts connections.

        @raise PeerError: when something else holds the port, or the sink does not start.
        """
        if port_accepts(self.port):
            raise PeerError(f"something else listens on the sink's port {self.port}")
        shutil.rmtree(self.dump, ignore_errors=True)
        self.dump.mkdir()
        self.dump.chmod(0o777)
        command = [
            find_program("smtp-sink"), "-u", "postfix", "-h", "sink.test",
            "-d", f"{self.dump}/%H%M%S.", f"127.0.0.1:{self.port}", "256",
        ]  # fmt: skip
        self._process = start_process(command, self.log_path, ports=(self.port,))

    def received(self) -> int:
        """
        Count the messages received since the last start.

        @return: how many dump files there are.
        """
        try:
            with os.scandir(self.dump) as entries:
                return sum(1 for _ in entries)
        except FileNotFoundError:
            return 0

    def stop(self) -> None:
        """
        Stop smtp-sink by its PID, if it runs.
        """
        process, self._process = self._process, None
        if process is not None:
            stop_process(process)

    def close(self) -> None:
        """
        Stop smtp-sink and remove the private directory.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
