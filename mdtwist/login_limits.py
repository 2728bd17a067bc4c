# -*- test-case-name: tests.test_login_limits -*-
"""
The brute-force limit on logins, as pure counting: time is a parameter.

Theory of operation: every failed login is remembered twice, under its client address and under
its login name (case-folded), for L{LoginLimits.window} seconds. A new attempt is throttled when
either key already holds L{LoginLimits.max_failures} remembered failures, so one address cannot
try many logins and many addresses cannot try one login, whatever protocol they use. A throttled
attempt is not checked and not counted. Keys whose failures have all expired are dropped in a
sweep at most once per window, so memory stays bounded by the failures of one window.

Pure: standard library and attrs only.
"""

from __future__ import annotations

from collections import deque

import attrs


@attrs.frozen
class LoginLimits:
    """
    How many failed logins are tolerated.

    @ivar max_failures: failures per client address, and per login name, within C{window}
        after which further logins of that address or that name are throttled.
    @ivar window: seconds a failure is remembered.
    @ivar delay: seconds a throttled login waits before it is refused.
    """

    max_failures: int = 5
    window: float = 300.0
    delay: float = 5.0


def _address_key(address: str) -> tuple[str, str]:
    return ("address", address)


def _login_key(login: str) -> tuple[str, str]:
    return ("login", login.casefold())


class FailureLimiter:
    """
    Remembers recent login failures per client address and per login name.
    """

    def __init__(self, limits: LoginLimits) -> None:
        """
        @param limits: the thresholds.
        """
        self.limits = limits
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._swept = float("-inf")

    def _recent(self, key: tuple[str, str], now: float) -> int:
        # How many failures of key lie within the window before now; expired ones are dropped.
        times = self._failures.get(key)
        if times is None:
            return 0
        horizon = now - self.limits.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
        return len(times)

    def throttled(self, address: str, login: str, now: float) -> bool:
        """
        Tell whether an attempt must be refused unchecked.

        @param address: the client address.
        @param login: the login name as the client gave it.
        @param now: the current time, in seconds.
        @return: whether the address or the login name has too many recent failures.
        """
        limit = self.limits.max_failures
        return (
            self._recent(_address_key(address), now) >= limit
            or self._recent(_login_key(login), now) >= limit
        )

    def failed(self, address: str, login: str, now: float) -> None:
        """
        Remember a failed attempt under its address and its login name.

        @param address: the client address.
        @param login: the login name as the client gave it.
        @param now: the time of the failure, in seconds.
        """
        self._sweep(now)
        for key in (_address_key(address), _login_key(login)):
            self._failures.setdefault(key, deque()).append(now)

    def _sweep(self, now: float) -> None:
        # Forget every key whose failures have all expired, at most once per window.
        if now - self._swept < self.limits.window:
            return
        self._swept = now
        for key in list(self._failures):
            self._recent(key, now)

    def __len__(self) -> int:
        """
        @return: how many addresses and login names have failures remembered.
        """
        return len(self._failures)
