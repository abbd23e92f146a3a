"""Trunks page («Транки»): form with field errors, the password never shown back, live state, two tenants."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import trunks
from vpbx.pbx.trunkmon import TrunkStatus
from vpbx.store.models import DomainId, Trunk

FORM = {
    "name": "Мой оператор",
    "kind": "registration",
    "host": "sip.carrier.example",
    "port": "5060",
    "transport": "udp",
    "username": "74951234567",
    "password": "very-secret-1",
    "expires_s": "600",
    "caller_id_mode": "domain",
    "number_format": "national",
    "max_calls": "4",
    "priority": "1",
    "enabled": "on",
}


async def _count(core: Core) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(Trunk)) or 0)


async def _only(core: Core, t: Tenant) -> Trunk:
    async with core.sessions() as s:
        [trunk] = await trunks.list_trunks(s, t.id)
        return trunk


async def test_create_edit_keep_password_and_delete(core: Core, t1: Tenant, admin1: Cabinet) -> None:
    desk = await admin1.get("/")
    assert 'href="/trunks" id="tile-trunk"' in desk.text and "Транки" in desk.text
    page = await admin1.get("/trunks/new")
    assert page.status_code == 200 and "Новый транк" in page.text
    resp = await admin1.post("/trunks", FORM)
    assert resp.status_code == 303
    trunk = await _only(core, t1)
    assert (trunk.name, trunk.number_format, trunk.max_calls) == ("Мой оператор", "national", 4)

    edit = await admin1.get(f"/trunks/{trunk.id}")
    assert edit.status_code == 200 and "sip.carrier.example" in edit.text
    assert "very-secret-1" not in edit.text and trunk.password_enc not in edit.text

    resp = await admin1.post(f"/trunks/{trunk.id}", {**FORM, "password": "", "priority": "7"})
    assert resp.status_code == 303
    trunk = await _only(core, t1)
    assert trunk.priority == 7 and trunks.trunk_password(trunk, core.box) == "very-secret-1"

    listing = await admin1.get("/trunks")
    assert f'id="trunk-{trunk.id}"' in listing.text and 'hx-get="/trunks/status"' in listing.text
    assert 'data-state="unknown"' in listing.text  # no monitor in this app: not checked yet

    resp = await admin1.post(f"/trunks/{trunk.id}/delete")
    assert resp.status_code == 303 and await _count(core) == 0


async def test_errors_are_shown_and_nothing_is_saved(core: Core, admin1: Cabinet) -> None:
    resp = await admin1.post(
        "/trunks",
        {**FORM, "host": "bad host", "password": "", "kind": "ip", "allowed_networks": "10.0.0.0/33"},
    )
    assert resp.status_code == 422
    assert "Не имя хоста и не IP-адрес" in resp.text
    assert "Не IP-адрес и не сеть: 10.0.0.0/33" in resp.text
    assert 'value="Мой оператор"' in resp.text  # what was typed comes back, the password does not
    assert await _count(core) == 0
    resp = await admin1.post("/trunks", {**FORM, "password": ""})
    assert resp.status_code == 422
    assert "Для транка с регистрацией нужен пароль учётной записи" in resp.text


async def test_live_state_comes_from_the_status_board(core: Core, t1: Tenant, admin1: Cabinet) -> None:
    await admin1.post("/trunks", FORM)
    trunk = await _only(core, t1)
    core.trunks.put(
        TrunkStatus(
            trunk_id=trunk.id,
            domain_id=DomainId(t1.id),
            state="auth-failed",
            registration="auth-failed",
            health="unknown",
            last_code=403,
            changed_at=dt.datetime.now(dt.UTC),
        )
    )
    rows = await admin1.get("/trunks/status")
    assert rows.status_code == 200
    assert 'data-state="auth-failed"' in rows.text and "Неверные учётные данные" in rows.text
    assert "403" in rows.text
    edit = await admin1.get(f"/trunks/{trunk.id}")
    assert "Неверные учётные данные" in edit.text


async def test_other_tenant_neither_sees_nor_changes(
    core: Core, t1: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    await admin1.post("/trunks", FORM)
    trunk = await _only(core, t1)
    core.trunks.put(
        TrunkStatus(
            trunk_id=trunk.id,
            domain_id=DomainId(t1.id),
            state="registered",
            registration="registered",
            health="up",
            last_code=200,
            changed_at=dt.datetime.now(dt.UTC),
        )
    )
    assert "Мой оператор" not in (await admin2.get("/trunks")).text
    assert "Мой оператор" not in (await admin2.get("/trunks/status")).text
    assert (await admin2.get(f"/trunks/{trunk.id}")).status_code == 404
    assert (await admin2.post(f"/trunks/{trunk.id}", {**FORM, "name": "x"})).status_code == 404
    assert (await admin2.post(f"/trunks/{trunk.id}/delete")).status_code == 404
    assert (await _only(core, t1)).name == "Мой оператор"
