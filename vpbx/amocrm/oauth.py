"""amoCRM's OAuth 2.0 token endpoint (amocrm.md §2.2): code exchange, refresh, the moved-account lookup.

Pure HTTP, no storage: ``vpbx.amocrm.tokens`` decides when to refresh and stores the pairs. The account's host
comes from ``amocrm.api_url_template`` (tests point it at the emulator). Refused grants (400/401 with a
``hint``, e.g. "Token has been revoked") raise ``AmoReauthRequired``: the admin must authorise again. The code
and the tokens never reach a log or a repr.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

from vpbx.amocrm.errors import (
    AmoError,
    AmoReauthRequired,
    AmoServerError,
    AmoUnknownOutcome,
    AmoUnreachable,
)
from vpbx.amocrm.widget_auth import public_origin
from vpbx.logs import get_logger
from vpbx.settings import AmoSettings, Settings

log = get_logger("vpbx.amocrm.oauth")

TOKEN_PATH = "/oauth2/access_token"
MOVED_PATH = "/oauth2/account/current/subdomain"
CALLBACK_PATH = "/amo/oauth/callback"  # our redirect_uri's path (amobind serves it)
OAUTH_TIMEOUT = httpx.Timeout(connect=2.0, read=10.0, write=5.0, pool=2.0)
DEFAULT_EXPIRES_IN = 86400  # s; amoCRM's access tokens live 24 h
BASE_DOMAIN_RE = re.compile(r"^[a-z0-9-]+\.(amocrm\.ru|amocrm\.com|kommo\.com)$")


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An access/refresh pair as amoCRM issued it. ``base_domain``: set when a moved account's new host is
    known (the caller stores it with the pair); empty otherwise."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: dt.datetime
    base_domain: str = ""


def is_allowed_base_domain(settings: AmoSettings, host: str) -> bool:
    """The OAuth ``referer`` (or a moved account's host) is an amoCRM/Kommo account host or a configured test
    host (the emulator's), never anything else: tokens are sent there."""
    host = host.strip().lower()
    return bool(BASE_DOMAIN_RE.fullmatch(host)) or host in {h.lower() for h in settings.extra_hosts}


def account_url(settings: AmoSettings, base_domain: str) -> str:
    """The root URL of an account's API, from the template (``https://{base_domain}`` in production)."""
    return settings.api_url_template.format(base_domain=base_domain).rstrip("/")


def redirect_uri(public_origin: str) -> str:
    return public_origin.rstrip("/") + CALLBACK_PATH


def _client_secret(settings: AmoSettings) -> str:
    return settings.client_secret.get_secret_value() if settings.client_secret else ""


def _resolve(settings: Settings | AmoSettings, redirect_to: str) -> tuple[AmoSettings, str]:
    """Our redirect_uri must equal the registered one: from ``public_origin`` unless the caller names it."""
    if isinstance(settings, Settings):
        return settings.amocrm, redirect_to or redirect_uri(public_origin(settings))
    if not redirect_to:
        raise ValueError("redirect_to is required when only AmoSettings are given")
    return settings, redirect_to


async def exchange_code(
    http: httpx.AsyncClient,
    settings: Settings | AmoSettings,
    base_domain: str,
    code: str,
    *,
    redirect_to: str = "",
    now: dt.datetime | None = None,
) -> TokenPair:
    """Exchange the single-use authorization code (20 min) for a pair. Never call it twice for one code: after
    an ambiguous failure (``AmoUnknownOutcome``) the admin must install again."""
    settings, redirect_to = _resolve(settings, redirect_to)
    body = {
        "client_id": settings.client_id,
        "client_secret": _client_secret(settings),
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_to,
    }
    answer = await _post_token(http, settings, base_domain, body)
    return _pair(answer, now or dt.datetime.now(dt.UTC))


async def refresh(
    http: httpx.AsyncClient,
    settings: Settings | AmoSettings,
    base_domain: str,
    refresh_token: str,
    *,
    redirect_to: str = "",
    access_token: str = "",
    now: dt.datetime | None = None,
) -> TokenPair:
    """Trade the refresh token (single-use, rotated) for a new pair.

    Refused with 401/404 and the access token names another ``api_domain``: ask that host where the account
    lives now, and retry once there; the returned pair then carries the new ``base_domain``."""
    settings, redirect_to = _resolve(settings, redirect_to)
    body = {
        "client_id": settings.client_id,
        "client_secret": _client_secret(settings),
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "redirect_uri": redirect_to,
    }
    moment = now or dt.datetime.now(dt.UTC)
    try:
        answer = await _post_token(http, settings, base_domain, body)
        return _pair(answer, moment)
    except _Refused as e:
        if e.status not in (401, 404):
            raise e.reauth() from None
        moved_to = await _moved_host(http, settings, access_token, refresh_token)
        if not moved_to or moved_to == base_domain:
            raise e.reauth() from None
        log.warning("amocrm.account_moved", old=base_domain, new=moved_to)
    try:
        answer = await _post_token(http, settings, moved_to, body)
    except _Refused as e:
        raise e.reauth() from None
    p = _pair(answer, moment)
    return TokenPair(p.access_token, p.refresh_token, p.expires_at, base_domain=moved_to)


def api_domain_of(access_token: str) -> str:
    """The ``api_domain`` claim of an access token, read without verification (it only says where to ask)."""
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    value = claims.get("api_domain") if isinstance(claims, dict) else None
    return value if isinstance(value, str) else ""


class _Refused(Exception):
    def __init__(self, status: int, hint: str, request_id: str) -> None:
        super().__init__(status)
        self.status = status
        self.hint = hint
        self.request_id = request_id

    def reauth(self) -> AmoReauthRequired:
        return AmoReauthRequired(
            self.hint or f"token grant refused ({self.status})",
            status=self.status,
            request_id=self.request_id,
        )


async def _post_token(
    http: httpx.AsyncClient, settings: AmoSettings, base_domain: str, body: dict[str, str]
) -> dict[str, Any]:
    url = account_url(settings, base_domain) + TOKEN_PATH
    try:
        resp = await http.post(url, json=body, timeout=OAUTH_TIMEOUT)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
        raise AmoUnreachable(f"token endpoint unreachable: {type(e).__name__}") from None
    except httpx.TransportError as e:
        # sent, no answer: amoCRM may have rotated the pair; the caller retries the same token once
        raise AmoUnknownOutcome(f"token endpoint: {type(e).__name__}") from None
    request_id = resp.headers.get("x-request-id", "")
    log.info("amocrm.oauth", grant=body["grant_type"], status=resp.status_code, request_id=request_id)
    data = _json(resp)
    if resp.status_code == 200 and isinstance(data, dict) and data.get("access_token"):
        return data
    hint = str(data.get("hint") or data.get("detail") or "") if isinstance(data, dict) else ""
    if resp.status_code in (400, 401, 403, 404):
        raise _Refused(resp.status_code, hint, request_id)
    if resp.status_code >= 500:
        raise AmoServerError(
            f"token endpoint {resp.status_code}", status=resp.status_code, request_id=request_id
        )
    raise AmoError(f"token endpoint {resp.status_code}", status=resp.status_code, request_id=request_id)


async def _moved_host(
    http: httpx.AsyncClient, settings: AmoSettings, access_token: str, refresh_token: str
) -> str:
    """Where the account lives now (``{subdomain}.{domain}``), asked at the token's ``api_domain``."""
    api_domain = api_domain_of(access_token)
    if not api_domain or not is_allowed_base_domain(settings, api_domain):
        return ""
    url = account_url(settings, api_domain) + MOVED_PATH
    try:
        resp = await http.get(url, headers={"X-Refresh-Token": refresh_token}, timeout=OAUTH_TIMEOUT)
    except httpx.TransportError:
        return ""
    data = _json(resp)
    if resp.status_code != 200 or not isinstance(data, dict):
        return ""
    subdomain, domain = str(data.get("subdomain") or ""), str(data.get("domain") or "")
    host = f"{subdomain}.{domain}".lower() if subdomain and domain else ""
    return host if is_allowed_base_domain(settings, host) else ""


def _json(resp: httpx.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _pair(answer: dict[str, Any], now: dt.datetime) -> TokenPair:
    refresh_token = answer.get("refresh_token")
    expires_in = answer.get("expires_in")
    seconds = (
        int(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else DEFAULT_EXPIRES_IN
    )
    return TokenPair(
        access_token=str(answer["access_token"]),
        refresh_token=str(refresh_token or ""),
        expires_at=now + dt.timedelta(seconds=seconds),
    )
