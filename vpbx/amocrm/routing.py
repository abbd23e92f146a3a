"""The ИМК («Интеллектуальный менеджер контактов», amocrm.md F9, §5.3): the engine's routing hook for amoCRM.

Asked before an incoming call is routed (``b2bua.routing_hooks``), it answers only for a domain with an active
binding whose active scenario holds the called line and has smart routing on. Then:

1. the caller is looked up (``vpbx.amocrm.lookup``: cache, else E4 within the binding's budget);
2. a contact whose responsible manager is not excluded → the manager's mapped extension, rung for
   ``smart_ring_timeout_s`` (``RoutingAnswer.overflow_after_s``), then the PBX rules;
3. abnormal (ours): the responsible is unmapped, inactive in amoCRM, or the extension is gone, busy,
   unregistered, on DND (``vpbx.pbx.dnd``) → the fallback manager's extension; if that one cannot take the
   call either → the rules;
4. no contact, no responsible, an excluded responsible → the rules;
5. the contact's name is the display name whenever a contact is found, even when the rules route.

The decision (step responsible / fallback / rules, why, pin) and the lookup are written to the call's
``AmoCall`` row (only this module's columns; amojobs owns the rest of the row). A busy extension is one with a
live call; a user on DND counts before busy and unregistered (their phones would not ring anyway).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.amocrm.api import AmoClients
from vpbx.amocrm.hooks import WebhookSync
from vpbx.amocrm.lookup import Contact, LookupResult, Outcome, PhoneLookup, shared_lookup
from vpbx.amocrm.options import options_of
from vpbx.amocrm.scenario import ScenarioDocument
from vpbx.crm.connector import Binding
from vpbx.crm.phone import match_key
from vpbx.logs import get_logger
from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery
from vpbx.pbx.registrar import aor_for
from vpbx.store.models import AmoCall, AmoScenario, AmoScenarioLine, CrmBinding, CrmUserMap, DomainId, User

if TYPE_CHECKING:
    from vpbx.app import Core
    from vpbx.pbx.calls import CallRegistry

log = get_logger("vpbx.amocrm.routing")

HOOK_NAME = "amocrm"
USERS_FRESH_S = 600.0  # E1 is cached 10 min (§2.3)
BUSY_STATES = ("connected", "held")
DECISION_MARGIN_S = 0.4  # the engine's hook deadline minus the lookup budget: the decision and its reads

Step = Literal["responsible", "fallback", "rules"]
ExtState = Literal["free", "busy", "unregistered", "dnd", "missing"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Which step decided, why, and the extension to ring (None: the rules)."""

    step: Step
    why: str
    pin: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "why": self.why, "pin": self.pin}


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """What the decision needs, read beforehand (so ``decide`` is pure)."""

    contact: Contact | None
    lookup: Outcome
    excluded: frozenset[int]
    mapping: Mapping[int, str]  # amoCRM user id → extension
    inactive: frozenset[int]  # amoCRM users with rights.is_active = false
    fallback_user_id: int | None
    states: Mapping[str, ExtState]  # extension → whether it can take the call now


def _user_problem(user_id: int, facts: Facts, who: str) -> tuple[str | None, str | None]:
    """(extension, None) when ``user_id``'s extension can take the call, else (None, why)."""
    if user_id in facts.inactive:
        return None, f"{who}-inactive"
    pin = facts.mapping.get(user_id)
    if pin is None:
        return None, f"{who}-unmapped"
    state = facts.states.get(pin, "missing")
    if state == "missing":
        return None, f"{who}-extension-gone"
    if state != "free":
        return None, f"{who}-{state}"
    return pin, None


def decide(facts: Facts) -> Route:
    """F9's decision table (ours where the spec says so)."""
    contact = facts.contact
    if contact is None:
        return Route(step="rules", why="no-contact" if facts.lookup == "miss" else "lookup-unknown")
    responsible = contact.responsible_user_id
    if responsible is None:
        return Route(step="rules", why="no-responsible")
    if responsible in facts.excluded:
        return Route(step="rules", why="responsible-excluded")
    pin, problem = _user_problem(responsible, facts, "responsible")
    if pin is not None:
        return Route(step="responsible", why="contact-responsible", pin=pin)
    assert problem is not None
    if facts.fallback_user_id is None:
        return Route(step="rules", why=f"{problem}; fallback-unset")
    fallback_pin, fallback_problem = _user_problem(facts.fallback_user_id, facts, "fallback")
    if fallback_pin is not None:
        return Route(step="fallback", why=problem, pin=fallback_pin)
    return Route(step="rules", why=f"{problem}; {fallback_problem}")


async def active_binding(s: AsyncSession, domain_id: uuid.UUID) -> CrmBinding | None:
    """The domain's active amoCRM binding (at most one)."""
    row: CrmBinding | None = await s.scalar(
        select(CrmBinding).where(
            CrmBinding.domain_id == domain_id,
            CrmBinding.status == "active",
            CrmBinding.crm_kind == "amocrm",
        )
    )
    return row


async def scenario_for_line(s: AsyncSession, binding_id: uuid.UUID, line: str) -> AmoScenario | None:
    """The binding's active scenario that has ``line`` (E.164, with or without "+"), first by position."""
    digits = line.lstrip("+")
    scenario: AmoScenario | None = await s.scalar(
        select(AmoScenario)
        .join(AmoScenarioLine, AmoScenarioLine.scenario_id == AmoScenario.id)
        .where(
            AmoScenario.binding_id == binding_id,
            AmoScenario.is_active.is_(True),
            AmoScenarioLine.line.in_((digits, f"+{digits}")),
        )
        .order_by(AmoScenario.position, AmoScenario.id)
        .limit(1)
    )
    return scenario


async def extension_states(
    core: Core, calls: CallRegistry, domain_id: DomainId, domain: str, wanted: set[str]
) -> dict[str, ExtState]:
    """Whether each extension of ``wanted`` can take a call now (DND, the registrar and the live calls)."""
    if not wanted:
        return {}
    async with core.sessions() as s:
        rows = (
            await s.execute(
                select(User.pin, User.dnd).where(User.domain_id == domain_id, User.pin.in_(wanted))
            )
        ).all()
    existing = {r.pin for r in rows}
    on_dnd = {r.pin for r in rows if r.dnd}
    live = calls.snapshot(domain_id)
    busy = {c.from_pin for c in live} | {c.to_pin for c in live if c.state in BUSY_STATES}
    now = core.clock.monotonic()
    states: dict[str, ExtState] = {}
    for pin in wanted:
        if pin not in existing:
            states[pin] = "missing"
            continue
        if pin in on_dnd:
            states[pin] = "dnd"
            continue
        bindings = await core.location.lookup(domain_id, aor_for(pin, domain))
        if not any(b.expires_at > now for b in bindings):
            states[pin] = "unregistered"
        elif pin in busy:
            states[pin] = "busy"
        else:
            states[pin] = "free"
    return states


# --- the hook -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Setup:
    binding: Binding
    scenario_id: int
    document: ScenarioDocument
    budget_s: float
    ring_s: int
    mapping: dict[int, str]


class AmoRoutingHook:
    """``b2bua.routing_hooks`` entry ``("amocrm", hook)``; also a runtime part (``start``/``stop``)."""

    def __init__(
        self,
        core: Core,
        clients: AmoClients,
        *,
        b2bua: Any = None,
        app: Any = None,
        lookup: PhoneLookup | None = None,
        calls: CallRegistry | None = None,
        owned: Any = None,
        webhooks: WebhookSync | None = None,
    ) -> None:
        self.core = core
        self.clients = clients
        self.b2bua = b2bua
        self.app = app  # the main app: the /amo sub-app gets the lookup (webhooks re-read through it)
        self._owned = owned  # a client pool this part made, closed on stop
        self.webhooks = webhooks  # E17 subscriptions kept in line with the bindings (same client pool)
        self.lookup = lookup or PhoneLookup(core.sessions, clients, core.clock)
        self.calls = calls if calls is not None else (b2bua.registry if b2bua is not None else core.calls)
        self._inactive: dict[int, tuple[float, frozenset[int]]] = {}  # account → (read at, inactive users)
        self._writes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sub = _amo_sub_app(self.app)
        if sub is not None:
            sub.state.amo_lookup = self.lookup
        if self.b2bua is not None:
            self.b2bua.routing_hooks.append((HOOK_NAME, self))
        if self.webhooks is not None:
            await self.webhooks.start()

    async def stop(self) -> None:
        if self.b2bua is not None:
            self.b2bua.routing_hooks[:] = [(n, h) for n, h in self.b2bua.routing_hooks if h is not self]
        if self.webhooks is not None:
            await self.webhooks.stop()
        await self.lookup.stop()
        await asyncio.gather(*list(self._writes), return_exceptions=True)
        if self._owned is not None:
            await self._owned.aclose()

    async def __call__(self, query: RoutingQuery) -> RoutingAnswer | None:
        async with self.core.sessions() as s:
            setup = await self._setup(s, query)
        if setup is None:
            return None
        key = match_key(query.from_number) if query.from_number else None
        if key is None:
            result = LookupResult(outcome="unknown", source="invalid")  # hidden or odd number: no lookup
        else:
            result = await self.lookup.realtime(setup.binding, key, setup.budget_s)
        facts = Facts(
            contact=result.contact,
            lookup=result.outcome,
            excluded=frozenset(setup.document.smart_routing.excluded_user_ids),
            mapping=setup.mapping,
            inactive=self._inactive_users(setup.binding),
            fallback_user_id=setup.binding.fallback_user_id,
            states=await self._states(query, setup, result.contact),
        )
        route = decide(facts)
        log.info(
            "amocrm.route",
            session_id=query.session_id,
            step=route.step,
            why=route.why,
            pin=route.pin,
            lookup=result.outcome,
            source=result.source,
        )
        self._record(query, setup, result, route)
        name = result.contact.name if result.contact is not None else ""
        if route.pin is None:
            return RoutingAnswer(display_name=name) if name else None
        return RoutingAnswer(pin=route.pin, display_name=name, overflow_after_s=setup.ring_s)

    async def _setup(self, s: AsyncSession, query: RoutingQuery) -> _Setup | None:
        row = await active_binding(s, query.domain_id)
        if row is None:
            return None
        scenario = await scenario_for_line(s, row.id, query.request_number)
        if scenario is None:
            return None
        try:
            document = ScenarioDocument.model_validate(scenario.document or {})
        except ValueError:
            log.warning("amocrm.scenario_unreadable", scenario=scenario.id)
            return None
        if not document.smart_routing.enabled:
            return None
        options = options_of(row.options)
        raw_budget = (row.options or {}).get("lookup_timeout_ms")
        budget_ms = (
            options.lookup_timeout_ms
            if raw_budget is not None
            else self.core.settings.amocrm.lookup_timeout_ms
        )
        mapping = {
            m.crm_user_id: m.extension
            for m in await s.scalars(select(CrmUserMap).where(CrmUserMap.binding_id == row.id))
        }
        return _Setup(
            binding=Binding.of(row),
            scenario_id=scenario.id,
            document=document,
            budget_s=self._budget(budget_ms / 1000),
            ring_s=options.smart_ring_timeout_s,
            mapping=mapping,
        )

    def _budget(self, wanted_s: float) -> float:
        """The lookup's budget, inside the engine's wait for its hooks: the decision must still be made."""
        cap = getattr(self.b2bua, "routing_hook_deadline_s", None)
        if isinstance(cap, int | float):
            return max(0.1, min(wanted_s, float(cap) - DECISION_MARGIN_S))
        return wanted_s

    # -- facts --

    async def _states(
        self, query: RoutingQuery, setup: _Setup, contact: Contact | None
    ) -> dict[str, ExtState]:
        """The state of the extensions the decision may pick: the responsible's and the fallback's."""
        if contact is None:
            return {}
        wanted = {
            setup.mapping[u]
            for u in (contact.responsible_user_id, setup.binding.fallback_user_id)
            if u is not None and u in setup.mapping
        }
        return await extension_states(self.core, self.calls, query.domain_id, query.domain, wanted)

    def _inactive_users(self, b: Binding) -> frozenset[int]:
        """amoCRM users marked inactive, as last read (E1, 10 min); a stale or missing list is re-read in the
        background and, until then, everybody counts as active."""
        known = self._inactive.get(b.account_id)
        now = self.core.clock.monotonic()
        if known is None or now - known[0] >= USERS_FRESH_S:
            self._inactive[b.account_id] = (now, known[1] if known else frozenset())
            self.lookup.spawn(self._read_users(b.account_id), "amo-routing-users")
        return self._inactive[b.account_id][1]

    async def _read_users(self, account_id: int) -> None:
        async with asyncio.timeout(30):
            users = await self.clients.for_account(account_id).users()
        inactive = frozenset(
            int(u["id"])
            for u in users
            if isinstance(u.get("id"), int) and (u.get("rights") or {}).get("is_active") is False
        )
        self._inactive[account_id] = (self.core.clock.monotonic(), inactive)

    # -- the call's context --

    def _record(self, query: RoutingQuery, setup: _Setup, result: LookupResult, route: Route) -> None:
        """Write the decision on its own: the call must not wait for the database."""
        task = asyncio.create_task(self._write(query, setup, result, route), name="amo-routing-record")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, query: RoutingQuery, setup: _Setup, result: LookupResult, route: Route) -> None:
        contact = result.contact
        mine: dict[str, Any] = {
            "scenario_id": setup.scenario_id,
            "client_e164": query.from_number[:16],
            "line": query.request_number.lstrip("+")[:16],
            "lookup": result.outcome,
            "contact_id": contact.id if contact else None,
            "contact_name": contact.name if contact else "",
            "responsible_user_id": contact.responsible_user_id if contact else None,
            "route": {**route.as_json(), "lookup_source": result.source},
        }
        key = {"binding_id": setup.binding.id, "session_id": query.session_id}
        try:
            async with self.core.sessions() as s:
                insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
                await s.execute(
                    insert(AmoCall).values(**key, direction="incoming", **mine).on_conflict_do_nothing()
                )
                await s.execute(
                    update(AmoCall)
                    .where(AmoCall.binding_id == setup.binding.id, AmoCall.session_id == query.session_id)
                    .values(**mine)
                )
                await s.commit()
        except Exception as e:  # the log line above still has the decision
            log.warning("amocrm.route_not_recorded", session_id=query.session_id, error=type(e).__name__)

    async def drain(self) -> None:
        """Wait for the decisions being written (tests)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)


def _amo_sub_app(app: Any) -> Any:
    """The ``/amo`` sub-application mounted on ``app`` (None when there is none)."""
    from starlette.routing import Mount

    from vpbx.amocrm.wiring import PREFIX

    for route in getattr(app, "routes", ()):
        if isinstance(route, Mount) and route.path == PREFIX:
            return route.app
    return None


def routing_part(runtime: Any) -> AmoRoutingHook:
    """The ИМК as an ``AmoRuntime`` part (with the E17 webhook sync): the runtime's shared client pool when it
    has one, else its own."""
    from vpbx.amocrm.client import AmoClientPool

    shared = getattr(runtime, "clients", None)
    pool = shared if shared is not None else AmoClientPool(runtime.core)
    return AmoRoutingHook(
        runtime.core,
        pool,
        b2bua=runtime.b2bua,
        app=runtime.app,
        owned=None if shared is not None else pool,
        lookup=shared_lookup(runtime.core, pool) if shared is not None else None,  # one per process
        webhooks=WebhookSync(runtime.core, pool),
    )
