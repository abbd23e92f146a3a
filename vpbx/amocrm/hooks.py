"""amoCRM's webhooks (amocrm.md E17, E18, §5.3): they keep the phone cache honest.

- E17: ``subscribe_webhooks`` / ``unsubscribe_webhooks`` register and remove ``{public origin}/amo/hooks/
  {hook_secret}`` for the contact events of ``HOOK_EVENTS``. ``WebhookSync`` (a runtime part) calls them:
  it reconciles amoCRM with the bindings' state, so no HTTP call happens inside activation or disable:
  an active binding without ``webhook_id`` is subscribed, a disabled one with a ``webhook_id`` unsubscribed
  (given up when the account's authorisation is gone: amoCRM drops an uninstalled integration's hooks).
  A pass runs at start and every ``SYNC_INTERVAL_S``; a failure is tried again on the next pass.
- E18: ``POST /amo/hooks/{hook_secret}``. amoCRM posts PHP-bracket forms (``contacts[update][0][id]=9001&
  account[id]=30000001``), all values strings, and signs nothing: the secret path names the binding (an
  unknown or disabled one → 404), the body is only a hint. Each named contact's cache rows are dropped, and,
  unless it was deleted, the contact is re-read with E5 in the background. The answer never waits for amoCRM.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from sqlalchemy import and_, or_, select, update

from vpbx.amocrm.api import AmoApi, AmoClients
from vpbx.amocrm.errors import AmoError, AmoReauthRequired
from vpbx.amocrm.lease import background_allowed
from vpbx.amocrm.nearest import nearest_for
from vpbx.amocrm.widget_auth import public_origin
from vpbx.background import BackgroundLoop
from vpbx.crm.connector import Binding
from vpbx.logs import get_logger
from vpbx.store.models import CrmBinding

if TYPE_CHECKING:
    from vpbx.amocrm.lookup import PhoneLookup
    from vpbx.settings import Settings

log = get_logger("vpbx.amocrm.hooks")

HOOK_EVENTS = ("add_contact", "update_contact", "delete_contact", "restore_contact", "responsible_contact")
HOOK_PATH = "/hooks/{hook_secret}"  # under /amo
MAX_BODY = 256 * 1024  # a hook names a handful of contacts; anything bigger is not amoCRM
MAX_CONTACTS = 250
SYNC_INTERVAL_S = 30.0
SYNC_TIMEOUT_S = 30.0
SYNC_BATCH = 100  # bindings per pass
_FIELD = re.compile(r"^contacts\[(?P<action>[a-z_]+)\]\[(?P<index>\d{1,4})\]\[(?P<field>[a-z_]+)\]$")


# --- E17 --------------------------------------------------------------------------------------------------


def hook_destination(settings: Settings, hook_secret: str) -> str:
    return f"{public_origin(settings)}/amo/hooks/{hook_secret}"


async def subscribe_webhooks(api: AmoApi, settings: Settings, binding: CrmBinding) -> str:
    """E17 ``POST /api/v4/webhooks``: the binding's destination for the contact events; the webhook id (also
    stored in ``binding.webhook_id``; the caller commits)."""
    answer = await api.subscribe_webhook(hook_destination(settings, binding.hook_secret), HOOK_EVENTS)
    webhook_id = str(answer.get("id") or "")[:64]
    binding.webhook_id = webhook_id
    return webhook_id


async def unsubscribe_webhooks(api: AmoApi, settings: Settings, binding: CrmBinding) -> None:
    """E17 ``DELETE /api/v4/webhooks``."""
    await api.unsubscribe_webhook(hook_destination(settings, binding.hook_secret))
    binding.webhook_id = ""


class WebhookSync(BackgroundLoop):
    """amoCRM's webhook subscriptions kept in line with the bindings (E17); a failed pass is logged and the
    next one tries again."""

    name = "amo-webhook-sync"
    failure_event = "amocrm.webhook_sync_failed"

    def __init__(self, core: Any, clients: AmoClients, *, interval_s: float = SYNC_INTERVAL_S) -> None:
        self.core = core
        self.clients = clients
        self.interval_s = interval_s

    async def run_once(self) -> float | None:
        await self.sync_once()
        return None

    async def sync_once(self) -> int:
        """One pass; the number of bindings brought in line."""
        async with self.core.sessions() as s:
            rows = list(
                await s.scalars(
                    select(CrmBinding).where(
                        CrmBinding.crm_kind == "amocrm",
                        or_(
                            and_(CrmBinding.status == "active", CrmBinding.webhook_id == ""),
                            and_(CrmBinding.status == "disabled", CrmBinding.webhook_id != ""),
                        ),
                    )
                )
            )
        done = 0
        for row in rows[:SYNC_BATCH]:
            done += await self._sync(row)
        return done

    async def _sync(self, row: CrmBinding) -> int:
        api = self.clients.for_account(row.external_account_id)
        subscribe = row.status == "active"
        try:
            async with asyncio.timeout(SYNC_TIMEOUT_S):
                if subscribe:
                    await subscribe_webhooks(api, self.core.settings, row)
                else:
                    await unsubscribe_webhooks(api, self.core.settings, row)
        except AmoReauthRequired as e:
            if subscribe:
                log.warning("amocrm.webhook_subscribe_failed", binding=str(row.id), error=type(e).__name__)
                return 0
            row.webhook_id = ""  # the grant is gone: so are its hooks
        except (AmoError, OSError, TimeoutError) as e:
            log.warning(
                "amocrm.webhook_sync_retry", binding=str(row.id), subscribe=subscribe, error=type(e).__name__
            )
            return 0
        async with self.core.sessions() as s:
            await s.execute(
                update(CrmBinding)
                .where(CrmBinding.id == row.id, CrmBinding.status == row.status)
                .values(webhook_id=row.webhook_id or ("" if not subscribe else "subscribed"))
            )
            await s.commit()
        log.info("amocrm.webhook_synced", binding=str(row.id), subscribed=subscribe)
        return 1


# --- E18 --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HookEvent:
    action: str  # add, update, delete, restore, responsible, …
    contact_id: int


def parse_hook(body: bytes) -> tuple[int | None, list[HookEvent]]:
    """(account id, the contact events) of an E18 form; unknown keys are ignored."""
    account: int | None = None
    events: dict[tuple[str, str], int] = {}
    for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=5000):
        if key == "account[id]" and value.strip().isdigit():
            account = int(value.strip())
            continue
        m = _FIELD.match(key)
        if m is None or m["field"] != "id" or not value.strip().isdigit():
            continue
        events.setdefault((m["action"], m["index"]), int(value.strip()))
    found = [HookEvent(action, contact) for (action, _), contact in events.items()]
    return account, found[:MAX_CONTACTS]


def lookup_of(request: Request) -> PhoneLookup | None:
    """The phone lookup the runtime set on the ``/amo`` app (absent: cache rows are only dropped)."""
    found: PhoneLookup | None = getattr(request.app.state, "amo_lookup", None)
    return found


router = APIRouter()


@router.post(HOOK_PATH)
async def inbound_hook(hook_secret: str, request: Request) -> JSONResponse:
    core: Any = request.app.state.core
    if not hook_secret or len(hook_secret) > 64:
        raise HTTPException(404, detail={"error": "not-found"})
    async with core.sessions() as s:
        row = await s.scalar(
            select(CrmBinding).where(CrmBinding.hook_secret == hook_secret, CrmBinding.status == "active")
        )
    if row is None:
        raise HTTPException(404, detail={"error": "not-found"})
    body = await request.body()
    if len(body) > MAX_BODY:
        raise HTTPException(413, detail={"error": "too-large"})
    account, events = parse_hook(body)
    binding = Binding.of(row)
    if account is not None and account != binding.account_id:
        log.warning("amocrm.hook_other_account", binding=str(binding.id), account=account)
        return JSONResponse({"ok": True})
    await apply_events(core, lookup_of(request), binding, events)
    return JSONResponse({"ok": True})


async def apply_events(
    core: Any, lookup: PhoneLookup | None, binding: Binding, events: Sequence[HookEvent]
) -> None:
    """Drop the named contacts' cache rows (and their cached nearest deals) now; re-read the surviving ones
    in the background."""
    from vpbx.amocrm.lookup import PhoneLookup

    seen: set[int] = set()
    for event in events:
        if event.contact_id in seen:
            continue
        seen.add(event.contact_id)
        if lookup is None:
            lookup = PhoneLookup(core.sessions, _NoClients(), core.clock)
        await lookup.forget_contact(binding.id, event.contact_id)
        nearest_for(core).forget(binding.id, event.contact_id)  # its deals may have changed too
        if (
            event.action != "delete"
            and not isinstance(lookup.clients, _NoClients)
            and background_allowed(lookup.clients, binding.account_id)  # else the owner re-reads on demand
        ):
            lookup.spawn(lookup.refresh_contact(binding, event.contact_id), "amo-hook-reread")
    log.info("amocrm.hook", binding=str(binding.id), contacts=len(seen))


class _NoClients:
    """No client pool in this process (the HTTP side alone): rows are dropped, nothing is re-read."""

    def for_account(self, amo_account_id: int) -> AmoApi:
        raise LookupError("no amoCRM client in this process")
