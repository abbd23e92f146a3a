from __future__ import annotations

from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx.app import Core
from vpbx.store.models import User

NEW_USER = {
    "display_name": "Сидоров Пётр",
    "name": "sidorov",
    "pin": "205",
    "email": "s@example.com",
    "role": "user",
    "contact_numbers": "8 916 123-45-67\n+7 (912) 000-11-22",
    "mobile_delay_s": "20",
    "allow_mobile": "on",
}


async def _count(core: Core, t: Tenant) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(User).where(User.domain_id == t.id)) or 0)


async def test_create_user_and_find_it(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    form = await admin1.get("/users/new")
    assert form.status_code == 200 and 'name="pin"' in form.text
    resp = await admin1.post("/users", NEW_USER)
    assert resp.status_code == 303, resp.text
    page = await admin1.get("/users?q=sidor")
    assert "Сидоров Пётр" in page.text
    async with core.sessions() as s:
        u = await s.scalar(select(User).where(User.name == "sidorov"))
        assert u is not None
        assert [c.number for c in u.contact_numbers] == ["+79161234567", "+79120001122"]
        assert len(u.ha1_md5) == 32 and u.sip_password_enc


async def test_duplicate_extension_is_a_field_error_and_saves_nothing(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    before = await _count(core, t1)
    resp = await admin1.post("/users", {**NEW_USER, "pin": "100", "name": "other"})
    assert resp.status_code == 422
    assert 'id="err-pin"' in resp.text
    assert await _count(core, t1) == before


async def test_over_long_and_malformed_fields(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    before = await _count(core, t1)
    resp = await admin1.post(
        "/users", {**NEW_USER, "display_name": "x" * 500, "contact_numbers": "12ab", "email": "not-mail"}
    )
    assert resp.status_code == 422
    for field in ("display_name", "contact_numbers", "email"):
        assert f'id="err-{field}"' in resp.text
    assert await _count(core, t1) == before


async def test_csrf_is_required(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    before = await _count(core, t1)
    resp = await admin1.post("/users", NEW_USER, csrf=False)
    assert resp.status_code == 403
    assert await _count(core, t1) == before


async def test_anonymous_is_sent_to_login(anon: Cabinet) -> None:
    resp = await anon.get("/users")
    assert resp.status_code == 303
    assert resp.headers["location"].startswith("/login")


async def test_search_ignores_case_in_cyrillic(admin1: Cabinet) -> None:
    assert (await admin1.post("/users", NEW_USER)).status_code == 303
    found = await admin1.get("/users?q=СИДОРОВ")
    assert "Сидоров Пётр" in found.text
    assert "Сидоров Пётр" not in (await admin1.get("/users?q=Иванов")).text


async def test_registered_devices_show_on_the_user_page(admin1: Cabinet, core: Core, t1: Tenant) -> None:
    from vpbx.pbx.registrar import Binding, aor_for
    from vpbx.sip.flow import Destination
    from vpbx.store.models import DomainId

    async with core.sessions() as s:
        admin = await s.scalar(select(User).where(User.domain_id == t1.id))
        assert admin is not None
    now = core.clock.monotonic()
    binding = Binding(
        contact="sip:100@192.168.1.20:5062",
        flow=Destination("udp", "203.0.113.7", 40000),
        nated=True,
        user_agent="Yealink T46U",
        call_id="c1",
        cseq=1,
        expires_at=now + 300,
        updated_at=now,
    )
    await core.location.replace(DomainId(t1.id), aor_for("100", t1.name), [binding])
    listing = await admin1.get("/users")
    assert '<span class="badge on">1</span>' in listing.text
    page = await admin1.get(f"/users/{admin.id}")
    assert "Yealink T46U" in page.text and "UDP 203.0.113.7:40000" in page.text and "NAT" in page.text
    assert ">300<" in page.text or ">299<" in page.text
