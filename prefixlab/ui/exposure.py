"""Who can reach the page: the warning for a page open beyond this machine without a password, and
the login check that slows down guessing (Gradio's `auth` callable). Pure: no Gradio.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable

# Consecutive failed logins answered at once; each later one waits BASE_DELAY_S, doubling up to
# MAX_DELAY_S. Failures are forgotten after a success or FORGET_AFTER_S without one.
FREE_FAILURES = 3
BASE_DELAY_S = 1.0
MAX_DELAY_S = 30.0
FORGET_AFTER_S = 15 * 60.0


def is_loopback(host: str) -> bool:
    """Whether `host` (app.py --host) listens on this machine only: localhost or a loopback address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, share: bool, auth: bool) -> str | None:
    """The warning app.py prints at start when anyone on a network can use the page without a
    password (a non-loopback --host, or --share, without --auth), else None."""
    if auth or (is_loopback(host) and not share):
        return None
    where = []
    if not is_loopback(host):
        where.append(f"every network interface of this machine that {host} covers")
    if share:
        where.append("the whole internet (a public gradio.live link)")
    return (f"WARNING: the page is open without a password to {' and '.join(where)}. Anyone who can reach it can "
            "train on this machine (any model and Hub dataset it names), read every run and its outputs, "
            "download the adapters, upload files and save presets. Add --auth USER:PASSWORD, or listen on "
            "127.0.0.1 only (the default).")


class LoginGuard:
    """Gradio's `auth` for one user name and password: compared in constant time (hmac), with a
    delay after FREE_FAILURES consecutive failures (1 s, 2 s, 4 s, ... at most MAX_DELAY_S).

    Pass `guard.check` (a coroutine function: Gradio awaits it in its event loop, so the delay
    blocks no other request). Attempts are answered one at a time, so sending guesses in
    parallel does not get round the delay. `sleep` and `clock` are injectable for tests."""

    def __init__(self, username: str, password: str, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self._username, self._password = username.encode(), password.encode()
        self._sleep, self._clock = sleep, clock
        self.failures = 0  # consecutive, since the last success (or FORGET_AFTER_S of quiet)
        self._last_failure: float | None = None
        self._lock: asyncio.Lock | None = None

    def delay(self) -> float:
        """Seconds the next attempt waits before it is checked."""
        if self._last_failure is not None and self._clock() - self._last_failure > FORGET_AFTER_S:
            self.failures, self._last_failure = 0, None
        if self.failures < FREE_FAILURES:
            return 0.0
        return min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (self.failures - FREE_FAILURES))

    def matches(self, username: str, password: str) -> bool:
        """Both compared in full, in constant time (no early exit telling how much was right)."""
        user_ok = hmac.compare_digest(username.encode(), self._username)
        password_ok = hmac.compare_digest(password.encode(), self._password)
        return user_ok and password_ok

    async def check(self, username: str, password: str) -> bool:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            wait = self.delay()
            if wait:
                await self._sleep(wait)
            if self.matches(username, password):
                self.failures, self._last_failure = 0, None
                return True
            self.failures += 1
            self._last_failure = self._clock()
            return False
