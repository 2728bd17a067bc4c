"""
The layers hold: pure modules import no Twisted, and the configuration is a leaf.

Each check imports modules in a fresh interpreter and reads C{sys.modules} there, so what
other tests imported earlier cannot hide or fake a dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
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
    "mdtwist.dequeue.signal",
    "mdtwist.envelope",
    "mdtwist.errors",
    "mdtwist.ipaddr",
    "mdtwist.delivery.schedule",
    "mdtwist.dequeue.gateways",
    "mdtwist.route",
    "mdtwist.secret",
    "mdtwist.settings.model",
    "mdtwist.smtp.modes",
)

#: Packages whose every module is a pure core.
PURE_PACKAGES = ("mdtwist.smtp.core",)

#: Pure modules outside those packages: standard library and attrs only, never Twisted. Each
#: must exist; C{pyproject.toml} bans Twisted imports in the same files (keep the two lists
#: alike).
PURE_MODULES = (
    *LEAF_MODULES,
    "mdtwist.affinity",
    "mdtwist.dequeue.requests",
    "mdtwist.login_limits",
    "mdtwist.minger.codec",
    "mdtwist.minger.limits",
    "mdtwist.smtp.decision",
    "mdtwist.spool.model",
    "mdtwist.spool.schema",
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


def _source(name: str) -> Path:
    return Path(mdtwist.__file__).parents[1] / (name.replace(".", "/") + ".py")


def _is_package(name: str) -> bool:
    # A package's __init__ holds only its docstring; its modules are checked by name.
    return _source(name + ".__init__").exists()


def _package_modules(package: str) -> list[str]:
    directory = _source(package + ".__init__").parent
    names = (
        package if path.stem == "__init__" else f"{package}.{path.stem}"
        for path in directory.glob("*.py")
    )
    return sorted(names)


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


class WebOnDemandTests(SynchronousTestCase):
    """
    Tests that C{twisted.web} is loaded only by a server that serves HTTP.
    """

    def test_services_without_web(self) -> None:
        """
        Importing the service builder (and the plugin's module) loads no C{twisted.web}
        module, nor the signer of Apple profiles; the HTTP resources are imported when an
        HTTP listener is built.
        """
        loaded = imported_by("mdtwist.tap")["mdtwist.tap"]
        self.assertIn("mdtwist.services", loaded)
        self.assertEqual(sorted(m for m in loaded if m.startswith("twisted.web")), [])
        self.assertNotIn("mdtwist.settings.signing", loaded)

    def test_services_without_test_helpers(self) -> None:
        """
        The service builder loads neither Twisted's test helpers nor the C{unittest} and
        C{doctest} they bring (about 3 MiB of every server process's memory).
        """
        loaded = imported_by("mdtwist.tap")["mdtwist.tap"]
        self.assertIn("mdtwist.shards", loaded)
        unwanted = [
            m
            for m in loaded
            if m in {"twisted.internet.testing", "unittest", "doctest"}
            or m.startswith("twisted.trial")
        ]
        self.assertEqual(unwanted, [])


class WorkerImportTests(SynchronousTestCase):
    """
    Tests that a Maildir worker process (L{mdtwist.delivery.worker_process}) stays small.
    """

    def test_worker_imports(self) -> None:
        """
        The worker and the Maildir write it runs import neither Twisted nor C{pathlib}
        (about 1 MiB of the worker's memory).
        """
        report = imported_by("mdtwist.delivery.worker_process", "mdtwist.delivery.maildir_files")
        loaded = [m for names in report.values() for m in names]
        self.assertIn("mdtwist.durable", loaded)
        self.assertEqual([m for m in loaded if m == "pathlib" or m.startswith("twisted")], [])


class PureModuleTests(SynchronousTestCase):
    """
    Tests that the pure modules stay free of Twisted.
    """

    def test_listed_modules_exist(self) -> None:
        """
        Every listed pure module exists, so none is checked in name only.
        """
        missing = [name for name in PURE_MODULES if not _source(name).exists()]
        self.assertEqual(missing, [])
        self.assertGreaterEqual(len(_package_modules("mdtwist.smtp.core")), 9)

    def test_ruff_bans_twisted_in_the_same_files(self) -> None:
        """
        The ruff rule in C{pyproject.toml} names the same pure files as this test.
        """
        root = Path(mdtwist.__file__).parents[1]
        config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
        ignores = config["tool"]["ruff"]["lint"]["per-file-ignores"]
        [pattern] = [key for key, codes in ignores.items() if codes == ["TID251"]]
        self.assertTrue(pattern.startswith("!{") and pattern.endswith("}"), pattern)
        files = set(pattern[2:-1].split(","))
        expected = {name.replace(".", "/") + ".py" for name in PURE_MODULES}
        expected |= {p.replace(".", "/") + "/*.py" for p in PURE_PACKAGES}
        self.assertEqual(files, expected)

    def test_no_twisted_import(self) -> None:
        """
        No pure module imports Twisted: each imports only the standard library, attrs and
        other pure modules of ours.

        Every module of the pure packages and every listed pure module is imported in a fresh
        interpreter.
        """
        names = [m for p in PURE_PACKAGES for m in _package_modules(p)] + list(PURE_MODULES)
        report = imported_by(*names)
        self.assertEqual(sorted(report), sorted(names))
        allowed = set(sys.stdlib_module_names) | {"attr", "attrs"}
        impure = {}
        for name, loaded in report.items():
            found = sorted(
                {
                    m if m.startswith("mdtwist.") else m.split(".")[0]
                    for m in loaded
                    if m.split(".")[0] not in allowed | {"mdtwist"}
                    or (m.startswith("mdtwist.") and m not in names and not _is_package(m))
                }
            )
            if found:
                impure[name] = found
        self.assertEqual(impure, {})
