"""
The layers hold: pure modules import no Twisted, and the configuration is a leaf.

Each check imports modules in a fresh interpreter and reads C{sys.modules} there, so what
other tests imported earlier cannot hide or fake a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import mdtwist

#: Modules that hold plain data and pure functions besides the pure cores; importing the
#: configuration may pull in these and nothing else of ours.
LEAF_MODULES = (
    "mdtwist.address",
    "mdtwist.delivery.dsn",
    "mdtwist.delivery.hosts",
    "mdtwist.delivery.router",
    "mdtwist.envelope",
    "mdtwist.errors",
    "mdtwist.secret",
    "mdtwist.smtp.modes",
    "mdtwist.spool.schedule",
)

_SCRIPT = """
import importlib, json, sys
report = {}
for name in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(name)
    report[name] = sorted(set(sys.modules) - before)
print(json.dumps(report))
"""


def imported_by(*names: str) -> dict[str, list[str]]:
    """
    Import modules one after the other in a fresh interpreter.

    @param names: the modules, in order.
    @return: for each module, the modules its import added to C{sys.modules} (those an earlier
        module already pulled in are counted there).
    """
    root = Path(mdtwist.__file__).parents[1]
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *names],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    )
    report: dict[str, list[str]] = json.loads(result.stdout)
    return report


def _is_package(name: str) -> bool:
    # A package's __init__ holds only its docstring; its modules are checked by name.
    return (Path(mdtwist.__file__).parents[1] / name.replace(".", "/") / "__init__.py").exists()


class ConfigLeafTests(SynchronousTestCase):
    """
    Tests that L{mdtwist.config} is a leaf of plain data and checks.
    """

    def test_no_glue(self) -> None:
        """
        Importing the configuration pulls in none of our glue modules, only leaf modules.
        """
        loaded = imported_by("mdtwist.config")["mdtwist.config"]
        ours = {m for m in loaded if m == "mdtwist" or m.startswith("mdtwist.")}
        glue = sorted(m for m in ours - {"mdtwist.config", *LEAF_MODULES} if not _is_package(m))
        self.assertEqual(glue, [])
        self.assertIn("mdtwist.smtp.modes", ours)

    def test_no_test_helpers_or_reactor(self) -> None:
        """
        Importing the configuration imports neither Twisted's test helpers nor the reactor.
        """
        loaded = imported_by("mdtwist.config")["mdtwist.config"]
        unwanted = sorted(
            m
            for m in loaded
            if m in {"twisted.internet.testing", "twisted.internet.reactor"}
            or m.startswith("twisted.trial")
        )
        self.assertEqual(unwanted, [])
