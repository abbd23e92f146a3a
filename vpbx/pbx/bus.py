"""The call event bus: the engine publishes; history, Integration API, amoCRM and autoinformer subscribe.

Events of one call carry one ``session_id`` and a ``seq`` that grows by one per event (telephony.md §3.7). The
in-process bus fans each event out to every subscriber's own bounded queue, drained by that subscriber's task,
so a slow consumer never holds up the engine or the other consumers. Consumers that must not lose events
(CDR, Integration API, amoCRM) read the database outbox instead (§9.3 rule 5); this bus is for live reactions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, NewType, Protocol

from vpbx.logs import get_logger

log = get_logger("vpbx.pbx.bus")

SessionId = NewType("SessionId", str)
CallState = Literal["new", "calling", "connected", "disconnected", "end"]
CallType = Literal["incoming", "outbound", "internal"]
CallKind = Literal["normal", "callback", "autoinformer"]
SUBSCRIBER_QUEUE = 10_000  # events per subscriber before the oldest is dropped (and counted)


def new_session_id() -> SessionId:
    """Our call id: a lower-case UUIDv4 (integration-api.md §1)."""
    return SessionId(str(uuid.uuid4()))


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent:
    session_id: SessionId
    seq: int
    state: CallState
    type: CallType
    domain_id: uuid.UUID
    domain: str
    timestamp: dt.datetime  # UTC
    call_kind: CallKind = "normal"
    from_number: str = ""
    from_pin: str | None = None
    from_uri: str = ""
    request_number: str = ""
    request_pin: str | None = None
    request_uri: str = ""
    line: str | None = None
    disconnect_reason: str | None = None
    is_record: bool | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"call.{self.state}"


Handler = Callable[[CallEvent], Awaitable[None]]


class EventBus(Protocol):
    def subscribe(self, name: str, handler: Handler) -> None: ...
    async def publish(self, event: CallEvent) -> None: ...
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


class _Subscriber:
    def __init__(self, name: str, handler: Handler, maxsize: int) -> None:
        self.name = name
        self.handler = handler
        self.queue: asyncio.Queue[CallEvent | None] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    def offer(self, event: CallEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
            log.warning("bus.dropped", subscriber=self.name, dropped=self.dropped)
        self.queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            event = await self.queue.get()
            if event is None:
                return
            try:
                await self.handler(event)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failing subscriber is logged and keeps receiving the next events
                log.exception(
                    "bus.handler_failed",
                    subscriber=self.name,
                    session_id=event.session_id,
                    call_event=event.name,
                )


class InProcessBus:
    """Fan-out to subscribers in this process, in publish order for each of them."""

    def __init__(self, *, queue_size: int = SUBSCRIBER_QUEUE) -> None:
        self._subs: list[_Subscriber] = []
        self._queue_size = queue_size
        self._running = False

    def subscribe(self, name: str, handler: Handler) -> None:
        sub = _Subscriber(name, handler, self._queue_size)
        self._subs.append(sub)
        if self._running:
            sub.task = asyncio.create_task(sub.run(), name=f"bus:{name}")

    async def publish(self, event: CallEvent) -> None:
        for sub in self._subs:
            sub.offer(event)

    async def start(self) -> None:
        self._running = True
        for sub in self._subs:
            if sub.task is None:
                sub.task = asyncio.create_task(sub.run(), name=f"bus:{sub.name}")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout_s`` in all), then stop every subscriber task."""
        self._running = False
        subs = [s for s in self._subs if s.task is not None]
        tasks = [s.task for s in subs if s.task is not None]
        try:
            async with asyncio.timeout(timeout_s):
                for sub in subs:
                    await sub.queue.put(None)  # after what is queued
                if tasks:  # asyncio.wait refuses an empty set
                    await asyncio.wait(tasks)
        except TimeoutError:
            log.warning("bus.stop_timeout", pending=sum(not t.done() for t in tasks))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sub in subs:
            sub.task = None


class SequenceCounter:
    """Hands out ``seq`` per session: 1, 2, 3… (owned by the node that runs the call)."""

    def __init__(self) -> None:
        self._next: dict[SessionId, int] = {}

    def next(self, session_id: SessionId) -> int:
        n = self._next.get(session_id, 0) + 1
        self._next[session_id] = n
        return n

    def forget(self, session_id: SessionId) -> None:
        self._next.pop(session_id, None)
