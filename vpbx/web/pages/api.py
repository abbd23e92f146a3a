"""The Integration API section of the cabinet (integration-api.md §6): «Настройка параметров» and
«Отладка взаимодействия» with the «Лог запросов/ответов».

The section exists once «Интеграционный API» is on in «Управление услугами» (switching it on creates the
settings with fresh credentials). The signing key is never in a page unless the admin asks to see it (a POST),
and never in a log. Every lookup filters by the session's domain: another domain's log row or certificate
is 404.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile

from vpbx import billing
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.integration_api import notify, testsend
from vpbx.integration_api.callback import Scenario, simulate_call
from vpbx.integration_api.core import MOSCOW, dumps, moscow, sign, sign_key, sweep_log
from vpbx.integration_api.dispatcher import resume
from vpbx.integration_api.logwriter import flush_of
from vpbx.integration_api.settings import (
    EVENT_STATES,
    EVENT_TYPES,
    SettingsInput,
    ensure_settings,
    regenerate,
    update_settings,
)
from vpbx.pbx.validation import N_
from vpbx.store.models import ApiLog, ApiSettings, ApiTrustedCert, CallRecord, Domain, User
from vpbx.web import forms
from vpbx.web.auth import AdminDep, CoreDep, DbDep, Principal, RendererDep
from vpbx.web.render import Renderer
from vpbx.web.sections import SectionRoute, ServiceOff

router = APIRouter(prefix="/integration-api", route_class=SectionRoute)

MAX_CERTS = 10
MAX_PEM = 64 * 1024
LOG_PAGE = 50
# the log's «по методу» filter: the wire labels (§6.4), as English msgids translated to them
METHOD_FILTERS: tuple[tuple[str, str], ...] = (
    ("", N_("all")),
    ("call_events", N_("call notification")),
    ("call_back", N_("outgoing call request")),
    ("get_record", N_("call recording request")),
    ("users_info", N_("domain users address book request")),
    ("call_info", N_("call information request")),
    ("get_number_info", N_("caller number information request")),
)
SCENARIOS: dict[str, str] = {
    "answered": N_("answered"),
    "transferred": N_("answered and transferred"),
    "missed": N_("missed"),
}
DIRECTION_FILTERS: tuple[tuple[str, str], ...] = (
    ("", N_("all requests")),
    ("out", N_("requests to the CRM")),
    ("in", N_("requests from the CRM")),
)
TEST_LABELS: dict[str, str] = {
    "call_events:new": N_("call_events: new call (new)"),
    "call_events:calling": N_("call_events: ringing an employee (calling)"),
    "call_events:connected": N_("call_events: conversation started (connected)"),
    "call_events:disconnected": N_("call_events: conversation ended (disconnected)"),
    "call_events:end": N_("call_events: call finished (end)"),
    "get_number_info": N_("get_number_info: caller number information"),
    "history_file_completed": N_("history_file_completed: call history export ready"),
}


async def _domain(s: AsyncSession, tenant: uuid.UUID) -> Domain:
    domain = await s.get(Domain, tenant)
    if domain is None:
        raise NotFound("domain", tenant)
    return domain


async def _settings(s: AsyncSession, tenant: uuid.UUID) -> ApiSettings | None:
    """The settings while the service is on; None while it is off (the page says where to switch it on)."""
    if not await billing.is_enabled(s, tenant, billing.INTEGRATION_API):
        return None
    return await s.get(ApiSettings, tenant)


async def _settings_on(p: AdminDep, s: DbDep) -> ApiSettings:
    """The domain's settings, in the route's own session; ``ServiceOff`` while the service is off."""
    row = await _settings(s, p.tenant)
    if row is None:
        raise ServiceOff(_off)
    return row


SettingsDep = Annotated[ApiSettings, Depends(_settings_on)]


def api_urls(core: Core, request: Request) -> tuple[str, str]:
    """{API} and {API_TEST}: from the settings, else this server's /api and /api-test (§1)."""
    base = (core.settings.public_url or str(request.base_url)).rstrip("/")
    return (
        core.settings.api_url.rstrip("/") or f"{base}/api",
        core.settings.api_test_url.rstrip("/") or f"{base}/api-test",
    )


def _off(request: Request, r: Renderer) -> Response:
    return r.page(request, "api/off.html", {"tab": ""})


async def _certs(s: AsyncSession, tenant: uuid.UUID) -> list[ApiTrustedCert]:
    return list(
        await s.scalars(
            select(ApiTrustedCert)
            .where(ApiTrustedCert.domain_id == tenant)
            .order_by(ApiTrustedCert.created_at)
        )
    )


def _values(row: ApiSettings) -> dict[str, Any]:
    return {
        "crm_url": row.crm_url,
        "allowlist": row.allowlist,
        "timeout_s": row.timeout_s,
        "tls_required": row.tls_required,
        "send_events": row.send_events,
        "event_types": list(row.event_types),
        "event_states": list(row.event_states),
        "send_autoinformer_events": row.send_autoinformer_events,
        "send_ai_notifications": row.send_ai_notifications,
        "number_info": row.number_info,
        "verify_crm_sign": row.verify_crm_sign,
    }


async def _settings_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    core: Core,
    p: Principal,
    row: ApiSettings,
    *,
    values: dict[str, Any] | None = None,
    errors: ValidationFailed | None = None,
    key: str | None = None,
    notice: str = "",
    cert_error: str = "",
) -> Response:
    domain = await _domain(s, p.tenant)
    v = values or _values(row)
    api, api_test = api_urls(core, request)
    return r.page(
        request,
        "api/settings.html",
        {
            "tab": "settings",
            "domain": domain,
            "row": row,
            "v": v,
            "key": key,
            "notice": notice or request.query_params.get("notice", ""),
            "certs": await _certs(s, p.tenant),
            "max_certs": MAX_CERTS,
            "cert_error": cert_error,
            "egress": core.settings.api_egress_ips,
            "api_url": api,
            "api_test_url": api_test,
            "event_types": EVENT_TYPES,
            "event_states": EVENT_STATES,
            "docs_url": "/integration-api/contract",
            "allowlist_empty": not row.allowlist.strip(),
            "when": _when,
        },
        errors=errors,
        status_code=422 if errors or cert_error else 200,
    )


def _when(at: dt.datetime) -> str:
    return moscow(at if at.tzinfo else at.replace(tzinfo=dt.UTC), millis=False)


@router.get("")
async def settings_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    return await _settings_page(request, r, s, core, p, row)


def form_input(form: forms.FormData) -> SettingsInput:
    """«Настройка параметров» as submitted; the settings service validates it."""
    return SettingsInput(
        crm_url=forms.text(form, "crm_url").strip(),
        allowlist=forms.text(form, "allowlist"),
        timeout_s=forms.text(form, "timeout_s").strip(),
        tls_required=forms.checked(form, "tls_required"),
        send_events=forms.checked(form, "send_events"),
        event_types=[t for t in EVENT_TYPES if forms.checked(form, f"type_{t}")],
        event_states=[st for st in EVENT_STATES if forms.checked(form, f"state_{st}")],
        send_autoinformer_events=forms.checked(form, "send_autoinformer_events"),
        send_ai_notifications=forms.checked(form, "send_ai_notifications"),
        number_info=forms.checked(form, "number_info"),
        verify_crm_sign=forms.checked(form, "verify_crm_sign"),
    )


@router.post("")
async def save_settings(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    data = form_input(await request.form())
    try:
        await update_settings(s, p.tenant, data)
    except ValidationFailed as e:
        await s.rollback()
        await s.refresh(row)  # the rollback expired it
        return await _settings_page(request, r, s, core, p, row, values=vars(data), errors=e)
    row.updated_at = core.clock.now()
    await s.commit()
    return RedirectResponse("/integration-api?notice=saved", status_code=303)


async def _regenerate(s: AsyncSession, core: Core, p: Principal, row: ApiSettings, what: str) -> Response:
    await regenerate(s, p.tenant, core.box, "client_id" if what == "client-id" else "key")
    row.updated_at = core.clock.now()
    await s.commit()
    return RedirectResponse(f"/integration-api?notice={what}", status_code=303)


@router.post("/regenerate-client-id")
async def regenerate_client(p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep) -> Response:
    """«Сгенерировать заново» for X-Client-ID: the old one is refused from now on (§2.1)."""
    return await _regenerate(s, core, p, row, "client-id")


@router.post("/regenerate-key")
async def regenerate_sign_key(p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep) -> Response:
    """«Сгенерировать заново» for the signing key: the old one is refused from now on (§2.1)."""
    return await _regenerate(s, core, p, row, "key")


@router.post("/key")
async def reveal_key(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    """The key in clear, to the admin who asked: a fragment for htmx, else the page with it shown."""
    key = sign_key(row, core.box)
    resp: Response
    if request.headers.get("hx-request"):
        resp = HTMLResponse(f'<code id="sign-key" class="revealed">{key}</code>')
    else:
        resp = await _settings_page(request, r, s, core, p, row, key=key)
    resp.headers["Cache-Control"] = "no-store"
    return resp


def parse_pem(text: str) -> list[x509.Certificate]:
    """The certificates of a PEM upload; a ValueError with a reason when it holds none or garbage."""
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError("no certificate")
    return x509.load_pem_x509_certificates(text.encode())


@router.post("/certs")
async def add_cert(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    t = r.translator(request)
    form = await request.form()
    upload = form.get("pem_file")
    text = forms.text(form, "pem_text") if "pem_text" in form else ""
    if isinstance(upload, UploadFile):
        data = await upload.read(MAX_PEM + 1)
        await upload.close()
        if upload.filename:
            text = data.decode("ascii", errors="replace") if len(data) <= MAX_PEM else ""
    try:
        certs = parse_pem(text)
    except ValueError:
        return await _settings_page(
            request,
            r,
            s,
            core,
            p,
            row,
            cert_error=t.gettext(N_("This is not a PEM certificate; nothing was added.")),
        )
    existing = await _certs(s, p.tenant)
    if len(existing) + len(certs) > MAX_CERTS:
        return await _settings_page(
            request, r, s, core, p, row, cert_error=t.gettext(N_("At most {n} certificates"), n=MAX_CERTS)
        )
    for cert in certs:
        s.add(
            ApiTrustedCert(
                domain_id=p.tenant,
                pem=cert.public_bytes(Encoding.PEM).decode(),
                subject=cert.subject.rfc4514_string()[:500],
                not_after=cert.not_valid_after_utc,
                created_at=core.clock.now(),
            )
        )
    await s.commit()
    return RedirectResponse("/integration-api?notice=cert", status_code=303)


@router.post("/certs/{cert_id}/delete")
async def delete_cert(cert_id: str, p: AdminDep, s: DbDep) -> Response:
    cid = forms.parse_id(cert_id, "cert")
    cert = await s.scalar(
        select(ApiTrustedCert).where(ApiTrustedCert.domain_id == p.tenant, ApiTrustedCert.id == cid)
    )
    if cert is None:
        raise NotFound("cert", cid)
    await s.delete(cert)
    await s.commit()
    return RedirectResponse("/integration-api", status_code=303)


@router.get("/api-cert")
async def api_cert(request: Request, r: RendererDep, _p: AdminDep, core: CoreDep) -> Response:
    """«Скачать сертификат API»: the PEM chain {API} serves, or a note when it runs without TLS (§2.5)."""
    path = Path(core.settings.api_tls_cert) if core.settings.api_tls_cert else None
    if path is None or not path.is_file():
        return r.page(request, "api/no_cert.html", {"tab": "settings"})
    return FileResponse(path, media_type="application/x-pem-file", filename="vpbx-api.pem")


CONTRACT = Path(__file__).resolve().parents[3] / "docs" / "integration-api.md"


@router.get("/contract")
async def contract(request: Request, r: RendererDep, _p: AdminDep, core: CoreDep) -> Response:
    """«Документация»: the published PBX → CRM delivery contract (docs/integration-api.md) and the methods'
    OpenAPI description."""
    if not CONTRACT.is_file():
        raise NotFound("document", "integration-api.md")
    api, _api_test = api_urls(core, request)
    text = CONTRACT.read_text(encoding="utf-8")
    return r.page(request, "api/contract.html", {"text": text, "openapi_url": f"{api}/openapi.json"})


# --- «Отладка взаимодействия» --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Example:
    method: str
    body: str
    sign: str
    curl: str


def curl(url: str, client_id: str, body: bytes, signature: str) -> str:
    """A curl command that sends exactly these bytes (``--data-binary``) with the two headers."""
    return " ".join(
        [
            "curl -sS -X POST",
            shlex.quote(url),
            "-H",
            shlex.quote("Content-Type: application/json; charset=utf-8"),
            "-H",
            shlex.quote(f"X-Client-ID: {client_id}"),
            "-H",
            shlex.quote(f"X-Client-Sign: {signature}"),
            "--data-binary",
            shlex.quote(body.decode()),
        ]
    )


async def examples(
    s: AsyncSession, domain: Domain, row: ApiSettings, key: str, api_test: str
) -> list[Example]:
    """/call_back, /get_record, /users_info and /call_info prefilled with the first user's PIN and the latest
    call's session_id, signed for this domain (§6.3 B)."""
    pin = await s.scalar(select(User.pin).where(User.domain_id == domain.id).order_by(User.pin).limit(1))
    session_id = await s.scalar(
        select(CallRecord.session_id)
        .where(CallRecord.domain_id == domain.id)
        .order_by(CallRecord.started_at.desc())
        .limit(1)
    )
    sid = session_id or "00000000-0000-0000-0000-000000000000"
    bodies: list[tuple[str, dict[str, object]]] = [
        ("call_back", {"request_number": testsend.DEFAULT_CALLER, "from_pin": pin or "101"}),
        ("get_record", {"session_id": sid}),
        ("users_info", {}),
        ("call_info", {"session_id": sid}),
    ]
    out = []
    for method, obj in bodies:
        raw = dumps(obj)
        signature = sign(row.client_id, raw, key)
        out.append(
            Example(
                method, raw.decode(), signature, curl(f"{api_test}/{method}", row.client_id, raw, signature)
            )
        )
    return out


def hashed_bytes(body: str) -> bytes:
    """A pasted body as bytes: the browser sends a textarea's line breaks as CRLF; senders use LF."""
    return body.replace("\r\n", "\n").encode()


def likely_cause(client_id: str, raw: bytes, key: str, received: str) -> str:
    """Which common re-encoding of the body the sender probably hashed, if its sign matches one (§6.3 B)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        obj = None
    text = raw.decode(errors="replace")
    variants: list[tuple[str, bytes]] = []
    if obj is not None:
        variants += [
            (
                N_("The sender hashed a compact re-serialisation (no spaces) instead of the bytes it sent."),
                json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(),
            ),
            (
                N_("The sender hashed a copy with spaces after «:» and «,» instead of the bytes it sent."),
                json.dumps(obj, ensure_ascii=False).encode(),
            ),
            (
                N_("The sender hashed a copy with \\uXXXX escapes instead of the bytes it sent."),
                json.dumps(obj, separators=(",", ":")).encode(),
            ),
            (
                N_("The sender hashed a copy with \\uXXXX escapes and spaces instead of the bytes it sent."),
                json.dumps(obj).encode(),
            ),
        ]
    variants += [
        (N_("The sender hashed the body with \\/ escapes for slashes."), text.replace("/", "\\/").encode()),
        (N_("The sender hashed the body without its trailing line break or spaces."), text.rstrip().encode()),
        (N_("The sender hashed the body with a trailing line break."), (text + "\n").encode()),
    ]
    try:
        variants.append((N_("The sender hashed the body in cp1251 instead of UTF-8."), text.encode("cp1251")))
    except UnicodeEncodeError:
        pass
    for cause, variant in variants:
        if variant != raw and sign(client_id, variant, key) == received:
            return cause
    return N_("Check the X-Client-ID and the key, and that the sign is computed over the raw body bytes.")


async def _debug_page(
    request: Request,
    r: Renderer,
    s: AsyncSession,
    core: Core,
    p: Principal,
    row: ApiSettings,
    *,
    result: notify.Exchange | None = None,
    interpretation: str = "",
    send_error: str = "",
    calc: dict[str, Any] | None = None,
    bench: dict[str, Any] | None = None,
    form: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    domain = await _domain(s, p.tenant)
    api, api_test = api_urls(core, request)
    key = sign_key(row, core.box)
    q = request.query_params
    method = q.get("method", "") if q.get("method", "") in dict(METHOD_FILTERS) else ""
    direction = q.get("direction", "") if q.get("direction", "") in dict(DIRECTION_FILTERS) else ""
    page = forms.page_number(q.get("page"))
    await flush_of(request.app.state)  # the gateway's rows still queued (integration_api/logwriter.py)
    where = [ApiLog.domain_id == p.tenant]
    if method:
        where.append(ApiLog.method == method)
    if direction:
        where.append(ApiLog.direction == direction)
    total = await s.scalar(select(func.count()).select_from(ApiLog).where(*where)) or 0
    rows = list(
        await s.scalars(
            select(ApiLog)
            .where(*where)
            .order_by(ApiLog.at.desc())
            .offset((page - 1) * LOG_PAGE)
            .limit(LOG_PAGE)
        )
    )
    return r.page(
        request,
        "api/debug.html",
        {
            "tab": "debug",
            "domain": domain,
            "row": row,
            "api_url": api,
            "api_test_url": api_test,
            "examples": await examples(s, domain, row, key, api_test),
            "test_methods": [(m, TEST_LABELS[m]) for m in testsend.TEST_METHODS],
            "form": form
            or {"choice": "call_events:new", "timeout_s": row.timeout_s, "caller": testsend.DEFAULT_CALLER},
            "result": result,
            "interpretation": interpretation,
            "send_error": send_error,
            "calc": calc,
            "bench": bench,
            "log": rows,
            "log_total": total,
            "log_page": page,
            "log_pages": max(1, (total + LOG_PAGE - 1) // LOG_PAGE),
            "method_filters": METHOD_FILTERS,
            "direction_filters": DIRECTION_FILTERS,
            "f_method": method,
            "f_direction": direction,
            "when": _log_time,
            "docs_url": "/integration-api/contract",
            "scenarios": SCENARIOS,
        },
        status_code=status_code,
    )


def _log_time(at: dt.datetime) -> str:
    return moscow(at if at.tzinfo else at.replace(tzinfo=dt.UTC))


@router.get("/debug")
async def debug_page(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    return await _debug_page(request, r, s, core, p, row)


@router.post("/debug/send")
async def test_send(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    t = r.translator(request)
    form = await request.form()
    choice = forms.text(form, "choice")
    raw_timeout = forms.text(form, "timeout_s").strip()
    caller = testsend.digits(forms.text(form, "caller"))[:15]
    values = {"choice": choice, "timeout_s": raw_timeout, "caller": caller}
    timeout = int(raw_timeout) if raw_timeout.isdigit() and len(raw_timeout) <= 3 else 0
    error = ""
    if choice not in testsend.TEST_METHODS:
        error = t.gettext(N_("Choose a method"))
    elif not 1 <= timeout <= 10:
        error = t.gettext(N_("From {min} to {max} seconds"), min=1, max=10)
    elif not row.crm_url:
        error = t.gettext(N_("Save the CRM address on «Parameter settings» first."))
    if error:
        return await _debug_page(request, r, s, core, p, row, send_error=error, form=values, status_code=422)
    try:
        result = await testsend.send_now(
            core, p.tenant, choice, timeout_s=timeout, caller=caller or testsend.DEFAULT_CALLER
        )
    except testsend.TooManySends:
        error = t.gettext(
            N_("At most {n} test requests a minute; try again shortly."), n=testsend.SENDS_PER_MINUTE
        )
        return await _debug_page(request, r, s, core, p, row, send_error=error, form=values, status_code=429)
    interpretation = ""
    if result.method == "get_number_info" and result.status is not None:
        interpretation = testsend.interpret_number_info(result.response_raw)
    async with core.sessions() as s2:
        await sweep_log(s2, p.tenant, core.clock.now())
        await s2.commit()
    return await _debug_page(
        request, r, s, core, p, row, result=result, interpretation=interpretation, form=values
    )


@router.post("/debug/sign")
async def calculator(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    """The signature calculator: a pasted body → its X-Client-Sign and a curl that sends it byte for byte."""
    form = await request.form()
    body = forms.text(form, "body")
    raw = hashed_bytes(body)
    signature = sign(row.client_id, raw, sign_key(row, core.box))
    method = forms.text(form, "method").strip().strip("/") or "users_info"
    _api, api_test = api_urls(core, request)
    try:
        is_object = isinstance(json.loads(raw), dict)
    except ValueError:
        is_object = False
    calc = {
        "body": body,
        "method": method,
        "sign": signature,
        "curl": curl(f"{api_test}/{method}", row.client_id, raw, signature),
        "is_object": is_object,
        "length": len(raw),
    }
    return await _debug_page(request, r, s, core, p, row, calc=calc)


@router.post("/debug/check")
async def workbench(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    """The signature workbench: a body and the sign received with it → the expected sign, the likely cause."""
    form = await request.form()
    body = forms.text(form, "body")
    received = forms.text(form, "received").strip().lower()
    raw = hashed_bytes(body)
    key = sign_key(row, core.box)
    expected = sign(row.client_id, raw, key)
    ok = received == expected
    bench = {
        "body": body,
        "received": received,
        "expected": expected,
        "ok": ok,
        "bytes": repr(raw)[2:-1],
        "length": len(raw),
        "sha_input": hashlib.sha256(raw).hexdigest(),
        "cause": "" if ok else likely_cause(row.client_id, raw, key, received),
    }
    return await _debug_page(request, r, s, core, p, row, bench=bench)


@router.post("/debug/simulate")
async def simulate(request: Request, p: AdminDep, core: CoreDep, _row: SettingsDep) -> Response:
    """«Смоделировать вызов» (§6.3): the signed events of an incoming test call (answered, transferred or
    missed) go to the CRM through the outbox, without a carrier."""
    scenario = forms.text(await request.form(), "scenario")
    if scenario not in SCENARIOS:
        raise NotFound("scenario", scenario[:32])
    session_id = await simulate_call(core, p.tenant, cast(Scenario, scenario))
    return RedirectResponse(f"/integration-api/debug?simulated={session_id}", status_code=303)


@router.post("/debug/ssl")
async def ssl_switch(
    request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep, row: SettingsDep
) -> Response:
    """«режим шифрования трафика», applied with «Сохранить» (§6.3 C)."""
    on = forms.checked(await request.form(), "tls_required")
    if on and row.crm_url.startswith("http://"):
        t = r.translator(request)
        error = t.gettext(N_("With traffic encryption on, the address must start with https://"))
        return await _debug_page(request, r, s, core, p, row, send_error=error, status_code=422)
    row.tls_required = on
    row.updated_at = core.clock.now()
    await s.commit()
    return RedirectResponse("/integration-api/debug?notice=ssl", status_code=303)


@router.get("/log/clear")
async def confirm_clear(request: Request, r: RendererDep, _row: SettingsDep) -> Response:
    return r.page(request, "api/clear.html", {"tab": "debug"})


@router.post("/log/clear")
async def clear_log(request: Request, p: AdminDep, s: DbDep, _row: SettingsDep) -> Response:
    await flush_of(request.app.state)  # rows still queued go too
    await s.execute(delete(ApiLog).where(ApiLog.domain_id == p.tenant))
    await s.commit()
    return RedirectResponse("/integration-api/debug?notice=cleared#log", status_code=303)


@router.get("/log/{log_id}")
async def log_row(log_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep) -> Response:
    lid = forms.parse_id(log_id, "log")
    entry = await s.scalar(select(ApiLog).where(ApiLog.domain_id == p.tenant, ApiLog.id == lid))
    if entry is None:
        raise NotFound("log", lid)
    return r.page(
        request,
        "api/log_row.html",
        {
            "tab": "debug",
            "e": entry,
            "when": _log_time,
            "headers": json.dumps(entry.request_headers, ensure_ascii=False, indent=2),
        },
    )


@router.post("/log/{log_id}/replay")
async def replay(
    log_id: str, request: Request, r: RendererDep, p: AdminDep, s: DbDep, core: CoreDep
) -> Response:
    """«Повторить» (§6.4): a logged PBX → CRM request again, to the same or another URL, byte for byte with
    its original signature or re-signed with the current key; the replay is a new log row."""
    lid = forms.parse_id(log_id, "log")
    entry = await s.scalar(select(ApiLog).where(ApiLog.domain_id == p.tenant, ApiLog.id == lid))
    if entry is None or entry.direction != "out":
        raise NotFound("log", lid)  # before the service's state: another domain's row is not found
    row = await _settings_on(p, s)
    form = await request.form()
    url = forms.text(form, "url").strip()
    if url and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        t = r.translator(request)
        error = t.gettext(N_("Enter an address starting with http:// or https://"))
        return await _debug_page(request, r, s, core, p, row, send_error=error, status_code=422)
    result = await notify.replay(
        core, lid, url=url or None, resign=forms.text(form, "mode") != "original", domain_id=p.tenant
    )
    if result is None:
        raise NotFound("log", lid)
    return await _debug_page(request, r, s, core, p, row, result=result)


def parse_newer_than(text: str) -> dt.datetime | None:
    """«Только новее» of «Возобновить отправку»: a ``datetime-local`` value in Moscow time, empty for all."""
    text = text.strip()
    if not text:
        return None
    try:
        local = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (local if local.tzinfo else local.replace(tzinfo=MOSCOW)).astimezone(dt.UTC)


@router.post("/resume")
async def resume_sending(
    request: Request, p: AdminDep, s: DbDep, core: CoreDep, _row: SettingsDep
) -> Response:
    """«Возобновить отправку» (§5.1) after a sustained-failure suspension; with «только новее», the older
    pending notifications are given up. Back to the tab the admin was on."""
    form = await request.form()
    await s.commit()
    await resume(core, p.tenant, newer_than=parse_newer_than(forms.text(form, "newer_than")))
    back = "/integration-api/debug" if forms.text(form, "back") == "debug" else "/integration-api"
    return RedirectResponse(f"{back}?notice=resumed", status_code=303)


async def activate(s: AsyncSession, core: Core, tenant: uuid.UUID) -> None:
    """Called when «Интеграционный API» is switched on: the settings exist from then on (§6.1)."""
    await ensure_settings(s, tenant, core.box)
