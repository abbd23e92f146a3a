"""The background-worker base: wake-ups, stopping while asleep or mid-round, failed rounds, a bounded stop."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from vpbx.background import BackgroundLoop

WAIT_S = 5.0  # every wait in these tests is bounded


class Worker(BackgroundLoop):
    name = "test-worker"
    failure_event = "test.worker_failed"

    def __init__(
        self, *, interval_s: float = 60.0, fail: tuple[int, ...] = (), wait: float | None = None
    ) -> None:
        self.interval_s = interval_s  # long: only a wake-up (or a returned wait) starts the next round
        self.fail = fail
        self.wait = wait
        self.rounds = 0
        self.ended = 0  # rounds ended (returned, raised or cancelled)
        self.round_done = asyncio.Event()
        self.hold: asyncio.Event | None = None  # set: the round blocks until it is set
        self.in_round = asyncio.Event()
        self.unwound = asyncio.Event()

    async def run_once(self) -> float | None:
        self.rounds += 1
        self.in_round.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.rounds in self.fail:
                raise RuntimeError(f"round {self.rounds} fails")
            return self.wait
        finally:
            self.in_round.clear()
            self.ended += 1
            self.round_done.set()
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():  # type: ignore[union-attr]
                self.unwound.set()

    async def until(self, ended: int) -> None:
        """Wait until ``ended`` rounds have ended."""
        async with asyncio.timeout(WAIT_S):
            while self.ended < ended:
                self.round_done.clear()
                await self.round_done.wait()


async def test_the_first_round_runs_at_start_and_a_wake_runs_the_next() -> None:
    w = Worker()
    await w.start()
    try:
        await w.until(1)
        assert w.rounds == 1 and w.running
        w.wake()
        await w.until(2)
        assert w.rounds == 2
    finally:
        await w.stop()
    assert not w.running


async def test_a_wake_during_a_round_runs_another_round_after_it() -> None:
    w = Worker()
    w.hold = asyncio.Event()
    await w.start()
    try:
        async with asyncio.timeout(WAIT_S):
            await w.in_round.wait()
        w.wake()  # the round has not seen what woke it
        w.hold.set()
        await w.until(2)
        assert w.rounds == 2
    finally:
        await w.stop()


async def test_stop_while_sleeping_ends_the_task_and_no_round_runs_after() -> None:
    w = Worker()
    await w.start()
    await w.until(1)
    task = w._task
    await w.stop()
    assert task is not None and task.done() and not w.running
    w.wake()  # no task to wake
    await asyncio.sleep(0)
    assert w.rounds == 1


async def test_stop_while_working_cancels_the_round() -> None:
    w = Worker()
    w.hold = asyncio.Event()  # never set: the round would go on forever
    await w.start()
    async with asyncio.timeout(WAIT_S):
        await w.in_round.wait()
    await w.stop()
    assert w.unwound.is_set()  # the round saw the cancellation and unwound (its finally ran)
    assert not w.running


async def test_a_failed_round_does_not_end_the_loop() -> None:
    w = Worker(interval_s=0.01, fail=(1, 2), wait=60.0)
    await w.start()
    try:
        await w.until(1)
        assert w.failures == 1 and w.running
        await w.until(2)  # after the backoff, without a wake-up
        assert w.failures == 2
        await w.until(3)
        assert w.rounds == 3 and w.failures == 0  # recovered
    finally:
        await w.stop()


async def test_the_returned_wait_replaces_the_interval() -> None:
    w = Worker(interval_s=60.0, wait=0.0)  # 0: the next round right away
    await w.start()
    try:
        await w.until(3)  # without a wake-up: the interval is a minute
    finally:
        await w.stop()


class Stubborn(BackgroundLoop):
    """A round that swallows the cancellation and goes on waiting."""

    name = "test-stubborn"
    stop_timeout_s = 0.1

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def run_once(self) -> float | None:
        self.entered.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                continue  # badly behaved on purpose
        raise asyncio.CancelledError


async def test_stop_is_bounded_when_the_task_does_not_end() -> None:
    w = Stubborn()
    await w.start()
    task = w._task
    assert task is not None
    async with asyncio.timeout(WAIT_S):
        await w.entered.wait()
        await w.stop()  # returns after stop_timeout_s though the task goes on
    assert not task.done() and not w.running
    w.release.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT_S):
            await task


@pytest.mark.parametrize(
    ("interval_s", "failures", "wait"),
    [(0.25, 0, 0.25), (0.25, 1, 0.5), (0.25, 3, 2.0), (0.25, 10, 5.0), (30.0, 4, 30.0), (1.0, 100, 5.0)],
)
def test_backoff_doubles_per_failure_up_to_the_cap_never_below_the_interval(
    interval_s: float, failures: int, wait: float
) -> None:
    w = Worker(interval_s=interval_s)
    w.failures = failures
    assert w.backoff() == wait


async def test_start_twice_keeps_one_task() -> None:
    w = Worker()
    await w.start()
    task = w._task
    await w.start()
    try:
        assert w._task is task
    finally:
        await w.stop()


async def test_failures_in_a_row_are_logged_at_1_2_4_and_the_recovery_once() -> None:
    w = Worker(interval_s=0.001, fail=(1, 2, 3, 4, 5), wait=60.0)
    w.max_backoff_s = 0.001  # no real waiting between the failed rounds
    with structlog.testing.capture_logs() as logs:
        await w.start()
        try:
            await w.until(6)
        finally:
            await w.stop()
    failed = [e["failures"] for e in logs if e["event"] == "test.worker_failed"]
    recovered = [e for e in logs if e["event"] == "background.recovered"]
    assert failed == [1, 2, 4]
    assert [(e["task"], e["failures"]) for e in recovered] == [("test-worker", 5)]
