"""Builds the emulator: the world, the FastAPI routes (API, OAuth, control, the widget harness when its module
exists) and the outer ASGI layer; ``serve`` runs it under uvicorn (``vpbx amocrm emulator``)."""

from __future__ import annotations

import asyncio
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


START_WAIT_S = 15.0
STOP_WAIT_S = 15.0


class EmulatorServer:
    """The emulator under uvicorn in this process's loop, a part with ``start()``/``stop()`` (the test kit;
    ``vpbx serve --demo`` can run it alongside). ``port=0`` takes a free port; ``url`` is set by start."""

    def __init__(self, world: World, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.world = world
        self.app = build_app(world)
        self.host = host
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host=host,
                port=port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=2,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="amo-emulator")
        async with asyncio.timeout(START_WAIT_S):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises what stopped it (e.g. the port is taken)
                    raise RuntimeError("the emulator stopped while starting")
                await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            try:
                async with asyncio.timeout(STOP_WAIT_S):
                    await asyncio.gather(self._task, return_exceptions=True)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self.app.aclose()

    async def wait(self) -> None:
        """Until the server stops (the CLI: Ctrl-C)."""
        if self._task is not None:
            await self._task


async def serve(world: World, *, host: str, port: int) -> None:
    server = EmulatorServer(world, host=host, port=port)
    await server.start()
    try:
        await server.wait()
    finally:
        await server.stop()


__all__ = ["EmulatorServer", "Switches", "build_app", "make_world", "serve"]
