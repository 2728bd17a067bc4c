"""
Tests for L{mdtwist.control.client}: the errors an operator sees, and one exchange on a socket
pair whose server end the test plays.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.control.client import ControlClientError, call, connect_error, exchange
from tests.control.test_registry import Echo


class ConnectErrorTests(SynchronousTestCase):
    """
    L{connect_error}: why the socket could not be reached, in one line.
    """

    def test_not_running(self) -> None:
        """
        No socket file, or nobody listening on it: the server is not running.
        """
        path = Path("/run/mdtwist/control.sock")
        for number in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
            error = connect_error(path, OSError(number, os.strerror(number)))
            self.assertEqual(str(error), f"the server is not running (no server on {path})")

    def test_no_permission(self) -> None:
        """
        A socket (or directory) the user may not use: no permission, with the remedy.
        """
        path = Path("/run/mdtwist/control.sock")
        for number in (errno.EACCES, errno.EPERM):
            error = connect_error(path, OSError(number, os.strerror(number)))
            self.assertEqual(
                str(error),
                f"no permission to use the control socket {path} (run as the user the server"
                " runs as, or as root)",
            )

    def test_other(self) -> None:
        """
        Anything else is named as the system names it.
        """
        error = connect_error(Path("/x"), OSError(errno.EAGAIN, os.strerror(errno.EAGAIN)))
        self.assertEqual(str(error), f"cannot connect to /x: {os.strerror(errno.EAGAIN)}")

    def test_no_socket(self) -> None:
        """
        L{call} on a path where no socket is says the server is not running.
        """
        path = Path(self.mktemp()) / "control.sock"
        error = self.assertRaises(ControlClientError, call, path, Echo, {"text": "x"})
        self.assertEqual(str(error), f"the server is not running (no server on {path})")


class ExchangeTests(SynchronousTestCase):
    """
    L{exchange} with the test as the server.
    """

    def setUp(self) -> None:
        self.client, self.server = socket.socketpair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)
        self.client.settimeout(5.0)

    def answer(self, box: amp.AmpBox) -> None:
        self.server.sendall(box.serialize())

    def test_answer(self) -> None:
        """
        The command goes out as an AMP box asking for an answer, and the answer is parsed
        with the command's response schema.
        """
        response = Echo.makeResponse({"text": "olleh", "shards": [0, 1]}, None)
        response[b"_answer"] = b"1"
        self.answer(response)
        self.assertEqual(
            exchange(self.client, Echo, {"text": "hello"}), {"text": "olleh", "shards": [0, 1]}
        )
        [sent] = amp.parseString(self.server.recv(65536))
        self.assertEqual(dict(sent), {b"_command": b"test-echo", b"_ask": b"1", b"text": b"hello"})

    def test_refusal(self) -> None:
        """
        A L{ControlError} from the server is its text alone.
        """
        self.answer(
            amp.AmpBox(
                _error=b"1", _error_code=b"CONTROL_ERROR", _error_description=b"no such message"
            )
        )
        error = self.assertRaises(ControlClientError, exchange, self.client, Echo, {"text": ""})
        self.assertEqual(str(error), "no such message")

    def test_other_error(self) -> None:
        """
        Any other error names the command that failed.
        """
        self.answer(
            amp.AmpBox(_error=b"1", _error_code=b"UNHANDLED", _error_description=b"Unknown Error")
        )
        error = self.assertRaises(ControlClientError, exchange, self.client, Echo, {"text": ""})
        self.assertEqual(str(error), "the server failed to carry out test-echo: Unknown Error")

    def test_closed(self) -> None:
        """
        A connection closed before a whole answer arrived is an error.
        """
        self.server.sendall(b"\x00\x07_answ")
        self.server.shutdown(socket.SHUT_WR)
        error = self.assertRaises(ControlClientError, exchange, self.client, Echo, {"text": ""})
        self.assertEqual(str(error), "the server closed the connection before answering test-echo")

    def test_no_answer(self) -> None:
        """
        A server that does not answer within the timeout is an error.
        """
        self.client.settimeout(0.01)
        error = self.assertRaises(ControlClientError, exchange, self.client, Echo, {"text": ""})
        self.assertEqual(str(error), "no answer from the server to test-echo")
