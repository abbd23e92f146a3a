"""The call journal, the call card, the CSV export and the statistics page, over the app with two tenants.

Rows are written straight into ``call_records`` (tests/web/history_kit.py), as the engine's history writer
leaves them; the pages only read them. The clock is fixed at 12:30 Moscow time, the domains' time zone.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pytest
from sqlalchemy import select

from tests.helpers import Cabinet, Tenant, add_user
from tests.web.history_kit import START, add_calls, call_record
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, CallRecord

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


@pytest.fixture
def clock(core: Core) -> FakeClock:
    c = FakeClock(START)
    core.clock = c
    return c


def rows(html: str) -> list[str]:
    return re.findall(r'<tr id="call-([0-9a-f-]{36})"', html)


def row_of(html: str, session_id: str) -> str:
    return html.split(f'id="call-{session_id}"')[1].split("</tr>")[0]


def parse_csv(body: bytes) -> list[list[str]]:
    assert body.startswith(b"\xef\xbb\xbf"), "a byte order mark for Excel"
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"), newline=""), delimiter=";"))


# --- the journal --------------------------------------------------------------------------------------------


async def test_journal_is_newest_first_in_the_domains_time_zone_and_per_tenant(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    await add_user(core, t1, "bob", "Боб Петров", "101")
    await add_user(core, t2, "eve", "Ева Чужая", "101")
    old, new = await add_calls(
        core.sessions,
        call_record(t1.id, started_at=START - 2 * H, caller_pin="100", callee_pin="101", callee_number="101"),
        call_record(
            t1.id,
            started_at=START - H,
            call_type="incoming",
            caller_number="+79161234567",
            callee_number="+74951112233",
            line="+74951112233",
            answering_pin="101",
            talk_s=95,
        ),
    )
    (theirs,) = await add_calls(
        core.sessions, call_record(t2.id, started_at=START - H, caller_pin="101", caller_number="101")
    )

    page = await admin1.get("/history")
    assert page.status_code == 200
    assert rows(page.text) == [new.session_id, old.session_id]
    assert theirs.session_id not in page.text and "Ева Чужая" not in page.text
    talk = row_of(page.text, new.session_id)
    assert ">02.03.2026 11:30:00<" in talk  # 08:30 UTC is 11:30 in Moscow
    assert "Входящий" in talk and "<strong>101</strong> Боб Петров" in talk and ">1:35<" in talk
    assert "+7 916 123-45-67" in talk
    missed = row_of(page.text, old.session_id)
    assert "Пропущен" in missed and ">02.03.2026 10:30:00<" in missed
    assert 'id="journal-total">Всего: 2<' in page.text

    for url in ("/history", "/history/rows"):
        other = await admin2.get(url)
        assert rows(other.text) == [theirs.session_id]
        assert "Боб Петров" not in other.text and new.session_id not in other.text
        assert rows((await admin1.get(url)).text) == [new.session_id, old.session_id]
    # the other tenant's card is not found, not forbidden
    assert (await admin2.get(f"/history/{new.session_id}")).status_code == 404
    assert (await admin1.get(f"/history/{theirs.session_id}")).status_code == 404
    assert (await admin1.get("/history/no-such-session")).status_code == 404


async def test_filters_narrow_the_rows_and_live_in_the_url(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    await add_user(core, t1, "bob", "Боб Петров", "101")
    incoming, outbound, internal, before_midnight, after_midnight, percent = await add_calls(
        core.sessions,
        call_record(
            t1.id,
            call_type="incoming",
            caller_number="+79161234567",
            callee_number="+74951112233",
            line="+74951112233",
            answering_pin="101",
            talk_s=30,
        ),
        call_record(t1.id, call_type="outbound", caller_pin="100", callee_number="+78125550102", talk_s=10),
        call_record(t1.id, caller_pin="101", callee_pin="100", callee_number="100"),
        # 20:59 UTC on 1 March is 23:59 in Moscow, 21:01 UTC is already 2 March there
        call_record(t1.id, started_at=dt.datetime(2026, 3, 1, 20, 59, tzinfo=dt.UTC), callee_number="200"),
        call_record(t1.id, started_at=dt.datetime(2026, 3, 1, 21, 1, tzinfo=dt.UTC), callee_number="201"),
        call_record(t1.id, callee_number="50%off"),
    )

    async def found(**params: str) -> list[str]:
        resp = await admin1.get("/history", params=params)
        assert resp.status_code == 200, resp.text
        return rows(resp.text)

    every = {c.session_id for c in (incoming, outbound, internal, before_midnight, after_midnight, percent)}
    assert set(await found()) == every  # the last 30 days by default
    assert await found(direction="incoming") == [incoming.session_id]
    assert await found(direction="outbound") == [outbound.session_id]
    assert set(await found(state="answered")) == {incoming.session_id, outbound.session_id}
    assert outbound.session_id not in await found(state="missed")
    assert set(await found(number="1234")) == {incoming.session_id}
    assert set(await found(number="5550")) == {outbound.session_id}
    assert set(await found(number="1112233")) == {incoming.session_id}  # the line
    assert await found(number="%") == [percent.session_id]  # a literal, not a wildcard
    assert set(await found(user="101")) == {incoming.session_id, internal.session_id}  # answered, called
    assert set(await found(user="100")) == {outbound.session_id, internal.session_id}
    assert await found(direction="incoming", state="missed") == []

    today = set(await found(**{"from": "2026-03-02", "to": "2026-03-02"}))
    assert after_midnight.session_id in today and before_midnight.session_id not in today
    assert await found(**{"from": "2026-03-01", "to": "2026-03-01"}) == [before_midnight.session_id]
    assert await found(period="yesterday") == [before_midnight.session_id]
    assert set(await found(period="today")) == today

    # a filtered view is a plain URL: the form shows its values back, the shortcuts keep the other filters
    page = await admin1.get("/history", params={"direction": "incoming", "number": "1234"})
    assert 'value="1234"' in page.text and '<option value="incoming" selected>' in page.text
    assert (
        'href="/history?from=2026-03-01&amp;to=2026-03-01&amp;direction=incoming&amp;number=1234"'
        in page.text
    )
    assert 'href="/history/export.csv?from=2026-02-01&amp;to=2026-03-02&amp;direction=incoming' in page.text


async def test_htmx_swaps_the_rows_and_pushes_the_pages_url(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    (call,) = await add_calls(core.sessions, call_record(t1.id, call_type="incoming", caller_number="+7916"))
    page = await admin1.get("/history")
    assert 'hx-get="/history/rows" hx-target="#journal" hx-swap="outerHTML"' in page.text
    frag = await admin1.get("/history/rows", params={"direction": "incoming"}, headers={"HX-Request": "true"})
    assert frag.status_code == 200
    assert "<html" not in frag.text and frag.text.lstrip().startswith(("{#", '<section id="journal"'))
    assert rows(frag.text) == [call.session_id]
    assert frag.headers["HX-Push-Url"] == "/history?from=2026-02-01&to=2026-03-02&direction=incoming"
    none = await admin1.get("/history/rows", params={"direction": "outbound"})
    assert rows(none.text) == [] and 'id="no-history"' in none.text


async def test_pages_are_newest_first_without_overlap(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    calls = await add_calls(
        core.sessions,
        *(call_record(t1.id, started_at=START - i * H, callee_number=f"2{i:02d}") for i in range(30)),
    )
    first = await admin1.get("/history")
    second = await admin1.get("/history", params={"page": "2"})
    assert rows(first.text) == [c.session_id for c in calls[:25]]
    assert rows(second.text) == [c.session_id for c in calls[25:]]
    assert "Страница 1 из 2" in first.text and "Страница 2 из 2" in second.text
    assert 'hx-get="/history/rows?from=2026-02-01&amp;to=2026-03-02&amp;page=2"' in first.text
    beyond = await admin1.get("/history", params={"page": "99"})
    assert rows(beyond.text) == rows(second.text)  # clamped to the last page


async def test_a_user_sees_only_their_own_calls(
    core: Core, clock: FakeClock, t1: Tenant, anon: Cabinet
) -> None:
    await add_user(core, t1, "clerk", "Клерк", "150", password="Clerk-Password-1")
    made, called, answered, others = await add_calls(
        core.sessions,
        call_record(t1.id, caller_pin="150", callee_pin="100", callee_number="100"),
        call_record(t1.id, caller_pin="100", callee_pin="150", callee_number="150", started_at=START - H),
        call_record(
            t1.id,
            call_type="incoming",
            caller_number="+79161234567",
            answering_pin="150",
            talk_s=20,
            started_at=START - 2 * H,
        ),
        call_record(t1.id, caller_pin="100", callee_pin="101", callee_number="101"),
    )
    assert (await anon.login("clerk@acme.vpbx.test", "Clerk-Password-1")).status_code == 303
    page = await anon.get("/history")
    assert page.status_code == 200
    assert rows(page.text) == [made.session_id, called.session_id, answered.session_id]
    assert 'id="f-user"' not in page.text  # no user filter: only their own calls anyway
    assert 'href="/history" id="nav-history"' in page.text and "Мои звонки" in page.text
    # the user filter cannot widen the view
    assert rows((await anon.get("/history", params={"user": "101"})).text) == []
    assert (await anon.get(f"/history/{others.session_id}")).status_code == 404
    assert (await anon.get(f"/history/{called.session_id}")).status_code == 200
    export = parse_csv((await anon.get("/history/export.csv")).content)
    assert sorted(r[0] for r in export[1:]) == sorted(c.session_id for c in (made, called, answered))
    assert (await anon.get("/stats")).status_code == 403


# --- the call card ------------------------------------------------------------------------------------------


async def test_the_call_card_shows_every_field_the_protocol_and_the_recording(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    await add_user(core, t1, "bob", "Боб Петров", "101")
    await add_user(core, t1, "ann", "Анна Смирнова", "102")
    (call,) = await add_calls(
        core.sessions,
        call_record(
            t1.id,
            call_type="incoming",
            caller_number="+79161234567",
            caller_uri="sip:79161234567@acme.vpbx.test",
            callee_number="+74951112233",
            line="+74951112233",
            answering_pin="102",
            answering_uri="ann@acme.vpbx.test",
            talk_s=101,
            is_record=True,
            session_log=[
                [0, "ct", "101"],
                [0, "ct", "102"],
                [6, "pu", "102"],
                [6, "cc", "102"],
                [40, "tr", "89035037889"],
                [107, "cd", "102"],
                [108, "zz", ""],
            ],
        ),
    )
    card = await admin1.get(f"/history/{call.session_id}")
    assert card.status_code == 200
    text = card.text
    assert f'<code id="session-id">{call.session_id}</code>' in text
    assert "Входящий" in text and "Отвечен" in text and "+7 916 123-45-67" in text
    assert "sip:79161234567@acme.vpbx.test" in text and "<strong>102</strong> Анна Смирнова" in text
    assert ">02.03.2026 12:30:00<" in text and ">02.03.2026 12:30:05<" in text  # started, answered
    assert 'id="card-duration">1:41<' in text and "200 OK" in text
    protocol = text.split('id="protocol"')[1].split("</table>")[0]
    steps = re.findall(r"<tr class=\"step-(\w+)\">\s*<td[^>]*>([^<]*)</td>\s*<td>([^<]*)</td>", protocol)
    assert steps == [
        ("ct", "0:00", "Вызов"),
        ("ct", "0:00", "Вызов"),
        ("pu", "0:06", "Перехват"),
        ("cc", "0:06", "Разговор"),
        ("tr", "0:40", "Перевод"),
        ("cd", "1:47", "Отбой"),
        ("zz", "1:48", "Событие «zz»"),
    ]
    assert "<strong>101</strong> Боб Петров" in protocol and "89035037889" in protocol
    assert (
        '<code id="wire-log">0:ct:101;0:ct:102;6:pu:102;6:cc:102;40:tr:89035037889;107:cd:102;108:zz:;</code>'
        in text
    )
    assert (
        f'<audio controls preload="none" id="recording-player" src="/recordings/{call.session_id}.mp3">'
        in text
    )

    (plain,) = await add_calls(core.sessions, call_record(t1.id, callee_number="200", session_log=[]))
    card = await admin1.get(f"/history/{plain.session_id}")
    assert "<audio" not in card.text and 'id="no-protocol"' in card.text and "Пропущен" in card.text
    assert "487 Request Terminated" in card.text and "Никто" in card.text


async def add_attempt(core: Core, t: Tenant, name: str, session_id: str) -> str:
    """A campaign of ``t`` with one contact and one attempt that dialled under ``session_id``."""
    async with core.sessions() as s:
        campaign = AiCampaign(domain_id=t.id, name=name, caller_id="74951112233", settings={})
        s.add(campaign)
        await s.flush()
        contact = AiContact(campaign_id=campaign.id, domain_id=t.id, phones=["79161234567"])
        s.add(contact)
        await s.flush()
        s.add(
            AiAttempt(
                domain_id=t.id,
                campaign_id=campaign.id,
                contact_id=contact.id,
                attempt_no=1,
                number_index=0,
                dispatch_key=f"{campaign.id.hex}:{contact.id.hex}:1:0",
                phone="79161234567",
                state="done",
                session_id=session_id,
                call_id=f"ai-{session_id}",
            )
        )
        await s.commit()
        return campaign.id.hex


async def test_autoinformer_calls_name_their_campaign_with_a_link_to_its_report(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet, admin2: Cabinet, anon: Cabinet
) -> None:
    """autoinformer.md §5: the journal and the card name the campaign of an autoinformer call and link to
    its report; the campaign is looked up in the session's domain only."""
    ours, plain, foreign = await add_calls(
        core.sessions,
        *(
            call_record(
                t1.id,
                call_type="outbound",
                call_kind="autoinformer",
                caller_number="+74951112233",
                callee_number="+79161234567",
                talk_s=20,
            )
            for _ in range(2)
        ),
        # a session id the other domain's campaign dialled under (ids are unique, so only a forged row)
        call_record(t1.id, call_type="outbound", call_kind="autoinformer", callee_number="+79160000000"),
    )
    cid = await add_attempt(core, t1, "Напоминание <о долге>", ours.session_id)
    await add_attempt(core, t2, "Чужая рассылка", foreign.session_id)

    page = await admin1.get("/history")
    assert page.status_code == 200
    cell = row_of(page.text, ours.session_id)
    assert (
        f'<a href="/autoinformer/campaigns/{cid}/report">Автоинформатор: Напоминание &lt;о долге&gt;</a>'
        in cell
    )
    assert "Автоинформатор:" not in row_of(page.text, plain.session_id)  # no attempt: no name
    assert "Чужая рассылка" not in page.text and "Автоинформатор:" not in row_of(
        page.text, foreign.session_id
    )
    card = await admin1.get(f"/history/{ours.session_id}")
    assert re.search(
        rf'id="card-campaign"><a href="/autoinformer/campaigns/{cid}/report">Автоинформатор: Напоминание',
        card.text,
    )
    assert 'id="card-campaign"' not in (await admin1.get(f"/history/{foreign.session_id}")).text
    # the other domain neither sees the call nor the campaign
    assert (await admin2.get(f"/history/{ours.session_id}")).status_code == 404
    assert "Напоминание" not in (await admin2.get("/history")).text
    # a plain user who took part sees the name, without the admin-only report link
    await add_user(core, t1, "clerk", "Клерк", "150", password="Clerk-Password-1")
    async with core.sessions() as s:
        rec = await s.scalar(select(CallRecord).where(CallRecord.session_id == ours.session_id))
        assert rec is not None
        rec.answering_pin = "150"
        await s.commit()
    assert (await anon.login("clerk@acme.vpbx.test", "Clerk-Password-1")).status_code == 303
    mine = await anon.get("/history")
    assert rows(mine.text) == [ours.session_id]
    assert "Автоинформатор: Напоминание &lt;о долге&gt;</small>" in mine.text
    assert "/autoinformer/campaigns/" not in mine.text


async def test_an_open_and_a_recovered_call_say_so(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet
) -> None:
    live, recovered = await add_calls(
        core.sessions,
        call_record(t1.id, callee_number="200", ended_at=None, end_reason=None),
        call_record(t1.id, callee_number="201", end_reason="recovered"),
    )
    journal = await admin1.get("/history")
    assert "идёт" in row_of(journal.text, live.session_id)
    assert "идёт" in (await admin1.get(f"/history/{live.session_id}")).text
    card = await admin1.get(f"/history/{recovered.session_id}")
    assert "закрыт после перезапуска сервера" in card.text


# --- CSV export ---------------------------------------------------------------------------------------------


async def test_csv_export_round_trip(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet
) -> None:
    await add_user(core, t1, "bob", '=HYPERLINK("http://evil")', "101")
    answered, missed, _old = await add_calls(
        core.sessions,
        call_record(
            t1.id,
            call_type="incoming",
            caller_number="+79161234567",
            callee_number="+74951112233",
            line="+74951112233",
            answering_pin="101",
            talk_s=95,
            is_record=True,
        ),
        call_record(t1.id, caller_pin="101", callee_pin="100", callee_number="100", started_at=START - H),
        call_record(t1.id, callee_number="300", started_at=START - 40 * D),
    )
    await add_calls(core.sessions, call_record(t2.id, callee_number="999"))

    resp = await admin1.get("/history/export.csv")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == 'attachment; filename="calls-2026-02-01-2026-03-02.csv"'
    table = parse_csv(resp.content)
    header, body = table[0], table[1:]
    assert header[:4] == ["Сессия", "Начало (Europe/Moscow)", "Тип", "Отвечен"]
    assert len(header) == 19 and all(len(r) == 19 for r in body)
    assert [r[0] for r in body] == [answered.session_id, missed.session_id]  # the journal's order, in range
    first = dict(zip(header, body[0], strict=True))
    assert first["Начало (Europe/Moscow)"] == "2026-03-02 12:30:00"
    assert first["Тип"] == "Входящий" and first["Отвечен"] == "да" and first["Запись"] == "да"
    assert first["Номер звонящего"] == "+79161234567" and first["Линия"] == "+74951112233"
    assert first["Ответил (внутренний номер)"] == "101"
    assert first["Ответил (имя)"] == '\'=HYPERLINK("http://evil")'  # shown as text, never run
    assert first["Разговор, с"] == "95" and first["Код ответа"] == "200"
    assert first["Протокол"] == "0:ct:101;5:cc:101;100:cd:101;"
    second = dict(zip(header, body[1], strict=True))
    assert second["Отвечен"] == "нет" and second["Внутренний номер звонящего"] == "101"

    filtered = parse_csv((await admin1.get("/history/export.csv", params={"state": "missed"})).content)
    assert [r[0] for r in filtered[1:]] == [missed.session_id]
    empty = parse_csv((await admin1.get("/history/export.csv", params={"number": "nothing"})).content)
    assert empty == [header]

    await admin1.get("/lang/en")
    english = parse_csv((await admin1.get("/history/export.csv")).content)
    assert english[0][:4] == ["Session", "Started (Europe/Moscow)", "Type", "Answered"]
    assert english[1][2:4] == ["Incoming", "yes"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "2026-03-05", "to": "2026-03-01"}, "Период начинается позже, чем заканчивается"),
        ({"from": "05.03.2026"}, "Введите дату в виде ГГГГ-ММ-ДД"),
        ({"to": "2026-02-30"}, "Введите дату в виде ГГГГ-ММ-ДД"),
        ({"from": "20260301"}, "Введите дату в виде ГГГГ-ММ-ДД"),
        ({"from": "2025-03-01", "to": "2026-03-02"}, "Период длиннее 366 дней"),
    ],
)
async def test_a_malformed_period_is_a_clear_400(
    core: Core, clock: FakeClock, t1: Tenant, admin1: Cabinet, params: dict[str, str], message: str
) -> None:
    await add_calls(core.sessions, call_record(t1.id, callee_number="200"))
    for url in ("/history", "/history/rows", "/history/export.csv", "/stats"):
        resp = await admin1.get(url, params=params)
        assert resp.status_code == 400, url
        assert resp.headers["content-type"].startswith("text/html"), url
        assert message in resp.text and 'role="alert"' in resp.text, url
        assert 'id="call-' not in resp.text and "chart-hours" not in resp.text
    # the longest period allowed is exactly 366 days
    ok = await admin1.get("/history/export.csv", params={"from": "2025-03-02", "to": "2026-03-02"})
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/csv")


async def test_export_of_another_tenant_holds_nothing_of_ours(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin2: Cabinet
) -> None:
    await add_calls(core.sessions, call_record(t1.id, callee_number="+74951112233", caller_pin="100"))
    body = parse_csv((await admin2.get("/history/export.csv")).content)
    assert len(body) == 1
    stats = await admin2.get("/stats")
    assert 'id="stats-total">' in stats.text and "Звонков: 0" in stats.text


# --- statistics ---------------------------------------------------------------------------------------------


def chart_data(html: str) -> dict[str, object]:
    block = html.split('<script type="application/json" id="stats-data">')[1].split("</script>")[0]
    data: dict[str, object] = json.loads(block)
    return data


async def test_statistics_per_hour_day_and_user(
    core: Core, clock: FakeClock, t1: Tenant, t2: Tenant, admin1: Cabinet, admin2: Cabinet
) -> None:
    await add_user(core, t1, "bob", "Боб </script> Петров", "101")
    await add_calls(
        core.sessions,
        # today, 12:30 Moscow: answered by 101 (95 s) and a missed one
        call_record(t1.id, call_type="incoming", caller_number="+7916", answering_pin="101", talk_s=95),
        call_record(t1.id, call_type="incoming", caller_number="+7916", callee_pin="101"),
        # yesterday 23:59 Moscow (20:59 UTC): hour 23 of 1 March; an outbound call by 100, 60 s
        call_record(
            t1.id,
            started_at=dt.datetime(2026, 3, 1, 20, 59, 59, 900000, tzinfo=dt.UTC),
            call_type="outbound",
            caller_pin="100",
            callee_number="+78125550102",
            talk_s=60,
        ),
        # today 00:14 Moscow (21:14 UTC the day before): hour 0 of 2 March, answered by 101 (30 s)
        call_record(
            t1.id,
            started_at=dt.datetime(2026, 3, 1, 21, 14, 59, tzinfo=dt.UTC),
            caller_pin="100",
            answering_pin="101",
            talk_s=30,
        ),
        # long ago: outside the default 30 days
        call_record(t1.id, started_at=START - 45 * D, answering_pin="101", talk_s=500),
    )
    await add_calls(core.sessions, call_record(t2.id, answering_pin="101", talk_s=999))

    page = await admin1.get("/stats")
    assert page.status_code == 200
    assert "Звонков: 4" in page.text and "отвечено: 3" in page.text and "пропущено: 1" in page.text
    data = chart_data(page.text)
    hours = data["hours"]
    assert isinstance(hours, dict)
    assert hours["answered"][12] == 1 and hours["missed"][12] == 1
    assert hours["answered"][23] == 1 and hours["answered"][0] == 1
    assert sum(hours["answered"]) == 3 and sum(hours["missed"]) == 1
    days = data["days"]
    assert isinstance(days, dict)
    assert len(days["labels"]) == 30 and days["labels"][-2:] == ["01.03", "02.03"]
    assert days["answered"][-2:] == [1, 2] and days["missed"][-1] == 1 and sum(days["answered"]) == 3
    assert data["total"] == {"answered": 3, "missed": 1}
    assert data["users"] == {
        "labels": ["101 Боб </script> Петров", "100 Admin"],
        "answered": [2, 1],
        "talk_min": [2.1, 1.0],
    }
    assert "Боб </script> Петров" not in page.text.split('id="stats-data">')[1].split("</script>")[0]
    table = page.text.split('id="users-stats"')[1]
    assert re.search(
        r'<tr id="user-101"><td>101</td><td>[^<]*</td><td>2</td><td class="duration">2:05</td>', table
    )
    assert '<canvas id="chart-hours"' in page.text and 'src="/assets/chart.js"' in page.text

    one_day = chart_data((await admin1.get("/stats", params={"period": "yesterday"})).text)
    assert one_day["total"] == {"answered": 1, "missed": 0}
    incoming = chart_data((await admin1.get("/stats", params={"direction": "incoming"})).text)
    assert incoming["total"] == {"answered": 1, "missed": 1}

    theirs = chart_data((await admin2.get("/stats")).text)
    assert theirs["total"] == {"answered": 1, "missed": 0}
    assert theirs["users"] == {"labels": ["101"], "answered": [1], "talk_min": [16.6]}


async def test_navigation_links_the_pages(admin1: Cabinet) -> None:
    desk = await admin1.get("/")
    assert 'href="/history" id="tile-journal"' in desk.text and "Журнал звонков" in desk.text
    assert 'href="/stats" id="tile-chart"' in desk.text and "Статистика звонков" in desk.text
    assert 'id="nav-history"' in desk.text and 'id="nav-stats"' in desk.text


async def test_strangers_are_sent_to_log_in(anon: Cabinet) -> None:
    for url in ("/history", "/history/rows", "/history/export.csv", "/stats", "/history/x"):
        resp = await anon.get(url)
        assert resp.status_code == 303 and resp.headers["location"].startswith("/login"), url
