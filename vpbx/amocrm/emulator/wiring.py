"""Builds the emulator: the world, the FastAPI routes (API, OAuth, control, the widget harness when its module
exists) and the outer ASGI layer; ``serve`` runs it under uvicorn (``vpbx amocrm emulator``)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from vpbx.amocrm.emulator import control, http
from vpbx.amocrm.emulator.asgi import EmulatorASGI
from vpbx.amocrm.emulator.config import Switches, merge_switches, read_fixture, read_toml
from vpbx.amocrm.emulator.world import Invalid, Json, Problem, World

PROBLEM = "application/problem+json"


def build_app(world: World) -> EmulatorASGI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.world = world

    @app.exception_handler(Problem)
    async def problem(_request: Request, exc: Problem) -> Response:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers, media_type=PROBLEM)

    @app.exception_handler(Invalid)
    async def invalid(_request: Request, exc: Invalid) -> Response:
        return JSONResponse(exc.body(), status_code=400, media_type=PROBLEM)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        body = Problem(exc.status_code, str(exc.detail)).body
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers, media_type=PROBLEM)

    app.include_router(control.router)
    app.include_router(http.router)
    try:  # the widget harness page (§4.7) is its own module
        harness: Any = importlib.import_module("vpbx.amocrm.emulator.harness")
    except ModuleNotFoundError as e:
        if e.name != "vpbx.amocrm.emulator.harness":
            raise
    else:
        app.include_router(harness.router)
    return EmulatorASGI(world, app)


def make_world(
    fixture: Json | None = None, *, config: Path | None = None, switches: dict[str, Any] | None = None
) -> World:
    """A world from a fixture (the demo fixture when None), an optional ``emulator.toml`` and overrides."""
    doc = fixture if fixture is not None else read_fixture()
    base = merge_switches(read_toml(config) if config else None, doc.get("switches"), switches)
    world = World(switches=base)
    world.load({k: v for k, v in doc.items() if k != "switches"})
    return world


async def serve(world: World, *, host: str, port: int) -> None:
    import uvicorn

    app = build_app(world)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    try:
        await server.serve()
    finally:
        await app.aclose()


__all__ = ["Switches", "build_app", "make_world", "serve"]
