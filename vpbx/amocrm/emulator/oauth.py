"""OAuth 2.0 as amoCRM does it (amocrm.md §2.2, §4.2): codes, the token endpoint, Bearer checks, the
disconnect-hook signature and the widget's disposable tokens.

Codes live ``code_ttl`` (20 min) and are single-use. The access token is an HS256 JWT signed with the
emulator's own key; the refresh token is random, lives ``refresh_ttl`` and is rotated on every refresh: the
old one is marked used, and using it again answers 401 ``Token has been revoked``. Checks and the marking
happen without an ``await`` in between, so of two concurrent refreshes with one token exactly one wins.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from typing import Any

import jwt

from vpbx.amocrm.emulator.world import Account, Integration, Json, Problem, World

OAUTH_PROBLEM_TYPE = "https://developers.amocrm.ru/v3/errors/OAuthProblemJson"
SCOPES = ["crm", "notifications"]


def oauth_problem(status: int, hint: str, detail: str | None = None) -> Problem:
    title = "Некорректный запрос" if status == 400 else "Unauthorized"
    return Problem(status, detail or hint, title=title, hint=hint)


def hook_signature(client_secret: str, client_uuid: str, account_id: int) -> str:
    """The disconnect hook's ``signature`` (§2.2): hex(HMAC-SHA256(client_secret, "uuid|account_id"))."""
    msg = f"{client_uuid}|{account_id}".encode()
    return hmac.new(client_secret.encode(), msg, hashlib.sha256).hexdigest()


def issue_code(world: World, acc: Account, integ: Integration, user_id: int | None = None) -> str:
    code = "def50200" + secrets.token_hex(64)
    world.codes[code] = {
        "account_id": acc.id,
        "client_id": integ.client_id,
        "user_id": user_id or acc.admin_id(),
        "issued_at": world.now(),
        "used": False,
    }
    return code


def _integration(world: World, body: Json) -> Integration:
    integ = world.integrations.get(str(body.get("client_id") or ""))
    if integ is None:
        raise oauth_problem(400, "Client authentication failed", "Unknown client_id")
    if not hmac.compare_digest(str(body.get("client_secret") or ""), integ.client_secret):
        raise oauth_problem(400, "Client authentication failed", "client_secret does not match")
    return integ


def _redirect_ok(integ: Integration, body: Json, *, required: bool) -> None:
    given = body.get("redirect_uri")
    if given is None and not required:
        return
    if str(given or "") != integ.redirect_uri:
        raise oauth_problem(400, "redirect_uri does not match the integration's", "Invalid redirect_uri")


def token_endpoint(world: World, host: str, body: Json) -> Json:
    """``POST https://{host}/oauth2/access_token`` (JSON or form, already parsed into ``body``)."""
    integ = _integration(world, body)
    grant = body.get("grant_type")
    if grant == "authorization_code":
        _redirect_ok(integ, body, required=True)
        code = world.codes.get(str(body.get("code") or ""))
        if code is None:
            raise oauth_problem(400, "Cannot decrypt the authorization code")
        if code["used"]:
            raise oauth_problem(400, "Authorization code has been revoked")
        if world.now() - code["issued_at"] > world.switches.code_ttl:
            raise oauth_problem(400, "Authorization code has expired")
        if code["client_id"] != integ.client_id:
            raise oauth_problem(400, "Authorization code was not issued to this client")
        acc = world.accounts.get(code["account_id"])
        if acc is None or acc.base_domain != host:
            raise oauth_problem(400, "Authorization code was issued for another account")
        code["used"] = True
        return _pair(world, acc, integ, code["user_id"])
    if grant == "refresh_token":
        _redirect_ok(integ, body, required=False)
        token = str(body.get("refresh_token") or "")
        rec = world.refresh.get(token)
        if rec is None or rec["client_id"] != integ.client_id:
            raise oauth_problem(401, "Cannot decrypt the refresh token")
        if rec["used"] or rec["revoked"]:
            raise oauth_problem(401, "Token has been revoked")
        if rec["exp"] <= world.now():
            raise oauth_problem(401, "Token has expired")
        acc = world.accounts.get(rec["account_id"])
        if acc is None or acc.base_domain != host:
            # a moved account: the old host refuses (the client then asks api_domain where it went)
            raise oauth_problem(401, "Account has been moved", "Unauthorized")
        rec["used"] = True
        if world.switches.revoke_access_on_refresh and rec["access_jti"] in world.access:
            world.access[rec["access_jti"]]["revoked"] = True
        return _pair(world, acc, integ, rec["user_id"])
    raise oauth_problem(400, "The authorization grant type is not supported", "Unsupported grant_type")


def _pair(world: World, acc: Account, integ: Integration, user_id: int) -> Json:
    now = world.now()
    ttl = world.switches.access_ttl
    jti = secrets.token_hex(16)
    claims = {
        "aud": integ.client_id,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "sub": str(user_id),
        "grant_type": "",
        "account_id": acc.id,
        "base_domain": acc.base_domain.split(".", 1)[1] if "." in acc.base_domain else acc.base_domain,
        "version": 2,
        "scopes": SCOPES,
        "hash_uuid": str(uuid.UUID(int=acc.id)),
        "api_domain": world.switches.api_domain,
        "client_uuid": integ.client_id,
    }
    access = jwt.encode(claims, world.key, algorithm="HS256")
    refresh = "def50200" + secrets.token_hex(96)
    world.access[jti] = {
        "account_id": acc.id,
        "client_id": integ.client_id,
        "user_id": user_id,
        "exp": now + ttl,
        "revoked": False,
    }
    world.refresh[refresh] = {
        "account_id": acc.id,
        "client_id": integ.client_id,
        "user_id": user_id,
        "exp": now + world.switches.refresh_ttl,
        "used": False,
        "revoked": False,
        "access_jti": jti,
    }
    return {"token_type": "Bearer", "expires_in": ttl, "access_token": access, "refresh_token": refresh}


def check_bearer(world: World, acc: Account, header: str | None) -> Json:
    """The access token's record for an API request to ``acc``, else 401 (or 402 for an unpaid account)."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(401, "Authorization header is missing or malformed")
    try:
        claims: dict[str, Any] = jwt.decode(
            token.strip(), world.key, algorithms=["HS256"], options={"verify_exp": False, "verify_aud": False}
        )
    except jwt.PyJWTError:
        raise Problem(401, "Access token is invalid") from None
    rec = world.access.get(str(claims.get("jti")))
    if rec is None or rec["revoked"]:
        raise Problem(401, "Access token has been revoked")
    if rec["exp"] <= world.now():
        raise Problem(401, "Access token has expired")
    if rec["account_id"] != acc.id:
        raise Problem(401, "Access token belongs to another account")
    if acc.unpaid:
        raise Problem(402, "Аккаунт не оплачен", title="Payment Required")
    return rec | {"jti": claims["jti"]}


def revoke(world: World, acc: Account, client_id: str) -> int:
    """Revoke every token of ``acc`` for ``client_id`` (uninstall); answers how many were live."""
    n = 0
    for rec in [*world.access.values(), *world.refresh.values()]:
        if rec["account_id"] == acc.id and rec["client_id"] == client_id and not rec["revoked"]:
            rec["revoked"] = True
            n += 1
    return n


def disposable_token(
    world: World,
    acc: Account,
    integ: Integration,
    *,
    user_id: int,
    is_admin: bool,
    aud: str,
    ttl: int,
) -> str:
    """The widget's ``X-Auth-Token`` (§3.3): HS256 with the integration's client_secret."""
    now = world.now()
    claims = {
        "iss": f"https://{acc.base_domain}",
        "aud": aud,
        "jti": str(uuid.uuid4()),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "account_id": acc.id,
        "subdomain": acc.subdomain,
        "client_uuid": integ.client_id,
        "user_id": user_id,
        "is_admin": is_admin,
    }
    return jwt.encode(claims, integ.client_secret, algorithm="HS256")


def refresh_owner(world: World, token: str) -> Account | None:
    rec = world.refresh.get(token)
    if rec is None or rec["revoked"]:
        return None
    return world.accounts.get(rec["account_id"])
