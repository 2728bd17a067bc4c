"""
Stand-ins for thread-pool runners in unit tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, execute

R = TypeVar("R")


def run_inline(f: Callable[..., R], *args: Any, **kwargs: Any) -> Deferred[R]:
    """
    Run C{f} at once on the calling thread, as a thread pool would run it later.

    @return: a Deferred that has already fired with the result or the failure.
    """
    return execute(f, *args, **kwargs)
