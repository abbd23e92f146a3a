"""How the amoCRM integration plugs into the app (amocrm.md): its HTTP side and its background side.

- ``amo_app(core)``: the ASGI app mounted at ``/amo`` (OAuth callback, disconnect hook, amoCRM webhooks, the
  widget API ``/amo/widget/v1`` with its CORS rules and JSON errors). JSON errors are ``{"error": code}``: the
  cabinet's HTML error pages never answer the widget.
- ``AmoRuntime``: started by ``vpbx serve`` once the engine exists: the routing hook (ИМК), the call-event
  consumer, the job runner. Each part has ``start()``/``stop()``; they stop in reverse order.

Parts are added here, one line each, by the feature modules (``oauth``, ``widget_api``, ``popups``, ``hooks``,
``routing``, ``jobs``, …).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware

from vpbx.amocrm import binding_http, widget_api
from vpbx.amocrm.client import ClientPoolPart, shared_pool
from vpbx.amocrm.lookup import SharedLookupPart
from vpbx.amocrm.widget_auth import verifier_for
from vpbx.logs import get_logger

if TYPE_CHECKING:
    from vpbx.app import Core

log = get_logger("vpbx.amocrm")

PREFIX = "/amo"
WIDGET_PREFIX = "/widget/v1"  # under PREFIX: /amo/widget/v1
AMO_ORIGINS = r"https://[a-z0-9-]+\.(amocrm\.ru|amocrm\.com|kommo\.com)"


class Part(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def _origin_regex(extra: list[str]) -> str:
    alternatives = [AMO_ORIGINS, *(re.escape(o.rstrip("/")) for o in extra)]
    return "^(" + "|".join(alternatives) + ")$"


def amo_app(core: Core) -> FastAPI:
    """The ``/amo`` sub-application."""
    sub = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    sub.state.core = core
    sub.state.amo_widget_verifier = verifier_for(core.settings)
    sub.add_middleware(
        CORSMiddleware,
        allow_origin_regex=_origin_regex(core.settings.amocrm.widget_origins),
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=["X-Auth-Token", "Content-Type", "Idempotency-Key"],
        max_age=600,
    )

    @sub.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        detail: Any = exc.detail
        body = detail if isinstance(detail, dict) else {"error": str(detail).lower().replace(" ", "-")}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @sub.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> Response:
        errors = [{"path": ".".join(str(p) for p in e["loc"][1:]), "msg": e["msg"]} for e in exc.errors()]
        return JSONResponse({"error": "invalid-request", "errors": errors[:50]}, status_code=422)

    # feature routers (each an APIRouter with its own paths under /amo)
    sub.include_router(binding_http.router)  # OAuth callback, disconnect hook, /state, tickets, /disconnect
    sub.include_router(widget_api.router)
    from vpbx.amocrm.hooks import router as hooks_router

    sub.include_router(hooks_router)  # E18: /amo/hooks/{hook_secret}
    from vpbx.amocrm.popups import router as popups_router

    sub.include_router(popups_router)  # F13: /amo/widget/v1/stream-ticket, /stream
    from vpbx.amocrm import dryrun

    sub.include_router(dryrun.router)  # POST /amo/widget/v1/dry-run
    from vpbx.amocrm import health

    sub.include_router(health.router)  # GET /amo/widget/v1/health
    return sub


class AmoRuntime:
    """The integration's background parts for one ``vpbx serve`` process."""

    def __init__(self, core: Core, *, app: Any, b2bua: Any) -> None:
        self.core = core
        self.app = app
        self.b2bua = b2bua
        self.parts: list[Part] = []
        self.clients = shared_pool(core)  # one limiter per account for every feature (§2.5)

    async def start(self) -> None:
        # parts are appended here by the feature modules
        self.parts.append(ClientPoolPart(self.core))  # closes the shared amoCRM client pool last
        self.parts.append(SharedLookupPart(self.core))  # stops the routing's and pop-ups' shared lookup
        if not self.core.settings.sqlite:  # several processes may share PostgreSQL: one owner per account
            from vpbx.amocrm.lease import AccountLeases

            self.parts.append(leases := AccountLeases(self.core))
            self.clients.use_leases(leases)
        self.parts.append(widget_api.EngineLink(self))
        from vpbx.amocrm.routing import routing_part

        self.parts.append(routing_part(self))  # the ИМК: routing hook, phone cache, webhook re-reads
        from vpbx.amocrm.calls import CallJobs

        self.parts.append(CallJobs.for_runtime(self))  # call events → AmoCall → amo.finish jobs (§5)
        from vpbx.amocrm.popups import Popups

        self.parts.append(Popups.for_runtime(self))  # connected → pop-up stream / E16 (F13, §3.6)
        from vpbx.amocrm.demo import DemoAmo

        self.parts.append(DemoAmo(self))  # `vpbx serve --demo`: the emulator and the demo domain's binding
        for part in self.parts:
            await part.start()

    def closing(self) -> None:
        """The HTTP server begins to stop: end the widgets' pop-up streams (§3.6) so it need not wait."""
        from vpbx.amocrm.popups import hub_for

        hub_for(self.core).shutdown()

    async def stop(self) -> None:
        for part in reversed(self.parts):
            try:
                await part.stop()
            except Exception as e:  # one part failing to stop must not keep the others running
                log.warning("amocrm.stop_failed", part=type(part).__name__, error=type(e).__name__)
