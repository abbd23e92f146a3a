"""A background worker in its own task (CONVENTIONS §4: start/stop cleanly).

``BackgroundLoop`` runs ``run_once`` over and over. Between rounds it waits for what the round returned
(seconds; ``None`` for ``interval_s``; 0 or less for no wait), or until ``wake()`` is called. A wake-up
during a round runs another round right after it: the wake flag is cleared before each round, never after.

A round that raises is logged with ``failure_event`` and the loop goes on, waiting ``interval_s`` doubled
per failure in a row, up to ``max_backoff_s`` (never less than ``interval_s``). The logging backs off too:
the 1st, 2nd, 4th, 8th, … failure in a row is logged (the error and the count), so an outage is a
few lines, not thousands; the recovery is logged at info.

``stop()`` cancels the task wherever it is (sleeping or in a round) and waits at most ``stop_timeout_s``
for it to end, so shutdown never hangs and never leaks the task.

Subclasses set ``name`` (the task's name) and ``interval_s`` as class or instance attributes; calling
``super().__init__()`` is not needed.
"""

from __future__ import annotations

import asyncio
import contextlib

from vpbx.logs import get_logger

log = get_logger("vpbx.background")

MAX_BACKOFF_S = 5.0  # the longest wait after failed rounds (unless interval_s is longer)
STOP_TIMEOUT_S = 5.0  # how long stop() waits for a cancelled round to unwind


class BackgroundLoop:
    """Base of the background workers: subclasses implement ``run_once``."""

    name: str = "background"
    failure_event: str = ""  # default: f"{name}.failed"
    interval_s: float = 1.0
    max_backoff_s: float = MAX_BACKOFF_S
    stop_timeout_s: float = STOP_TIMEOUT_S
    failures: int = 0  # failed rounds in a row
    _task: asyncio.Task[None] | None = None
    _wake_event: asyncio.Event | None = None

    async def run_once(self) -> float | None:
        """One round; the wait before the next (None: ``interval_s``)."""
        raise NotImplementedError

    # --- control ---

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._task = asyncio.create_task(self.run(), name=self.name)

    def wake(self) -> None:
        """Run a round now (after the one in progress, if any)."""
        self._event().set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.stop_timeout_s)
        if not done:  # it swallowed the cancel or unwinds slowly: left to finish on its own
            log.warning("background.stop_timeout", task=self.name, seconds=self.stop_timeout_s)
            return
        if not task.cancelled() and task.exception() is not None:
            log.warning("background.ended_with_error", task=self.name, error=repr(task.exception())[:300])

    # --- the loop ---

    def backoff(self) -> float:
        """The wait after ``failures`` failed rounds in a row."""
        cap = max(self.max_backoff_s, self.interval_s)
        return min(cap, self.interval_s * float(2 ** min(self.failures, 16)))

    async def run(self) -> None:
        """The loop itself, until cancelled (``start`` runs it in a task)."""
        wake = self._event()
        while True:
            wake.clear()  # before the round: a wake-up during it runs another
            wait: float | None
            try:
                wait = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if self.failures & (self.failures - 1) == 0:  # a power of two
                    event = self.failure_event or f"{self.name}.failed"
                    # no traceback: rendering one (with locals) blocks the event loop for up to seconds,
                    # and an outage makes every worker fail at once, starving the calls (media allocation)
                    log.warning(event, failures=self.failures, error=repr(exc)[:300])
                wait = self.backoff()
            else:
                if self.failures:
                    log.info("background.recovered", task=self.name, failures=self.failures)
                self.failures = 0
                if wait is None:
                    wait = self.interval_s
            if wait <= 0:
                await asyncio.sleep(0)  # let the others run between back-to-back rounds
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()

    def _event(self) -> asyncio.Event:
        if self._wake_event is None:
            self._wake_event = asyncio.Event()
        return self._wake_event
