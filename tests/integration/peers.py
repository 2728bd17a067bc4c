"""
Helpers to run real peer programs (slapd, Postfix, Dovecot ...) for integration tests.

Every peer runs as a subprocess in a session of its own, with stdin from C{/dev/null} and its
output in a log file in the test's private directory. It listens on free loopback ports, and is
stopped by its own PID: SIGTERM, then SIGKILL after a grace period. Nothing here ever signals a
process by name.

These helpers block (they sleep while waiting for a port); they are for test set-up and
tear-down, not for code under test.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Where Debian installs daemons; often not on the C{PATH} of an ordinary user.
_SYSTEM_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


class PeerError(Exception):
    """
    A peer program is missing, failed to start, or did not open its port.

    The message includes the end of the peer's log, when there is one.
    """


def find_program(name: str) -> str:
    """
    Find a program on the C{PATH} or in the system binary directories.

    @param name: the program name, such as C{slapd}.
    @return: its full path.
    @raise PeerError: when it is not installed (run C{make peers}).
    """
    found = shutil.which(name)
    if found is None:
        for directory in _SYSTEM_DIRS:
            candidate = os.path.join(directory, name)
            if os.access(candidate, os.X_OK):
                found = candidate
                break
    if found is None:
        raise PeerError(f"{name} is not installed; run 'make peers' (tools/install-peers.sh)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """
    Find a TCP port that nothing listens on now.

    The port is only free at the moment of the call; start the peer on it soon after.

    @param host: the address the peer will listen on.
    @return: the port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """
    Tell whether a TCP port accepts connections now.

    @param port: the port.
    @param host: the address.
    @return: whether a connection was accepted (it is closed again at once).
    """
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_for_port(
    port: int,
    host: str = "127.0.0.1",
    *,
    timeout: float = 10.0,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> None:
    """
    Wait until a TCP port accepts connections.

    @param port: the port.
    @param host: the address.
    @param timeout: how many seconds to wait at most.
    @param process: the process that should open the port; if it exits first, waiting stops.
    @param log_path: the process's log, quoted in the error.
    @raise PeerError: when the process exits or the time is up first.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise PeerError(
                f"{process.args!r} exited with status {process.returncode} before port {port}"
                f" opened{_log_tail(log_path)}"
            )
        if port_accepts(port, host):
            return
        if time.monotonic() > deadline:
            raise PeerError(f"port {host}:{port} not open after {timeout} s{_log_tail(log_path)}")
        time.sleep(0.01)


def start_process(
    argv: Sequence[str],
    log_path: Path,
    *,
    ports: Sequence[int] = (),
    host: str = "127.0.0.1",
    timeout: float = 10.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """
    Start a peer in a session of its own and wait until its ports accept connections.

    @param argv: the program and its arguments; the program must stay in the foreground.
    @param log_path: the file that gets the program's output (appended to).
    @param ports: the TCP ports to wait for.
    @param host: the address the ports are on.
    @param timeout: the most seconds to wait for each port.
    @param env: the environment; by default the caller's.
    @param cwd: the working directory; by default the caller's.
    @return: the running process; give it to L{stop_process} when done.
    @raise PeerError: when the program does not start or does not open its ports (it is then
        stopped again).
    """
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    try:
        for port in ports:
            wait_for_port(port, host, timeout=timeout, process=process, log_path=log_path)
    except BaseException:
        stop_process(process)
        raise
    return process


def stop_process(process: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """
    Stop a process started by L{start_process}: SIGTERM, and SIGKILL if it is still there later.

    Only this process is signalled, by its PID. Stopping a process that has already exited does
    nothing.

    @param process: the process.
    @param grace: seconds between SIGTERM and SIGKILL.
    @return: the process's exit status.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_checked(argv: Sequence[str], *, input_text: str | None = None) -> str:
    """
    Run a short set-up command and return its output.

    @param argv: the program and its arguments.
    @param input_text: text for its stdin; by default stdin is C{/dev/null}.
    @return: its standard output.
    @raise PeerError: when it exits with a non-zero status; the message has its output.
    """
    result = subprocess.run(
        list(argv),
        input=input_text,
        stdin=subprocess.DEVNULL if input_text is None else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise PeerError(
            f"{' '.join(argv)} failed with status {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    # The end of a peer's log, to put in an error message.
    if log_path is None:
        return ""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    tail = "\n".join(text.splitlines()[-lines:])
    return f"; the end of {log_path}:\n{tail}"


def _stat_fields(pid: int | str) -> list[str] | None:
    # The fields of /proc/PID/stat after the command name, which is in parentheses and may
    # hold spaces; None when the process is gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def _parents() -> dict[int, int]:
    # The parent of every process, read once.
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry.name)
            if fields is not None:
                table[int(entry.name)] = int(fields[1])
    return table


def children(pid: int) -> list[int]:
    """
    @param pid: a process id.
    @return: the processes whose parent it is.
    """
    return [child for child, parent in _parents().items() if parent == pid]


def descendants(pid: int) -> list[int]:
    """
    @param pid: a process id.
    @return: its children, their children and so on, from one reading of the process table.
    """
    table = _parents()
    found: list[int] = []
    todo = [pid]
    while todo and len(found) <= len(table):
        current = todo.pop()
        below = [child for child, parent in table.items() if parent == current]
        found.extend(below)
        todo.extend(below)
    return found


def command_line(pid: int) -> bytes:
    """
    @param pid: a process id.
    @return: its command line as the kernel keeps it (arguments ended by NUL bytes); empty
        when the process is gone.
    """
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    """
    @param pid: a process id.
    @return: whether it runs (a zombie does not).
    """
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"
