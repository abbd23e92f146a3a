"""The scenario's dry run (amocrm.md §3.4 ``POST /amo/widget/v1/dry-run``, admin): for a caller's phone on one
of our lines, which scenario answers, what the phone lookup finds, where the ИМК would route the call and
why, and the entities the finish steps would create for an incoming call (new or existing client, answered
or missed). It writes nothing: not to amoCRM (E1 and E4 are reads), not to the PBX (the phone cache is read
without its revalidation and the lookup's answer is not stored).

The decision is ``routing.decide`` on the same facts the routing hook gathers (``scenario_for_line``,
``extension_states``); the plan uses ``finish``'s pure rules (``render``, ``pick_responsible``,
``deadline_at``). The plan is the scenario's intent: the existing client's «skip if an active lead» is
reported as a condition, not checked (ours).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vpbx.amocrm.api import Json
from vpbx.amocrm.errors import AmoError
from vpbx.amocrm.finish import TemplateVars, deadline_at, pick_responsible, render
from vpbx.amocrm.lookup import LookupResult, PhoneLookup
from vpbx.amocrm.options import options_of
from vpbx.amocrm.routing import Facts, Route, decide, extension_states, scenario_for_line
from vpbx.amocrm.scenario import LeadOptions, Responsible, ScenarioDocument, TaskOptions
from vpbx.amocrm.widget_api import AdminDep, _binding, _core, _engine, _fail, _now, clients
from vpbx.crm.connector import Binding
from vpbx.crm.phone import match_key, normalised_digits
from vpbx.store.models import CrmUserMap, Domain, DomainId

if TYPE_CHECKING:
    from vpbx.app import Core

router = APIRouter(prefix="/widget/v1")

USERS_TIMEOUT_S = 10.0


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    phone: str = Field(min_length=1, max_length=64)
    line: str = Field(min_length=1, max_length=64)


def _lookup(request: Request, core: Core) -> PhoneLookup:
    """The ИМК's lookup when the runtime runs (its cache-only state counts), else a fresh one."""
    found: PhoneLookup | None = getattr(request.app.state, "amo_lookup", None)
    return found if found is not None else PhoneLookup(core.sessions, clients(request), core.clock)


def _task(opts: TaskOptions, variables: TemplateVars, responsible: int | None, now: dt.datetime) -> Json:
    return {
        "entity": "task",
        "text": render(opts.text, variables),
        "task_type_id": opts.task_type_id,
        "responsible": {"rule": opts.responsible.rule, "user_id": responsible},
        "complete_till": deadline_at(opts.deadline, ended_at=now, zone=dt.UTC, now=now),
    }


def _lead(opts: LeadOptions, variables: TemplateVars, responsible: int | None, *, existing: bool) -> Json:
    lead: Json = {
        "entity": "unsorted" if opts.target == "unsorted" else "lead",
        "name": render(opts.name_template, variables),
        "pipeline_id": opts.pipeline_id,
        "status_id": opts.status_id,
        "tags": list(opts.tags),
        "responsible": {"rule": opts.responsible.rule, "user_id": responsible},
    }
    if existing and opts.skip_if_active_lead:
        lead["unless"] = "active-lead"
    return lead


def plan(
    document: ScenarioDocument,
    *,
    phone: str,
    line: str,
    answered_user: int | None,
    answered_pin: str | None,
    contact_user: int | None,
    fallback: int | None,
    now: dt.datetime,
) -> dict[str, list[Json]]:
    """What the finish steps would write for ``incoming`` (answered) and ``missed`` calls, new and existing
    client: ``{"incoming.new": [entity, …], …}``. «Принявший вызов» is the routed manager (missed: nobody)."""
    out: dict[str, list[Json]] = {}
    for direction in ("incoming", "missed"):
        tab = document.events.tab(direction)
        answered = answered_user if direction == "incoming" else None
        pin = answered_pin if direction == "incoming" else None
        variables = TemplateVars(phone=phone, line=line, ext=pin or "", at=now)

        def who(rule: Responsible, contact: int | None, answered: int | None = answered) -> int | None:
            return pick_responsible(rule, answered_user=answered, contact_user=contact, fallback=fallback)

        new: list[Json] = []
        if tab.new.enabled:
            made_user = contact_user
            if tab.new.contact.enabled:
                made_user = who(tab.new.contact.responsible, None)
                new.append(
                    {
                        "entity": "contact",
                        "name": render(tab.new.contact.name_template, variables),
                        "tags": list(tab.new.contact.tags),
                        "responsible": {"rule": tab.new.contact.responsible.rule, "user_id": made_user},
                    }
                )
            if tab.new.lead.enabled:
                new.append(
                    _lead(tab.new.lead, variables, who(tab.new.lead.responsible, made_user), existing=False)
                )
            if tab.new.task.enabled:
                new.append(_task(tab.new.task, variables, who(tab.new.task.responsible, made_user), now))
            if tab.new.contact.enabled:
                new.append({"entity": "call", "direction": "inbound"})
        out[f"{direction}.new"] = new
        old: list[Json] = []
        if tab.existing.enabled:
            if tab.existing.lead.enabled:
                old.append(
                    _lead(
                        tab.existing.lead,
                        variables,
                        who(tab.existing.lead.responsible, contact_user),
                        existing=True,
                    )
                )
            if tab.existing.task.enabled:
                old.append(
                    _task(tab.existing.task, variables, who(tab.existing.task.responsible, contact_user), now)
                )
        old.append({"entity": "call", "direction": "inbound"})  # the call log, whenever a contact is known
        out[f"{direction}.existing"] = old
    return out


async def _inactive(request: Request, account_id: int) -> frozenset[int]:
    """amoCRM users marked inactive (E1, a read); unknown → everybody counts as active, as in routing."""
    try:
        async with asyncio.timeout(USERS_TIMEOUT_S):
            users = await clients(request).for_account(account_id).users()
    except (AmoError, OSError, TimeoutError):
        return frozenset()
    return frozenset(
        int(u["id"])
        for u in users
        if isinstance(u.get("id"), int) and (u.get("rights") or {}).get("is_active") is False
    )


@router.post("/dry-run")
async def dry_run(request: Request, caller: AdminDep, body: DryRunIn) -> Json:
    core = _core(request)
    line = normalised_digits(body.line)
    phone = normalised_digits(body.phone)
    if line is None:
        raise _fail(422, "invalid-line", message="Некорректный номер линии")
    if phone is None:
        raise _fail(422, "invalid-phone", message="Некорректный номер телефона")
    async with core.sessions() as s:
        row = await _binding(s, caller)
        binding = Binding.of(row)
        domain = await s.get(Domain, row.domain_id)
        scenario = await scenario_for_line(s, row.id, line)
        mapping = {
            m.crm_user_id: m.extension
            for m in await s.scalars(select(CrmUserMap).where(CrmUserMap.binding_id == row.id))
        }
    if scenario is None:
        return {
            "scenario": None,
            "lookup": None,
            "route": {"step": "none", "why": "no-scenario", "pin": None},
        }
    document = ScenarioDocument.model_validate(scenario.document or {})
    key = match_key(phone)
    lookup = _lookup(request, core)
    budget_s = options_of(row.options).lookup_timeout_ms / 1000
    if key is None:
        result = LookupResult(outcome="unknown", source="invalid")
    else:
        result = await lookup.peek(binding, key, budget_s)
    contact = result.contact
    route: Route
    if not document.smart_routing.enabled:
        route = Route(step="rules", why="smart-routing-off")
    else:
        wanted = {
            mapping[u]
            for u in ((contact.responsible_user_id if contact else None), binding.fallback_user_id)
            if u is not None and u in mapping
        }
        engine = _engine(request)
        calls = engine.registry if engine is not None else core.calls
        domain_name = domain.name if domain is not None else ""
        states = (
            await extension_states(core, calls, DomainId(row.domain_id), domain_name, wanted)
            if contact
            else {}
        )
        facts = Facts(
            contact=contact,
            lookup=result.outcome,
            excluded=frozenset(document.smart_routing.excluded_user_ids),
            mapping=mapping,
            inactive=await _inactive(request, binding.account_id) if contact else frozenset(),
            fallback_user_id=binding.fallback_user_id,
            states=states,
        )
        route = decide(facts)
    by_pin = {pin: uid for uid, pin in mapping.items()}
    answered_user = by_pin.get(route.pin) if route.pin is not None else None
    entities = plan(
        document,
        phone=f"+{phone}",
        line=f"+{line}",
        answered_user=answered_user,
        answered_pin=route.pin,
        contact_user=contact.responsible_user_id if contact else None,
        fallback=binding.fallback_user_id,
        now=_now(core),
    )
    return {
        "scenario": {"id": scenario.id, "name": scenario.name},
        "lookup": {
            "outcome": result.outcome,
            "source": result.source,
            "contact": (
                {"id": contact.id, "name": contact.name, "responsible_user_id": contact.responsible_user_id}
                if contact
                else None
            ),
            "cache_only": lookup.cache_only(binding.id),
        },
        "route": route.as_json() | {"fallback_user_id": binding.fallback_user_id},
        "entities": entities,
    }


__all__ = ["plan", "router"]
