"""The ``/amo`` routes of connecting and disconnecting (amocrm.md §2.2, §3.2–3.4): the OAuth callback,
the disconnect hook, and the widget's ``/state``, ``/connect-ticket`` and ``/disconnect``. Routes only: the
work is ``vpbx.amocrm.binding``'s. The widget's routes take the account **only** from the verified token."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from vpbx.amocrm import binding as svc
from vpbx.amocrm import callback_page
from vpbx.amocrm.client import shared_pool
from vpbx.amocrm.widget_auth import WidgetCaller, public_origin, widget_admin, widget_caller
from vpbx.logs import get_logger

if TYPE_CHECKING:
    from vpbx.app import Core

log = get_logger("vpbx.amocrm.binding")
security_log = get_logger("vpbx.security")

router = APIRouter()

CONNECT_PATH = "/integrations/amocrm/connect"
# the JSON status of each refusal (the widget and amoCRM's installer read the code)
STATUS: dict[type[svc.BindError], int] = {
    svc.NotConfigured: 503,
    svc.ClientMismatch: 400,
    svc.HostNotAllowed: 400,
    svc.InstallFailed: 502,
    svc.NotInstalled: 409,
}


def _core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


def _refused(e: svc.BindError) -> HTTPException:
    return HTTPException(STATUS.get(type(e), 409), detail={"error": e.code, **e.details})


@router.get("/oauth/callback")
async def oauth_callback(
    request: Request,
    code: Annotated[str, Query(max_length=4096)] = "",
    referer: Annotated[str, Query(max_length=255)] = "",
    state: Annotated[str, Query(max_length=512)] = "",
    client_id: Annotated[str, Query(max_length=64)] = "",
    from_widget: Annotated[str, Query(max_length=8)] = "",
    error: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """F2.1: amoCRM delivers the code (widget install, or the consent page); exchanged here and now. A
    browser (Accept: text/html first) gets a page in words (callback_page), a program the JSON; both with
    the same status code."""
    del state  # we start no OAuth flow ourselves: amoCRM's install sends the code unasked
    core = _core(request)
    html = callback_page.wants_html(request)
    if error and not code:  # the admin refused the consent (ours; amoCRM? sends error=access_denied)
        return _callback_refused(request, html, 400, "access-denied")
    if not code or not referer:
        return _callback_refused(request, html, 400, "code-required")
    async with core.sessions() as s:
        try:
            install = await svc.record_install(
                s,
                core.box,
                core.settings,
                code=code,
                referer=referer,
                client_id=client_id,
                now=core.clock.now(),
            )
        except svc.BindError as e:
            log.warning("amocrm.install_refused", error=e.code, from_widget=bool(from_widget))
            if html:
                return callback_page.render(request, STATUS.get(type(e), 409), error=e.code)
            raise _refused(e) from None
        await s.commit()
    shared_pool(core).tokens.forget(install.amo_account_id)  # a reinstall's pair replaces any cached one
    if html:
        return callback_page.render(request, 200, account=install.base_domain)
    return JSONResponse({"status": "installed", "account_id": install.amo_account_id})


def _callback_refused(request: Request, html: bool, status: int, code: str) -> Response:
    if html:
        return callback_page.render(request, status, error=code)
    raise HTTPException(status, detail={"error": code})


def signature_ok(secret: str, client_uuid: str, account_id: str, signature: str) -> bool:
    """§2.2: ``hex(HMAC-SHA256(client_secret, f"{client_uuid}|{account_id}"))``, compared in constant time."""
    expected = hmac.new(secret.encode(), f"{client_uuid}|{account_id}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


@router.get("/oauth/disconnect")
async def disconnect_hook(
    request: Request,
    account_id: Annotated[str, Query(max_length=20)] = "",
    client_uuid: Annotated[str, Query(max_length=64)] = "",
    signature: Annotated[str, Query(max_length=128)] = "",
) -> Response:
    """The widget was uninstalled in amoCRM: disable the binding and delete the install and its tokens."""
    core = _core(request)
    amo = core.settings.amocrm
    if not amo.client_id or amo.client_secret is None:
        raise HTTPException(503, detail={"error": svc.NotConfigured.code})
    if client_uuid != amo.client_id or not account_id.isdigit():
        raise HTTPException(400, detail={"error": "invalid-request"})
    account = int(account_id)
    now = core.clock.now()
    pool = shared_pool(core)
    if not signature_ok(amo.client_secret.get_secret_value(), client_uuid, account_id, signature):
        async with core.sessions() as s:
            installed = await svc.install_of(s, account) is not None
        if not installed or not await svc.probe_revoked(pool.tokens, account):
            security_log.warning("amocrm.disconnect_bad_signature", account_id=account)
            raise HTTPException(403, detail={"error": "signature-invalid"})
        log.info("amocrm.disconnect_confirmed_by_probe", account_id=account)
    async with core.sessions() as s:
        await svc.uninstall(s, account, now=now)
        await s.commit()
    pool.tokens.forget(account)
    return Response(status_code=204)


# --- the widget ---------------------------------------------------------------------------------------------

CallerDep = Annotated[WidgetCaller, Depends(widget_caller)]
AdminCallerDep = Annotated[WidgetCaller, Depends(widget_admin)]


@router.get("/widget/v1/state")
async def widget_state(request: Request, caller: CallerDep) -> Response:
    core = _core(request)
    async with core.sessions() as s:
        st = await svc.status_for(s, caller.account_id)
    return JSONResponse(
        {
            "status": st.status,
            "pbx_domain": st.pbx_domain,
            "connected_at": int(st.connected_at.timestamp()) if st.connected_at else None,
            "is_admin": caller.is_admin,
            "health": st.health,
            "oauth_missing": st.oauth_missing,  # ours: no OAuth install for the account (AccountState)
            "order_url": core.settings.amocrm.order_url or None,  # «Создать» (script.js)
        }
    )


@router.post("/widget/v1/connect-ticket")
async def connect_ticket(request: Request, caller: AdminCallerDep) -> Response:
    """F2.2 «Подключить»: a single-use link to the cabinet's connect page (10 min)."""
    core = _core(request)
    async with core.sessions() as s:
        try:
            raw = await svc.issue_ticket(
                s, account_id=caller.account_id, user_id=caller.user_id, now=core.clock.now()
            )
        except svc.BindError as e:
            raise _refused(e) from None
        await s.commit()
    return JSONResponse({"url": f"{public_origin(core.settings)}{CONNECT_PATH}?ticket={raw}"})


@router.post("/widget/v1/disconnect", status_code=204)
async def widget_disconnect(request: Request, caller: AdminCallerDep) -> Response:
    """F15 from amoCRM's side: «Отключить интеграцию» in the widget. Idempotent."""
    core = _core(request)
    async with core.sessions() as s:
        await svc.disable_account(s, caller.account_id, reason="widget", now=core.clock.now())
        await s.commit()
    return Response(status_code=204)
