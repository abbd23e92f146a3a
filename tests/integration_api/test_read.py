"""users_info (§4.3), call_info (§4.4) and the extension methods (§4.7): the acceptance tables on bytes."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import httpx
from sqlalchemy import select

from tests.integration_api.fixture_f import (
    CALL_ID,
    CALL_START,
    CLIENT_ID,
    DOMAIN,
    KEY,
    FixtureF,
    f_call,
    post,
)
from vpbx.app import Core
from vpbx.integration_api.core import sign
from vpbx.store.models import CallRecord, Charge, User

OK = "Операция выполнена успешно"
CALL_INFO_BODY = b'{"session_id":"534dbe28-7e58-4705-89a4-26a308405464"}'
# §4.4's example response, as one line
CALL_INFO_EXAMPLE = (
    '{"result":"0","resultMessage":"Операция выполнена успешно",'
    '"info":{"call_type":1,"direction":1,"state":1,'
    '"orig_number":"sip:79161234567@demo.vpbx.example","orig_pin":null,'
    '"dest_number":"sip:74951234567@demo.vpbx.example",'
    '"answering_sipuri":"ivanov@demo.vpbx.example","answering_pin":"501","start_call_date":"1749715200",'
    '"duration":95,"session_log":"0:ct:501;6:cc:501;101:cd:501;","is_voicemail":false,"is_record":true,'
    '"is_fax":false,"status_code":"0","status_string":null}}'
)


def result(resp: httpx.Response) -> str:
    return str(json.loads(resp.content)["result"])


# --- users_info ---------------------------------------------------------------------------------------------


async def test_users_info_filter_by_pin(crm: httpx.AsyncClient) -> None:
    one = json.loads((await post(crm, "users_info", b'{"user_pin":"501"}')).content)
    assert [u["name"] for u in one["users"]] == ["ivanov"]
    by_number = json.loads((await post(crm, "users_info", b'{"user_pin":502}')).content)
    assert [u["name"] for u in by_number["users"]] == ["petrova"]
    nobody = await post(crm, "users_info", b'{"user_pin":"999"}')
    assert nobody.content == f'{{"result":"0","resultMessage":"{OK}","users":[]}}'.encode()


async def test_users_are_sorted_by_pin_numerically_without_groups(
    crm: httpx.AsyncClient, core: Core, f: FixtureF
) -> None:
    from vpbx.pbx import users

    async with core.sessions() as s:
        for pin, name in (("99", "short"), ("1000", "long")):
            await users.create_user(
                s, f.domain_id, users.UserInput(name=name, display_name=name, pin=pin), box=core.box
            )
        await s.commit()
    body = json.loads((await post(crm, "users_info", b"{}")).content)
    assert [u["pin"] for u in body["users"]] == ["99", "501", "502", "1000"]  # no group 600


# --- call_info ----------------------------------------------------------------------------------------------


async def test_call_info_example_byte_for_byte(crm: httpx.AsyncClient) -> None:
    assert (
        sign(CLIENT_ID, CALL_INFO_BODY, KEY)
        == "8e1d80a13cf1b1e71aa425e9094c41999f27c28c2ceba0ace07ae5549bf1d1e7"
    )
    resp = await post(crm, "call_info", CALL_INFO_BODY)
    assert resp.status_code == 200
    assert resp.content == CALL_INFO_EXAMPLE.encode()


async def test_call_info_unknown_session(crm: httpx.AsyncClient) -> None:
    resp = await post(crm, "call_info", b'{"session_id":"00000000-0000-0000-0000-000000000000"}')
    assert resp.status_code == 200
    assert (
        resp.content
        == (
            '{"result":"-11","resultMessage":"Сессия не найдена","error":"session-not-found","info":null}'
        ).encode()
    )


async def test_call_info_call_in_progress(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    async with core.sessions() as s:
        s.add(f_call(f.domain_id, session_id="live-1", ended_at=None, duration_s=0))
        await s.commit()
    resp = await post(crm, "call_info", b'{"session_id":"live-1"}')
    assert (
        resp.content
        == (
            '{"result":"-15","resultMessage":"Вызов ещё не завершён","error":"call-in-progress","info":null}'
        ).encode()
    )


async def test_call_info_session_id_missing_or_too_long(crm: httpx.AsyncClient) -> None:
    for body in (
        b"{}",
        b'{"session_id":""}',
        b'{"session_id":5}',
        json.dumps({"session_id": "a" * 65}).encode(),
    ):
        resp = await post(crm, "call_info", body)
        assert resp.status_code == 400
        assert json.loads(resp.content)["field"] == "session_id"


async def test_call_info_callback_outgoing_unanswered_and_internal(
    crm: httpx.AsyncClient, core: Core, f: FixtureF
) -> None:
    async with core.sessions() as s:
        s.add(
            f_call(
                f.domain_id,
                session_id="cb-1",
                call_type="outbound",
                call_kind="callback",
                caller_number=f"ivanov@{DOMAIN}",
                caller_pin="501",
                callee_number=f"sip:79161234567@{DOMAIN}",
                line=None,
                answered_at=None,
                answering_uri=None,
                answering_pin=None,
                duration_s=0,
                is_record=False,
                status_code=486,
                status_text="Busy Here",
                session_log=[[0, "ct", "501"]],
            )
        )
        s.add(
            f_call(
                f.domain_id,
                session_id="int-1",
                call_type="internal",
                caller_number=f"petrova@{DOMAIN}",
                caller_pin="502",
                callee_number=f"ivanov@{DOMAIN}",
                callee_pin="501",
                line=None,
            )
        )
        await s.commit()
    cb = json.loads((await post(crm, "call_info", b'{"session_id":"cb-1"}')).content)["info"]
    assert (cb["call_type"], cb["direction"], cb["state"]) == (3, 2, 2)
    assert (cb["orig_number"], cb["orig_pin"], cb["dest_number"]) == (
        f"ivanov@{DOMAIN}",
        "501",
        f"sip:79161234567@{DOMAIN}",
    )
    assert (cb["answering_sipuri"], cb["duration"], cb["status_code"], cb["status_string"]) == (
        None,
        0,
        "486",
        "Busy Here",
    )
    internal = json.loads((await post(crm, "call_info", b'{"session_id":"int-1"}')).content)["info"]
    assert (internal["call_type"], internal["direction"], internal["dest_number"]) == (
        1,
        3,
        f"ivanov@{DOMAIN}",
    )


# --- §4.7 ---------------------------------------------------------------------------------------------------


async def test_restrictions_get_and_set(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    body = b'{"user_pin":"501","allowed":{"international":true}}'
    assert sign(CLIENT_ID, body, KEY) == "47e9f1eb5974d8937df587d3f268daf22bcf0900e671b69752906dbec6e44044"
    before = await post(crm, "get_user_restrictions", b'{"user_pin":"501"}')
    assert (
        before.content
        == (
            '{"result":"0","resultMessage":"Операция выполнена успешно","restrictions":[{"user_pin":"501",'
            '"allowed":{"internal":true,"local":true,"mobile":true,"long_distance":true,"international":false}}]}'
        ).encode()
    )
    changed = json.loads((await post(crm, "set_user_restrictions", body)).content)
    assert changed["restrictions"][0]["allowed"]["international"] is True
    after = json.loads((await post(crm, "get_user_restrictions", b'{"user_pin":"501"}')).content)
    assert after["restrictions"][0]["allowed"]["international"] is True
    everyone = json.loads((await post(crm, "get_user_restrictions", b"{}")).content)
    assert [r["user_pin"] for r in everyone["restrictions"]] == ["501", "502"]
    async with core.sessions() as s:
        ivanov = await s.get(User, f.ivanov_id)
        assert ivanov is not None and ivanov.allow_international is True


async def test_restrictions_refusals_change_nothing(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    unknown = await post(crm, "set_user_restrictions", b'{"user_pin":"999","allowed":{"mobile":false}}')
    assert unknown.content == (
        '{"result":"-10","resultMessage":"Пользователь не найден","error":"user-not-found"}'.encode()
    )
    assert result(await post(crm, "get_user_restrictions", b'{"user_pin":"999"}')) == "-10"
    for body, field in (
        (b'{"user_pin":"501","allowed":{"roaming":true}}', "allowed"),
        (b'{"user_pin":"501","allowed":{"mobile":"yes"}}', "allowed.mobile"),
        (b'{"user_pin":"501","allowed":{"local":false}}', "allowed.local"),
        (b'{"user_pin":"501","allowed":{}}', "allowed"),
        (b'{"allowed":{"mobile":false}}', "user_pin"),
    ):
        resp = await post(crm, "set_user_restrictions", body)
        assert (resp.status_code, json.loads(resp.content)["field"]) == (400, field), body
    async with core.sessions() as s:
        ivanov = await s.get(User, f.ivanov_id)
        assert ivanov is not None and (ivanov.allow_mobile, ivanov.allow_international) == (True, False)


async def test_user_calls_charges(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    at = dt.datetime(2025, 6, 12, 9, 10, 5, tzinfo=dt.UTC)  # 12:10:05 MSK
    async with core.sessions() as s:
        s.add(
            f_call(
                f.domain_id,
                session_id="0c6f2b7e-3d1a-4f8e-9a41-2b7d5e8c9f10",
                call_type="outbound",
                caller_number=f"ivanov@{DOMAIN}",
                caller_pin="501",
                callee_number=f"sip:79161234567@{DOMAIN}",
                line=None,
            )
        )
        s.add_all(
            [
                Charge(
                    domain_id=f.domain_id,
                    kind="charge",
                    amount=Decimal("3.20"),
                    description="Исходящий вызов на мобильный",
                    user_id=f.ivanov_id,
                    session_id="0c6f2b7e-3d1a-4f8e-9a41-2b7d5e8c9f10",
                    created_at=at,
                ),
                Charge(
                    domain_id=f.domain_id,
                    kind="credit",
                    amount=Decimal("1000"),
                    description="Платёж",
                    created_at=at + dt.timedelta(minutes=20, seconds=-5),
                ),
                Charge(  # outside the period
                    domain_id=f.domain_id,
                    kind="credit",
                    amount=Decimal("1"),
                    description="x",
                    created_at=CALL_START,
                ),
            ]
        )
        await s.commit()
    body = b'{"date_start":"2025-06-12 12:00:00","date_end":"2025-06-13 00:00:00"}'
    resp = await post(crm, "user_calls_charges", body)
    assert (
        resp.content
        == (
            '{"result":"0","resultMessage":"Операция выполнена успешно","truncated":false,'
            '"charges":[{"date":"2025-06-12 12:10:05","type":"charge",'
            '"session_id":"0c6f2b7e-3d1a-4f8e-9a41-2b7d5e8c9f10",'
            '"user_pin":"501","number":"79161234567","direction":2,"duration":95,"amount":"3.20","currency":"RUB",'
            '"description":"Исходящий вызов на мобильный"},'
            '{"date":"2025-06-12 12:30:00","type":"credit","session_id":null,"user_pin":null,"number":null,'
            '"direction":null,"duration":null,"amount":"1000.00","currency":"RUB","description":"Платёж"}]}'
        ).encode()
    )
    only_501 = json.loads((await post(crm, "user_calls_charges", body[:-1] + b',"user_pin":"501"}')).content)
    assert [c["type"] for c in only_501["charges"]] == ["charge"]
    for bad, field in (
        (b'{"date_start":"01.06.2025","date_end":"2025-06-13 00:00:00"}', "date_start"),
        (b'{"date_start":"2025-06-12 00:00:00","date_end":"2025-06-12 00:00:00"}', "date_end"),
        (b'{"date_start":"2025-05-01 00:00:00","date_end":"2025-06-12 00:00:00"}', "date_end"),
        (b'{"date_end":"2025-06-12 00:00:00"}', "date_start"),
    ):
        resp = await post(crm, "user_calls_charges", bad)
        assert (resp.status_code, json.loads(resp.content)["field"]) == (400, field)


async def test_another_domains_call_is_not_found(crm: httpx.AsyncClient, core: Core, f: FixtureF) -> None:
    from vpbx.pbx import domains

    async with core.sessions() as s:
        other = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.example"))
        s.add(f_call(other.id, session_id="theirs-1"))
        await s.commit()
    resp = await post(crm, "call_info", b'{"session_id":"theirs-1"}')
    assert result(resp) == "-11"
    async with core.sessions() as s:
        assert (
            await s.scalar(select(CallRecord.domain_id).where(CallRecord.session_id == CALL_ID))
            == f.domain_id
        )
