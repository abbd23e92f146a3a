"""A periodic sweep survives a failed round and stops when asked."""

from __future__ import annotations

import asyncio

from vpbx.periodic import PeriodicSweep


class Flaky(PeriodicSweep):
    task_name = "test-sweep"
    failure_event = "test.sweep_failed"

    def __init__(self) -> None:
        self.interval_s = 0.01
        self.rounds = 0
        self.done = asyncio.Event()

    async def sweep(self) -> int:
        self.rounds += 1
        if self.rounds == 1:
            raise RuntimeError("the first round fails")
        if self.rounds == 3:
            self.done.set()
        return self.rounds


async def test_a_failed_round_is_logged_and_the_next_runs_on_time() -> None:
    sweep = Flaky()
    await sweep.start()
    await asyncio.wait_for(sweep.done.wait(), 5)
    await sweep.stop()
    rounds = sweep.rounds
    await asyncio.sleep(0.05)
    assert rounds >= 3 and sweep.rounds == rounds  # stopped: no more rounds
