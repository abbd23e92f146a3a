"""Connecting a PBX domain to an amoCRM account and disconnecting it (amocrm.md F2–F4, F15, §2.2, §3.2).

The life of a link, in the order it happens:

1. **Install** (F2.1): amoCRM sends the OAuth code to ``/amo/oauth/callback``. ``record_install`` exchanges
   it at once (the code is single-use and lives 20 min; never re-exchanged), reads ``GET /api/v4/account``
   and keeps one ``AmoInstall`` per account with the sealed tokens. No domain is involved yet.
2. **Ticket** (F2.2): the widget's «Подключить» asks ``issue_ticket`` for a single-use link to the cabinet's
   connect page (10 min, stored as a SHA-256 hash only).
3. **Connect** (F2.3–4): a domain administrator opens the link. ``connect_check`` says what the page shows:
   the fee modal, the F3 refusal (get_number_info is on), the F4 modal (the domain is linked to another
   account), or the reverse refusal (the account is linked to another domain). ``activate`` runs every check
   again, makes the binding ``active``, adds one to the counted service «Интеграция с внешними системами»
   and charges the rest of the month, all in the caller's transaction.
4. **Disable** (F15): from the cabinet, from the widget, or by the uninstall hook. ``disable`` turns the
   binding ``disabled`` (exactly once: a conditional UPDATE), subtracts one from the counter and drops the
   binding's queued jobs with a log line. The install and its tokens stay, so «Подключить» can link again;
   ``uninstall`` also deletes them.

Other features join in through ``BINDING_HOOKS`` (e.g. the E17 webhook subscription): ``on_activate`` and
``on_disable`` run inside the same transaction, after the binding's state and the counter changed and after
the queued jobs were dropped, so a job a hook enqueues on disable survives.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.amocrm import oauth, tokens
from vpbx.amocrm.errors import AmoError, AmoReauthRequired
from vpbx.amocrm.oauth import TokenPair
from vpbx.crypto import token_hash
from vpbx.errors import IntegrationError
from vpbx.logs import get_logger
from vpbx.store.models import (
    AmoConnectTicket,
    AmoInstall,
    ApiSettings,
    CrmBinding,
    CrmJob,
    Domain,
)

if TYPE_CHECKING:
    from vpbx.amocrm.tokens import TokenManager
    from vpbx.crypto import SecretBox
    from vpbx.settings import AmoSettings, Settings

log = get_logger("vpbx.amocrm.binding")

KIND = "amocrm"
TICKET_TTL = dt.timedelta(minutes=10)  # F2.2 (ours)
TICKET_BYTES = 32
HOOK_SECRET_BYTES = 24
# §2.1: the OAuth referer names the account's host; anything else is refused (extra hosts: the emulator's)
ACCOUNT_WITH = "users_groups,task_types,datetime_settings"
INSTALL_TIMEOUT = httpx.Timeout(connect=2.0, read=5.0, write=5.0, pool=2.0)  # §2.5
DROPPABLE_JOB_STATES = ("pending", "held")  # F15: queued jobs; a running one finishes or fails on its own

DisableReason = Literal["cabinet", "widget", "uninstall", "replaced"]
WidgetStatus = Literal["installed", "active", "needs_reauth", "disabled"]  # §3.2, §3.4: nothing else
Health = Literal["ok", "amo_unreachable", "pbx_unreachable"]


# --- errors -----------------------------------------------------------------------------------------------


class BindError(IntegrationError):
    """A connect or install step refused; ``code`` is what the widget API and the cabinet show."""

    code: ClassVar[str] = "amocrm-bind-error"


class HostNotAllowed(BindError):
    code = "host-not-allowed"


class ClientMismatch(BindError):
    code = "client-id-mismatch"


class NotConfigured(BindError):
    """No ``client_id``/``client_secret`` in the settings: the integration is off on this platform."""

    code = "integration-not-configured"


class InstallFailed(BindError):
    """The code exchange or the account read failed: the admin must install the widget again (§2.2)."""

    code = "install-failed"


class NotInstalled(BindError):
    code = "not-installed"


class TicketInvalid(BindError):
    """Unknown, used or expired connect ticket."""

    code = "ticket-invalid"


class NumberInfoOn(BindError):
    """F3: the domain's Integration API has get_number_info on."""

    code = "number-info-on"


class DomainBoundElsewhere(BindError):
    """F4: the domain is linked to another amoCRM account (``base_domain`` names it)."""

    code = "domain-bound-elsewhere"

    def __init__(self, base_domain: str) -> None:
        super().__init__("domain already linked", details={"base_domain": base_domain})
        self.base_domain = base_domain


class AccountBoundElsewhere(BindError):
    """F4, the other way: the account is linked to another domain (``domain_name`` names it)."""

    code = "account-bound-elsewhere"

    def __init__(self, domain_name: str) -> None:
        super().__init__("account already linked", details={"domain": domain_name})
        self.domain_name = domain_name


class BindingRace(BindError):
    """Another request linked the domain or the account at the same moment (a partial unique index)."""

    code = "binding-conflict"


# --- hooks for other features -----------------------------------------------------------------------------


class BindingHook(Protocol):
    """A feature's part in connecting and disconnecting (amoroute: E17 subscribe/unsubscribe). Runs in the
    caller's transaction; must not talk to amoCRM inline (enqueue a ``CrmJob`` instead)."""

    async def on_activate(self, s: AsyncSession, binding: CrmBinding, now: dt.datetime) -> None: ...

    async def on_disable(self, s: AsyncSession, binding: CrmBinding, now: dt.datetime) -> None: ...


BINDING_HOOKS: list[BindingHook] = []  # appended once at import time by the features that need it


# --- install (OAuth callback) -----------------------------------------------------------------------------


async def read_account(http: httpx.AsyncClient, settings: AmoSettings, base_domain: str, token: str) -> Any:
    resp = await http.get(
        f"{oauth.account_url(settings, base_domain)}/api/v4/account",
        params={"with": ACCOUNT_WITH},
        headers={"Authorization": f"Bearer {token}"},
    )
    if resp.status_code != 200:
        raise InstallFailed(f"account read answered {resp.status_code}", details={"status": resp.status_code})
    return resp.json()


async def store_install(
    s: AsyncSession,
    box: SecretBox,
    *,
    client_id: str,
    base_domain: str,
    account: dict[str, Any],
    pair: TokenPair,
    now: dt.datetime,
) -> AmoInstall:
    """One install per account: a reinstall replaces its tokens (a new version), clears ``needs_reauth``."""
    account_id = int(account["id"])
    tz = str((account.get("datetime_settings") or {}).get("timezone") or "Europe/Moscow")
    row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == account_id))
    if row is None:
        row = AmoInstall(amo_account_id=account_id, token_version=0)
    row.base_domain = base_domain
    row.client_id = client_id
    row.account_name = str(account.get("name") or "")[:255]
    row.timezone = tz[:64]
    row.auth_type = "oauth"
    row.installed_at = now
    await tokens.store_tokens(s, box, row, pair)
    return row


async def record_install(
    s: AsyncSession,
    box: SecretBox,
    settings: Settings,
    *,
    code: str,
    referer: str,
    client_id: str,
    now: dt.datetime,
    http: httpx.AsyncClient | None = None,
) -> AmoInstall:
    """F2.1: the OAuth callback's work. Raises ``BindError`` subclasses; the caller commits."""
    amo = settings.amocrm
    if not amo.client_id or amo.client_secret is None:
        raise NotConfigured("amoCRM integration is not configured")
    if client_id and client_id != amo.client_id:
        raise ClientMismatch("client_id is not ours")
    base_domain = referer.strip().lower()
    if not oauth.is_allowed_base_domain(amo, base_domain):
        raise HostNotAllowed("referer not allowed", details={"referer": referer[:255]})
    own = http is None
    client = http or httpx.AsyncClient(timeout=INSTALL_TIMEOUT)
    try:
        try:
            pair = await oauth.exchange_code(client, settings, base_domain, code, now=now)
            account = await read_account(client, amo, base_domain, pair.access_token)
        except (AmoError, httpx.HTTPError, ValueError, KeyError, TypeError) as e:
            raise InstallFailed(f"install failed: {type(e).__name__}") from None
        except Exception as e:  # a refused code must end in a clean answer too: the admin installs again
            log.warning("amocrm.install_error", error=type(e).__name__)
            raise InstallFailed(f"install failed: {type(e).__name__}") from None
    finally:
        if own:
            await client.aclose()
    if not isinstance(account, dict) or "id" not in account:
        raise InstallFailed("account answer without id")
    row = await store_install(
        s, box, client_id=amo.client_id, base_domain=base_domain, account=account, pair=pair, now=now
    )
    log.info("amocrm.installed", account_id=row.amo_account_id, base_domain=base_domain)
    return row


async def probe_revoked(tokens: TokenManager, account_id: int) -> bool:
    """§2.2: a disconnect hook whose signature does not verify is believed only if a refresh with the
    stored token is refused with 401 (the grant was revoked). The refresh is the client's own (the account's
    lock and compare-and-swap): one that succeeds stores the rotated pair, one refused otherwise leaves the
    install ``needs_reauth``."""
    try:
        await tokens.force_refresh(account_id)
    except AmoReauthRequired as e:
        return e.status == 401
    except AmoError as e:
        log.warning("amocrm.probe_failed", account_id=account_id, error=type(e).__name__)
    return False


async def install_of(s: AsyncSession, account_id: int) -> AmoInstall | None:
    row: AmoInstall | None = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == account_id))
    return row


# --- connect tickets --------------------------------------------------------------------------------------


async def issue_ticket(s: AsyncSession, *, account_id: int, user_id: int, now: dt.datetime) -> str:
    """F2.2: a fresh single-use ticket for the account's admin; only its hash is stored."""
    if await install_of(s, account_id) is None:
        raise NotInstalled("the widget is not installed")
    await s.execute(
        delete(AmoConnectTicket).where(AmoConnectTicket.expires_at <= now)
    )  # keep the table small
    raw = secrets.token_urlsafe(TICKET_BYTES)
    s.add(
        AmoConnectTicket(
            ticket_hash=token_hash(raw),
            amo_account_id=account_id,
            amo_user_id=user_id,
            created_at=now,
            expires_at=now + TICKET_TTL,
        )
    )
    await s.flush()
    return raw


async def peek_ticket(s: AsyncSession, raw: str, now: dt.datetime) -> AmoConnectTicket:
    """The ticket, if it is still usable; does not use it up («Отмена» leaves it valid, F4)."""
    if not raw or len(raw) > 128:
        raise TicketInvalid("no ticket")
    row = await s.get(AmoConnectTicket, token_hash(raw))
    if row is None or row.used_at is not None or row.expires_at <= now:
        raise TicketInvalid("ticket unknown, used or expired")
    return row


async def use_ticket(s: AsyncSession, raw: str, now: dt.datetime) -> AmoConnectTicket:
    """Use the ticket up: one conditional UPDATE, so of two tabs pressing «Подключить» only one gets it."""
    ticket = await peek_ticket(s, raw, now)
    done = await s.execute(
        update(AmoConnectTicket)
        .where(
            AmoConnectTicket.ticket_hash == ticket.ticket_hash,
            AmoConnectTicket.used_at.is_(None),
            AmoConnectTicket.expires_at > now,
        )
        .values(used_at=now)
        .returning(AmoConnectTicket.ticket_hash)
    )
    if done.first() is None:
        raise TicketInvalid("ticket already used")
    return ticket


# --- connect ----------------------------------------------------------------------------------------------


async def active_binding(s: AsyncSession, domain_id: uuid.UUID) -> CrmBinding | None:
    """The domain's active amoCRM binding (at most one)."""
    row: CrmBinding | None = await s.scalar(
        select(CrmBinding).where(
            CrmBinding.domain_id == domain_id, CrmBinding.crm_kind == KIND, CrmBinding.status == "active"
        )
    )
    return row


async def active_binding_of_account(s: AsyncSession, account_id: int) -> CrmBinding | None:
    row: CrmBinding | None = await s.scalar(
        select(CrmBinding).where(
            CrmBinding.external_account_id == account_id,
            CrmBinding.crm_kind == KIND,
            CrmBinding.status == "active",
        )
    )
    return row


async def number_info_on(s: AsyncSession, domain_id: uuid.UUID) -> bool:
    """F3: get_number_info is on while the Integration API service is on and its switch is on."""
    if not await billing.is_enabled(s, domain_id, billing.INTEGRATION_API):
        return False
    on: bool | None = await s.scalar(
        select(ApiSettings.number_info).where(ApiSettings.domain_id == domain_id)
    )
    return bool(on)


@dataclass(frozen=True, slots=True)
class ConnectCheck:
    """What the connect page shows for this domain and this install."""

    outcome: Literal["ready", "already", "number_info", "domain_elsewhere", "account_elsewhere"]
    current: CrmBinding | None = None  # the domain's active binding (already, domain_elsewhere)
    other_domain: str = ""  # account_elsewhere: the domain the account is linked to


async def connect_check(s: AsyncSession, *, domain_id: uuid.UUID, install: AmoInstall) -> ConnectCheck:
    current = await active_binding(s, domain_id)
    if current is not None and current.external_account_id == install.amo_account_id:
        return ConnectCheck("already", current)
    theirs = await active_binding_of_account(s, install.amo_account_id)
    if theirs is not None:
        other = await s.get(Domain, theirs.domain_id)
        return ConnectCheck("account_elsewhere", other_domain=other.name if other else "")
    if await number_info_on(s, domain_id):
        return ConnectCheck("number_info")
    if current is not None:
        return ConnectCheck("domain_elsewhere", current)
    return ConnectCheck("ready")


async def activate(
    s: AsyncSession, *, domain_id: uuid.UUID, install: AmoInstall, now: dt.datetime
) -> CrmBinding:
    """F2.4: the domain's binding to the install's account becomes active; counter +1 with the prorated
    charge.

    Every check of ``connect_check`` runs again here (the page may be old). The caller has checked that its
    user is the domain's administrator, and commits. Linking the same account to the same domain again is a
    no-op.
    """
    check = await connect_check(s, domain_id=domain_id, install=install)
    match check.outcome:
        case "already":
            assert check.current is not None
            return check.current
        case "account_elsewhere":
            raise AccountBoundElsewhere(check.other_domain)
        case "number_info":
            raise NumberInfoOn("get_number_info is on")
        case "domain_elsewhere":
            assert check.current is not None
            raise DomainBoundElsewhere(check.current.base_domain)
    binding = CrmBinding(
        domain_id=domain_id,
        crm_kind=KIND,
        external_account_id=install.amo_account_id,
        base_domain=install.base_domain,
        status="active",
        hook_secret=secrets.token_urlsafe(HOOK_SECRET_BYTES),
        options={},
        health={},
        connected_at=now,
    )
    try:
        async with s.begin_nested():
            s.add(binding)
            await s.flush()
    except IntegrityError:
        raise BindingRace("linked meanwhile") from None
    await billing.enable(s, domain_id, billing.EXTERNAL_INTEGRATIONS, now)
    for hook in BINDING_HOOKS:
        await hook.on_activate(s, binding, now)
    log.info("amocrm.binding.active", domain_id=str(domain_id), account_id=install.amo_account_id)
    return binding


# --- disable and uninstall --------------------------------------------------------------------------------


async def disable(s: AsyncSession, binding: CrmBinding, *, reason: DisableReason, now: dt.datetime) -> bool:
    """F15: the binding turns ``disabled``, the counter goes down by one, queued jobs are dropped.

    Returns False when it was not active (another request disabled it first): then nothing else changes, so
    the counter never goes down twice. The install and tokens stay. The caller commits.
    """
    done = await s.execute(
        update(CrmBinding)
        .where(CrmBinding.id == binding.id, CrmBinding.status == "active")
        .values(status="disabled", disabled_at=now, disabled_reason=reason)
        .returning(CrmBinding.id)
    )
    if done.first() is None:
        return False
    await s.refresh(binding)
    await billing.disable(s, binding.domain_id, billing.EXTERNAL_INTEGRATIONS, now)
    dropped = await s.execute(
        update(CrmJob)
        .where(CrmJob.binding_id == binding.id, CrmJob.state.in_(DROPPABLE_JOB_STATES))
        .values(state="dropped", last_error=f"binding disabled ({reason})", done_at=now)
        .returning(CrmJob.id)
    )
    n_dropped = len(dropped.all())
    for hook in BINDING_HOOKS:
        await hook.on_disable(s, binding, now)
    log.info(
        "amocrm.binding.disabled",
        domain_id=str(binding.domain_id),
        account_id=binding.external_account_id,
        reason=reason,
        jobs_dropped=n_dropped,
    )
    return True


async def disable_account(
    s: AsyncSession, account_id: int, *, reason: DisableReason, now: dt.datetime
) -> bool:
    """F15 from the amoCRM side: the account's active binding, if any."""
    binding = await active_binding_of_account(s, account_id)
    return binding is not None and await disable(s, binding, reason=reason, now=now)


async def uninstall(s: AsyncSession, account_id: int, *, now: dt.datetime) -> bool:
    """The widget was uninstalled (disconnect hook, §2.2): disable, then delete the install, its tokens and
    its tickets. Returns whether there was an install."""
    await disable_account(s, account_id, reason="uninstall", now=now)
    await s.execute(delete(AmoConnectTicket).where(AmoConnectTicket.amo_account_id == account_id))
    gone = await s.execute(
        delete(AmoInstall).where(AmoInstall.amo_account_id == account_id).returning(AmoInstall.id)
    )
    existed = gone.first() is not None
    log.info("amocrm.uninstalled", account_id=account_id, had_install=existed)
    return existed


# --- the widget's view ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountState:
    """``GET /amo/widget/v1/state`` (§3.2, §3.4). ``oauth_missing`` (ours): we hold no install for the account
    although its widget runs (a valid widget token): amoCRM's OAuth callback never reached us (the consent
    step was cancelled or the callback failed) or the widget was uninstalled since; the status stays one of
    the spec's four and the widget tells the admin to install the widget again and grant access."""

    status: WidgetStatus
    pbx_domain: str | None
    connected_at: dt.datetime | None
    health: Health
    oauth_missing: bool = False


HEALTH_STATES: tuple[Health, ...] = ("ok", "amo_unreachable", "pbx_unreachable")


async def status_for(s: AsyncSession, account_id: int) -> AccountState:
    """The account's state for its widget: only ``account_id`` scopes the lookup (§3.3)."""
    install = await install_of(s, account_id)
    binding = await active_binding_of_account(s, account_id)
    if binding is None:
        if install is not None and install.token_state == "needs_reauth":
            status: WidgetStatus = "needs_reauth"
        else:
            had: uuid.UUID | None = await s.scalar(
                select(CrmBinding.id)
                .where(CrmBinding.external_account_id == account_id, CrmBinding.crm_kind == KIND)
                .limit(1)
            )
            status = "disabled" if had is not None else "installed"
        return AccountState(status, None, None, "ok", oauth_missing=install is None)
    domain = await s.get(Domain, binding.domain_id)
    needs_reauth = install is None or install.token_state == "needs_reauth"
    return AccountState(
        "needs_reauth" if needs_reauth else "active",
        domain.name if domain else None,
        binding.connected_at,
        health_of(binding.health or {}),
        oauth_missing=install is None,
    )


def health_of(health: dict[str, Any]) -> Health:
    """The widget's health word from ``CrmBinding.health``: an explicit ``status``, else the client's record
    (``health["client"]``, vpbx.amocrm.client): amoCRM is unreachable while its last failure, later than its
    last success, was no answer, a 5xx, a 403 block or a 429 storm (a refused write is not an outage)."""
    explicit = health.get("status")
    if explicit in HEALTH_STATES:
        return explicit  # type: ignore[no-any-return]
    client = health.get("client")
    if not isinstance(client, dict):
        return "ok"
    failed, succeeded = client.get("last_failure_at"), client.get("last_success_at")
    if not isinstance(failed, str) or (isinstance(succeeded, str) and succeeded >= failed):
        return "ok"
    status = client.get("last_status")
    outage = status is None or (isinstance(status, int) and (status >= 500 or status in (403, 429)))
    return "amo_unreachable" if outage else "ok"
