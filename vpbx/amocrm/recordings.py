"""Stable recording links for amoCRM call notes (amocrm.md §5.5): ``GET /rec/amo/{token}.mp3``.

The token is a stored random row (``AmoRecordingLink``), not derived from a key, so rotating a key breaks no
link. The link exists before the file does: 404 until the call's recording is ``ready``, the MP3 after;
a revoked link, an unknown token or a recording past its retention is 404. No authentication: amoCRM's
player fetches the URL as it is (the token is the secret, 144 random bits).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from vpbx.logs import get_logger
from vpbx.store.models import AmoRecordingLink, CrmBinding, Recording

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from vpbx.app import Core

log = get_logger("vpbx.amocrm.recordings")

PATH = "/rec/amo/{token}.mp3"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def recording_route(core: Core) -> Route:
    async def download(request: Request) -> Response:
        token = str(request.path_params.get("token", ""))
        if not _TOKEN.fullmatch(token):
            return Response(status_code=404)
        async with core.sessions() as s:
            row = (
                await s.execute(
                    select(Recording.path)
                    .join(
                        AmoRecordingLink,
                        (AmoRecordingLink.domain_id == Recording.domain_id)
                        & (AmoRecordingLink.session_id == Recording.session_id),
                    )
                    .join(CrmBinding, CrmBinding.id == AmoRecordingLink.binding_id)
                    .where(
                        AmoRecordingLink.token == token,
                        AmoRecordingLink.revoked_at.is_(None),
                        CrmBinding.domain_id == AmoRecordingLink.domain_id,
                        Recording.status == "ready",
                    )
                    .order_by(Recording.created_at.desc())
                    .limit(1)
                )
            ).first()
        if row is None or not row.path:
            return Response(status_code=404)
        try:
            path = core.recordings.path(row.path)
        except ValueError:
            return Response(status_code=404)
        if not path.is_file():
            log.warning("amo.recording_missing", token_prefix=token[:4])
            return Response(status_code=404)
        return FileResponse(path, media_type="audio/mpeg", filename=f"{token}.mp3")

    return Route(PATH, download, methods=["GET", "HEAD"])


async def revoke_links(
    s: AsyncSession, binding_id: uuid.UUID, now: dt.datetime, *, token: str | None = None
) -> int:
    """Revoke one link of the binding (``token``) or all of them (§5.5, the cabinet's action); the number
    revoked. A revoked call gets a new token the next time its link is asked for
    (``finish.recording_link``)."""
    query = update(AmoRecordingLink).where(
        AmoRecordingLink.binding_id == binding_id, AmoRecordingLink.revoked_at.is_(None)
    )
    if token is not None:
        query = query.where(AmoRecordingLink.token == token)
    result = await s.execute(query.values(revoked_at=now))
    return int(getattr(result, "rowcount", 0) or 0)
