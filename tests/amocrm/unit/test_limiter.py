"""The per-account limiter (amocrm.md §2.5) on a fake clock: bucket, lanes, deadlines, 429 pause and halving,
recovery, the 403 circuit and its probe."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.amocrm.unit.fake_time import FakeTime
from vpbx.amocrm.errors import AmoForbidden, AmoSkipped
from vpbx.amocrm.limiter import (
    CIRCUIT_OPEN_S,
    RECOVER_EVERY_S,
    AccountLimiter,
    LimiterState,
    Permit,
)


@pytest.fixture
def ft() -> FakeTime:
    return FakeTime()


def limiter(ft: FakeTime, rps: float = 5.0, seed: int = 7) -> AccountLimiter:
    return AccountLimiter(30000001, rps, monotonic=ft.monotonic, sleep=ft.sleep, rng=random.Random(seed))


async def drain(lim: AccountLimiter, n: int) -> list[Permit]:
    return [await lim.acquire() for _ in range(n)]


async def test_burst_then_the_rate(ft: FakeTime) -> None:
    lim = limiter(ft)
    await drain(lim, 5)  # burst = rate = 5, no waiting
    assert ft.slept == []
    sixth = asyncio.create_task(lim.acquire())
    await ft.settle()
    assert not sixth.done()
    await ft.run(0.15)
    assert not sixth.done()
    await ft.run(0.07)  # one token per 0.2 s
    assert sixth.done()
    assert sixth.result().at == pytest.approx(1000.2, abs=0.011)


async def test_realtime_goes_before_background(ft: FakeTime) -> None:
    lim = limiter(ft)
    await drain(lim, 5)
    order: list[str] = []

    async def take(lane: str) -> None:
        await lim.acquire("realtime" if lane == "realtime" else "background")
        order.append(lane)

    background = asyncio.create_task(take("background"))
    await ft.settle()
    realtime = asyncio.create_task(take("realtime"))
    await ft.settle()
    await ft.run(0.25)
    assert order == ["realtime"]  # the first free token went to the later realtime request
    await ft.run(0.25)
    assert order == ["realtime", "background"]
    await asyncio.gather(background, realtime)


async def test_realtime_skipped_when_no_token_before_its_deadline(ft: FakeTime) -> None:
    lim = limiter(ft)
    await drain(lim, 5)
    with pytest.raises(AmoSkipped):
        await lim.acquire("realtime", deadline=ft.now + 0.1)  # next token in 0.2 s
    assert ft.slept == []  # refused at once, without waiting
    task = asyncio.create_task(lim.acquire("realtime", deadline=ft.now + 0.3))
    await ft.run(0.25)
    assert task.done() and isinstance(task.result(), Permit)


async def test_429_pauses_the_account_and_halves_the_rate(ft: FakeTime) -> None:
    lim = limiter(ft)
    p = await lim.acquire()
    lim.on_429(p, None)
    snap = lim.snapshot()
    assert snap["rate"] == 2.5 and snap["count_429"] == 1
    assert 0.8 <= snap["paused_for_s"] <= 1.2  # 1 s ± 20 %
    pause = snap["paused_for_s"]
    task = asyncio.create_task(lim.acquire())
    await ft.run(pause - 0.05)
    assert not task.done()
    await ft.run(0.5)  # after the pause, tokens refill at the halved rate
    assert task.done()

    p2 = task.result()
    lim.on_429(p2, None)  # a later request: the next step of the backoff
    snap = lim.snapshot()
    assert snap["rate"] == 1.25
    assert 1.6 <= snap["paused_for_s"] <= 2.4
    await ft.run(snap["paused_for_s"] + 1.0)
    p3 = await lim.acquire()
    lim.on_429(p3, None)
    snap = lim.snapshot()
    assert snap["rate"] == 1.0  # floor
    assert 3.2 <= snap["paused_for_s"] <= 4.8


async def test_429_backoff_is_capped_at_a_minute() -> None:
    state = LimiterState(configured_rate=5.0, now=0.0, rng=random.Random(1))
    now = 0.0
    pauses = []
    for _ in range(10):
        pauses.append(state.on_429(now, sent_at=now, retry_after_s=None))
        now += 0.001
    assert max(pauses) <= 60 * 1.2
    assert pauses[-1] >= 60 * 0.8


async def test_retry_after_is_obeyed(ft: FakeTime) -> None:
    lim = limiter(ft)
    p = await lim.acquire()
    lim.on_429(p, 3.0)
    assert lim.snapshot()["paused_for_s"] == 3.0


async def test_429s_of_one_burst_halve_once(ft: FakeTime) -> None:
    lim = limiter(ft)
    permits = await drain(lim, 4)
    ft.advance(0.01)
    for p in permits:  # four requests sent before the first 429 came back
        lim.on_429(p, None)
    snap = lim.snapshot()
    assert snap["rate"] == 2.5 and snap["count_429"] == 4
    assert snap["paused_for_s"] <= 1.2


def test_rate_recovers_by_one_rps_per_minute_without_429() -> None:
    state = LimiterState(configured_rate=5.0, now=0.0, rng=random.Random(3))
    state.on_429(0.0, sent_at=0.0, retry_after_s=None)
    state.on_429(5.0, sent_at=5.0, retry_after_s=None)
    assert state.rate == 1.25
    assert state.snapshot(5.0 + RECOVER_EVERY_S - 1)["rate"] == 1.25
    assert state.snapshot(5.0 + RECOVER_EVERY_S)["rate"] == 2.25
    assert state.snapshot(5.0 + 2 * RECOVER_EVERY_S)["rate"] == 3.25
    assert state.snapshot(5.0 + 10 * RECOVER_EVERY_S)["rate"] == 5.0  # back to the setting, not beyond
    assert state.backoff_step == 0  # and the backoff starts from 1 s again


async def test_403_opens_the_circuit_then_one_probe(ft: FakeTime) -> None:
    lim = limiter(ft)
    await lim.acquire()
    lim.on_403()
    with pytest.raises(AmoForbidden):
        await lim.acquire("background")
    with pytest.raises(AmoSkipped):
        await lim.acquire("realtime", deadline=ft.now + 1)
    assert lim.snapshot()["circuit"] == "open"
    ft.advance(CIRCUIT_OPEN_S - 1)
    with pytest.raises(AmoForbidden):
        await lim.acquire()
    ft.advance(1)
    probe = await lim.acquire()
    assert probe.probe
    second = asyncio.create_task(lim.acquire())  # waits while the probe is out
    await ft.run(0.5)
    assert not second.done()
    lim.on_answer(probe)  # the probe got an answer other than 403: closed
    await ft.run(0.2)
    assert second.done() and not second.result().probe
    assert lim.snapshot()["circuit"] == "closed"


async def test_a_probe_that_gets_403_opens_the_circuit_again(ft: FakeTime) -> None:
    lim = limiter(ft)
    await lim.acquire()
    lim.on_403()
    ft.advance(CIRCUIT_OPEN_S)
    probe = await lim.acquire()
    assert probe.probe
    lim.on_403()
    snap = lim.snapshot()
    assert snap["circuit"] == "open" and snap["count_403"] == 2
    assert snap["circuit_open_for_s"] == CIRCUIT_OPEN_S
    with pytest.raises(AmoForbidden):
        await lim.acquire()


async def test_a_probe_without_answer_lets_another_request_probe(ft: FakeTime) -> None:
    lim = limiter(ft)
    await lim.acquire()
    lim.on_403()
    ft.advance(CIRCUIT_OPEN_S)
    probe = await lim.acquire()
    lim.on_no_answer(probe)
    again = await lim.acquire()
    assert again.probe
