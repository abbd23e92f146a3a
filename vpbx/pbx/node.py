"""The SIP node: transports → parser → transactions → the PBX's request handlers (telephony.md §2, §3).

This is the thin asyncio layer around the sans-I/O cores. It owns the transaction timers, fixes the top Via
of what arrives (``received``/``rport``, RFC 3261 §18.2.1, RFC 3581 §4), answers what it can at once
(OPTIONS, stateless 400s) and hands REGISTER to digest auth and the registrar. INVITE and in-dialog requests
go to a ``CallHandler`` (the B2BUA); until one is plugged in they are refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import functools
import ipaddress
import secrets
import socket
import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, Protocol

from prometheus_client import Counter

from vpbx.app import Core
from vpbx.errors import SipParseError, TransactionError
from vpbx.logs import get_logger
from vpbx.pbx import registrar
from vpbx.pbx.directory import DomainInfo, SipDirectory
from vpbx.pbx.keepalive import KeepAlive
from vpbx.pbx.registrar import LocationStore, MemoryLocationStore
from vpbx.sip import transaction as tx
from vpbx.sip.auth import (
    AuthFailure,
    AuthOk,
    Challenge,
    Credentials,
    DigestAuth,
    auth_header,
)
from vpbx.sip.bans import BanList, MemoryBanList
from vpbx.sip.contact import read_register
from vpbx.sip.flow import Destination
from vpbx.sip.icmp import IcmpError
from vpbx.sip.message import Request, Response, build_response, parse, recover_for_reply, serialize
from vpbx.sip.transaction import (
    Deliver,
    Output,
    Refuse,
    Send,
    StartTimer,
    StopTimer,
    Terminated,
    TransactionKey,
    TransactionTable,
)
from vpbx.sip.transport import Transports, domain_certificates, tls_server_context

log = get_logger("vpbx.sip.node")
security = get_logger("vpbx.security")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, REFER, NOTIFY, INFO, UPDATE"
SUPPORTED = "replaces, norefersub, path"
USER_AGENT = "vpbx"
EXPIRY_SWEEP_S = 5.0  # how often expired bindings are dropped

SIP_REQUESTS = Counter("vpbx_sip_requests_total", "SIP requests received", ["method"])
SIP_PARSE_ERRORS = Counter("vpbx_sip_parse_errors_total", "SIP messages that failed to parse", ["reason"])
SIP_FINAL = Counter("vpbx_sip_final_responses_total", "Final responses sent", ["method", "code_class"])
KNOWN_METHODS = frozenset(ALLOW.replace(" ", "").split(",")) | {"PRACK", "SUBSCRIBE", "MESSAGE", "PUBLISH"}
# ``labels()`` looks its child up under a lock on every call; the children are few, so keep them at hand.
_requests_counter = functools.cache(SIP_REQUESTS.labels)


@functools.cache
def _final_counter(method: str, code_class: int) -> Any:
    return SIP_FINAL.labels(method, f"{code_class}xx")


class CallHandler(Protocol):
    """The B2BUA: INVITEs, CANCELs, ACKs of 2xx and requests inside dialogs."""

    async def on_request(self, node: SipNode, key: TransactionKey | None, request: Request) -> None: ...
    async def on_response(self, node: SipNode, key: TransactionKey, response: Response) -> None: ...
    def on_terminated(self, key: TransactionKey, reason: str) -> None: ...
    async def stop(self, node: SipNode) -> None:
        """The node is stopping: end the live calls (BYE) while the transports still work."""
        ...


class ClientUser(Protocol):
    """Who started a client transaction outside calls (the NAT keep-alive): its responses and its end."""

    def on_response(self, key: TransactionKey, response: Response) -> None: ...
    def on_terminated(self, key: TransactionKey, reason: str) -> None: ...


class SipNode:
    def __init__(
        self,
        core: Core,
        *,
        location: LocationStore | None = None,
        bans: BanList | None = None,
        credentials: Credentials | None = None,
        calls: CallHandler | None = None,
    ) -> None:
        self.core = core
        settings = core.settings
        self.location: LocationStore = location if location is not None else MemoryLocationStore()
        self.keepalive: KeepAlive | None = None
        if settings.sip_keepalive_interval_s > 0:
            self.keepalive = KeepAlive(
                self,
                self.location,
                clock=core.clock,
                interval_s=settings.sip_keepalive_interval_s,
                max_misses=settings.sip_keepalive_max_misses,
            )
            self.location = self.keepalive.watch(self.location)  # it learns each binding saved here
        self.bans: BanList = bans if bans is not None else MemoryBanList(allowlist=settings.sip_allowlist)
        self.directory = SipDirectory(core.sessions, core.config)
        self.credentials: Credentials = credentials if credentials is not None else self.directory
        self.auth = DigestAuth(settings.secret_key.get_secret_value().encode())
        self.calls = calls
        self.table = TransactionTable()
        self.transports = Transports(
            self._receive, on_framing_error=self._framing_error, on_unreachable=self._unreachable
        )
        # running transaction timers by key, then name: a transaction's end cancels its own in O(1)
        self._timers: dict[TransactionKey, dict[str, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._users: dict[TransactionKey, ClientUser] = {}
        self.advertised: tuple[str, int] = ("", 0)
        self.advertised_tls: tuple[str, int] | None = None  # None: no TLS listener

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        s = self.core.settings
        # loaded before the first REGISTER: a restart's re-registration storm finds it in memory
        await self.directory.warm()
        host, port = await self.transports.start(s.sip_host, s.sip_port)
        self.advertised = (s.sip_advertised_host or reachable_host(host), port)
        if s.sip_tls:
            domains = domain_certificates(s.sip_tls_domain_certs_dir) if s.sip_tls_domain_certs_dir else {}
            context = tls_server_context(s.sip_tls_cert, s.sip_tls_key, domains=domains)
            _, tls_port = await self.transports.start_tls(s.sip_host, s.sip_tls_port, context)
            self.advertised_tls = (self.advertised[0], tls_port)
        self._sweeper = asyncio.create_task(self._sweep(), name="sip-expiry-sweep")
        if self.keepalive is not None:
            await self.keepalive.start()
        return host, port

    def advertised_for(self, transport: str) -> tuple[str, int]:
        """Our host and port for Via and Contact on ``transport``: the TLS listener's for TLS."""
        if transport.lower() == "tls" and self.advertised_tls is not None:
            return self.advertised_tls
        return self.advertised

    async def stop(self) -> None:
        if self.calls is not None:
            try:
                await self.calls.stop(self)
            except Exception:
                log.exception("sip.calls_stop_failed")
        if self.keepalive is not None:
            await self.keepalive.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for handles in self._timers.values():
            for handle in handles.values():
                handle.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transports.stop()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_S)
            try:
                for gone in await self.location.expire(self.core.clock.monotonic()):
                    log.info("registration.expired", aor=gone.aor)
            except Exception:
                log.exception("registration.sweep_failed")

    # --- receiving ---------------------------------------------------------------------------------------

    def _receive(self, data: bytes, source: Destination) -> None:
        now = self.core.clock.monotonic()
        if self.bans.is_banned(source.host, now):
            return  # banned sources get silence (telephony.md §3.5)
        try:
            msg = parse(data, stream=source.transport != "udp")
        except SipParseError as e:
            self._bad_message(data, e, source)
            return
        if isinstance(msg, Request):
            _requests_counter(msg.method if msg.method in KNOWN_METHODS else "other").inc()
            self._fix_via(msg, source)
            if msg.method == "REGISTER" and not msg.headers.getlist("Authorization"):
                # Challenged (or refused) statelessly, as Kamailio's sl module does (RFC 3261 §8.2.7): no
                # transaction and no 32 s of Timer J for half of every registration; a retransmission simply
                # gets a fresh challenge.
                self.spawn(self._register(source, msg), "sip-register", eager=True)
                return
            self._run(self.table.on_request(msg, source, now))
        else:
            self._run(self.table.on_response(msg, now))

    def _bad_message(self, data: bytes, e: SipParseError, source: Destination) -> None:
        SIP_PARSE_ERRORS.labels(e.reason).inc()
        security.info("RequestBadFormat", source=source.host, reason=e.reason)
        request = recover_for_reply(data)
        if request is not None and request.method != "ACK":
            self._send(serialize(build_response(request, e.status, headers=self._common())), source)

    def _framing_error(self, _data: bytes, status: int, reason: str, source: Destination) -> None:
        SIP_PARSE_ERRORS.labels(reason).inc()
        security.info("RequestBadFormat", source=source.host, reason=reason)

    @staticmethod
    def _fix_via(request: Request, source: Destination) -> None:
        """``received`` when sent-by is not the source address, and ``rport`` filled (RFC 3581 §4)."""
        vias = request.via
        top = vias[0]
        changes: dict[str, str | None] = {}
        if _host(top.host) != source.host:
            changes["received"] = source.host
        if "rport" in top.parameters and not top.parameters.get("rport"):
            changes["rport"] = str(source.port)
            changes["received"] = source.host
        if changes:
            request.set_top_via(dataclasses.replace(top, parameters=top.parameters.replace(**changes)))

    # --- the transaction adapter ------------------------------------------------------------------------

    def _run(self, outputs: list[Output]) -> None:
        for key, action in outputs:
            match action:
                case Send(data, dest):
                    if not self._send(data, dest, key) and key is not None:
                        self._run(self.table.on_transport_error(key, self.core.clock.monotonic()))
                case StartTimer(name, at):
                    assert key is not None
                    self._start_timer(key, name, at)
                case StopTimer(name):
                    assert key is not None
                    handles = self._timers.get(key)
                    handle = handles.pop(name, None) if handles is not None else None
                    if handle is not None:
                        handle.cancel()
                    if handles is not None and not handles:
                        del self._timers[key]
                case Deliver(message, local):
                    self._deliver(key, message, local)
                case Terminated(reason):
                    assert key is not None
                    for handle in self._timers.pop(key, {}).values():
                        handle.cancel()
                    if (user := self._users.pop(key, None)) is not None:
                        user.on_terminated(key, reason)
                    elif self.calls is not None and key.side == "client":
                        self.calls.on_terminated(key, reason)
                case Refuse(request, dest):
                    self._send(serialize(build_response(request, 503, headers=(("Retry-After", "5"),))), dest)

    def _unreachable(self, error: IcmpError) -> None:
        """A UDP datagram to ``error``'s address drew ICMP: its client transactions fail now (RFC 3261 §18.4).

        Only transactions to that exact address and port; the binding stays (ICMP is not authenticated)."""
        self._run(self.table.on_unreachable(error.host, error.port, self.core.clock.monotonic()))

    def _start_timer(self, key: TransactionKey, name: str, at: float) -> None:
        handles = self._timers.setdefault(key, {})
        old = handles.pop(name, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, at - self.core.clock.monotonic())
        loop = asyncio.get_running_loop()
        handles[name] = loop.call_later(delay, self._fire, key, name)

    def _fire(self, key: TransactionKey, name: str) -> None:
        handles = self._timers.get(key)
        if handles is not None:
            handles.pop(name, None)
            if not handles:
                del self._timers[key]
        self._run(self.table.on_timer(key, name, self.core.clock.monotonic()))

    def _send(self, data: bytes, dest: Destination, key: TransactionKey | None = None) -> bool:
        if key is None or dest.conn_id is not None or dest.transport != "tcp":
            return self.transports.send(data, dest)

        def failed() -> None:  # an outbound TCP connection could not be opened
            self._run(self.table.on_transport_error(key, self.core.clock.monotonic()))

        return self.transports.send(data, dest, failed)

    def respond(
        self,
        key: TransactionKey | Destination,
        request: Request,
        code: int,
        reason: str | None = None,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        to_tag: str | None = None,
        body: bytes = b"",
    ) -> Response:
        """Answer a server transaction's request (the TU side of the table); the response as sent.

        ``key`` may be the flow itself: a stateless answer (RFC 3261 §8.2.7), sent once, never retransmitted.
        """
        response = build_response(
            request, code, reason, to_tag=to_tag or _tag(), headers=(*headers, *self._common()), body=body
        )
        if code >= 200:
            _final_counter(request.method if request.method in KNOWN_METHODS else "other", code // 100).inc()
        if isinstance(key, Destination):
            self._send(serialize(response), key)
        else:
            self._run(self.table.respond(key, response, self.core.clock.monotonic()))
        return response

    def send_request(
        self, request: Request, dest: Destination, *, user: ClientUser | None = None
    ) -> TransactionKey:
        """Start a client transaction for ``request`` (our Via with a fresh branch on top) towards ``dest``.

        Its responses reach ``calls.on_response`` with the key returned here, or ``user`` when given.
        """
        key = tx.client_key(request)
        if key is None:
            raise TransactionError("A request we send carries a Via with a branch and a CSeq")
        if user is not None:
            self._users[key] = user
        self._run(self.table.send_request(request, dest, self.core.clock.monotonic()))
        return key

    def send_stateless(self, data: bytes, dest: Destination) -> bool:
        """Send bytes outside any transaction: the ACK of a 2xx, the UAS core's 2xx retransmissions."""
        return self._send(data, dest)

    def flow_of(self, key: TransactionKey) -> Destination | None:
        """Where a server transaction's request came from (and its responses go)."""
        found = self.table.get(key)
        return found.dest if found is not None else None

    async def authenticate(
        self, key: TransactionKey | Destination, request: Request, realm: str | None, *, fallback_realm: str
    ) -> AuthOk | None:
        """Digest-check ``request`` in ``realm`` (a tenant's domain; None: unknown, challenged all the same).

        Anything but success is answered here — the 401/407 challenge, counted against the source for bans
        (telephony.md §3.5) — and gives None.
        """
        flow = key if isinstance(key, Destination) else self.flow_of(key)
        host = flow.host if flow is not None else ""
        wall = time.time()
        if realm is None:
            # an unknown domain is challenged like an unknown user: nothing tells them apart
            self._challenge(key, request, self.auth.challenge(request.method, fallback_realm, wall))
            return None
        outcome = await self.auth.authenticate(
            request.method,
            request.headers.getlist(auth_header(request.method)),
            realm=realm,
            credentials=self.credentials,
            now=wall,
            source=host,
        )
        if isinstance(outcome, Challenge):
            if self.bans.record_unauthenticated(host, self.core.clock.monotonic()) is not None:
                security.warning("ban.flood", source=host)
            self._challenge(key, request, outcome)
            return None
        if isinstance(outcome, AuthFailure):
            if self.bans.record_failure(host, self.core.clock.monotonic()) is not None:
                security.warning("ban.auth", source=host)
            self._challenge(key, request, outcome.challenge)
            return None
        return outcome

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, *, eager: bool = False) -> None:
        """Run a request handler as a task that the node tracks and cancels on stop.

        ``eager``: run it at once, up to its first real wait; a handler that never waits (a REGISTER answered
        from memory) then costs no task at all. Only for handlers that may run inside the receive path.
        """
        work: Awaitable[None] = coro
        if eager:
            try:
                step = coro.send(None)
            except StopIteration:
                return
            except Exception:
                log.exception("sip.handler_failed", handler=name)
                return
            work = _Resumed(coro, step)

        async def runner() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sip.handler_failed", handler=name)

        task = asyncio.create_task(runner(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if eager:  # cancelled before its first step, the task never resumes the handler: close it there
            task.add_done_callback(lambda _: coro.close())

    @staticmethod
    def _common() -> tuple[tuple[str, str], ...]:
        return (("Server", USER_AGENT),)

    # --- the transaction user ----------------------------------------------------------------------------

    def _deliver(self, key: TransactionKey | None, message: tx.Message, local: bool = False) -> None:
        if not isinstance(message, Request):  # requests reach the TU as parsed, so always ours
            if key is not None and (user := self._users.get(key)) is not None:
                # a failure's own 408/503 is not the peer's answer: the user learns it from on_terminated
                if isinstance(message, Response) and not local:
                    user.on_response(key, message)
                return
            if self.calls is not None and key is not None:
                response = message if isinstance(message, Response) else _typed_response(message)
                if response is not None:
                    self.spawn(self.calls.on_response(self, key, response), "sip-response")
            return
        request = message
        method = request.method
        if key is None:  # an ACK outside any transaction: the ACK of a 2xx
            if self.calls is not None:
                self.spawn(self.calls.on_request(self, None, request), "sip-ack")
            return
        if method == "OPTIONS" and not _to_tag(request):
            self.respond(
                key,
                request,
                200,
                headers=(("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", SUPPORTED)),
            )
        elif method == "REGISTER":
            self.spawn(self._register(key, request), "sip-register", eager=True)
        elif self.calls is not None and method in (
            "INVITE",
            "CANCEL",
            "BYE",
            "REFER",
            "NOTIFY",
            "INFO",
            "UPDATE",
            "OPTIONS",
        ):
            self.spawn(self.calls.on_request(self, key, request), f"sip-{method.lower()}")
        elif method == "CANCEL":
            self.respond(key, request, 481)
        elif method in ("BYE", "INFO", "UPDATE", "NOTIFY", "REFER") or (method == "OPTIONS"):
            self.respond(key, request, 481)
        elif method == "INVITE":
            self.respond(key, request, 480, "Calls Not Available Yet")
        else:
            self.respond(key, request, 405, headers=(("Allow", ALLOW),))

    async def _domain(self, host: str) -> DomainInfo | None:
        """The tenant a request is for: its domain part, or the default domain for address-only peers."""
        name = host.lower().strip("[]")
        domain = await self.directory.domain(name)
        default = self.core.settings.sip_default_domain
        if domain is None and default and _is_address(name):
            domain = await self.directory.domain(default)
        return domain

    async def _register(self, key: TransactionKey | Destination, request: Request) -> None:
        """A REGISTER; ``key`` is the flow itself for one without credentials (answered statelessly)."""
        if isinstance(key, Destination):
            flow = key
        else:
            source = self.table.get(key)
            flow = source.dest if source is not None else Destination("udp", "", 0)
        facts = read_register(request, flow)
        if isinstance(facts, str):
            self.respond(key, request, 400, facts)
            return
        domain = await self._domain(facts.to_host)
        outcome = await self.authenticate(
            key, request, domain.name if domain is not None else None, fallback_realm=facts.to_host
        )
        if outcome is None or domain is None:
            return
        plan = await registrar.register(
            self.location,
            domain.id,
            facts,
            user=outcome.user,
            domain=domain.name,
            now=self.core.clock.monotonic(),
        )
        self.respond(
            key,
            request,
            plan.reply.code,
            plan.reply.reason,
            headers=(*plan.reply.headers, ("Date", _http_date())),
        )
        if plan.added or plan.removed or plan.evicted:  # refreshes are the bulk of the traffic: not logged
            log.info(
                "registration.changed",
                aor=plan.aor,
                bindings=len(plan.bindings),
                added=len(plan.added),
                removed=len(plan.removed) + len(plan.evicted),
            )

    def _challenge(self, key: TransactionKey | Destination, request: Request, challenge: Challenge) -> None:
        self.respond(
            key,
            request,
            challenge.code,
            challenge.reason,
            headers=tuple((challenge.header, v) for v in challenge.values),
        )


class _Resumed:
    """The rest of a coroutine that ``SipNode.spawn`` started eagerly, as an awaitable for a task: it hands
    the future the coroutine is waiting on to the task, and every result or exception back to it."""

    __slots__ = ("_coro", "_step")

    def __init__(self, coro: Coroutine[Any, Any, None], step: Any) -> None:
        self._coro = coro
        self._step = step

    def __await__(self) -> Generator[Any, Any, None]:
        coro, step = self._coro, self._step
        while True:
            try:
                value = yield step
            except BaseException as e:  # cancellation included: the coroutine decides
                try:
                    step = coro.throw(e)
                except StopIteration:
                    return
            else:
                try:
                    step = coro.send(value)
                except StopIteration:
                    return


WILDCARDS = ("", "0.0.0.0", "::")


def reachable_host(bind_host: str) -> str:
    """The address to advertise for a listener on ``bind_host``: itself, or for a wildcard bind the address
    the kernel would send from towards the outside (a UDP ``connect`` sends nothing), else 127.0.0.1.

    Via, Contact and SDP ``c=`` must name an address phones can reach; ``0.0.0.0`` is none. Behind NAT,
    ``VPBX_SIP_ADVERTISED_HOST`` still decides."""
    if bind_host not in WILDCARDS:
        return bind_host
    family = socket.AF_INET6 if bind_host == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"  # documentation addresses
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found = str(s.getsockname()[0])
    except OSError:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return found


def _typed_response(message: tx.Message) -> Response | None:
    """A synthetic response of the transaction layer (408, 503) in the parsed form the TU works with."""
    try:
        parsed = parse(serialize(message))
    except SipParseError:
        return None
    return parsed if isinstance(parsed, Response) else None


def _tag() -> str:
    return secrets.token_hex(8)


def _to_tag(request: Request) -> str | None:
    try:
        tag = request.to_address.parameters.get("tag")
    except (KeyError, ValueError, SipParseError):
        return None
    return tag or None


def _host(host: str) -> str:
    return host.strip("[]").lower()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=2)
def _date_at(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _http_date() -> str:
    """RFC 1123 date for the Date header; formatted once per second."""
    return _date_at(int(time.time()))
