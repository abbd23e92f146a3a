"""Live calls («Звонки сейчас») and registered devices («Устройства»): two tenants, each admin sees only
their own calls and registrations; plain users and strangers see nothing.

Calls are the engine's own ``Call`` objects admitted to the app's registry, as the B2BUA admits them;
registrations go through the location store's ``save``, as the registrar writes them.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.helpers import Cabinet, Tenant, add_user
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.pbx.bus import new_session_id
from vpbx.pbx.calls import Call, Party, Phase
from vpbx.pbx.directory import DomainInfo
from vpbx.pbx.registrar import Binding, aor_for
from vpbx.sip.flow import Destination
from vpbx.store.models import Domain, DomainId

START = dt.datetime(2026, 3, 2, 9, 30, 0, tzinfo=dt.UTC)  # 12:30:00 in Moscow


@pytest.fixture
def clock(core: Core) -> FakeClock:
    c = FakeClock(START)
    core.clock = c
    return c


async def domain_info(core: Core, t: Tenant) -> DomainInfo:
    async with core.sessions() as s:
        d = await s.get(Domain, t.id)
        assert d is not None
        return DomainInfo(id=DomainId(d.id), name=d.name, channel_limit=d.channel_limit, timezone=d.timezone)


def party(t: Tenant, login: str, pin: str, display: str) -> Party:
    return Party(user_id=None, login=login, pin=pin, display_name=display, domain=t.name)


async def admit_call(
    core: Core,
    t: Tenant,
    caller: Party,
    callee: Party,
    *,
    started_at: dt.datetime,
    answered: bool = False,
    held: bool = False,
) -> Call:
    """A call as ``B2bua`` builds it on INVITE, admitted to the registry the cabinet reads."""
    call = Call(
        session_id=new_session_id(),
        domain=await domain_info(core, t),
        caller=caller,
        callee=callee,
        started_at=started_at,
    )
    if answered:
        call.phase, call.answered_at, call.held = Phase.CONNECTED, started_at + dt.timedelta(seconds=3), held
    assert core.calls.admit(call)
    return call


def binding(contact: str, flow: Destination, now: float, expires_s: int, **kw: object) -> Binding:
    return Binding(
        contact=contact,
        flow=flow,
        call_id=f"reg-{contact}",
        cseq=1,
        expires_at=now + expires_s,
        updated_at=now,
        **kw,  # type: ignore[arg-type]
    )


def rows(html: str) -> list[str]:
    return re.findall(r'<tr id="call-([0-9a-f-]{36})">', html)


# --- live calls ---------------------------------------------------------------------------------------------


async def test_each_admin_sees_only_their_own_live_calls(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    await add_user(core, t1, "bob", "Боб Петров", "101")
    await add_user(core, t2, "eve", "Ева Чужая", "101")  # the same extension in the other domain
    ringing = await admit_call(
        core,
        t1,
        party(t1, "admin", "100", "Admin"),
        party(t1, "bob", "101", "Боб Петров"),
        started_at=START - dt.timedelta(seconds=5),
    )
    talking = await admit_call(
        core,
        t1,
        party(t1, "bob", "101", "Боб Петров"),
        party(t1, "admin", "100", "Admin"),
        started_at=START - dt.timedelta(seconds=3725),
        answered=True,
    )
    theirs = await admit_call(
        core,
        t2,
        party(t2, "eve", "101", "Ева Чужая"),
        party(t2, "admin", "100", "Admin"),
        started_at=START - dt.timedelta(seconds=60),
        answered=True,
    )

    for url in ("/calls/live", "/calls/live/rows"):
        mine = await admin1.get(url)
        assert mine.status_code == 200
        assert rows(mine.text) == [talking.session_id, ringing.session_id]  # oldest first
        assert theirs.session_id not in mine.text and "Ева Чужая" not in mine.text
        assert "Звонков сейчас: 2 из 10 каналов" in mine.text
        other = await admin2.get(url)
        assert rows(other.text) == [theirs.session_id]
        assert ringing.session_id not in other.text and "Боб Петров" not in other.text
        assert "Звонков сейчас: 1 из 10 каналов" in other.text

    page = (await admin1.get("/calls/live")).text
    ring_row = page.split(f'id="call-{ringing.session_id}"')[1].split("</tr>")[0]
    assert "Идёт вызов" in ring_row and "Внутренний" in ring_row
    assert "<strong>100</strong> Admin" in ring_row and "<strong>101</strong> Боб Петров" in ring_row
    assert "admin@acme.vpbx.test" in ring_row and "bob@acme.vpbx.test" in ring_row
    assert ">12:29:55<" in ring_row  # the domain's time zone, Europe/Moscow; today, so no date
    assert ">0:05<" in ring_row
    talk_row = page.split(f'id="call-{talking.session_id}"')[1].split("</tr>")[0]
    assert "Разговор" in talk_row and ">1:02:05<" in talk_row and ">11:27:55<" in talk_row


async def test_rows_follow_the_registry_and_show_the_empty_state(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    empty = await admin1.get("/calls/live")
    assert 'id="no-calls"' in empty.text and "Сейчас звонков нет." in empty.text
    assert "Звонков сейчас: 0 из 10 каналов" in empty.text
    # the page polls its fragment; the fragment is the same element, so polling goes on after each swap
    trigger = 'hx-get="/calls/live/rows" hx-trigger="every 2s" hx-swap="outerHTML"'
    assert trigger in empty.text

    call = await admit_call(
        core,
        t1,
        party(t1, "admin", "100", "Admin"),
        party(t1, "admin", "100", "Admin"),
        started_at=START,
        answered=True,
        held=True,
    )
    clock.advance(42)
    fragment = await admin1.get("/calls/live/rows", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "<html" not in fragment.text and trigger in fragment.text
    assert rows(fragment.text) == [call.session_id]
    assert "На удержании" in fragment.text and ">0:42<" in fragment.text

    core.calls.remove(call.session_id)
    gone = await admin1.get("/calls/live/rows", headers={"HX-Request": "true"})
    assert rows(gone.text) == [] and 'id="no-calls"' in gone.text


async def test_a_full_domain_is_marked(core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet) -> None:
    async with core.sessions() as s:
        d = await s.get(Domain, t1.id)
        assert d is not None
        d.channel_limit = 1
        await s.commit()
    await admit_call(
        core, t1, party(t1, "admin", "100", "Admin"), party(t1, "admin", "100", "Admin"), started_at=START
    )
    page = await admin1.get("/calls/live")
    assert 'class="channels full"' in page.text and "Звонков сейчас: 1 из 1 каналов" in page.text


async def test_english_labels(core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet) -> None:
    await admin1.get("/lang/en")
    await admit_call(
        core, t1, party(t1, "admin", "100", "Admin"), party(t1, "admin", "100", "Admin"), started_at=START
    )
    page = await admin1.get("/calls/live")
    assert "Calls now: 1 of 10 channels" in page.text and ">12:30:00<" in page.text
    await admit_call(
        core,
        t1,
        party(t1, "admin", "100", "Admin"),
        party(t1, "admin", "100", "Admin"),
        started_at=START - dt.timedelta(hours=13),  # 23:30 yesterday in Moscow
    )
    page = await admin1.get("/calls/live")
    assert ">2026-03-01 23:30:00<" in page.text and ">13:00:00<" in page.text
    await admin1.get("/lang/ru")
    page = await admin1.get("/calls/live")
    assert ">01.03.2026 23:30:00<" in page.text


# --- devices ------------------------------------------------------------------------------------------------


async def test_each_admin_sees_only_their_own_devices(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    bob = await add_user(core, t1, "bob", "Боб Петров", "101")
    now = core.clock.monotonic()
    await core.location.save(
        DomainId(t1.id),
        aor_for("100", t1.name),
        binding(
            "sip:100@192.168.1.20:5062",
            Destination("udp", "203.0.113.7", 40000),
            now,
            300,
            nated=True,
            user_agent="Yealink T46U",
        ),
    )
    await core.location.save(
        DomainId(t1.id),
        aor_for("101", t1.name),
        binding(
            "sip:101@[2001:db8::5]:5060;transport=tcp", Destination("tcp", "2001:db8::5", 5060), now, 600
        ),
    )
    await core.location.save(
        DomainId(t1.id),
        aor_for("101", t1.name),
        binding("sip:101@198.51.100.9:5070", Destination("udp", "198.51.100.9", 5070), now, 60),
    )
    await core.location.save(
        DomainId(t2.id),
        aor_for("100", t2.name),
        binding(
            "sip:100@198.51.100.77:5060",
            Destination("udp", "198.51.100.77", 5060),
            now,
            300,
            user_agent="Other Tenant Phone",
        ),
    )
    clock.advance(61)  # the 60-second binding is over, though the store has not swept it yet

    mine = await admin1.get("/devices")
    assert mine.status_code == 200
    table = mine.text.split('id="devices-table"')[1]
    assert table.count("<tr>") == 3  # header and two live bindings
    assert "Other Tenant Phone" not in mine.text and "198.51.100.77" not in mine.text
    assert "198.51.100.9" not in mine.text
    admin_row = table.split("sip:100@192.168.1.20:5062")[0].rsplit("<tr>", 1)[1]
    admin_row += table.split("sip:100@192.168.1.20:5062")[1].split("</tr>")[0]
    assert "<strong>100</strong>" in admin_row and "NAT" in admin_row
    assert "UDP 203.0.113.7:40000" in admin_row and "Yealink T46U" in admin_row and ">239<" in admin_row
    assert f'href="/users/{bob.id}">Боб Петров</a>' in table and "TCP [2001:db8::5]:5060" in table

    theirs = await admin2.get("/devices")
    assert "Other Tenant Phone" in theirs.text and "Yealink" not in theirs.text and "Боб" not in theirs.text


async def test_devices_filter_by_user_and_empty_states(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    empty = await admin1.get("/devices")
    assert 'id="no-devices"' in empty.text and "Нет зарегистрированных устройств." in empty.text
    await add_user(core, t1, "bob", "Боб Петров", "101")
    now = core.clock.monotonic()
    for pin, host in (("100", "192.0.2.10"), ("101", "192.0.2.11")):
        await core.location.save(
            DomainId(t1.id),
            aor_for(pin, t1.name),
            binding(f"sip:{pin}@{host}:5060", Destination("udp", host, 5060), now, 300),
        )
    for q in ("101", "боб", "bob"):
        found = await admin1.get("/devices", params={"q": q})
        assert "192.0.2.11" in found.text and "192.0.2.10" not in found.text, q
    none = await admin1.get("/devices", params={"q": "nobody"})
    assert 'id="no-devices"' in none.text and "Ничего не найдено." in none.text


async def test_a_binding_without_a_user_still_shows(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    now = core.clock.monotonic()
    await core.location.save(
        DomainId(t1.id),
        aor_for("555", t1.name),
        binding("sip:555@192.0.2.55:5060", Destination("udp", "192.0.2.55", 5060), now, 300),
    )
    page = await admin1.get("/devices")
    assert "sip:555@acme.vpbx.test" in page.text and "192.0.2.55" in page.text


# --- who may look -------------------------------------------------------------------------------------------


async def test_plain_users_and_strangers_see_nothing(
    core: Core, clock: FakeClock, t1: Tenant, anon: Cabinet
) -> None:
    await admit_call(
        core, t1, party(t1, "admin", "100", "Admin"), party(t1, "admin", "100", "Admin"), started_at=START
    )
    for url in ("/calls/live", "/calls/live/rows", "/devices"):
        resp = await anon.get(url)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login")
    polled = await anon.get("/calls/live/rows", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/login"

    await add_user(core, t1, "clerk", "Clerk", "150", password="Clerk-Password-1")
    assert (await anon.login("clerk@acme.vpbx.test", "Clerk-Password-1")).headers["location"] == "/me"
    for url in ("/calls/live", "/calls/live/rows", "/devices"):
        resp = await anon.get(url)
        assert resp.status_code == 403, url
        assert 'id="call-' not in resp.text


async def test_the_admin_desktop_links_the_pages(admin1: Cabinet) -> None:
    desk = await admin1.get("/")
    assert 'href="/calls/live" id="tile-calls"' in desk.text and "Звонки сейчас" in desk.text
    assert 'href="/devices" id="tile-devices"' in desk.text and "Устройства" in desk.text
