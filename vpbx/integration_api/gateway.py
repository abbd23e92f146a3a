"""The Integration API gateway (integration-api.md §1–§3): an ASGI app mounted at ``/api`` and ``/api-test``.

Every CRM → PBX request passes R1–R11 in the order of §2.3; the first failure decides the answer, and a
rejected request has no side effect. Then the method's handler runs (it does its work in one transaction, so
an unexpected failure — ``500`` — leaves nothing half-done). Each request leaves exactly one trace: an
``ApiLog`` row in the domain's «Лог запросов/ответов» when its X-Client-ID resolves, else one line of the
platform's security log (``api.rejected``). The signing key is never logged; it never travels.

Decisions (ours):

* The abuse guard's ban (§2.3) is checked right after R3, before the X-Client-ID lookup, so a banned address
  costs no database work; unknown paths (R1) and wrong verbs (R2) still answer as such.
* The source IP is the TCP peer; ``X-Forwarded-For`` (rightmost address that is not a trusted proxy) and
  ``X-Forwarded-Proto`` count only when the peer is one of ``settings.trusted_proxies``.
* A body that does not arrive within ``BODY_TIMEOUT_S`` gets ``408`` with ``-1`` (``request-timeout``).
* ``{API}/openapi.json`` (GET, no credentials) is built from the method table.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx import __version__
from vpbx.billing import INTEGRATION_API
from vpbx.billing.service import service
from vpbx.integration_api.core import (
    BAD_JSON,
    BAD_SIGNATURE,
    BODY_TOO_LARGE,
    DOMAIN_MISMATCH,
    INTERNAL,
    METHOD_NOT_ALLOWED,
    SERVICE_DISABLED,
    TLS_REQUIRED,
    UNKNOWN_CLIENT,
    UNKNOWN_METHOD,
    ApiContext,
    ApiError,
    ApiMethod,
    ApiReply,
    bad_field,
    dumps,
    ip_not_allowed,
    loggable_body,
    loggable_headers,
    rate_limited,
    verify,
)
from vpbx.integration_api.logwriter import ApiLogWriter
from vpbx.integration_api.ratelimit import AbuseGuard, MemoryAbuseGuard, MemoryRateLimiter, RateLimiter
from vpbx.logs import get_logger
from vpbx.store.models import ApiSettings, Domain, DomainService

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send

    from vpbx.clock import Clock
    from vpbx.crypto import SecretBox
    from vpbx.settings import Settings

log = get_logger("vpbx.integration_api")

BODY_TIMEOUT_S = 30.0  # the whole request body must arrive within this
JSON_TYPE = "application/json; charset=utf-8"
OPENAPI_PATH = "openapi.json"
ENVELOPE_REF = "#/components/schemas/Envelope"
REQUEST_TIMEOUT = ApiError(408, "-1", "Превышено время ожидания запроса", "request-timeout")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def api_base_url(settings: Settings, *, sandbox: bool = False) -> str:
    """``{API}`` / ``{API_TEST}`` (§1): the configured URL, else ``<public_url>/api[-test]``, else the HTTP
    port's own address."""
    explicit = settings.api_test_url if sandbox else settings.api_url
    if explicit:
        return explicit.rstrip("/")
    suffix = "/api-test" if sandbox else "/api"
    if settings.public_url:
        return settings.public_url.rstrip("/") + suffix
    host = settings.http_host if settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}{suffix}"


def parse_networks(entries: Sequence[str] | str) -> list[IpNetwork]:
    """Addresses and CIDRs (one per line when given as text); raises ValueError on a bad entry."""
    items = entries.split() if isinstance(entries, str) else entries
    return [ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip()]


def ip_in(ip: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


def _from_proxy(scope: Scope, proxies: Sequence[IpNetwork]) -> bool:
    client = scope.get("client")
    return bool(client and proxies and ip_in(client[0], proxies))


def client_ip(scope: Scope, proxies: Sequence[IpNetwork], headers: Mapping[str, str] | None = None) -> str:
    """The request's source IP (§2.4): the TCP peer, or, when the peer is a trusted proxy, the rightmost
    ``X-Forwarded-For`` address that is not one. For the gateway and the routes under it (downloads)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not _from_proxy(scope, proxies):
        return peer
    hops = (headers if headers is not None else _headers(scope)).get("x-forwarded-for", "")
    for hop in reversed(hops.split(",")):
        hop = hop.strip()
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return peer
        if not ip_in(hop, proxies):
            return hop
    return peer


def is_https(scope: Scope, proxies: Sequence[IpNetwork], headers: Mapping[str, str] | None = None) -> bool:
    """Whether the client used HTTPS (§2.5): the request's scheme, or a trusted proxy's X-Forwarded-Proto."""
    if scope.get("scheme") == "https":
        return True
    if _from_proxy(scope, proxies):
        proto = (headers if headers is not None else _headers(scope)).get("x-forwarded-proto", "")
        return proto.split(",")[-1].strip().lower() == "https"
    return False


def openapi_document(methods: Mapping[str, ApiMethod], server_url: str) -> dict[str, object]:
    """An OpenAPI 3.1 description of the methods, built from the method table (§1)."""
    envelope = {
        "type": "object",
        "required": ["result", "resultMessage"],
        "properties": {
            "result": {"type": "string", "description": '"0" = success; see §3 for the codes'},
            "resultMessage": {"type": "string"},
            "error": {"type": "string", "description": "house error id (kebab-case), on refusals"},
            "field": {"type": "string", "description": "the invalid field, on R11"},
        },
        "additionalProperties": True,
    }
    paths: dict[str, object] = {}
    for m in sorted(methods.values(), key=lambda m: m.name):
        paths[f"/{m.name}"] = {
            "post": {
                "operationId": m.name,
                "summary": m.log_label or m.name,
                **({"tags": ["extension"], "x-vpbx-extension": True} if m.extension else {}),
                "description": (
                    f"Body at most {m.max_body} bytes; "
                    f"at most {m.limit} requests per {m.window_s} s per domain."
                ),
                "parameters": [
                    {"name": "X-Client-Sign", "in": "header", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": dict(m.request_schema or {"type": "object"})}},
                },
                "responses": {
                    status: {
                        "description": text,
                        "content": {"application/json": {"schema": {"$ref": ENVELOPE_REF}}},
                    }
                    for status, text in (
                        ("200", "Envelope; result 0 or a business code"),
                        ("400", "R10/R11"),
                        ("401", "R4/R8"),
                        ("403", "R5/R6/R7"),
                        ("413", "R3"),
                        ("429", "R9 (Retry-After)"),
                        ("500", "Internal error"),
                    )
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "vpbx Integration API",
            "version": __version__,
            "description": (
                "Wire-compatible with the «Интеграционный API». X-Client-Sign = lower-case hex "
                "SHA-256(X-Client-ID ‖ raw body bytes ‖ signing key)."
            ),
        },
        "servers": [{"url": server_url}],
        "components": {
            "schemas": {"Envelope": envelope},
            "securitySchemes": {"clientId": {"type": "apiKey", "in": "header", "name": "X-Client-ID"}},
        },
        "security": [{"clientId": []}],
        "paths": paths,
    }


@dataclass(slots=True)
class _Exchange:
    """What the log row of one request needs, filled in as the pipeline goes."""

    path: str
    url: str
    source_ip: str
    headers: dict[str, str]
    method: str = ""
    body: bytes = b""
    body_truncated: bool = False
    domain_id: uuid.UUID | None = None
    verdict: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Caller:
    """What R4–R8 need of the caller, read in one query per request (so a change applies to the next one)."""

    domain_id: uuid.UUID
    domain: str  # the domain's name
    domain_status: str
    enabled: bool
    client_id: str
    sign_key_enc: str  # sealed; opened (and cached by this value) only once R7 passed
    allowlist: str
    tls_required: bool


_CALLER_QUERY = (
    select(
        ApiSettings.domain_id,
        Domain.name,
        Domain.status,
        DomainService.enabled,
        DomainService.counter,
        ApiSettings.client_id,
        ApiSettings.sign_key_enc,
        ApiSettings.allowlist,
        ApiSettings.tls_required,
    )
    .join(Domain, Domain.id == ApiSettings.domain_id)
    .outerjoin(
        DomainService,
        and_(DomainService.domain_id == ApiSettings.domain_id, DomainService.code == INTEGRATION_API),
    )
)
_COUNTED = service(INTEGRATION_API).counted  # as billing.is_enabled reads the row
CACHE_MAX = 10_000  # opened keys and parsed allowlists kept, each (cleared when full)


class ApiGateway:
    """One of ``{API}`` (``sandbox=False``) and ``{API_TEST}`` (``sandbox=True``) as an ASGI app."""

    def __init__(
        self,
        *,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        clock: Clock,
        services: Any,
        methods: Mapping[str, ApiMethod],
        sandbox: bool,
        limiter: RateLimiter | None = None,
        guard: AbuseGuard | None = None,
        raw_routes: Sequence[tuple[str, ASGIApp]] = (),
        log_writer: ApiLogWriter | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.box = box
        self.clock = clock
        self.services = services
        self.methods = methods
        self.sandbox = sandbox
        self.limiter = limiter or MemoryRateLimiter()
        self.guard = guard or MemoryAbuseGuard()
        self.raw_routes = tuple(raw_routes)  # e.g. the recording downloads (GET, own rules, §4.2)
        self.proxies = parse_networks(settings.trusted_proxies)
        self.log_writer = log_writer or ApiLogWriter(sessions)  # not started: rows are written inline
        # keyed by the stored values themselves, which every request reads afresh: a regenerated key or a
        # saved allowlist is a new key here, so a change applies to the very next request, in any process
        self._keys: dict[str, str] = {}  # sealed signing key -> the key
        self._networks: dict[str, list[IpNetwork]] = {}  # allowlist text -> its networks

    # --- ASGI ---------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = _route_path(scope).lstrip("/")
        for prefix, app in self.raw_routes:
            if path.startswith(prefix):
                await app(scope, receive, send)
                return
        if path == OPENAPI_PATH and scope["method"] in ("GET", "HEAD"):
            doc = openapi_document(self.methods, self._base_url(scope))
            await _send(send, 200, json.dumps(doc, ensure_ascii=False).encode(), JSON_TYPE, {})
            return
        started = time.perf_counter()
        headers = _headers(scope)
        x = _Exchange(path=path, url=_url(scope), source_ip=self._source_ip(scope, headers), headers=headers)
        status, body, content_type, extra = await self._answer(x, scope, receive)
        latency_ms = round((time.perf_counter() - started) * 1000)
        await self._log(x, status, body, content_type, latency_ms)
        await _send(send, status, body, content_type, extra)

    async def _answer(
        self, x: _Exchange, scope: Scope, receive: Receive
    ) -> tuple[int, bytes, str, Mapping[str, str]]:
        try:
            reply = await self._pipeline(x, scope, receive)
        except ApiError as e:
            return e.status, dumps(e.body()), JSON_TYPE, e.headers
        except Exception:
            log.exception("api.internal_error", method=x.method or x.path[:64], domain_id=str(x.domain_id))
            return INTERNAL.status, dumps(INTERNAL.body()), JSON_TYPE, {}
        if isinstance(reply.body, bytes):
            return reply.status, reply.body, reply.content_type, reply.headers
        return reply.status, dumps(dict(reply.body)), reply.content_type, reply.headers

    # --- R1–R11 ---------------------------------------------------------------------------------------------

    async def _pipeline(self, x: _Exchange, scope: Scope, receive: Receive) -> ApiReply:
        method = self.methods.get(x.path)
        if method is None:  # R1
            raise UNKNOWN_METHOD.with_payload()
        x.method = method.name
        if scope["method"] != "POST":  # R2
            raise METHOD_NOT_ALLOWED.with_payload()
        await self._read_body(x, receive, method.max_body)  # R3
        now = self.clock.monotonic()
        banned = self.guard.banned_for(x.source_ip, now)
        if banned is not None:
            x.verdict.append("IP banned")
            raise rate_limited(banned)
        caller = await self._caller(x.headers.get("x-client-id", ""))
        if caller is None:  # R4
            self.guard.failure(x.source_ip, now)
            raise UNKNOWN_CLIENT.with_payload()
        x.domain_id = caller.domain_id
        if not caller.enabled or caller.domain_status != "active":  # R5
            raise SERVICE_DISABLED.with_payload()
        if caller.tls_required and not self._https(scope, x.headers):  # R6
            raise TLS_REQUIRED.with_payload()
        allow = self._allowlist(caller.allowlist)
        if allow and not ip_in(x.source_ip, allow):  # R7
            x.verdict.append("IP denied")
            raise ip_not_allowed(x.source_ip)
        x.verdict.append("IP allowed")
        key = self._key(caller.sign_key_enc)
        if not verify(caller.client_id, x.body, key, x.headers.get("x-client-sign")):  # R8
            x.verdict.append("signature FAIL")
            self.guard.failure(x.source_ip, now)
            raise BAD_SIGNATURE.with_payload()
        x.verdict.append("signature OK")
        wait = self.limiter.hit(f"{caller.domain_id}:{method.name}", method.limit, method.window_s, now)
        if wait is not None:  # R9
            raise rate_limited(wait)
        data = _parse_json(x.body)  # R10
        if "domain" in data:  # §1: the caller's own domain only
            given = data["domain"]
            if not isinstance(given, str):
                raise bad_field("domain")
            if given.strip().lower() != caller.domain.lower():
                raise DOMAIN_MISMATCH.with_payload(**method.error_payload)
        ctx = ApiContext(
            domain_id=caller.domain_id,
            domain=caller.domain,
            client_id=caller.client_id,
            source_ip=x.source_ip,
            sandbox=self.sandbox,
            base_url=self._base_url(scope),
            headers=x.headers,
            sessions=self.sessions,
            services=self.services,
        )
        return await method.handler(ctx, data)  # R11 and the method's own codes

    async def _read_body(self, x: _Exchange, receive: Receive, limit: int) -> None:
        """At most limit+1 bytes are kept; a declared or actual size over the limit is R3 at once."""
        declared = x.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BODY_TOO_LARGE.with_payload()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise REQUEST_TIMEOUT.with_payload()
                    chunk: bytes = message.get("body", b"")
                    if size + len(chunk) > limit:
                        chunks.append(chunk[: limit + 1 - size])
                        x.body, x.body_truncated = b"".join(chunks), True
                        raise BODY_TOO_LARGE.with_payload()
                    chunks.append(chunk)
                    size += len(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise REQUEST_TIMEOUT.with_payload() from None
        x.body = b"".join(chunks)

    async def _caller(self, header: str) -> _Caller | None:
        client_id = header.strip().upper()
        if len(client_id) != 32:
            return None
        async with self.sessions() as s:
            row = (await s.execute(_CALLER_QUERY.where(ApiSettings.client_id == client_id))).first()
        if row is None:
            return None
        domain_id, name, status, enabled, counter, cid, key_enc, allowlist, tls = row
        on = (counter or 0) > 0 if _COUNTED else bool(enabled)
        return _Caller(domain_id, name, status, on, cid, key_enc, allowlist, tls)

    def _key(self, sealed: str) -> str:
        key = self._keys.get(sealed)
        if key is None:
            key = self.box.open(sealed)
            if len(self._keys) >= CACHE_MAX:
                self._keys.clear()
            self._keys[sealed] = key
        return key

    def _allowlist(self, text: str) -> list[IpNetwork]:
        networks = self._networks.get(text)
        if networks is None:
            try:
                networks = parse_networks(text)
            except ValueError:  # saved lists are validated; a broken one fails closed
                networks = [ipaddress.ip_network("0.0.0.0/32")]
            if len(self._networks) >= CACHE_MAX:
                self._networks.clear()
            self._networks[text] = networks
        return networks

    # --- addresses ------------------------------------------------------------------------------------------

    def _source_ip(self, scope: Scope, headers: Mapping[str, str]) -> str:
        return client_ip(scope, self.proxies, headers)

    def _https(self, scope: Scope, headers: Mapping[str, str]) -> bool:
        return is_https(scope, self.proxies, headers)

    def _base_url(self, scope: Scope) -> str:
        explicit = self.settings.api_test_url if self.sandbox else self.settings.api_url
        if explicit or self.settings.public_url:
            return api_base_url(self.settings, sandbox=self.sandbox)
        headers = _headers(scope)
        scheme = "https" if self._https(scope, headers) else "http"
        host = headers.get("host", "")
        if not host:
            return api_base_url(self.settings, sandbox=self.sandbox)
        return f"{scheme}://{host}{scope.get('root_path', '')}"

    # --- the trace ------------------------------------------------------------------------------------------

    async def _log(self, x: _Exchange, status: int, body: bytes, content_type: str, latency_ms: int) -> None:
        result = _result_of(body) if content_type.startswith("application/json") else None
        if x.domain_id is None and x.method and status in (405, 413):
            caller = await self._caller(x.headers.get("x-client-id", ""))
            x.domain_id = caller.domain_id if caller else None
        if x.domain_id is None:
            log.warning(
                "api.rejected",
                source_ip=x.source_ip,
                path=x.path[:200],
                status=status,
                result=result,
                client_id=x.headers.get("x-client-id", "")[:64],
                test=self.sandbox,
            )
            return
        request_body, cut = loggable_body(x.body, x.headers.get("content-type", "application/json"))
        response_body, _ = loggable_body(body, content_type)
        try:
            await self.log_writer.write(
                domain_id=x.domain_id,
                at=self.clock.now(),
                direction="in",
                method=x.method,
                url=x.url[:1000],
                source_ip=x.source_ip,
                request_headers=loggable_headers(x.headers),
                request_body=request_body,
                request_truncated=cut or x.body_truncated,
                status=status,
                result=result,
                response_body=response_body,
                latency_ms=latency_ms,
                verdict="; ".join(x.verdict),
                test=self.sandbox,
            )
        except Exception:  # the exchange's answer does not depend on its log row
            log.exception("api.log_failed", method=x.method, domain_id=str(x.domain_id))


def _route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :]
    return path


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _url(scope: Scope) -> str:
    host = _headers(scope).get("host", "")
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope['path']}" + (f"?{query}" if query else "")


def _parse_json(raw: bytes) -> dict[str, Any]:
    """R10: UTF-8 JSON, an object; an empty body is ``{}`` (a method that needs fields then says which)."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BAD_JSON.with_payload() from None
    if not isinstance(data, dict):
        raise BAD_JSON.with_payload()
    return data


def _result_of(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    result = data.get("result") if isinstance(data, dict) else None
    return str(result)[:16] if result is not None else None


async def _send(send: Send, status: int, body: bytes, content_type: str, headers: Mapping[str, str]) -> None:
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def mount_api(app: Any, core: Any, raw_routes: Sequence[tuple[str, ASGIApp]] = ()) -> None:
    """Mount ``{API}`` at ``/api`` and the sandbox ``{API_TEST}`` at ``/api-test`` on the HTTP port (§1).
    ``app`` is the FastAPI app (its ``state`` is the methods' ``ApiContext.services``), ``core`` its Core;
    ``raw_routes`` are the routes outside the method table and its R1–R11 (e.g. the recording links):
    ``(path prefix, ASGI app)`` pairs; such an app finds the Core at ``scope["app"].state.core`` and the
    source IP with ``client_ip``."""
    from vpbx.integration_api import registry

    methods = registry.all_methods()
    # one window per domain and method, and one guard per address, whichever base URL the requests came to
    limiter = MemoryRateLimiter()
    guard = MemoryAbuseGuard()
    # the log rows of both, in batches off the request path once the app's lifespan starts it
    log_writer = ApiLogWriter(core.sessions)
    app.state.api_log = log_writer
    for prefix, sandbox in (("/api-test", True), ("/api", False)):
        gateway = ApiGateway(
            settings=core.settings,
            sessions=core.sessions,
            box=core.box,
            clock=core.clock,
            services=app.state,
            methods=methods,
            sandbox=sandbox,
            limiter=limiter,
            guard=guard,
            raw_routes=raw_routes,
            log_writer=log_writer,
        )
        app.mount(prefix, gateway)
