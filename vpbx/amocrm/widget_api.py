"""The widget's backend API (amocrm.md §3.4, F5–F8, §3.5): ``/amo/widget/v1/…``.

Every route takes the caller from the widget's disposable token (``widget_auth``) and the binding **only**
from the token's ``account_id``: the account's active binding scopes every query, so one account never
reads or writes another's rows. Writes need ``is_admin`` (403 ``admin-required``), except ``/call``.

- ``GET /directory``: amoCRM users (E1) and groups, the domain's extensions and lines (F7, F8).
- ``GET /amo-meta``: pipelines (E2), contact and lead fields (E3), task types; cached 10 min per account.
- ``GET``/``PUT /mapping``: managers ↔ extensions and the fallback manager (F7).
- ``/scenarios``: list, add (``{name?, copy_from?}``), patch, delete and the full document (F6, F8, §3.4),
  validated against the document's own shape and amoCRM's metadata (422 with field paths).
- ``POST /call``: click-to-call (§3.5) through the Integration API's ``call_back`` service, with its
  ``Idempotency-Key`` replay; the card hint goes into ``AmoCall`` for the call's note.

Errors are ``{"error": code, …}`` (the sub-app's handler); a Russian ``message`` where the widget shows it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.routing import Mount

from vpbx.amocrm.api import AmoApi, AmoClients, Json
from vpbx.amocrm.client import shared_pool
from vpbx.amocrm.errors import AmoError, AmoReauthRequired
from vpbx.amocrm.scenario import COPY_SUFFIX, DIRECTIONS, NEW_SCENARIO_NAME, Scenario, ScenarioDocument
from vpbx.amocrm.widget_auth import WidgetCaller, widget_admin, widget_caller
from vpbx.crm.phone import normalised_digits
from vpbx.integration_api import callback
from vpbx.integration_api.core import ApiContext, ApiError
from vpbx.logs import get_logger
from vpbx.store.models import (
    AmoCall,
    AmoScenario,
    AmoScenarioLine,
    CrmBinding,
    CrmUserMap,
    Domain,
    IncomingNumber,
    User,
)

if TYPE_CHECKING:
    from vpbx.amocrm.wiring import AmoRuntime
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.widget_api")

router = APIRouter(prefix="/widget/v1")

META_TTL_S = 600.0  # §3.4: amoCRM's metadata (E1–E3, account) cached 10 min per account
MAX_IDEMPOTENCY_KEY = 60  # stored as "amo-<key>" in the Integration API's 64-character key column
IDEMPOTENCY_PREFIX = "amo-"
CALL_CLIENT_ID = "amocrm-widget"  # what call_back's context names as its caller
NAME_ATTEMPTS = 100  # «Новый сценарий 2», «… 3»: a free name is found within this many tries
USER_NOT_MAPPED_MESSAGE = "Ваш пользователь amoCRM не сопоставлен с внутренним номером"

CallerDep = Annotated[WidgetCaller, Depends(widget_caller)]
AdminDep = Annotated[WidgetCaller, Depends(widget_admin)]


def _fail(status: int, error: str, **details: object) -> HTTPException:
    return HTTPException(status_code=status, detail={"error": error, **details})


def _now(core: Core) -> dt.datetime:
    now = core.clock.now()
    return now if now.tzinfo is not None else now.replace(tzinfo=dt.UTC)


# --- the request's context ----------------------------------------------------------------------------


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


async def _binding(s: AsyncSession, caller: WidgetCaller) -> CrmBinding:
    """The caller's account's active binding, else 409 ``binding-inactive``."""
    row = await s.scalar(
        select(CrmBinding).where(
            CrmBinding.crm_kind == "amocrm",
            CrmBinding.external_account_id == caller.account_id,
            CrmBinding.status == "active",
        )
    )
    if row is None:
        raise _fail(409, "binding-inactive", message="Интеграция не подключена")
    return row


def clients(request: Request) -> AmoClients:
    """The process's shared amoCRM clients (one limiter per account for every feature); a test may put its
    own in ``app.state.amo_clients``."""
    found: AmoClients | None = getattr(request.app.state, "amo_clients", None)
    return found if found is not None else shared_pool(_core(request))


# --- amoCRM's metadata, cached per account ------------------------------------------------------------


@dataclass
class MetaCache:
    """Per account and kind: the loaded answer and when it goes stale (a monotonic time)."""

    ttl_s: float = META_TTL_S
    _rows: dict[tuple[int, str], tuple[float, Any]] = field(default_factory=dict)

    async def get(self, account_id: int, kind: str, now: float, load: Callable[[], Awaitable[Any]]) -> Any:
        hit = self._rows.get((account_id, kind))
        if hit is not None and hit[0] > now:
            return hit[1]
        value = await load()
        self._rows[(account_id, kind)] = (now + self.ttl_s, value)
        return value


def _cache(request: Request) -> MetaCache:
    state = request.app.state
    cache: MetaCache | None = getattr(state, "amo_meta_cache", None)
    if cache is None:
        cache = state.amo_meta_cache = MetaCache()
    return cache


@dataclass(frozen=True, slots=True)
class Meta:
    """What the widget's pickers and the scenario checks use, in the widget's shapes."""

    users: list[Json]
    groups: list[Json]
    task_types: list[Json]
    pipelines: list[Json]
    contact_fields: list[Json]
    lead_fields: list[Json]


def _embedded(obj: Json, key: str) -> list[Json]:
    items = (obj.get("_embedded") or {}).get(key) or []
    return [i for i in items if isinstance(i, dict)]


def _user(u: Json) -> Json:
    rights = u.get("rights") or {}
    return {
        "id": int(u["id"]),
        "name": str(u.get("name") or ""),
        "is_active": bool(rights.get("is_active", True)),
        "is_admin": bool(rights.get("is_admin", False)),
    }


def _pipeline(p: Json) -> Json:
    statuses = [
        {"id": int(st["id"]), "name": str(st.get("name") or ""), "type": int(st.get("type") or 0)}
        for st in _embedded(p, "statuses")
    ]
    return {
        "id": int(p["id"]),
        "name": str(p.get("name") or ""),
        "is_main": bool(p.get("is_main", False)),
        "is_archive": bool(p.get("is_archive", False)),
        "statuses": statuses,
    }


def _field(f: Json) -> Json:
    enums = [{"id": int(e["id"]), "value": str(e.get("value") or "")} for e in f.get("enums") or []]
    return {
        "id": int(f["id"]),
        "name": str(f.get("name") or f.get("code") or ""),
        "code": f.get("code"),
        "type": str(f.get("type") or ""),
        "enums": enums,
    }


def _pairs(items: list[Json]) -> list[Json]:
    return [{"id": int(i["id"]), "name": str(i.get("name") or "")} for i in items]


async def _meta(request: Request, caller: WidgetCaller, kinds: Sequence[str]) -> Meta:
    """The kinds asked for (the others stay empty), through the cache; amoCRM failures → 502/409."""
    api: AmoApi = clients(request).for_account(caller.account_id)
    cache = _cache(request)
    now = _core(request).clock.monotonic()
    loaders: dict[str, Callable[[], Awaitable[Any]]] = {
        "account": api.account,
        "users": api.users,
        "pipelines": api.pipelines,
        "contact_fields": lambda: api.custom_fields("contacts"),
        "lead_fields": lambda: api.custom_fields("leads"),
    }
    got: dict[str, Any] = {}
    try:
        for kind in kinds:
            got[kind] = await cache.get(caller.account_id, kind, now, loaders[kind])
    except AmoReauthRequired:
        raise _fail(409, "needs-reauth", message="Требуется повторная авторизация") from None
    except AmoError as e:
        log.warning("amocrm.widget.meta_failed", account=caller.account_id, error=type(e).__name__)
        raise _fail(502, "amo-unavailable", message="Нет связи с amoCRM") from None
    account: Json = got.get("account") or {}
    return Meta(
        users=[_user(u) for u in got.get("users") or []],
        groups=_pairs(_embedded(account, "users_groups")),
        task_types=_pairs(_embedded(account, "task_types")),
        pipelines=[_pipeline(p) for p in got.get("pipelines") or []],
        contact_fields=[_field(f) for f in got.get("contact_fields") or []],
        lead_fields=[_field(f) for f in got.get("lead_fields") or []],
    )


ALL_META = ("account", "users", "pipelines", "contact_fields", "lead_fields")


# --- the domain's side --------------------------------------------------------------------------------


async def _extensions(s: AsyncSession, domain_id: uuid.UUID) -> list[Json]:
    rows = await s.execute(
        select(User.pin, User.display_name).where(User.domain_id == domain_id).order_by(User.pin)
    )
    return [{"pin": pin, "name": name} for pin, name in rows]


async def _lines(s: AsyncSession, domain_id: uuid.UUID) -> list[str]:
    rows = await s.scalars(
        select(IncomingNumber.number)
        .where(IncomingNumber.domain_id == domain_id)
        .order_by(IncomingNumber.created_at, IncomingNumber.number)
    )
    return list(rows)


@router.get("/directory")
async def directory(request: Request, caller: CallerDep) -> Json:
    core = _core(request)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        extensions = await _extensions(s, binding.domain_id)
        lines = await _lines(s, binding.domain_id)
    meta = await _meta(request, caller, ("account", "users"))
    users = [{k: u[k] for k in ("id", "name", "is_active")} for u in meta.users]
    return {"amo_users": users, "extensions": extensions, "lines": lines, "groups": meta.groups}


@router.get("/amo-meta")
async def amo_meta(request: Request, caller: CallerDep) -> Json:
    async with _core(request).sessions() as s:
        await _binding(s, caller)
    meta = await _meta(request, caller, ("account", "pipelines", "contact_fields", "lead_fields"))
    return {
        "pipelines": meta.pipelines,
        "contact_fields": meta.contact_fields,
        "lead_fields": meta.lead_fields,
        "task_types": meta.task_types,
    }


# --- F7: the user mapping -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MappingItem(_Body):
    amo_user_id: int
    extension: str | None = Field(default=None, max_length=6)  # None or "": «Не выбран»


class MappingIn(_Body):
    items: Annotated[list[MappingItem], Field(max_length=2000)] = []
    fallback_user_id: int | None = None


async def _mapping(s: AsyncSession, binding: CrmBinding) -> Json:
    rows = await s.execute(
        select(CrmUserMap.crm_user_id, CrmUserMap.extension)
        .where(CrmUserMap.binding_id == binding.id)
        .order_by(CrmUserMap.crm_user_id)
    )
    items = [{"amo_user_id": uid, "extension": ext} for uid, ext in rows]
    return {"items": items, "fallback_user_id": binding.fallback_user_id}


@router.get("/mapping")
async def get_mapping(request: Request, caller: CallerDep) -> Json:
    async with _core(request).sessions() as s:
        return await _mapping(s, await _binding(s, caller))


@router.put("/mapping")
async def put_mapping(request: Request, caller: AdminDep, body: MappingIn) -> Json:
    chosen: dict[int, str] = {}
    by_extension: dict[str, list[int]] = {}
    for item in body.items:
        ext = (item.extension or "").strip()
        if item.amo_user_id in chosen or (ext and item.amo_user_id in by_extension.get(ext, [])):
            raise _fail(422, "duplicate-user", amo_user_id=item.amo_user_id)
        if not ext:
            continue
        chosen[item.amo_user_id] = ext
        by_extension.setdefault(ext, []).append(item.amo_user_id)
    for ext, user_ids in by_extension.items():
        if len(user_ids) > 1:
            raise _fail(
                422,
                "extension-not-unique",
                extension=ext,
                user_ids=user_ids,
                message=f"Внутренний номер {ext} выбран для нескольких пользователей",
            )
    if chosen and body.fallback_user_id is None:
        raise _fail(
            422, "fallback-required", message="Выберите ответственного менеджера для нештатных ситуаций"
        )
    if body.fallback_user_id is not None and body.fallback_user_id not in chosen:
        raise _fail(
            422,
            "fallback-not-mapped",
            amo_user_id=body.fallback_user_id,
            message="Ответственному для нештатных ситуаций не выбран внутренний номер",
        )
    core = _core(request)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        known = {e["pin"] for e in await _extensions(s, binding.domain_id)}
        for ext in by_extension:
            if ext not in known:
                raise _fail(422, "unknown-extension", extension=ext, message=f"Нет внутреннего номера {ext}")
    if chosen:  # the users must be the account's (E1, cached); amoCRM out of reach refuses the save
        users = {u["id"] for u in (await _meta(request, caller, ("users",))).users}
        strangers = sorted(set(chosen) - users)
        if strangers:
            raise _fail(422, "unknown-user", user_ids=strangers)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        await s.execute(delete(CrmUserMap).where(CrmUserMap.binding_id == binding.id))
        for uid, ext in chosen.items():
            s.add(CrmUserMap(binding_id=binding.id, crm_user_id=uid, extension=ext))
        binding.fallback_user_id = body.fallback_user_id
        await s.commit()
        log.info("amocrm.widget.mapping_saved", binding=str(binding.id), users=len(chosen))
        return await _mapping(s, binding)


# --- F6/F8: scenarios ---------------------------------------------------------------------------------


def pretty_line(line: str) -> str:
    """``+74951234567`` → ``+7 495 123-45-67`` (other numbers as stored)."""
    digits = line.removeprefix("+")
    if len(digits) == 11 and digits.startswith("7") and digits.isdigit():
        d = digits
        return f"+7 {d[1:4]} {d[4:7]}-{d[7:9]}-{d[9:11]}"
    return line


async def _scenarios(s: AsyncSession, binding: CrmBinding) -> list[AmoScenario]:
    rows = await s.scalars(
        select(AmoScenario)
        .where(AmoScenario.binding_id == binding.id)
        .order_by(AmoScenario.position, AmoScenario.id)
    )
    return list(rows)


async def _scenario(s: AsyncSession, binding: CrmBinding, scenario_id: int) -> AmoScenario:
    row = await s.scalar(
        select(AmoScenario).where(AmoScenario.id == scenario_id, AmoScenario.binding_id == binding.id)
    )
    if row is None:
        raise _fail(404, "scenario-not-found")
    return row


async def _lines_of(s: AsyncSession, scenario_ids: Sequence[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {i: [] for i in scenario_ids}
    if scenario_ids:
        rows = await s.execute(
            select(AmoScenarioLine.scenario_id, AmoScenarioLine.line)
            .where(AmoScenarioLine.scenario_id.in_(scenario_ids))
            .order_by(AmoScenarioLine.line)
        )
        for sid, line in rows:
            out[sid].append(line)
    return out


def _document(row: AmoScenario) -> ScenarioDocument:
    try:
        return ScenarioDocument.model_validate(row.document or {})
    except ValidationError:  # a document stored by an older version: the defaults, never a 500
        log.warning("amocrm.widget.bad_stored_document", scenario=row.id)
        return ScenarioDocument()


def _out(row: AmoScenario, lines: list[str]) -> Json:
    doc = _document(row)
    return Scenario(
        id=row.id,
        name=row.name,
        is_active=row.is_active,
        position=row.position,
        lines=lines,
        smart_routing=doc.smart_routing,
        events=doc.events,
    ).model_dump(mode="json")


async def _conflict(
    s: AsyncSession, binding: CrmBinding, scenario_id: int | None, lines: Sequence[str]
) -> None:
    """422 ``line-in-use`` when another *active* scenario of the binding holds one of ``lines`` (F8)."""
    if not lines:
        return
    query = (
        select(AmoScenarioLine.line, AmoScenario.name)
        .join(AmoScenario, AmoScenario.id == AmoScenarioLine.scenario_id)
        .where(
            AmoScenario.binding_id == binding.id,
            AmoScenario.is_active.is_(True),
            AmoScenarioLine.line.in_(list(lines)),
        )
        .order_by(AmoScenarioLine.line)
    )
    if scenario_id is not None:
        query = query.where(AmoScenario.id != scenario_id)
    hit = (await s.execute(query.limit(1))).first()
    if hit is not None:
        line, name = hit
        raise _fail(
            422,
            "line-in-use",
            line=line,
            scenario=name,
            message=f"Номер {pretty_line(line)} уже используется в сценарии «{name}»",
        )


async def _free_name(s: AsyncSession, binding: CrmBinding, base: str) -> str:
    taken = set(await s.scalars(select(AmoScenario.name).where(AmoScenario.binding_id == binding.id)))
    if base not in taken:
        return base
    for n in range(2, NAME_ATTEMPTS):
        name = f"{base[: 64 - 1 - len(str(n))]} {n}"
        if name not in taken:
            return name
    raise _fail(422, "name-taken", message="Сценарий с таким названием уже есть")


async def _name_taken(s: AsyncSession, binding: CrmBinding, name: str, scenario_id: int) -> None:
    clash = await s.scalar(
        select(AmoScenario.id).where(
            AmoScenario.binding_id == binding.id, AmoScenario.name == name, AmoScenario.id != scenario_id
        )
    )
    if clash is not None:
        raise _fail(422, "name-taken", message="Сценарий с таким названием уже есть")


async def _set_lines(s: AsyncSession, scenario_id: int, lines: Sequence[str]) -> None:
    await s.execute(delete(AmoScenarioLine).where(AmoScenarioLine.scenario_id == scenario_id))
    for line in dict.fromkeys(lines):
        s.add(AmoScenarioLine(scenario_id=scenario_id, line=line))


async def _one(s: AsyncSession, row: AmoScenario) -> Json:
    return _out(row, (await _lines_of(s, [row.id]))[row.id])


@router.get("/scenarios")
async def list_scenarios(request: Request, caller: CallerDep) -> Json:
    async with _core(request).sessions() as s:
        binding = await _binding(s, caller)
        rows = await _scenarios(s, binding)
        lines = await _lines_of(s, [r.id for r in rows])
        return {"items": [_out(r, lines[r.id]) for r in rows]}


class NewScenario(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=64)
    copy_from: int | None = None


@router.post("/scenarios", status_code=201)
async def add_scenario(request: Request, caller: AdminDep, body: NewScenario | None = None) -> Json:
    body = body or NewScenario()
    core = _core(request)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        rows = await _scenarios(s, binding)
        position = max((r.position for r in rows), default=-1) + 1
        if body.copy_from is not None:  # «<name> (копия)», inactive, lines and document copied
            source = await _scenario(s, binding, body.copy_from)
            lines = (await _lines_of(s, [source.id]))[source.id]
            copy_name = source.name[: 64 - len(COPY_SUFFIX)] + COPY_SUFFIX
            name = body.name or await _free_name(s, binding, copy_name)
            row = AmoScenario(
                binding_id=binding.id,
                name=name,
                is_active=False,
                position=position,
                document=_document(source).model_dump(mode="json"),
            )
        else:  # the first scenario gets every line, a later one the lines no active scenario uses
            all_lines = await _lines(s, binding.domain_id)
            active = await _lines_of(s, [r.id for r in rows if r.is_active])
            used = {line for held in active.values() for line in held}
            lines = [line for line in all_lines if line not in used]
            name = body.name or await _free_name(s, binding, NEW_SCENARIO_NAME)
            row = AmoScenario(
                binding_id=binding.id,
                name=name,
                is_active=True,
                position=position,
                document=ScenarioDocument().model_dump(mode="json"),
            )
        await _name_taken(s, binding, name, -1)
        s.add(row)
        await s.flush()
        await _set_lines(s, row.id, lines)
        try:
            await s.commit()
        except IntegrityError:
            raise _fail(422, "name-taken", message="Сценарий с таким названием уже есть") from None
        log.info("amocrm.widget.scenario_added", binding=str(binding.id), scenario=row.id)
        return await _one(s, row)


class ScenarioPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=64)
    is_active: bool | None = None
    position: int | None = Field(default=None, ge=0, le=10_000)


@router.patch("/scenarios/{scenario_id}")
async def patch_scenario(request: Request, caller: AdminDep, scenario_id: int, body: ScenarioPatch) -> Json:
    async with _core(request).sessions() as s:
        binding = await _binding(s, caller)
        row = await _scenario(s, binding, scenario_id)
        if body.name is not None:
            name = body.name.strip()
            if not name:
                raise _fail(422, "invalid-request", errors=[{"path": "name", "msg": "empty"}])
            await _name_taken(s, binding, name, row.id)
            row.name = name
        if body.is_active is True and not row.is_active:
            await _conflict(s, binding, row.id, (await _lines_of(s, [row.id]))[row.id])
        if body.is_active is not None:
            row.is_active = body.is_active
        if body.position is not None:
            row.position = body.position
        row.updated_at = _now(_core(request))
        await s.commit()
        return await _one(s, row)


@router.delete("/scenarios/{scenario_id}", status_code=204)
async def delete_scenario(request: Request, caller: AdminDep, scenario_id: int) -> Response:
    async with _core(request).sessions() as s:
        binding = await _binding(s, caller)
        row = await _scenario(s, binding, scenario_id)
        await s.execute(delete(AmoScenarioLine).where(AmoScenarioLine.scenario_id == row.id))
        await s.delete(row)
        await s.commit()
        log.info("amocrm.widget.scenario_deleted", binding=str(binding.id), scenario=scenario_id)
    return Response(status_code=204)


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc)


def check_against_meta(sc: Scenario, meta: Meta) -> list[Json]:
    """§3.4: pipelines/statuses (not archived), field ids and enums, users, groups and task types of the
    account; one ``{"path", "msg"}`` per problem, paths as in the document."""
    errors: list[Json] = []
    users = {u["id"] for u in meta.users}
    groups = {g["id"] for g in meta.groups}
    task_types = {t["id"] for t in meta.task_types}
    pipelines = {p["id"]: p for p in meta.pipelines}
    contact_fields = {f["id"]: f for f in meta.contact_fields}
    lead_fields = {f["id"]: f for f in meta.lead_fields}

    def bad(path: str, msg: str) -> None:
        errors.append({"path": path, "msg": msg})

    def responsible(path: str, rule: Any) -> None:
        if rule.rule == "user" and rule.user_id not in users:
            bad(f"{path}.user_id", "unknown user")
        if rule.rule == "group" and rule.group_id not in groups:
            bad(f"{path}.group_id", "unknown group")

    def fields(path: str, values: Any, known: dict[int, Json]) -> None:
        for i, v in enumerate(values):
            f = known.get(v.field_id)
            if f is None:
                bad(f"{path}.{i}.field_id", "unknown field")
            elif v.enum_id is not None and v.enum_id not in {e["id"] for e in f["enums"]}:
                bad(f"{path}.{i}.enum_id", "unknown enum")
            elif v.enum_id is None and f["enums"] and f["type"] != "multitext":  # a multitext's are kinds
                bad(f"{path}.{i}.value", "the field takes one of its enums (enum_id)")

    for i, uid in enumerate(sc.smart_routing.excluded_user_ids):
        if uid not in users:
            bad(f"smart_routing.excluded_user_ids.{i}", "unknown user")
    for direction in DIRECTIONS:
        tab = sc.events.tab(direction)
        for kind, client in (("new", tab.new), ("existing", tab.existing)):
            base = f"events.{direction}.{kind}"
            lead, task = client.lead, client.task
            if lead.pipeline_id is not None:
                p = pipelines.get(lead.pipeline_id)
                if p is None:
                    bad(f"{base}.lead.pipeline_id", "unknown pipeline")
                elif p["is_archive"]:
                    bad(f"{base}.lead.pipeline_id", "archived pipeline")
                elif lead.status_id is not None:
                    status = next((st for st in p["statuses"] if st["id"] == lead.status_id), None)
                    if status is None:
                        bad(f"{base}.lead.status_id", "status not in the pipeline")
                    elif status["type"] == 1 and lead.target == "deal":
                        bad(f"{base}.lead.status_id", "the unsorted status takes target 'unsorted'")
            elif lead.status_id is not None:
                bad(f"{base}.lead.status_id", "a status needs its pipeline")
            fields(f"{base}.lead.fields", lead.fields, lead_fields)
            responsible(f"{base}.lead.responsible", lead.responsible)
            responsible(f"{base}.task.responsible", task.responsible)
            if task_types and task.task_type_id not in task_types:
                bad(f"{base}.task.task_type_id", "unknown task type")
            if kind == "new":
                contact = tab.new.contact
                fields(f"{base}.contact.fields", contact.fields, contact_fields)
                responsible(f"{base}.contact.responsible", contact.responsible)
    return errors


@router.put("/scenarios/{scenario_id}")
async def put_scenario(
    request: Request, caller: AdminDep, scenario_id: int, body: Annotated[dict[str, Any], Body()]
) -> Json:
    try:
        sc = Scenario.model_validate({**body, "id": scenario_id})
    except ValidationError as e:
        errors = [{"path": _path(err["loc"]), "msg": err["msg"]} for err in e.errors()]
        raise _fail(422, "invalid-scenario", errors=errors[:50]) from None
    core = _core(request)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        await _scenario(s, binding, scenario_id)
        domain_lines = set(await _lines(s, binding.domain_id))
    line_errors = [
        {"path": f"lines.{i}", "msg": "not a line of the domain"}
        for i, line in enumerate(sc.lines)
        if line not in domain_lines
    ]
    if line_errors:
        raise _fail(422, "invalid-scenario", errors=line_errors)
    meta = await _meta(request, caller, ALL_META)
    errors = check_against_meta(sc, meta)
    if errors:
        raise _fail(422, "invalid-scenario", errors=errors[:50])
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        row = await _scenario(s, binding, scenario_id)
        name = sc.name.strip()
        await _name_taken(s, binding, name, row.id)
        if sc.is_active:
            await _conflict(s, binding, row.id, sc.lines)
        row.name = name
        row.is_active = sc.is_active
        row.position = sc.position
        row.document = sc.document().model_dump(mode="json")
        row.updated_at = _now(core)
        await _set_lines(s, row.id, sc.lines)
        await s.commit()
        log.info("amocrm.widget.scenario_saved", binding=str(binding.id), scenario=row.id)
        return await _one(s, row)


# --- §3.5: click-to-call ------------------------------------------------------------------------------


class CardRef(_Body):
    type: str = Field(min_length=1, max_length=32)
    id: int


class CallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    phone: str = Field(min_length=1, max_length=64)
    entity: CardRef | None = None


# call_back's refusals ("-20" and the others) → the widget's 409 with the PBX error code
_CALL_ERRORS_422 = frozenset({"bad-request"})


def _engine(request: Request) -> Any:
    """The running call engine (``vpbx serve``), handed over by ``EngineLink``; None in an app without one."""
    return getattr(request.app.state, "b2bua", None)


@router.post("/call")
async def call(request: Request, caller: CallerDep, body: CallIn) -> Json:
    key = request.headers.get("idempotency-key")
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise _fail(422, "invalid-idempotency-key")
    core = _core(request)
    async with core.sessions() as s:
        binding = await _binding(s, caller)
        extension = await s.scalar(
            select(CrmUserMap.extension).where(
                CrmUserMap.binding_id == binding.id, CrmUserMap.crm_user_id == caller.user_id
            )
        )
        domain = await s.get(Domain, binding.domain_id)
    if extension is None:
        raise _fail(409, "user-not-mapped", message=USER_NOT_MAPPED_MESSAGE)
    digits = normalised_digits(body.phone)
    if digits is None or domain is None:
        raise _fail(422, "invalid-phone", message="Некорректный номер телефона")
    ctx = ApiContext(
        domain_id=binding.domain_id,
        domain=domain.name,
        client_id=CALL_CLIENT_ID,
        source_ip=request.client.host if request.client is not None else "",
        sandbox=False,
        base_url="",
        headers={"idempotency-key": IDEMPOTENCY_PREFIX + key} if key else {},
        sessions=core.sessions,
        services=SimpleNamespace(core=core, b2bua=_engine(request)),
    )
    try:
        reply = await callback.call_back(ctx, {"request_number": digits, "from_pin": extension})
        answer = dict(reply.body) if isinstance(reply.body, dict) else {}
    except ApiError as e:
        answer = e.body()
    if answer.get("result") != "0":
        error = str(answer.get("error") or "call-back-failed")
        status = 422 if error in _CALL_ERRORS_422 else 409
        raise _fail(status, error, message=str(answer.get("resultMessage") or ""))
    session_id = str(answer["session_id"])
    hint = {"type": body.entity.type, "id": body.entity.id} if body.entity is not None else None
    await _remember_call(core, binding.id, session_id, digits, extension, hint)
    log.info("amocrm.widget.call", binding=str(binding.id), session_id=session_id, pin=extension)
    return {"session_id": session_id}


async def _remember_call(
    core: Core, binding_id: uuid.UUID, session_id: str, digits: str, pin: str, hint: Json | None
) -> None:
    """Upsert the call's context with the card hint (§3.5 step 4), whoever (this or the call-event consumer)
    inserts the row first."""
    for _ in range(2):
        async with core.sessions() as s:
            row = await s.get(AmoCall, (binding_id, session_id))
            if row is None:
                s.add(
                    AmoCall(
                        binding_id=binding_id,
                        session_id=session_id,
                        direction="outgoing",
                        call_kind="callback",
                        client_e164=digits,
                        manager_pin=pin,
                        card_hint=hint,
                    )
                )
            elif hint is not None:
                row.card_hint = hint
            try:
                await s.commit()
                return
            except IntegrityError:
                await s.rollback()


# --- wiring -------------------------------------------------------------------------------------------


class EngineLink:
    """A part of ``AmoRuntime``: hands the running engine to the ``/amo`` sub-app for click-to-call (the
    sub-app is built with the app, before ``vpbx serve`` makes the engine)."""

    def __init__(self, runtime: AmoRuntime) -> None:
        self._runtime = runtime
        self._state: Any = None

    async def start(self) -> None:
        from vpbx.amocrm.wiring import PREFIX

        for route in getattr(self._runtime.app, "routes", []):
            if isinstance(route, Mount) and route.path == PREFIX:
                self._state = getattr(route.app, "state", None)
                self._state.b2bua = self._runtime.b2bua

    async def stop(self) -> None:
        if self._state is not None:
            self._state.b2bua = None


__all__ = ["EngineLink", "MetaCache", "check_against_meta", "pretty_line", "router"]
