"""The emulator's outer ASGI layer (amocrm.md §4.1, §4.3, §4.6): everything that happens around a route.

In order: addressing (``/_acc/{base_domain}`` prefix or ``Host:``), the loopback-only gate of ``/__emu__``,
``X-Request-Id`` on every answer, outages (``/__emu__/down``), fault rules, the IP block and the per-account
rate limit (API routes only, on the real monotonic clock), then the route; the exchange is logged per account,
counted in the stats, and the webhooks the request fired are delivered after the answer.

Dropping a connection without an answer (``reset_connection``, ``apply_then_drop``) aborts uvicorn's transport
(reached through its ``send``): the client sees the connection close with no status line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from vpbx.amocrm.emulator.world import BODY_CAP, Account, Json, World
from vpbx.logs import get_logger

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = get_logger("vpbx.amocrm.emulator")

ACC_PREFIX = re.compile(r"^/_acc/([A-Za-z0-9.-]+)(/.*)?$")
CONTROL = "/__emu__"
HOOK_TIMEOUT = httpx.Timeout(5.0)
HANG_CAP_S = 3600.0
HANG_POLL_S = 0.1  # a hanging request notices the outage ended this soon
ID_SEGMENT = re.compile(r"/\d+(?=/|$)")
HTML_429 = b"<html><head><title>429 Too Many Requests</title></head><body><h1>429</h1></body></html>"


def _problem(status: int, detail: str, title: str) -> bytes:
    body = {"title": title, "type": f"https://httpstatus.es/{status}", "status": status, "detail": detail}
    return json.dumps(body).encode()


def _is_loopback(scope: Scope) -> bool:
    client = scope.get("client")
    if not client:
        return False
    try:
        return ipaddress.ip_address(str(client[0])).is_loopback
    except ValueError:
        return False


class Captured:
    """What the route answered (status, headers, body up to ``BODY_CAP``)."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()


class EmulatorASGI:
    def __init__(self, world: World, inner: ASGIApp) -> None:
        self.world = world
        self.inner = inner
        self.tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        w = self.world
        path: str = scope["path"]
        host: str | None = None
        m = ACC_PREFIX.match(path)
        if m:
            host, path = m[1].lower(), m[2] or "/"
        else:
            header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower()
            name = header.rsplit(":", 1)[0] if not header.startswith("[") else header
            if name in w.hosts or name in w.moved or name == w.switches.api_domain:
                host = name
        scope = dict(
            scope, path=path, raw_path=path.encode(), state={**(scope.get("state") or {}), "emu_host": host}
        )
        request_id = uuid.uuid4().hex[:16]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(
                    message, headers=[*message.get("headers", []), (b"x-request-id", request_id.encode())]
                )
            await send(message)

        if path == CONTROL or path.startswith(CONTROL + "/"):
            if not _is_loopback(scope):
                await _answer(
                    send_with_id, 403, _problem(403, "The control API is loopback only", "Forbidden")
                )
                return
            try:
                await self.inner(scope, receive, send_with_id)
            finally:
                self._deliver_hooks()  # a user's edit through the control API fires webhooks too
            return
        await self._exchange(scope, receive, send, send_with_id, host, path)

    async def _exchange(
        self, scope: Scope, receive: Receive, raw_send: Send, send: Send, host: str | None, path: str
    ) -> None:
        w = self.world
        started = time.monotonic()
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        acc = w.account_for_host(host) if host else None
        if acc is None and host in w.moved:
            acc = w.accounts.get(w.moved[host])
        method: str = scope["method"]
        cap = Captured()

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                cap.status = message["status"]
                cap.headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body" and len(cap.body) < BODY_CAP:
                cap.body += message.get("body", b"")[: BODY_CAP - len(cap.body)]
            await send(message)

        dropped = False
        try:
            dropped = await self._dispatch(scope, replay, raw_send, capture, host, acc, method, path)
        finally:
            if acc is not None:
                self._record(scope, acc, method, path, bytes(body), cap, started, dropped)
            self._deliver_hooks()
        if dropped:
            await asyncio.sleep(0.01)  # let uvicorn see the connection lost, so it does not try to answer

    async def _dispatch(
        self,
        scope: Scope,
        receive: Receive,
        raw_send: Send,
        send: Send,
        host: str | None,
        acc: Account | None,
        method: str,
        path: str,
    ) -> bool:
        """Run the exchange; True when the connection was dropped without an answer."""
        w = self.world
        if host is not None and w.down_until > time.monotonic():
            if w.down_mode == "hang":  # until the outage ends, or is ended early (``down`` with 0 s)
                give_up = time.monotonic() + HANG_CAP_S
                while (left := min(w.down_until, give_up) - time.monotonic()) > 0:  # noqa: ASYNC110 - a deadline
                    await asyncio.sleep(min(left, HANG_POLL_S))
            await _answer(send, 503, _problem(503, "Service temporarily unavailable", "Service Unavailable"))
            return False
        rule = next((r for r in w.faults if r.matches(method, path, host)), None)
        if rule is not None:
            if rule.times > 0:
                rule.times -= 1
            action = rule.action
            if action.get("delay_ms"):
                await asyncio.sleep(float(action["delay_ms"]) / 1000)
            if action.get("reset_connection"):
                _drop(raw_send)
                return True
            if action.get("status") is not None:
                status = int(action["status"])
                raw = action.get("body", "")
                payload = raw.encode() if isinstance(raw, str) else json.dumps(raw).encode()
                ctype = action.get("content_type")
                if ctype is None and payload:
                    ctype = "application/problem+json" if status >= 400 else "application/hal+json"
                extra = [(str(k).encode(), str(v).encode()) for k, v in (action.get("headers") or {}).items()]
                await _answer(send, status, payload, ctype, extra)
                return False
            if action.get("apply_then_drop"):
                await self.inner(scope, receive, _swallow)
                _drop(raw_send)
                return True
        if acc is not None:
            client = str((scope.get("client") or ("?", 0))[0])
            refusal = self._limit(acc, client, api=path.startswith("/api/"))
            if refusal is not None:
                status, payload, ctype, extra = refusal
                await _answer(send, status, payload, ctype, extra)
                return False
        await self.inner(scope, receive, send)
        return False

    def _limit(
        self, acc: Account, client: str, *, api: bool
    ) -> tuple[int, bytes, str | None, list[tuple[bytes, bytes]]] | None:
        """The IP block (403, every route of an account host) and the sliding 1 s window (429, API routes),
        on the real monotonic clock (§4.3)."""
        w = self.world
        sw = w.switches
        now = time.monotonic()
        if w.blocked.get(client, 0.0) > now:
            return (
                403,
                _problem(403, "Your IP address is blocked", "Forbidden"),
                "application/problem+json",
                [],
            )
        if not api:
            return None
        window = acc.window
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) < sw.rate_limit_rps:
            window.append(now)
            return None
        seconds = w.abuse.setdefault(client, set())
        seconds.add(int(now))
        for s in [s for s in seconds if s <= now - sw.block_window_s]:
            seconds.discard(s)
        if len(seconds) >= sw.block_after_seconds:
            w.blocked[client] = now + sw.block_seconds
            seconds.clear()
        extra = [(b"retry-after", str(sw.retry_after_s).encode())] if sw.retry_after_s is not None else []
        if sw.rate_limit_body == "json":
            return (
                429,
                _problem(429, "Too many requests", "Too Many Requests"),
                "application/problem+json",
                extra,
            )
        if sw.rate_limit_body == "html":
            return 429, HTML_429, "text/html; charset=utf-8", extra
        return 429, b"", None, extra

    def _record(
        self,
        scope: Scope,
        acc: Account,
        method: str,
        path: str,
        req: bytes,
        cap: Captured,
        started: float,
        dropped: bool,
    ) -> None:
        w = self.world
        w.log_seq += 1
        status = 0 if dropped else cap.status
        acc.log.append(
            {
                "seq": w.log_seq,
                "ts": w.now(),
                "method": method,
                "path": path,
                "query": (scope.get("query_string") or b"").decode("latin-1"),
                "status": status,
                "req_body": _decoded(req),
                "resp_body": None if dropped else _decoded(bytes(cap.body)),
                "latency_ms": round((time.monotonic() - started) * 1000, 2),
                "token_jti": (scope.get("state") or {}).get("emu_jti"),
                "dropped": dropped,
            }
        )
        w.count(acc.id, f"{method} {ID_SEGMENT.sub('/{id}', path)}", status)

    # --- webhooks after the answer ------------------------------------------------------------------------
    def _deliver_hooks(self) -> None:
        w = self.world
        pending, w.pending_hooks = w.pending_hooks, []
        for acc, destination, body in pending:
            task = asyncio.get_running_loop().create_task(self._post_hook(acc, destination, body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _post_hook(self, acc: Account, destination: str, body: str) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HOOK_TIMEOUT)
        record: Json = {"destination": destination, "body": body, "at": self.world.now()}
        try:
            resp = await self._http.post(
                destination, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            record["status"] = resp.status_code
        except httpx.HTTPError as e:
            record["error"] = type(e).__name__
            log.info("emulator.webhook_failed", destination=destination, error=type(e).__name__)
        acc.deliveries.append(record)


def _decoded(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


async def _answer(
    send: Send,
    status: int,
    payload: bytes,
    content_type: str | None = "application/problem+json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = list(extra or [])
    if payload and content_type:
        headers.append((b"content-type", content_type.encode()))
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _swallow(_message: Message) -> None:
    return None


def _drop(send: Send) -> None:
    """Close the client's connection without a status line (uvicorn's transport, reached via ``send``)."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("no transport to drop")  # not under uvicorn: the server answers 500
    transport.abort()
