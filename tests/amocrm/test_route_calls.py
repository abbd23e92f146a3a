"""The ИМК end to end (amocrm.md §6 examples 2–5, 14; F9): ``vpbx serve`` with the amoCRM emulator, SIPp as
the carrier and baresip phones.

The domain has extensions 101–103 and the line +74951234567, whose PBX rule is the sequential group 101 → 102.
The binding to ``demo.amocrm.ru`` is inserted as rows (install with a real token pair from the emulator's
token endpoint, mapping 5001↔101, 5002↔102, 5003↔103, fallback 5002, scenario «Основной» with smart routing
on and 5003 excluded). The phones auto-answer; which one rang, and the name it showed, is read from baresip's
events; the decision from the call's ``amo_calls`` row; amoCRM's side from the emulator's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from tests.amocrm.emu_kit import Emu, emulator
from tests.amocrm.route_kit import LINE, bind_rows
from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.net import wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp
from tests.integration.peers.vpbx import Setup
from tests.integration.test_calls import Server, running
from tests.integration.test_incoming_calls import carrier_run, line_to
from vpbx.amocrm.hooks import HOOK_EVENTS
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core
from vpbx.store.models import AmoCall, AmoPhoneCache, CrmBinding, CrmUserMap

pytestmark = pytest.mark.peers

ANNA = "79161234567"  # 9001 «Анна Смирнова», responsible 5001 (101); «Склад» 9003 mentions it in a comment
OLEG = "79167654321"  # 9002 «Олег Ким», responsible 5003: excluded
RETURNING = "79031112233"  # example 2: cached from an earlier call
WAIT_S = 20.0
RINGING = ("CALL_INCOMING", "CALL_REMOTE_SDP", "CALL_ESTABLISHED")


@dataclass
class Rig:
    server: Server
    emu: Emu
    phones: dict[str, Baresip]
    db_url: str
    workdir: Path
    stack: contextlib.AsyncExitStack

    async def call(self, caller: str, *, duration_ms: int = 800) -> None:
        """A carrier call from ``caller`` to the line, answered by whoever it reaches; the carrier ends it."""
        service = self.server.service
        run = carrier_run(
            self.server, calls=1, duration_ms=duration_ms, keys={"domain": service.host, "caller": caller}
        )
        result = await run_sipp(run, self.workdir)
        assert result.ok, result.describe()

    async def phone(self, pin: str, *, manual: bool = False) -> Baresip:
        """A baresip phone registered as ``pin``, answering by itself (``manual``: it only rings)."""
        phone = await self.stack.enter_async_context(Baresip.start(self.workdir, name=f"p{pin}"))
        answermode: Literal["manual", "auto"] = "manual" if manual else "auto"
        await phone.register(Account.on(self.server.service, pin, answermode=answermode))
        self.phones[pin] = phone
        return phone

    async def rows(self) -> list[AmoCall]:
        engine = create_async_engine(self.db_url)
        try:
            async with AsyncSession(engine) as s:
                return list(await s.scalars(select(AmoCall).order_by(AmoCall.created_at)))
        finally:
            await engine.dispose()

    async def routes(self, count: int) -> list[AmoCall]:
        """The calls' rows once ``count`` decisions are written."""
        found: list[AmoCall] = []

        async def enough() -> bool:
            nonlocal found
            found = await self.rows()
            return len(found) >= count

        await wait_until(enough, timeout_s=WAIT_S, what=f"{count} amo_calls rows")
        return found

    async def write(self, change: Callable[[AsyncSession], Any]) -> None:
        engine = create_async_engine(self.db_url)
        try:
            async with AsyncSession(engine) as s:
                await change(s)
                await s.commit()
        finally:
            await engine.dispose()

    async def hook_secret(self) -> str:
        engine = create_async_engine(self.db_url)
        try:
            async with AsyncSession(engine) as s:
                secret = await s.scalar(select(CrmBinding.hook_secret))
                assert secret is not None
                return secret
        finally:
            await engine.dispose()

    async def cache(self) -> dict[str, int | None]:
        """phone key → the cached responsible."""
        engine = create_async_engine(self.db_url)
        try:
            async with AsyncSession(engine) as s:
                return {r.phone_key: r.responsible_user_id for r in await s.scalars(select(AmoPhoneCache))}
        finally:
            await engine.dispose()

    def answered(self, pin: str) -> list[dict[str, object]]:
        """The calls the phone took (it answers by itself: no CALL_INCOMING, straight to CALL_ESTABLISHED)."""
        return [dict(e) for e in self.phones[pin].events if e.get("type") == "CALL_ESTABLISHED"]

    def rang(self, pin: str) -> bool:
        """Whether any call reached the phone at all."""
        return any(e.get("type") in RINGING for e in self.phones[pin].events)

    async def searches(self) -> list[str]:
        """The E4 queries amoCRM received."""
        return [
            parse_qs(str(e.get("query", ""))).get("query", [""])[0]
            for e in await self.emu.log()
            if e["method"] == "GET" and e["path"].endswith("/api/v4/contacts")
        ]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path,
    *,
    register: tuple[str, ...] = ("101", "102"),
    cache: dict[str, tuple[int, str, int]] | None = None,
    rules: Setup | None = None,
    options: dict[str, Any] | None = None,
    manual: tuple[str, ...] = (),
) -> AsyncIterator[Rig]:
    """vpbx bound to the emulator's demo account; ``rules`` the line's PBX rule (the group 101 → 102 by
    default); phones for ``register`` (``manual`` ones ring and never answer)."""
    require_binary("baresip")
    async with emulator() as emu:
        answer = await emu.token_pair()
        pair = TokenPair(
            access_token=answer["access_token"],
            refresh_token=answer["refresh_token"],
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(answer["expires_in"])),
        )
        rule = rules or line_to("group", members=("101", "102"))

        async def setup(s: AsyncSession, core: Core, domain_id: Any) -> None:
            await rule(s, core, domain_id)
            install, binding, _ = await bind_rows(
                s, domain_id, line=LINE, client_id=emu.client_id, options=options
            )
            await store_tokens(s, core.box, install, pair)
            for phone, (contact_id, name, responsible) in (cache or {}).items():
                s.add(
                    AmoPhoneCache(
                        binding_id=binding.id,
                        phone_key=phone[1:],
                        contact_id=contact_id,
                        name=name,
                        responsible_user_id=responsible,
                        cached_at=dt.datetime.now(dt.UTC),
                    )
                )

        env = {
            "VPBX_AMOCRM__CLIENT_ID": emu.client_id,
            "VPBX_AMOCRM__CLIENT_SECRET": emu.client_secret,
            "VPBX_AMOCRM__API_URL_TEMPLATE": emu.api_url_template,
        }
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(running(tmp_path, env=env, setup=setup))
            db = tmp_path / "vpbx" / "data" / "vpbx.sqlite3"
            the_rig = Rig(server, emu, {}, f"sqlite+aiosqlite:///{db}", tmp_path, stack)
            for pin in register:
                await the_rig.phone(pin, manual=pin in manual)
            yield the_rig


def route_of(row: AmoCall) -> tuple[str, str, str | None]:
    return row.route["step"], row.route["why"], row.route["pin"]


def names(events: list[dict[str, object]]) -> list[object]:
    return [e.get("peerdisplayname") for e in events]


async def test_known_callers_reach_their_responsible_with_the_name_and_excluded_ones_the_rules(
    tmp_path: Path,
) -> None:
    """Examples 2, 3 and 4: a cached caller routes with no request to amoCRM; Анна is found by E4 (the
    post-filter drops «Склад») and rings 101; Олег's responsible is excluded, so the rules ring 101 first, and
    the phone still shows «Олег Ким». 102 never rings."""
    cached = {RETURNING: (9010, "Новый клиент +79031112233", 5001)}
    async with rig(tmp_path, cache=cached) as r:
        await r.call(RETURNING)
        await r.call(ANNA)
        await r.call(OLEG)
        rows = await r.routes(3)
        searches = await r.searches()
        calls = await r.server.calls(ended=3)
        took_101, rang_102 = r.answered("101"), r.rang("102")

    assert [route_of(row) for row in rows] == [
        ("responsible", "contact-responsible", "101"),
        ("responsible", "contact-responsible", "101"),
        ("rules", "responsible-excluded", None),
    ]
    assert [row.route["lookup_source"] for row in rows] == ["cache", "api", "api"]
    assert [(row.lookup, row.contact_id, row.responsible_user_id) for row in rows] == [
        ("hit", 9010, 5001),
        ("hit", 9001, 5001),
        ("hit", 9002, 5003),
    ]
    assert all(row.line == LINE.lstrip("+") and row.direction == "incoming" for row in rows)
    assert searches == ["9161234567", "9167654321"]  # none for the cached caller
    assert names(took_101) == ["Новый клиент +79031112233", "Анна Смирнова", "Олег Ким"]
    assert not rang_102
    for events in calls.values():
        assert [e.get("request_pin") for e in events if e["state"] in ("calling", "connected")] == [
            "101",
            "101",
        ]


async def test_an_unreachable_busy_or_unmapped_responsible_hands_the_call_to_the_fallback(
    tmp_path: Path,
) -> None:
    """F9.4–F9.5 and example 5: Анна's responsible 5001 (101) has no phone → the fallback 5002 (102); 101 on a
    call → 102; the mapping of 5001 removed → 102. The name is shown every time."""
    async with rig(tmp_path, register=("102",)) as r:
        await r.call(ANNA)  # 101 is not registered
        await r.phone("101")
        talking = asyncio.create_task(r.call(OLEG, duration_ms=6000))  # the rules: 101 answers and talks
        await r.phones["101"].wait_event("CALL_ESTABLISHED", timeout_s=WAIT_S)
        await r.call(ANNA)  # 101 is busy
        await talking

        async def unmap(s: AsyncSession) -> None:
            await s.execute(delete(CrmUserMap).where(CrmUserMap.crm_user_id == 5001))

        await r.write(unmap)
        await r.call(ANNA)
        rows = await r.routes(4)
        took_101, took_102 = r.answered("101"), r.answered("102")

    by_caller = [(row.client_e164, route_of(row)) for row in rows]
    assert by_caller == [
        (ANNA, ("fallback", "responsible-unregistered", "102")),
        (OLEG, ("rules", "responsible-excluded", None)),
        (ANNA, ("fallback", "responsible-busy", "102")),
        (ANNA, ("fallback", "responsible-unmapped", "102")),
    ]
    assert names(took_102) == ["Анна Смирнова"] * 3
    assert names(took_101) == ["Олег Ким"]


async def test_a_slow_or_hanging_amocrm_leaves_calls_to_the_rules_then_the_cache_answers_alone(
    tmp_path: Path,
) -> None:
    """§5.8, example 14: E4 answering after 3 s is cut at the 1.5 s budget and the rules route (101 first);
    amoCRM hanging: after the third failure the binding is cache-only, so the next new caller is not looked
    up at all, and a cached caller still reaches the responsible with the name."""
    cached = {ANNA: (9001, "Анна Смирнова", 5001)}
    async with rig(tmp_path, cache=cached) as r:
        await r.emu.fault(method="GET", path_regex=r"/api/v4/contacts$", delay_ms=3000, times=-1)
        await r.call("79035550001")
        await r.emu.clear_faults()
        await r.emu.down(120, mode="hang")
        await r.call("79035550002")
        await r.call("79035550003")
        await r.call("79035550004")  # cache-only now
        await r.call(ANNA)
        rows = await r.routes(5)
        took_101, rang_102 = r.answered("101"), r.rang("102")

    assert [(row.client_e164, row.lookup, row.route["lookup_source"], route_of(row)) for row in rows] == [
        ("79035550001", "unknown", "timeout", ("rules", "lookup-unknown", None)),
        ("79035550002", "unknown", "timeout", ("rules", "lookup-unknown", None)),
        ("79035550003", "unknown", "timeout", ("rules", "lookup-unknown", None)),
        ("79035550004", "unknown", "cache-only", ("rules", "lookup-unknown", None)),
        (ANNA, "hit", "cache", ("responsible", "contact-responsible", "101")),
    ]
    assert names(took_101)[-1] == "Анна Смирнова"
    assert len(took_101) == 5 and not rang_102  # the rules' group rang 101 first, and 101 answered


async def test_a_responsible_who_does_not_answer_hands_the_call_to_the_rules_after_the_ring_time(
    tmp_path: Path,
) -> None:
    """F9.5: 101 (Анна's responsible) rings for ``smart_ring_timeout_s`` (5 s here) without answering, then
    the call goes on with the line's rule (user 102), who answers; the name stays on the phones."""
    async with rig(
        tmp_path, rules=line_to("user"), options={"smart_ring_timeout_s": 5}, manual=("101",)
    ) as r:
        await r.call(ANNA)
        [events] = (await r.server.calls(ended=1)).values()
        rang_101 = [dict(e) for e in r.phones["101"].events if e.get("type") == "CALL_INCOMING"]
        took_102 = r.answered("102")
        [row] = await r.routes(1)

    assert route_of(row) == ("responsible", "contact-responsible", "101")
    assert [(e["state"], e.get("request_pin")) for e in events][:4] == [
        ("new", None),
        ("calling", "101"),
        ("calling", "102"),
        ("connected", "102"),
    ]
    assert names(rang_101) == ["Анна Смирнова"] and names(took_102) == ["Анна Смирнова"]


async def test_a_webhook_from_amocrm_refreshes_the_cache_so_the_next_call_follows_the_change(
    tmp_path: Path,
) -> None:
    """E17/E18: vpbx subscribes the active binding's hook; a manager hands Анна to 5002 in amoCRM; amoCRM
    posts the form to /amo/hooks/{secret}, vpbx drops the cached row and re-reads the contact (E5), and her
    next call rings 102 without another search."""
    async with rig(tmp_path) as r:
        await r.call(ANNA)
        [first] = await r.routes(1)
        secret = await r.hook_secret()
        destination = f"{r.server.vpbx.http_url}/amo/hooks/{secret}"

        async def subscribed() -> bool:  # vpbx's webhook sync subscribes the active binding (E17)
            hooks = (await r.emu.state())["webhooks"]
            return [(h["destination"], h["settings"]) for h in hooks] == [(destination, list(HOOK_EVENTS))]

        await wait_until(subscribed, timeout_s=WAIT_S, what="the binding's webhook subscribed")
        answer = await r.emu.token_pair()
        async with r.emu.api(token=answer["access_token"]) as api:  # a manager's edit in amoCRM
            moved = await api.patch("/api/v4/contacts/9001", json={"responsible_user_id": 5002})
            assert moved.is_success, moved.text
        deliveries = await r.emu.wait_deliveries(count=1)

        async def reread() -> bool:
            rows = await r.cache()
            return rows.get("9161234567") == 5002

        await wait_until(reread, timeout_s=WAIT_S, what="the cache row re-read after the webhook")
        await r.call(ANNA)
        rows = await r.routes(2)
        searches = await r.searches()
        took_102 = r.answered("102")

    assert route_of(first) == ("responsible", "contact-responsible", "101")
    assert route_of(rows[1]) == ("responsible", "contact-responsible", "102")
    assert rows[1].route["lookup_source"] == "cache"
    assert searches == ["9161234567"]  # the second call needed no search
    assert all(d.get("status") == 200 for d in deliveries), deliveries
    assert names(took_102) == ["Анна Смирнова"]
