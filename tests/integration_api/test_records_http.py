"""get_record and the call history export end to end: signed requests through the real gateway (fixture F,
httpx against the ASGI app), the guide's exact bodies and signatures, then the link and the file fetched."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
from fastapi import FastAPI

from tests.helpers import Tenant
from tests.integration_api.fixture_f import CALL_ID, CRM_IP, FixtureF, api_client, enable_api, post
from tests.integration_api.test_exports import F_ROW
from tests.integration_api.test_records import MP3
from vpbx.app import Core
from vpbx.integration_api.core import sign
from vpbx.integration_api.exports import CSV_HEADER, HistoryExporter
from vpbx.media.recorder import mp3_duration
from vpbx.store.models import ApiHistoryOrder, Recording

GUIDE_ID = "000003C405E6525C64C184258C44EC99"
GUIDE_KEY = "00000716ABDA6D4DFF10F82BCBBFC532"
GET_RECORD = b'{"session_id":"534dbe28-7e58-4705-89a4-26a308405464","ip_adress":"195.49.187.78"}'
HISTORY = b'{"date_start":"2025-06-01 00:00:00","date_end":"2025-06-08 00:00:00","direction":0,"state":0}'
F_DAY = b'{"date_start":"2025-06-12 00:00:00","date_end":"2025-06-13 00:00:00"}'


async def record_f(core: Core, f: FixtureF) -> None:
    async with core.sessions() as s, s.begin():
        name = core.recordings.new_name(f.domain_id, CALL_ID, f.call.started_at)
        path = core.recordings.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(MP3)
        s.add(Recording(domain_id=f.domain_id, session_id=CALL_ID, status="ready", path=name))


def test_the_guides_signatures_are_over_these_bytes() -> None:
    assert (
        sign(GUIDE_ID, GET_RECORD, GUIDE_KEY)
        == "9026f3c6cc7ca1dccb440f84b85013c81f3e08f2fbfdae3a58bfe16561cc7855"
    )
    assert (
        sign(GUIDE_ID, HISTORY, GUIDE_KEY)
        == "e32dcf11e7e6514c20560f9224ddd23acafb511f4cfde18c37c7d66e4133aa29"
    )


async def test_get_record_then_the_link_over_http(
    app: FastAPI, core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    await record_f(core, f)
    resp = await post(crm, "get_record", GET_RECORD)
    assert resp.status_code == 200
    body = resp.json()
    assert (body["result"], body["resultMessage"]) == ("0", "Операция выполнена успешно")
    url: str = body["url"]
    assert url.startswith("https://api.example/api/records_new_scheme/record/download/")
    assert url.endswith("/195049187078")
    async with api_client(app, ip=CRM_IP) as other, api_client(app, ip="195.49.187.78") as theirs:
        assert (await other.get(url)).status_code == 403
        got = await theirs.get(url)
        assert (got.status_code, got.headers["content-type"], got.content) == (200, "audio/mpeg", MP3)
        assert (await theirs.get(url)).status_code == 404
        assert (await theirs.get(url.replace("/download/", "/elsewhere/"))).content == b""


async def test_get_record_refusals_through_the_gateway(
    core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    resp = await post(crm, "get_record", b'{"session_id":"00000000-0000-0000-0000-000000000000"}')
    assert (resp.status_code, resp.content.decode()) == (
        200,
        '{"result":"-11","resultMessage":"Сессия не найдена","error":"session-not-found","url":null}',
    )
    resp = await post(crm, "get_record", b'{"session_id":"534dbe28-7e58-4705-89a4-26a308405464"}')
    assert resp.json() == {
        "result": "-13",
        "resultMessage": "Запись разговора отсутствует",
        "error": "record-not-found",
        "url": None,
    }
    resp = await post(crm, "get_record", b'{"session_id":"x","ip_adress":"999.1.1.1"}')
    assert (resp.status_code, resp.json()["field"]) == (400, "ip_adress")
    resp = await post(crm, "get_record", b'{"session_id":"x","domain":"other.vpbx.test"}')
    assert resp.json() == {
        "result": "-12",
        "resultMessage": "Домен не соответствует X-Client-ID",
        "error": "domain-mismatch",
        "url": None,
    }
    resp = await post(crm, "get_record", GET_RECORD, key="0" * 32)
    assert (resp.status_code, resp.json()["result"]) == (401, "-3")
    resp = await crm.post(
        "/api/get_record",
        content=b"{",
        headers={"X-Client-ID": GUIDE_ID, "X-Client-Sign": sign(GUIDE_ID, b"{", GUIDE_KEY)},
    )
    assert (resp.status_code, resp.json()["result"]) == (400, "-1")


async def test_another_domains_session_is_minus_11_over_http(
    app: FastAPI, core: Core, f: FixtureF, t2: Tenant
) -> None:
    await record_f(core, f)
    client_id, key = await enable_api(core, t2.id)
    async with api_client(app, ip="198.51.100.7") as other:
        resp = await post(other, "get_record", GET_RECORD, client_id=client_id, key=key)
    assert resp.json()["result"] == "-11"


async def test_the_export_through_the_gateway(
    app: FastAPI, core: Core, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    first = await post(crm, "domain_call_history", HISTORY)
    assert first.status_code == 200 and first.json()["result"] == "0"
    again = await post(crm, "domain_call_history", HISTORY)
    assert again.json() == {
        "result": "-16",
        "resultMessage": "Заказ на выгрузку за этот период уже существует",
        "error": "order-exists",
        "order_id": first.json()["order_id"],
    }
    order_id = (await post(crm, "domain_call_history", F_DAY)).json()["order_id"]
    await post(crm, "domain_call_history", b'{"date_start":1749600000,"date_end":1749700000}')
    fourth = await post(crm, "domain_call_history", b'{"date_start":1749500000,"date_end":1749600000}')
    assert (fourth.status_code, fourth.headers["retry-after"], fourth.json()["result"]) == (429, "60", "-429")
    async with core.sessions() as s:
        assert len((await s.execute(ApiHistoryOrder.__table__.select())).all()) == 3

    body = json.dumps({"order_id": order_id}).encode()
    early = await post(crm, "download_call_history", body)
    assert (early.status_code, early.headers["content-type"].split(";")[0]) == (404, "text/html")
    assert early.text == f"<html><body>File [{order_id}.csv.z] not found</body></html>"

    await HistoryExporter(
        sessions=core.sessions, data_dir=core.settings.data_dir, clock=core.clock
    ).build_pending()
    ready = await post(crm, "download_call_history", body)
    assert (ready.status_code, ready.headers["content-type"]) == (200, "application/zip")
    assert ready.headers["content-disposition"] == f'attachment; filename="{order_id}.csv.z"'
    with zipfile.ZipFile(io.BytesIO(ready.content)) as zf:
        assert zf.namelist() == [f"{order_id}.csv"]
        assert zf.read(f"{order_id}.csv") == f"{CSV_HEADER}\r\n{F_ROW}\r\n".encode()
    unknown = await post(crm, "download_call_history", b'{"order_id":"nope"}')
    assert (
        unknown.content.decode()
        == '{"result":"-17","resultMessage":"Заказ не найден","error":"order-not-found"}'
    )
    bad = await post(crm, "download_call_history", body, key="0" * 32)
    assert (bad.status_code, bad.headers["content-type"].split(";")[0]) == (401, "application/json")


async def test_the_sandbox_gives_test_calls_the_sample(
    app: FastAPI, f: FixtureF, crm: httpx.AsyncClient
) -> None:
    body = b'{"session_id":"test-0b6b0e8e-7d1c-4a52-9d7e-1f7b2f0c9a11"}'
    resp = await post(crm, "get_record", body, base="/api-test")
    url: str = resp.json()["url"]
    assert url.startswith("https://api.example/api-test/records_new_scheme/record/download/")
    assert url.endswith("/203000113010")  # no ip_adress: the request's source
    async with api_client(app, ip=CRM_IP) as same:
        got = await same.get(url)
    assert (got.status_code, got.headers["content-type"]) == (200, "audio/mpeg")
    assert mp3_duration(got.content) > 2.5
