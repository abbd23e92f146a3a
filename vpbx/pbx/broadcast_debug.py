"""Tests only: ``POST /debug/broadcast`` places one autoinformer call through the engine, answers its result.

``vpbx serve`` mounts it only when ``debug_broadcast_token`` is set, and only a request carrying that token
as a bearer token gets through (the integration tests drive the ``BroadcastDialer`` of a real server with
it, before the autoinformer's dispatcher exists to do so). The body is a ``BroadcastRequest`` as JSON, with
``domain`` (the domain's name) instead of ``domain_id``, ``actions`` as ``{key: {action, target_type,
target, prompt_id}}`` and ``amd`` as ``AmdSettings`` fields or null. The answer is the ``BroadcastResult``
with ISO 8601 times.
"""

from __future__ import annotations

import dataclasses
import hmac
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from vpbx.pbx.broadcast import AmdSettings, BroadcastRequest, BroadcastResult, KeyAction
from vpbx.store.models import Domain

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.pbx.broadcast import BroadcastDialer

PATH = "/debug/broadcast"


def result_json(result: BroadcastResult) -> dict[str, Any]:
    out = dataclasses.asdict(result)
    for name in ("started_at", "answered_at", "ended_at"):
        value = getattr(result, name)
        out[name] = value.isoformat() if value is not None else None
    return out


def broadcast_route(dialer: BroadcastDialer, sessions: async_sessionmaker[AsyncSession], token: str) -> Route:
    async def endpoint(request: Request) -> Response:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        body = await request.json()
        async with sessions() as s:
            domain_id = await s.scalar(select(Domain.id).where(Domain.name == str(body.pop("domain", ""))))
        if domain_id is None:
            return JSONResponse({"error": "no such domain"}, status_code=404)
        actions = {str(k): KeyAction(**v) for k, v in (body.pop("actions", None) or {}).items()}
        amd = body.pop("amd", None)
        req = BroadcastRequest(
            domain_id=domain_id,
            actions=actions,
            amd=AmdSettings(**amd) if amd is not None else None,
            **body,
        )
        return JSONResponse(result_json(await dialer.dial(req)))

    return Route(PATH, endpoint, methods=["POST"])


__all__ = ["PATH", "broadcast_route", "result_json"]
