"""Cabinet authentication: server-side sessions, login with lockout, CSRF, and role dependencies.

Roles: platform operator, domain admin, domain user. Domain users log in as ``name@domain``; operators by
their bare login. Unknown login and wrong password get the same answer after the same work (argon2 against a
dummy hash), and throttling keys on the login text itself, so lockouts reveal nothing either.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.app import Core
from vpbx.crypto import token_hash, verify_password
from vpbx.errors import AuthError, CsrfFailed
from vpbx.logs import get_logger
from vpbx.metrics import LOGIN_ATTEMPTS
from vpbx.store.models import Domain, Operator, User, WebSession
from vpbx.web import throttle
from vpbx.web.render import Renderer

SESSION_COOKIE = "vpbx_session"
PRE_CSRF_COOKIE = "vpbx_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_LOGIN_LEN = 320
MAX_PASSWORD_LEN = 256

log = get_logger("vpbx.web.auth")
security_log = get_logger("vpbx.security")
router = APIRouter()

Role = Literal["operator", "admin", "user"]


class NeedLogin(AuthError):
    code = "login-required"


class Forbidden(AuthError):
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    login: str
    display_name: str
    csrf_token: str
    session_id: uuid.UUID
    operator_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    domain_id: uuid.UUID | None = None
    domain_name: str = ""

    @property
    def tenant(self) -> uuid.UUID:
        """The domain this principal acts in; only domain roles have one."""
        if self.domain_id is None:
            raise Forbidden("no domain")
        return self.domain_id


def get_core(request: Request) -> Core:
    core: Core = request.app.state.core
    return core


CoreDep = Annotated[Core, Depends(get_core)]


def get_renderer(request: Request) -> Renderer:
    r: Renderer = request.app.state.renderer
    return r


RendererDep = Annotated[Renderer, Depends(get_renderer)]


async def get_db(core: CoreDep) -> AsyncIterator[AsyncSession]:
    async with core.sessions() as s:
        yield s


DbDep = Annotated[AsyncSession, Depends(get_db)]


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def cookie_secure(request: Request, core: Core) -> bool:
    mode = core.settings.cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


async def _load_principal(request: Request, core: Core, s: AsyncSession) -> Principal | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 128:
        return None
    now = core.clock.now()
    ws = await s.scalar(select(WebSession).where(WebSession.token_hash == token_hash(token)))
    if ws is None or ws.expires_at <= now:
        return None
    if ws.operator_id is not None:
        op = await s.get(Operator, ws.operator_id)
        if op is None:
            return None
        return Principal(
            role="operator",
            login=op.login,
            display_name=op.login,
            csrf_token=ws.csrf_token,
            session_id=ws.id,
            operator_id=op.id,
        )
    if ws.user_id is None:
        return None
    row = (
        await s.execute(
            select(User, Domain).join(Domain, Domain.id == User.domain_id).where(User.id == ws.user_id)
        )
    ).first()
    if row is None:
        return None
    user, domain = row
    if domain.status != "active" or user.web_password_hash is None:
        return None
    role: Role = "admin" if user.role == "admin" else "user"
    return Principal(
        role=role,
        login=f"{user.name}@{domain.name}",
        display_name=user.display_name,
        csrf_token=ws.csrf_token,
        session_id=ws.id,
        user_id=user.id,
        domain_id=domain.id,
        domain_name=domain.name,
    )


async def check_csrf(request: Request, expected: str) -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        security_log.warning("csrf.rejected", path=request.url.path, ip=client_ip(request))
        raise CsrfFailed("CSRF token missing or wrong")


async def current_principal(request: Request, core: CoreDep, s: DbDep) -> Principal:
    p = await _load_principal(request, core, s)
    if p is None:
        raise NeedLogin("login required")
    await check_csrf(request, p.csrf_token)
    request.state.principal = p
    return p


def _require(*roles: Role) -> object:
    async def dep(p: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if p.role not in roles:
            raise Forbidden(f"needs role {roles}")
        return p

    return dep


AnyDep = Annotated[Principal, Depends(current_principal)]
AdminDep = Annotated[Principal, Depends(_require("admin"))]
OperatorDep = Annotated[Principal, Depends(_require("operator"))]
MemberDep = Annotated[Principal, Depends(_require("admin", "user"))]


def home_for(role: Role) -> str:
    return {"operator": "/operator/domains", "admin": "/", "user": "/me"}[role]


def safe_next(value: str | None) -> str | None:
    """Only local paths: no scheme, no host, no protocol-relative ``//`` redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


# --- routes ---------------------------------------------------------------------------------------


def _login_page(request: Request, *, message: str = "", login: str = "", status: int = 200) -> Response:
    token = request.cookies.get(PRE_CSRF_COOKIE) or secrets.token_urlsafe(32)
    request.state.pre_csrf = token
    resp = get_renderer(request).page(
        request,
        "login.html",
        {"message": message, "login": login, "next": safe_next(request.query_params.get("next")) or ""},
        status_code=status,
    )
    core: Core = request.app.state.core
    resp.set_cookie(
        PRE_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/login",
        secure=cookie_secure(request, core),
    )
    return resp


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _login_page(request)


@router.post("/login")
async def login_submit(
    request: Request,
    core: CoreDep,
    s: DbDep,
    login: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
    next_: Annotated[str, Form(alias="next")] = "",
) -> Response:
    t = get_renderer(request).translator(request)
    pre = request.cookies.get(PRE_CSRF_COOKIE, "")
    if not pre or not hmac.compare_digest(pre.encode(), csrf_token.encode()):
        return _login_page(
            request,
            message=t.gettext("The form has expired; please try again."),
            login=login[:MAX_LOGIN_LEN],
            status=403,
        )
    now = core.clock.now()
    login = login.strip()[:MAX_LOGIN_LEN]
    keys = throttle.throttle_keys(login, client_ip(request))
    if await throttle.locked_until(s, keys, now) is not None:
        LOGIN_ATTEMPTS.labels("locked").inc()
        security_log.warning("login.locked", ip=client_ip(request))
        return _login_page(
            request, message=t.gettext("Too many failed attempts. Try again later."), login=login, status=429
        )
    operator, user, domain = await _find_account(s, login)
    stored = operator.password_hash if operator else (user.web_password_hash if user else None)
    ok = verify_password(stored, password[:MAX_PASSWORD_LEN]) if len(password) <= MAX_PASSWORD_LEN else False
    if not ok:
        await throttle.record_failure(s, keys, now, core.settings.login)
        await s.commit()
        LOGIN_ATTEMPTS.labels("failed").inc()
        security_log.warning("login.failed", ip=client_ip(request))
        return _login_page(request, message=t.gettext("Wrong login or password."), login=login, status=401)
    if domain is not None and domain.status != "active":
        LOGIN_ATTEMPTS.labels("blocked").inc()
        return _login_page(
            request,
            message=t.gettext("The domain is blocked: {reason}", reason=domain.blocked_reason or ""),
            login=login,
            status=403,
        )
    await throttle.clear_login(s, login)
    token = secrets.token_urlsafe(32)
    ws = WebSession(
        token_hash=token_hash(token),
        csrf_token=secrets.token_urlsafe(32),
        operator_id=operator.id if operator else None,
        user_id=user.id if user else None,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=core.settings.session_ttl_s),
    )
    s.add(ws)
    await s.commit()
    LOGIN_ATTEMPTS.labels("ok").inc()
    role: Role = "operator" if operator else ("admin" if user and user.role == "admin" else "user")
    log.info("login.ok", role=role, ip=client_ip(request))
    target = safe_next(next_) or home_for(role)
    resp = RedirectResponse(target, status_code=303)
    resp.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        path="/",
        max_age=core.settings.session_ttl_s,
        secure=cookie_secure(request, core),
    )
    resp.delete_cookie(PRE_CSRF_COOKIE, path="/login")
    return resp


async def _find_account(s: AsyncSession, login: str) -> tuple[Operator | None, User | None, Domain | None]:
    if "@" not in login:
        op = await s.scalar(select(Operator).where(Operator.login == login.lower()))
        return op, None, None
    name, _, domain_name = login.lower().rpartition("@")
    row = (
        await s.execute(
            select(User, Domain)
            .join(Domain, Domain.id == User.domain_id)
            .where(User.name == name, Domain.name == domain_name)
        )
    ).first()
    if row is None:
        return None, None, None
    return None, row[0], row[1]


@router.post("/logout")
async def logout(p: AnyDep, s: DbDep) -> Response:
    await s.execute(delete(WebSession).where(WebSession.id == p.session_id))
    await s.commit()
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp
