"""The SIP node's in-memory directory: one load, reloaded after users or domains change, never per lookup."""

from __future__ import annotations

import asyncio

from sqlalchemy import event

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.pbx import domains, menus, users
from vpbx.pbx.directory import SipDirectory
from vpbx.sip.digest import ha1


def count_queries(core: Core) -> list[str]:
    seen: list[str] = []
    event.listen(
        core.engine.sync_engine, "before_cursor_execute", lambda _c, _cur, stmt, *_a: seen.append(stmt)
    )
    return seen


async def test_lookups_come_from_one_load(core: Core, t1: Tenant) -> None:
    directory = SipDirectory(core.sessions, core.config)
    queries = count_queries(core)
    await asyncio.gather(*(directory.find(t1.name, "admin") for _ in range(20)))
    loads = len(queries)
    assert loads == 2  # users and domains, once, for twenty concurrent lookups
    creds = await directory.find(t1.name, "admin")
    assert creds is not None and creds.extension == "100"
    assert await directory.find(t1.name, "nobody") is None
    assert await directory.find("other.example", "admin") is None
    assert (await directory.domain(t1.name)) is not None
    assert len(queries) == loads  # hits and misses alike cost no query


async def test_reload_after_a_committed_change(core: Core, t1: Tenant) -> None:
    directory = SipDirectory(core.sessions, core.config)
    assert await directory.find(t1.name, "clerk") is None
    async with core.sessions() as s:
        await menus.create_menu(s, t1.id, menus.MenuInput(name="Main", prompt_text="Hello"))
        await s.commit()
    version = core.config.value
    async with core.sessions() as s:
        await users.create_user(
            s,
            t1.id,
            users.UserInput(name="clerk", display_name="C", pin="201", sip_password="Sip-Pass-123"),
            box=core.box,
        )
        await s.commit()
    assert core.config.value == version + 1
    creds = await directory.find(t1.name, "clerk")
    assert creds is not None and creds.ha1_md5 == ha1("clerk", t1.name, "Sip-Pass-123")
    user = await directory.user_by_pin(creds.tenant_id, "201")  # type: ignore[arg-type]
    assert user is not None and user.name == "clerk"


async def test_rollback_and_other_tables_do_not_move_the_version(core: Core, t1: Tenant) -> None:
    start = core.config.value
    async with core.sessions() as s:
        await menus.create_menu(s, t1.id, menus.MenuInput(name="Main", prompt_text="Hello"))
        await s.commit()
    async with core.sessions() as s:
        await users.create_user(
            s, t1.id, users.UserInput(name="u1", display_name="U", pin="202"), box=core.box
        )
        await s.rollback()
    assert core.config.value == start


async def test_blocked_domain_drops_out(core: Core, t1: Tenant) -> None:
    directory = SipDirectory(core.sessions, core.config)
    assert await directory.find(t1.name, "admin") is not None
    async with core.sessions() as s:
        await domains.set_blocked(s, t1.id, True, "unpaid")
        await s.commit()
    assert await directory.find(t1.name, "admin") is None
    assert await directory.domain(t1.name) is None
