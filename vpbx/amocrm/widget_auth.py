"""Widget → backend authentication (amocrm.md §3.3): amoCRM's disposable token in ``X-Auth-Token``.

The token is an HS256 JWT signed with our integration's ``client_secret``. We check, in order: the algorithm
is exactly HS256 and the signature holds; ``aud`` is our origin; ``exp``/``nbf`` with 30 s leeway;
``client_uuid`` is our ``client_id``; ``jti`` was not seen before (kept until ``exp``). The caller's
install/binding is then taken **only** from ``account_id``.

The replay cache is per process (ours): with several processes behind a balancer a replay could reach another
process once; the token's life is minutes and every write it can make is idempotent (F7 mapping, scenarios) or
keyed (click-to-call's ``Idempotency-Key``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from fastapi import HTTPException, Request
from jwt.warnings import InsecureKeyLengthWarning

from vpbx.settings import Settings

LEEWAY_S = 30
REPLAY_CAP = 100_000  # remembered token ids before the oldest are forgotten


@dataclass(frozen=True, slots=True, kw_only=True)
class WidgetCaller:
    """Who called the widget API: an amoCRM user of one account."""

    account_id: int
    user_id: int
    is_admin: bool
    subdomain: str
    account_url: str  # the token's ``iss``, e.g. https://demo.amocrm.ru


class TokenInvalid(Exception):
    pass


def public_origin(settings: Settings) -> str:
    """Our origin as amoCRM knows it (``redirect_uri``'s): ``public_url``, else the HTTP listener."""
    base = settings.public_url or f"http://{settings.http_host}:{settings.http_port}"
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"


class ReplayCache:
    def __init__(self, cap: int = REPLAY_CAP) -> None:
        self._seen: dict[str, float] = {}
        self._cap = cap

    def first_use(self, jti: str, exp: float, now: float) -> bool:
        if len(self._seen) >= self._cap:
            self._seen = {k: v for k, v in self._seen.items() if v > now}
            while len(self._seen) >= self._cap:  # all still live: forget the oldest
                self._seen.pop(next(iter(self._seen)))
        if jti in self._seen and self._seen[jti] > now:
            return False
        self._seen[jti] = exp + LEEWAY_S
        return True


class WidgetVerifier:
    def __init__(self, *, client_id: str, client_secret: str, audience: str) -> None:
        self._client_id = client_id
        self._secret = client_secret
        self._audience = audience
        self.replays = ReplayCache()

    def verify(self, token: str, now: float | None = None) -> WidgetCaller:
        if not self._secret or not self._client_id:
            raise TokenInvalid("integration not configured")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "HS256":
                raise TokenInvalid("algorithm")
            with (
                warnings.catch_warnings()
            ):  # amoCRM picks the secret's length, not us (the emulator's is short)
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                claims: dict[str, Any] = jwt.decode(
                    token,
                    self._secret,
                    algorithms=["HS256"],
                    audience=self._audience,
                    leeway=LEEWAY_S,
                    options={"require": ["exp", "iat", "jti", "aud"]},
                )
        except jwt.PyJWTError as e:
            raise TokenInvalid(type(e).__name__) from None
        if claims.get("client_uuid") != self._client_id:
            raise TokenInvalid("client_uuid")
        try:
            caller = WidgetCaller(
                account_id=int(claims["account_id"]),
                user_id=int(claims["user_id"]),
                is_admin=bool(claims.get("is_admin", False)),
                subdomain=str(claims.get("subdomain", "")),
                account_url=str(claims.get("iss", "")),
            )
        except (KeyError, TypeError, ValueError):
            raise TokenInvalid("claims") from None
        if not self.replays.first_use(str(claims["jti"]), float(claims["exp"]), now or time.time()):
            raise TokenInvalid("replay")
        return caller


def verifier_for(settings: Settings) -> WidgetVerifier:
    secret = settings.amocrm.client_secret
    return WidgetVerifier(
        client_id=settings.amocrm.client_id,
        client_secret=secret.get_secret_value() if secret is not None else "",
        audience=public_origin(settings),
    )


def widget_caller(request: Request) -> WidgetCaller:
    """FastAPI dependency: the verified caller, or 401 ``widget-token-invalid``. The app keeps one verifier
    (``app.state.amo_widget_verifier``, made by ``vpbx.amocrm.wiring``) so the replay cache is shared."""
    verifier: WidgetVerifier = request.app.state.amo_widget_verifier
    token = request.headers.get("x-auth-token", "")
    try:
        return verifier.verify(token)
    except TokenInvalid:
        raise HTTPException(status_code=401, detail={"error": "widget-token-invalid"}) from None


def widget_admin(request: Request) -> WidgetCaller:
    """As ``widget_caller``, and 403 ``admin-required`` for a non-admin."""
    caller = widget_caller(request)
    if not caller.is_admin:
        raise HTTPException(status_code=403, detail={"error": "admin-required"})
    return caller
