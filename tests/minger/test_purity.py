"""
The pure parts of Minger and Domain Sharing must not import Twisted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

_PURE = ("mdtwist.minger.codec", "mdtwist.minger.limits", "mdtwist.sharing.answer")
_SCRIPT = f"""
import importlib, sys
for name in {_PURE!r}:
    importlib.import_module(name)
print(",".join(sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))))
"""


class PurityTests(SynchronousTestCase):
    """
    Importing the pure modules pulls in no Twisted module.
    """

    def test_no_twisted_import(self) -> None:
        """
        The codec, the limiter and the sharing answer import in a fresh interpreter without
        Twisted.
        """
        root = Path(__file__).resolve().parents[2]
        result = subprocess.run(
            [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, cwd=root, check=True
        )
        self.assertEqual(result.stdout.strip(), "")
