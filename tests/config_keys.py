"""
Every key the configuration reader accepts, found by running it.

L{accepted_keys} parses seed documents with L{mdtwist.config.parse_config} while recording
each table the reader opens and the keys it allows there. Every allowed key that the seeds do
not hold is then tried as a table (C{{}}) and as an array of tables (C{[{}]}); when the reader
opens it, its own keys are explored the same way. So a key added to any reader shows up here
without this module knowing it, as long as its table is reached from the seeds.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mdtwist import config as config_module
from mdtwist.errors import ConfigError

_INDEX = re.compile(r"\[\d+\]")

#: The seeds: the demo configuration, and the same with the LDAP backend (whose tables the
#: reader opens only when it is chosen).
_ETC = Path(__file__).resolve().parents[1] / "etc"


def _seeds() -> list[dict[str, Any]]:
    demo = tomllib.loads((_ETC / "mdtwist.toml").read_text())
    ldap = copy.deepcopy(demo)
    ldap["directory"] = {
        "backend": "ldap",
        "ldap": {"url": "ldap://127.0.0.1", "base_dn": "dc=example", "domains": ["a.test"]},
    }
    return [demo, ldap]


@contextmanager
def _recording() -> Iterator[dict[str, set[str]]]:
    seen: dict[str, set[str]] = {}
    original = config_module._Reader.table

    def table(self: Any, data: Mapping[str, Any], prefix: str, allowed: set[str]) -> Any:
        seen.setdefault(_INDEX.sub("[]", prefix), set()).update(allowed)
        return original(self, data, prefix, allowed)

    config_module._Reader.table = table  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        config_module._Reader.table = original  # type: ignore[method-assign]


def _parse(document: dict[str, Any], source: Path) -> dict[str, set[str]]:
    with _recording() as seen:
        try:
            config_module.parse_config(document, source)
        except ConfigError:
            pass
        except Exception:  # a reader surprised by an odd probe value: the probe failed
            pass
    return seen


def _locate(document: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    # The table of a recorded prefix such as "smtp.listen[]" (the first entry of an array).
    node: Any = document
    if not prefix:
        return node  # type: ignore[no-any-return]
    for part in prefix.split("."):
        name, array = part.removesuffix("[]"), part.endswith("[]")
        if not isinstance(node, dict) or name not in node:
            return None
        node = node[name]
        if array:
            if not isinstance(node, list) or not node or not isinstance(node[0], dict):
                return None
            node = node[0]
    return node if isinstance(node, dict) else None


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def accepted_keys(source: Path = Path("/nonexistent/mdtwist.toml")) -> dict[str, set[str]]:
    """
    Find every table the reader opens and the keys it allows in each.

    @param source: the file name the seeds pretend to come from (nothing is read from it;
        relative paths in them point below its directory).
    @return: table path (C{""} for the top level, C{"smtp.listen[]"} for the entries of an
        array of tables) to its allowed keys.
    """
    found: dict[str, set[str]] = {}
    for seed in _seeds():
        document = copy.deepcopy(seed)
        tried: set[str] = set()
        while True:
            seen = _parse(document, source)
            for prefix, keys in seen.items():
                found.setdefault(prefix, set()).update(keys)
            progress = False
            for prefix, keys in sorted(seen.items()):
                table = _locate(document, prefix)
                if table is None:
                    continue
                for key in sorted(keys):
                    full = _join(prefix, key)
                    if key in table or full in tried:
                        continue
                    tried.add(full)
                    for probe, opened in (({}, full), ([{}], full + "[]")):
                        table[key] = probe
                        if opened in _parse(document, source):
                            progress = True
                            break
                        del table[key]
            if not progress:
                break
    return found


def leaf_keys(found: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """
    @param found: what L{accepted_keys} returned.
    @return: per table path, the keys that are values (not tables or arrays of tables).
    """
    return {
        prefix: {
            key
            for key in keys
            if _join(prefix, key) not in found and _join(prefix, key) + "[]" not in found
        }
        for prefix, keys in found.items()
    }
