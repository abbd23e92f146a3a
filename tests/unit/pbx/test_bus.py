from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from vpbx.pbx.bus import CallEvent, InProcessBus, SequenceCounter, new_session_id

DOMAIN = uuid.uuid4()


def event(sid: str, seq: int, state: str = "new") -> CallEvent:
    return CallEvent(
        session_id=sid,
        seq=seq,
        state=state,
        type="internal",
        domain_id=DOMAIN,  # type: ignore[arg-type]
        domain="acme.test",
        timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )


async def test_each_subscriber_gets_every_event_in_order() -> None:
    bus = InProcessBus()
    got: dict[str, list[tuple[str, int]]] = {"a": [], "b": []}
    done = asyncio.Event()

    async def a(e: CallEvent) -> None:
        got["a"].append((e.session_id, e.seq))

    async def b(e: CallEvent) -> None:
        got["b"].append((e.session_id, e.seq))
        if len(got["b"]) == 6:
            done.set()

    bus.subscribe("a", a)
    bus.subscribe("b", b)
    await bus.start()
    for sid in ("s1", "s2"):
        for seq, state in enumerate(("new", "connected", "end"), start=1):
            await bus.publish(event(sid, seq, state))
    await asyncio.wait_for(done.wait(), timeout=2)
    await bus.stop()
    assert got["a"] == got["b"] == [("s1", 1), ("s1", 2), ("s1", 3), ("s2", 1), ("s2", 2), ("s2", 3)]


async def test_failing_subscriber_does_not_stop_others_or_itself() -> None:
    bus = InProcessBus()
    seen: list[int] = []

    async def flaky(e: CallEvent) -> None:
        if e.seq == 1:
            raise RuntimeError("boom")
        seen.append(e.seq)

    bus.subscribe("flaky", flaky)
    await bus.start()
    for seq in (1, 2, 3):
        await bus.publish(event("s", seq))
    await bus.stop()  # stop drains what is queued
    assert seen == [2, 3]


async def test_slow_subscriber_queue_is_bounded() -> None:
    bus = InProcessBus(queue_size=3)
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(e: CallEvent) -> None:
        await release.wait()
        seen.append(e.seq)

    bus.subscribe("slow", slow)
    await bus.start()
    await asyncio.sleep(0)  # let the subscriber take the first event and block on it
    for seq in range(1, 8):
        await bus.publish(event("s", seq))
    release.set()
    await bus.stop()
    assert len(seen) <= 4 and seen[-1] == 7  # the newest events survive, the oldest queued ones were dropped


def test_sequence_counter_and_session_ids() -> None:
    c = SequenceCounter()
    assert [c.next("a"), c.next("a"), c.next("b"), c.next("a")] == [1, 2, 1, 3]  # type: ignore[arg-type]
    sid = new_session_id()
    assert uuid.UUID(sid).version == 4 and sid == sid.lower()


async def test_a_bus_without_subscribers_publishes_and_stops() -> None:
    # `vpbx serve` with no feature subscribed (a bare install, the benchmark) must still stop cleanly
    bus = InProcessBus()
    await bus.start()
    await bus.publish(event("s1", 1))
    await bus.stop()
