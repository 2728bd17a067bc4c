"""
The configuration reference (C{docs/configuration.md}) documents exactly the keys that
L{mdtwist.config} accepts (found by running the reader: L{tests.config_keys}).
"""

from __future__ import annotations

import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.config_keys import accepted_keys, leaf_keys

_REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

_HEADING = re.compile(r"^#{2,4}\s+`?(\[\[?)([a-z0-9_.]+)(\]\]?)`?\s*$")
_ROW = re.compile(r"^\|\s*`([a-z0-9_]+)`\s*\|")


def _heading(path: str) -> str:
    # "smtp.listen[]" -> "[[smtp.listen]]", "smtp" -> "[smtp]"
    if path.endswith("[]"):
        return f"[[{path[:-2]}]]"
    return f"[{path}]"


def documented_keys(text: str) -> dict[str, set[str]]:
    """
    Read the reference: each C{## [table]} or C{## [[array]]} heading and the keys of the
    table rows under it.

    @param text: the Markdown.
    @return: table path (as L{accepted_keys} names it) to documented keys.
    """
    found: dict[str, set[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            opening, name, _ = heading.groups()
            current = name + ("[]" if opening == "[[" else "")
            found.setdefault(current, set())
            continue
        if line.startswith("#"):
            current = None
            continue
        row = _ROW.match(line)
        if row and current is not None:
            found[current].add(row.group(1))
    return found


class ReferenceTests(SynchronousTestCase):
    """
    See the module docstring.
    """

    def test_every_key_documented(self) -> None:
        """
        Every key the reader accepts has a row under its table's heading in
        C{docs/configuration.md}, and every row names a key the reader accepts. The failure
        names each key to add or remove and where.
        """
        accepted = leaf_keys(accepted_keys())
        documented = documented_keys(_REFERENCE.read_text())
        missing = [
            f"{_heading(table)} {key}: accepted by mdtwist/config.py, not documented: add a row"
            f" starting | `{key}` | under the heading ## {_heading(table)} of"
            " docs/configuration.md"
            for table, keys in sorted(accepted.items())
            for key in sorted(keys - documented.get(table, set()))
        ]
        stale = [
            f"{_heading(table)} {key}: documented in docs/configuration.md, not accepted by"
            " mdtwist/config.py: remove the row (or fix its heading)"
            for table, keys in sorted(documented.items())
            for key in sorted(keys - accepted.get(table, set()))
        ]
        self.assertEqual(missing + stale, [], "\n" + "\n".join(missing + stale))

    def test_found_by_running_the_reader(self) -> None:
        """
        The key finder reaches tables that only appear when asked for (arrays of tables, the
        LDAP attributes), so a new table of a new reader is found too.
        """
        found = accepted_keys()
        self.assertIn("endpoint", found["smtp.listen[]"])
        self.assertIn("password_file", found["sharing.peers[]"])
        self.assertIn("alias", found["directory.ldap.attributes"])
        self.assertIn("drain_timeout", found["server"])

    def test_reader_of_the_reference(self) -> None:
        """
        Headings open tables, rows add keys, and any other heading closes the table.
        """
        text = (
            "## [smtp]\n| Key | Type |\n|---|---|\n| `max_errors` | int |\n"
            "## [[smtp.listen]]\n| `mode` | x |\n## Notes\n| `stray` | x |\n"
        )
        self.assertEqual(
            documented_keys(text), {"smtp": {"max_errors"}, "smtp.listen[]": {"mode"}}
        )
