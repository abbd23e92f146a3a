"""The ``autoinformer_*`` methods (autoinformer.md §9, §11, §12) through the real gateway: signed requests
from F's CRM over ASGI, the documented envelopes and codes, the common rejections with nothing created, the
service switch, the sandbox, and a second domain whose campaigns F never reaches."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.autoinformer import campaign_kit as kit
from tests.autoinformer.campaign_kit import tone_wav
from tests.integration_api.fixture_f import (
    CLIENT_ID,
    KEY,
    LINE,
    OTHER_IP,
    FixtureF,
    api_client,
    enable_api,
    post,
)
from tests.integration_api.test_crm_client import php_json_encode
from vpbx.app import Core
from vpbx.billing import AUTOINFORMER, disable, enable
from vpbx.integration_api.core import sign
from vpbx.pbx import domains, lines
from vpbx.store.models import (
    AiAudioFile,
    AiCampaign,
    AiContact,
    AiStopEntry,
    ApiDelivery,
    ApiLog,
    ApiSettings,
    AuditEntry,
)

OK = "Операция выполнена успешно"
OTHER_DOMAIN = "other.vpbx.test"


def campaign_body(file_id: str, **over: Any) -> dict[str, Any]:
    """§9's campaign object, its schedule moved to start tomorrow (the spec's dates have passed)."""
    extra = {"allow_international": False, "auto_complete": True, "amd": {"enabled": False}}
    return kit.campaign_body(file_id, LINE, dt.datetime.now(dt.UTC), **{**extra, **over})


def enc(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def of(resp: httpx.Response) -> dict[str, Any]:
    assert resp.headers["content-type"] == "application/json; charset=utf-8"
    data: dict[str, Any] = json.loads(resp.content)
    return data


async def call(crm: httpx.AsyncClient, method: str, params: dict[str, Any], **kw: Any) -> dict[str, Any]:
    resp = await post(crm, method, enc(params), **kw)
    data = of(resp)
    data["_status"] = resp.status_code
    return data


@pytest.fixture
async def ai(core: Core, f: FixtureF) -> FixtureF:
    async with core.sessions.begin() as s:
        await enable(s, f.domain_id, AUTOINFORMER, core.clock.now())
    return f


@pytest.fixture
async def file_id(crm: httpx.AsyncClient, ai: FixtureF) -> str:
    data = await call(
        crm,
        "autoinformer_upload_audio",
        {"name": "intro.wav", "data_base64": base64.b64encode(tone_wav()).decode()},
    )
    assert (data["_status"], data["result"]) == (200, "0"), data
    assert data["duration_ms"] == 1000
    return str(data["file_id"])


async def counts(core: Core) -> tuple[int, int]:
    async with core.sessions() as s:
        campaigns = await s.scalar(select(func.count()).select_from(AiCampaign))
        contacts = await s.scalar(select(func.count()).select_from(AiContact))
    return int(campaigns or 0), int(contacts or 0)


async def test_create_twice_is_one_campaign(crm: httpx.AsyncClient, core: Core, file_id: str) -> None:
    body = php_json_encode(campaign_body(file_id))  # a PHP client's bytes: \uXXXX and \/ escapes
    first = await post(crm, "autoinformer_create", body)
    assert first.status_code == 200
    answer = of(first)
    assert list(answer) == ["result", "resultMessage", "campaign_id", "status"]
    assert (answer["result"], answer["resultMessage"], answer["status"]) == ("0", OK, "draft")
    assert len(answer["campaign_id"]) == 32 and int(answer["campaign_id"], 16) >= 0
    again = of(await post(crm, "autoinformer_create", body))
    assert again == answer
    assert await counts(core) == (1, 0)
    async with core.sessions() as s:
        row = await s.scalar(select(AiCampaign))
        log = (await s.scalars(select(ApiLog.method).where(ApiLog.method == "autoinformer_create"))).all()
    assert row is not None and row.name == "Напоминание о задолженности, июнь" and row.caller_id == LINE
    assert len(log) == 2


async def test_confirmation_segments_may_be_spoken_text(
    crm: httpx.AsyncClient, core: Core, file_id: str
) -> None:
    """§3.5: ``confirm`` and ``opt_out`` take a TTS confirmation in the campaign object, kept as sent."""
    said = {"type": "tts", "text": "Спасибо, {name}. Ответ принят.", "voice": "male_1", "rate": 1.2}
    actions = {
        "1": {"action": "confirm", "segment": said},
        "9": {"action": "opt_out", "segment": {"type": "tts", "text": "Ваш номер исключён."}},
    }
    data = await call(
        crm, "autoinformer_create", campaign_body(file_id, dtmf={"wait_s": 5, "actions": actions})
    )
    assert (data["_status"], data["result"]) == (200, "0")
    async with core.sessions() as s:
        row = await s.scalar(select(AiCampaign))
    assert row is not None
    stored = row.settings["dtmf"]["actions"]
    assert {k: v for k, v in stored["1"]["segment"].items() if v is not None} == said
    assert stored["9"]["segment"]["text"] == "Ваш номер исключён." and stored["9"]["action"] == "opt_out"


async def test_refusals_with_their_codes_and_nothing_created(
    crm: httpx.AsyncClient, core: Core, file_id: str
) -> None:
    cases: list[tuple[dict[str, Any], int, str, str, str | None]] = [
        ({"caller_id": "74990000000"}, 200, "-42", "caller-id-not-allowed", "caller_id"),
        (
            {"message": {"segments": [{"type": "file", "file_id": uuid.uuid4().hex}]}},
            200,
            "-43",
            "audio-invalid",
            "message.segments[0].file_id",
        ),
        (
            {"dtmf": {"actions": {"1": {"action": "connect", "target": {"type": "group", "pin": "700"}}}}},
            200,
            "-46",
            "target-not-found",
            "dtmf.actions.1.target.pin",
        ),
        (
            {"schedule": {"start_at": "2026-06-16 09:00:00", "windows": [{"from": "25:00", "to": "26:00"}]}},
            400,
            "-1",
            "bad-request",
            "schedule.windows[0].from",
        ),
        (
            {
                "message": {
                    "segments": [{"type": "file", "file_id": file_id}, {"type": "tts", "text": "x" * 1001}]
                }
            },
            400,
            "-1",
            "bad-request",
            "message.segments[1].text",
        ),
        (
            {
                "dtmf": {
                    "actions": {"9": {"action": "opt_out", "segment": {"type": "tts", "text": "x" * 1001}}}
                }
            },
            400,
            "-1",
            "bad-request",
            "dtmf.actions.9.segment.text",
        ),
        ({"report_emails": ["boss@acme.example", "nope"]}, 400, "-1", "bad-request", "report_emails[1]"),
        (
            {"report_emails": [f"u{i}@acme.example" for i in range(11)]},
            400,
            "-1",
            "bad-request",
            "report_emails",
        ),
        ({"ring_timeout_s": 5}, 400, "-1", "bad-request", "ring_timeout_s"),
        ({"unknown": 1}, 400, "-1", "bad-request", "unknown"),
    ]
    for over, status, result, error, field in cases:
        data = await call(crm, "autoinformer_create", campaign_body(file_id, **over))
        assert (data["_status"], data["result"], data["error"], data.get("field")) == (
            status,
            result,
            error,
            field,
        ), over
    missing = campaign_body(file_id)
    del missing["name"]
    data = await call(crm, "autoinformer_create", missing)
    assert (data["_status"], data["result"], data["field"]) == (400, "-1", "name")
    assert await counts(core) == (0, 0)


async def test_add_numbers_reasons(crm: httpx.AsyncClient, core: Core, ai: FixtureF, file_id: str) -> None:
    """§12: ``8 (916) 123-45-67``, ``+7 916 123-45-67``, ``12345``, a stop-listed number and a row without
    ``sum``."""
    async with core.sessions.begin() as s:
        s.add(AiStopEntry(domain_id=ai.domain_id, phone="79169998877", source="manual"))
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
    values = {"name": "Анна", "sum": "1500.50", "due": "30.06.2026"}
    added = await call(
        crm,
        "autoinformer_add_numbers",
        {
            "campaign_id": cid,
            "contacts": [
                {"phone": "8 (916) 123-45-67", "external_id": "c-1", "vars": values},
                {"phone": "+7 916 123-45-67", "vars": values},
                {"phone": "12345", "vars": values},
                {"phone": "+7 (916) 999-88-77", "vars": values},
                {"phone": "79165554433", "vars": {"name": "Иван", "due": "30.06.2026"}},
            ],
        },
    )
    assert (added["result"], added["accepted"]) == ("0", 1)
    assert [(r["row"], r["phone"], r["reason"]) for r in added["rejected"]] == [
        (2, "+7 916 123-45-67", "duplicate"),
        (3, "12345", "invalid_format"),
        (4, "+7 (916) 999-88-77", "stop_list"),
        (5, "79165554433", "missing_variable"),
    ]
    report = await call(crm, "autoinformer_report", {"campaign_id": cid})
    assert [(n["phone"], n["external_id"], n["vars"]) for n in report["numbers"]] == [
        ("79161234567", "c-1", values)
    ]
    # a retry of the same list is harmless: the number is a duplicate now
    again = await call(
        crm,
        "autoinformer_add_numbers",
        {"campaign_id": cid, "contacts": [{"phones": ["79161234567"], "vars": values}]},
    )
    assert (again["accepted"], [r["reason"] for r in again["rejected"]]) == (0, ["duplicate"])
    assert await counts(core) == (1, 1)


async def test_start_with_a_variable_no_contact_has(crm: httpx.AsyncClient, core: Core, file_id: str) -> None:
    """§12: the TTS text uses ``{debt}`` and no contact has a ``debt`` column → 400 -1 naming the segment."""
    segments = [{"type": "file", "file_id": file_id}, {"type": "tts", "text": "{name}, пени {debt:money}."}]
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id, message={"segments": segments})))[
        "campaign_id"
    ]
    added = await call(
        crm,
        "autoinformer_add_numbers",
        {"campaign_id": cid, "contacts": [{"phone": "79161234567", "vars": {"name": "Анна"}}]},
    )
    assert [r["reason"] for r in added["rejected"]] == ["missing_variable"]
    started = await call(crm, "autoinformer_start", {"campaign_id": cid})
    assert (started["_status"], started["result"], started["error"], started["field"]) == (
        400,
        "-1",
        "bad-request",
        "message.segments[1].text",
    )
    status = await call(crm, "autoinformer_status", {"campaign_id": cid})
    assert status["campaign"]["status"] == "draft"


async def test_lifecycle_status_and_report(crm: httpx.AsyncClient, core: Core, file_id: str) -> None:
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
    paused = await call(crm, "autoinformer_pause", {"campaign_id": cid})  # §12: pause on a draft
    assert (paused["_status"], paused["result"], paused["error"]) == (200, "-41", "invalid-transition")
    assert paused["resultMessage"] == "Действие недопустимо в текущем статусе рассылки"
    contacts = [
        {
            "phones": ["79161234567", "74951112233"],
            "external_id": "c-1",
            "vars": {"name": "Анна", "sum": "10", "due": "01.07.2026"},
        },
        {"phone": "79162345678", "vars": {"name": "Иван", "sum": "20", "due": "01.07.2026"}},
    ]
    assert (await call(crm, "autoinformer_add_numbers", {"campaign_id": cid, "contacts": contacts}))[
        "accepted"
    ] == 2
    started = await call(crm, "autoinformer_start", {"campaign_id": cid})
    assert started == {"result": "0", "resultMessage": OK, "status": "scheduled", "_status": 200}
    status = await call(crm, "autoinformer_status", {"campaign_id": cid})
    campaign = status["campaign"]
    assert list(campaign) == [
        "campaign_id",
        "external_id",
        "status",
        "in_window",
        "error_reason",
        "counters",
        "attempts_made",
        "success_rate",
        "avg_listen_s",
    ]
    assert campaign["counters"] == {
        "total": 2,
        "pending": 2,
        **dict.fromkeys(list(campaign["counters"])[2:], 0),
    }
    assert list(campaign["counters"])[-1] == "expired"
    assert (
        campaign["status"],
        campaign["in_window"],
        campaign["success_rate"],
        campaign["attempts_made"],
    ) == (
        "scheduled",
        False,
        "0.00",
        0,
    )
    report = await call(crm, "autoinformer_report", {"campaign_id": cid, "limit": 1})
    assert report["total"] == 2 and len(report["numbers"]) == 1
    first = report["numbers"][0]
    assert (first["phone"], first["phones"], first["external_id"], first["status"], first["attempts"]) == (
        "79161234567",
        ["79161234567", "74951112233"],
        "c-1",
        "pending",
        [],
    )
    second = await call(crm, "autoinformer_report", {"campaign_id": cid, "offset": 1, "status": "pending"})
    assert [n["phone"] for n in second["numbers"]] == ["79162345678"]
    for bad in ({"limit": 1001}, {"status": "nonsense"}, {"offset": -1}):
        data = await call(crm, "autoinformer_report", {"campaign_id": cid, **bad})
        assert (data["_status"], data["result"], data["field"]) == (400, "-1", next(iter(bad)))
    assert (await call(crm, "autoinformer_start", {"campaign_id": cid}))[
        "result"
    ] == "-41"  # already scheduled
    stopped = await call(crm, "autoinformer_stop", {"campaign_id": cid})
    assert stopped["status"] == "stopped"
    late = await call(crm, "autoinformer_add_numbers", {"campaign_id": cid, "contacts": contacts})
    assert (late["result"], late["error"]) == ("-45", "not-editable")
    final = await call(crm, "autoinformer_status", {"campaign_id": cid})
    assert final["campaign"]["counters"]["cancelled"] == 2
    for bad_id in ("", "xyz", 42, cid.upper() + "0"):
        data = await call(crm, "autoinformer_status", {"campaign_id": bad_id})
        assert (data["_status"], data["result"], data["field"]) == (400, "-1", "campaign_id")
    unknown = await call(crm, "autoinformer_status", {"campaign_id": uuid.uuid4().hex})
    assert (unknown["_status"], unknown["result"], unknown["error"]) == (200, "-40", "campaign-not-found")


async def test_upload_refusals(crm: httpx.AsyncClient, core: Core, ai: FixtureF) -> None:
    for params, result, extra in (
        ({"name": "a.wav", "data_base64": "not base64!"}, "-1", {"field": "data_base64"}),
        ({"data_base64": "AAAA"}, "-1", {"field": "name"}),
        (
            {"name": "a.txt", "data_base64": base64.b64encode(b"hello, world").decode()},
            "-43",
            {"reason": "unsupported_format"},
        ),
        (
            {
                "name": "bad.wav",
                "data_base64": base64.b64encode(b"RIFF\x00\x00\x00\x00WAVEjunkjunk").decode(),
            },
            "-43",
            {"reason": "decode_failed"},
        ),
        (
            {"name": "big.wav", "data_base64": base64.b64encode(b"\x00" * (10 * 1024 * 1024 + 1)).decode()},
            "-43",
            {"reason": "too_large"},
        ),
    ):
        data = await call(crm, "autoinformer_upload_audio", params)
        assert data["result"] == result and {k: data.get(k) for k in extra} == extra, data
    async with core.sessions() as s:
        assert await s.scalar(select(func.count()).select_from(AiAudioFile)) == 0


async def test_service_switch_is_r5_for_every_method(
    crm: httpx.AsyncClient, core: Core, ai: FixtureF, file_id: str
) -> None:
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
    async with core.sessions.begin() as s:
        await disable(s, ai.domain_id, AUTOINFORMER, core.clock.now())
    for method, params in (
        (
            "autoinformer_upload_audio",
            {"name": "x.wav", "data_base64": base64.b64encode(tone_wav()).decode()},
        ),
        ("autoinformer_create", campaign_body(file_id, external_id="other")),
        ("autoinformer_add_numbers", {"campaign_id": cid, "contacts": [{"phone": "79161234567"}]}),
        ("autoinformer_start", {"campaign_id": cid}),
        ("autoinformer_pause", {"campaign_id": cid}),
        ("autoinformer_stop", {"campaign_id": cid}),
        ("autoinformer_status", {"campaign_id": cid}),
        ("autoinformer_report", {"campaign_id": cid}),
    ):
        data = await call(crm, method, params)
        assert (data["_status"], data["result"], data["error"]) == (403, "-6", "service-disabled"), method
        assert data["resultMessage"] == "Услуга «Автоинформатор» не подключена"
    assert await counts(core) == (1, 0)


async def test_common_rejections_create_nothing(
    crm: httpx.AsyncClient, app: FastAPI, core: Core, file_id: str
) -> None:
    body = enc(campaign_body(file_id))
    bad_sign = await crm.post(
        "/api/autoinformer_create",
        content=body,
        headers={"X-Client-ID": CLIENT_ID, "X-Client-Sign": "0" * 64},
    )
    assert (bad_sign.status_code, of(bad_sign)["result"]) == (401, "-3")  # R8
    unknown = await crm.post(
        "/api/autoinformer_create",
        content=body,
        headers={"X-Client-ID": "F" * 32, "X-Client-Sign": sign("F" * 32, body, KEY)},
    )
    assert (unknown.status_code, of(unknown)["result"]) == (401, "-2")  # R4
    async with api_client(app, ip=OTHER_IP) as stranger:
        denied = await post(stranger, "autoinformer_create", body)
    assert (denied.status_code, of(denied)["result"]) == (403, "-4")  # R7
    malformed = await post(crm, "autoinformer_create", body[:-1])
    assert (malformed.status_code, of(malformed)["result"]) == (400, "-1")  # R10
    assert of(malformed)["error"] == "bad-request" and "field" not in of(malformed)
    big = enc(campaign_body(file_id, name="x" * 200, report_emails=["a" * 240] * 300))
    assert len(big) > 64 * 1024
    oversize = await post(crm, "autoinformer_create", big)
    assert (oversize.status_code, of(oversize)["result"]) == (413, "-9")  # R3
    contacts = [{"phone": f"7916{i:07d}", "vars": {"pad": "x" * 200}} for i in range(1000)]
    many = enc({"campaign_id": uuid.uuid4().hex, "contacts": contacts})
    assert 64 * 1024 < len(many) < 1024 * 1024
    within = of(
        await post(crm, "autoinformer_add_numbers", many)
    )  # 1 MiB for add_numbers: reaches the method
    assert within["result"] == "-40"
    too_many = of(
        await post(
            crm,
            "autoinformer_add_numbers",
            enc({"campaign_id": uuid.uuid4().hex, "contacts": [*contacts, contacts[0]]}),
        )
    )
    assert (too_many["result"], too_many["field"]) == ("-1", "contacts")
    assert await counts(core) == (0, 0)


async def test_sandbox_answers_but_changes_nothing(crm: httpx.AsyncClient, core: Core, file_id: str) -> None:
    data = await call(crm, "autoinformer_create", campaign_body(file_id), base="/api-test")
    assert (data["result"], data["status"]) == ("0", "draft")
    assert await counts(core) == (0, 0)
    real = await call(crm, "autoinformer_create", campaign_body(file_id))
    started = await call(crm, "autoinformer_stop", {"campaign_id": real["campaign_id"]}, base="/api-test")
    assert started["result"] == "-41"
    status = await call(crm, "autoinformer_status", {"campaign_id": real["campaign_id"]}, base="/api-test")
    assert status["campaign"]["status"] == "draft"


async def test_another_domains_campaign_is_minus_40(
    crm: httpx.AsyncClient, app: FastAPI, core: Core, file_id: str
) -> None:
    async with core.sessions.begin() as s:
        other = await domains.create_domain(s, domains.DomainInput(name=OTHER_DOMAIN))
        await lines.create_number(s, other.id, lines.NumberInput(number="74957654321"))
        await enable(s, other.id, AUTOINFORMER, core.clock.now())
    other_id, other_key = await enable_api(core, other.id)
    async with api_client(app) as theirs:
        # F's file is not in their library; their own campaign with the same external_id is a different one
        refused = await call(
            theirs,
            "autoinformer_create",
            campaign_body(file_id, caller_id="74957654321", dtmf={}),
            client_id=other_id,
            key=other_key,
        )
        assert (refused["result"], refused["field"]) == ("-43", "message.segments[0].file_id")
        segments = [{"type": "tts", "text": "Здравствуйте, {name}."}]
        their = await call(
            theirs,
            "autoinformer_create",
            campaign_body(file_id, caller_id="74957654321", dtmf={}, message={"segments": segments}),
            client_id=other_id,
            key=other_key,
        )
        assert their["result"] == "0"
        ours = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
        assert ours != their["campaign_id"]
        # F's line is not theirs
        line = await call(
            theirs,
            "autoinformer_create",
            campaign_body(file_id, external_id="x", caller_id=LINE, dtmf={}, message={"segments": segments}),
            client_id=other_id,
            key=other_key,
        )
        assert line["result"] == "-42"
        for method, params in (
            ("autoinformer_add_numbers", {"campaign_id": ours, "contacts": [{"phone": "79161234567"}]}),
            ("autoinformer_start", {"campaign_id": ours}),
            ("autoinformer_pause", {"campaign_id": ours}),
            ("autoinformer_stop", {"campaign_id": ours}),
            ("autoinformer_status", {"campaign_id": ours}),
            ("autoinformer_report", {"campaign_id": ours}),
        ):
            data = await call(theirs, method, params, client_id=other_id, key=other_key)
            assert (data["_status"], data["result"], data["error"]) == (200, "-40", "campaign-not-found"), (
                method
            )
            back = await call(crm, method, {**params, "campaign_id": their["campaign_id"]})
            assert back["result"] == "-40", method
    assert await counts(core) == (2, 0)


async def test_openapi_marks_the_extension(crm: httpx.AsyncClient) -> None:
    doc = (await crm.get("/api/openapi.json")).json()
    for name in (
        "autoinformer_upload_audio",
        "autoinformer_create",
        "autoinformer_add_numbers",
        "autoinformer_report",
    ):
        op = doc["paths"][f"/{name}"]["post"]
        assert op["x-vpbx-extension"] is True and op["tags"] == ["extension"]
    assert "x-vpbx-extension" not in doc["paths"]["/users_info"]["post"]
    assert "Body at most 1048576 bytes" in doc["paths"]["/autoinformer_add_numbers"]["post"]["description"]
    schema = doc["paths"]["/autoinformer_create"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert "caller_id" in schema["required"]


async def test_transitions_are_audited_and_notified(
    crm: httpx.AsyncClient, core: Core, ai: FixtureF, file_id: str
) -> None:
    """Every action is an audit row by ``api``; each status move queues a ``campaign_status`` event (§10)."""
    async with core.sessions.begin() as s:
        settings = await s.get(ApiSettings, ai.domain_id)
        assert settings is not None
        settings.crm_url = "https://crm.example/hook"
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
    contact = {"phone": "79161234567", "vars": {"name": "Анна", "sum": "1", "due": "01.07.2026"}}
    await call(crm, "autoinformer_add_numbers", {"campaign_id": cid, "contacts": [contact]})
    assert (await call(crm, "autoinformer_start", {"campaign_id": cid}))["status"] == "scheduled"
    assert (await call(crm, "autoinformer_stop", {"campaign_id": cid}))["status"] == "stopped"
    async with core.sessions() as s:
        audit = (
            await s.execute(
                select(AuditEntry.actor, AuditEntry.action)
                .where(AuditEntry.domain_id == ai.domain_id)
                .order_by(AuditEntry.at)
            )
        ).all()
        sent = (
            await s.scalars(
                select(ApiDelivery.body)
                .where(ApiDelivery.method == "autoinformer_events")
                .order_by(ApiDelivery.seq)
            )
        ).all()
    assert {actor for actor, _ in audit} == {"api"}
    assert {action for _, action in audit} == {
        "autoinformer.audio.upload",
        "autoinformer.campaign.create",
        "autoinformer.contacts.add",
        "autoinformer.campaign.scheduled",
        "autoinformer.campaign.stopped",
    }
    events = [json.loads(b) for b in sent]
    statuses = [(e["event"], e.get("status"), e.get("number_status")) for e in events]
    assert ("campaign_status", "scheduled", None) in statuses and (
        "campaign_status",
        "stopped",
        None,
    ) in statuses
    assert ("number_finished", None, "cancelled") in statuses
    assert all(e["campaign_id"] == cid and e["campaign_external_id"] == "crm-campaign-42" for e in events)


async def test_sixty_a_minute_per_method(crm: httpx.AsyncClient, file_id: str) -> None:
    """§9: 60 requests/min per method per domain; another method keeps its own count."""
    cid = (await call(crm, "autoinformer_create", campaign_body(file_id)))["campaign_id"]
    for _ in range(60):
        assert (await call(crm, "autoinformer_status", {"campaign_id": cid}))["result"] == "0"
    over = await post(crm, "autoinformer_status", enc({"campaign_id": cid}))
    assert (over.status_code, of(over)["result"], "retry-after" in over.headers) == (429, "-429", True)
    assert (await call(crm, "autoinformer_report", {"campaign_id": cid}))["result"] == "0"
