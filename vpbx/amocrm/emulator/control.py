"""The control and inspection API under ``/__emu__`` (amocrm.md §4.6); the ASGI layer lets only loopback
clients in. Answers are plain JSON; errors are problem+json like the rest of the emulator."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from vpbx.amocrm.emulator import entities as ent
from vpbx.amocrm.emulator import oauth
from vpbx.amocrm.emulator.config import merge_switches
from vpbx.amocrm.emulator.world import FaultRule, Integration, Json, Problem, World

PREFIX = "/__emu__"
HOOK_TIMEOUT = httpx.Timeout(10.0)  # the PBX's OAuth callback exchanges the code inside its handler
DOWN_MODES = ("503", "hang")
FAULT_ACTIONS = {
    "status",
    "body",
    "content_type",
    "delay_ms",
    "reset_connection",
    "apply_then_drop",
    "headers",
}

router = APIRouter(prefix=PREFIX)


def world_of(request: Request) -> World:
    w: World = request.app.state.world
    return w


async def body_of(request: Request) -> Json:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise Problem(400, "Request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "Request body must be an object")
    return body


def _integration(w: World, client_id: Any) -> Integration:
    if client_id:
        integ = w.integrations.get(str(client_id))
    else:
        integ = next(iter(w.integrations.values()), None)
    if integ is None:
        raise Problem(404, f"Unknown integration {client_id or ''}".strip())
    return integ


# --- fixture, state, log, stats, clock ----------------------------------------------------------------------


@router.post("/load")
async def load(request: Request) -> Response:
    w = world_of(request)
    body = await body_of(request)
    if request.query_params.get("reset") in ("1", "true"):
        w.reset()
    w.load(body)
    return JSONResponse({"accounts": [a.base_domain for a in w.accounts.values()]})


@router.post("/reset")
async def reset(request: Request) -> Response:
    world_of(request).reset()
    return JSONResponse({"ok": True})


@router.post("/switches")
async def switches(request: Request) -> Response:
    """Change switches at run time (tests): the posted keys over the current ones."""
    w = world_of(request)
    w.switches = merge_switches(w.switches.model_dump(), await body_of(request))
    return JSONResponse(w.switches.model_dump())


@router.get("/switches")
async def get_switches(request: Request) -> Response:
    return JSONResponse(world_of(request).switches.model_dump())


@router.get("/state")
async def state(request: Request) -> Response:
    w = world_of(request)
    return JSONResponse(w.state(w.account_named(request.query_params.get("account"))))


@router.get("/log")
async def log(request: Request) -> Response:
    w = world_of(request)
    acc = w.account_named(request.query_params.get("account"))
    since = int(request.query_params.get("since") or 0)
    return JSONResponse({"entries": [e for e in acc.log if e["seq"] > since], "last_seq": w.log_seq})


@router.get("/stats")
async def stats(request: Request) -> Response:
    w = world_of(request)
    acc = w.account_named(request.query_params.get("account"))
    routes = w.stats.get(acc.id, {})
    total = sum(sum(per.values()) for per in routes.values())
    return JSONResponse({"routes": routes, "total": total})


@router.post("/clock/advance")
async def clock_advance(request: Request) -> Response:
    w = world_of(request)
    body = await body_of(request)
    try:
        w.offset += float(body.get("seconds", 0))
    except (TypeError, ValueError):
        raise Problem(400, "seconds must be a number") from None
    return JSONResponse({"now": w.now(), "offset": w.offset})


@router.get("/clock")
async def clock(request: Request) -> Response:
    w = world_of(request)
    return JSONResponse({"now": w.now(), "offset": w.offset})


@router.post("/accounts/{base_domain}/flags")
async def flags(request: Request, base_domain: str) -> Response:
    w = world_of(request)
    acc = w.account_named(base_domain)
    body = await body_of(request)
    if "unpaid" in body:
        acc.unpaid = bool(body["unpaid"])
    if "duplicate_control" in body:
        acc.duplicate_control = bool(body["duplicate_control"])
    return JSONResponse({"unpaid": acc.unpaid, "duplicate_control": acc.duplicate_control})


@router.delete("/accounts/{base_domain}/contacts/{contact_id:int}")
async def delete_contact(request: Request, base_domain: str, contact_id: int) -> Response:
    """A user deletes a contact in amoCRM (fires ``delete_contact``)."""
    w = world_of(request)
    acc = w.account_named(base_domain)
    c = acc.contacts.get(contact_id)
    if c is None:
        raise Problem(404, "Unknown contact")
    c["is_deleted"] = True
    c["updated_at"] = w.now()
    ent.fire(w, acc, "delete_contact", c)
    return JSONResponse({"id": contact_id, "is_deleted": True})


@router.post("/accounts/{base_domain}/contacts/{contact_id:int}/restore")
async def restore_contact(request: Request, base_domain: str, contact_id: int) -> Response:
    w = world_of(request)
    acc = w.account_named(base_domain)
    c = acc.contacts.get(contact_id)
    if c is None:
        raise Problem(404, "Unknown contact")
    c["is_deleted"] = False
    c["updated_at"] = w.now()
    ent.fire(w, acc, "restore_contact", c)
    return JSONResponse({"id": contact_id, "is_deleted": False})


@router.post("/integrations")
async def integrations(request: Request) -> Response:
    """Add an integration or change its ``redirect_uri``/``disconnect_hook``/``client_secret`` (the PBX's
    port differs per test)."""
    w = world_of(request)
    body = await body_of(request)
    client_id = str(body.get("client_id") or "")
    integ = w.integrations.get(client_id) if client_id else next(iter(w.integrations.values()), None)
    if integ is None:
        if not client_id or not body.get("client_secret"):
            raise Problem(400, "A new integration needs client_id and client_secret")
        integ = w.integrations[client_id] = Integration(client_id, str(body["client_secret"]), "")
    for key in ("redirect_uri", "disconnect_hook", "client_secret", "name"):
        if body.get(key) is not None:
            setattr(integ, key, str(body[key]))
    return JSONResponse(vars(integ) | {"client_secret": "***"})


# --- OAuth plays ------------------------------------------------------------------------------------------


@router.post("/install")
async def install(request: Request) -> Response:
    """The widget-install webhook (§4.2): a fresh code sent server-to-server to ``redirect_uri``."""
    w = world_of(request)
    body = await body_of(request)
    acc = w.account_named(body.get("account"))
    integ = _integration(w, body.get("client_id"))
    user_id = int(body.get("user_id") or acc.admin_id())
    code = oauth.issue_code(w, acc, integ, user_id)
    params = {
        "code": code,
        "referer": acc.base_domain,
        "state": str(body.get("state", "")),
        "client_id": integ.client_id,
    }
    if w.switches.install_from_widget:
        params["from_widget"] = "1"
    target = str(body.get("redirect_uri") or integ.redirect_uri)
    if body.get("call", True) is False:
        return JSONResponse({"code": code, "redirect_uri": target, "params": params})
    try:
        async with httpx.AsyncClient(timeout=HOOK_TIMEOUT, follow_redirects=False) as http:
            resp = await http.get(target, params=params)
    except httpx.HTTPError as e:
        return JSONResponse({"code": code, "error": f"{type(e).__name__}: {e}"}, status_code=502)
    return JSONResponse({"code": code, "status": resp.status_code, "body": resp.text[:4000]})


@router.post("/uninstall")
async def uninstall(request: Request) -> Response:
    """Revoke the account's tokens for the client and call the disconnect hook (signed, §2.2)."""
    w = world_of(request)
    body = await body_of(request)
    acc = w.account_named(body.get("account"))
    integ = _integration(w, body.get("client_id"))
    revoked = oauth.revoke(w, acc, integ.client_id)
    out: Json = {"revoked": revoked}
    if body.get("call_hook", True) and integ.disconnect_hook:
        signature = oauth.hook_signature(integ.client_secret, integ.client_id, acc.id)
        if body.get("bad_signature"):
            signature = oauth.hook_signature(integ.client_secret + "x", integ.client_id, acc.id)
        params = {"account_id": str(acc.id), "client_uuid": integ.client_id, "signature": signature}
        out["params"] = params
        try:
            async with httpx.AsyncClient(timeout=HOOK_TIMEOUT) as http:
                resp = await http.get(integ.disconnect_hook, params=params)
            out |= {"status": resp.status_code, "body": resp.text[:4000]}
        except httpx.HTTPError as e:
            out["error"] = f"{type(e).__name__}: {e}"
    return JSONResponse(out)


@router.post("/move")
async def move(request: Request) -> Response:
    """The account moves to ``new_base_domain``: refreshes on the old host answer 401 from now on."""
    w = world_of(request)
    body = await body_of(request)
    acc = w.account_named(body.get("account"))
    new = str(body.get("new_base_domain") or "").lower()
    if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", new) or new in w.hosts:
        raise Problem(400, "new_base_domain is not a free host name")
    old = acc.base_domain
    w.hosts.pop(old, None)
    w.moved[old] = acc.id
    acc.base_domain = new
    w.hosts[new] = acc.id
    w.moved.pop(new, None)
    return JSONResponse({"old": old, "new": new})


@router.post("/disposable-token")
async def disposable_token(request: Request) -> Response:
    w = world_of(request)
    body = await body_of(request)
    acc = w.account_named(body.get("account"))
    integ = _integration(w, body.get("client_id"))
    user_id = int(body.get("user_id") or acc.admin_id())
    is_admin = body.get("is_admin")
    if is_admin is None:
        is_admin = bool(acc.users.get(user_id, {}).get("rights", {}).get("is_admin", False))
    token = oauth.disposable_token(
        w,
        acc,
        integ,
        user_id=user_id,
        is_admin=bool(is_admin),
        aud=str(body.get("aud") or ""),
        ttl=int(body.get("ttl") or 600),
    )
    return JSONResponse({"token": token})


# --- faults and outages -----------------------------------------------------------------------------------


@router.post("/faults")
async def add_fault(request: Request) -> Response:
    w = world_of(request)
    body = await body_of(request)
    match = body.get("match") or {}
    action = body.get("action") or {}
    if not isinstance(match, dict) or not isinstance(action, dict):
        raise Problem(400, "match and action must be objects")
    unknown = set(action) - FAULT_ACTIONS
    if unknown:
        raise Problem(400, f"Unknown action keys: {sorted(unknown)}")
    try:
        regex = re.compile(match["path_regex"]) if match.get("path_regex") else None
    except re.error as e:
        raise Problem(400, f"path_regex: {e}") from None
    w.fault_seq += 1
    rule = FaultRule(
        id=w.fault_seq,
        method=match.get("method"),
        path_regex=regex,
        account=match.get("account"),
        action=action,
        times=int(body.get("times", 1)),
    )
    w.faults.append(rule)
    return JSONResponse(rule.public())


@router.get("/faults")
async def list_faults(request: Request) -> Response:
    return JSONResponse([f.public() for f in world_of(request).faults])


@router.delete("/faults")
async def clear_faults(request: Request) -> Response:
    world_of(request).faults.clear()
    return JSONResponse({"ok": True})


@router.post("/down")
async def down(request: Request) -> Response:
    w = world_of(request)
    body = await body_of(request)
    mode = str(body.get("mode", "503"))
    if mode not in DOWN_MODES:
        raise Problem(400, f"mode is one of {DOWN_MODES}")
    seconds = float(body.get("seconds", 0))
    w.down_until = time.monotonic() + seconds if seconds > 0 else 0.0
    w.down_mode = mode
    return JSONResponse({"seconds": seconds, "mode": mode})
