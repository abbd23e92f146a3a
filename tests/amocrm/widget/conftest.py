"""The widget API's world: two domains, each bound to its own amoCRM account (rows inserted directly), the
app's settings carrying the emulator fixture's integration, and tokens as amoCRM's widget sends them."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from fastapi import FastAPI
from jwt.warnings import InsecureKeyLengthWarning
from playwright.async_api import Browser, Page, async_playwright
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import DEMO, DEMO_FIXTURE, OTHER, Emu, emulator
from tests.amocrm.kit import bind_rows, make_domain
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, CHROMIUM_PRESENT
from vpbx.amocrm.client import close_shared_pool
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.popups import hub_for
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import AmoInstall

CLIENT_ID = "6f1c2a7e-0000-4000-8000-000000000001"  # the emulator fixture's integration (amocrm.md §4.1)
CLIENT_SECRET = "emu-secret"  # for tokens the emulator would never sign (forged, other integrations)
AUDIENCE = "http://127.0.0.1:8080"  # public_origin() of the test settings
ACCOUNT_A, ACCOUNT_B = 30000001, 30000002
LINE_A, LINE_A2 = "+74951234567", "+74951234568"
LINE_B = "+74997654321"
WAIT_S = 10.0


def widget_fixture() -> dict[str, Any]:
    """§4.1's fixture plus an archived pipeline and an inactive user (the pickers' edge cases)."""
    doc = copy.deepcopy(DEMO_FIXTURE)
    demo = doc["accounts"][0]
    demo["pipelines"].append(
        {"id": 7100, "name": "Архив", "is_archive": True, "statuses": [{"id": 7101, "name": "Старый"}]}
    )
    demo["users"].append({"id": 5004, "name": "Уволенный", "is_active": False})
    return doc


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator(widget_fixture()) as e:
        yield e


def amo_settings(emu: Emu, **extra: Any) -> AmoSettings:
    return AmoSettings(
        client_id=emu.client_id,
        client_secret=SecretStr(emu.client_secret),
        api_url_template=emu.api_url_template,
        **extra,
    )


@pytest.fixture
def settings(settings: Settings, emu: Emu) -> Settings:
    return settings.model_copy(update={"amocrm": amo_settings(emu)})


def mint(
    account_id: int,
    user_id: int,
    *,
    is_admin: bool = True,
    aud: str = AUDIENCE,
    ttl: int = 300,
    secret: str = CLIENT_SECRET,
    jti: str | None = None,
) -> str:
    """A disposable widget token (§3.3) signed here, for the cases the emulator will not mint (forged)."""
    now = int(time.time())
    sub = "demo" if account_id == ACCOUNT_A else "other"
    claims = {
        "iss": f"https://{sub}.amocrm.ru",
        "aud": aud,
        "jti": jti or str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "account_id": account_id,
        "subdomain": sub,
        "client_uuid": CLIENT_ID,
        "user_id": user_id,
        "is_admin": is_admin,
    }
    with warnings.catch_warnings():  # the emulator fixture's secret is short
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


@dataclass
class World:
    core: Core
    domain_a: uuid.UUID
    domain_b: uuid.UUID
    binding_a: uuid.UUID
    binding_b: uuid.UUID


async def emu_tokens(emu: Emu, base_domain: str) -> TokenPair:
    """A real token pair from the emulator (as the OAuth callback gets it)."""
    pair = await emu.token_pair(base_domain)
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=int(pair["expires_in"]))
    return TokenPair(pair["access_token"], pair["refresh_token"], expires)


async def install(s: AsyncSession, core: Core, emu: Emu, account_id: int, base_domain: str) -> None:
    """The account's install with a real token pair from the emulator (as the OAuth callback stores it)."""
    row = AmoInstall(amo_account_id=account_id, base_domain=base_domain, client_id=emu.client_id)
    await store_tokens(s, core.box, row, await emu_tokens(emu, base_domain))


async def bind(core: Core, emu: Emu, domain_id: uuid.UUID, account_id: int, base_domain: str) -> uuid.UUID:
    """The account's install and the domain's active binding, without a mapping or scenarios yet."""
    async with core.sessions() as s:
        _, b, _ = await bind_rows(
            s,
            domain_id,
            account=account_id,
            base_domain=base_domain,
            client_id=emu.client_id,
            box=core.box,
            tokens=await emu_tokens(emu, base_domain),
            mapping={},
            fallback=None,
        )
        await s.commit()
        return b.id


@pytest.fixture
async def world(core: Core, emu: Emu) -> World:
    async with core.sessions() as s:
        a = await make_domain(
            s, core.box, pins={"101": "Иван", "102": "Мария", "103": "Пётр"}, numbers=[LINE_A, LINE_A2]
        )
        b = await make_domain(s, core.box, "b.vpbx.test", pins={"201": "Борис"}, numbers=[LINE_B])
        await s.commit()
    return World(
        core=core,
        domain_a=a,
        domain_b=b,
        binding_a=await bind(core, emu, a, ACCOUNT_A, DEMO),
        binding_b=await bind(core, emu, b, ACCOUNT_B, OTHER),
    )


def amo_state(app: FastAPI) -> Any:
    """The ``/amo`` sub-app's state (its clients, caches)."""
    for route in app.routes:
        if getattr(route, "path", None) == "/amo":
            return route.app.state  # type: ignore[attr-defined]
    raise AssertionError("no /amo mount")


class Widget:
    """The widget of one amoCRM user: every request with a fresh disposable token minted by the emulator."""

    def __init__(self, client: httpx.AsyncClient, emu: Emu, account: str, user_id: int) -> None:
        self.client = client
        self.emu = emu
        self.account = account
        self.user_id = user_id

    async def token(self, **kw: Any) -> str:
        kw.setdefault("aud", AUDIENCE)
        return await self.emu.disposable_token(account=self.account, user_id=self.user_id, **kw)

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if "X-Auth-Token" not in headers:
            headers["X-Auth-Token"] = await self.token()
        return await self.client.request(method, f"/amo/widget/v1{path}", headers=headers, **kw)


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
        yield c
    await close_shared_pool(app.state.core)


@pytest.fixture
def admin_a(http: httpx.AsyncClient, emu: Emu, world: World) -> Widget:
    return Widget(http, emu, DEMO, 5001)  # an admin in the fixture


@pytest.fixture
def user_a(http: httpx.AsyncClient, emu: Emu, world: World) -> Widget:
    return Widget(http, emu, DEMO, 5002)  # not an admin


@pytest.fixture
def admin_b(http: httpx.AsyncClient, emu: Emu, world: World) -> Widget:
    return Widget(http, emu, OTHER, 6001)


@contextlib.asynccontextmanager
async def serving(asgi: Any, port: int) -> AsyncIterator[str]:
    """``asgi`` over real HTTP on 127.0.0.1:``port`` in this event loop; yields its origin."""
    server = uvicorn.Server(
        uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    await task
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        core = getattr(getattr(asgi, "state", None), "core", None)
        if core is not None:  # the widget's open pop-up streams end, as vpbx serve's exit hook does
            hub_for(core).shutdown()
        async with asyncio.timeout(WAIT_S):
            await task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- the harness in Chromium ------------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_PRESENT:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


async def open_harness(browser: Browser, emu: str, bundle: Path, *, user_id: int = 5001) -> Page:
    """The harness page on the emulator (``emu``: its origin) with the widget ``bundle``, booted."""
    page = await browser.new_page()
    page.set_default_timeout(10_000)
    url = f"{emu}/__emu__/widget-harness?account=demo.amocrm.ru&user_id={user_id}&card=contacts:9001"
    await page.goto(f"{url}&widget={bundle}")
    await page.wait_for_function("window.__emu && window.__emu.ready")
    return page


async def emu_errors(page: Page) -> list[str]:
    errors: list[str] = await page.evaluate("window.__emu.errors")
    return errors
