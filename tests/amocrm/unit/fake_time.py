"""A fake monotonic clock with a sleep that returns when the test moves time past its end."""

from __future__ import annotations

import asyncio

SETTLE_ROUNDS = 20


class FakeTime:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._moved = asyncio.Event()
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        target = self.now + seconds
        while self.now < target - 1e-9:
            moved = self._moved
            await moved.wait()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def settle(self) -> None:
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)

    async def run(self, seconds: float, step: float = 0.01) -> None:
        """Move time forward in small steps, letting every woken task run after each."""
        for _ in range(round(seconds / step)):
            self.advance(step)
            await self.settle()
