"""amoCRM's public routes as the emulator serves them (amocrm.md §2.3, §4.4): the API v4 (and v2 events) of
an account, its OAuth token endpoint, and the consent page on the emulator root.

The account is the one the ASGI layer found from the ``/_acc/{base_domain}`` prefix or the ``Host`` header
(``request.state.emu_host``). Success answers are ``application/hal+json``, errors
``application/problem+json``, an empty result is a 204 with no body and no content type.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from vpbx.amocrm.emulator import entities as ent
from vpbx.amocrm.emulator import oauth
from vpbx.amocrm.emulator.matcher import query_matches
from vpbx.amocrm.emulator.world import TASK_TYPES, Account, Json, Problem, World

HAL = "application/hal+json"
MAX_LIMIT = 250
DEFAULT_LIMIT = 50
FIELDS_PAGE = 50

router = APIRouter()


# --- plumbing -----------------------------------------------------------------------------------------------


def world_of(request: Request) -> World:
    w: World = request.app.state.world
    return w


def host_account(request: Request) -> Account:
    w = world_of(request)
    host = getattr(request.state, "emu_host", None)
    acc = w.account_for_host(host) if host else None
    if acc is None:
        if host in w.moved:  # the account lives elsewhere now: its old host refuses every token
            raise Problem(401, "Account has been moved")
        raise Problem(404, "Unknown account")
    return acc


def authed(request: Request) -> tuple[Account, Json]:
    acc = host_account(request)
    rec = oauth.check_bearer(world_of(request), acc, request.headers.get("authorization"))
    request.state.emu_jti = rec["jti"]
    return acc, rec


def hal(body: Any, status: int = 200) -> Response:
    return JSONResponse(body, status_code=status, media_type=HAL)


def no_content() -> Response:
    return Response(status_code=204)


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        raise Problem(400, "Request body is empty")
    try:
        return json.loads(raw)
    except ValueError:
        raise Problem(400, "Request body is not valid JSON") from None


def links(acc: Account, path: str, extra: Json | None = None) -> Json:
    return {"self": {"href": acc.href(path)}, **(extra or {})}


def ids_param(request: Request, name: str) -> list[int] | None:
    """``filter[id][]=1&filter[id][]=2``, ``filter[id][0]=1`` or ``filter[id]=1,2``; None when absent."""
    values: list[str] = []
    for key, value in request.query_params.multi_items():
        if (
            key == name
            or key == f"{name}[]"
            or (key.startswith(f"{name}[") and key[len(name) + 1 : -1].isdigit())
        ):
            values.extend(v for v in value.split(",") if v.strip())
    if not values and not any(k.startswith(name) for k in request.query_params):
        return None
    return [int(v) for v in values if v.strip().isdigit()]


def with_of(request: Request) -> set[str]:
    return {w.strip() for w in request.query_params.get("with", "").split(",") if w.strip()}


def paged(
    request: Request,
    acc: Account,
    path: str,
    key: str,
    items: list[Json],
    render: Callable[[Json], Json],
    *,
    default_limit: int = DEFAULT_LIMIT,
    max_limit: int = MAX_LIMIT,
) -> Response:
    """One page of a list (§2.1): ``_page``, ``_links.self``/``next``, ``_embedded.<key>``; 204 when empty."""
    w = world_of(request)
    try:
        page = max(1, int(request.query_params.get("page", "1")))
        limit = int(request.query_params.get("limit", str(default_limit)))
    except ValueError:
        raise Problem(400, "page and limit must be integers") from None
    if limit > max_limit:
        if w.switches.strict_limit:
            raise Problem(400, f"limit must not exceed {max_limit}")
        limit = max_limit
    limit = max(1, limit)
    chunk = items[(page - 1) * limit : page * limit]
    if not chunk:
        return no_content()
    query = [(k, v) for k, v in request.query_params.multi_items() if k != "page"]
    query_str = urlencode([*query, ("page", str(page))]) if query else urlencode([("page", str(page))])
    extra: Json = {}
    more = page * limit < len(items) or (w.switches.next_on_full_page and len(chunk) == limit)
    if more:
        extra["next"] = {"href": acc.href(f"{path}?{urlencode([*query, ('page', str(page + 1))])}")}
    if page > 1:
        extra["prev"] = {"href": acc.href(f"{path}?{urlencode([*query, ('page', str(page - 1))])}")}
    return hal(
        {
            "_page": page,
            "_links": {"self": {"href": acc.href(f"{path}?{query_str}")}, **extra},
            "_embedded": {key: [render(i) for i in chunk]},
        }
    )


def created(acc: Account, path: str, key: str, rows: Iterable[Json]) -> Response:
    out = [r | {"_links": links(acc, f"{path}/{r['id']}")} for r in rows]
    return hal({"_links": links(acc, path), "_embedded": {key: out}})


def _public(doc: Json, drop: Iterable[str] = ("tags",)) -> Json:
    return {k: v for k, v in doc.items() if k not in drop and not k.startswith("_")}


# --- account, users, pipelines, fields ----------------------------------------------------------------------


@router.get("/api/v4/account")
async def account(request: Request) -> Response:
    acc, rec = authed(request)
    body: Json = {
        "id": acc.id,
        "name": acc.name,
        "subdomain": acc.subdomain,
        "created_at": 1600000000,
        "created_by": acc.admin_id(),
        "updated_at": 1600000000,
        "updated_by": acc.admin_id(),
        "current_user_id": rec["user_id"],
        "country": "RU",
        "customers_mode": "disabled",
        "is_unsorted_on": True,
        "is_loss_reason_enabled": False,
        "is_helpbot_enabled": False,
        "is_technical_account": False,
        "contact_name_display_order": 1,
        "currency": "RUB",
        "currency_symbol": "₽",
        "uuid": str(uuid.UUID(int=acc.id)),
        "version": 2,
        "_links": links(acc, "/api/v4/account"),
    }
    wants = with_of(request)
    embedded: Json = {}
    if "users_groups" in wants:
        embedded["users_groups"] = [dict(g, uuid=None) for g in acc.groups]
    if "task_types" in wants:
        embedded["task_types"] = [dict(t, color=None, icon_id=None) for t in TASK_TYPES]
    if "datetime_settings" in wants:
        dts = {
            "date_pattern": "d.m.Y H:i",
            "short_date_pattern": "d.m.Y",
            "short_time_pattern": "H:i",
            "date_format": "d.m.Y",
            "time_format": "H:i:s",
            "timezone": acc.timezone,
            "timezone_offset": "+03:00",
        }
        body["datetime_settings"] = dts
        embedded["datetime_settings"] = dts  # both places: clients have been seen reading either
    if embedded:
        body["_embedded"] = embedded
    return hal(body)


def _user(acc: Account, u: Json, wants: set[str]) -> Json:
    out = dict(u, _links=links(acc, f"/api/v4/users/{u['id']}"))
    if "group" in wants:
        gid = u["rights"]["group_id"]
        out["_embedded"] = {"groups": [g for g in acc.groups if g["id"] == gid]}
    return out


@router.get("/api/v4/users")
async def users(request: Request) -> Response:
    acc, _ = authed(request)
    wants = with_of(request)
    items = sorted(acc.users.values(), key=lambda u: u["id"])
    return paged(request, acc, "/api/v4/users", "users", items, lambda u: _user(acc, u, wants))


@router.get("/api/v4/users/{user_id:int}")
async def user(request: Request, user_id: int) -> Response:
    acc, _ = authed(request)
    u = acc.users.get(user_id)
    return hal(_user(acc, u, with_of(request))) if u else no_content()


def _pipeline(acc: Account, p: Json) -> Json:
    statuses = [
        dict(s, account_id=acc.id, _links=links(acc, f"/api/v4/leads/pipelines/{p['id']}/statuses/{s['id']}"))
        for s in p["_statuses"]
    ]
    return dict(
        _public(p), _links=links(acc, f"/api/v4/leads/pipelines/{p['id']}"), _embedded={"statuses": statuses}
    )


@router.get("/api/v4/leads/pipelines")
async def pipelines(request: Request) -> Response:
    acc, _ = authed(request)
    items = [_pipeline(acc, p) for p in acc.pipelines.values()]
    return hal(
        {
            "_total_items": len(items),
            "_links": links(acc, "/api/v4/leads/pipelines"),
            "_embedded": {"pipelines": items},
        }
    )


@router.get("/api/v4/leads/pipelines/{pipeline_id:int}")
async def pipeline(request: Request, pipeline_id: int) -> Response:
    acc, _ = authed(request)
    p = acc.pipelines.get(pipeline_id)
    return hal(_pipeline(acc, p)) if p else no_content()


@router.get("/api/v4/leads/pipelines/{pipeline_id:int}/statuses")
async def statuses(request: Request, pipeline_id: int) -> Response:
    acc, _ = authed(request)
    p = acc.pipelines.get(pipeline_id)
    if p is None:
        return no_content()
    items = _pipeline(acc, p)["_embedded"]["statuses"]
    path = f"/api/v4/leads/pipelines/{pipeline_id}/statuses"
    return hal({"_total_items": len(items), "_links": links(acc, path), "_embedded": {"statuses": items}})


@router.get("/api/v4/{entity}/custom_fields")
async def custom_fields(request: Request, entity: str) -> Response:
    acc, _ = authed(request)
    if entity not in acc.fields:
        raise Problem(404, "Not Found")
    path = f"/api/v4/{entity}/custom_fields"
    return paged(
        request,
        acc,
        path,
        "custom_fields",
        acc.fields[entity],
        lambda f: dict(f, _links=links(acc, f"{path}/{f['id']}")),
        default_limit=FIELDS_PAGE,
        max_limit=FIELDS_PAGE,
    )


# --- contacts -----------------------------------------------------------------------------------------------


def _contact(acc: Account, c: Json, wants: set[str]) -> Json:
    out = _public(c)
    out["_links"] = links(acc, f"/api/v4/contacts/{c['id']}")
    embedded: Json = {"tags": c["tags"], "companies": []}
    if "leads" in wants:
        embedded["leads"] = [
            {"id": lid, "_links": links(acc, f"/api/v4/leads/{lid}")}
            for (cid, lid) in acc.links
            if cid == c["id"] and lid in acc.leads and not acc.leads[lid]["is_deleted"]
        ]
    out["_embedded"] = embedded
    return out


def _updated_filter(request: Request, items: list[Json]) -> list[Json]:
    lo = request.query_params.get("filter[updated_at][from]")
    hi = request.query_params.get("filter[updated_at][to]")
    if lo is not None and lo.isdigit():
        items = [i for i in items if i["updated_at"] >= int(lo)]
    if hi is not None and hi.isdigit():
        items = [i for i in items if i["updated_at"] <= int(hi)]
    return items


def _ordered(request: Request, items: list[Json]) -> list[Json]:
    for field in ("updated_at", "created_at", "id"):
        direction = request.query_params.get(f"order[{field}]")
        if direction in ("asc", "desc"):
            return sorted(items, key=lambda i: (i[field], i["id"]), reverse=direction == "desc")
    return sorted(items, key=lambda i: i["id"])


@router.get("/api/v4/contacts")
async def list_contacts(request: Request) -> Response:
    acc, _ = authed(request)
    w = world_of(request)
    items = [c for c in acc.contacts.values() if not c["is_deleted"]]
    ids = ids_param(request, "filter[id]")
    if ids is not None:
        items = [c for c in items if c["id"] in ids]
    query = request.query_params.get("query")
    if query:
        items = [c for c in items if query_matches(c, query, w.switches.phone_match_mode)]
    items = _ordered(request, _updated_filter(request, items))
    wants = with_of(request)
    return paged(request, acc, "/api/v4/contacts", "contacts", items, lambda c: _contact(acc, c, wants))


@router.get("/api/v4/contacts/{contact_id:int}")
async def get_contact(request: Request, contact_id: int) -> Response:
    acc, _ = authed(request)
    c = acc.contacts.get(contact_id)
    if c is None or c["is_deleted"]:
        return no_content()
    return hal(_contact(acc, c, with_of(request)))


@router.post("/api/v4/contacts")
async def post_contacts(request: Request) -> Response:
    acc, rec = authed(request)
    rows = ent.create_contacts(world_of(request), acc, await json_body(request), rec["user_id"])
    return created(acc, "/api/v4/contacts", "contacts", rows)


@router.patch("/api/v4/contacts")
async def patch_contacts(request: Request) -> Response:
    acc, rec = authed(request)
    items = ent.batch(await json_body(request))
    rows = ent.patch_contacts(world_of(request), acc, items, rec["user_id"])
    return created(acc, "/api/v4/contacts", "contacts", rows)


@router.patch("/api/v4/contacts/{contact_id:int}")
async def patch_contact(request: Request, contact_id: int) -> Response:
    acc, rec = authed(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, "Request body must be an object")
    if contact_id not in acc.contacts or acc.contacts[contact_id]["is_deleted"]:
        raise Problem(404, "Contact not found")
    row = ent.patch_contacts(world_of(request), acc, [{**body, "id": contact_id}], rec["user_id"])[0]
    if "request_id" not in body:
        row.pop("request_id")
    return hal(row | {"_links": links(acc, f"/api/v4/contacts/{contact_id}")})


# --- leads --------------------------------------------------------------------------------------------------


def _lead(acc: Account, ld: Json, wants: set[str]) -> Json:
    out = _public(ld)
    out["_links"] = links(acc, f"/api/v4/leads/{ld['id']}")
    embedded: Json = {"tags": ld["tags"], "companies": []}
    if "contacts" in wants:
        embedded["contacts"] = [
            {"id": cid, "is_main": main, "_links": links(acc, f"/api/v4/contacts/{cid}")}
            for (cid, lid), main in acc.links.items()
            if lid == ld["id"] and cid in acc.contacts and not acc.contacts[cid]["is_deleted"]
        ]
    out["_embedded"] = embedded
    return out


@router.get("/api/v4/leads")
async def list_leads(request: Request) -> Response:
    acc, _ = authed(request)
    items = [ld for ld in acc.leads.values() if not ld["is_deleted"]]
    ids = ids_param(request, "filter[id]")
    if ids is not None:
        items = [ld for ld in items if ld["id"] in ids]
    query = request.query_params.get("query")
    if query:
        items = [ld for ld in items if query.casefold() in ld["name"].casefold() or query == str(ld["id"])]
    items = _ordered(request, _updated_filter(request, items))
    wants = with_of(request)
    return paged(request, acc, "/api/v4/leads", "leads", items, lambda ld: _lead(acc, ld, wants))


@router.get("/api/v4/leads/{lead_id:int}")
async def get_lead(request: Request, lead_id: int) -> Response:
    acc, _ = authed(request)
    ld = acc.leads.get(lead_id)
    if ld is None or ld["is_deleted"]:
        return no_content()
    return hal(_lead(acc, ld, with_of(request)))


@router.post("/api/v4/leads")
async def post_leads(request: Request) -> Response:
    acc, rec = authed(request)
    rows = ent.create_leads(world_of(request), acc, await json_body(request), rec["user_id"])
    return created(acc, "/api/v4/leads", "leads", rows)


@router.patch("/api/v4/leads")
async def patch_leads(request: Request) -> Response:
    acc, rec = authed(request)
    items = ent.batch(await json_body(request))
    rows = ent.patch_leads(world_of(request), acc, items, rec["user_id"])
    return created(acc, "/api/v4/leads", "leads", rows)


@router.patch("/api/v4/leads/{lead_id:int}")
async def patch_lead(request: Request, lead_id: int) -> Response:
    acc, rec = authed(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, "Request body must be an object")
    if lead_id not in acc.leads:
        raise Problem(404, "Lead not found")
    row = ent.patch_leads(world_of(request), acc, [{**body, "id": lead_id}], rec["user_id"])[0]
    if "request_id" not in body:
        row.pop("request_id")
    return hal(row | {"_links": links(acc, f"/api/v4/leads/{lead_id}")})


@router.post("/api/v4/leads/complex")
async def post_complex(request: Request) -> Response:
    acc, rec = authed(request)
    rows = ent.create_complex(world_of(request), acc, await json_body(request), rec["user_id"])
    return hal(rows)


@router.post("/api/v4/leads/unsorted/sip")
async def post_unsorted_sip(request: Request) -> Response:
    acc, rec = authed(request)
    rows = ent.create_unsorted_sip(world_of(request), acc, await json_body(request), rec["user_id"])
    out = [
        r
        | {
            "_embedded": {
                "leads": [{"id": i, "_links": links(acc, f"/api/v4/leads/{i}")} for i in r.pop("lead_ids")],
                "contacts": [
                    {"id": i, "_links": links(acc, f"/api/v4/contacts/{i}")} for i in r.pop("contact_ids")
                ],
            }
        }
        for r in rows
    ]
    return hal({"_total_items": len(out), "_embedded": {"unsorted": out}})


# --- tasks --------------------------------------------------------------------------------------------------


def _task(acc: Account, t: Json) -> Json:
    return dict(t, _links=links(acc, f"/api/v4/tasks/{t['id']}"))


@router.get("/api/v4/tasks")
async def list_tasks(request: Request) -> Response:
    acc, _ = authed(request)
    items = list(acc.tasks.values())
    q = request.query_params
    etype = q.get("filter[entity_type]")
    if etype:
        items = [t for t in items if t["entity_type"] == etype]
    for name, key in (
        ("filter[entity_id]", "entity_id"),
        ("filter[id]", "id"),
        ("filter[responsible_user_id]", "responsible_user_id"),
    ):
        wanted = ids_param(request, name)
        if wanted is not None:
            items = [t for t in items if t[key] in wanted]
    done = q.get("filter[is_completed]")
    if done is not None and done != "":
        items = [t for t in items if t["is_completed"] == (done in ("1", "true"))]
    items = _ordered(request, _updated_filter(request, items))
    return paged(request, acc, "/api/v4/tasks", "tasks", items, lambda t: _task(acc, t))


@router.get("/api/v4/tasks/{task_id:int}")
async def get_task(request: Request, task_id: int) -> Response:
    acc, _ = authed(request)
    t = acc.tasks.get(task_id)
    return hal(_task(acc, t)) if t else no_content()


@router.post("/api/v4/tasks")
async def post_tasks(request: Request) -> Response:
    acc, rec = authed(request)
    rows = ent.create_tasks(world_of(request), acc, await json_body(request), rec["user_id"])
    return created(acc, "/api/v4/tasks", "tasks", rows)


@router.patch("/api/v4/tasks")
async def patch_tasks(request: Request) -> Response:
    acc, rec = authed(request)
    items = ent.batch(await json_body(request))
    return created(
        acc, "/api/v4/tasks", "tasks", ent.patch_tasks(world_of(request), acc, items, rec["user_id"])
    )


@router.patch("/api/v4/tasks/{task_id:int}")
async def patch_task(request: Request, task_id: int) -> Response:
    acc, rec = authed(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, "Request body must be an object")
    if task_id not in acc.tasks:
        raise Problem(404, "Task not found")
    row = ent.patch_tasks(world_of(request), acc, [{**body, "id": task_id}], rec["user_id"])[0]
    if "request_id" not in body:
        row.pop("request_id")
    return hal(row | {"_links": links(acc, f"/api/v4/tasks/{task_id}")})


# --- notes --------------------------------------------------------------------------------------------------


def _note(acc: Account, n: Json) -> Json:
    out = {k: v for k, v in n.items() if k != "entity_type"}
    out["_links"] = links(acc, f"/api/v4/{n['entity_type']}/{n['entity_id']}/notes/{n['id']}")
    return out


def _notes_list(
    request: Request, acc: Account, entity: str, entity_ids: list[int] | None, path: str
) -> Response:
    if entity not in ent.NOTE_ENTITIES:
        raise Problem(404, "Not Found")
    items = [n for n in acc.notes.values() if n["entity_type"] == entity]
    if entity_ids is not None:
        items = [n for n in items if n["entity_id"] in entity_ids]
    types = [v for k, v in request.query_params.multi_items() if k.startswith("filter[note_type]")]
    if types:
        items = [n for n in items if n["note_type"] in types]
    items = _ordered(request, _updated_filter(request, items))
    return paged(request, acc, path, "notes", items, lambda n: _note(acc, n))


@router.get("/api/v4/{entity}/notes")
async def list_notes(request: Request, entity: str) -> Response:
    acc, _ = authed(request)
    ids = ids_param(request, "filter[entity_id]")
    return _notes_list(request, acc, entity, ids, f"/api/v4/{entity}/notes")


@router.get("/api/v4/{entity}/{entity_id:int}/notes")
async def list_entity_notes(request: Request, entity: str, entity_id: int) -> Response:
    acc, _ = authed(request)
    return _notes_list(request, acc, entity, [entity_id], f"/api/v4/{entity}/{entity_id}/notes")


def _notes_created(acc: Account, entity: str, rows: list[Json]) -> Response:
    out = [r | {"_links": links(acc, f"/api/v4/{entity}/notes/{r['id']}")} for r in rows]
    return hal({"_links": links(acc, f"/api/v4/{entity}/notes"), "_embedded": {"notes": out}})


@router.post("/api/v4/{entity}/notes")
async def post_notes(request: Request, entity: str) -> Response:
    acc, rec = authed(request)
    rows = ent.create_notes(world_of(request), acc, entity, await json_body(request), rec["user_id"])
    return _notes_created(acc, entity, rows)


@router.post("/api/v4/{entity}/{entity_id:int}/notes")
async def post_entity_notes(request: Request, entity: str, entity_id: int) -> Response:
    acc, rec = authed(request)
    body = await json_body(request)
    rows = ent.create_notes(world_of(request), acc, entity, body, rec["user_id"], entity_id=entity_id)
    return _notes_created(acc, entity, rows)


@router.patch("/api/v4/{entity}/notes")
async def patch_notes(request: Request, entity: str) -> Response:
    acc, rec = authed(request)
    items = ent.batch(await json_body(request))
    rows = ent.patch_notes(world_of(request), acc, entity, items, rec["user_id"])
    return _notes_created(acc, entity, rows)


@router.patch("/api/v4/{entity}/notes/{note_id:int}")
async def patch_note(request: Request, entity: str, note_id: int) -> Response:
    acc, rec = authed(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise Problem(400, "Request body must be an object")
    if entity not in ent.NOTE_ENTITIES or ent.live_note(acc, entity, note_id) is None:
        raise Problem(404, "Entity not found")
    row = ent.patch_notes(world_of(request), acc, entity, [{**body, "id": note_id}], rec["user_id"])[0]
    if "request_id" not in body:
        row.pop("request_id")
    return hal(row | {"_links": links(acc, f"/api/v4/{entity}/notes/{note_id}")})


# --- calls, v2 events ---------------------------------------------------------------------------------------


@router.post("/api/v4/calls")
async def post_calls(request: Request) -> Response:
    acc, rec = authed(request)
    done, errors = ent.add_calls(world_of(request), acc, await json_body(request), rec["user_id"])
    calls = []
    for c in done:
        kind = "leads" if c["entity_type"] == "lead" else "contacts"
        entity_link = {"id": c["entity_id"], "_links": links(acc, f"/api/v4/{kind}/{c['entity_id']}")}
        calls.append(c | {"_embedded": {"entity": entity_link}})
    body: Json = {"_total_items": len(calls), "errors": errors}
    if calls:
        body["_embedded"] = {"calls": calls}
        return hal(body)
    return JSONResponse(body, status_code=400, media_type="application/problem+json")


@router.post("/api/v2/events")
async def post_events_v2(request: Request) -> Response:
    acc, _ = authed(request)
    w = world_of(request)
    ent.add_events_v2(w, acc, await json_body(request))
    if w.switches.events_v2_status == 204:
        return no_content()
    return hal({}, status=w.switches.events_v2_status)


# --- webhooks -----------------------------------------------------------------------------------------------


def _hook(acc: Account, h: Json) -> Json:
    return dict(h, _links=links(acc, "/api/v4/webhooks"))


@router.get("/api/v4/webhooks")
async def list_webhooks(request: Request) -> Response:
    acc, _ = authed(request)
    items = list(acc.webhooks.values())
    dest = request.query_params.get("filter[destination]")
    if dest:
        items = [h for h in items if h["destination"] == dest]
    if not items:
        return no_content()
    return hal(
        {
            "_total_items": len(items),
            "_links": links(acc, "/api/v4/webhooks"),
            "_embedded": {"webhooks": [_hook(acc, h) for h in items]},
        }
    )


@router.post("/api/v4/webhooks")
async def post_webhook(request: Request) -> Response:
    acc, rec = authed(request)
    hook = ent.subscribe(world_of(request), acc, await json_body(request), rec["user_id"])
    return hal(_hook(acc, hook))


@router.delete("/api/v4/webhooks")
async def delete_webhook(request: Request) -> Response:
    acc, _ = authed(request)
    ent.unsubscribe(acc, await json_body(request))
    return no_content()


# --- OAuth --------------------------------------------------------------------------------------------------


async def _form_or_json(request: Request) -> Json:
    raw = await request.body()
    ctype = request.headers.get("content-type", "")
    if "json" in ctype or raw.lstrip().startswith(b"{"):
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise oauth.oauth_problem(400, "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise oauth.oauth_problem(400, "Request body must be an object")
        return body
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


@router.post("/oauth2/access_token")
async def access_token(request: Request) -> Response:
    w = world_of(request)
    host = getattr(request.state, "emu_host", None)
    if not host or (host not in w.hosts and host not in w.moved):
        raise Problem(404, "Unknown account")
    body = await _form_or_json(request)
    return JSONResponse(oauth.token_endpoint(w, host, body))


@router.get("/oauth2/account/current/subdomain")
async def current_subdomain(request: Request) -> Response:
    """Where a (moved) account lives now (§2.2), answered on the ``api_domain`` host or any account's."""
    w = world_of(request)
    acc = oauth.refresh_owner(w, request.headers.get("x-refresh-token", ""))
    if acc is None:
        raise oauth.oauth_problem(401, "Cannot decrypt the refresh token")
    sub, _, domain = acc.base_domain.partition(".")
    return JSONResponse(
        {"id": acc.id, "subdomain": sub, "domain": domain, "top_level_domain": domain.rsplit(".", 1)[-1]}
    )


@router.get("/oauth")
async def consent(request: Request) -> Response:
    """The consent page (§4.2): «Разрешить» sends the browser to ``redirect_uri`` with a fresh code."""
    w = world_of(request)
    q = request.query_params
    integ = w.integrations.get(q.get("client_id", ""))
    if integ is None:
        return HTMLResponse("<h1>Интеграция не найдена</h1>", status_code=404)
    options = "".join(
        f'<option value="{html.escape(a.base_domain)}">{html.escape(a.name)}</option>'
        for a in w.accounts.values()
    )
    page = f"""<!doctype html><html lang="ru"><head><meta charset="utf-8">
<title>Предоставить доступ</title></head><body>
<h1>Интеграция «{html.escape(integ.name)}» запрашивает доступ к аккаунту</h1>
<form method="post" action="oauth/allow">
<input type="hidden" name="client_id" value="{html.escape(integ.client_id)}">
<input type="hidden" name="state" value="{html.escape(q.get("state", ""))}">
<select name="account">{options}</select>
<button type="submit" id="allow">Разрешить</button></form></body></html>"""
    return HTMLResponse(page)


@router.post("/oauth/allow")
async def consent_allow(request: Request) -> Response:
    w = world_of(request)
    form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
    integ = w.integrations.get(form.get("client_id", ""))
    if integ is None:
        raise Problem(400, "Unknown client_id")
    acc = w.account_named(form.get("account"))
    code = oauth.issue_code(w, acc, integ)
    query = {
        "code": code,
        "referer": acc.base_domain,
        "state": form.get("state", ""),
        "client_id": integ.client_id,
    }
    return RedirectResponse(f"{integ.redirect_uri}?{urlencode(query)}", status_code=302)
