"""What every part of the Integration API shares (integration-api.md): the signature rule, the envelope and
result codes, Moscow time, the method table's shape, and the request/response log row.

The gateway (CRM → PBX), the notifications (PBX → CRM) and the cabinet pages all build on these, so a wire
detail lives in one place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.crypto import SecretBox
from vpbx.store.models import ApiDelivery, ApiLog, ApiSettings

MOSCOW = ZoneInfo("Europe/Moscow")
OK_MESSAGE = "Операция выполнена успешно"
LOG_BODY_LIMIT = 16 * 1024  # bytes of a body kept in the log (§6.4)
LOG_RETENTION = dt.timedelta(days=7)  # the log keeps 7 days or 10 000 rows per domain (§6.4)
LOG_MAX_ROWS = 10_000
SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie"}
)  # never logged; the key is never a header


# --- §2.1, §2.2: credentials and the signature --------------------------------------------------------------


def new_credential() -> str:
    """An X-Client-ID or signing key: 128 random bits as 32 upper-case hex characters."""
    return secrets.token_hex(16).upper()


def sign(client_id: str, raw_body: bytes, sign_key: str) -> str:
    """X-Client-Sign: lower-case hex SHA-256 of ID ‖ the raw body bytes ‖ key (not HMAC; wire)."""
    return hashlib.sha256(client_id.encode("ascii") + raw_body + sign_key.encode("ascii")).hexdigest()


def verify(client_id: str, raw_body: bytes, sign_key: str, header: str | None) -> bool:
    """The header against the bytes as they travelled, compared in constant time."""
    return hmac.compare_digest(sign(client_id, raw_body, sign_key), (header or "").strip().lower())


def dumps(obj: object) -> bytes:
    """How we serialise what we send: once, compact, UTF-8; these exact bytes are signed and sent."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# --- §1, §3: time, envelope, result codes -------------------------------------------------------------------


def moscow(at: dt.datetime, *, millis: bool = True) -> str:
    """Event time ``YYYY-MM-DD HH:MM:SS.mmm`` (filter time without ``.mmm``) in Moscow time (§1)."""
    local = at.astimezone(MOSCOW)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{local.microsecond // 1000:03d}" if millis else text


def envelope(result: str = "0", message: str = OK_MESSAGE, **payload: object) -> dict[str, object]:
    """``{"result": …, "resultMessage": …, …payload}`` with the result as a string (wire)."""
    return {"result": result, "resultMessage": message, **payload}


@dataclass(eq=False)
class ApiError(Exception):
    """A refusal with its HTTP status, ``result`` code, Russian ``resultMessage`` and house ``error`` id (§3).

    ``payload`` adds the method's null fields (e.g. ``"url": None``); ``headers`` e.g. ``Retry-After``.
    """

    status: int
    result: str
    message: str
    error: str
    field: str | None = None
    payload: Mapping[str, object] = dataclasses.field(default_factory=dict)
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def body(self) -> dict[str, object]:
        out: dict[str, object] = {"result": self.result, "resultMessage": self.message, "error": self.error}
        if self.field is not None:
            out["field"] = self.field
        out.update(self.payload)
        return out

    def with_payload(self, **payload: object) -> ApiError:
        return ApiError(
            self.status,
            self.result,
            self.message,
            self.error,
            self.field,
            {**self.payload, **payload},
            self.headers,
        )


def bad_field(name: str) -> ApiError:
    """R11: a required field missing, or a bad type or format (§2.3)."""
    return ApiError(400, "-1", f"Некорректное значение поля {name}", "bad-request", field=name)


# the common rejections R1–R10 (§2.3) and the business codes (§3)
UNKNOWN_METHOD = ApiError(404, "-7", "Неизвестный метод", "unknown-method")
METHOD_NOT_ALLOWED = ApiError(
    405, "-8", "Метод HTTP не поддерживается", "method-not-allowed", headers={"Allow": "POST"}
)
BODY_TOO_LARGE = ApiError(413, "-9", "Превышен размер запроса", "body-too-large")
UNKNOWN_CLIENT = ApiError(401, "-2", "Неизвестный X-Client-ID", "unknown-client")
SERVICE_DISABLED = ApiError(403, "-6", "Услуга «Интеграционный API» не подключена", "service-disabled")
TLS_REQUIRED = ApiError(403, "-5", "Требуется HTTPS", "tls-required")
BAD_SIGNATURE = ApiError(401, "-3", "Неверная подпись запроса", "bad-signature")
BAD_JSON = ApiError(400, "-1", "Некорректный JSON", "bad-request")
INTERNAL = ApiError(500, "-500", "Внутренняя ошибка", "internal-error")
USER_NOT_FOUND = ApiError(200, "-10", "Пользователь не найден", "user-not-found")
SESSION_NOT_FOUND = ApiError(200, "-11", "Сессия не найдена", "session-not-found")
DOMAIN_MISMATCH = ApiError(200, "-12", "Домен не соответствует X-Client-ID", "domain-mismatch")
RECORD_NOT_FOUND = ApiError(200, "-13", "Запись разговора отсутствует", "record-not-found")
RECORD_NOT_READY = ApiError(200, "-14", "Запись разговора ещё обрабатывается", "record-not-ready")
CALL_IN_PROGRESS = ApiError(200, "-15", "Вызов ещё не завершён", "call-in-progress")
RESTRICTED_BY_DOMAIN = ApiError(
    200, "-19", "Ограничение домена не позволяет выдать это право", "restricted-by-domain"
)
ORDER_NOT_FOUND = ApiError(200, "-17", "Заказ не найден", "order-not-found")
EXPORT_FAILED = ApiError(200, "-18", "Не удалось сформировать выгрузку", "export-failed")


MAX_PERIOD = dt.timedelta(days=31)  # the longest date_start..date_end span (§4.5, §4.7)


def parse_filter_time(value: object, name: str) -> dt.datetime:
    """A filter time (§1, §4.5): ``YYYY-MM-DD HH:MM:SS`` Moscow time, or Unix seconds (an int or a digit
    string, tolerated); R11 naming the field otherwise. Returns an aware UTC datetime."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**36:
        return dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit() and len(text) <= 11:
            return dt.datetime.fromtimestamp(int(text), dt.UTC)
        try:
            local = dt.datetime.strptime(text + " +0300", "%Y-%m-%d %H:%M:%S %z")  # Moscow: UTC+3, no DST
        except ValueError:
            raise bad_field(name) from None
        return local.astimezone(dt.UTC)
    raise bad_field(name)


def parse_period(data: Mapping[str, object]) -> tuple[dt.datetime, dt.datetime]:
    """``date_start`` and ``date_end`` (both required): the end after the start, at most 31 days apart."""
    start = parse_filter_time(data.get("date_start"), "date_start")
    end = parse_filter_time(data.get("date_end"), "date_end")
    if end <= start or end - start > MAX_PERIOD:
        raise bad_field("date_end")
    return start, end


def ip_not_allowed(ip: str) -> ApiError:
    return ApiError(403, "-4", f"IP-адрес {ip} не входит в белый список", "ip-not-allowed")


def rate_limited(retry_after_s: int) -> ApiError:
    return ApiError(
        429,
        "-429",
        "Превышен лимит запросов",
        "rate-limited",
        headers={"Retry-After": str(max(1, retry_after_s))},
    )


# --- the method table (CRM → PBX) ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """One authenticated request as a method sees it (all of R1–R10 passed)."""

    domain_id: uuid.UUID
    domain: str  # the domain's name
    client_id: str
    source_ip: str
    sandbox: bool  # came to {API_TEST}: read real data, never place a call (§6.3)
    base_url: str  # {API} or {API_TEST} as the client reached it, for links we hand out
    headers: Mapping[str, str]  # lower-case names
    sessions: async_sessionmaker[AsyncSession]
    services: Any  # the composition root's features (vpbx.app.Core and the running engine), for the methods


@dataclass(frozen=True, slots=True)
class ApiReply:
    """A method's answer: a JSON object (the method builds the envelope), or raw bytes (ZIP, MP3, HTML)."""

    body: Mapping[str, object] | bytes
    status: int = 200
    content_type: str = "application/json; charset=utf-8"
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


Handler = Callable[[ApiContext, dict[str, Any]], Awaitable[ApiReply]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiMethod:
    """A CRM → PBX method: its name (the URL path), handler, size limit and rate limit (§2.3, §2.6)."""

    name: str
    handler: Handler
    max_body: int = 64 * 1024
    limit: int = 60  # requests per window per domain
    window_s: int = 60
    log_label: str = ""  # the log filter's wording (§6.4), when the method has one
    # the null fields of the method's refusals that the gateway raises itself (-12), e.g. {"info": None}
    error_payload: Mapping[str, object] = dataclasses.field(default_factory=dict)
    # the request body's JSON Schema for {API}/openapi.json (None: any object)
    request_schema: Mapping[str, object] | None = None
    # ours, beyond the «Интеграционный API» (e.g. autoinformer_*): marked in {API}/openapi.json
    extension: bool = False


# --- §6.4: the request/response log -------------------------------------------------------------------------


def loggable_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as the log keeps them: X-Client-Sign stays, credentials of other kinds never do."""
    return {k: v for k, v in headers.items() if k.lower() not in SECRET_HEADERS}


def loggable_body(raw: bytes, content_type: str = "application/json") -> tuple[str, bool]:
    """A body as the log shows it: text up to 16 KiB (and whether it was cut); ZIP/MP3 as type and size."""
    if not content_type.startswith(("application/json", "text/")) and raw[:2] != b"{" and raw[:1] != b"{":
        return f"<{content_type}, {len(raw)} bytes>", False
    cut = raw[:LOG_BODY_LIMIT]
    return cut.decode("utf-8", errors="replace"), len(raw) > LOG_BODY_LIMIT


async def write_log(sessions: async_sessionmaker[AsyncSession], **row: Any) -> None:
    """Append one exchange to the log (fields of ``ApiLog``); a failure to log never fails the exchange."""
    async with sessions() as s:
        s.add(ApiLog(**row))
        await s.commit()


async def sweep_log(s: AsyncSession, domain_id: uuid.UUID, now: dt.datetime) -> int:
    """The log's retention for one domain: rows older than 7 days, and beyond the newest 10 000, go."""
    gone = await s.execute(
        delete(ApiLog).where(ApiLog.domain_id == domain_id, ApiLog.at < now - LOG_RETENTION)
    )
    cutoff = await s.scalar(
        select(ApiLog.at)
        .where(ApiLog.domain_id == domain_id)
        .order_by(ApiLog.at.desc())
        .offset(LOG_MAX_ROWS - 1)
        .limit(1)
    )
    count: int = getattr(gone, "rowcount", 0) or 0
    if cutoff is not None:
        extra = await s.execute(delete(ApiLog).where(ApiLog.domain_id == domain_id, ApiLog.at < cutoff))
        count += getattr(extra, "rowcount", 0) or 0
    return count


# --- what the parts share at run time -----------------------------------------------------------------------


async def api_settings(s: AsyncSession, domain_id: uuid.UUID) -> ApiSettings | None:
    """The domain's Integration API settings; None until the service was first enabled."""
    return await s.get(ApiSettings, domain_id)


def sign_key(settings: ApiSettings, box: SecretBox) -> str:
    """The domain's signing key in clear (it is sealed at rest)."""
    return box.open(settings.sign_key_enc)


def enqueue(
    s: AsyncSession,
    domain_id: uuid.UUID,
    method: str,
    payload: Mapping[str, object],
    *,
    session_id: str | None = None,
    seq: int | None = None,
    test: bool = False,
) -> ApiDelivery:
    """Put a PBX → CRM notification in the durable outbox, in the caller's transaction (§5.1); the
    notifications' dispatcher signs and sends its exact ``body`` bytes."""
    row = ApiDelivery(
        domain_id=domain_id,
        method=method,
        session_id=session_id,
        seq=seq,
        body=dumps(payload).decode(),
        test=test,
    )
    s.add(row)
    return row
