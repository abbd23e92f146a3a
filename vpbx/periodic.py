"""A job run every ``interval_s`` in its own task, as the retention sweeps are (CONVENTIONS §4: start/stop).

A round that fails is logged and the next one runs on time: a sweep must never stop sweeping.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from vpbx.logs import get_logger

log = get_logger("vpbx.periodic")


class PeriodicSweep:
    """Base of the sweeps: subclasses name their task and failure event and implement ``sweep``."""

    task_name: ClassVar[str]
    failure_event: ClassVar[str]
    interval_s: float
    _task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """One round; how many items went."""
        raise NotImplementedError

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(self.failure_event)
            await asyncio.sleep(self.interval_s)
