"""Bans of abusive sources (telephony.md §3.5): failed authentications and floods of unauthenticated requests.

Sans-I/O: every call takes ``now`` (one time base throughout; monotonic seconds suit a single process). The
transport asks ``is_banned`` for each datagram or connection and drops banned sources silently; the auth
layer reports ``record_failure`` for each ``AuthFailure`` and ``record_unauthenticated`` for each request that
arrives without valid credentials. Both return the ``Ban`` they start, if any, for the security log and the
cabinet.

Allowlisted networks (trunks, networks the admin lists, sources with a live registration) are never counted
nor banned. IPv6 sources are counted and banned per /64 (``ipv6_prefix``): one host owns a whole /64 and
could otherwise step around its ban. All tables are bounded.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from vpbx.logs import get_logger

log = get_logger("vpbx.security")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_FAILURES = 5  # failed authentications ...
FAILURE_WINDOW_S = 600.0  # ... within 10 min ...
BAN_S = 3600.0  # ... ban the source for 1 h,
REPEAT_FACTOR = 4  # × 4 for each repeat,
MAX_BAN_S = 86_400.0  # up to 24 h.
STRIKE_MEMORY_S = 86_400.0  # a repeat is a ban within 24 h of the previous one's end
FLOOD_REQUESTS = 100  # more than 100 unauthenticated requests ...
FLOOD_WINDOW_S = 2.0  # ... in 2 s ...
FLOOD_BAN_S = 300.0  # ... ban for 5 min
MAX_TRACKED = 100_000  # sources with counters (LRU)
ALLOWED_CACHE_SIZE = 4096  # source addresses whose allowlist verdict is remembered
MAX_BANS = 100_000  # active bans; past this the one ending soonest makes room
IPV6_PREFIX = 64


class BanReason(StrEnum):
    AUTH_FAILURES = "auth-failures"
    FLOOD = "flood"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Ban:
    source: str  # an IPv4 address or an IPv6 /64 such as "2001:db8:1:2::/64"
    reason: BanReason
    since: float
    until: float
    strikes: int = 1  # how many auth-failure bans in a row this one is


@dataclass(frozen=True, slots=True, kw_only=True)
class BanPolicy:
    """Per-tenant defaults of telephony.md §3.5."""

    max_failures: int = MAX_FAILURES
    failure_window_s: float = FAILURE_WINDOW_S
    ban_s: float = BAN_S
    repeat_factor: int = REPEAT_FACTOR
    max_ban_s: float = MAX_BAN_S
    strike_memory_s: float = STRIKE_MEMORY_S
    flood_requests: int = FLOOD_REQUESTS
    flood_window_s: float = FLOOD_WINDOW_S
    flood_ban_s: float = FLOOD_BAN_S
    max_tracked: int = MAX_TRACKED
    max_bans: int = MAX_BANS
    ipv6_prefix: int = IPV6_PREFIX


class BanList(Protocol):
    """Bans and allowlist. Synchronous: the transport asks once per datagram, in its receive callback.

    A shared implementation (Redis) keeps a local mirror for ``is_banned`` and publishes its changes.
    """

    def is_banned(self, ip: str, now: float) -> bool: ...
    def record_failure(self, ip: str, now: float) -> Ban | None: ...
    def record_unauthenticated(self, ip: str, now: float) -> Ban | None: ...
    def ban(
        self, ip: str, now: float, duration_s: float, reason: BanReason = BanReason.MANUAL
    ) -> Ban | None: ...
    def unban(self, ip: str) -> bool: ...
    def bans(self, now: float | None = None) -> list[Ban]: ...
    def set_allowlist(self, networks: Iterable[str | Network]) -> None: ...
    def is_allowed(self, ip: str) -> bool: ...


@dataclass(slots=True)
class _Tracker:
    failures: deque[float] = field(default_factory=deque)
    window_start: float = 0.0
    window_count: int = 0
    strikes: int = 0
    last_ban_end: float = 0.0


class MemoryBanList:
    """The in-process ``BanList`` of v1: dictionaries bounded by ``policy.max_tracked`` and ``max_bans``."""

    def __init__(self, policy: BanPolicy | None = None, allowlist: Iterable[str | Network] = ()) -> None:
        self.policy = policy or BanPolicy()
        self._allow: tuple[Network, ...] = ()
        self._bans: dict[str, Ban] = {}
        self._trackers: OrderedDict[str, _Tracker] = OrderedDict()
        self.set_allowlist(allowlist)

    # --- allowlist ----------------------------------------------------------------------------------------

    def set_allowlist(self, networks: Iterable[str | Network]) -> None:
        """Replace the allowlist (on start-up and whenever the database copy changes); lifts their bans."""
        self._allowed_cache: dict[str, bool] = {}
        self._allow = tuple(
            n
            if isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network)
            else ipaddress.ip_network(n, strict=False)
            for n in networks
        )
        for key in [k for k in self._bans if self._key_allowed(k)]:
            del self._bans[key]

    def is_allowed(self, ip: str) -> bool:
        if not self._allow:
            return False
        known = self._allowed_cache.get(ip)
        if known is None:
            if len(self._allowed_cache) >= ALLOWED_CACHE_SIZE:
                self._allowed_cache.clear()
            known = self._allowed_cache[ip] = self._check_allowed(ip)
        return known

    def _check_allowed(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr in net for net in self._allow)

    def _key_allowed(self, key: str) -> bool:
        if "/" not in key:
            return self.is_allowed(key)
        net = ipaddress.ip_network(key)
        return any(net.version == a.version and net.subnet_of(a) for a in self._allow)  # type: ignore[arg-type]

    # --- queries ------------------------------------------------------------------------------------------

    def is_banned(self, ip: str, now: float) -> bool:
        if not self._bans:
            return False  # the common case costs one dictionary check
        key = self._key(ip)
        ban = self._bans.get(key)
        if ban is None:
            return False
        if ban.until <= now:
            del self._bans[key]
            return False
        return not self.is_allowed(ip)

    def bans(self, now: float | None = None) -> list[Ban]:
        """Active bans (all known ones without ``now``), ending soonest first."""
        found = [b for b in self._bans.values() if now is None or b.until > now]
        return sorted(found, key=lambda b: (b.until, b.source))

    # --- counting -----------------------------------------------------------------------------------------

    def record_failure(self, ip: str, now: float) -> Ban | None:
        """One failed authentication; the ``max_failures``-th within the window starts a ban."""
        p = self.policy
        if self.is_allowed(ip) or self.is_banned(ip, now):
            return None
        key = self._key(ip)
        t = self._tracker(key)
        t.failures.append(now)
        while t.failures and now - t.failures[0] > p.failure_window_s:
            t.failures.popleft()
        while len(t.failures) > p.max_failures:
            t.failures.popleft()
        if len(t.failures) < p.max_failures:
            return None
        t.failures.clear()
        if t.strikes and now - t.last_ban_end > p.strike_memory_s:
            t.strikes = 0
        duration = min(p.ban_s * p.repeat_factor**t.strikes, p.max_ban_s)
        t.strikes += 1
        t.last_ban_end = now + duration
        return self._add(Ban(key, BanReason.AUTH_FAILURES, now, now + duration, t.strikes))

    def record_unauthenticated(self, ip: str, now: float) -> Ban | None:
        """One request without valid credentials; more than ``flood_requests`` in the window starts a ban."""
        p = self.policy
        if self.is_allowed(ip) or self.is_banned(ip, now):
            return None
        key = self._key(ip)
        t = self._tracker(key)
        if now - t.window_start >= p.flood_window_s:
            t.window_start, t.window_count = now, 0
        t.window_count += 1
        if t.window_count <= p.flood_requests:
            return None
        t.window_count = 0
        return self._add(Ban(key, BanReason.FLOOD, now, now + p.flood_ban_s))

    # --- changes ------------------------------------------------------------------------------------------

    def ban(self, ip: str, now: float, duration_s: float, reason: BanReason = BanReason.MANUAL) -> Ban | None:
        if self.is_allowed(ip):
            return None
        return self._add(Ban(self._key(ip), reason, now, now + duration_s))

    def unban(self, ip: str) -> bool:
        """Lift a ban (the cabinet's one-click unban) and forget the source's counters and strikes."""
        key = self._key(ip)
        self._trackers.pop(key, None)
        if self._bans.pop(key, None) is None:
            return False
        log.info("ban.lifted", source=key)
        return True

    def _add(self, ban: Ban) -> Ban:
        old = self._bans.get(ban.source)
        if old is not None and old.until > ban.until:
            return old
        if old is None and len(self._bans) >= self.policy.max_bans:
            self._make_room(ban.since)
        self._bans[ban.source] = ban
        log.warning("ban.added", source=ban.source, reason=str(ban.reason), duration_s=ban.until - ban.since)
        return ban

    def _make_room(self, now: float) -> None:
        # Drop what has ended, then the bans ending soonest, a hundredth at a time so that a flood of new
        # sources costs amortised O(log n) per ban instead of a scan each.
        for key in [k for k, b in self._bans.items() if b.until <= now]:
            del self._bans[key]
        excess = len(self._bans) - self.policy.max_bans + 1
        if excess > 0:
            batch = max(excess, self.policy.max_bans // 100)
            for b in heapq.nsmallest(batch, self._bans.values(), key=lambda b: b.until):
                del self._bans[b.source]

    def _tracker(self, key: str) -> _Tracker:
        t = self._trackers.get(key)
        if t is None:
            t = self._trackers[key] = _Tracker()
            if len(self._trackers) > self.policy.max_tracked:
                self._trackers.popitem(last=False)
        else:
            self._trackers.move_to_end(key)
        return t

    def _key(self, ip: str) -> str:
        """IPv4 as is (IPv4-mapped IPv6 unwrapped), IPv6 as its /64; anything else verbatim."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.IPv6Network((addr, self.policy.ipv6_prefix), strict=False))
        return str(addr)
