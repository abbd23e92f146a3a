"""send_now and replay against a real HTTP CRM on loopback (integration-api.md §5.1, §6.3 A, §6.4)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select

from tests.helpers import Tenant
from tests.integration_api.notify_crm import F_CLIENT_ID, F_KEY, Answer, Crm, activate, self_signed
from vpbx.app import Core
from vpbx.integration_api import notify
from vpbx.integration_api.core import sign
from vpbx.store.models import ApiLog, ApiSettings, ApiTrustedCert

F_NEW = (
    b'{"state":"new","type":"incoming","session_id":"534dbe28-7e58-4705-89a4-26a308405464",'
    b'"timestamp":"2025-06-12 11:00:00.120","from_number":"sip:79161234567@demo.vpbx.example",'
    b'"request_number":"sip:74951234567@demo.vpbx.example","domain":"demo.vpbx.example"}'
)
F_NEW_SIGN = "87253a4f7ff41ecff69a54bcea02da29ee2b7022cc6cfb73ba80a3b5ad0425cf"


async def _log(core: Core) -> list[ApiLog]:
    async with core.sessions() as s:
        return list(await s.scalars(select(ApiLog).order_by(ApiLog.at, ApiLog.id)))


async def test_send_now_posts_the_exact_signed_bytes_and_logs_them(core: Core, t1: Tenant) -> None:
    async with Crm(lambda _crm, _req: Answer(200, b'{"result":"0"}')).running() as crm:
        await activate(core, t1.id, crm.url + "/", client_id=F_CLIENT_ID, key=F_KEY)
        ex = await notify.send_now(core, t1.id, "call_events", F_NEW, timeout_s=3, test=True)
        (seen,) = await crm.wait_for(1)
    assert seen.path == "/rt/call_events"  # the address's trailing slash is not doubled
    assert seen.raw == F_NEW
    assert seen.headers["x-client-id"] == F_CLIENT_ID
    assert seen.headers["x-client-sign"] == F_NEW_SIGN
    assert seen.headers["content-type"] == "application/json; charset=utf-8"
    assert ex.delivered and ex.status == 200 and ex.signature == F_NEW_SIGN
    assert ex.url == crm.url + "/call_events" and ex.response_body == '{"result":"0"}'
    assert ex.latency_ms is not None
    (row,) = await _log(core)
    assert row.id == ex.log_id and row.direction == "out" and row.method == "call_events" and row.test
    assert row.request_headers["X-Client-Sign"] == F_NEW_SIGN and row.request_body == F_NEW.decode()
    assert (row.status, row.result, row.verdict) == (200, "0", notify.DELIVERED)


async def test_a_payload_is_serialised_once_compact_utf8(core: Core, t1: Tenant) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url, client_id=F_CLIENT_ID, key=F_KEY)
        payload = {
            "domain": "demo.vpbx.example",
            "from_number": "79161234567",
            "request_number": "74951234567",
        }
        await notify.send_now(core, t1.id, "get_number_info", payload, timeout_s=3, test=True)
        (seen,) = await crm.wait_for(1)
    assert (
        seen.raw
        == b'{"domain":"demo.vpbx.example","from_number":"79161234567","request_number":"74951234567"}'
    )
    assert seen.headers["x-client-sign"] == "05be6bc86a63ae7d653bb3d8c509acd54e745010db00b060cfdc6babe3be4ed2"


async def test_failures_are_shown_and_logged_not_delivered(core: Core, t1: Tenant) -> None:
    answers = {
        "/rt/a": Answer(404, b"nope", content_type="text/plain"),
        "/rt/b": Answer(302),
        "/rt/c": Answer(200, delay_s=3),
    }
    async with Crm(lambda _crm, req: answers[req.path]).running() as crm:
        await activate(core, t1.id, crm.url)
        missing = await notify.send_now(core, t1.id, "a", {"x": 1}, timeout_s=2, test=False)
        moved = await notify.send_now(core, t1.id, "b", {"x": 1}, timeout_s=2, test=False)
        slow = await notify.send_now(core, t1.id, "c", {"x": 1}, timeout_s=1, test=False)
    assert (missing.status, missing.delivered, missing.retryable, missing.response_body) == (
        404,
        False,
        False,
        "nope",
    )
    assert (moved.status, moved.delivered, moved.retryable) == (
        302,
        False,
        False,
    )  # redirects are not followed
    assert slow.status is None and slow.retryable and "1 с" in slow.error
    rows = await _log(core)
    assert [r.method for r in rows] == ["a", "b", "c"]
    assert all(r.verdict.startswith(notify.NOT_DELIVERED) and not r.test for r in rows)


async def test_https_is_required_when_the_encryption_mode_is_on(core: Core, t1: Tenant) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url)
        async with core.sessions() as s:
            settings = await s.get(ApiSettings, t1.id)
            assert settings is not None
            settings.tls_required = True
            await s.commit()
        ex = await notify.send_now(core, t1.id, "call_events", {"x": 1}, timeout_s=2, test=True)
        assert crm.seen == []
    assert ex.status is None and ex.error.startswith(notify.HTTPS_REQUIRED) and not ex.retryable


async def test_replay_byte_for_byte_or_resigned_and_only_within_the_domain(
    core: Core, t1: Tenant, t2: Tenant
) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url, client_id=F_CLIENT_ID, key=F_KEY)
        first = await notify.send_now(core, t1.id, "call_events", F_NEW, timeout_s=3, test=False)
        assert first.log_id is not None
        # the key changes (regenerated); a byte-for-byte replay keeps the original signature
        async with core.sessions() as s:
            settings = await s.get(ApiSettings, t1.id)
            assert settings is not None
            settings.sign_key_enc = core.box.seal("11111111111111111111111111111111")
            await s.commit()
        same = await notify.replay(core, first.log_id, resign=False, domain_id=t1.id)
        again = await notify.replay(core, first.log_id, url=crm.url + "/other", resign=True, domain_id=t1.id)
        assert await notify.replay(core, first.log_id, resign=True, domain_id=t2.id) is None
        seen = await crm.wait_for(3)
    assert [r.raw for r in seen] == [F_NEW] * 3
    assert seen[1].headers["x-client-sign"] == F_NEW_SIGN and seen[1].path == "/rt/call_events"
    resigned = sign(F_CLIENT_ID, F_NEW, "11111111111111111111111111111111")
    assert seen[2].headers["x-client-sign"] == resigned and seen[2].path == "/rt/other"
    assert same is not None and again is not None and same.delivered and again.delivered
    assert len(await _log(core)) == 3  # replays are new rows


async def test_a_successful_test_send_resumes_a_suspended_domain(core: Core, t1: Tenant) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url, suspended_at=core.clock.now())
        await notify.send_now(core, t1.id, "call_events", {"x": 1}, timeout_s=3, test=True)
    async with core.sessions() as s:
        settings = await s.get(ApiSettings, t1.id)
        assert settings is not None and settings.suspended_at is None


async def test_https_is_verified_against_the_domains_trusted_certificates(
    core: Core, t1: Tenant, tmp_path: Path
) -> None:
    cert, key, pem = self_signed(tmp_path)
    async with Crm().running(tls=(cert, key)) as crm:
        await activate(core, t1.id, crm.url, tls_required=True)
        untrusted = await notify.send_now(core, t1.id, "call_events", {"x": 1}, timeout_s=3, test=True)
        assert crm.seen == []  # the handshake failed before any request
        async with core.sessions() as s:
            s.add(
                ApiTrustedCert(
                    domain_id=t1.id, pem=pem, subject="CN=crm.test", not_after=dt.datetime.now(dt.UTC)
                )
            )
            await s.commit()
        trusted = await notify.send_now(core, t1.id, "call_events", {"x": 1}, timeout_s=3, test=True)
        (seen,) = await crm.wait_for(1)
    assert untrusted.status is None and untrusted.error.startswith("Ошибка TLS") and untrusted.retryable
    assert trusted.delivered and seen.raw == b'{"x":1}'
