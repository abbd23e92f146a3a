"""The emulator's required self-tests (amocrm.md §4.8), each over real HTTP through the kit."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from tests.amocrm.emu_kit import DEMO, OTHER, Emu, emulator, receiver

ANNA = 9001  # +79161234567, responsible 5001, deal 8001
OLEG = 9002  # 89167654321
STORE = 9003  # «Склад», a comment that mentions 9161234567


@pytest.fixture
async def emu() -> Any:
    """The rate limit lifted (sequential requests can pass 7 per second); its own tests use the default."""
    async with emulator(rate_limit_rps=1000) as e:
        yield e


async def bearer(emu: Emu, account: str = DEMO) -> str:
    token: str = (await emu.token_pair(account))["access_token"]
    return token


def assert_empty_204(resp: httpx.Response) -> None:
    assert resp.status_code == 204
    assert resp.content == b""
    assert "content-type" not in resp.headers
    assert resp.headers["x-request-id"]


# (1)
async def test_204_without_body_for_empty_search_unknown_id_and_page_past_the_end(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        assert_empty_204(await api.get("/api/v4/contacts", params={"query": "nobody-has-this"}))
        assert_empty_204(await api.get("/api/v4/contacts/123456"))
        assert_empty_204(await api.get("/api/v4/leads/123456"))
        assert_empty_204(await api.get("/api/v4/contacts", params={"page": 2, "limit": 50}))
        assert_empty_204(await api.get("/api/v4/tasks"))


# (2)
async def test_no_next_link_on_the_last_page_and_hrefs_are_public(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        first = await api.get("/api/v4/contacts", params={"limit": 2})
        assert first.status_code == 200
        assert first.headers["content-type"] == "application/hal+json"
        body = first.json()
        assert body["_page"] == 1
        assert [c["id"] for c in body["_embedded"]["contacts"]] == [ANNA, OLEG]
        assert body["_links"]["next"]["href"].startswith("https://demo.amocrm.ru/api/v4/contacts?")
        assert "page=2" in body["_links"]["next"]["href"]
        last = (await api.get("/api/v4/contacts", params={"limit": 2, "page": 2})).json()
        assert [c["id"] for c in last["_embedded"]["contacts"]] == [STORE]
        assert "next" not in last["_links"]
        assert_empty_204(await api.get("/api/v4/contacts", params={"limit": 2, "page": 3}))
        exact = (await api.get("/api/v4/contacts", params={"limit": 3})).json()
        assert "next" not in exact["_links"]


async def test_next_on_a_full_last_page_is_a_switch() -> None:
    async with emulator(next_on_full_page=True) as emu, emu.api(token=await bearer(emu)) as api:
        exact = (await api.get("/api/v4/contacts", params={"limit": 3})).json()
        assert "page=2" in exact["_links"]["next"]["href"]
        assert_empty_204(await api.get("/api/v4/contacts", params={"limit": 3, "page": 2}))


# (3)
async def exchange(emu: Emu, code: str, **override: Any) -> httpx.Response:
    body = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": emu.world.integrations[emu.client_id].redirect_uri,
        **override,
    }
    return await emu.http.post(f"{emu.account_url()}/oauth2/access_token", json=body)


async def test_a_reused_code_and_a_code_older_than_20_minutes_are_refused(emu: Emu) -> None:
    code = (await emu.install(call=False))["code"]
    first = await exchange(emu, code)
    assert first.status_code == 200
    pair = first.json()
    assert pair["token_type"] == "Bearer" and pair["expires_in"] == 86400
    again = await exchange(emu, code)
    assert again.status_code == 400
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["hint"] == "Authorization code has been revoked"

    old = (await emu.install(call=False))["code"]
    await emu.advance(20 * 60 + 1)
    late = await exchange(emu, old)
    assert late.status_code == 400
    assert late.json()["hint"] == "Authorization code has expired"


async def test_wrong_secret_or_redirect_uri_is_400_with_a_hint_and_form_bodies_work(emu: Emu) -> None:
    code = (await emu.install(call=False))["code"]
    bad_secret = await exchange(emu, code, client_secret="nope")
    assert bad_secret.status_code == 400 and bad_secret.json()["hint"]
    bad_uri = await exchange(emu, code, redirect_uri="http://127.0.0.1:1/elsewhere")
    assert bad_uri.status_code == 400 and bad_uri.json()["hint"]
    form = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": emu.world.integrations[emu.client_id].redirect_uri,
    }
    ok = await emu.http.post(f"{emu.account_url()}/oauth2/access_token", data=form)
    assert ok.status_code == 200, ok.text
    claims = __import__("jwt").decode(ok.json()["access_token"], options={"verify_signature": False})
    assert claims["account_id"] == 30000001
    assert claims["client_uuid"] == emu.client_id
    assert claims["api_domain"] and claims["jti"] and claims["exp"] > claims["iat"]


# (4)
async def refresh(emu: Emu, token: str, account: str = DEMO) -> httpx.Response:
    body = {
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "grant_type": "refresh_token",
        "refresh_token": token,
        "redirect_uri": emu.world.integrations[emu.client_id].redirect_uri,
    }
    return await emu.http.post(f"{emu.account_url(account)}/oauth2/access_token", json=body)


async def test_refresh_rotates_and_a_reused_refresh_token_is_revoked(emu: Emu) -> None:
    pair = await emu.token_pair()
    new = await refresh(emu, pair["refresh_token"])
    assert new.status_code == 200
    assert new.json()["refresh_token"] != pair["refresh_token"]
    reused = await refresh(emu, pair["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["hint"] == "Token has been revoked"
    async with emu.api(token=new.json()["access_token"]) as api:
        assert (await api.get("/api/v4/account")).status_code == 200
    async with emu.api(token=pair["access_token"]) as api:  # revoke_access_on_refresh defaults to false
        assert (await api.get("/api/v4/account")).status_code == 200


async def test_of_two_concurrent_refreshes_with_one_token_exactly_one_wins(emu: Emu) -> None:
    pair = await emu.token_pair()
    a, b = await asyncio.gather(refresh(emu, pair["refresh_token"]), refresh(emu, pair["refresh_token"]))
    assert sorted([a.status_code, b.status_code]) == [200, 401]


async def test_the_old_access_token_dies_on_refresh_when_switched() -> None:
    async with emulator(revoke_access_on_refresh=True) as emu:
        pair = await emu.token_pair()
        assert (await refresh(emu, pair["refresh_token"])).status_code == 200
        async with emu.api(token=pair["access_token"]) as api:
            assert (await api.get("/api/v4/account")).status_code == 401


# (5)
async def test_401_after_the_clock_passes_the_access_token_life(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        assert (await api.get("/api/v4/users")).status_code == 200
        await emu.advance(86401)
        expired = await api.get("/api/v4/users")
        assert expired.status_code == 401
        assert expired.headers["content-type"] == "application/problem+json"
        assert expired.json()["status"] == 401
    async with emu.api(token=await bearer(emu)) as api:  # tokens minted on the advanced clock work
        assert (await api.get("/api/v4/users")).status_code == 200
    async with emu.api() as anonymous:
        assert (await anonymous.get("/api/v4/users")).status_code == 401
    async with emu.api(token="not-a-jwt") as garbage:
        assert (await garbage.get("/api/v4/users")).status_code == 401


async def test_an_unpaid_account_answers_402(emu: Emu) -> None:
    token = await bearer(emu)
    await emu.flags(unpaid=True)
    async with emu.api(token=token) as api:
        resp = await api.get("/api/v4/account")
    assert resp.status_code == 402
    assert resp.json()["detail"] == "Аккаунт не оплачен"


# (6)
async def burst(api: httpx.AsyncClient, n: int) -> list[int]:
    answers = await asyncio.gather(*(api.get("/api/v4/users/5001") for _ in range(n)))
    return [r.status_code for r in answers]


async def test_429_at_the_8th_request_inside_one_second() -> None:
    async with emulator() as emu, emu.api(token=await bearer(emu)) as api:
        for _attempt in range(3):  # a burst slower than 1 s on a loaded machine is retried
            statuses = await burst(api, 8)
            if 429 in statuses:
                break
            await asyncio.sleep(1.0)  # let the window empty before the next burst
        assert sorted(statuses) == [200] * 7 + [429]
        log = await emu.log()
        refused = next(e for e in log if e["status"] == 429)
        assert refused["resp_body"] is None  # the default 429 body is empty


async def test_429_body_variants_and_retry_after_are_switches() -> None:
    async with emulator(rate_limit_rps=1, rate_limit_body="json", retry_after_s=2) as emu:
        async with emu.api(token=await bearer(emu)) as api:
            for _attempt in range(3):
                answers = await asyncio.gather(*(api.get("/api/v4/users/5001") for _ in range(3)))
                limited = [r for r in answers if r.status_code == 429]
                if limited:
                    break
            assert limited[0].headers["retry-after"] == "2"
            assert limited[0].json()["status"] == 429


async def test_403_block_after_repeated_abuse_for_every_account_of_the_ip() -> None:
    async with emulator() as emu:
        await _abuse_until_blocked(emu)


async def _abuse_until_blocked(emu: Emu) -> None:
    demo, other = await bearer(emu), await bearer(emu, OTHER)
    async with emu.api(token=demo) as api:
        blocked = False
        async with asyncio.timeout(20):
            while not blocked:
                statuses = await burst(api, 12)
                blocked = 403 in statuses
                if not blocked:
                    await asyncio.sleep(0.3)  # the block needs 429s in three different seconds
    async with emu.api(OTHER, token=other) as api_b:
        resp = await api_b.get("/api/v4/account")
    assert resp.status_code == 403


# (7)
async def test_validation_errors_have_amocrms_shape_and_paths(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        bad_field = await api.post(
            "/api/v4/contacts",
            json=[
                {"name": "ok"},
                {"name": "x", "custom_fields_values": [{"field_id": 999, "values": [{"value": "1"}]}]},
            ],
        )
        assert bad_field.status_code == 400
        assert bad_field.headers["content-type"] == "application/problem+json"
        assert bad_field.json() == {
            "validation-errors": [
                {
                    "request_id": "1",
                    "errors": [
                        {
                            "code": "NotSupportedChoice",
                            "path": "custom_fields_values.0.field_id",
                            "detail": "The value you selected is not a valid choice.",
                        }
                    ],
                }
            ],
            "title": "Bad Request",
            "type": "https://httpstatus.es/400",
            "status": 400,
            "detail": "Request validation failed",
        }
        state = await emu.state()
        assert [c["id"] for c in state["contacts"]] == [ANNA, OLEG, STORE]  # a batch is all or nothing

        bad_enum = await api.post(
            "/api/v4/contacts",
            json=[
                {
                    "custom_fields_values": [
                        {"field_code": "PHONE", "values": [{"value": "1", "enum_code": "CAT"}]}
                    ]
                }
            ],
        )
        assert errors_of(bad_enum) == [
            ("0", "NotSupportedChoice", "custom_fields_values.0.values.0.enum_code")
        ]

        task = await api.post("/api/v4/tasks", json=[{"entity_type": "contacts", "entity_id": ANNA}])
        assert errors_of(task) == [("0", "FieldMissing", "text"), ("0", "FieldMissing", "complete_till")]

        note = await api.post(
            "/api/v4/contacts/notes",
            json=[
                {"entity_id": ANNA, "note_type": "call_in", "params": {"source": "", "phone": "+79161234567"}}
            ],
        )
        assert errors_of(note) == [
            ("0", "NotBlank", "params.source"),
            ("0", "FieldMissing", "params.duration"),
        ]

        status = await api.post("/api/v4/leads", json=[{"name": "d", "pipeline_id": 7000, "status_id": 9999}])
        assert errors_of(status) == [("0", "NotSupportedChoice", "status_id")]

        too_many = await api.post("/api/v4/contacts", json=[{"name": str(i)} for i in range(251)])
        assert too_many.status_code == 400


def errors_of(resp: httpx.Response) -> list[tuple[str, str, str]]:
    assert resp.status_code == 400, resp.text
    return [
        (v["request_id"], e["code"], e["path"]) for v in resp.json()["validation-errors"] for e in v["errors"]
    ]


# (8)
async def test_request_id_is_echoed_or_defaults_to_the_position(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        resp = await api.post(
            "/api/v4/tasks",
            json=[
                {"text": "a", "complete_till": 1900000000},
                {"text": "b", "complete_till": 1900000000, "request_id": "mine"},
                {"text": "c", "complete_till": 1900000000},
            ],
        )
        assert resp.status_code == 200
        rows = resp.json()["_embedded"]["tasks"]
        assert [r["request_id"] for r in rows] == ["0", "mine", "2"]
        assert [r["id"] for r in rows] == [30000001, 30000002, 30000003]
        contacts = await api.post("/api/v4/contacts", json=[{"name": "A"}, {"name": "B", "request_id": "x"}])
        rows = contacts.json()["_embedded"]["contacts"]
        assert [(r["id"], r["request_id"]) for r in rows] == [(10000001, "0"), (10000002, "x")]
        notes = await api.post(
            f"/api/v4/contacts/{ANNA}/notes",
            json=[
                {
                    "note_type": "call_out",
                    "params": {"source": "vpbx", "duration": 0, "phone": "+79161234567"},
                }
            ],
        )
        assert notes.json()["_embedded"]["notes"][0] | {"_links": None} == {
            "id": 40000001,
            "entity_id": ANNA,
            "request_id": "0",
            "_links": None,
        }
        state = await emu.state()
        assert "request_id" not in state["tasks"][0]  # echoed, never stored


# (9)
async def test_strict_search_finds_the_comment_false_positive_and_misses_the_8_spelling(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        ten = await api.get("/api/v4/contacts", params={"query": "9161234567", "with": "leads"})
        found = ten.json()["_embedded"]["contacts"]
        assert [c["id"] for c in found] == [ANNA, STORE]
        assert found[0]["_embedded"]["leads"][0]["id"] == 8001
        assert_empty_204(await api.get("/api/v4/contacts", params={"query": "89161234567"}))
        oleg = await api.get("/api/v4/contacts", params={"query": "9167654321"})
        assert [c["id"] for c in oleg.json()["_embedded"]["contacts"]] == [OLEG]
        by_name = await api.get("/api/v4/contacts", params={"query": "анна"})
        assert [c["id"] for c in by_name.json()["_embedded"]["contacts"]] == [ANNA]


async def test_lenient_search_finds_every_spelling() -> None:
    async with emulator(phone_match_mode="lenient") as emu, emu.api(token=await bearer(emu)) as api:
        for query in ("89161234567", "+7 916 123-45-67", "9161234567"):
            resp = await api.get("/api/v4/contacts", params={"query": query})
            assert ANNA in [c["id"] for c in resp.json()["_embedded"]["contacts"]], query


# (10)
def call(phone: str, **extra: Any) -> dict[str, Any]:
    return {
        "direction": "inbound",
        "uniq": "s-1",
        "duration": 42,
        "source": "vpbx",
        "phone": phone,
        "link": "http://127.0.0.1/rec/amo/x.mp3",
        "call_status": 4,
        "call_result": "Разговор состоялся",
        "call_responsible": 5001,
        **extra,
    }


async def test_calls_attach_to_the_single_active_lead_else_the_contact_and_unknown_is_400(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        single = await api.post("/api/v4/calls", json=[call("89161234567")])
        assert single.status_code == 200
        body = single.json()
        assert body["_total_items"] == 1 and body["errors"] == []
        assert (body["_embedded"]["calls"][0]["entity_id"], body["_embedded"]["calls"][0]["entity_type"]) == (
            8001,
            "lead",
        )
        notes = await api.get("/api/v4/leads/8001/notes", params={"filter[note_type][]": "call_in"})
        assert notes.json()["_embedded"]["notes"][0]["params"]["uniq"] == "s-1"

        second = await api.post(
            "/api/v4/leads",
            json=[{"name": "Ещё", "status_id": 7001, "_embedded": {"contacts": [{"id": ANNA}]}}],
        )
        assert second.status_code == 200
        two = await api.post("/api/v4/calls", json=[call("+79161234567", uniq="s-2")])
        assert (
            two.json()["_embedded"]["calls"][0]["entity_id"],
            two.json()["_embedded"]["calls"][0]["entity_type"],
        ) == (
            ANNA,
            "contact",
        )

        unknown = await api.post("/api/v4/calls", json=[call("+79990001122", uniq="s-3")])
        assert unknown.status_code == 400
        assert unknown.json()["_total_items"] == 0
        assert unknown.json()["errors"][0]["title"] == "Entity not found"
        state = await emu.state()
        assert [c["uniq"] for c in state["calls"]] == ["s-1", "s-2"]


async def test_a_note_is_edited_in_place_by_id_or_in_a_batch_and_a_gone_one_is_404(emu: Emu) -> None:
    params = {"uniq": "s-9", "duration": 30, "source": "ВАТС", "phone": "+79161234567", "link": "a.mp3"}
    async with emu.api(token=await bearer(emu)) as api:
        made = await api.post(
            "/api/v4/contacts/notes", json=[{"entity_id": ANNA, "note_type": "call_in", "params": params}]
        )
        nid = made.json()["_embedded"]["notes"][0]["id"]
        one = await api.patch(
            f"/api/v4/contacts/notes/{nid}",
            json={"entity_id": ANNA, "note_type": "call_in", "params": {**params, "link": "b.mp3"}},
        )
        assert one.status_code == 200 and (one.json()["id"], one.json()["entity_id"]) == (nid, ANNA)
        assert one.json()["_links"]["self"]["href"].endswith(f"/api/v4/contacts/notes/{nid}")
        batch = await api.patch(
            "/api/v4/contacts/notes",
            json=[{"id": nid, "entity_id": ANNA, "params": {**params, "link": "c.mp3"}, "request_id": "r"}],
        )
        assert batch.status_code == 200
        assert [(n["id"], n["request_id"]) for n in batch.json()["_embedded"]["notes"]] == [(nid, "r")]
        [note] = [n for n in (await emu.state())["notes"] if n["id"] == nid]  # edited, not added
        assert note["params"] == {**params, "link": "c.mp3"} and note["note_type"] == "call_in"

        bad = await api.patch(
            "/api/v4/contacts/notes",
            json=[{"id": nid, "note_type": "common", "params": {"source": ""}}, {"id": 1}],
        )
        assert errors_of(bad) == [
            ("0", "NotSupportedChoice", "note_type"),
            ("0", "NotBlank", "params.source"),
            ("0", "FieldMissing", "params.duration"),
            ("1", "NotSupportedChoice", "id"),
        ]
        assert (
            await api.patch("/api/v4/leads/notes/" + str(nid), json={"params": params})
        ).status_code == 404
        await emu.control("DELETE", f"/__emu__/accounts/{DEMO}/contacts/{ANNA}")
        gone = await api.patch(f"/api/v4/contacts/notes/{nid}", json={"params": params})
        assert gone.status_code == 404 and gone.json()["detail"] == "Entity not found"


async def test_a_closed_lead_does_not_count_as_active(emu: Emu) -> None:
    async with emu.api(token=await bearer(emu)) as api:
        assert (await api.patch("/api/v4/leads/8001", json={"status_id": 142})).status_code == 200
        resp = await api.post("/api/v4/calls", json=[call("9161234567")])
        assert resp.json()["_embedded"]["calls"][0]["entity_type"] == "contact"


# (11)
async def test_leads_complex_answers_a_top_level_array_and_merges_duplicates(emu: Emu) -> None:
    item = {
        "name": "Звонок",
        "_embedded": {
            "contacts": [
                {
                    "name": "Новый",
                    "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+79161234567"}]}],
                }
            ]
        },
    }
    async with emu.api(token=await bearer(emu)) as api:
        plain = await api.post("/api/v4/leads/complex", json=[item])
        assert plain.status_code == 200
        assert plain.headers["content-type"] == "application/hal+json"
        rows = plain.json()
        assert isinstance(rows, list)
        assert rows == [
            {"id": 20000001, "contact_id": 10000001, "company_id": None, "request_id": ["0"], "merged": False}
        ]
        await emu.flags(duplicate_control=True)
        merged = (await api.post("/api/v4/leads/complex", json=[item])).json()
        assert merged[0]["merged"] is True
        assert merged[0]["contact_id"] in (ANNA, 10000001)
        too_many = await api.post("/api/v4/leads/complex", json=[item] * 51)
        assert too_many.status_code == 400


# (12)
async def test_apply_then_drop_applies_the_write_and_answers_nothing(emu: Emu) -> None:
    await emu.fault(method="POST", path_regex=r"^/api/v4/contacts$", apply_then_drop=True)
    async with emu.api(token=await bearer(emu)) as api:
        with pytest.raises(httpx.TransportError):
            await api.post("/api/v4/contacts", json=[{"name": "Потерянный ответ"}])
        after = await api.post("/api/v4/contacts", json=[{"name": "Второй"}])  # times=1: the rule is spent
        assert after.status_code == 200
    names = [c["name"] for c in (await emu.state())["contacts"]]
    assert "Потерянный ответ" in names and "Второй" in names
    dropped = [e for e in await emu.log() if e["dropped"]]
    assert len(dropped) == 1 and dropped[0]["status"] == 0


# (13)
async def test_the_disconnect_hook_is_signed_and_tokens_are_revoked(emu: Emu) -> None:
    async with receiver() as rx:
        await emu.set_integration(disconnect_hook=f"{rx.url}/amo/oauth/disconnect")
        pair = await emu.token_pair()
        assert [i["client_id"] for i in (await emu.state())["installs"]] == [emu.client_id]
        out = await emu.uninstall()
        assert out["status"] == 200
        (hook,) = await rx.wait_for(1)
        assert (hook.method, hook.path) == ("GET", "/amo/oauth/disconnect")
        q = {k: v[0] for k, v in parse_qs(hook.query).items()}
        want = hmac.new(b"emu-secret", f"{emu.client_id}|30000001".encode(), hashlib.sha256).hexdigest()
        assert q == {"account_id": "30000001", "client_uuid": emu.client_id, "signature": want}
        async with emu.api(token=pair["access_token"]) as api:
            assert (await api.get("/api/v4/account")).status_code == 401
        assert (await refresh(emu, pair["refresh_token"])).json()["hint"] == "Token has been revoked"
        assert (await emu.state())["installs"] == []

        await emu.token_pair()
        await emu.uninstall(bad_signature=True)
        (_, bad) = await rx.wait_for(2)
        assert parse_qs(bad.query)["signature"][0] != want
        await emu.uninstall(call_hook=False)
        assert len(rx.seen) == 2


# (14)
async def test_two_accounts_never_see_each_others_entities(emu: Emu) -> None:
    demo, other = await bearer(emu), await bearer(emu, OTHER)
    async with emu.api(OTHER, token=other) as api_b, emu.api(token=demo) as api_a:
        assert (await api_b.get(f"/api/v4/contacts/{ANNA}")).status_code == 204
        assert (await api_b.get("/api/v4/contacts", params={"query": "9161234567"})).status_code == 204
        made = await api_b.post(
            "/api/v4/contacts",
            json=[
                {
                    "name": "B",
                    "custom_fields_values": [{"field_code": "PHONE", "values": [{"value": "+79161234567"}]}],
                }
            ],
        )
        b_id = made.json()["_embedded"]["contacts"][0]["id"]
        assert (await api_a.get(f"/api/v4/contacts/{b_id}")).status_code == 204
        found = await api_a.get("/api/v4/contacts", params={"query": "9161234567"})
        assert b_id not in [c["id"] for c in found.json()["_embedded"]["contacts"]]
        assert (await api_b.post("/api/v4/calls", json=[call("+79161234567")])).json()["_embedded"]["calls"][
            0
        ]["entity_id"] == b_id
        assert (await api_a.patch(f"/api/v4/contacts/{b_id}", json={"name": "x"})).status_code == 404
        users_b = (await api_b.get("/api/v4/users")).json()["_embedded"]["users"]
        assert [u["id"] for u in users_b] == [6001]
    async with emu.api(OTHER, token=demo) as crossed:  # a token of one account on another's host
        assert (await crossed.get("/api/v4/account")).status_code == 401
    state_b = await emu.state(OTHER)
    assert [c["id"] for c in state_b["contacts"]] == [b_id]
    assert state_b["calls"] and not (await emu.state(DEMO))["calls"]
