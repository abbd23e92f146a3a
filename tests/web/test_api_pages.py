"""The Integration API section (integration-api.md §6): activation, «Настройка параметров» (validation,
regeneration, the masked key, trusted certificates), «Отладка взаимодействия» (test sends to a real local HTTP
server, curl examples, the signature calculator and workbench) and the log, with two tenants."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from tests.helpers import Cabinet, Tenant
from vpbx import billing
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.integration_api.core import MOSCOW, sign, sign_key, sweep_log
from vpbx.integration_api.logsweep import LogSweep
from vpbx.store.models import ApiDelivery, ApiLog, ApiSettings, ApiTrustedCert, IncomingNumber

WAIT_S = 5.0


async def _hidden(cab: Cabinet, path: str, name: str) -> str:
    page = await cab.get(path)
    m = re.search(rf'name="{name}" value="([^"]*)"', page.text)
    assert m, name
    return m.group(1)


async def enable_api(cab: Cabinet) -> None:
    """Switch the service on the way an admin does: the confirmation, then «Подключить»."""
    fee = await _hidden(cab, "/services/integration_api/enable", "quoted_fee")
    charge = await _hidden(cab, "/services/integration_api/enable", "quoted_charge")
    resp = await cab.post("/services/integration_api/enable", {"quoted_fee": fee, "quoted_charge": charge})
    assert resp.status_code == 303


async def settings_of(core: Core, t: Tenant) -> ApiSettings:
    async with core.sessions() as s:
        row = await s.get(ApiSettings, t.id)
        assert row is not None
        return row


def form(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "crm_url": "https://crm.example/rt",
        "allowlist": "",
        "timeout_s": "3",
        "tls_required": "on",
        "send_events": "on",
        **{f"type_{t}": "on" for t in ("incoming", "outbound", "internal")},
        **{f"state_{s}": "on" for s in ("new", "calling", "connected", "disconnected", "end")},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
async def on1(admin1: Cabinet) -> Cabinet:
    await enable_api(admin1)
    return admin1


async def test_section_says_where_to_enable_until_the_service_is_on(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    page = await admin1.get("/integration-api")
    assert page.status_code == 200 and 'id="api-off"' in page.text and "Управление услугами" in page.text
    assert (await admin1.get("/integration-api/debug")).status_code == 200
    async with core.sessions() as s:
        assert await s.get(ApiSettings, t1.id) is None
    await enable_api(admin1)
    row = await settings_of(core, t1)
    assert re.fullmatch(r"[0-9A-F]{32}", row.client_id)
    assert re.fullmatch(r"[0-9A-F]{32}", sign_key(row, core.box))
    assert row.tls_required and row.timeout_s == 3 and not row.number_info
    page = await admin1.get("/integration-api")
    for text in (
        "Настройка параметров",
        "Отладка взаимодействия",
        "Документация",
        "Уникальный код идентификации",
    ):
        assert text in page.text
    assert 'id="settings-integration_api"' in (await admin1.get("/services")).text
    docs = re.search(r'<a href="([^"]+)" id="api-docs"', page.text)
    assert docs and docs.group(1) == "/integration-api/contract"
    contract = await admin1.get(docs.group(1))
    assert (
        contract.status_code == 200 and "1 s, 5 s and 30 s" in contract.text and "30 минут" in contract.text
    )
    assert 'href="http://testserver/api/openapi.json" id="api-openapi"' in contract.text
    assert (await admin1.client.get("/api/openapi.json")).json()["openapi"].startswith("3.1")
    # switching off and on again keeps the credentials (§6.1)
    await admin1.post("/services/integration_api/disable")
    assert 'id="api-off"' in (await admin1.get("/integration-api")).text
    await enable_api(admin1)
    again = await settings_of(core, t1)
    assert again.client_id == row.client_id and sign_key(again, core.box) == sign_key(row, core.box)


OFF_ROUTES = [  # every page and action of the section that needs the service on (§6.1)
    ("GET", "/integration-api"),
    ("POST", "/integration-api"),
    ("POST", "/integration-api/regenerate-client-id"),
    ("POST", "/integration-api/regenerate-key"),
    ("POST", "/integration-api/key"),
    ("POST", "/integration-api/certs"),
    ("GET", "/integration-api/debug"),
    ("POST", "/integration-api/debug/send"),
    ("POST", "/integration-api/debug/sign"),
    ("POST", "/integration-api/debug/check"),
    ("POST", "/integration-api/debug/simulate"),
    ("POST", "/integration-api/debug/ssl"),
    ("GET", "/integration-api/log/clear"),
    ("POST", "/integration-api/log/clear"),
    ("POST", "/integration-api/resume"),
]


async def test_every_action_says_where_to_enable_while_the_service_is_off(
    admin1: Cabinet, core: Core, t1: Tenant
) -> None:
    await enable_api(admin1)
    before = await settings_of(core, t1)
    await admin1.post("/services/integration_api/disable")
    for verb, path in OFF_ROUTES:
        page = await (
            admin1.get(path) if verb == "GET" else admin1.post(path, form(crm_url="https://x.example"))
        )
        assert (page.status_code, 'id="api-off"' in page.text) == (200, True), (verb, path)
    after = await settings_of(core, t1)  # nothing changed: no regenerated credentials, no saved form
    assert (after.client_id, after.sign_key_enc, after.crm_url) == (
        before.client_id,
        before.sign_key_enc,
        before.crm_url,
    )


async def test_key_is_masked_until_revealed_by_post(on1: Cabinet, core: Core, t1: Tenant) -> None:
    row = await settings_of(core, t1)
    key = sign_key(row, core.box)
    page = await on1.get("/integration-api")
    assert row.client_id in page.text and key not in page.text
    assert key not in (await on1.get("/integration-api/debug")).text
    assert (await on1.client.get("/integration-api/key")).status_code == 405
    shown = await on1.post("/integration-api/key")
    assert shown.status_code == 200 and key in shown.text and shown.headers["cache-control"] == "no-store"
    fragment = await on1.client.post(
        "/integration-api/key", headers={"HX-Request": "true", "X-CSRF-Token": on1.csrf}
    )
    assert fragment.text == f'<code id="sign-key" class="revealed">{key}</code>'
    refused = await on1.post("/integration-api/key", csrf=False)
    assert refused.status_code == 403 and key not in refused.text


async def test_saving_validates_every_field_and_applies_them_together(
    on1: Cabinet, core: Core, t1: Tenant
) -> None:
    before = await settings_of(core, t1)
    cases = {
        "crm_url": form(crm_url="ftp://crm.example"),
        "timeout_s": form(timeout_s="11"),
        "allowlist": form(allowlist="10.0.0.0/8\nnot-an-ip"),
    }
    for name, data in cases.items():
        resp = await on1.post("/integration-api", data)
        assert resp.status_code == 422, name
        assert f'id="err-{name}"' in resp.text, name
    plain = await on1.post("/integration-api", form(crm_url="http://crm.example/rt"))
    assert plain.status_code == 422 and "https://" in plain.text  # encryption on: https only
    query = await on1.post("/integration-api", form(crm_url="https://crm.example/rt?x=1"))
    assert query.status_code == 422
    too_many = "\n".join(f"10.0.{i}.1" for i in range(51))
    assert (await on1.post("/integration-api", form(allowlist=too_many))).status_code == 422
    after = await settings_of(core, t1)
    assert (after.crm_url, after.timeout_s, after.allowlist) == (
        before.crm_url,
        before.timeout_s,
        before.allowlist,
    )
    assert 'id="allowlist-empty"' in (await on1.get("/integration-api")).text

    ok = await on1.post(
        "/integration-api",
        form(
            crm_url="http://crm.example/rt/",
            tls_required=None,
            allowlist="198.51.100.7\n2001:db8::/32",
            timeout_s="7",
            state_calling=None,
            type_internal=None,
            number_info="on",
            verify_crm_sign="on",
        ),
    )
    assert ok.status_code == 303
    row = await settings_of(core, t1)
    assert row.crm_url == "http://crm.example/rt/" and not row.tls_required
    assert row.allowlist == "198.51.100.7\n2001:db8::/32" and row.timeout_s == 7
    assert row.event_states == ["new", "connected", "disconnected", "end"]
    assert row.event_types == ["incoming", "outbound"]
    assert row.number_info and row.verify_crm_sign
    page = await on1.get("/integration-api")
    assert 'id="allowlist-empty"' not in page.text and 'id="api-saved"' not in page.text


async def test_regenerate_replaces_the_old_values(on1: Cabinet, core: Core, t1: Tenant) -> None:
    old = await settings_of(core, t1)
    old_key = sign_key(old, core.box)
    resp = await on1.post("/integration-api/regenerate-client-id")
    assert resp.status_code == 303
    page = await on1.get(resp.headers["location"])
    new = await settings_of(core, t1)
    assert new.client_id != old.client_id and new.client_id in page.text and old.client_id not in page.text
    assert 'id="api-regenerated"' in page.text
    assert sign_key(new, core.box) == old_key  # only what was asked for changes
    assert (await on1.post("/integration-api/regenerate-key")).status_code == 303
    newer = await settings_of(core, t1)
    assert sign_key(newer, core.box) != old_key and newer.client_id == new.client_id
    assert newer.sign_key_enc != old.sign_key_enc and old_key not in newer.sign_key_enc


def make_pem(cn: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(dt.datetime(2031, 5, 17, 12, 0, tzinfo=dt.UTC))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.PEM).decode()


async def _cert_count(core: Core, t: Tenant) -> int:
    async with core.sessions() as s:
        return await s.scalar(select(func.count()).where(ApiTrustedCert.domain_id == t.id)) or 0


async def test_trusted_certificates_show_subject_and_expiry_and_refuse_garbage(
    on1: Cabinet, core: Core, t1: Tenant
) -> None:
    bad = await on1.post("/integration-api/certs", {"pem_text": "-----BEGIN CERTIFICATE-----\nnope\n"})
    assert bad.status_code == 422 and 'id="cert-error"' in bad.text
    assert (await on1.post("/integration-api/certs", {"pem_text": "hello"})).status_code == 422
    assert await _cert_count(core, t1) == 0
    upload = await on1.client.post(
        "/integration-api/certs",
        data={"csrf_token": on1.csrf},
        files={"pem_file": ("crm.pem", make_pem("crm.example").encode(), "application/x-pem-file")},
    )
    assert upload.status_code == 303
    page = await on1.get("/integration-api")
    assert "CN=crm.example" in page.text and "2031-05-17 15:00:00" in page.text  # Moscow time
    for i in range(9):
        assert (await on1.post("/integration-api/certs", {"pem_text": make_pem(f"ca{i}")})).status_code == 303
    eleventh = await on1.post("/integration-api/certs", {"pem_text": make_pem("one-too-many")})
    assert eleventh.status_code == 422 and await _cert_count(core, t1) == 10
    note = await on1.get("/integration-api/api-cert")
    assert note.status_code == 200 and 'id="no-api-cert"' in note.text


@dataclass
class Crm:
    """A real HTTP server on loopback that records what reaches it and answers with a fixed body."""

    port: int = 0
    answer: bytes = b'{"result":"0","resultMessage":"OK"}'
    got: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), WAIT_S)
        self.got.append((lines[0].split()[1], headers, body))
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(self.answer)}\r\n\r\n".encode()
            + self.answer
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def crm() -> AsyncIterator[Crm]:
    c = Crm()
    server = await asyncio.start_server(c.handle, "127.0.0.1", 0)
    c.port = server.sockets[0].getsockname()[1]
    async with server:
        yield c


async def test_test_send_reaches_the_crm_signed_and_is_logged(
    on1: Cabinet, core: Core, t1: Tenant, crm: Crm
) -> None:
    assert (
        await on1.post(
            "/integration-api", form(crm_url=f"http://127.0.0.1:{crm.port}/rt/", tls_required=None)
        )
    ).status_code == 303
    async with core.sessions() as s:
        s.add(IncomingNumber(domain_id=t1.id, number="+74951234567"))
        await s.commit()
    row = await settings_of(core, t1)
    resp = await on1.post(
        "/integration-api/debug/send",
        {"choice": "call_events:connected", "timeout_s": "2", "caller": "79161234567"},
    )
    assert resp.status_code == 200 and 'id="send-result"' in resp.text
    path, headers, body = crm.got[0]
    assert path == "/rt/call_events"
    assert headers["x-client-id"] == row.client_id
    assert headers["x-client-sign"] == sign(row.client_id, body, sign_key(row, core.box))
    assert headers["content-type"] == "application/json; charset=utf-8"
    event = json.loads(body)
    assert event["state"] == "connected" and event["session_id"].startswith("test-")
    assert event["request_number"] == "admin@acme.vpbx.test" and event["request_pin"] == "100"
    assert event["from_number"] == "sip:79161234567@acme.vpbx.test"
    assert re.search(r'id="result-status">200<', resp.text)
    assert headers["x-client-sign"] in resp.text

    crm.answer = b'{"result":"0","displayName ":"OOO Romashka","PIN ":"600"}'
    info = await on1.post(
        "/integration-api/debug/send",
        {"choice": "get_number_info", "timeout_s": "2", "caller": "7 916 000-00-01"},
    )
    assert json.loads(crm.got[1][2]) == {
        "domain": "acme.vpbx.test",
        "from_number": "79160000001",
        "request_number": "74951234567",
    }
    assert "OOO Romashka" in info.text and 'id="result-interpretation"' in info.text
    async with core.sessions() as s:
        logged = list(await s.scalars(select(ApiLog).where(ApiLog.domain_id == t1.id).order_by(ApiLog.at)))
    assert [(r.direction, r.method, r.status, r.test) for r in logged] == [
        ("out", "call_events", 200, True),
        ("out", "get_number_info", 200, True),
    ]
    assert sign_key(row, core.box) not in json.dumps([r.request_headers for r in logged])
    page = await on1.get("/integration-api/debug")
    assert page.text.count('class="log-row"') == 2


async def test_test_sends_are_limited_to_ten_a_minute(on1: Cabinet, core: Core, t1: Tenant, crm: Crm) -> None:
    await on1.post("/integration-api", form(crm_url=f"http://127.0.0.1:{crm.port}", tls_required=None))
    for _ in range(10):
        sent = await on1.post(
            "/integration-api/debug/send", {"choice": "history_file_completed", "timeout_s": "2"}
        )
        assert sent.status_code == 200
    refused = await on1.post(
        "/integration-api/debug/send", {"choice": "history_file_completed", "timeout_s": "2"}
    )
    assert refused.status_code == 429 and len(crm.got) == 10
    assert (
        await on1.post("/integration-api/debug/send", {"choice": "nope", "timeout_s": "2"})
    ).status_code == 422


async def test_an_unreachable_crm_shows_the_error(on1: Cabinet, core: Core, t1: Tenant) -> None:
    await on1.post("/integration-api", form(crm_url="http://127.0.0.1:9", tls_required=None))
    resp = await on1.post("/integration-api/debug/send", {"choice": "call_events:new", "timeout_s": "1"})
    assert resp.status_code == 200 and 'id="result-error"' in resp.text
    async with core.sessions() as s:
        row = await s.scalar(select(ApiLog).where(ApiLog.domain_id == t1.id))
    assert row is not None and row.status is None and row.verdict


async def test_curl_examples_sign_the_exact_bytes_they_send(on1: Cabinet, core: Core, t1: Tenant) -> None:
    row = await settings_of(core, t1)
    key = sign_key(row, core.box)
    page = await on1.get("/integration-api/debug")
    assert "http://testserver/api-test" in page.text
    for method in ("call_back", "get_record", "users_info", "call_info"):
        m = re.search(rf'<pre id="example-{method}" class="curl">([^<]*)</pre>', page.text)
        assert m, method
        argv = shlex.split(m.group(1).replace("&#39;", "'").replace("&#34;", '"').replace("&quot;", '"'))
        body = argv[argv.index("--data-binary") + 1].encode()
        sent_sign = next(a for a in argv if a.startswith("X-Client-Sign: ")).split(": ")[1]
        assert sent_sign == sign(row.client_id, body, key)
        assert argv[4] == f"http://testserver/api-test/{method}"
        if method == "call_back":
            assert json.loads(body) == {"request_number": "79161234567", "from_pin": "100"}


async def test_calculator_and_workbench(on1: Cabinet, core: Core, t1: Tenant) -> None:
    row = await settings_of(core, t1)
    key = sign_key(row, core.box)
    spaced = '{"request_number": "+74951234567","from_sipuri": "test_user@cloudpbx.rt.ru"}'
    calc = await on1.post("/integration-api/debug/sign", {"body": spaced, "method": "call_back"})
    assert sign(row.client_id, spaced.encode(), key) in calc.text
    compact = json.dumps(json.loads(spaced), separators=(",", ":")).encode()
    wrong = sign(row.client_id, compact, key)  # the sender hashed a re-serialised copy
    bench = await on1.post("/integration-api/debug/check", {"body": spaced, "received": wrong})
    assert 'id="bench-bad"' in bench.text and "без пробелов" in bench.text
    assert sign(row.client_id, spaced.encode(), key) in bench.text
    good = await on1.post(
        "/integration-api/debug/check",
        {"body": spaced, "received": sign(row.client_id, spaced.encode(), key)},
    )
    assert 'id="bench-ok"' in good.text


async def _log(core: Core, t: Tenant, method: str, direction: str, at: dt.datetime) -> ApiLog:
    async with core.sessions() as s:
        row = ApiLog(domain_id=t.id, at=at, direction=direction, method=method, url=f"http://x/{method}")
        s.add(row)
        await s.commit()
        return row


async def test_log_filters_pages_and_two_tenants(
    on1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    now = dt.datetime.now(dt.UTC)
    own = [
        await _log(core, t1, "call_events", "out", now - dt.timedelta(seconds=3)),
        await _log(core, t1, "call_back", "in", now - dt.timedelta(seconds=2)),
        await _log(core, t1, "users_info", "in", now - dt.timedelta(seconds=1)),
    ]
    theirs = await _log(core, t2, "call_info", "in", now)
    page = await on1.get("/integration-api/debug")
    methods = re.findall(r'class="log-row" data-method="(\w+)"', page.text)
    assert methods == ["users_info", "call_back", "call_events"]  # newest first, own rows only
    assert "уведомление о вызовах" in page.text and "запросы от CRM" in page.text
    by_method = await on1.get("/integration-api/debug?method=call_back")
    assert re.findall(r'data-method="(\w+)"', by_method.text) == ["call_back"]
    by_dir = await on1.get("/integration-api/debug?direction=in")
    assert re.findall(r'data-method="(\w+)"', by_dir.text) == ["users_info", "call_back"]
    detail = await on1.get(f"/integration-api/log/{own[0].id}")
    assert detail.status_code == 200 and "http://x/call_events" in detail.text
    # tenant B: the service on, sees none of A's rows, and A's ids are 404
    await enable_api(admin2)
    page2 = await admin2.get("/integration-api/debug")
    assert re.findall(r'data-method="(\w+)"', page2.text) == ["call_info"]
    assert (await admin2.get(f"/integration-api/log/{own[0].id}")).status_code == 404
    assert (await on1.get(f"/integration-api/log/{theirs.id}")).status_code == 404
    assert (await admin2.post("/integration-api/log/clear")).status_code == 303
    async with core.sessions() as s:
        left = await s.scalar(select(func.count()).select_from(ApiLog).where(ApiLog.domain_id == t1.id))
        assert left == 3
    confirm = await on1.get("/integration-api/log/clear")
    assert 'id="confirm-clear"' in confirm.text
    assert (await on1.post("/integration-api/log/clear")).status_code == 303
    assert 'id="log-empty"' in (await on1.get("/integration-api/debug")).text


async def test_other_tenant_cannot_see_or_change_settings(
    on1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    await on1.post("/integration-api/certs", {"pem_text": make_pem("a-only")})
    await on1.post("/integration-api", form(crm_url="https://a-only.example/rt"))
    row1 = await settings_of(core, t1)
    await enable_api(admin2)
    page = await admin2.get("/integration-api")
    assert "a-only" not in page.text and row1.client_id not in page.text
    async with core.sessions() as s:
        cert = await s.scalar(select(ApiTrustedCert).where(ApiTrustedCert.domain_id == t1.id))
    assert cert is not None
    assert (await admin2.post(f"/integration-api/certs/{cert.id}/delete")).status_code == 404
    await admin2.post("/integration-api/regenerate-key")
    assert sign_key(await settings_of(core, t1), core.box) == sign_key(row1, core.box)
    assert await _cert_count(core, t1) == 1
    assert (await on1.post(f"/integration-api/certs/{cert.id}/delete")).status_code == 303
    assert await _cert_count(core, t1) == 0


async def test_log_retention_keeps_seven_days_and_at_most_ten_thousand_rows(core: Core, t1: Tenant) -> None:
    now = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC)
    async with core.sessions() as s:
        await billing.ensure_prices(s, now)
        s.add(ApiLog(domain_id=t1.id, at=now - dt.timedelta(days=8), direction="in", method="old"))
        s.add_all(
            ApiLog(domain_id=t1.id, at=now - dt.timedelta(seconds=i), direction="in", method="m")
            for i in range(10_005)
        )
        await s.commit()
        gone = await sweep_log(s, t1.id, now)
        await s.commit()
        assert gone == 6
        left = await s.scalar(select(func.count()).select_from(ApiLog).where(ApiLog.domain_id == t1.id))
        oldest = await s.scalar(select(func.min(ApiLog.at)).where(ApiLog.domain_id == t1.id))
    assert left == 10_000
    assert oldest is not None and oldest.replace(tzinfo=dt.UTC) == now - dt.timedelta(seconds=9_999)


async def test_replay_sends_a_logged_request_again(
    on1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, crm: Crm
) -> None:
    await on1.post("/integration-api", form(crm_url=f"http://127.0.0.1:{crm.port}", tls_required=None))
    await on1.post("/integration-api/debug/send", {"choice": "call_events:end", "timeout_s": "2"})
    async with core.sessions() as s:
        first = await s.scalar(select(ApiLog).where(ApiLog.domain_id == t1.id))
    assert first is not None
    detail = await on1.get(f"/integration-api/log/{first.id}")
    assert 'id="replay"' in detail.text and "Повторить" in detail.text
    await on1.post("/integration-api/regenerate-key")
    same = await on1.post(f"/integration-api/log/{first.id}/replay", {"mode": "original"})
    assert same.status_code == 200 and 'id="send-result"' in same.text
    assert crm.got[1][2] == crm.got[0][2]  # the same bytes
    assert crm.got[1][1]["x-client-sign"] == crm.got[0][1]["x-client-sign"]  # the original signature
    row = await settings_of(core, t1)
    await on1.post(
        f"/integration-api/log/{first.id}/replay",
        {"mode": "resign", "url": f"http://127.0.0.1:{crm.port}/other"},
    )
    assert crm.got[2][0] == "/other"
    assert crm.got[2][1]["x-client-sign"] == sign(row.client_id, crm.got[0][2], sign_key(row, core.box))
    await enable_api(admin2)
    assert (
        await admin2.post(f"/integration-api/log/{first.id}/replay", {"mode": "original"})
    ).status_code == 404
    assert len(crm.got) == 3


async def test_simulate_call_queues_the_signed_events_of_a_test_call(
    on1: Cabinet, core: Core, t1: Tenant
) -> None:
    resp = await on1.post("/integration-api/debug/simulate", {"scenario": "missed"})
    assert resp.status_code == 303
    session_id = resp.headers["location"].split("simulated=")[1]
    assert session_id.startswith("test-")
    async with core.sessions() as s:
        rows = list(
            await s.scalars(
                select(ApiDelivery).where(ApiDelivery.domain_id == t1.id).order_by(ApiDelivery.seq)
            )
        )
    assert rows and all(r.test and r.session_id == session_id for r in rows)
    states = [json.loads(r.body)["state"] for r in rows]
    assert states[0] == "new" and states[-1] == "end" and "connected" not in states
    assert (await on1.post("/integration-api/debug/simulate", {"scenario": "bogus"})).status_code == 404


async def _suspend(core: Core, t: Tenant, *, old_at: dt.datetime, new_at: dt.datetime) -> None:
    """What the dispatcher leaves after 30 minutes of failures: the flag and pending notifications."""
    async with core.sessions() as s:
        row = await s.get(ApiSettings, t.id)
        assert row is not None
        row.suspended_at = core.clock.now()
        for at in (old_at, new_at):
            s.add(
                ApiDelivery(
                    domain_id=t.id,
                    session_id=f"s-{at:%H%M}",
                    method="call_events",
                    body="{}",
                    status="pending",
                    created_at=at,
                    next_at=at,
                )
            )
        await s.commit()


async def test_suspension_alert_on_both_tabs_and_resume_only_newer(
    on1: Cabinet, admin2: Cabinet, core: Core, t1: Tenant, t2: Tenant
) -> None:
    for path in ("/integration-api", "/integration-api/debug"):
        assert 'id="api-suspended"' not in (await on1.get(path)).text
    now = core.clock.now()
    await _suspend(core, t1, old_at=now - dt.timedelta(hours=2), new_at=now - dt.timedelta(minutes=5))
    for path in ("/integration-api", "/integration-api/debug"):
        page = await on1.get(path)
        assert 'id="api-suspended"' in page.text and "Отправка уведомлений приостановлена" in page.text
        assert "Возобновить отправку" in page.text
    # another tenant sees no alert and its resume does not touch this one
    await enable_api(admin2)
    assert 'id="api-suspended"' not in (await admin2.get("/integration-api")).text
    assert (await admin2.post("/integration-api/resume", {})).status_code == 303
    assert (await settings_of(core, t1)).suspended_at is not None
    # without the CSRF token: refused
    assert (await on1.post("/integration-api/resume", {}, csrf=False)).status_code == 403
    assert (await settings_of(core, t1)).suspended_at is not None
    cut = (now - dt.timedelta(hours=1)).astimezone(MOSCOW).strftime("%Y-%m-%dT%H:%M")
    resp = await on1.post("/integration-api/resume", {"newer_than": cut, "back": "debug"})
    assert resp.status_code == 303 and resp.headers["location"] == "/integration-api/debug?notice=resumed"
    assert (await settings_of(core, t1)).suspended_at is None
    async with core.sessions() as s:
        rows = list(await s.scalars(select(ApiDelivery).where(ApiDelivery.domain_id == t1.id)))
    assert [r.status for r in sorted(rows, key=lambda r: r.created_at)] == ["failed", "pending"]
    page = await on1.get("/integration-api/debug?notice=resumed")
    assert 'id="api-suspended"' not in page.text and "Отправка уведомлений возобновлена." in page.text


async def test_log_sweep_task_keeps_seven_days_for_every_domain(core: Core, t1: Tenant, t2: Tenant) -> None:
    """What ``vpbx serve`` runs hourly: a first round at start, each domain swept by the fake clock's time."""
    clock = FakeClock(dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC))
    now = clock.now()
    async with core.sessions() as s:
        for t in (t1, t2):
            s.add(ApiLog(domain_id=t.id, at=now - dt.timedelta(days=8), direction="in", method="old"))
            s.add(ApiLog(domain_id=t.id, at=now - dt.timedelta(days=6), direction="in", method="kept"))
        await s.commit()
    sweep = LogSweep(sessions=core.sessions, clock=clock, interval_s=3600)
    await sweep.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                async with core.sessions() as s:
                    methods = sorted(await s.scalars(select(ApiLog.method)))
                if methods == ["kept", "kept"]:
                    break
                await asyncio.sleep(0.02)
    finally:
        await sweep.stop()
    clock.advance(2 * 86400)  # the rows kept are now older than 7 days
    assert await sweep.sweep() == 2


async def test_desktop_tile_appears_once_the_service_is_on(admin1: Cabinet, admin2: Cabinet) -> None:
    assert 'id="tile-api"' not in (await admin1.get("/")).text
    await enable_api(admin1)
    page = await admin1.get("/")
    assert 'id="tile-api"' in page.text and 'href="/integration-api"' in page.text
    assert "Интеграционный API" in page.text and "Связь с CRM-системой" in page.text
    assert 'id="tile-api"' not in (await admin2.get("/")).text
