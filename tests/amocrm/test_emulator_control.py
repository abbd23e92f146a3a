"""The emulator beyond §4.8: control API, OAuth plays, outages and faults, webhooks, metadata endpoints, the
CLI; over real HTTP through the kit (the loopback gate alone over ASGI, to show a foreign client address).

The ``emu`` fixture lifts the rate limit: sequential requests here exceed 7 per second."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import jwt
import pytest

from tests.amocrm.emu_kit import DEMO, DEMO_FIXTURE, OTHER, Emu, emulator, receiver
from vpbx.amocrm.emulator import build_app, make_world
from vpbx.amocrm.widget_auth import WidgetVerifier

ANNA = 9001
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
async def emu() -> Any:
    async with emulator(rate_limit_rps=1000) as e:
        yield e


async def bearer(emu: Emu, account: str = DEMO) -> str:
    token: str = (await emu.token_pair(account))["access_token"]
    return token


async def test_the_control_api_refuses_non_loopback_clients() -> None:
    app = build_app(make_world(DEMO_FIXTURE))
    outside = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    inside = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=outside, base_url="http://emu") as http:
        refused = await http.get("/__emu__/state", params={"account": DEMO})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert (await http.post("/__emu__/reset")).status_code == 403
    async with httpx.AsyncClient(transport=inside, base_url="http://emu") as http:
        assert (await http.get("/__emu__/state", params={"account": DEMO})).status_code == 200
    await app.aclose()


async def test_install_calls_redirect_uri_with_a_code_that_exchanges_once(emu: Emu) -> None:
    async with receiver() as rx:
        await emu.set_integration(redirect_uri=f"{rx.url}/amo/oauth/callback")
        out = await emu.install(state="s1")
        assert out["status"] == 200
        (hit,) = await rx.wait_for(1)
    assert (hit.method, hit.path) == ("GET", "/amo/oauth/callback")
    q = {k: v[0] for k, v in parse_qs(hit.query).items()}
    assert q["referer"] == DEMO and q["from_widget"] == "1" and q["state"] == "s1"
    assert q["client_id"] == emu.client_id and q["code"] == out["code"]
    body = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "grant_type": "authorization_code",
        "code": q["code"],
        "redirect_uri": f"{rx.url}/amo/oauth/callback",
    }
    wrong_host = await emu.http.post(f"{emu.account_url(OTHER)}/oauth2/access_token", json=body)
    assert wrong_host.status_code == 400  # a code is only good on its account's host
    assert (await emu.http.post(f"{emu.account_url()}/oauth2/access_token", json=body)).status_code == 200


async def test_the_consent_page_redirects_the_browser_with_a_code(emu: Emu) -> None:
    page = await emu.http.get(f"{emu.url}/oauth", params={"client_id": emu.client_id, "state": "xyz"})
    assert page.status_code == 200 and "Разрешить" in page.text
    allow = await emu.http.post(
        f"{emu.url}/oauth/allow", data={"client_id": emu.client_id, "state": "xyz", "account": OTHER}
    )
    assert allow.status_code == 302
    target = urlsplit(allow.headers["location"])
    assert (
        f"{target.scheme}://{target.netloc}{target.path}" == DEMO_FIXTURE["integrations"][0]["redirect_uri"]
    )
    q = dict(parse_qsl(target.query))
    assert q["referer"] == OTHER and q["state"] == "xyz" and q["code"]


async def test_a_moved_account_refuses_refresh_on_the_old_host_and_says_where_it_went(emu: Emu) -> None:
    pair = await emu.token_pair()
    await emu.control("POST", "/__emu__/move", json={"account": DEMO, "new_base_domain": "moved.amocrm.ru"})
    body = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": pair["refresh_token"],
    }
    old = await emu.http.post(f"{emu.account_url()}/oauth2/access_token", json=body)
    assert old.status_code == 401
    api_domain = jwt.decode(pair["access_token"], options={"verify_signature": False})["api_domain"]
    where = await emu.http.get(
        f"{emu.account_url(api_domain)}/oauth2/account/current/subdomain",
        headers={"X-Refresh-Token": pair["refresh_token"]},
    )
    assert where.json() == {
        "id": 30000001,
        "subdomain": "moved",
        "domain": "amocrm.ru",
        "top_level_domain": "ru",
    }
    new = await emu.http.post(f"{emu.account_url('moved.amocrm.ru')}/oauth2/access_token", json=body)
    assert new.status_code == 200
    async with emu.api("moved.amocrm.ru", token=new.json()["access_token"]) as api:
        contact = (await api.get(f"/api/v4/contacts/{ANNA}")).json()
    assert contact["_links"]["self"]["href"] == f"https://moved.amocrm.ru/api/v4/contacts/{ANNA}"


async def test_host_header_addressing_reaches_the_same_account(emu: Emu) -> None:
    token = await bearer(emu)
    resp = await emu.http.get(
        f"{emu.url}/api/v4/contacts/{ANNA}", headers={"Host": DEMO, "Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 200 and resp.json()["name"] == "Анна Смирнова"
    unknown = await emu.http.get(f"{emu.url}/_acc/nobody.amocrm.ru/api/v4/account")
    assert unknown.status_code == 404


async def test_down_answers_503_and_hang_never_answers(emu: Emu) -> None:
    token = await bearer(emu)
    await emu.down(30)
    async with emu.api(token=token) as api:
        resp = await api.get("/api/v4/account")
        assert resp.status_code == 503
        assert resp.headers["content-type"] == "application/problem+json"
        assert (await emu.http.get(f"{emu.url}/__emu__/clock")).status_code == 200  # control still answers
        await emu.down(30, mode="hang")
        with pytest.raises(httpx.ReadTimeout):
            await api.get("/api/v4/account", timeout=0.5)
        await emu.down(0)
        assert (await api.get("/api/v4/account")).status_code == 200


async def test_fault_rules_answer_delay_drop_and_are_counted(emu: Emu) -> None:
    token = await bearer(emu)
    await emu.fault(
        method="GET", path_regex="^/api/v4/contacts", account=DEMO, status=500, body={"oops": 1}, times=2
    )
    await emu.fault(method="POST", path_regex="^/api/v4/tasks$", reset_connection=True)
    async with emu.api(token=token) as api:
        first = await api.get(f"/api/v4/contacts/{ANNA}")
        assert first.status_code == 500 and first.json() == {"oops": 1}
        assert (await api.get(f"/api/v4/contacts/{ANNA}")).status_code == 500
        assert (await api.get(f"/api/v4/contacts/{ANNA}")).status_code == 200  # times=2 spent
        with pytest.raises(httpx.TransportError):
            await api.post("/api/v4/tasks", json=[{"text": "t", "complete_till": 1900000000}])
    assert (await emu.state())["tasks"] == []  # reset_connection drops before the write
    rules = await emu.control("GET", "/__emu__/faults")
    assert [r["times"] for r in rules] == [0, 0]
    await emu.fault(path_regex="^/api/v4/account$", delay_ms=300, times=-1)
    async with emu.api(token=token) as api:
        with pytest.raises(httpx.ReadTimeout):
            await api.get("/api/v4/account", timeout=0.05)
        await emu.clear_faults()
        assert (await api.get("/api/v4/account")).status_code == 200
    stats = await emu.stats()
    assert stats["routes"]["GET /api/v4/contacts/{id}"] == {"500": 2, "200": 1}
    assert stats["routes"]["POST /api/v4/tasks"] == {"0": 1}


async def test_every_answer_carries_x_request_id(emu: Emu) -> None:
    token = await bearer(emu)
    async with emu.api(token=token) as api:
        answers = [
            await api.get("/api/v4/account"),
            await api.get("/api/v4/contacts/1"),
            await api.post("/api/v4/contacts", content=b"not json"),
            await api.get("/api/v4/nothing-here"),
            await emu.http.get(f"{emu.url}/__emu__/clock"),
        ]
    assert [r.status_code for r in answers] == [200, 204, 400, 404, 200]
    assert all(r.headers.get("x-request-id") for r in answers)
    assert len({r.headers["x-request-id"] for r in answers}) == len(answers)
    assert answers[3].headers["content-type"] == "application/problem+json"


async def test_webhooks_are_delivered_form_encoded_after_the_answer(emu: Emu) -> None:
    async with receiver() as rx, emu.api(token=await bearer(emu)) as api:
        settings = [
            "add_contact",
            "update_contact",
            "delete_contact",
            "restore_contact",
            "responsible_contact",
        ]
        made = await api.post(
            "/api/v4/webhooks", json={"destination": f"{rx.url}/amo/hooks/s3cr3t", "settings": settings}
        )
        assert made.status_code == 201
        listed = (await api.get("/api/v4/webhooks")).json()["_embedded"]["webhooks"]
        assert listed[0]["settings"] == settings
        patched = await api.patch(f"/api/v4/contacts/{ANNA}", json={"responsible_user_id": 5002})
        assert patched.status_code == 200
        update, responsible = await rx.wait_for(2)
        assert update.headers["content-type"] == "application/x-www-form-urlencoded"
        fields = dict(parse_qsl(update.body.decode()))
        assert fields["contacts[update][0][id]"] == str(ANNA)
        assert fields["contacts[update][0][responsible_user_id]"] == "5002"
        assert fields["account[id]"] == "30000001" and fields["account[subdomain]"] == "demo"
        assert (
            dict(parse_qsl(responsible.body.decode()))["contacts[responsible][0][old_responsible_user_id]"]
            == "5001"
        )
        await emu.control("DELETE", f"/__emu__/accounts/{DEMO}/contacts/{ANNA}")
        await api.get("/api/v4/account")  # any request flushes the queued hook after its answer
        deleted = (await rx.wait_for(3))[2]
        assert "contacts[delete][0][id]" in dict(parse_qsl(deleted.body.decode()))
        assert (await api.get(f"/api/v4/contacts/{ANNA}")).status_code == 204
        gone = await api.request(
            "DELETE", "/api/v4/webhooks", json={"destination": f"{rx.url}/amo/hooks/s3cr3t"}
        )
        assert gone.status_code == 204
        assert (await api.get("/api/v4/webhooks")).status_code == 204
    deliveries = await emu.wait_deliveries(count=3)
    assert [d["status"] for d in deliveries] == [200, 200, 200]


async def test_metadata_endpoints(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        account = (
            await api.get("/api/v4/account", params={"with": "users_groups,task_types,datetime_settings"})
        ).json()
        assert (account["id"], account["subdomain"], account["currency"]) == (30000001, "demo", "RUB")
        assert account["_embedded"]["users_groups"][0]["name"] == "Отдел продаж"
        assert [t["id"] for t in account["_embedded"]["task_types"]] == [1, 2]
        assert account["datetime_settings"]["timezone"] == "Europe/Moscow"
        users = (await api.get("/api/v4/users", params={"with": "group", "limit": 250})).json()["_embedded"][
            "users"
        ]
        assert [(u["id"], u["rights"]["is_admin"], u["rights"]["is_active"]) for u in users] == [
            (5001, True, True),
            (5002, False, True),
            (5003, False, True),
        ]
        pipelines = (await api.get("/api/v4/leads/pipelines")).json()
        statuses = pipelines["_embedded"]["pipelines"][0]["_embedded"]["statuses"]
        assert statuses[0]["type"] == 1
        assert [s["id"] for s in statuses][1:] == [7001, 7002, 142, 143]
        assert pipelines["_total_items"] == 1
        fields = (await api.get("/api/v4/contacts/custom_fields")).json()["_embedded"]["custom_fields"]
        phone = next(f for f in fields if f["code"] == "PHONE")
        assert [e["enum_code"] for e in phone["enums"]] == ["WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER"]
        lead_fields = (await api.get("/api/v4/leads/custom_fields")).json()["_embedded"]["custom_fields"]
        assert lead_fields[0]["enums"][0] == {"id": 2011, "value": "Звонок", "enum_code": None, "sort": 2}
        assert (await api.get("/api/v4/leads/custom_fields", params={"page": 2})).status_code == 204


async def test_leads_tasks_notes_round_trip(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        lead = await api.post(
            "/api/v4/leads",
            json=[
                {
                    "name": "Звонок",
                    "pipeline_id": 7000,
                    "status_id": 7001,
                    "responsible_user_id": 5002,
                    "custom_fields_values": [{"field_id": 201, "values": [{"enum_id": 2011}]}],
                    "_embedded": {"tags": [{"name": "АТС"}], "contacts": [{"id": 9002, "is_main": True}]},
                }
            ],
        )
        lid = lead.json()["_embedded"]["leads"][0]["id"]
        got = (
            await api.get("/api/v4/leads", params={"filter[id][]": [lid, 8001], "with": "contacts"})
        ).json()
        by_id = {x["id"]: x for x in got["_embedded"]["leads"]}
        assert by_id[lid]["_embedded"]["contacts"][0]["id"] == 9002
        assert by_id[lid]["_embedded"]["tags"][0]["name"] == "АТС"
        assert by_id[lid]["custom_fields_values"][0]["values"][0] == {"value": "Звонок", "enum_id": 2011}
        task = await api.post(
            "/api/v4/tasks",
            json=[
                {"text": "Перезвонить", "complete_till": 1900000000, "entity_type": "leads", "entity_id": lid}
            ],
        )
        tid = task.json()["_embedded"]["tasks"][0]["id"]
        open_tasks = await api.get(
            "/api/v4/tasks",
            params={"filter[entity_type]": "leads", "filter[entity_id][]": lid, "filter[is_completed]": 0},
        )
        assert [t["id"] for t in open_tasks.json()["_embedded"]["tasks"]] == [tid]
        assert (await api.get(f"/api/v4/leads/{lid}")).json()["closest_task_at"] == 1900000000
        assert (await api.patch(f"/api/v4/tasks/{tid}", json={"is_completed": True})).status_code == 200
        assert (
            await api.get("/api/v4/tasks", params={"filter[entity_id][]": lid, "filter[is_completed]": 0})
        ).status_code == 204
        note = {
            "entity_id": 9002,
            "note_type": "call_in",
            "params": {
                "uniq": "u1",
                "duration": 5,
                "source": "vpbx",
                "phone": "89167654321",
                "call_status": 4,
            },
        }
        assert (await api.post("/api/v4/contacts/notes", json=[note])).status_code == 200
        bad_status = {**note, "params": {**note["params"], "call_status": 9}}
        assert (await api.post("/api/v4/contacts/notes", json=[bad_status])).status_code == 400
        listed = await api.get(
            "/api/v4/contacts/9002/notes",
            params=[("filter[note_type][]", "call_in"), ("filter[note_type][]", "call_out")],
        )
        assert [n["params"]["uniq"] for n in listed.json()["_embedded"]["notes"]] == ["u1"]
        patched = await api.patch("/api/v4/contacts", json=[{"id": 9002, "name": "Олег К."}])
        assert patched.json()["_embedded"]["contacts"][0]["id"] == 9002
        assert (await api.get("/api/v4/contacts/9002")).json()["name"] == "Олег К."


async def test_unsorted_sip_and_v2_events(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        resp = await api.post(
            "/api/v4/leads/unsorted/sip",
            json=[
                {
                    "source_name": "vpbx",
                    "source_uid": "vpbx-1",
                    "pipeline_id": 7000,
                    "metadata": {
                        "from": "+79990001122",
                        "phone": "+79990001122",
                        "called_at": 1800000000,
                        "duration": 0,
                        "service_code": "vpbx",
                        "uniq": "s-9",
                        "is_call_event_needed": True,
                    },
                    "_embedded": {
                        "contacts": [
                            {
                                "name": "+79990001122",
                                "custom_fields_values": [
                                    {"field_code": "PHONE", "values": [{"value": "+79990001122"}]}
                                ],
                            }
                        ]
                    },
                }
            ],
        )
        assert resp.status_code == 200, resp.text
        row = resp.json()["_embedded"]["unsorted"][0]
        lead_id = row["_embedded"]["leads"][0]["id"]
        lead = (await api.get(f"/api/v4/leads/{lead_id}")).json()
        pipelines = (await api.get("/api/v4/leads/pipelines")).json()["_embedded"]["pipelines"]
        unsorted_status = pipelines[0]["_embedded"]["statuses"][0]
        assert lead["status_id"] == unsorted_status["id"] and unsorted_status["type"] == 1
        event = await api.post(
            "/api/v2/events",
            json={"add": [{"type": "phone_call", "phone_number": "+79161234567", "users": [5001]}]},
        )
        assert event.status_code == 200
    state = await emu.state()
    assert state["events_v2"][0]["resolved"] == {"type": "contact", "id": ANNA}
    assert state["unsorted"][0]["source_uid"] == "vpbx-1"


@pytest.mark.filterwarnings("ignore::jwt.InsecureKeyLengthWarning")  # the demo's secret is 10 bytes
async def test_the_disposable_token_passes_the_pbx_widget_verifier(emu: Emu) -> None:
    aud = "http://127.0.0.1:8000"
    token = await emu.disposable_token(user_id=5002, aud=aud)
    verifier = WidgetVerifier(client_id=emu.client_id, client_secret=emu.client_secret, audience=aud)
    caller = verifier.verify(token)
    assert (caller.account_id, caller.user_id, caller.is_admin, caller.subdomain) == (
        30000001,
        5002,
        False,
        "demo",
    )
    assert caller.account_url == "https://demo.amocrm.ru"
    admin = verifier.verify(await emu.disposable_token(account=OTHER, aud=aud))
    assert (admin.account_id, admin.user_id, admin.is_admin) == (30000002, 6001, True)


async def test_reset_and_load_and_the_log_since(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        await api.get("/api/v4/account")
    entries = await emu.log()
    assert [e["path"] for e in entries] == ["/oauth2/access_token", "/api/v4/account"]
    assert entries[1]["token_jti"] and entries[1]["latency_ms"] >= 0
    assert await emu.log(since=entries[0]["seq"]) == entries[1:]
    await emu.control("POST", "/__emu__/reset")
    assert (await emu.http.get(f"{emu.url}/__emu__/state", params={"account": DEMO})).status_code == 404
    await emu.control("POST", "/__emu__/load", json=DEMO_FIXTURE)
    assert len((await emu.state())["contacts"]) == 3
    assert (await emu.state())["tokens"] == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_the_cli_serves_the_emulator(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "emulator.toml"
    config.write_text('[switches]\nphone_match_mode = "lenient"\n')
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, waited for below with a bound
        [
            sys.executable,
            "-c",
            "from vpbx.cli import main; main()",
            "amocrm",
            "emulator",
            "--port",
            str(port),
            "--config",
            str(config),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(30):
            while True:
                try:
                    resp = await http.get(f"http://127.0.0.1:{port}/__emu__/switches")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        assert resp.json()["phone_match_mode"] == "lenient"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
