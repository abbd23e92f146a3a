"""The ИМК's caller lookup and phone cache (amocrm.md §5.3, §2.4, §5.8) against an in-test amoCRM stand-in."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from tests.amocrm.route_kit import ANNA, SKLAD, Down, FakeAmo, World, build_world, contact
from vpbx.amocrm.errors import AmoSkipped
from vpbx.amocrm.lookup import CACHE_ONLY_S, NEGATIVE_TTL_S, POSITIVE_FRESH_S, Contact, PhoneLookup, pick
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.crm.connector import Binding
from vpbx.store.models import AmoPhoneCache, CrmBinding

KEY = "9161234567"
BUDGET_S = 1.5


@pytest.fixture
async def world(core: Core) -> World:
    return await build_world(core)


async def _binding(core: Core, world: World) -> Binding:
    async with core.sessions() as s:
        row = await s.get(CrmBinding, world.binding_id)
        assert row is not None
        return Binding.of(row)


async def _rows(core: Core, binding_id: uuid.UUID) -> dict[str, AmoPhoneCache]:
    async with core.sessions() as s:
        rows = await s.scalars(select(AmoPhoneCache).where(AmoPhoneCache.binding_id == binding_id))
        return {r.phone_key: r for r in rows}


def test_the_post_filter_keeps_only_phone_matches_and_prefers_the_latest_update() -> None:
    assert pick([ANNA, SKLAD], KEY) == ANNA  # «Склад» only mentions the number in a comment
    assert pick([SKLAD], KEY) is None
    older = contact(9101, "Old", 5001, "8 (916) 123-45-67", updated_at=100)
    newer = contact(9102, "New", 5002, "79161234567", updated_at=200)
    assert pick([older, newer, SKLAD], KEY) == newer
    assert pick([contact(9103, "Other", 5001, "+79161234568")], KEY) is None


async def test_a_miss_asks_amocrm_once_and_caches_the_post_filtered_contact(core: Core, world: World) -> None:
    amo = FakeAmo()
    clock = FakeClock(core.clock.now())
    lookup = PhoneLookup(core.sessions, amo, clock)
    b = await _binding(core, world)

    first = await lookup.realtime(b, KEY, BUDGET_S)
    assert (first.outcome, first.source) == ("hit", "api")
    assert first.contact == Contact(id=9001, name="Анна Смирнова", responsible_user_id=5001)
    assert amo.searches == [(KEY, "realtime")]
    second = await lookup.realtime(b, KEY, BUDGET_S)
    assert (second.outcome, second.source, second.contact) == ("hit", "cache", first.contact)
    assert len(amo.searches) == 1
    row = (await _rows(core, world.binding_id))[KEY]
    assert (row.contact_id, row.negative, row.responsible_user_id) == (9001, False, 5001)


async def test_an_old_positive_entry_routes_at_once_and_is_read_again_in_the_background(
    core: Core, world: World
) -> None:
    amo = FakeAmo()
    clock = FakeClock(core.clock.now())
    lookup = PhoneLookup(core.sessions, amo, clock)
    b = await _binding(core, world)
    await lookup.realtime(b, KEY, BUDGET_S)
    amo.contacts = [contact(9001, "Анна Петрова", 5002, "+79161234567")]  # changed, the webhook was lost
    clock.advance(POSITIVE_FRESH_S + 1)
    stale = await lookup.realtime(b, KEY, BUDGET_S)
    assert (stale.source, stale.contact) == (
        "cache",
        Contact(id=9001, name="Анна Смирнова", responsible_user_id=5001),
    )
    await lookup.drain()
    assert amo.searches[-1] == (KEY, "background")
    fresh = await lookup.realtime(b, KEY, BUDGET_S)
    assert fresh.contact == Contact(id=9001, name="Анна Петрова", responsible_user_id=5002)


async def test_a_negative_entry_lives_sixty_seconds(core: Core, world: World) -> None:
    amo = FakeAmo()
    clock = FakeClock(core.clock.now())
    lookup = PhoneLookup(core.sessions, amo, clock)
    b = await _binding(core, world)
    assert (await lookup.realtime(b, "9031112233", BUDGET_S)).outcome == "miss"
    assert (await lookup.realtime(b, "9031112233", BUDGET_S)).source == "cache"
    assert len(amo.searches) == 1
    clock.advance(NEGATIVE_TTL_S)
    amo.contacts.append(contact(9010, "Новый клиент +79031112233", 5001, "+79031112233"))
    again = await lookup.realtime(b, "9031112233", BUDGET_S)
    assert (again.outcome, again.source) == ("hit", "api") and len(amo.searches) == 2


async def test_three_failures_make_the_binding_cache_only_for_a_minute(core: Core, world: World) -> None:
    amo = FakeAmo(delay_s=5.0)  # amoCRM hangs
    clock = FakeClock(core.clock.now())
    lookup = PhoneLookup(core.sessions, amo, clock)
    b = await _binding(core, world)
    await lookup.remember(b.id, "9167654321", Contact(id=9002, name="Олег Ким", responsible_user_id=5003))
    for n in ("9030000001", "9030000002", "9030000003"):
        result = await lookup.realtime(b, n, 0.05)
        assert (result.outcome, result.source) == ("unknown", "timeout")
    assert lookup.cache_only(b.id)
    asked = len(amo.searches)
    result = await lookup.realtime(b, "9030000004", BUDGET_S)
    assert (result.outcome, result.source) == ("unknown", "cache-only") and len(amo.searches) == asked
    cached = await lookup.realtime(b, "9167654321", BUDGET_S)  # the cache still answers
    assert (cached.outcome, cached.contact and cached.contact.name) == ("hit", "Олег Ким")
    clock.advance(CACHE_ONLY_S)
    amo.delay_s = 0
    assert (await lookup.realtime(b, KEY, BUDGET_S)).outcome == "hit"
    assert not lookup.cache_only(b.id)


async def test_errors_count_but_a_skip_by_the_limiter_does_not(core: Core, world: World) -> None:
    amo = FakeAmo(fail=AmoSkipped("no token"))
    lookup = PhoneLookup(core.sessions, amo, FakeClock(core.clock.now()))
    b = await _binding(core, world)
    for _ in range(4):
        assert (await lookup.realtime(b, KEY, BUDGET_S)).source == "skipped"
    assert not lookup.cache_only(b.id)
    amo.fail = Down("503")
    for _ in range(2):
        assert (await lookup.realtime(b, KEY, BUDGET_S)).source == "error"
    assert not lookup.cache_only(b.id)
    amo.fail = None
    assert (await lookup.realtime(b, KEY, BUDGET_S)).outcome == "hit"  # a success resets the count
    amo.fail = Down("503")
    for n in ("9030000001", "9030000002"):
        await lookup.realtime(b, n, BUDGET_S)
    assert not lookup.cache_only(b.id)


async def test_one_bindings_cache_is_not_anothers(core: Core, world: World) -> None:
    other = await build_world(core, "b.vpbx.test", account=30000002, line="+74957654321")
    amo = FakeAmo()
    lookup = PhoneLookup(core.sessions, amo, FakeClock(core.clock.now()))
    await lookup.remember(
        world.binding_id, KEY, Contact(id=9001, name="Анна Смирнова", responsible_user_id=5001)
    )
    b2 = await _binding(core, other)
    result = await lookup.realtime(b2, KEY, BUDGET_S)
    assert result.source == "api" and len(amo.searches) == 1
    assert set(await _rows(core, other.binding_id)) == {KEY}
