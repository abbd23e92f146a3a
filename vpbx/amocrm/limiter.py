"""The per-account request limiter of the amoCRM client (amocrm.md §2.5).

amoCRM allows 7 requests/s; past that it answers 429 and, if that goes on, blocks the IP with 403. Every
request of one account goes through one ``AccountLimiter``:

- a token bucket at ``amocrm.rps`` (burst = rate), and at most ``floor(rate)`` sends in any sliding second: a
  bucket alone lets a full burst plus a second's refill (2 × rate) into one second, and amoCRM counts 7 in a
  sliding second (ours);
- two lanes: ``realtime`` (routing lookups, pop-up data) always goes before ``background`` (jobs, metadata); a
  realtime request that cannot get a token before its deadline raises ``AmoSkipped`` without being sent;
- 429: the whole account pauses (``Retry-After`` if given, else 1, 2, 4 … 60 s with ±20 % jitter) and the rate
  and burst halve (down to 1 rps); every minute without a 429 adds 1 rps back, up to the setting;
- 403: the circuit opens for 10 minutes, then one probe is let through; a probe that succeeds closes it;
- several processes on one database: ``AccountLimiter.share`` gives this process's part of the rate (the
  account's lease holder most, each other process a small fixed share: vpbx/amocrm/lease.py).

``LimiterState`` is the pure part (times in, decisions out, no I/O); ``AccountLimiter`` waits on it with an
injected monotonic clock and sleep, so unit tests drive it with a fake clock.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from vpbx.amocrm.errors import AmoForbidden, AmoSkipped
from vpbx.logs import get_logger

log = get_logger("vpbx.amocrm.limiter")

Lane = Literal["realtime", "background"]
CircuitState = Literal["closed", "open", "half_open"]

MIN_RATE = 1.0  # rps: the floor of the halving
RECOVER_EVERY_S = 60.0  # +1 rps per this long without a 429
BACKOFF_CAP_S = 60.0  # 1, 2, 4 … 60 s without Retry-After
JITTER = 0.2  # ±20 %
RETRY_AFTER_CAP_S = (
    600.0  # a Retry-After beyond this is read as this (a broken header must not stop us for days)
)
CIRCUIT_OPEN_S = 600.0  # 403: suspected IP block, 10 minutes
EPSILON = 1e-6
WINDOW_S = 1.0  # the sliding second amoCRM counts requests in
NO_SHARE_WAIT_S = 5.0  # no share of the rate (yet): background looks again this late, realtime is skipped
PROBE_WAIT_S = 0.05  # how often a request polls while the circuit's probe is out or realtime requests wait


@dataclass(slots=True)
class LimiterState:
    """One account's bucket, pause and circuit. Times are monotonic seconds; nothing here sleeps."""

    configured_rate: float
    now: float
    rng: random.Random = field(default_factory=random.Random)
    rate: float = 0.0
    tokens: float = 0.0
    updated: float = 0.0
    paused_until: float = 0.0
    backoff_step: int = 0  # consecutive 429 pauses without Retry-After (1, 2, 4 … s)
    last_429_at: float | None = None
    last_raise_at: float = 0.0
    count_429: int = 0
    count_403: int = 0
    circuit: CircuitState = "closed"
    circuit_until: float = 0.0
    probe_in_flight: bool = False
    sent: deque[float] = field(default_factory=deque)  # send times inside the last second

    def __post_init__(self) -> None:
        self.rate = self.configured_rate
        self.tokens = self.configured_rate
        self.updated = self.now

    @property
    def burst(self) -> float:
        return max(self.rate, 1.0)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        # recovery: +1 rps per minute without a 429, back up to the setting
        if self.rate < self.configured_rate and self.last_429_at is not None:
            since = max(self.last_429_at, self.last_raise_at)
            while self.rate < self.configured_rate and now - since >= RECOVER_EVERY_S:
                since += RECOVER_EVERY_S
                self.rate = min(self.configured_rate, self.rate + 1.0)
                self.last_raise_at = since
            if self.rate >= self.configured_rate:
                self.backoff_step = 0
        elif self.last_429_at is not None and now - self.last_429_at >= RECOVER_EVERY_S:
            self.backoff_step = 0

    def set_cap(self, cap: float, now: float) -> None:
        """This process's share of the account's rate changed (vpbx/amocrm/lease.py): a lower cap applies at
        once; a higher one at once unless a 429 halved the rate (then it recovers towards the new cap)."""
        if cap == self.configured_rate:
            return
        self._refill(now)
        at_full = self.rate >= self.configured_rate
        self.configured_rate = cap
        if self.rate > cap or at_full:
            self.rate = cap
        self.tokens = min(self.tokens, self.burst) if cap > 0.0 else 0.0

    def circuit_check(self, now: float) -> Literal["go", "probe", "wait", "open"]:
        """Whether a request may be sent with respect to the 403 circuit (before taking a token)."""
        if self.circuit == "closed":
            return "go"
        if self.circuit == "open" and now < self.circuit_until:
            return "open"
        self.circuit = "half_open"
        if self.probe_in_flight:
            return "wait"
        return "probe"

    def try_take(self, now: float) -> float:
        """Take a token: 0.0 when taken, else how long to wait before the next try."""
        self._refill(now)
        if now < self.paused_until:
            return self.paused_until - now
        if self.rate <= 0.0:  # no share of the account's rate in this process (yet)
            return NO_SHARE_WAIT_S
        while self.sent and self.sent[0] <= now - WINDOW_S:
            self.sent.popleft()
        if len(self.sent) >= max(1, int(self.rate)):
            return max(self.sent[0] + WINDOW_S - now, EPSILON)
        if self.tokens >= 1.0 - EPSILON:  # float refills land a hair below whole tokens
            self.tokens = max(0.0, self.tokens - 1.0)
            self.sent.append(now)
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def on_429(self, now: float, *, sent_at: float, retry_after_s: float | None) -> float:
        """A 429 for a request sent at ``sent_at``: pause the account, halve the rate. Returns the pause (s).

        A 429 for a request sent before the last one was seen belongs to the same burst: it neither halves nor
        lengthens the pause again."""
        self.count_429 += 1
        if self.last_429_at is not None and sent_at < self.last_429_at:
            return max(0.0, self.paused_until - now)
        if retry_after_s is not None:
            pause = min(max(retry_after_s, 0.0), RETRY_AFTER_CAP_S)
        else:
            base = min(BACKOFF_CAP_S, float(2**self.backoff_step))
            pause = base * (1.0 + self.rng.uniform(-JITTER, JITTER))
            self.backoff_step += 1
        self._refill(now)
        self.rate = max(MIN_RATE, self.rate / 2.0)
        self.tokens = 0.0
        self.updated = now
        self.last_429_at = now
        self.last_raise_at = now
        self.paused_until = max(self.paused_until, now + pause)
        return pause

    def on_403(self, now: float) -> None:
        self.count_403 += 1
        self.circuit = "open"
        self.circuit_until = now + CIRCUIT_OPEN_S
        self.probe_in_flight = False

    def on_answer(self, *, probe: bool) -> None:
        """Any answer other than 403 (a probe that got one closes the circuit)."""
        if probe:
            self.circuit = "closed"
            self.probe_in_flight = False

    def snapshot(self, now: float) -> dict[str, Any]:
        self._refill(now)
        circuit = self.circuit
        if circuit == "open" and now >= self.circuit_until:
            circuit = "half_open"
        return {
            "rate": self.rate,
            "configured_rate": self.configured_rate,
            "paused_for_s": round(max(0.0, self.paused_until - now), 3),
            "circuit": circuit,
            "circuit_open_for_s": round(max(0.0, self.circuit_until - now), 3) if circuit == "open" else 0.0,
            "count_429": self.count_429,
            "count_403": self.count_403,
        }


Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Permit:
    """A granted send: when (monotonic) and whether it is the circuit's probe (report the answer back)."""

    at: float
    probe: bool = False


class AccountLimiter:
    """The async side of ``LimiterState`` for one account; ``monotonic`` and ``sleep`` are injectable."""

    def __init__(
        self,
        account_id: int,
        rps: float,
        *,
        monotonic: Callable[[], float],
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.account_id = account_id
        self._monotonic = monotonic
        self._sleep = sleep
        self.state = LimiterState(configured_rate=rps, now=monotonic(), rng=rng or random.Random())
        self._realtime_waiting = 0
        self.share: Callable[[], float] | None = None  # this process's part of ``rps`` (lease.py), if several

    async def acquire(self, lane: Lane = "background", deadline: float | None = None) -> Permit:
        """Wait for a token; with a ``deadline`` (monotonic) raise ``AmoSkipped`` instead of waiting past it.

        While the 403 circuit is open: realtime → ``AmoSkipped``, background → ``AmoForbidden``."""
        realtime = lane == "realtime"
        if realtime:
            self._realtime_waiting += 1
        try:
            while True:
                now = self._monotonic()
                if self.share is not None:
                    self.state.set_cap(self.share(), now)
                gate = self.state.circuit_check(now)
                if gate == "open":
                    if realtime:
                        raise AmoSkipped("circuit open (403)")
                    raise AmoForbidden("circuit open after 403; not sent")
                if gate == "wait":
                    wait = PROBE_WAIT_S
                elif not realtime and self._realtime_waiting:
                    # background waits while any realtime request waits (they leave by their deadlines)
                    wait = PROBE_WAIT_S
                else:
                    wait = self.state.try_take(now)
                    if wait == 0.0:
                        if gate == "probe":
                            self.state.probe_in_flight = True
                            log.info("amocrm.circuit_probe", account_id=self.account_id)
                        return Permit(at=now, probe=gate == "probe")
                if deadline is not None and now + wait > deadline:
                    raise AmoSkipped("no request slot before the deadline")
                await self._sleep(wait)
        finally:
            if realtime:
                self._realtime_waiting -= 1

    def on_429(self, permit: Permit, retry_after_s: float | None) -> None:
        now = self._monotonic()
        if permit.probe:
            self.state.on_answer(probe=True)
        pause = self.state.on_429(now, sent_at=permit.at, retry_after_s=retry_after_s)
        log.warning(
            "amocrm.rate_limited",
            account_id=self.account_id,
            pause_s=round(pause, 3),
            retry_after_s=retry_after_s,
            rate=self.state.rate,
        )

    def on_403(self) -> None:
        self.state.on_403(self._monotonic())
        log.warning("amocrm.circuit_open", account_id=self.account_id, for_s=CIRCUIT_OPEN_S)

    def on_answer(self, permit: Permit) -> None:
        if permit.probe:
            self.state.on_answer(probe=True)
            log.info("amocrm.circuit_closed", account_id=self.account_id)

    def on_no_answer(self, permit: Permit) -> None:
        """The request got no HTTP answer: a probe frees its slot so another request can probe."""
        if permit.probe:
            self.state.probe_in_flight = False

    def snapshot(self) -> dict[str, Any]:
        return self.state.snapshot(self._monotonic())
