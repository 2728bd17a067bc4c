# -*- test-case-name: tests.control.test_client -*-
"""
The C{mdtwistctl} end of the control socket: one command, one answer, on a blocking socket.

A command-line program sends one command and waits for its answer, so a plain blocking socket
with a timeout does the job without a reactor (which could not be started twice in one Python
process, as the tests call the program). The boxes are made and read with AMP's own
serialisers for the same command classes the server uses.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path
from typing import BinaryIO

from twisted.protocols import amp

from mdtwist.control.registry import Answer

#: Seconds to wait for the server's answer.
ANSWER_TIMEOUT = 120.0


class ControlClientError(Exception):
    """
    A control command did not get an answer; the message is one line for the operator.
    """


def connect_error(path: Path, error: OSError) -> ControlClientError:
    """
    Say why the control socket could not be reached.

    @param path: the socket.
    @param error: what C{connect} raised.
    @return: the error to show.
    """
    if error.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
        return ControlClientError(f"the server is not running (no server on {path})")
    if error.errno in (errno.EACCES, errno.EPERM):
        return ControlClientError(
            f"no permission to use the control socket {path}"
            " (run as the user the server runs as, or as root)"
        )
    return ControlClientError(f"cannot connect to {path}: {error.strerror or error}")


def call(
    path: Path,
    command: type[amp.Command],
    arguments: Answer | None = None,
    *,
    timeout: float = ANSWER_TIMEOUT,
) -> Answer:
    """
    Send one command to the server and wait for its answer.

    @param path: the control socket.
    @param command: the command.
    @param arguments: its arguments.
    @param timeout: seconds to wait for the connection and for the answer.
    @return: the answer.
    @raise ControlClientError: when the server cannot be reached, does not answer, or answers
        with an error.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as e:
            raise connect_error(path, e) from None
        return exchange(sock, command, arguments or {})


def exchange(sock: socket.socket, command: type[amp.Command], arguments: Answer) -> Answer:
    """
    Send one command on a connected socket and read its answer.

    @param sock: the connection.
    @param command: the command.
    @param arguments: its arguments.
    @return: the answer.
    @raise ControlClientError: as L{call}.
    """
    box = command.makeArguments(arguments, None)
    box[b"_command"] = command.commandName
    box[b"_ask"] = b"1"
    name = command.commandName.decode()
    try:
        sock.sendall(box.serialize())
        with sock.makefile("rb") as stream:
            answer = _read_box(stream)
    except TimeoutError:
        raise ControlClientError(f"no answer from the server to {name}") from None
    except OSError as e:
        raise ControlClientError(f"the connection to the server failed: {e.strerror}") from None
    if answer is None:
        raise ControlClientError(f"the server closed the connection before answering {name}")
    if b"_error" in answer:
        description = answer.get(b"_error_description", b"").decode("utf-8", "replace")
        if answer.get(b"_error_code") == b"CONTROL_ERROR":
            raise ControlClientError(description)
        raise ControlClientError(f"the server failed to carry out {name}: {description}")
    parsed: Answer = command.parseResponse(answer, None)
    return parsed


def _read_box(stream: BinaryIO) -> dict[bytes, bytes] | None:
    # An AMP box: key and value strings, each after its 16-bit length, ended by an empty key.
    box: dict[bytes, bytes] = {}
    while True:
        key = _read_string(stream)
        if key is None:
            return None
        if not key:
            return box
        value = _read_string(stream)
        if value is None:
            return None
        box[key] = value


def _read_string(stream: BinaryIO) -> bytes | None:
    head = stream.read(2)
    if len(head) < 2:
        return None
    (length,) = struct.unpack("!H", head)
    data = stream.read(length)
    return data if len(data) == length else None
