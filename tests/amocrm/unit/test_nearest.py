"""The process's 60 s cache of a contact's nearest active deal (vpbx/amocrm/nearest.py): expiry, webhook
hints, and the finish waiting for a pop-up's read in flight instead of sending its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from vpbx.amocrm.nearest import LEAD_TTL_S, NearestLeads
from vpbx.clock import FakeClock

BINDING = uuid.uuid4()


class SlowAmo:
    """E5/E6 of contact 9001 with deal 8001; E5 waits for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.requests: list[str] = []

    async def get_contact(self, contact_id: int, **_: Any) -> dict[str, Any]:
        self.requests.append(f"E5 {contact_id}")
        await self.release.wait()
        return {"id": contact_id, "name": "Анна", "_embedded": {"leads": [{"id": 8001}]}}

    async def get_leads(self, ids: Sequence[int], **_: Any) -> list[dict[str, Any]]:
        self.requests.append(f"E6 {list(ids)}")
        return [{"id": 8001, "name": "Поставка", "status_id": 7002, "updated_at": 1}]


async def test_the_answer_lives_60_s_and_a_hint_drops_it() -> None:
    clock = FakeClock()
    cache = NearestLeads(clock)
    cache.remember(BINDING, 9001, "Анна", [{"id": 8001, "status_id": 7002}, {"id": 8002, "status_id": 142}])
    entry = cache.cached(BINDING, 9001)
    assert entry is not None and entry.lead_id == 8001 and entry.name == "Анна"
    assert cache.cached(uuid.uuid4(), 9001) is None  # per binding
    clock.advance(LEAD_TTL_S - 1)
    assert cache.cached(BINDING, 9001) is not None
    clock.advance(1)
    assert cache.cached(BINDING, 9001) is None
    cache.remember(BINDING, 9002, "Олег", [])
    assert cache.cached(BINDING, 9002).lead_id is None  # type: ignore[union-attr]  # read: no active deal
    cache.forget(BINDING, 9002)
    assert cache.cached(BINDING, 9002) is None


async def test_the_finish_waits_for_the_popups_read_in_flight() -> None:
    cache = NearestLeads(FakeClock())
    amo = SlowAmo()
    popup = asyncio.create_task(cache.read(amo, BINDING, 9001, lane="realtime"))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert amo.requests == ["E5 9001"]
    finish = asyncio.create_task(cache.settled(BINDING, 9001))
    await asyncio.sleep(0)
    assert not finish.done()
    amo.release.set()
    async with asyncio.timeout(5):
        entry = await finish
        await popup
    assert entry is not None and entry.lead_id == 8001
    assert amo.requests == ["E5 9001", "E6 [8001]"]  # one read for both


async def test_a_failed_read_leaves_nothing_and_settled_does_not_hang() -> None:
    cache = NearestLeads(FakeClock())

    class Failing:
        async def get_contact(self, contact_id: int, **_: Any) -> dict[str, Any]:
            raise OSError("down")

    try:
        await cache.read(Failing(), BINDING, 9001)  # type: ignore[arg-type]
    except OSError:
        pass
    async with asyncio.timeout(5):
        assert await cache.settled(BINDING, 9001, wait_s=0.1) is None
