"""The signed ``autoinformer_*`` methods (autoinformer.md §9, §11): an extension of the Integration API.

They ride the Integration API's gateway (R1–R11, signing, envelope, log rows), with §9's body limits (64 KiB,
``autoinformer_add_numbers`` 1 MiB, ``autoinformer_upload_audio`` 15 MiB) and 60 requests/min per method per
domain. The work is ``vpbx.autoinformer.campaigns``'; this module reads the request, maps the service's
refusals to §11's codes in one table, and shapes the answers.

Decisions (ours):

* The service switch: with «Автоинформатор» off every method answers like the gateway's R5 — ``403``, ``-6``,
  ``service-disabled`` — naming the autoinformer, once the request has passed R1–R10.
* Validation errors are ``400`` ``-1`` with ``field`` (pydantic's location joined with dots and ``[i]``, e.g.
  ``message.segments[1].text``); business refusals are ``200`` with ``field`` where one field is to blame.
* A ``campaign_id`` that is not 32 hex digits is R11 (``-1``, ``field`` ``campaign_id``); a well-formed
  unknown one, or another domain's, is ``-40``.
* In the sandbox (``{API_TEST}``) every method checks and answers as the real one, but a method that would
  change something rolls its transaction back: nothing is created, started or stored, so nothing is dialled.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer import audio, campaigns, contacts
from vpbx.autoinformer.errors import (
    N_,
    AudioInvalid,
    AutoinformerError,
    CallerIdNotAllowed,
    CampaignInvalid,
    CampaignNotFound,
    LimitExceeded,
    NotEditable,
    TargetNotFound,
)
from vpbx.autoinformer.schemas import MAX_CONTACTS, CampaignSpec
from vpbx.autoinformer.status import InvalidTransition
from vpbx.billing import AUTOINFORMER, is_enabled
from vpbx.integration_api.core import (
    ApiContext,
    ApiError,
    ApiMethod,
    ApiReply,
    bad_field,
    envelope,
    moscow,
)
from vpbx.logs import get_logger
from vpbx.store.models import (
    AI_CONTACT_STATUSES,
    AiAttempt,
    AiCampaign,
    AuditEntry,
)

log = get_logger("vpbx.autoinformer")

ACTOR = "api"
KIB = 1024
MIB = 1024 * KIB
BODY_LIMIT = 64 * KIB
ADD_NUMBERS_LIMIT = 1 * MIB
UPLOAD_LIMIT = 15 * MIB
MAX_UPLOAD_DECODED = 10 * MIB  # §3.1: 10 MiB through the API
MAX_CONTACTS_PER_CALL = 1000
MAX_PHONES = 5
MAX_NAME = 255

# §11, in addition to integration-api.md §3 (all HTTP 200); always raise a fresh copy
SERVICE_OFF = ApiError(403, "-6", "Услуга «Автоинформатор» не подключена", "service-disabled")
CAMPAIGN_NOT_FOUND = ApiError(200, "-40", "Рассылка не найдена", "campaign-not-found")
INVALID_TRANSITION = ApiError(
    200, "-41", "Действие недопустимо в текущем статусе рассылки", "invalid-transition"
)
CALLER_ID_NOT_ALLOWED = ApiError(
    200, "-42", "Номер не является активной линией домена для исходящих вызовов", "caller-id-not-allowed"
)
AUDIO_INVALID = ApiError(200, "-43", "Аудиофайл не найден или не может быть использован", "audio-invalid")
LIMIT_EXCEEDED = ApiError(200, "-44", "Превышен лимит", "limit-exceeded")
NOT_EDITABLE = ApiError(200, "-45", "Изменение недопустимо в текущем статусе рассылки", "not-editable")
TARGET_NOT_FOUND = ApiError(200, "-46", "Цель переключения не найдена в домене", "target-not-found")

_CODES: tuple[tuple[type[Exception], ApiError], ...] = (
    (CampaignNotFound, CAMPAIGN_NOT_FOUND),
    (InvalidTransition, INVALID_TRANSITION),
    (CallerIdNotAllowed, CALLER_ID_NOT_ALLOWED),
    (AudioInvalid, AUDIO_INVALID),
    (LimitExceeded, LIMIT_EXCEEDED),
    (NotEditable, NOT_EDITABLE),
    (TargetNotFound, TARGET_NOT_FOUND),
)


def api_error(e: AutoinformerError | InvalidTransition) -> ApiError:
    """The §11 answer of a service refusal (a fresh ``ApiError``)."""
    if isinstance(e, CampaignInvalid):
        return bad_field(e.field or "campaign")
    for kind, error in _CODES:
        if isinstance(e, kind):
            field = e.field if isinstance(e, AutoinformerError) and kind is not CampaignNotFound else None
            payload = {"reason": e.reason} if isinstance(e, AudioInvalid) else {}
            return dataclasses.replace(error.with_payload(**payload), field=field)
    raise TypeError(f"unmapped autoinformer error {e!r}")  # pragma: no cover


def field_of(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as the API names a field: ``("message", "segments", 1, "text")`` →
    ``message.segments[1].text``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "campaign"


def _now(ctx: ApiContext) -> dt.datetime:
    core = getattr(ctx.services, "core", None)
    return core.clock.now() if core is not None else dt.datetime.now(dt.UTC)


def _campaign_id(data: Mapping[str, Any]) -> uuid.UUID:
    value = data.get("campaign_id")
    cid = campaigns.parse_campaign_id(value) if isinstance(value, str) and len(value) == 32 else None
    if cid is None:
        raise bad_field("campaign_id")
    return cid


Work = Callable[[ApiContext, AsyncSession, dict[str, Any], dt.datetime], Awaitable[Mapping[str, object]]]


async def _service_on(ctx: ApiContext) -> None:
    async with ctx.sessions() as s:
        if not await is_enabled(s, ctx.domain_id, AUTOINFORMER):
            raise SERVICE_OFF.with_payload()


def _method(work: Work, *, changes: bool) -> Callable[[ApiContext, dict[str, Any]], Awaitable[ApiReply]]:
    """A handler: the service switch, one transaction (rolled back in the sandbox when ``changes``), the
    service's refusals as §11's codes. A unique-key race (two creates with one ``external_id``) runs again."""

    async def handler(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
        await _service_on(ctx)
        data = {k: v for k, v in body.items() if k != "domain"}  # the gateway checked it (§1)
        now = _now(ctx)
        for attempt in range(2):
            try:
                async with ctx.sessions() as s:
                    payload = await work(ctx, s, data, now)
                    if changes and ctx.sandbox:
                        await s.rollback()
                    else:
                        await s.commit()
                return ApiReply({**envelope(), **payload})
            except (AutoinformerError, InvalidTransition) as e:
                raise api_error(e) from None
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    return handler


# --- autoinformer_create ------------------------------------------------------------------------------------


def parse_spec(data: Mapping[str, Any]) -> CampaignSpec:
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        raise bad_field(field_of(tuple(first["loc"]))) from None


async def _create(
    ctx: ApiContext, s: AsyncSession, data: dict[str, Any], now: dt.datetime
) -> dict[str, object]:
    spec = parse_spec(data)
    row, _ = await campaigns.create_campaign(s, ctx.domain_id, spec, actor=ACTOR, now=now)
    return {"campaign_id": row.id.hex, "status": row.status}


# --- start, pause, stop, status, report ---------------------------------------------------------------------


class Transition(Protocol):
    def __call__(
        self,
        s: AsyncSession,
        domain_id: uuid.UUID,
        campaign_id: uuid.UUID | str,
        *,
        actor: str,
        now: dt.datetime,
    ) -> Awaitable[AiCampaign]: ...


def _transition(step: Transition) -> Work:
    """``autoinformer_start``/``_pause``/``_stop``: the campaign service's step; replies the new status."""

    async def work(
        ctx: ApiContext, s: AsyncSession, data: dict[str, Any], now: dt.datetime
    ) -> dict[str, object]:
        row = await step(s, ctx.domain_id, _campaign_id(data), actor=ACTOR, now=now)
        return {"status": row.status}

    return work


_start = _transition(campaigns.start_campaign)
_pause = _transition(campaigns.pause_campaign)
_stop = _transition(campaigns.stop_campaign)


async def _status(
    ctx: ApiContext, s: AsyncSession, data: dict[str, Any], now: dt.datetime
) -> dict[str, object]:
    return {"campaign": await campaigns.status_object(s, ctx.domain_id, _campaign_id(data), now=now)}


def _time(at: dt.datetime | None) -> str | None:
    return moscow(at, millis=False) if at is not None else None


def attempt_json(a: AiAttempt) -> dict[str, object]:
    return {
        "attempt": a.attempt_no,
        "number_index": a.number_index,
        "phone": a.phone,
        "session_id": a.session_id,
        "started_at": _time(a.started_at),
        "answered_at": _time(a.answered_at),
        "ended_at": _time(a.ended_at),
        "sip_code": a.sip_code,
        "outcome": a.outcome,
        "criterion_met": a.criterion_met,
        "listen_s": round(a.listen_s, 1),
        "played_full": a.played_full,
        "digits": a.digits,
        "action": a.action,
        "operator_target": a.operator_target,
        "operator_answered": a.operator_answered,
        "amd_result": a.amd_result,
        "detail": a.detail,
    }


def number_json(row: campaigns.ReportRow) -> dict[str, object]:
    c = row.contact
    return {
        "contact_id": c.id.hex,
        "phone": c.phones[0] if c.phones else "",
        "phones": list(c.phones),
        "external_id": c.external_id,
        "vars": dict(c.variables or {}),
        "status": c.status,
        "detail": c.detail,
        "attempts_made": c.attempts_made,
        "last_outcome": c.last_outcome,
        "last_attempt_at": _time(c.last_attempt_at),
        "next_attempt_at": _time(c.next_attempt_at),
        "best_listen_s": c.best_listen_s,
        "digits": c.digits,
        "succeeded_at": _time(c.succeeded_at),
        "last_session_id": c.last_session_id,
        "attempts": [attempt_json(a) for a in row.attempts],
    }


def _int(data: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = data.get(name, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_field(name)
    return value


async def _report(
    ctx: ApiContext,
    s: AsyncSession,
    data: dict[str, Any],
    now: dt.datetime,  # noqa: ARG001
) -> dict[str, object]:
    cid = _campaign_id(data)
    status = data.get("status")
    if status is not None and status not in AI_CONTACT_STATUSES:
        raise bad_field("status")
    offset = _int(data, "offset", 0, 0, 10 * MAX_CONTACTS)
    limit = _int(data, "limit", 100, 1, campaigns.MAX_REPORT_LIMIT)
    found = await campaigns.report(s, ctx.domain_id, cid, status=status, offset=offset, limit=limit)
    return {"total": found.total, "numbers": [number_json(r) for r in found.rows]}


# --- autoinformer_add_numbers -------------------------------------------------------------------------------


def _contact_items(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's ``contacts`` checked for shape (R11 naming ``contacts[i].…``); numbers are judged
    later."""
    items = data.get("contacts")
    if not isinstance(items, list) or not items or len(items) > MAX_CONTACTS_PER_CALL:
        raise bad_field("contacts")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"contacts[{i}]"
        if not isinstance(item, dict) or not set(item) <= {"phone", "phones", "external_id", "vars"}:
            raise bad_field(where)
        phones = item.get("phones", [item["phone"]] if "phone" in item else None)
        if "phone" in item and "phones" in item:
            raise bad_field(f"{where}.phones")
        name = f"{where}.{'phones' if 'phones' in item else 'phone'}"
        if not isinstance(phones, list) or not 1 <= len(phones) <= MAX_PHONES:
            raise bad_field(name)
        if not all(p is None or (isinstance(p, str | int) and not isinstance(p, bool)) for p in phones):
            raise bad_field(name)
        external_id = item.get("external_id")
        if external_id is not None and (not isinstance(external_id, str) or len(external_id) > 128):
            raise bad_field(f"{where}.external_id")
        variables = item.get("vars", {})
        if not isinstance(variables, dict):
            raise bad_field(f"{where}.vars")
        for key, value in variables.items():
            if isinstance(value, bool) or (not isinstance(value, str | int | float) and value is not None):
                raise bad_field(f"{where}.vars.{key}")
        out.append(item)
    return out


async def _add_numbers(
    ctx: ApiContext, s: AsyncSession, data: dict[str, Any], now: dt.datetime
) -> dict[str, object]:
    cid = _campaign_id(data)
    items = _contact_items(data)
    row = await campaigns.get_campaign(s, ctx.domain_id, cid, lock=True)
    if row.status in campaigns.FINAL:
        raise NotEditable(N_("This cannot change in the campaign's current status"), field="contacts")
    result = await contacts.add_numbers(s, ctx.domain_id, row.id, items)
    accepted = result.accepted
    rejected = [{"row": r.row, "phone": r.phone, "reason": r.reason} for r in result.rejected]
    s.add(
        AuditEntry(
            domain_id=ctx.domain_id,
            at=now,
            actor=ACTOR,
            action="autoinformer.contacts.add",
            object_id=row.id.hex,
            details={"accepted": accepted, "rejected": len(rejected)},
        )
    )
    return {"accepted": accepted, "rejected": rejected}


# --- autoinformer_upload_audio ------------------------------------------------------------------------------


async def upload_audio(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
    await _service_on(ctx)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME:
        raise bad_field("name")
    encoded = body.get("data_base64")
    if not isinstance(encoded, str) or not encoded:
        raise bad_field("data_base64")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise bad_field("data_base64") from None
    now = _now(ctx)
    async with ctx.sessions() as s:  # the conversion runs before the first statement: no transaction held
        try:
            row = await audio.upload(s, ctx.services.core.prompts, ctx.domain_id, name, data, channel="api")
        except audio.AudioRejected as e:
            raise api_error(AudioInvalid(e.reason, field="data_base64")) from None
        s.add(
            AuditEntry(
                domain_id=ctx.domain_id,
                at=now,
                actor=ACTOR,
                action="autoinformer.audio.upload",
                object_id=row.id.hex,
                details={"name": row.name, "duration_ms": row.duration_ms},
            )
        )
        if ctx.sandbox:
            await s.rollback()
        else:
            await s.commit()
    return ApiReply(envelope(file_id=row.id.hex, duration_ms=row.duration_ms))


# --- the method table ---------------------------------------------------------------------------------------

_ID_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["campaign_id"],
    "properties": {"campaign_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
}
_CONTACT_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {
        "phone": {"type": "string"},
        "phones": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_PHONES},
        "external_id": {"type": "string", "maxLength": 128},
        "vars": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
    },
}


def _method_entry(
    name: str,
    handler: Callable[[ApiContext, dict[str, Any]], Awaitable[ApiReply]],
    label: str,
    schema: Mapping[str, object],
    max_body: int = BODY_LIMIT,
) -> ApiMethod:
    return ApiMethod(
        name=name,
        handler=handler,
        max_body=max_body,
        limit=60,
        window_s=60,
        log_label=label,
        request_schema=schema,
        extension=True,
    )


METHODS: tuple[ApiMethod, ...] = (
    _method_entry(
        "autoinformer_upload_audio",
        upload_audio,
        "автоинформатор: загрузка аудиофайла",
        {
            "type": "object",
            "required": ["name", "data_base64"],
            "properties": {
                "name": {"type": "string", "maxLength": MAX_NAME},
                "data_base64": {"type": "string", "description": "WAV or MP3, at most 10 MiB decoded"},
            },
        },
        UPLOAD_LIMIT,
    ),
    _method_entry(
        "autoinformer_create",
        _method(_create, changes=True),
        "автоинформатор: создание рассылки",
        CampaignSpec.model_json_schema(by_alias=True),
    ),
    _method_entry(
        "autoinformer_add_numbers",
        _method(_add_numbers, changes=True),
        "автоинформатор: добавление номеров",
        {
            "type": "object",
            "required": ["campaign_id", "contacts"],
            "properties": {
                **_ID_SCHEMA["properties"],  # type: ignore[dict-item]
                "contacts": {
                    "type": "array",
                    "items": _CONTACT_SCHEMA,
                    "minItems": 1,
                    "maxItems": MAX_CONTACTS_PER_CALL,
                },
            },
        },
        ADD_NUMBERS_LIMIT,
    ),
    _method_entry("autoinformer_start", _method(_start, changes=True), "автоинформатор: запуск", _ID_SCHEMA),
    _method_entry(
        "autoinformer_pause", _method(_pause, changes=True), "автоинформатор: приостановка", _ID_SCHEMA
    ),
    _method_entry("autoinformer_stop", _method(_stop, changes=True), "автоинформатор: остановка", _ID_SCHEMA),
    _method_entry(
        "autoinformer_status", _method(_status, changes=False), "автоинформатор: состояние", _ID_SCHEMA
    ),
    _method_entry(
        "autoinformer_report",
        _method(_report, changes=False),
        "автоинформатор: отчёт по номерам",
        {
            "type": "object",
            "required": ["campaign_id"],
            "properties": {
                **_ID_SCHEMA["properties"],  # type: ignore[dict-item]
                "status": {"type": "string", "enum": list(AI_CONTACT_STATUSES)},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": campaigns.MAX_REPORT_LIMIT},
            },
        },
    ),
)
