"""Pop-ups in amoCRM when a call is answered (amocrm.md F13, §3.6, §5.3 ``connected``).

Source: the **live bus**, not the call-events outbox. A pop-up is realtime and best effort: the outbox
consumer (vpbx/amocrm/calls.py) sees events only after the history commits them (in groups) and its next
pass, and after a restart it would replay answers long over; the bus hands ``connected`` over at once.
Nothing durable depends on a pop-up, so a lost one (a bus overflow, a restart) is acceptable.

On ``connected`` of an incoming or outgoing external call of a domain with an active binding the pop-up goes
to the mapped amoCRM user of the answering pin (incoming: ``request_pin``; outgoing: ``from_pin``). The
contact comes from the call's context (``AmoCall``, written by the routing hook) or the phone cache / E4 in
the realtime lane; a known contact's nearest active deal (F13: soonest ``closest_task_at``, else the most
recently updated) is read with E5/E6 in the realtime lane, cached 60 s per contact in the process's cache
that the finish jobs share (vpbx/amocrm/nearest.py), and written into the call's context
(``AmoCall.nearest_lead_id``) so the call's finish reads it no more (§5.9).

Delivery (ours): ``POST /amo/widget/v1/stream-ticket`` (widget token) gives a single-use ticket valid 60 s;
``GET /amo/widget/v1/stream?ticket=`` is a Server-Sent Events stream for the ticket's (account, user):
``event: call`` with the §3.6 JSON, ``event: ping`` every 25 s. Queues are bounded (the oldest pop-up is
dropped). When the user has no open stream and the binding's ``popup_server_fallback`` is on, E16
``POST /api/v2/events`` ``phone_call`` goes out in the background, never holding the call.
Streams and tickets live in this process (``vpbx serve`` is one process; ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select, update

from vpbx.amocrm.api import AmoClients, Json
from vpbx.amocrm.calls import client_digits, user_part
from vpbx.amocrm.client import shared_pool
from vpbx.amocrm.errors import AmoError
from vpbx.amocrm.lookup import PhoneLookup, shared_lookup
from vpbx.amocrm.nearest import NO_ACTIVE_LEAD, Nearest, nearest_for
from vpbx.amocrm.options import options_of
from vpbx.amocrm.per_core import PerCore
from vpbx.amocrm.widget_auth import WidgetCaller, widget_caller
from vpbx.crm.connector import Binding
from vpbx.crm.phone import match_key
from vpbx.logs import get_logger
from vpbx.store.models import AmoCall, CrmBinding, CrmUserMap

if TYPE_CHECKING:
    from vpbx.app import Core
    from vpbx.pbx.bus import CallEvent, EventBus

log = get_logger("vpbx.amocrm.popups")

router = APIRouter(prefix="/widget/v1")

TICKET_TTL_S = 60.0
PING_S = 25.0
STREAM_QUEUE = 16  # pop-ups waiting per stream before the oldest is dropped
MAX_STREAMS_PER_USER = 8  # open amoCRM tabs of one user
MAX_TICKETS = 10_000
MAX_TASKS = 200  # pop-ups being built at once (each waits for amoCRM at most the realtime budget)
LEAD_BUDGET_S = 1.5  # E5 + E6 for the nearest deal
FALLBACK_TIMEOUT_S = 10.0
NEW_CLIENT = "Новый клиент"


# --- pure: the pop-up -----------------------------------------------------------------------------


def contact_url(base_domain: str, contact_id: int) -> str:
    return f"https://{base_domain}/contacts/detail/{contact_id}"


def lead_url(base_domain: str, lead_id: int) -> str:
    return f"https://{base_domain}/leads/detail/{lead_id}"


def popup_payload(
    *,
    session_id: str,
    direction: str,
    client_digits: str,
    line: str,
    extension: str,
    base_domain: str,
    contact: tuple[int, str] | None,
    lead: Json | None,
    at: int,
) -> Json:
    """The §3.6 message; a new client (no contact) has null links and the name «Новый клиент» in ``title``."""
    line_digits = line.lstrip("+")
    out: Json = {
        "event": "answered",
        "session_id": session_id,
        "direction": direction,
        "client_phone": f"+{client_digits}",
        "line": f"+{line_digits}" if line_digits.isdigit() and len(line_digits) > 6 else line_digits,
        "extension": extension,
        "contact": None,
        "lead": None,
        "title": NEW_CLIENT,
        "at": at,
    }
    if contact is not None:
        cid, name = contact
        out["contact"] = {"id": cid, "name": name, "url": contact_url(base_domain, cid)}
        out["title"] = name
        if lead is not None and lead.get("id") is not None:
            lid = int(lead["id"])
            out["lead"] = {"id": lid, "name": str(lead.get("name") or ""), "url": lead_url(base_domain, lid)}
    return out


def sse(event: str, data: Json | None = None) -> bytes:
    body = json.dumps(data if data is not None else {}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {body}\n\n".encode()


# --- the hub: tickets and open streams of this process --------------------------------------------


@dataclass
class _Ticket:
    account_id: int
    user_id: int
    expires: float


@dataclass
class PopupHub:
    """Single-use stream tickets and the open streams per (account, user), with bounded queues."""

    tickets: dict[str, _Ticket] = field(default_factory=dict)
    streams: dict[tuple[int, int], list[asyncio.Queue[Json]]] = field(default_factory=dict)
    closed: bool = False

    @staticmethod
    def _hash(ticket: str) -> str:
        return hashlib.sha256(ticket.encode()).hexdigest()

    def issue(self, account_id: int, user_id: int, now: float) -> str:
        if self.closed:
            raise HTTPException(status_code=503, detail={"error": "stopping"})
        self.tickets = {h: t for h, t in self.tickets.items() if t.expires > now}
        if len(self.tickets) >= MAX_TICKETS:
            raise HTTPException(status_code=429, detail={"error": "too-many-tickets"})
        ticket = secrets.token_urlsafe(24)
        self.tickets[self._hash(ticket)] = _Ticket(account_id, user_id, now + TICKET_TTL_S)
        return ticket

    def redeem(self, ticket: str, now: float) -> tuple[int, int] | None:
        """The ticket's (account, user) once; None when unknown, used or expired."""
        found = self.tickets.pop(self._hash(ticket), None)
        if found is None or found.expires <= now:
            return None
        return found.account_id, found.user_id

    def open(self, account_id: int, user_id: int) -> asyncio.Queue[Json]:
        if self.closed:
            raise HTTPException(status_code=503, detail={"error": "stopping"})
        queues = self.streams.setdefault((account_id, user_id), [])
        if len(queues) >= MAX_STREAMS_PER_USER:
            raise HTTPException(status_code=429, detail={"error": "too-many-streams"})
        queue: asyncio.Queue[Json] = asyncio.Queue(STREAM_QUEUE)
        queues.append(queue)
        return queue

    def close(self, account_id: int, user_id: int, queue: asyncio.Queue[Json]) -> None:
        queues = self.streams.get((account_id, user_id), [])
        with contextlib.suppress(ValueError):
            queues.remove(queue)
        if not queues:
            self.streams.pop((account_id, user_id), None)

    def shutdown(self) -> None:
        """End every open stream (the server is stopping); tickets are void from now on."""
        self.closed = True
        self.tickets.clear()
        for queues in self.streams.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(CLOSE)

    def has_stream(self, account_id: int, user_id: int) -> bool:
        return bool(self.streams.get((account_id, user_id)))

    def push(self, account_id: int, user_id: int, message: Json) -> int:
        """Hand ``message`` to every open stream of the user; the number of streams reached."""
        queues = self.streams.get((account_id, user_id), [])
        for queue in queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(message)
        return len(queues)


CLOSE: Json = {"__close__": True}  # the hub's sentinel: the stream ends (compared by identity)

_HUBS: PerCore[PopupHub] = PerCore()


def hub_for(core: Core) -> PopupHub:
    """The process's hub for ``core`` (the ``/amo`` routes and the runtime part share it)."""
    return _HUBS.get(core, PopupHub)


# --- HTTP: ticket and stream ----------------------------------------------------------------------


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


@router.post("/stream-ticket")
async def stream_ticket(request: Request, caller: Annotated[WidgetCaller, Depends(widget_caller)]) -> Json:
    core = _core(request)
    async with core.sessions() as s:
        active = await s.scalar(
            select(CrmBinding.id).where(
                CrmBinding.crm_kind == "amocrm",
                CrmBinding.external_account_id == caller.account_id,
                CrmBinding.status == "active",
            )
        )
    if active is None:
        raise HTTPException(status_code=409, detail={"error": "binding-inactive"})
    ticket = hub_for(core).issue(caller.account_id, caller.user_id, core.clock.monotonic())
    return {"ticket": ticket, "expires_in": int(TICKET_TTL_S)}


@router.get("/stream")
async def stream(request: Request, ticket: Annotated[str, Query(max_length=100)] = "") -> StreamingResponse:
    core = _core(request)
    hub = hub_for(core)
    who = hub.redeem(ticket, core.clock.monotonic()) if ticket else None
    if who is None:
        raise HTTPException(status_code=401, detail={"error": "ticket-invalid"})
    account_id, user_id = who
    queue = hub.open(account_id, user_id)
    ping_s = float(getattr(request.app.state, "amo_popup_ping_s", PING_S))

    async def events() -> AsyncIterator[bytes]:
        try:
            yield sse("hello", {"account_id": account_id, "user_id": user_id})
            while True:
                try:
                    async with asyncio.timeout(ping_s):
                        message = await queue.get()
                except TimeoutError:
                    yield sse("ping")
                    continue
                if message is CLOSE:
                    return
                yield sse("call", message)
        finally:
            hub.close(account_id, user_id, queue)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


# --- the runtime part: connected → pop-up ---------------------------------------------------------


SHOWN_MAX = 10_000  # (session, user) pairs remembered so a repeated ``connected`` shows no second pop-up


class Popups:
    """A part of ``AmoRuntime``: reacts to ``connected`` on the bus and pushes the pop-up."""

    def __init__(
        self,
        core: Core,
        *,
        bus: EventBus | None,
        clients: AmoClients | None = None,
        lookup: PhoneLookup | None = None,
    ) -> None:
        self.core = core
        self.bus = bus
        self.clients: AmoClients = clients if clients is not None else shared_pool(core)
        self.hub = hub_for(core)
        # the routing hook's (``shared_lookup``) in ``vpbx serve``: its failures make these lookups cache-only
        self.lookup = lookup if lookup is not None else PhoneLookup(core.sessions, self.clients, core.clock)
        self.nearest_cache = nearest_for(core)
        self._shown: dict[tuple[str, int], None] = {}  # insertion-ordered, the oldest dropped first
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_runtime(cls, runtime: Any) -> Popups:
        bus = getattr(runtime.app.state, "bus", None) if runtime.app is not None else None
        clients = getattr(runtime, "clients", None)
        lookup = shared_lookup(runtime.core, clients) if clients is not None else None
        return cls(runtime.core, bus=bus, clients=clients, lookup=lookup)

    async def start(self) -> None:
        if self.bus is not None:
            self.bus.subscribe("amocrm-popups", self.on_event)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.lookup.stop()

    def _spawn(self, coro: Coroutine[Any, Any, object], name: str) -> None:
        if len(self._tasks) >= MAX_TASKS:
            coro.close()
            log.warning("amo.popup_dropped", why="busy")
            return

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as e:  # best effort: a pop-up never breaks anything else
                log.warning("amo.popup_failed", error=repr(e)[:300])

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Tests: wait for the pop-ups and fallbacks in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def on_event(self, event: CallEvent) -> None:
        if event.state != "connected" or event.type not in ("incoming", "outbound"):
            return
        if event.call_kind == "autoinformer":
            return
        self._spawn(self.handle(event), name=f"amo-popup:{event.session_id}")

    async def handle(self, event: CallEvent) -> Json | None:
        """Build and deliver the pop-up of one ``connected``; the message, or None when none is due."""
        if event.type == "incoming":
            direction, pin, client = "incoming", event.request_pin, client_digits(event.from_number)
        else:
            direction, pin, client = "outgoing", event.from_pin, client_digits(event.request_number)
        if not pin or client is None:
            return None
        async with self.core.sessions() as s:
            row = await s.scalar(
                select(CrmBinding).where(
                    CrmBinding.domain_id == event.domain_id,
                    CrmBinding.crm_kind == "amocrm",
                    CrmBinding.status == "active",
                )
            )
            if row is None:
                return None
            user_id = await s.scalar(
                select(CrmUserMap.crm_user_id).where(
                    CrmUserMap.binding_id == row.id, CrmUserMap.extension == pin
                )
            )
            if user_id is None:
                return None
            context = await s.get(AmoCall, (row.id, str(event.session_id)))
            binding = Binding.of(row)
            options = options_of(row.options)
        shown = (str(event.session_id), int(user_id))
        if shown in self._shown:  # back with the same manager after a transfer: already on the screen
            return None
        self._shown[shown] = None
        while len(self._shown) > SHOWN_MAX:
            del self._shown[next(iter(self._shown))]
        contact: tuple[int, str] | None = None
        hint = (context.card_hint if context is not None else None) or {}
        if context is not None and context.contact_id is not None:
            contact = (int(context.contact_id), context.contact_name)
        elif hint.get("type") == "contacts" and str(hint.get("id", "")).isdigit():
            contact = (int(hint["id"]), "")  # click-to-call from the contact's card (§3.5); E5 names it
        else:
            key = match_key(client)
            if key:
                found = await self.lookup.realtime(
                    binding, key, options.lookup_timeout_ms / 1000, counts=False
                )
                if found.contact is not None:
                    contact = (found.contact.id, found.contact.name)
        lead: Json | None = None
        if contact is not None:
            known = await self.nearest(binding, contact[0])
            if known is not None:
                lead = known.lead
                if context is not None and context.contact_id == contact[0]:
                    await self._remember(binding, str(event.session_id), contact[0], known)
            if not contact[1]:
                contact = (contact[0], (known.name if known is not None else None) or "")
        line = event.line or (context.line if context is not None else "") or ""
        if not line and direction == "incoming":
            line = user_part(event.request_number)
        message = popup_payload(
            session_id=str(event.session_id),
            direction=direction,
            client_digits=client,
            line=line,
            extension=pin,
            base_domain=binding.base_domain,
            contact=contact,
            lead=lead,
            at=int(event.timestamp.timestamp()),
        )
        reached = self.hub.push(binding.account_id, int(user_id), message)
        log.info("amo.popup", session_id=event.session_id, user=user_id, streams=reached)
        if not reached and options.popup_server_fallback:
            self._spawn(
                self.fallback(binding, int(user_id), client), name=f"amo-popup-e16:{event.session_id}"
            )
        return message

    async def nearest(self, b: Binding, contact_id: int) -> Nearest | None:
        """The contact's name and nearest active deal (E5 + E6, realtime lane), from the process's 60 s cache
        when there; None on any failure."""
        cached = self.nearest_cache.cached(b.id, contact_id)
        if cached is not None:
            return cached
        api = self.clients.for_account(b.account_id)
        deadline = asyncio.get_running_loop().time() + LEAD_BUDGET_S
        try:
            async with asyncio.timeout(LEAD_BUDGET_S):
                known, _, _ = await self.nearest_cache.read(
                    api, b.id, contact_id, lane="realtime", deadline=deadline
                )
        except (AmoError, OSError, TimeoutError) as e:
            log.info("amo.popup_lead_failed", error=type(e).__name__)
            return None
        return known

    async def _remember(self, b: Binding, session_id: str, contact_id: int, known: Nearest) -> None:
        """The call's finish uses this read (§5.9: E5/E6 once per call): ``AmoCall.nearest_lead_id``, if
        the context still names this contact."""
        lead_id = known.lead_id if known.lead_id is not None else NO_ACTIVE_LEAD
        async with self.core.sessions() as s, s.begin():
            await s.execute(
                update(AmoCall)
                .where(
                    AmoCall.binding_id == b.id,
                    AmoCall.session_id == session_id,
                    AmoCall.contact_id == contact_id,
                )
                .values(nearest_lead_id=lead_id)
            )

    async def fallback(self, b: Binding, user_id: int, client: str) -> None:
        """E16 ``phone_call`` for ``user_id`` (background lane): amoCRM draws its own card."""
        api = self.clients.for_account(b.account_id)
        async with asyncio.timeout(FALLBACK_TIMEOUT_S):
            await api.add_events_v2(
                [{"type": "phone_call", "phone_number": f"+{client}", "users": [user_id]}]
            )
        log.info("amo.popup_fallback", user=user_id)


__all__ = [
    "NEW_CLIENT",
    "PopupHub",
    "Popups",
    "contact_url",
    "hub_for",
    "lead_url",
    "popup_payload",
    "router",
]
