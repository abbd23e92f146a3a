"""Do Not Disturb in the cabinet: the admin's switch on a user's page, the user's own on «My settings», the
list's badge; another domain's user is 404 and stays as it was."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.pbx import users
from vpbx.store.models import User


async def _user(core: Core, t: Tenant, pin: str = "100") -> User:
    async with core.sessions() as s:
        u = await s.scalar(select(User).where(User.domain_id == t.id, User.pin == pin))
        assert u is not None
        return u


async def test_an_admin_switches_a_users_dnd_and_the_list_shows_it(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    u = await _user(core, t1)
    page = await admin1.get(f"/users/{u.id}")
    assert 'id="dnd-toggle"' in page.text and "Включить «Не беспокоить»" in page.text
    assert 'class="badge off dnd"' not in (await admin1.get("/users")).text

    resp = await admin1.post(f"/users/{u.id}/dnd", {"on": "1"})
    assert resp.status_code == 303 and resp.headers["location"] == f"/users/{u.id}"
    on = await _user(core, t1)
    assert on.dnd and on.dnd_since is not None
    page = await admin1.get(f"/users/{u.id}")
    assert "Выключить «Не беспокоить»" in page.text and "Включено с" in page.text
    assert 'class="badge off dnd"' in (await admin1.get("/users")).text

    await admin1.post(f"/users/{u.id}/dnd", {"on": "0"})
    off = await _user(core, t1)
    assert not off.dnd and off.dnd_since is None


async def test_a_user_switches_their_own_dnd(anon: Cabinet, core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        await users.create_user(
            s,
            t1.id,
            users.UserInput(name="clerk", display_name="Clerk", pin="150", web_password="Clerk-Password-1"),
            box=core.box,
        )
        await s.commit()
    await anon.login("clerk@acme.vpbx.test", "Clerk-Password-1")
    assert "Включить «Не беспокоить»" in (await anon.get("/me")).text
    resp = await anon.post("/me/dnd", {"on": "1"})
    assert resp.status_code == 303 and resp.headers["location"] == "/me"
    assert (await _user(core, t1, "150")).dnd
    assert (await _user(core, t1)).dnd is False  # the admin's own switch is untouched
    assert "Выключить «Не беспокоить»" in (await anon.get("/me")).text
    clerk = await _user(core, t1, "150")
    assert (await anon.post(f"/users/{clerk.id}/dnd", {"on": "0"})).status_code == 403  # admins only
    assert (await _user(core, t1, "150")).dnd


async def test_another_domains_user_is_404_and_unchanged(
    admin1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    theirs = await _user(core, t1)
    resp = await admin2.post(f"/users/{theirs.id}/dnd", {"on": "1"})
    assert resp.status_code == 404
    assert (await _user(core, t1)).dnd is False
    assert (await admin2.post(f"/users/{uuid.uuid4()}/dnd", {"on": "1"})).status_code == 404
    assert (await admin2.post("/users/not-a-uuid/dnd", {"on": "1"})).status_code == 404
    own = await _user(core, t2)
    assert (await admin2.post(f"/users/{own.id}/dnd", {"on": "1"})).status_code == 303
    assert (await _user(core, t2)).dnd and not (await _user(core, t1)).dnd
