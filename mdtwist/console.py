# -*- test-case-name: tests.test_cli -*-
"""
What every C{mdtwistctl} command shares: where the configuration is, plurals, JSON output,
confirmations and progress bars.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from mdtwist.config import DEFAULT_CONFIG_FILES, Config, load_config, load_locations
from mdtwist.errors import ConfigError

#: The configuration files tried, in this order, without C{--config}.
DEFAULT_CONFIGS = DEFAULT_CONFIG_FILES

#: Operations over more messages than this show a progress bar (on a terminal).
PROGRESS_THRESHOLD = 100


class CommandError(Exception):
    """
    A command failed; the message is one line (or several) for the operator.
    """


def plural(count: int, word: str, many: str | None = None) -> str:
    """
    @param count: how many.
    @param word: the singular.
    @param many: the plural, when it is not C{word + "s"}.
    @return: C{"1 message"}, C{"2 messages"}, C{"0 messages"}.
    """
    return f"{count} {word if count == 1 else many or word + 's'}"


class Locations:
    """
    Where the configuration is (C{--config}, else the first of the defaults that exists), and
    what it says about the spool and the control socket, read when first needed.
    """

    def __init__(self, config: str | None, defaults: Sequence[Path] = DEFAULT_CONFIGS) -> None:
        """
        @param config: C{--config}, or L{None}.
        @param defaults: the files tried without it.
        """
        self._config = config
        self._defaults = defaults

    def path(self) -> Path:
        """
        @return: the configuration file.
        @raise CommandError: when none was given and no default exists.
        """
        if self._config is not None:
            return Path(self._config)
        for path in self._defaults:
            if path.is_file():
                return path
        tried = " or ".join(str(path) for path in self._defaults)
        raise CommandError(f"no configuration file ({tried}); give --config FILE")

    def _locations(self) -> tuple[Path, Path]:
        path = self.path()
        try:
            return load_locations(path)
        except ConfigError as e:
            raise CommandError("; ".join(e.problems) or f"{path}: no spool.directory") from None

    def spool(self, override: str | None = None) -> Path:
        """
        @param override: C{--spool}, or L{None}.
        @return: the spool directory.
        """
        return Path(override) if override is not None else self._locations()[0]

    def socket(self) -> Path:
        """
        @return: the control socket.
        """
        return self._locations()[1]

    def config(self) -> Config:
        """
        @return: the whole configuration.
        @raise CommandError: when it has problems (one line each).
        """
        try:
            return load_config(self.path())
        except ConfigError as e:
            raise CommandError("\n".join(e.problems)) from None


def write_json(out: TextIO, value: Any) -> None:
    """
    Print a value as indented JSON.

    @param out: where.
    @param value: plain data.
    """
    out.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def confirm(question: str, *, yes: bool, stdin: TextIO, err: TextIO) -> None:
    """
    Make sure the operator wants a destructive operation.

    @param question: e.g. C{"Delete 3 messages?"}.
    @param yes: C{--yes} was given.
    @param stdin: where the answer is read, when it is a terminal.
    @param err: where the question is asked.
    @raise CommandError: when the answer is not yes, or nobody can be asked.
    """
    if yes:
        return
    if not stdin.isatty():
        raise CommandError(f"{question} Give --yes (standard input is not a terminal)")
    err.write(f"{question} [y/N] ")
    err.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CommandError("nothing done")


@contextmanager
def progress(total: int, err: TextIO, what: str) -> Iterator[tqdm[Any]]:
    """
    A progress bar on standard error for an operation over many items: shown only for more
    than L{PROGRESS_THRESHOLD} items and only on a terminal.

    @param total: how many items.
    @param err: standard error.
    @param what: the operation, shown before the bar.
    @return: a context manager giving the bar; call its C{update(n)} after each step.
    """
    shown = total > PROGRESS_THRESHOLD and err.isatty()
    bar: tqdm[Any] = tqdm(
        total=total, desc=what, unit="msg", file=err, disable=not shown, leave=False
    )
    try:
        yield bar
    finally:
        bar.close()


def read_new_password(stdin: TextIO) -> str:
    """
    Read a new password: twice without echo on a terminal, else one line of C{stdin}.

    @param stdin: standard input.
    @return: the password.
    @raise CommandError: when the two differ or it is empty.
    """
    if stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    return password
