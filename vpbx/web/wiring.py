"""Builds the cabinet: routers, assets, error pages, security headers, /healthz and /metrics."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vpbx.app import Core
from vpbx.errors import CsrfFailed, NotFound
from vpbx.logs import get_logger
from vpbx.metrics import HTTP_LATENCY, HTTP_REQUESTS
from vpbx.web import auth
from vpbx.web.i18n import LANG_COOKIE, LANGUAGES, load_translators
from vpbx.web.pages import ROUTERS
from vpbx.web.render import Renderer

log = get_logger("vpbx.web")
STATIC = Path(__file__).parent / "static"
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"
# Front-end libraries come from their npm packages (package.json), served by name.
ASSETS = {
    "htmx.js": "htmx.org/dist/htmx.min.js",
    "pico.css": "@picocss/pico/css/pico.min.css",
    "chart.js": "chart.js/dist/chart.umd.min.js",
}
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", CSP),
)


class _Observe:
    """Metrics, security headers and the ``http.request`` line of every HTTP request, as a plain ASGI
    middleware: Starlette's ``@app.middleware("http")`` runs each request through a task group and memory
    streams, which cost the signed API a fifth of its requests per second (bench/api_bench.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                elapsed = time.perf_counter() - started
                status: int = message["status"]
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
                HTTP_REQUESTS.labels(scope["method"], f"{status // 100}xx").inc()
                HTTP_LATENCY.observe(elapsed)
                path: str = scope["path"]
                if path not in ("/healthz", "/metrics") and not path.startswith(("/static/", "/assets/")):
                    # the path only: query strings and bodies may hold personal data or secrets
                    log.info(
                        "http.request",
                        method=scope["method"],
                        path=path,
                        status=status,
                        ms=round(elapsed * 1000, 1),
                    )
            await send(message)

        await self.app(scope, receive, observed)


def mount_web(app: FastAPI, core: Core) -> None:
    renderer = Renderer(load_translators(), core.settings.default_language)
    app.state.renderer = renderer
    missing = [name for name, rel in ASSETS.items() if not (NODE_MODULES / rel).exists()]
    if missing:
        log.warning("assets.missing", assets=missing, hint="run `npm ci` in the repository")

    app.add_middleware(_Observe)

    @app.exception_handler(auth.NeedLogin)
    async def need_login(request: Request, _exc: auth.NeedLogin) -> Response:
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": "/login"})
        target = request.url.path if request.method == "GET" else "/"
        if request.method == "GET" and request.url.query:
            target += "?" + request.url.query  # e.g. the amoCRM connect page's ticket (amocrm.md F2)
        return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(auth.Forbidden)
    async def forbidden(request: Request, _exc: auth.Forbidden) -> Response:
        return renderer.page(request, "error.html", {"status": 403}, status_code=403)

    @app.exception_handler(CsrfFailed)
    async def csrf_failed(request: Request, _exc: CsrfFailed) -> Response:
        return renderer.page(request, "error.html", {"status": 403}, status_code=403)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, _exc: NotFound) -> Response:
        return renderer.page(request, "error.html", {"status": 404}, status_code=404)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return renderer.page(request, "error.html", {"status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, _exc: RequestValidationError) -> Response:
        return renderer.page(request, "error.html", {"status": 400}, status_code=400)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> Response:
        log.error(
            "http.unhandled",
            method=request.method,
            path=request.url.path,
            error=type(exc).__name__,
            exc_info=exc,
        )
        return renderer.page(request, "error.html", {"status": 500}, status_code=500)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        try:
            async with core.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as e:  # the health answer names the failure instead of raising
            log.error("healthz.database", error=type(e).__name__)
            return PlainTextResponse("database unavailable\n", status_code=503)
        return PlainTextResponse("ok\n")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @app.get("/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        rel = ASSETS.get(name)
        if rel is None or not (NODE_MODULES / rel).exists():
            raise NotFound("asset", name)
        return FileResponse(NODE_MODULES / rel, headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/lang/{code}", include_in_schema=False)
    async def switch_language(code: str, request: Request) -> Response:
        target = auth.safe_next(request.query_params.get("next")) or "/"
        resp = RedirectResponse(target, status_code=303)
        if code in LANGUAGES:
            resp.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", path="/")
        return resp

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(auth.router)
    for r in ROUTERS:
        app.include_router(r)
