"""A routing hook that asks a URL where a call on a line should go (JSON over HTTP).

The engine's routing hook (telephony.md §3.7) in its plainest wire form, switched on with
``VPBX_DEBUG_ROUTING_HOOK_URL`` for tests and for trying a CRM's routing logic; the production providers are
the Integration API's ``get_number_info`` (signed, integration-api.md §5.3) and amoCRM's intelligent routing.

Request: ``POST {"session_id", "domain", "from_number", "request_number"}`` (numbers as E.164 digits).
Answer: ``{"pin": "<user or group PIN>", "display_name": "<caller's name for the phones>"}``; either may be
missing or empty. Anything else (an error status, a body that is not such an object) is no answer. The B2BUA
cancels a hook past its deadline; the HTTP timeout here is that deadline too, so no request outlives it.
"""

from __future__ import annotations

from typing import Any

import httpx

from vpbx.logs import get_logger
from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery

log = get_logger("vpbx.pbx.routing_webhook")

MAX_FIELD = 128  # longer values are cut (the B2BUA cleans the display name further)


class HttpRoutingHook:
    def __init__(self, url: str, *, timeout_s: float, client: httpx.AsyncClient | None = None) -> None:
        self.url = url
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    async def __call__(self, query: RoutingQuery) -> RoutingAnswer | None:
        body = {
            "session_id": query.session_id,
            "domain": query.domain,
            "from_number": query.from_number,
            "request_number": query.request_number,
        }
        response = await self._client.post(self.url, json=body)
        if response.status_code != 200:
            log.info("routing_hook.status", status=response.status_code)
            return None
        try:
            data: Any = response.json()
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        pin, name = data.get("pin"), data.get("display_name")
        return RoutingAnswer(
            pin=pin[:MAX_FIELD] if isinstance(pin, str) else "",
            display_name=name[:MAX_FIELD] if isinstance(name, str) else "",
        )

    async def aclose(self) -> None:
        await self._client.aclose()
