"""Composition root: builds every long-lived object from settings and wires the features together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from vpbx import __version__
from vpbx.clock import Clock, SystemClock
from vpbx.crypto import SecretBox
from vpbx.logs import get_logger
from vpbx.pbx.registrar import LocationStore, MemoryLocationStore
from vpbx.settings import Settings
from vpbx.store import create_engine, session_factory
from vpbx.store.changes import ConfigVersion, tracked_session_class

log = get_logger("vpbx.app")


@dataclass
class Core:
    """What every feature may use: settings, storage, the clock and the secret box."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    box: SecretBox
    clock: Clock = field(default_factory=SystemClock)
    config: ConfigVersion = field(default_factory=ConfigVersion)  # moves when users or domains change
    # registrations: written by the SIP node, read by the cabinet (telephony.md §9.3)
    location: LocationStore = field(default_factory=MemoryLocationStore)


def build_core(settings: Settings, clock: Clock | None = None) -> Core:
    engine = create_engine(settings.database_url)
    config = ConfigVersion()
    return Core(
        settings=settings,
        engine=engine,
        sessions=session_factory(engine, tracked_session_class(config)),
        box=SecretBox(settings.secret_key.get_secret_value()),
        clock=clock or SystemClock(),
        config=config,
    )


async def serve(settings: Settings) -> None:
    """``vpbx serve``: the cabinet (uvicorn) and the SIP node in one event loop; SIGTERM stops both."""
    import uvicorn

    from vpbx.pbx.node import SipNode

    app = create_app(settings)
    node = SipNode(app.state.core, location=app.state.core.location)
    await node.start()
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await node.stop()


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    from vpbx.web.wiring import mount_web  # the web layer imports the features, not the other way round

    core = build_core(settings, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        log.info("app.started", version=__version__, env=settings.env)
        try:
            yield
        finally:
            await core.engine.dispose()
            log.info("app.stopped")

    app = FastAPI(
        title="vpbx", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.core = core
    mount_web(app, core)
    return app
