# -*- test-case-name: tests.test_errors -*-
"""
The exception hierarchy of mdtwist.

Expected outcomes (an unknown user, a wrong password) are values, never exceptions; the classes
here are for failures that a caller must turn into a reply or a refusal to start.
"""

from __future__ import annotations

from collections.abc import Iterable


class MdtwistError(Exception):
    """
    The root of every error that mdtwist raises on purpose.
    """


class ConfigError(MdtwistError):
    """
    The configuration cannot be used; the server must not start.

    @ivar problems: one line per problem, each in the form C{file: key: reason}.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class DirectoryError(MdtwistError):
    """
    Something went wrong while asking the account directory.
    """


class DirectoryUnavailable(DirectoryError):
    """
    The directory could not answer (server down, timeout, ambiguous data).

    This is always a temporary condition: callers answer C{451 4.3.0} and keep the message. It is
    never reported as "no such user".
    """


class SpoolError(MdtwistError):
    """
    A message could not be stored (disk full, I/O error); callers answer C{452 4.3.1}.
    """


class LoginThrottled(MdtwistError):
    """
    A login was refused unchecked: its client address or its login name failed too often
    lately. Temporary, and distinct from a wrong password (HTTP answers C{429} with
    C{Retry-After}).
    """
