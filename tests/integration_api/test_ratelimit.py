"""The sliding windows of the rate limits (§2.6) and the abuse guard (§2.3), on an explicit clock."""

from __future__ import annotations

from vpbx.integration_api.ratelimit import MemoryAbuseGuard, MemoryRateLimiter


def test_sliding_window_allows_limit_then_says_when() -> None:
    rl = MemoryRateLimiter()
    assert all(rl.hit("d:call_info", 3, 60, t) is None for t in (0.0, 10.0, 20.0))
    assert rl.hit("d:call_info", 3, 60, 30.0) == 30  # the first hit leaves the window at 60
    assert rl.hit("d:users_info", 3, 60, 30.0) is None  # per key
    assert rl.hit("d:call_info", 3, 60, 60.5) is None  # slid: 10, 20, 60.5
    assert rl.hit("d:call_info", 3, 60, 61.0) == 9


def test_hour_window_and_retry_after_at_least_one_second() -> None:
    rl = MemoryRateLimiter()
    for n in range(10):
        assert rl.hit("d:domain_call_history", 10, 3600, float(n)) is None
    assert rl.hit("d:domain_call_history", 10, 3600, 3599.9) == 1


def test_keys_are_bounded() -> None:
    rl = MemoryRateLimiter(max_keys=2)
    rl.hit("a", 1, 60, 0.0)
    rl.hit("b", 1, 60, 0.0)
    rl.hit("c", 1, 60, 0.0)  # forgets "a", the least recently used
    assert rl.hit("a", 1, 60, 1.0) is None
    assert rl.hit("c", 1, 60, 1.0) == 59


def test_guard_bans_after_more_than_20_failures_a_minute_for_5_minutes() -> None:
    guard = MemoryAbuseGuard()
    for n in range(20):
        guard.failure("198.51.100.7", float(n))
    assert guard.banned_for("198.51.100.7", 20.0) is None
    guard.failure("198.51.100.7", 59.0)  # the 21st within a minute
    assert guard.banned_for("198.51.100.7", 59.0) == 300
    assert guard.banned_for("198.51.100.8", 59.0) is None
    assert guard.banned_for("198.51.100.7", 358.5) == 1
    assert guard.banned_for("198.51.100.7", 359.0) is None


def test_guard_forgets_failures_older_than_a_minute() -> None:
    guard = MemoryAbuseGuard()
    for n in range(40):  # one every 3 s: never more than 20 in 60 s
        guard.failure("203.0.113.5", n * 3.0)
    assert guard.banned_for("203.0.113.5", 120.0) is None
