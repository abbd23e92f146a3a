"""The amoCRM emulator for tests (amocrm.md §4): a real HTTP server (uvicorn, in this process) on a free
loopback port, with one in-memory world per ``async with``.

Offers: ``emulator(fixture=DEMO_FIXTURE, redirect_uri=…, disconnect_hook=…, **switches)`` → ``Emu`` with
``url``, ``api_url_template``, ``world`` (the live state), ``client_id``/``client_secret``, ``control(method,
path, json=…)``, ``state``, ``log``, ``stats``, ``disposable_token``, ``install``, ``uninstall``,
``token_pair`` (a code exchanged at the token endpoint), ``api(account, token)`` (an httpx client on the
account's host), ``advance``, ``fault``, ``clear_faults``, ``down``, ``set_switches``, ``set_integration``,
``flags``, ``wait_deliveries``; ``receiver()`` (a loopback endpoint keeping what arrives: OAuth redirects,
disconnect hooks, webhooks); ``DEMO_FIXTURE`` (§4.1's fixture as a dict; copy before changing it).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from vpbx.amocrm.emulator import World, build_app, make_world, read_fixture

DEMO_FIXTURE: dict[str, Any] = read_fixture()
DEMO = "demo.amocrm.ru"
OTHER = "other.amocrm.ru"
WAIT_S = 15.0
TIMEOUT = httpx.Timeout(10.0)


@dataclass
class Emu:
    url: str
    world: World
    http: httpx.AsyncClient

    @property
    def api_url_template(self) -> str:
        return f"{self.url}/_acc/{{base_domain}}"

    def account_url(self, account: str = DEMO) -> str:
        return f"{self.url}/_acc/{account}"

    @property
    def client_id(self) -> str:
        return next(iter(self.world.integrations.values())).client_id

    @property
    def client_secret(self) -> str:
        return next(iter(self.world.integrations.values())).client_secret

    async def control(self, method: str, path: str, **kwargs: Any) -> Any:
        """A ``/__emu__`` call; raises on an error status, answers the JSON body."""
        resp = await self.http.request(method, f"{self.url}{path}", **kwargs)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    async def state(self, account: str = DEMO) -> dict[str, Any]:
        out: dict[str, Any] = await self.control("GET", "/__emu__/state", params={"account": account})
        return out

    async def log(self, account: str = DEMO, since: int = 0) -> list[dict[str, Any]]:
        out = await self.control("GET", "/__emu__/log", params={"account": account, "since": since})
        entries: list[dict[str, Any]] = out["entries"]
        return entries

    async def stats(self, account: str = DEMO) -> dict[str, Any]:
        out: dict[str, Any] = await self.control("GET", "/__emu__/stats", params={"account": account})
        return out

    async def disposable_token(
        self,
        *,
        account: str = DEMO,
        user_id: int | None = None,
        is_admin: bool | None = None,
        aud: str = "",
        ttl: int = 600,
        client_id: str | None = None,
    ) -> str:
        body = {"account": account, "user_id": user_id, "is_admin": is_admin, "aud": aud, "ttl": ttl}
        if client_id:
            body["client_id"] = client_id
        out = await self.control("POST", "/__emu__/disposable-token", json=body)
        token: str = out["token"]
        return token

    async def install(self, account: str = DEMO, **extra: Any) -> dict[str, Any]:
        """The widget-install play: a code sent to the integration's ``redirect_uri`` (``call=False``: only
        issued and returned)."""
        out: dict[str, Any] = await self.control(
            "POST", "/__emu__/install", json={"account": account, **extra}
        )
        return out

    async def uninstall(self, account: str = DEMO, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = await self.control(
            "POST", "/__emu__/uninstall", json={"account": account, **extra}
        )
        return out

    async def token_pair(self, account: str = DEMO, user_id: int | None = None) -> dict[str, Any]:
        """An access/refresh pair the way the PBX gets one: a fresh code exchanged at the token endpoint."""
        integ = next(iter(self.world.integrations.values()))
        issued = await self.install(account, call=False, user_id=user_id)
        resp = await self.http.post(
            f"{self.account_url(account)}/oauth2/access_token",
            json={
                "client_id": integ.client_id,
                "client_secret": integ.client_secret,
                "grant_type": "authorization_code",
                "code": issued["code"],
                "redirect_uri": integ.redirect_uri,
            },
        )
        resp.raise_for_status()
        pair: dict[str, Any] = resp.json()
        return pair

    def api(self, account: str = DEMO, token: str | None = None) -> httpx.AsyncClient:
        """An httpx client on the account's host (``/_acc/{account}``), with the Bearer token if given."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.account_url(account), headers=headers, timeout=TIMEOUT)

    async def advance(self, seconds: float) -> None:
        await self.control("POST", "/__emu__/clock/advance", json={"seconds": seconds})

    async def fault(
        self,
        *,
        method: str | None = None,
        path_regex: str | None = None,
        account: str | None = None,
        times: int = 1,
        **action: Any,
    ) -> dict[str, Any]:
        match = {"method": method, "path_regex": path_regex, "account": account}
        body = {"match": match, "action": action, "times": times}
        out: dict[str, Any] = await self.control("POST", "/__emu__/faults", json=body)
        return out

    async def clear_faults(self) -> None:
        await self.control("DELETE", "/__emu__/faults")

    async def down(self, seconds: float, mode: str = "503") -> None:
        await self.control("POST", "/__emu__/down", json={"seconds": seconds, "mode": mode})

    async def set_switches(self, **switches: Any) -> None:
        await self.control("POST", "/__emu__/switches", json=switches)

    async def set_integration(self, **fields: Any) -> None:
        """``redirect_uri=``, ``disconnect_hook=``, ``client_secret=`` of the (first) integration."""
        await self.control("POST", "/__emu__/integrations", json=fields)

    async def flags(self, account: str = DEMO, **flags: bool) -> None:
        await self.control("POST", f"/__emu__/accounts/{account}/flags", json=flags)

    async def wait_deliveries(
        self, account: str = DEMO, count: int = 1, timeout_s: float = WAIT_S
    ) -> list[Any]:
        """Webhook deliveries made so far once there are at least ``count``."""
        acc = self.world.account_named(account)
        async with asyncio.timeout(timeout_s):
            while len(acc.deliveries) < count:  # noqa: ASYNC110 - deliveries are made by the server's tasks
                await asyncio.sleep(0.01)
        return list(acc.deliveries)


@contextlib.asynccontextmanager
async def emulator(
    fixture: dict[str, Any] | None = None,
    *,
    redirect_uri: str | None = None,
    disconnect_hook: str | None = None,
    port: int = 0,
    **switches: Any,
) -> AsyncIterator[Emu]:
    """The emulator serving ``fixture`` (the demo fixture by default) on 127.0.0.1."""
    doc = copy.deepcopy(fixture if fixture is not None else DEMO_FIXTURE)
    for integ in doc.get("integrations", [])[:1]:
        if redirect_uri is not None:
            integ["redirect_uri"] = redirect_uri
        if disconnect_hook is not None:
            integ["disconnect_hook"] = disconnect_hook
    world = make_world(doc, switches=switches)
    app = build_app(world)
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
    )
    task = asyncio.create_task(server.serve(), name="amo-emulator")
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(timeout=TIMEOUT) as http:
            yield Emu(url=f"http://127.0.0.1:{bound}", world=world, http=http)
    finally:
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(task, return_exceptions=True)
        task.cancel()
        await app.aclose()


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP endpoint that answers 200 to everything and keeps what arrived (OAuth redirect targets,
    disconnect hooks, webhook destinations)."""

    url: str = ""
    seen: list[Received] = field(default_factory=list)
    status: int = 200

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        self.seen.append(
            Received(
                method=scope["method"],
                path=scope["path"],
                query=scope["query_string"].decode(),
                headers={k.decode().lower(): v.decode() for k, v in scope["headers"]},
                body=body,
            )
        )
        await send(
            {"type": "http.response.start", "status": self.status, "headers": [(b"content-length", b"2")]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_for(self, count: int, timeout_s: float = WAIT_S) -> list[Received]:
        async with asyncio.timeout(timeout_s):
            while len(self.seen) < count:  # noqa: ASYNC110 - requests arrive on the server's tasks
                await asyncio.sleep(0.01)
        return list(self.seen)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver()
    server = uvicorn.Server(uvicorn.Config(rx, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(), name="amo-receiver")
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        rx.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        yield rx
    finally:
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(task, return_exceptions=True)
        task.cancel()
