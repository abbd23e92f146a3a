"""Shared fixtures: settings on a temporary SQLite file, the app over ASGI, two tenants with admins."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from tests.helpers import Cabinet, Tenant
from vpbx import store
from vpbx.app import Core, create_app
from vpbx.pbx import domains, users
from vpbx.settings import Settings

TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
ADMIN_PASSWORD = "Admin-Password-1"


@pytest.fixture(scope="session", autouse=True)
def cheap_argon2() -> Iterator[None]:
    """Real argon2, at the lowest cost RFC 9106 allows, so hundreds of logins stay fast in tests."""
    from argon2 import PasswordHasher

    from vpbx import crypto

    saved = crypto._HASHER
    crypto._HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    yield
    crypto._HASHER = saved


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per run; each test copies it instead of migrating again."""
    path = tmp_path_factory.mktemp("template") / "vpbx.sqlite3"
    store.upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture
def settings(tmp_path: Path, migrated_template: Path) -> Settings:
    db = tmp_path / "vpbx.sqlite3"
    shutil.copy(migrated_template, db)
    return Settings(
        env="test",
        secret_key=TEST_SECRET,
        data_dir=tmp_path,  # type: ignore[arg-type]
        database_url=f"sqlite+aiosqlite:///{db}",
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    yield application
    await application.state.core.engine.dispose()


@pytest.fixture
def core(app: FastAPI) -> Core:
    c: Core = app.state.core
    return c


async def make_tenant(core: Core, name: str) -> Tenant:
    async with core.sessions() as s:
        d = await domains.create_domain(s, domains.DomainInput(name=name))
        await users.create_user(
            s,
            d.id,
            users.UserInput(
                name="admin", display_name="Admin", pin="100", role="admin", web_password=ADMIN_PASSWORD
            ),
            box=core.box,
        )
        await s.commit()
        return Tenant(id=d.id, name=name, admin_login=f"admin@{name}", admin_password=ADMIN_PASSWORD)


@pytest.fixture
async def t1(core: Core) -> Tenant:
    return await make_tenant(core, "acme.vpbx.test")


@pytest.fixture
async def t2(core: Core) -> Tenant:
    return await make_tenant(core, "other.vpbx.test")


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", follow_redirects=False
    )


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[Cabinet]:
    async with _client(app) as c:
        yield Cabinet(c)


@pytest.fixture
async def admin1(app: FastAPI, t1: Tenant) -> AsyncIterator[Cabinet]:
    async with _client(app) as c:
        cab = Cabinet(c)
        resp = await cab.login(t1.admin_login, t1.admin_password)
        assert resp.status_code == 303
        yield cab


@pytest.fixture
async def admin2(app: FastAPI, t2: Tenant) -> AsyncIterator[Cabinet]:
    async with _client(app) as c:
        cab = Cabinet(c)
        resp = await cab.login(t2.admin_login, t2.admin_password)
        assert resp.status_code == 303
        yield cab


def postgres_url() -> str | None:
    """The server for the PostgreSQL suites; CI must have one, elsewhere those tests skip."""
    url = os.environ.get("VPBX_TEST_POSTGRES_URL")
    if not url and os.environ.get("CI"):
        pytest.fail("VPBX_TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL")
    return url


PG_TRIES = 20  # CREATE may meet template1 busy with another suite's CREATE; DROP … FORCE an autovacuum worker


async def _with_retries(admin: AsyncEngine, sql: str) -> None:
    for attempt in range(PG_TRIES):
        try:
            async with admin.connect() as conn:
                await conn.execute(text(sql))
            return
        except DBAPIError:
            if attempt == PG_TRIES - 1:
                raise
            await asyncio.sleep(0.5)  # the other backend's own run: nothing to wait on from here


@asynccontextmanager
async def postgres_database(*, migrate: bool = True) -> AsyncIterator[str]:
    """A uniquely named PostgreSQL database on the test server (migrated unless told not to), dropped after;
    the test is skipped when no server is configured."""
    server = postgres_url()
    if not server:
        pytest.skip("VPBX_TEST_POSTGRES_URL is not set")
    name = f"vpbx_test_{uuid.uuid4().hex[:16]}"
    admin = create_async_engine(server, isolation_level="AUTOCOMMIT")
    try:
        await _with_retries(admin, f'CREATE DATABASE "{name}"')
        try:
            url = make_url(server).set(database=name).render_as_string(hide_password=False)
            if migrate:
                await store.upgrade_async(url)
            yield url
        finally:
            await _with_retries(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.dispose()


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated_template: Path
) -> AsyncIterator[str]:
    """A migrated database on each backend: a copy of the SQLite template, then a fresh PostgreSQL
    database (skipped when no server is configured)."""
    if request.param == "sqlite":
        db = tmp_path / "backend.sqlite3"
        shutil.copy(migrated_template, db)
        yield f"sqlite+aiosqlite:///{db}"
        return
    async with postgres_database() as url:
        yield url


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on ``database_url``: the store-level tests run on SQLite and PostgreSQL."""
    engine = store.create_engine(database_url)
    try:
        yield store.session_factory(engine)
    finally:
        await engine.dispose()
