"""The ИМК's routing hook (amocrm.md F9, §5.3): the decision table, the hook over real rows, the call's
context row, the webhook route (E18) and the E17 helpers."""

from __future__ import annotations

import datetime as dt
import uuid
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.amocrm.route_kit import Down, FakeAmo, World, build_world, contact
from vpbx.amocrm.hooks import HOOK_EVENTS, parse_hook, subscribe_webhooks, unsubscribe_webhooks
from vpbx.amocrm.lookup import Contact, PhoneLookup, close_shared_lookup, shared_lookup
from vpbx.amocrm.popups import Popups
from vpbx.amocrm.routing import AmoRoutingHook, ExtState, Facts, Route, decide, extension_states, routing_part
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.crm.connector import Binding
from vpbx.pbx.calls import Call, MemoryCallRegistry, Party, outside_party
from vpbx.pbx.directory import DomainInfo
from vpbx.pbx.dnd import set_dnd
from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery
from vpbx.pbx.registrar import Binding as SipBinding
from vpbx.pbx.registrar import aor_for
from vpbx.sip.flow import Destination
from vpbx.store.models import AmoCall, AmoPhoneCache, AmoScenario, CrmBinding, CrmUserMap, User

ANNA_C = Contact(id=9001, name="Анна Смирнова", responsible_user_id=5001)
MAP = {5001: "101", 5002: "102", 5003: "103"}
FREE: dict[str, ExtState] = {"101": "free", "102": "free", "103": "free"}


def facts(contact: Contact | None = ANNA_C, **kw: object) -> Facts:
    base: dict[str, object] = {
        "contact": contact,
        "lookup": "hit" if contact else "miss",
        "excluded": frozenset({5003}),
        "mapping": MAP,
        "inactive": frozenset(),
        "fallback_user_id": 5002,
        "states": FREE,
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (facts(), Route(step="responsible", why="contact-responsible", pin="101")),
        (facts(None), Route(step="rules", why="no-contact")),
        (facts(None, lookup="unknown"), Route(step="rules", why="lookup-unknown")),
        (facts(Contact(id=1, name="X", responsible_user_id=None)), Route(step="rules", why="no-responsible")),
        (
            facts(Contact(id=9002, name="Олег Ким", responsible_user_id=5003)),
            Route(step="rules", why="responsible-excluded"),
        ),
        (facts(mapping={5002: "102"}), Route(step="fallback", why="responsible-unmapped", pin="102")),
        (facts(inactive=frozenset({5001})), Route(step="fallback", why="responsible-inactive", pin="102")),
        (facts(states={"102": "free"}), Route(step="fallback", why="responsible-extension-gone", pin="102")),
        (facts(states={**FREE, "101": "busy"}), Route(step="fallback", why="responsible-busy", pin="102")),
        (
            facts(states={**FREE, "101": "unregistered"}),
            Route(step="fallback", why="responsible-unregistered", pin="102"),
        ),
        (
            facts(states={**FREE, "101": "busy", "102": "unregistered"}),
            Route(step="rules", why="responsible-busy; fallback-unregistered"),
        ),
        (facts(states={**FREE, "101": "dnd"}), Route(step="fallback", why="responsible-dnd", pin="102")),
        (
            facts(states={**FREE, "101": "dnd", "102": "dnd"}),
            Route(step="rules", why="responsible-dnd; fallback-dnd"),
        ),
        (
            facts(mapping={}, fallback_user_id=None),
            Route(step="rules", why="responsible-unmapped; fallback-unset"),
        ),
        (
            facts(mapping={5002: "102"}, fallback_user_id=5002, inactive=frozenset({5002})),
            Route(step="rules", why="responsible-unmapped; fallback-inactive"),
        ),
    ],
)
def test_the_decision_table(f: Facts, expected: Route) -> None:
    assert decide(f) == expected


# --- the hook over real rows ------------------------------------------------------------------------------


@pytest.fixture
async def world(core: Core) -> World:
    return await build_world(core)


def query(world: World, caller: str = "79161234567", line: str = "74951234567") -> RoutingQuery:
    return RoutingQuery(
        session_id=uuid.uuid4().hex,
        domain_id=world.domain_id,
        domain=world.domain,
        from_number=caller,
        request_number=line,
    )


async def register(core: Core, world: World, *pins: str) -> None:
    now = core.clock.monotonic()
    for i, pin in enumerate(pins):
        await core.location.save(
            world.domain_id,
            aor_for(pin, world.domain),
            SipBinding(
                contact=f"sip:{pin}@192.0.2.{10 + i}",
                flow=Destination("udp", f"192.0.2.{10 + i}", 5060),
                call_id=f"c{pin}",
                cseq=1,
                expires_at=now + 300,
                updated_at=now,
            ),
        )


def hook_for(core: Core, amo: FakeAmo, calls: MemoryCallRegistry | None = None) -> AmoRoutingHook:
    return AmoRoutingHook(core, amo, calls=calls or MemoryCallRegistry())


async def context(core: Core, world: World, session_id: str) -> AmoCall:
    async with core.sessions() as s:
        row = await s.get(AmoCall, (world.binding_id, session_id))
        assert row is not None
        return row


async def test_a_known_caller_goes_to_the_responsibles_extension_with_the_name(
    core: Core, world: World
) -> None:
    await register(core, world, "101", "102")
    hook = hook_for(core, FakeAmo())
    q = query(world)
    answer = await hook(q)
    assert answer == RoutingAnswer(pin="101", display_name="Анна Смирнова", overflow_after_s=20)
    await hook.drain()
    row = await context(core, world, q.session_id)
    assert row.route == {
        "step": "responsible",
        "why": "contact-responsible",
        "pin": "101",
        "lookup_source": "api",
    }
    assert (row.lookup, row.contact_id, row.contact_name, row.responsible_user_id) == (
        "hit",
        9001,
        "Анна Смирнова",
        5001,
    )
    assert (row.client_e164, row.line, row.scenario_id, row.direction) == (
        "79161234567",
        "74951234567",
        world.scenario_id,
        "incoming",
    )
    await hook.stop()


async def test_an_excluded_responsible_leaves_the_rules_but_the_name_is_shown(
    core: Core, world: World
) -> None:
    await register(core, world, "101", "102", "103")
    hook = hook_for(core, FakeAmo())
    q = query(world, caller="79167654321")
    assert await hook(q) == RoutingAnswer(display_name="Олег Ким")
    await hook.drain()
    assert (await context(core, world, q.session_id)).route["step"] == "rules"


async def test_a_busy_or_unregistered_responsible_goes_to_the_fallback(core: Core, world: World) -> None:
    await register(core, world, "102")  # 101 has no phone
    hook = hook_for(core, FakeAmo())
    answer = await hook(query(world))
    assert answer is not None and (answer.pin, answer.display_name) == ("102", "Анна Смирнова")
    await register(core, world, "101")
    calls = MemoryCallRegistry()
    domain = DomainInfo(id=world.domain_id, name=world.domain, channel_limit=10, timezone="Europe/Moscow")
    party = Party(user_id=None, login="user101", pin="101", display_name="", domain=world.domain)
    calls.admit(
        Call(
            session_id="busy-1",
            domain=domain,
            caller=party,
            callee=outside_party("79990000000", world.domain),
            started_at=dt.datetime.now(dt.UTC),
        )
    )
    busy_hook = hook_for(core, FakeAmo(), calls)
    q = query(world)
    answer = await busy_hook(q)
    assert answer is not None and answer.pin == "102"
    await busy_hook.drain()
    assert (await context(core, world, q.session_id)).route == {
        "step": "fallback",
        "why": "responsible-busy",
        "pin": "102",
        "lookup_source": "cache",
    }


async def test_a_responsible_on_dnd_goes_to_the_fallback_and_the_log_says_dnd(
    core: Core, world: World
) -> None:
    await register(core, world, "101", "102")  # registered and free: only DND keeps 101 from the call
    async with core.sessions() as s:
        uid = await s.scalar(select(User.id).where(User.domain_id == world.domain_id, User.pin == "101"))
        assert uid is not None
        await set_dnd(s, world.domain_id, uid, True, now=core.clock.now())
        await s.commit()
    hook = hook_for(core, FakeAmo())
    q = query(world)
    answer = await hook(q)
    assert answer is not None and answer.pin == "102"
    await hook.drain()
    assert (await context(core, world, q.session_id)).route["why"] == "responsible-dnd"
    states = await extension_states(core, MemoryCallRegistry(), world.domain_id, world.domain, {"101", "102"})
    assert states == {"101": "dnd", "102": "free"}


async def test_the_hook_stays_out_without_an_active_binding_scenario_line_or_smart_routing(
    core: Core, world: World
) -> None:
    await register(core, world, "101", "102")
    amo = FakeAmo()
    hook = hook_for(core, amo)
    assert await hook(query(world, line="74950000000")) is None  # a line of no scenario
    async with core.sessions() as s:
        scenario = await s.get(AmoScenario, world.scenario_id)
        assert scenario is not None
        scenario.document = {"smart_routing": {"enabled": False}}
        await s.commit()
    assert await hook(query(world)) is None
    async with core.sessions() as s:
        scenario = await s.get(AmoScenario, world.scenario_id)
        assert scenario is not None
        scenario.document = {"smart_routing": {"enabled": True}}
        scenario.is_active = False
        await s.commit()
    assert await hook(query(world)) is None
    async with core.sessions() as s:
        scenario = await s.get(AmoScenario, world.scenario_id)
        binding = await s.get(CrmBinding, world.binding_id)
        assert scenario is not None and binding is not None
        scenario.is_active = True
        binding.status = "disabled"
        await s.commit()
    assert await hook(query(world)) is None
    assert amo.searches == []


async def test_another_domains_call_never_uses_this_binding(core: Core, world: World) -> None:
    other = await build_world(core, "b.vpbx.test", account=30000002, line="+74957654321", smart=False)
    amo = FakeAmo()
    hook = hook_for(core, amo)
    # the line of domain A, but the call is domain B's (the engine never mixes them; the hook must not either)
    q = RoutingQuery(
        session_id="x",
        domain_id=other.domain_id,
        domain=other.domain,
        from_number="79161234567",
        request_number="74951234567",
    )
    assert await hook(q) is None and amo.searches == []


async def test_an_unmapped_responsible_goes_to_the_fallback(core: Core, world: World) -> None:
    await register(core, world, "101", "102")
    async with core.sessions() as s:
        row = await s.get(CrmUserMap, (world.binding_id, 5001))
        await s.delete(row)
        await s.commit()
    hook = hook_for(core, FakeAmo())
    answer = await hook(query(world))
    assert answer is not None and (answer.pin, answer.overflow_after_s) == ("102", 20)


async def test_the_row_of_the_call_keeps_what_the_jobs_wrote(core: Core, world: World) -> None:
    await register(core, world, "101")
    q = query(world)
    async with core.sessions() as s:
        s.add(
            AmoCall(
                binding_id=world.binding_id, session_id=q.session_id, direction="incoming", rung_pins=["101"]
            )
        )
        await s.commit()
    hook = hook_for(core, FakeAmo())
    await hook(q)
    await hook.drain()
    row = await context(core, world, q.session_id)
    assert row.rung_pins == ["101"] and row.contact_id == 9001


# --- webhooks (E17/E18) -----------------------------------------------------------------------------------


def test_a_php_bracket_form_is_read() -> None:
    body = (
        b"contacts%5Bupdate%5D%5B0%5D%5Bid%5D=9001&contacts%5Bupdate%5D%5B0%5D%5Bname%5D=X"
        b"&contacts%5Bdelete%5D%5B0%5D%5Bid%5D=9003&account%5Bid%5D=30000001&account%5Bsubdomain%5D=demo"
        b"&contacts%5Bupdate%5D%5B1%5D%5Bid%5D=oops"
    )
    account, events = parse_hook(body)
    assert account == 30000001
    assert [(e.action, e.contact_id) for e in events] == [("update", 9001), ("delete", 9003)]


async def _asgi(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def amo_sub(app: FastAPI) -> FastAPI:
    from starlette.routing import Mount

    for route in app.routes:
        if isinstance(route, Mount) and route.path == "/amo":
            sub = route.app
            assert isinstance(sub, FastAPI)
            return sub
    raise AssertionError("/amo is not mounted")


async def test_the_inbound_hook_drops_and_rereads_only_its_bindings_rows(
    app: FastAPI, core: Core, world: World
) -> None:
    other = await build_world(core, "b.vpbx.test", account=30000002, line="+74957654321")
    amo = FakeAmo(contacts=[contact(9001, "Анна Смирнова-Ли", 5002, "+79161234567", "+79160000009")])
    lookup = PhoneLookup(core.sessions, amo, FakeClock(core.clock.now()))
    for w in (world, other):
        await lookup.remember(
            w.binding_id, "9161234567", Contact(id=9001, name="Анна Смирнова", responsible_user_id=5001)
        )
    amo_sub(app).state.amo_lookup = lookup
    form = {"contacts[update][0][id]": "9001", "account[id]": "30000001"}
    async with await _asgi(app) as client:
        unknown = await client.post("/amo/hooks/no-such-secret", data=form)
        wrong_account = await client.post(f"/amo/hooks/{other.hook_secret}", data=form)
        ok = await client.post(f"/amo/hooks/{world.hook_secret}", data=form)
    assert unknown.status_code == 404 and unknown.json() == {"error": "not-found"}
    async with core.sessions() as s:
        disabled = await s.get(CrmBinding, other.binding_id)
        assert disabled is not None
        disabled.status = "disabled"
        await s.commit()
    async with await _asgi(app) as client:
        gone = await client.post(f"/amo/hooks/{other.hook_secret}", data=form)
    assert gone.status_code == 404
    assert wrong_account.status_code == 200 and ok.status_code == 200
    await lookup.drain()
    assert amo.reads == [9001]
    async with core.sessions() as s:
        rows = {(r.binding_id, r.phone_key): r for r in await s.scalars(select(AmoPhoneCache))}
    assert rows[(world.binding_id, "9161234567")].name == "Анна Смирнова-Ли"
    assert rows[(world.binding_id, "9160000009")].responsible_user_id == 5002
    assert rows[(other.binding_id, "9161234567")].name == "Анна Смирнова"  # B's rows untouched


async def test_a_deleted_contact_leaves_the_cache_and_is_not_read(
    app: FastAPI, core: Core, world: World
) -> None:
    amo = FakeAmo()
    lookup = PhoneLookup(core.sessions, amo, FakeClock(core.clock.now()))
    await lookup.remember(world.binding_id, "9161234567", ANNA_C)
    amo_sub(app).state.amo_lookup = lookup
    async with await _asgi(app) as client:
        r = await client.post(f"/amo/hooks/{world.hook_secret}", data={"contacts[delete][0][id]": "9001"})
    assert r.status_code == 200
    await lookup.drain()
    assert amo.reads == []
    async with core.sessions() as s:
        assert await s.get(AmoPhoneCache, (world.binding_id, "9161234567")) is None


async def test_subscribe_and_unsubscribe_name_the_bindings_hook_url(core: Core, world: World) -> None:
    amo = FakeAmo()
    async with core.sessions() as s:
        binding = await s.get(CrmBinding, world.binding_id)
        assert binding is not None
        assert await subscribe_webhooks(amo, core.settings, binding) == "77"
        assert binding.webhook_id == "77"
        await unsubscribe_webhooks(amo, core.settings, binding)
    destination, settings = amo.subscribed
    assert destination.endswith(f"/amo/hooks/{world.hook_secret}") and settings == list(HOOK_EVENTS)
    assert amo.unsubscribed == destination and binding.webhook_id == ""


async def test_the_part_registers_on_the_engine_and_keeps_its_budget_in_the_engines_wait(core: Core) -> None:
    class Engine:
        def __init__(self) -> None:
            self.routing_hook_deadline_s = 1.0
            self.routing_hooks: list[tuple[str, object]] = [("get_number_info", object())]
            self.registry = MemoryCallRegistry()

    engine = Engine()
    hook = AmoRoutingHook(core, FakeAmo(), b2bua=engine)
    await hook.start()
    assert [name for name, _ in engine.routing_hooks] == ["get_number_info", "amocrm"]
    assert hook._budget(1.5) == pytest.approx(0.6) and hook._budget(0.3) == pytest.approx(0.3)
    await hook.stop()
    assert [name for name, _ in engine.routing_hooks] == ["get_number_info"]


async def test_the_runtimes_routing_and_popups_share_one_lookup_so_routing_failures_make_popups_cache_only(
    core: Core, world: World
) -> None:
    """One ``PhoneLookup`` per process (``shared_lookup``): amoCRM failing three times for the calls' routing
    puts the pop-ups' lookups of that binding in cache-only mode too (no fourth request)."""
    amo = FakeAmo(fail=Down("amoCRM is down"))
    runtime = SimpleNamespace(core=core, app=None, b2bua=None, clients=amo)
    hook = routing_part(runtime)
    popups = Popups.for_runtime(runtime)
    try:
        assert hook.lookup is popups.lookup is shared_lookup(core, amo)
        async with core.sessions() as s:
            row = await s.get(CrmBinding, world.binding_id)
            assert row is not None
            b = Binding.of(row)
        for n in ("9030000011", "9030000012", "9030000013"):  # the pop-ups' failures do not count (§5.8)
            assert (await popups.lookup.realtime(b, n, 1.0, counts=False)).source == "error"
        assert not hook.lookup.cache_only(world.binding_id)
        for caller in ("79030000001", "79030000002", "79030000003"):
            await hook(query(world, caller=caller))
        assert len(amo.searches) == 6
        assert popups.lookup.cache_only(world.binding_id)
        found = await popups.lookup.realtime(b, "9030000004", 1.0, counts=False)
        assert (found.outcome, found.source) == ("unknown", "cache-only")
        assert len(amo.searches) == 6  # the pop-up asked amoCRM nothing
    finally:
        await hook.drain()
        await popups.stop()
        await close_shared_lookup(core)
    assert shared_lookup(core, FakeAmo()) is not hook.lookup  # closed: the next runtime gets a fresh one
    await close_shared_lookup(core)
