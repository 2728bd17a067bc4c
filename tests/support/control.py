"""
A stand-in for the running server's control channel, for tests of C{mdtwistctl} commands.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType
from typing import Any

from twisted.protocols import amp
from twisted.trial.unittest import SynchronousTestCase

from mdtwist.cli import main


class FakeControl:
    """
    Replaces L{mdtwist.control.client.call} in a command's module: records each call and
    answers with L{answer} (raised when it is an exception).

    @ivar config: a configuration file whose spool holds the control socket.
    @ivar socket: the control socket the commands must use.
    @ivar answer: the next answer.
    @ivar calls: C{(socket, command name, arguments, timeout)} of each call.
    """

    def __init__(self, case: SynchronousTestCase, module: ModuleType, answer: Any = None):
        """
        @param case: the running test; the replacement is undone when it ends.
        @param module: the module whose C{call} is replaced.
        @param answer: the first answer.
        """
        directory = Path(case.mktemp()).absolute()
        directory.mkdir()
        self.config = directory / "mdtwist.toml"
        self.config.write_text('[spool]\ndirectory = "spool"\n')
        self.socket = directory / "spool" / "control.sock"
        self.answer = answer
        self.calls: list[tuple[Path, str, Any, float | None]] = []
        case.patch(module, "call", self._call)

    def _call(
        self,
        path: Path,
        command: type[amp.Command],
        arguments: Any = None,
        *,
        timeout: float | None = None,
    ) -> Any:
        self.calls.append((path, command.commandName.decode(), arguments, timeout))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        """
        Run C{mdtwistctl --config CONFIG ARGV...}.

        @return: the exit status, standard output and standard error.
        """
        out, err = io.StringIO(), io.StringIO()
        status = main(["--config", str(self.config), *argv], stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()
