# -*- test-case-name: tests.test_secret -*-
"""
A wrapper for secret strings that keeps them out of logs, reprs and tracebacks.
"""

from __future__ import annotations

import attrs


@attrs.frozen(repr=False)
class Secret:
    """
    A secret value (a password, a shared key).

    Its C{repr} and C{str} never show the value; code that needs it calls L{reveal} explicitly, so
    every place that handles the plain value is easy to find.
    """

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        """
        @return: the secret value itself.
        """
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__
