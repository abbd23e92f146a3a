"""``autoinformer_events`` (autoinformer.md §10): results pushed to the CRM as they happen.

Each event goes into the Integration API's durable outbox (``ApiDelivery``) in the caller's transaction, so it
is sent exactly when the change it reports is committed, with the outbox's retries, ordering and suspension
(integration-api.md §5.1). One contact's events share an ordering key (``session_id``
``ai-contact:<id>``) and go out in order; a campaign's status events share ``ai-campaign:<id>``.
``event_id`` is written into the stored body, so every retry carries the same one (the CRM's dedupe key).

Sent only when the domain has the Integration API on, a CRM address, and «Отправлять autoinformer_events»
(``ApiSettings.send_ai_notifications``) on.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.amocrm.ai_results import enqueue_result
from vpbx.billing import INTEGRATION_API, is_enabled
from vpbx.integration_api.core import enqueue, moscow
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, ApiDelivery, ApiSettings

METHOD = "autoinformer_events"
NUMBER_FINISHED_SEQ = 1_000_000  # after every attempt of the contact (≤ 10 rounds × 5 numbers)


async def _wanted(s: AsyncSession, domain_id: uuid.UUID) -> bool:
    settings = await s.get(ApiSettings, domain_id)
    if settings is None or not settings.crm_url or not settings.send_ai_notifications:
        return False
    return await is_enabled(s, domain_id, INTEGRATION_API)


def _common(event: str, domain: str, campaign: AiCampaign, at: dt.datetime) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "event": event,
        "timestamp": moscow(at),
        "domain": domain,
        "campaign_id": campaign.id.hex,
        "campaign_external_id": campaign.external_id,
    }


def _contact_key(contact: AiContact) -> str:
    return f"ai-contact:{contact.id.hex}"


async def attempt_finished(
    s: AsyncSession,
    *,
    domain: str,
    campaign: AiCampaign,
    contact: AiContact,
    attempt: AiAttempt,
    at: dt.datetime,
) -> bool:
    """One dial ended (``contact.status`` is already the status after it). False when not sent."""
    if not await _wanted(s, campaign.domain_id):
        return False
    body = _common("attempt_finished", domain, campaign, at) | {
        "phone": attempt.phone,
        "contact_external_id": contact.external_id,
        "attempt": attempt.attempt_no,
        "session_id": attempt.session_id,
        "outcome": attempt.outcome,
        "criterion_met": attempt.criterion_met,
        "sip_code": attempt.sip_code,
        "listen_s": round(attempt.listen_s),
        "played_full": attempt.played_full,
        "digits": attempt.digits,
        "action": attempt.action,
        "operator_answered": attempt.operator_answered,
        "number_status": contact.status,
    }
    seq = (attempt.attempt_no - 1) * 10 + attempt.number_index + 1
    enqueue(s, campaign.domain_id, METHOD, body, session_id=_contact_key(contact), seq=seq)
    return True


async def number_finished(
    s: AsyncSession, *, domain: str, campaign: AiCampaign, contact: AiContact, at: dt.datetime
) -> bool:
    """The contact reached a final status (``excluded``, ``expired`` and ``cancelled`` included); its
    result goes to amoCRM too when the domain has an active binding (vpbx/amocrm/ai_results.py)."""
    await enqueue_result(s, campaign=campaign, contact=contact, at=at)
    if not await _wanted(s, campaign.domain_id):
        return False
    body = _common("number_finished", domain, campaign, at) | {
        "phone": contact.phones[0] if contact.phones else "",
        "contact_external_id": contact.external_id,
        "number_status": contact.status,
        "attempts_made": contact.attempts_made,
    }
    enqueue(s, campaign.domain_id, METHOD, body, session_id=_contact_key(contact), seq=NUMBER_FINISHED_SEQ)
    return True


async def campaign_status(
    s: AsyncSession,
    *,
    domain: str,
    campaign: AiCampaign,
    counters: Mapping[str, int],
    at: dt.datetime,
) -> bool:
    """Every transition of the campaign (``campaign.status`` is the new one)."""
    if not await _wanted(s, campaign.domain_id):
        return False
    key = f"ai-campaign:{campaign.id.hex}"
    last = await s.scalar(
        select(func.max(ApiDelivery.seq)).where(ApiDelivery.method == METHOD, ApiDelivery.session_id == key)
    )
    body = _common("campaign_status", domain, campaign, at) | {
        "status": campaign.status,
        "error_reason": campaign.error_reason,
        "counters": dict(counters),
    }
    enqueue(s, campaign.domain_id, METHOD, body, session_id=key, seq=(last or 0) + 1)
    return True
