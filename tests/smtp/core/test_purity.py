"""The core modules must not import Twisted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist.smtp.core

_SCRIPT = """
import importlib, pkgutil, sys
import mdtwist.smtp.core as core
names = [m.name for m in pkgutil.iter_modules(core.__path__, core.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(len(names))
print(",".join(sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))))
"""


class PurityTests(SynchronousTestCase):
    """Tests that the sans-IO core stays free of Twisted."""

    def test_no_twisted_import(self) -> None:
        """
        No Twisted module is imported by the core.

        Every module of C{mdtwist.smtp.core} is imported in a fresh interpreter.
        """
        root = Path(mdtwist.smtp.core.__file__).parents[3]
        result = subprocess.run(
            [sys.executable, "-c", _SCRIPT],
            capture_output=True,
            text=True,
            cwd=root,
            check=True,
        )
        count, twisted_modules = result.stdout.splitlines()
        self.assertGreaterEqual(int(count), 7)
        self.assertEqual(twisted_modules, "")
