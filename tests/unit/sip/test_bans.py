"""Bans: failed authentications, floods, escalation, allowlist, bounds."""

from __future__ import annotations

import pytest

from vpbx.sip.bans import Ban, BanList, BanPolicy, BanReason, MemoryBanList

IP = "203.0.113.9"
OTHER = "203.0.113.10"
T0 = 10_000.0


def fail_times(bans: MemoryBanList, ip: str, n: int, start: float, step: float = 1.0) -> Ban | None:
    last = None
    for i in range(n):
        last = bans.record_failure(ip, start + i * step)
    return last


def test_memory_ban_list_is_a_ban_list() -> None:
    bans: BanList = MemoryBanList()
    assert not bans.is_banned(IP, T0)


def test_five_failures_in_ten_minutes_ban_for_an_hour() -> None:
    bans = MemoryBanList()
    assert fail_times(bans, IP, 4, T0, step=100) is None
    assert not bans.is_banned(IP, T0 + 400)
    ban = bans.record_failure(IP, T0 + 500)
    assert ban == Ban(IP, BanReason.AUTH_FAILURES, T0 + 500, T0 + 500 + 3600, 1)
    assert bans.is_banned(IP, T0 + 501)
    assert bans.is_banned(IP, T0 + 500 + 3599)
    assert not bans.is_banned(IP, T0 + 500 + 3600)
    assert not bans.is_banned(OTHER, T0 + 501)


def test_failures_spread_over_more_than_the_window_do_not_ban() -> None:
    bans = MemoryBanList()
    assert fail_times(bans, IP, 20, T0, step=151) is None  # 5 failures always span > 600 s
    assert not bans.is_banned(IP, T0 + 20 * 151)


def test_repeat_bans_grow_four_times_up_to_a_day() -> None:
    bans = MemoryBanList()
    now = T0
    durations = []
    for _ in range(4):
        ban = fail_times(bans, IP, 5, now)
        assert ban is not None
        durations.append(ban.until - ban.since)
        now = ban.until + 1
    assert durations == [3600, 4 * 3600, 16 * 3600, 24 * 3600]
    assert [b.strikes for b in bans.bans()] == [4]


def test_strikes_are_forgotten_a_day_after_the_last_ban() -> None:
    bans = MemoryBanList()
    first = fail_times(bans, IP, 5, T0)
    assert first is not None
    later = fail_times(bans, IP, 5, first.until + 86_400 + 1)
    assert later is not None
    assert later.until - later.since == 3600
    assert later.strikes == 1


def test_failures_while_banned_are_not_counted() -> None:
    bans = MemoryBanList()
    ban = fail_times(bans, IP, 5, T0)
    assert ban is not None
    assert fail_times(bans, IP, 10, T0 + 10) is None
    assert bans.bans() == [ban]


def test_flood_of_unauthenticated_requests_bans_for_five_minutes() -> None:
    bans = MemoryBanList()
    for i in range(100):
        assert bans.record_unauthenticated(IP, T0 + i * 0.019) is None
    ban = bans.record_unauthenticated(IP, T0 + 1.99)
    assert ban is not None
    assert ban.reason is BanReason.FLOOD
    assert ban.until == T0 + 1.99 + 300
    assert bans.is_banned(IP, T0 + 2)
    assert not bans.is_banned(IP, T0 + 1.99 + 300)


def test_steady_traffic_below_the_flood_rate_is_fine() -> None:
    bans = MemoryBanList()
    for i in range(1000):  # 40 per second for 25 s
        assert bans.record_unauthenticated(IP, T0 + i * 0.025) is None
    assert bans.bans() == []


def test_allowlisted_networks_are_never_banned() -> None:
    bans = MemoryBanList(allowlist=["203.0.113.0/24", "2001:db8::/32"])
    assert fail_times(bans, IP, 50, T0) is None
    for i in range(500):
        assert bans.record_unauthenticated(IP, T0 + i * 0.001) is None
    assert bans.ban(IP, T0, 60) is None
    assert not bans.is_banned(IP, T0 + 1)
    assert fail_times(bans, "2001:db8::1", 10, T0) is None
    assert bans.is_allowed("::ffff:203.0.113.5")
    assert not bans.is_allowed("198.51.100.1")
    assert not bans.is_allowed("not an ip")
    assert fail_times(bans, "198.51.100.1", 5, T0) is not None


def test_setting_the_allowlist_lifts_existing_bans() -> None:
    bans = MemoryBanList()
    assert fail_times(bans, IP, 5, T0) is not None
    assert fail_times(bans, "2001:db8:1:2::7", 5, T0) is not None
    assert fail_times(bans, OTHER, 5, T0) is not None
    bans.set_allowlist(["203.0.113.9/32", "2001:db8::/32"])
    assert not bans.is_banned(IP, T0 + 10)
    assert not bans.is_banned("2001:db8:1:2::7", T0 + 10)
    assert bans.is_banned(OTHER, T0 + 10)
    assert [b.source for b in bans.bans()] == [OTHER]


def test_unban_lifts_the_ban_and_forgets_strikes() -> None:
    bans = MemoryBanList()
    assert fail_times(bans, IP, 5, T0) is not None
    assert bans.unban(IP) is True
    assert not bans.is_banned(IP, T0 + 10)
    assert bans.unban(IP) is False
    again = fail_times(bans, IP, 5, T0 + 20)
    assert again is not None
    assert again.strikes == 1


def test_bans_list_reason_and_until_and_skips_ended_ones() -> None:
    bans = MemoryBanList()
    a = fail_times(bans, IP, 5, T0)
    b = bans.ban(OTHER, T0, 60)
    assert a is not None
    assert b is not None
    assert b.reason is BanReason.MANUAL
    assert bans.bans(T0 + 1) == [b, a]  # ending soonest first
    assert bans.bans(T0 + 61) == [a]
    assert [x.reason for x in bans.bans()] == [BanReason.MANUAL, BanReason.AUTH_FAILURES]


def test_ipv6_sources_are_banned_per_slash_64() -> None:
    bans = MemoryBanList()
    for i in range(5):
        bans.record_failure(f"2001:db8:1:2::{i + 1:x}", T0 + i)
    assert bans.is_banned("2001:db8:1:2:ffff::1", T0 + 10)
    assert not bans.is_banned("2001:db8:1:3::1", T0 + 10)
    assert [b.source for b in bans.bans()] == ["2001:db8:1:2::/64"]
    assert bans.unban("2001:db8:1:2::99") is True


def test_ipv4_mapped_addresses_count_as_ipv4() -> None:
    bans = MemoryBanList()
    fail_times(bans, "::ffff:203.0.113.9", 5, T0)
    assert bans.is_banned(IP, T0 + 1)


def test_counters_are_bounded() -> None:
    bans = MemoryBanList(BanPolicy(max_tracked=3))
    for i in range(4):
        fail_times(bans, f"198.51.100.{i}", 4, T0)
    # The first source's four failures were forgotten to make room: one more does not ban it.
    assert bans.record_failure("198.51.100.0", T0 + 10) is None
    assert bans.record_failure("198.51.100.3", T0 + 10) is not None


@pytest.mark.parametrize("max_bans", [1, 3, 200])
def test_active_bans_are_bounded_keeping_the_longest(max_bans: int) -> None:
    bans = MemoryBanList(BanPolicy(max_bans=max_bans))
    for i in range(max_bans + 5):
        assert bans.ban(f"198.51.100.{i}", T0, 100 + i) is not None
    kept = bans.bans()
    assert len(kept) <= max_bans
    assert kept[-1].source == f"198.51.100.{max_bans + 4}"  # the newest, longest ban stays
    assert bans.is_banned(f"198.51.100.{max_bans + 4}", T0 + 1)


def test_ended_bans_make_room_first() -> None:
    bans = MemoryBanList(BanPolicy(max_bans=2))
    bans.ban("198.51.100.1", T0, 10)
    bans.ban("198.51.100.2", T0, 1000)
    bans.ban("198.51.100.3", T0 + 20, 1000)
    assert [b.source for b in bans.bans(T0 + 21)] == ["198.51.100.2", "198.51.100.3"]


def test_custom_policy() -> None:
    bans = MemoryBanList(BanPolicy(max_failures=2, ban_s=10, repeat_factor=2, max_ban_s=30))
    lengths = []
    now = T0
    for _ in range(4):
        ban = fail_times(bans, IP, 2, now)
        assert ban is not None
        lengths.append(ban.until - ban.since)
        now = ban.until
    assert lengths == [10, 20, 30, 30]
