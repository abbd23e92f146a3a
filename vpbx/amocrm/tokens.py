"""An account's amoCRM tokens: sealed at rest, refreshed once at a time (amocrm.md §2.2 "Refresh rules").

- ``store_tokens`` seals a pair into an ``AmoInstall`` row and bumps ``token_version``; the caller commits.
- ``TokenManager`` (one per process) hands the client an access token, refreshing it at ``expires_at − 5 min``
  and once after a 401. Refreshes are serialised per account: an ``asyncio.Lock`` in the process, then in the
  database ``SELECT … FOR UPDATE`` (PostgreSQL; other processes wait on the row) and a compare-and-swap
  ``UPDATE … SET token_version = token_version + 1 WHERE id = ? AND token_version = ?``. A waiter that finds
  a newer version uses the stored pair and sends no refresh. The new pair is committed before any request uses
  it.
- A network error during a refresh retries the same refresh token once after 2 s; a refused refresh moves the
  install to ``needs_reauth`` (``AmoReauthRequired``; jobs are held). Long-lived tokens never refresh: their
  401 means ``needs_reauth`` at once.

Tokens never reach logs or reprs (``Credentials`` hides them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.amocrm import oauth
from vpbx.amocrm.errors import AmoReauthRequired, AmoServerError, AmoUnknownOutcome
from vpbx.amocrm.oauth import TokenPair
from vpbx.clock import Clock, SystemClock
from vpbx.crypto import SecretBox, SecretUnreadable
from vpbx.logs import get_logger
from vpbx.settings import Settings
from vpbx.store.models import AmoInstall

log = get_logger("vpbx.amocrm.tokens")

REFRESH_MARGIN = dt.timedelta(minutes=5)  # refresh this long before expires_at
NETWORK_RETRY_S = 2.0  # a refresh that got no answer is sent again (same token) once, after this
CACHE_TTL_S = 60.0  # re-read the install row at least this often (re-installs, other processes' refreshes)
TOKEN_ERROR_LEN = 500


@dataclass(frozen=True, slots=True)
class Credentials:
    """What one request needs: the account's host and its access token (hidden from reprs)."""

    account_id: int
    base_domain: str
    access_token: str = field(repr=False)
    version: int
    expires_at: dt.datetime | None = None
    auth_type: str = "oauth"


async def store_tokens(s: AsyncSession, box: SecretBox, install: AmoInstall, pair: TokenPair) -> None:
    """Seal ``pair`` into ``install`` (new version, state ok); the caller commits."""
    install.access_token_enc = box.seal(pair.access_token)
    install.refresh_token_enc = box.seal(pair.refresh_token) if pair.refresh_token else ""
    install.expires_at = pair.expires_at
    install.token_version = (install.token_version or 0) + 1
    install.token_state = "ok"
    install.token_error = ""
    if pair.base_domain:
        install.base_domain = pair.base_domain
    s.add(install)
    await s.flush()


@dataclass(slots=True)
class _Cached:
    creds: Credentials
    loaded_at: float


Sleep = Callable[[float], Awaitable[None]]


class TokenManager:
    """Access tokens for every account this process talks to."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        settings: Settings,
        http: httpx.AsyncClient,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sessions = sessions
        self._box = box
        self._settings = settings
        self._http = http
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._locks: dict[int, asyncio.Lock] = {}
        self._cache: dict[int, _Cached] = {}
        self.refreshes = 0  # refresh requests sent by this process (tests, the health panel)

    def _lock(self, account_id: int) -> asyncio.Lock:
        lock = self._locks.get(account_id)
        if lock is None:
            lock = self._locks[account_id] = asyncio.Lock()
        return lock

    def forget(self, account_id: int) -> None:
        """Drop the cached pair (the install was replaced or deleted)."""
        self._cache.pop(account_id, None)

    async def credentials(self, account_id: int) -> Credentials:
        """A usable access token; refreshed first when it expires within 5 minutes."""
        creds = await self._current(account_id)
        if creds.auth_type == "long_lived" or not self._expiring(creds):
            return creds
        try:
            return await self._refresh(account_id, creds.version, reason="expiring")
        except (AmoServerError, AmoUnknownOutcome) as e:
            # amoCRM did not answer: the old token still works until it really expires
            if creds.expires_at is not None and creds.expires_at > self._clock.now():
                log.warning("amocrm.refresh_postponed", account_id=account_id, error=type(e).__name__)
                return creds
            raise

    async def after_unauthorized(self, account_id: int, used: Credentials) -> Credentials:
        """A request with ``used`` got 401: refresh once (unless someone already did); the new token."""
        return await self._refresh(account_id, used.version, reason="401")

    def _expiring(self, creds: Credentials) -> bool:
        return creds.expires_at is not None and creds.expires_at - REFRESH_MARGIN <= self._clock.now()

    async def _current(self, account_id: int) -> Credentials:
        cached = self._cache.get(account_id)
        if cached is not None and self._clock.monotonic() - cached.loaded_at < CACHE_TTL_S:
            return cached.creds
        async with self._sessions() as s:
            row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == account_id))
        if row is None:
            self.forget(account_id)
            raise AmoReauthRequired("amoCRM account is not installed")
        return self._remember(row)

    def _remember(self, row: AmoInstall) -> Credentials:
        if row.token_state != "ok":
            self.forget(row.amo_account_id)
            raise AmoReauthRequired(row.token_error or "amoCRM authorisation required")
        try:
            access = self._box.open(row.access_token_enc) if row.access_token_enc else ""
        except SecretUnreadable:
            access = ""
        if not access:
            self.forget(row.amo_account_id)
            raise AmoReauthRequired("no usable access token")
        creds = Credentials(
            account_id=row.amo_account_id,
            base_domain=row.base_domain,
            access_token=access,
            version=row.token_version,
            expires_at=row.expires_at,
            auth_type=row.auth_type,
        )
        self._cache[row.amo_account_id] = _Cached(creds, self._clock.monotonic())
        return creds

    async def _refresh(self, account_id: int, seen_version: int, *, reason: str) -> Credentials:
        async with self._lock(account_id), self._sessions() as s:
            row = await s.scalar(
                select(AmoInstall).where(AmoInstall.amo_account_id == account_id).with_for_update()
            )
            if row is None:
                self.forget(account_id)
                raise AmoReauthRequired("amoCRM account is not installed")
            if s.get_bind().dialect.name != "postgresql":
                await s.commit()  # SQLite: no row locks; the CAS below decides, no snapshot held meanwhile
            if row.token_version != seen_version:
                return self._remember(row)  # another task or process refreshed: use its pair
            creds = self._remember(row)
            if reason == "expiring" and not self._expiring(creds):
                return creds
            if row.auth_type == "long_lived":
                await self._needs_reauth(s, row, "long-lived token refused (401)")
                raise AmoReauthRequired("long-lived token refused")
            try:
                pair = await self._send_refresh(row)
            except AmoReauthRequired as e:
                moved = await self._needs_reauth(s, row, str(e))
                if moved is not None:
                    return moved
                raise
            stored = await s.execute(
                update(AmoInstall)
                .where(AmoInstall.id == row.id, AmoInstall.token_version == row.token_version)
                .values(
                    access_token_enc=self._box.seal(pair.access_token),
                    refresh_token_enc=self._box.seal(pair.refresh_token) if pair.refresh_token else "",
                    expires_at=pair.expires_at,
                    base_domain=pair.base_domain or row.base_domain,
                    token_version=AmoInstall.token_version + 1,
                    token_state="ok",
                    token_error="",
                )
                .execution_options(synchronize_session=False)
            )
            await s.commit()
            if getattr(stored, "rowcount", 1) != 1:
                log.warning("amocrm.refresh_lost_race", account_id=account_id)
                return await self._reload(account_id)
            log.info("amocrm.token_refreshed", account_id=account_id, reason=reason)
            return await self._reload(account_id)

    async def _send_refresh(self, row: AmoInstall) -> TokenPair:
        try:
            refresh_token = self._box.open(row.refresh_token_enc) if row.refresh_token_enc else ""
            access = self._box.open(row.access_token_enc) if row.access_token_enc else ""
        except SecretUnreadable:
            raise AmoReauthRequired("stored tokens cannot be decrypted") from None
        if not refresh_token:
            raise AmoReauthRequired("no refresh token")
        for attempt in (1, 2):
            self.refreshes += 1
            try:
                return await oauth.refresh(
                    self._http,
                    self._settings,
                    row.base_domain,
                    refresh_token,
                    access_token=access,
                    now=self._clock.now(),
                )
            except AmoServerError as e:  # unreachable, 5xx: nothing we know was applied
                if attempt == 2:
                    raise
                log.warning("amocrm.refresh_retry", account_id=row.amo_account_id, error=type(e).__name__)
            except AmoUnknownOutcome:
                if attempt == 2:
                    raise
                log.warning("amocrm.refresh_retry", account_id=row.amo_account_id, error="no-answer")
            await self._sleep(NETWORK_RETRY_S)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _needs_reauth(self, s: AsyncSession, row: AmoInstall, why: str) -> Credentials | None:
        """Mark the install ``needs_reauth``, unless another refresh stored a newer pair meanwhile: that."""
        marked = await s.execute(
            update(AmoInstall)
            .where(AmoInstall.id == row.id, AmoInstall.token_version == row.token_version)
            .values(token_state="needs_reauth", token_error=why[:TOKEN_ERROR_LEN])
            .execution_options(synchronize_session=False)
        )
        await s.commit()
        self.forget(row.amo_account_id)
        if getattr(marked, "rowcount", 1) != 1:
            try:
                return await self._reload(row.amo_account_id)
            except AmoReauthRequired:
                return None
        log.warning("amocrm.needs_reauth", account_id=row.amo_account_id, why=why[:200])
        return None

    async def _reload(self, account_id: int) -> Credentials:
        self.forget(account_id)
        return await self._current(account_id)
