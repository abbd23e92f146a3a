"""domain_call_history and download_call_history (integration-api.md §4.5, §4.6, §5.4): the acceptance rows,
the CSV byte for byte, the builder (one history_file_completed per order, failure, restart, wake, sweep) and
two tenants."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import io
import json
import re
import uuid
import zipfile
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.helpers import Tenant
from tests.integration_api.test_records import (  # the kit's fixtures, re-exported for pytest
    F_DOMAIN,
    F_SESSION,
    F_START,
    add_call,
    app,
    call,
    clock,
    context,
    demo,
)
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.integration_api.core import ApiError
from vpbx.integration_api.exports import CSV_HEADER, HistoryExporter, export_path
from vpbx.integration_api.records import domain_call_history
from vpbx.store.models import ApiDelivery, ApiHistoryOrder

__all__ = ["app", "clock", "demo"]

GUIDE = {"date_start": "2025-06-01 00:00:00", "date_end": "2025-06-08 00:00:00", "direction": 0, "state": 0}
F_DAY = {"date_start": "2025-06-12 00:00:00", "date_end": "2025-06-13 00:00:00"}
F_ROW = (
    "534dbe28-7e58-4705-89a4-26a308405464;1;1;1;sip:79161234567@demo.vpbx.example;;"
    "sip:74951234567@demo.vpbx.example;ivanov@demo.vpbx.example;501;1749715200;95;false;true;false;0;"
)
HEX32 = re.compile(r"[0-9a-f]{32}")


def exporter(core: Core, **kw: Any) -> HistoryExporter:
    return HistoryExporter(sessions=core.sessions, data_dir=core.settings.data_dir, clock=core.clock, **kw)


async def order(app: FastAPI, tenant: Tenant, body: dict[str, Any]) -> str:
    status, reply, _ = await call("domain_call_history", context(app, tenant), body)
    assert status == 200 and reply["result"] == "0", reply
    order_id: str = reply["order_id"]
    return order_id


async def download(app: FastAPI, tenant: Tenant, order_id: str, **headers: str) -> tuple[int, Any, Any]:
    status, body, reply = await call(
        "download_call_history", context(app, tenant, **headers), {"order_id": order_id}
    )
    return status, body, reply


def csv_of(zipped: bytes, order_id: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        assert zf.namelist() == [f"{order_id}.csv"]
        return zf.read(f"{order_id}.csv")


async def notifications(core: Core) -> list[ApiDelivery]:
    async with core.sessions() as s:
        return list(
            (await s.scalars(select(ApiDelivery).where(ApiDelivery.method == "history_file_completed"))).all()
        )


async def order_count(core: Core) -> int:
    async with core.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(ApiHistoryOrder)) or 0)


# --- §4.5 --------------------------------------------------------------------------------------------------


async def test_the_guide_order_then_the_same_body_again_is_minus_16(
    app: FastAPI, core: Core, demo: Tenant
) -> None:
    status, body, _ = await call("domain_call_history", context(app, demo), GUIDE)
    assert status == 200 and list(body) == ["result", "resultMessage", "order_id"]
    assert (body["result"], body["resultMessage"]) == ("0", "Операция выполнена успешно")
    assert HEX32.fullmatch(body["order_id"])
    again = await call("domain_call_history", context(app, demo), GUIDE)
    assert again[:2] == (
        200,
        {
            "result": "-16",
            "resultMessage": "Заказ на выгрузку за этот период уже существует",
            "error": "order-exists",
            "order_id": body["order_id"],
        },
    )
    # the same period given as Unix seconds (digit strings too) is the same order
    unix = {"date_start": 1748725200, "date_end": "1749330000", "direction": "0"}
    assert (await call("domain_call_history", context(app, demo), unix))[1]["order_id"] == body["order_id"]
    assert await order_count(core) == 1
    async with core.sessions() as s:
        row = await s.get(ApiHistoryOrder, body["order_id"])
    assert row is not None and row.domain_id == demo.id and row.status == "pending"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"date_end": "2025-06-01 00:00:00"}, "date_end"),
        ({"date_end": "2025-05-31 00:00:00"}, "date_end"),
        ({"date_end": "2025-07-02 00:00:01"}, "date_end"),
        ({"direction": 5}, "direction"),
        ({"state": 3}, "state"),
        ({"state": True}, "state"),
        ({"date_start": "01.06.2025"}, "date_start"),
        ({"date_start": "2025-06-31 00:00:00"}, "date_start"),
        ({"date_start": None}, "date_start"),
        ({"phone_number": "+7 916"}, "phone_number"),
    ],
)
async def test_bad_orders_are_r11_and_leave_no_order(
    app: FastAPI, core: Core, demo: Tenant, change: dict[str, Any], field: str
) -> None:
    status, body, _ = await call("domain_call_history", context(app, demo), {**GUIDE, **change})
    assert status == 400
    assert body == {
        "result": "-1",
        "resultMessage": f"Некорректное значение поля {field}",
        "error": "bad-request",
        "field": field,
    }
    assert await order_count(core) == 0


async def test_31_days_is_the_longest_span(app: FastAPI, demo: Tenant) -> None:
    await order(app, demo, {"date_start": "2025-06-01 00:00:00", "date_end": "2025-07-02 00:00:00"})


async def test_a_fourth_pending_order_is_r9_retry_after_60(
    app: FastAPI, core: Core, demo: Tenant, t2: Tenant
) -> None:
    for day in (1, 2, 3):
        await order(app, demo, {**GUIDE, "date_start": f"2025-06-0{day} 00:00:00"})
    status, body, _ = await call("domain_call_history", context(app, demo), {**GUIDE, "state": 1})
    assert (status, body) == (
        429,
        {"result": "-429", "resultMessage": "Превышен лимит запросов", "error": "rate-limited"},
    )
    with pytest.raises(ApiError) as info:
        await domain_call_history(context(app, demo), {**GUIDE, "state": 1})
    assert info.value.headers == {"Retry-After": "60"}
    assert await order_count(core) == 3
    await order(app, t2, GUIDE)  # another domain's limit is its own


def _methods() -> list[tuple[str, Any]]:
    from vpbx.integration_api.registry import all_methods

    return list(all_methods().items())


def test_the_methods_rate_limits_are_the_specs() -> None:
    table = dict(_methods())
    assert (table["get_record"].limit, table["get_record"].window_s) == (100, 60)
    assert (table["domain_call_history"].limit, table["domain_call_history"].window_s) == (10, 3600)
    assert (table["download_call_history"].limit, table["download_call_history"].window_s) == (60, 60)


# --- the builder and §4.6 ----------------------------------------------------------------------------------


async def test_fixture_f_exports_byte_for_byte(app: FastAPI, core: Core, demo: Tenant, t2: Tenant) -> None:
    await add_call(core, demo)
    later = F_START + dt.timedelta(hours=2)
    earlier = F_START - dt.timedelta(hours=2)
    await add_call(
        core,
        demo,
        recording=None,
        session_id="b-later",
        start=later,
        call_type="outbound",
        call_kind="callback",
        caller_number=f"ivanov@{F_DOMAIN}",
        caller_pin="501",
        callee_number=f"sip:79031112233@{F_DOMAIN}",
        answered_at=None,
        answering_uri=None,
        answering_pin=None,
        duration_s=0,
        is_record=False,
        status_code=486,
        status_text='Busy; "here"',
    )
    await add_call(core, demo, recording=None, session_id="a-earlier", start=earlier, call_type="internal")
    await add_call(core, demo, recording=None, session_id="live", start=later, ended_at=None)
    await add_call(core, demo, recording=None, session_id="next-day", start=F_START + dt.timedelta(hours=13))
    await add_call(core, t2, recording=None, session_id="foreign", start=F_START)
    order_id = await order(app, demo, F_DAY)

    status, body, reply = await download(app, demo, order_id)
    assert (status, reply.content_type) == (404, "text/html; charset=utf-8")
    assert body == f"<html><body>File [{order_id}.csv.z] not found</body></html>".encode()
    assert await notifications(core) == []

    assert await exporter(core).build_pending() == 1
    status, body, reply = await download(app, demo, order_id)
    assert (status, reply.content_type) == (200, "application/zip")
    assert reply.headers == {"Content-Disposition": f'attachment; filename="{order_id}.csv.z"'}
    assert body[:2] == b"PK"
    csv = csv_of(body, order_id)
    assert not csv.startswith(b"\xef\xbb\xbf")
    assert csv.split(b"\r\n") == [
        CSV_HEADER.encode(),
        f"a-earlier;1;3;1;sip:79161234567@{F_DOMAIN};;sip:74951234567@{F_DOMAIN};ivanov@{F_DOMAIN};501;"
        f"{int(earlier.timestamp())};95;false;true;false;0;".encode(),
        F_ROW.encode(),
        f"b-later;3;2;2;ivanov@{F_DOMAIN};501;sip:79031112233@{F_DOMAIN};;;{int(later.timestamp())};0;"
        'false;false;false;486;"Busy; ""here"""'.encode(),
        b"",
    ]
    assert CSV_HEADER == (
        "session_id;call_type;direction;state;orig_number;orig_pin;dest_number;answering_sipuri;answering_pin;"
        "start_call_date;duration;is_voicemail;is_record;is_fax;status_code;status_string"
    )

    gz_status, gz, gz_reply = await download(app, demo, order_id, accept="application/gzip")
    assert (gz_status, gz_reply.content_type, gzip.decompress(gz)) == (200, "application/gzip", csv)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"direction": 1}, ["in-a", "in-b"]),
        ({"direction": 2}, ["out"]),
        ({"direction": 3}, ["int"]),
        ({"state": 1}, ["in-a", "out", "int"]),
        ({"state": "2"}, ["in-b"]),
        ({"phone_number": "79161234567"}, ["in-a", "out"]),
        ({"phone_number": "+79990000000", "direction": 1}, ["in-b"]),
    ],
)
async def test_filters(
    app: FastAPI, core: Core, demo: Tenant, filters: dict[str, Any], expected: list[str]
) -> None:
    minute = dt.timedelta(minutes=1)
    await add_call(core, demo, recording=None, session_id="in-a", start=F_START)
    await add_call(
        core,
        demo,
        recording=None,
        session_id="in-b",
        start=F_START + minute,
        caller_number=f"sip:79990000000@{F_DOMAIN}",
        answered_at=None,
    )
    await add_call(
        core,
        demo,
        recording=None,
        session_id="out",
        start=F_START + 2 * minute,
        call_type="outbound",
        caller_number=f"ivanov@{F_DOMAIN}",
        callee_number=f"sip:79161234567@{F_DOMAIN}",
    )
    await add_call(
        core,
        demo,
        recording=None,
        session_id="int",
        start=F_START + 3 * minute,
        call_type="internal",
        caller_number=f"sip:79161234567@{F_DOMAIN}",  # an internal call has no external party
    )
    order_id = await order(app, demo, {**F_DAY, **filters})
    await exporter(core).build_pending()
    _, body, _ = await download(app, demo, order_id)
    lines = csv_of(body, order_id).decode().split("\r\n")[1:-1]
    assert [line.split(";", 1)[0] for line in lines] == expected


async def test_exactly_one_history_file_completed_per_order(app: FastAPI, core: Core, demo: Tenant) -> None:
    order_id = await order(app, demo, F_DAY)
    builder = exporter(core)
    assert await builder.build_pending() == 1
    assert await builder.build_pending() == 0
    assert await builder.build(order_id, demo.id) is False
    sent = await notifications(core)
    assert len(sent) == 1
    assert (sent[0].domain_id, sent[0].test) == (demo.id, False)
    assert (
        sent[0].body.encode()
        == (
            '{"order_id":"' + order_id + '","result":"0","resultMessage":"Операция выполнена успешно"}'
        ).encode()
    )


async def test_a_failed_build_is_minus_18_with_its_notification(
    app: FastAPI, core: Core, demo: Tenant
) -> None:
    order_id = await order(app, demo, F_DAY)
    (core.settings.data_dir / "api-exports").write_text("not a directory")  # the build cannot write
    assert await exporter(core).build_pending() == 1
    status, body, _ = await download(app, demo, order_id)
    assert (status, body) == (
        200,
        {"result": "-18", "resultMessage": "Не удалось сформировать выгрузку", "error": "export-failed"},
    )
    (sent,) = await notifications(core)
    assert json.loads(sent.body) == {
        "order_id": order_id,
        "result": "-18",
        "resultMessage": "Не удалось сформировать выгрузку",
    }
    # a failed order no longer counts as pending
    assert (await call("domain_call_history", context(app, demo), F_DAY))[1]["result"] == "0"


async def test_unknown_foreign_and_expired_orders_are_minus_17(
    app: FastAPI, core: Core, demo: Tenant, t2: Tenant, clock: FakeClock
) -> None:
    minus_17 = {"result": "-17", "resultMessage": "Заказ не найден", "error": "order-not-found"}
    assert (await download(app, demo, "nope"))[:2] == (200, minus_17)
    assert (await download(app, demo, "x" * 100))[:2] == (200, minus_17)
    theirs = await order(app, t2, F_DAY)
    ours = await order(app, demo, F_DAY)
    builder = exporter(core)
    await builder.build_pending()
    assert (await download(app, demo, theirs))[:2] == (200, minus_17)
    assert (await download(app, t2, ours))[:2] == (200, minus_17)
    assert (await download(app, demo, ours))[0] == 200
    clock.advance(7 * 86400 - 1)
    assert await builder.sweep() == 0
    assert (await download(app, demo, ours))[0] == 200
    clock.advance(1)
    assert (await download(app, demo, ours))[:2] == (200, minus_17)  # expired before the sweep ran
    path = export_path(core.settings.data_dir, demo.id, ours)
    assert path.exists()
    assert await builder.sweep() == 2
    assert not path.exists() and await order_count(core) == 0


async def test_bad_order_id_is_r11(app: FastAPI, demo: Tenant) -> None:
    status, body, _ = await call("download_call_history", context(app, demo), {"order_id": 7})
    assert (status, body["field"]) == (400, "order_id")


async def _wait_ready(core: Core, order_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            async with core.sessions() as s:
                row = await s.get(ApiHistoryOrder, order_id)
            if row is not None and row.status != "pending":
                return
            await asyncio.sleep(0.02)


async def test_a_pending_order_survives_a_restart(app: FastAPI, core: Core, demo: Tenant) -> None:
    await add_call(core, demo)
    first = exporter(core, poll_s=3600)
    await first.start()
    await first.stop()  # the process stops before it built anything
    order_id = await order(app, demo, F_DAY)  # (written as the gateway would, before the stop)
    second = exporter(core, poll_s=3600)  # the next start
    await second.start()
    try:
        await _wait_ready(core, order_id)
    finally:
        await second.stop()
    status, body, _ = await download(app, demo, order_id)
    assert status == 200 and F_ROW.encode() in csv_of(body, order_id)
    assert len(await notifications(core)) == 1


async def test_a_new_order_wakes_the_running_builder(app: FastAPI, core: Core, demo: Tenant) -> None:
    running = exporter(core, poll_s=3600)  # it would not look again for an hour by itself
    await running.start()
    app.state.history_exports = running
    try:
        await asyncio.sleep(0)  # its first round finds nothing
        order_id = await order(app, demo, F_DAY)
        await _wait_ready(core, order_id)
    finally:
        await running.stop()
    assert (await download(app, demo, order_id))[0] == 200


async def test_other_domains_files_stay_apart(app: FastAPI, core: Core, demo: Tenant, t2: Tenant) -> None:
    a = await order(app, demo, F_DAY)
    b = await order(app, t2, F_DAY)
    await exporter(core).build_pending()
    assert (
        export_path(core.settings.data_dir, demo.id, a).parent
        != export_path(core.settings.data_dir, t2.id, b).parent
    )
    assert uuid.UUID(export_path(core.settings.data_dir, t2.id, b).parent.name) == t2.id
    assert F_SESSION  # the kit's fixture F
