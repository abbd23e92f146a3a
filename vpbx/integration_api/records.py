"""Integration API methods on stored results: ``get_record`` with its one-time download link (§4.2), and the
call history export ``domain_call_history`` / ``download_call_history`` (§4.5, §4.6; the builder is in
``exports``).

The recording link ``{API}/records_new_scheme/record/download/<token>/<ip>`` is a plain GET with no auth
headers, served by ``download_app`` (a raw route of the gateway) under both ``/api`` and ``/api-test``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from vpbx.integration_api import exports
from vpbx.integration_api.core import (
    DOMAIN_MISMATCH,
    EXPORT_FAILED,
    ORDER_NOT_FOUND,
    RECORD_NOT_FOUND,
    RECORD_NOT_READY,
    SESSION_NOT_FOUND,
    ApiContext,
    ApiError,
    ApiMethod,
    ApiReply,
    bad_field,
    envelope,
    rate_limited,
)
from vpbx.logs import get_logger
from vpbx.store.models import ApiHistoryOrder, ApiRecordLink, CallRecord, Recording

if TYPE_CHECKING:
    from vpbx.app import Core

log = get_logger("vpbx.integration_api.records")

LINK_TTL = dt.timedelta(minutes=30)  # §4.2: valid at most 30 minutes
LINK_PATH = "/records_new_scheme/record/download"
LINK_PREFIX = "records_new_scheme/"  # the gateway's raw route for the links
SAMPLE_SECONDS = 3.0  # the sandbox's sample recording
SAMPLE_HZ = 440.0
TEST_PREFIX = "test-"
_TOKEN = re.compile(r"[0-9a-f]{32}")
_ORDER_ID = 64  # longest order_id we look up


def _check_domain(ctx: ApiContext, body: dict[str, Any], **nulls: object) -> None:
    """§1: an optional ``domain`` must be the caller's (case-insensitive), else -12."""
    domain = body.get("domain")
    if domain is None:
        return
    if not isinstance(domain, str):
        raise bad_field("domain")
    if domain.strip().lower() != ctx.domain.lower():
        raise DOMAIN_MISMATCH.with_payload(**nulls)


def _session_id(body: dict[str, Any]) -> str:
    value = body.get("session_id")
    if not isinstance(value, str) or not value or len(value) > 64:
        raise bad_field("session_id")
    return value


# --- §4.2 get_record ---------------------------------------------------------------------------------------


def ip_code(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The link's last part: IPv4 as 12 digits (octets zero-padded to 3), IPv6 as 32 lower-case hex digits."""
    if isinstance(address, ipaddress.IPv4Address):
        return "".join(f"{octet:03d}" for octet in address.packed)
    return address.packed.hex()


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _bound_ip(ctx: ApiContext, body: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    for name in ("ip_adress", "ip_address"):  # one "d" is the real spelling (wire)
        value = body.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise bad_field(name)
        try:
            return _parse_ip(value)
        except ValueError:
            raise bad_field(name) from None
    return _parse_ip(ctx.source_ip)


async def get_record(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
    session_id = _session_id(body)
    address = _bound_ip(ctx, body)
    _check_domain(ctx, body, url=None)
    core = ctx.services.core
    now: dt.datetime = core.clock.now()
    token = secrets.token_hex(16)
    async with ctx.sessions() as s, s.begin():
        if not session_id.startswith(TEST_PREFIX):  # sandbox calls get the sample recording (§6.3)
            call = await s.scalar(
                select(CallRecord.id).where(
                    CallRecord.domain_id == ctx.domain_id, CallRecord.session_id == session_id
                )
            )
            if call is None:
                raise SESSION_NOT_FOUND.with_payload(url=None)
            status = await s.scalar(
                select(Recording.status)
                .where(Recording.domain_id == ctx.domain_id, Recording.session_id == session_id)
                .order_by(Recording.created_at.desc())
                .limit(1)
            )
            if status is None or status == "failed":
                raise RECORD_NOT_FOUND.with_payload(url=None)
            if status != "ready":
                raise RECORD_NOT_READY.with_payload(url=None)
        s.add(
            ApiRecordLink(
                token=token,
                domain_id=ctx.domain_id,
                session_id=session_id,
                ip=address.compressed,
                expires_at=now + LINK_TTL,
            )
        )
    url = f"{ctx.base_url.rstrip('/')}{LINK_PATH}/{token}/{ip_code(address)}"
    return ApiReply(envelope(url=url))


# --- the download ------------------------------------------------------------------------------------------

_sample: bytes | None = None


def sample_mp3() -> bytes:
    """The sandbox's recording: a few seconds of tone through the recorder's own MP3 encoder, made once."""
    global _sample
    if _sample is None:
        import math
        import tempfile
        import wave

        from vpbx.media.recorder import encode_mp3

        rate = 8000
        amp = 0.3 * 32767
        pcm = b"".join(
            int(amp * math.sin(2 * math.pi * SAMPLE_HZ * i / rate)).to_bytes(2, "little", signed=True)
            for i in range(int(SAMPLE_SECONDS * rate))
        )
        with tempfile.TemporaryDirectory() as tmp:
            wav, mp3 = Path(tmp) / "sample.wav", Path(tmp) / "sample.mp3"
            with wave.open(str(wav), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(rate)
                w.writeframes(pcm)
            encode_mp3(wav, mp3)
            _sample = mp3.read_bytes()
    return _sample


def _range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """RFC 9110 §14.2, one range: (first, last); None: none or ignorable (send all); False: unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # other units and multiple ranges: the whole file (allowed by §14.2)
    first_s, dash, last_s = (part.strip() for part in spec.strip().partition("-"))
    if not dash or not (first_s or last_s):
        return None
    if (first_s and not first_s.isdigit()) or (last_s and not last_s.isdigit()):
        return None
    if not first_s:  # a suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            return False
        return max(0, size - n), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1
    if first >= size or last < first:
        return False
    return first, min(last, size - 1)


def download_app(core: Core) -> ASGIApp:
    """The recording download (plain GET, no auth headers), which the gateway hands every path under
    ``records_new_scheme/`` of /api and /api-test; anything else there is an empty 404."""

    async def download(request: Request) -> Response:
        token = request.path_params["token"]
        code = request.path_params["ip"]
        if not _TOKEN.fullmatch(token):
            return Response(status_code=404)
        now = core.clock.now()
        async with core.sessions() as s:
            link = await s.get(ApiRecordLink, token)
        if link is None or link.used_at is not None or link.expires_at <= now:
            return Response(status_code=404)
        bound = _parse_ip(link.ip)
        if code != ip_code(bound):
            return Response(status_code=404)
        client = request.client.host if request.client else ""
        try:
            peer = _parse_ip(client)
        except ValueError:
            return Response(status_code=403)
        if peer != bound:
            return Response(status_code=403)
        data = await _recording_bytes(core, link)
        if data is None:
            return Response(status_code=404)
        size = len(data)
        headers = {
            "Content-Disposition": f'attachment; filename="{link.session_id}.mp3"',
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-store",
        }
        wanted = _range(request.headers.get("range"), size)
        if wanted is False:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers)
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        status = 200
        if isinstance(wanted, tuple):
            status = 206
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        # the link is used up only once the whole file went out in one response (after the body was sent)
        complete = first == 0 and last == size - 1
        task = BackgroundTask(_use_up, core, token) if complete else None
        return Response(data[first : last + 1], status, headers, media_type="audio/mpeg", background=task)

    return Router([Route(LINK_PATH + "/{token}/{ip}", download, methods=["GET"])], default=_empty_404)


async def _empty_404(scope: Scope, receive: Receive, send: Send) -> None:
    await Response(status_code=404)(scope, receive, send)


async def _recording_bytes(core: Core, link: ApiRecordLink) -> bytes | None:
    if link.session_id.startswith(TEST_PREFIX):
        return await asyncio.to_thread(sample_mp3)
    async with core.sessions() as s:
        path = await s.scalar(
            select(Recording.path)
            .where(
                Recording.domain_id == link.domain_id,
                Recording.session_id == link.session_id,
                Recording.status == "ready",
            )
            .order_by(Recording.created_at.desc())
            .limit(1)
        )
    if not path:
        return None
    try:
        return await asyncio.to_thread(core.recordings.path(path).read_bytes)
    except (OSError, ValueError):
        log.warning("api_record.file_missing", session_id=link.session_id)
        return None


async def _use_up(core: Core, token: str) -> None:
    async with core.sessions() as s, s.begin():
        await s.execute(
            update(ApiRecordLink)
            .where(ApiRecordLink.token == token, ApiRecordLink.used_at.is_(None))
            .values(used_at=core.clock.now())
        )


# --- §4.5 domain_call_history ------------------------------------------------------------------------------

ORDER_EXISTS_MESSAGE = "Заказ на выгрузку за этот период уже существует"


async def domain_call_history(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
    params = exports.parse_order(body)
    _check_domain(ctx, body)
    core = ctx.services.core
    order_id = secrets.token_hex(16)
    async with ctx.sessions() as s, s.begin():
        pending = (
            await s.execute(
                select(ApiHistoryOrder.id, ApiHistoryOrder.params).where(
                    ApiHistoryOrder.domain_id == ctx.domain_id, ApiHistoryOrder.status == "pending"
                )
            )
        ).all()
        for existing_id, existing in pending:
            if existing == params:
                raise ApiError(
                    200, "-16", ORDER_EXISTS_MESSAGE, "order-exists", payload={"order_id": existing_id}
                )
        if len(pending) >= exports.MAX_PENDING:
            raise rate_limited(exports.PENDING_RETRY_AFTER_S)
        s.add(
            ApiHistoryOrder(
                id=order_id,
                domain_id=ctx.domain_id,
                params=params,
                status="pending",
                created_at=core.clock.now(),
            )
        )
    exporter = getattr(ctx.services, "history_exports", None)
    if exporter is not None:
        exporter.wake()
    return ApiReply(envelope(order_id=order_id))


# --- §4.6 download_call_history ----------------------------------------------------------------------------


async def download_call_history(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not order_id:
        raise bad_field("order_id")
    _check_domain(ctx, body)
    if len(order_id) > _ORDER_ID:
        raise ORDER_NOT_FOUND.with_payload()
    core = ctx.services.core
    async with ctx.sessions() as s:
        order = await s.scalar(
            select(ApiHistoryOrder).where(
                ApiHistoryOrder.id == order_id, ApiHistoryOrder.domain_id == ctx.domain_id
            )
        )
    now = core.clock.now()
    if order is None or (order.expires_at is not None and order.expires_at <= now):
        raise ORDER_NOT_FOUND.with_payload()
    if order.status == "failed":
        raise EXPORT_FAILED.with_payload()
    if order.status == "pending":
        html = f"<html><body>File [{order_id}.csv.z] not found</body></html>"
        return ApiReply(html.encode(), status=404, content_type="text/html; charset=utf-8")
    path = exports.export_path(core.settings.data_dir, ctx.domain_id, order_id)
    try:
        if "application/gzip" in ctx.headers.get("accept", "").lower():
            csv = await asyncio.to_thread(exports.read_csv, path, order_id)
            return ApiReply(
                gzip.compress(csv, mtime=0),
                content_type="application/gzip",
                headers={"Content-Disposition": f'attachment; filename="{order_id}.csv.gz"'},
            )
        data = await asyncio.to_thread(path.read_bytes)
    except (OSError, KeyError):
        log.warning("api_export.file_missing", order_id=order_id)
        raise ORDER_NOT_FOUND.with_payload() from None
    return ApiReply(
        data,
        content_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{order_id}.csv.z"'},
    )


_PERIOD_TIME = {"type": ["string", "integer"], "description": "YYYY-MM-DD HH:MM:SS (Moscow) or Unix seconds"}

METHODS: tuple[ApiMethod, ...] = (
    ApiMethod(
        name="get_record",
        handler=get_record,
        limit=100,
        window_s=60,
        log_label="запрос записи разговоров",
        error_payload={"url": None},
        request_schema={
            "type": "object",
            "required": ["session_id"],
            "properties": {
                "session_id": {"type": "string", "maxLength": 64},
                "ip_adress": {"type": "string", "description": "IPv4/IPv6 allowed to download"},
                "ip_address": {"type": "string"},
            },
        },
    ),
    ApiMethod(
        name="domain_call_history",
        handler=domain_call_history,
        limit=10,
        window_s=3600,
        request_schema={
            "type": "object",
            "required": ["date_start", "date_end"],
            "properties": {
                "date_start": _PERIOD_TIME,
                "date_end": _PERIOD_TIME,
                "direction": {"type": ["integer", "string"], "enum": [0, 1, 2, 3, "0", "1", "2", "3"]},
                "state": {"type": ["integer", "string"], "enum": [0, 1, 2, "0", "1", "2"]},
                "phone_number": {"type": "string"},
            },
        },
    ),
    ApiMethod(
        name="download_call_history",
        handler=download_call_history,
        limit=60,
        window_s=60,
        request_schema={
            "type": "object",
            "required": ["order_id"],
            "properties": {"order_id": {"type": "string"}},
        },
    ),
)
