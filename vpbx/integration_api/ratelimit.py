"""The Integration API's rate limits (integration-api.md §2.6) and abuse guard (§2.3), in memory.

Both are sliding windows over monotonic time behind small interfaces (``RateLimiter``, ``AbuseGuard``), so a
shared store (Redis) can replace them when the API runs on several nodes. Memory is bounded: a key keeps at
most ``limit`` timestamps, and the number of keys is capped (the oldest key is forgotten first).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Protocol

MAX_KEYS = 100_000  # rate-limit keys (domain × method) and guarded source addresses, each
ABUSE_FAILURES = 20  # more than this many R4/R8 failures …
ABUSE_WINDOW_S = 60.0  # … within this window from one source IP …
ABUSE_BAN_S = 300.0  # … make that IP get R9 on every method for this long


class RateLimiter(Protocol):
    def hit(self, key: str, limit: int, window_s: float, now: float) -> int | None:
        """Count one request; None when allowed, else the whole seconds until one would be."""
        ...


class AbuseGuard(Protocol):
    def banned_for(self, ip: str, now: float) -> int | None:
        """Whole seconds left of the IP's ban, or None when it is not banned."""
        ...

    def failure(self, ip: str, now: float) -> None:
        """Count one R4/R8 failure from the IP (may start its ban)."""
        ...


class MemoryRateLimiter:
    """A sliding log per key: a request is allowed while fewer than ``limit`` fell in the last window."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_keys = max_keys

    def hit(self, key: str, limit: int, window_s: float, now: float) -> int | None:
        log = self._hits.get(key)
        if log is None:
            log = deque(maxlen=limit)
            self._hits[key] = log
            while len(self._hits) > self._max_keys:
                self._hits.popitem(last=False)
        else:
            self._hits.move_to_end(key)
        while log and log[0] <= now - window_s:
            log.popleft()
        if len(log) >= limit:
            return max(1, math.ceil(log[0] + window_s - now))
        log.append(now)
        return None


class MemoryAbuseGuard:
    def __init__(
        self,
        *,
        failures: int = ABUSE_FAILURES,
        window_s: float = ABUSE_WINDOW_S,
        ban_s: float = ABUSE_BAN_S,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._banned: OrderedDict[str, float] = OrderedDict()  # ip → ban ends (monotonic)
        self._limit = failures
        self._window_s = window_s
        self._ban_s = ban_s
        self._max_keys = max_keys

    def banned_for(self, ip: str, now: float) -> int | None:
        until = self._banned.get(ip)
        if until is None:
            return None
        if until <= now:
            del self._banned[ip]
            return None
        return max(1, math.ceil(until - now))

    def failure(self, ip: str, now: float) -> None:
        log = self._failures.get(ip)
        if log is None:
            log = deque(maxlen=self._limit + 1)
            self._failures[ip] = log
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(ip)
        while log and log[0] <= now - self._window_s:
            log.popleft()
        log.append(now)
        if len(log) > self._limit:
            log.clear()
            self._banned[ip] = now + self._ban_s
            self._banned.move_to_end(ip)
            while len(self._banned) > self._max_keys:
                self._banned.popitem(last=False)
