"""Incoming numbers: normalisation, ownership by one domain, search, deletion with rules."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import lines
from vpbx.pbx.lines import NumberInput
from vpbx.store.models import IncomingNumber, RoutingRule


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


async def _add(core: Core, t: Tenant, number: str, label: str = "") -> IncomingNumber:
    async with core.sessions() as s:
        n = await lines.create_number(s, t.id, NumberInput(number=number, label=label))
        await s.commit()
        return n


@pytest.mark.parametrize("spelling", ["8 495 123-45-67", "+7 (495) 1234567", "84951234567", "+74951234567"])
async def test_spellings_are_stored_as_e164(core: Core, t1: Tenant, spelling: str) -> None:
    n = await _add(core, t1, spelling, "  Офис  ")
    assert n.number == "+74951234567"
    assert n.label == "Офис"


async def test_malformed_number_is_a_field_error(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await lines.create_number(s, t1.id, NumberInput(number="12ab", label="x" * 129))
    assert set(_fields(e.value)) == {"number", "label"}
    assert _fields(e.value)["number"] == ["Not a valid phone number: {value}"]


async def test_same_number_twice_in_a_domain(core: Core, t1: Tenant) -> None:
    await _add(core, t1, "+74951234567")
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await lines.create_number(s, t1.id, NumberInput(number="8 (495) 123-45-67"))
    assert _fields(e.value) == {"number": ["This number is already added"]}


async def test_number_of_another_domain_is_a_distinct_error(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _add(core, t1, "+74951234567")
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await lines.create_number(s, t2.id, NumberInput(number="84951234567"))
    assert _fields(e.value) == {"number": ["This number belongs to another domain"]}
    async with core.sessions() as s:
        owners = list(await s.scalars(select(IncomingNumber.domain_id)))
    assert owners == [t1.id]


async def test_update_keeps_its_own_number_and_rejects_a_taken_one(core: Core, t1: Tenant) -> None:
    a = await _add(core, t1, "+74951234567", "A")
    await _add(core, t1, "+74951234568", "B")
    async with core.sessions() as s:
        n = await lines.update_number(s, t1.id, a.id, NumberInput(number="8 495 123 45 67", label="A2"))
        await s.commit()
        assert (n.number, n.label) == ("+74951234567", "A2")
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await lines.update_number(s, t1.id, a.id, NumberInput(number="+74951234568", label="A3"))
    assert _fields(e.value) == {"number": ["This number is already added"]}


async def test_other_domain_cannot_see_or_change_a_number(core: Core, t1: Tenant, t2: Tenant) -> None:
    a = await _add(core, t1, "+74951234567", "A")
    async with core.sessions() as s:
        with pytest.raises(NotFound):
            await lines.get_number(s, t2.id, a.id)
        with pytest.raises(NotFound):
            await lines.update_number(s, t2.id, a.id, NumberInput(number="+74951234569"))
        with pytest.raises(NotFound):
            await lines.delete_number(s, t2.id, a.id)
        assert (await lines.list_numbers(s, t2.id)).total == 0
    async with core.sessions() as s:
        n = await s.get(IncomingNumber, a.id)
        assert n is not None and n.number == "+74951234567"


async def test_search_by_number_in_any_spelling_or_label(core: Core, t1: Tenant, t2: Tenant) -> None:
    await _add(core, t1, "+74951234567", "Office")
    await _add(core, t1, "+78122223344", "Support line")
    await _add(core, t2, "+74957654321", "Office")
    async with core.sessions() as s:

        async def found(q: str) -> list[str]:
            return [n.number for n in (await lines.list_numbers(s, t1.id, q)).items]

        assert await found("") == ["+74951234567", "+78122223344"]
        assert await found("8 495 123") == ["+74951234567"]
        assert await found("+7 (812)") == ["+78122223344"]
        assert await found("4567") == ["+74951234567"]
        assert await found("support") == ["+78122223344"]
        assert await found("office") == ["+74951234567"]
        assert await found("100%") == []


async def test_delete_removes_its_rules_but_not_external_targets(core: Core, t1: Tenant) -> None:
    a = await _add(core, t1, "+74951234567")
    b = await _add(core, t1, "+74951234568")
    async with core.sessions() as s:
        s.add(RoutingRule(domain_id=t1.id, number_id=a.id, position=0, action="reject"))
        s.add(RoutingRule(domain_id=t1.id, number_id=a.id, position=1, action="reject"))
        # b forwards to a as an external number: a can still be deleted
        s.add(
            RoutingRule(
                domain_id=t1.id, number_id=b.id, position=0, action="external", target_number="+74951234567"
            )
        )
        await s.commit()
        assert await lines.rule_counts(s, t1.id, [a.id, b.id]) == {a.id: 2, b.id: 1}
    async with core.sessions() as s:
        await lines.delete_number(s, t1.id, a.id)
        await s.commit()
    async with core.sessions() as s:
        assert await s.get(IncomingNumber, a.id) is None
        rules = list(await s.scalars(select(RoutingRule)))
        assert [(r.number_id, r.target_number) for r in rules] == [(b.id, "+74951234567")]
        assert await s.scalar(select(func.count()).select_from(IncomingNumber)) == 1
