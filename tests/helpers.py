"""Test helpers: a cabinet client that logs in and posts forms with the CSRF token, and a two-tenant world."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from vpbx.pbx import users

if TYPE_CHECKING:
    from vpbx.app import Core
    from vpbx.store.models import User

CSRF_RE = re.compile(r'data-csrf="([^"]+)"')
LOGIN_CSRF_RE = re.compile(r'name="csrf_token" value="([^"]*)"')


class Cabinet:
    """A browser-like client over ASGI: cookies, the session's CSRF token, form posts."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.csrf = ""

    async def login(self, login: str, password: str) -> httpx.Response:
        page = await self.client.get("/login")
        m = LOGIN_CSRF_RE.search(page.text)
        assert m, "login form has a CSRF field"
        resp = await self.client.post(
            "/login", data={"login": login, "password": password, "csrf_token": m.group(1)}
        )
        if resp.status_code == 303:
            await self.get(resp.headers["location"])
        return resp

    def _remember(self, resp: httpx.Response) -> httpx.Response:
        m = CSRF_RE.search(resp.text)
        if m:
            self.csrf = m.group(1)
        return resp

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return self._remember(await self.client.get(path, **kw))

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, csrf: bool = True
    ) -> httpx.Response:
        body = dict(data or {})
        if csrf:
            body.setdefault("csrf_token", self.csrf)
        return self._remember(await self.client.post(path, data=body))


@dataclass
class Tenant:
    id: Any
    name: str
    admin_login: str
    admin_password: str


async def add_user(core: Core, t: Tenant, name: str, display: str, pin: str, password: str = "") -> User:
    """A user of tenant ``t`` (with a cabinet password when given), committed."""
    async with core.sessions() as s:
        u = await users.create_user(
            s,
            t.id,
            users.UserInput(name=name, display_name=display, pin=pin, web_password=password),
            box=core.box,
        )
        await s.commit()
        return u
