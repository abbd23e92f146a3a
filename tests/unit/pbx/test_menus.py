"""Voice menus: names unique in a domain, bounded prompt, deletion refused while something points at it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import menus
from vpbx.pbx.menus import MenuInput
from vpbx.store.models import CallGroup, IncomingNumber, RoutingRule, VoiceMenu


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


async def _add(core: Core, t: Tenant, name: str, prompt: str = "") -> VoiceMenu:
    async with core.sessions() as s:
        m = await menus.create_menu(s, t.id, MenuInput(name=name, prompt_text=prompt))
        await s.commit()
        return m


async def test_create_update_and_list(core: Core, t1: Tenant) -> None:
    m = await _add(core, t1, "  Main  ", "Press 1 for sales")
    assert (m.name, m.prompt_text) == ("Main", "Press 1 for sales")
    await _add(core, t1, "After hours")
    async with core.sessions() as s:
        await menus.update_menu(s, t1.id, m.id, MenuInput(name="Main", prompt_text="Press 2"))
        await s.commit()
        assert [x.name for x in (await menus.list_menus(s, t1.id)).items] == ["After hours", "Main"]
        assert [x.name for x in (await menus.list_menus(s, t1.id, "press")).items] == ["Main"]
        assert (await menus.get_menu(s, t1.id, m.id)).prompt_text == "Press 2"


async def test_name_required_unique_and_bounded(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _add(core, t1, "Main")
    await _add(core, t2, "Main")  # another domain may use the same name
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(s, t1.id, MenuInput(name="Main", prompt_text="x" * 1001))
        assert _fields(e.value) == {
            "name": ["A voice menu with this name already exists"],
            "prompt_text": ["At most {max} characters"],
        }
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(s, t1.id, MenuInput(name=" ", prompt_text=""))
        assert _fields(e.value) == {"name": ["Required field"]}
        with pytest.raises(ValidationFailed) as e:
            await menus.create_menu(s, t1.id, MenuInput(name="x" * 65))
        assert _fields(e.value) == {"name": ["At most {max} characters"]}


async def test_other_domain_gets_not_found(core: Core, t1: Tenant, t2: Tenant) -> None:
    m = await _add(core, t1, "Main", "hello")
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await menus.get_menu(s, t2.id, m.id)
        with pytest.raises(NotFound):
            await menus.update_menu(s, t2.id, m.id, MenuInput(name="Stolen"))
        with pytest.raises(NotFound):
            await menus.delete_menu(s, t2.id, m.id)
        assert (await menus.list_menus(s, t2.id)).total == 0
    async with core.sessions() as s:
        assert (await s.get(VoiceMenu, m.id)) is not None
        assert (await menus.get_menu(s, t1.id, m.id)).name == "Main"


async def test_delete_refused_while_a_rule_or_group_uses_it(core: Core, t1: Tenant) -> None:
    m = await _add(core, t1, "Main")
    async with core.sessions() as s:
        n = IncomingNumber(domain_id=t1.id, number="+74951234567")
        s.add(n)
        await s.flush()
        rule = RoutingRule(domain_id=t1.id, number_id=n.id, position=0, action="menu", target_menu_id=m.id)
        group = CallGroup(
            domain_id=t1.id, name="G", pin="500", fallthrough_action="menu", fallthrough_menu_id=m.id
        )
        s.add_all([rule, group])
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await menus.delete_menu(s, t1.id, m.id)
        assert list(_fields(e.value)) == ["id"]
        await s.delete(await s.get(RoutingRule, rule.id))
        await s.commit()
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed):
            await menus.delete_menu(s, t1.id, m.id)  # the group still falls through to it
        g = await s.get(CallGroup, group.id)
        assert g is not None
        g.fallthrough_action, g.fallthrough_menu_id = None, None
        await s.commit()
    async with core.sessions() as s:
        await menus.delete_menu(s, t1.id, m.id)
        await s.commit()
    async with core.sessions() as s:
        assert list(await s.scalars(select(VoiceMenu))) == []
