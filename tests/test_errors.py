"""
Tests for L{mdtwist.errors}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mdtwist.errors import (
    ConfigError,
    DirectoryError,
    DirectoryUnavailable,
    MdtwistError,
    SpoolError,
)


class ErrorTests(SynchronousTestCase):
    """
    The errors share one root, and a configuration error carries every problem.
    """

    def test_one_root(self) -> None:
        """
        Every error raised on purpose is an L{MdtwistError}; an unavailable directory is a
        directory error.
        """
        for kind in (ConfigError, DirectoryError, DirectoryUnavailable, SpoolError):
            self.assertTrue(issubclass(kind, MdtwistError), kind)
        self.assertTrue(issubclass(DirectoryUnavailable, DirectoryError))

    def test_config_error_problems(self) -> None:
        """
        L{ConfigError} keeps its problems as a tuple and shows one per line.
        """
        error = ConfigError(p for p in ["a.toml: x: bad", "a.toml: y: worse"])
        self.assertEqual(error.problems, ("a.toml: x: bad", "a.toml: y: worse"))
        self.assertEqual(str(error), "a.toml: x: bad\na.toml: y: worse")
