"""The Integration API's settings service (integration-api.md §2.1, §2.4, §6.1, §6.2): what the cabinet calls.

* ``ensure_settings``: on activation, the domain's settings with a fresh X-Client-ID and signing key (the key
  sealed); an existing row is kept as it is: deactivation keeps the settings, and R5 rejects requests.
* ``regenerate``: a new X-Client-ID or key, effective at once (the old value gets R4/R8 from then on).
* ``update_settings``: validates every field, then applies them together, or raises ``ValidationFailed``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.crypto import SecretBox
from vpbx.errors import NotFound
from vpbx.integration_api.core import api_settings, new_credential
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import ApiSettings, CrmBinding, Domain

MAX_ALLOWLIST = 50  # entries (§2.4)
TIMEOUT_RANGE_S = (1, 10)  # «Таймаут» (§6.2)
EVENT_TYPES = ("incoming", "outbound", "internal")
EVENT_STATES = ("new", "calling", "connected", "disconnected", "end")
MAX_URL = 500


async def amocrm_connected(s: AsyncSession, domain_id: uuid.UUID) -> bool:
    """Whether the domain's amoCRM integration is on (§6.5): it has an active binding."""
    found = await s.scalar(
        select(CrmBinding.id).where(CrmBinding.domain_id == domain_id, CrmBinding.status == "active").limit(1)
    )
    return found is not None


async def ensure_settings(s: AsyncSession, domain_id: uuid.UUID, box: SecretBox) -> ApiSettings:
    """The domain's settings, created with fresh credentials the first time the service is activated."""
    row = await api_settings(s, domain_id)
    if row is not None:
        return row
    if await s.get(Domain, domain_id) is None:
        raise NotFound("domain", domain_id)
    row = ApiSettings(
        domain_id=domain_id, client_id=new_credential(), sign_key_enc=box.seal(new_credential())
    )
    s.add(row)
    await s.flush()
    return row


async def _existing(s: AsyncSession, domain_id: uuid.UUID) -> ApiSettings:
    row = await api_settings(s, domain_id)
    if row is None:
        raise NotFound("api settings", domain_id)
    return row


async def regenerate(
    s: AsyncSession, domain_id: uuid.UUID, box: SecretBox, which: Literal["client_id", "key"]
) -> str:
    """A new X-Client-ID or signing key, valid from the commit on; the old one stops working at once.
    Returns the new value (the cabinet shows it)."""
    row = await _existing(s, domain_id)
    value = new_credential()
    if which == "client_id":
        row.client_id = value
    elif which == "key":
        row.sign_key_enc = box.seal(value)
    else:
        raise ValueError(f"cannot regenerate {which!r}")
    await s.flush()
    return value


@dataclass(kw_only=True)
class SettingsInput:
    """«Настройка параметров» as submitted (§6.2)."""

    crm_url: str = ""
    allowlist: str | Sequence[str] = ""  # one entry per line (or a list)
    timeout_s: str | int = 3
    tls_required: bool = True
    send_events: bool = True
    event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    event_states: list[str] = field(default_factory=lambda: list(EVENT_STATES))
    send_autoinformer_events: bool = True
    send_ai_notifications: bool = True  # autoinformer_events (autoinformer.md §10)
    number_info: bool = False
    verify_crm_sign: bool = False


def _check_url(c: Check, value: str, tls_required: bool) -> str:
    value = c.text("crm_url", value, max_len=MAX_URL, required=False)
    if not value or c.has("crm_url"):
        return value
    try:
        parts = urllib.parse.urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        c.add("crm_url", N_("Enter an address like https://crm.example.com/api"))
        return value
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        c.add("crm_url", N_("Enter an address like https://crm.example.com/api"))
    elif parts.query or parts.fragment or value.endswith(("?", "#")):
        c.add("crm_url", N_("The address may not contain a query string or fragment"))
    elif tls_required and parts.scheme != "https":
        c.add("crm_url", N_("With traffic encryption on, the address must start with https://"))
    return value


def _check_allowlist(c: Check, value: str | Sequence[str]) -> list[str]:
    entries = value.split() if isinstance(value, str) else [v.strip() for v in value if v.strip()]
    if len(entries) > MAX_ALLOWLIST:
        c.add("allowlist", N_("At most {max} addresses"), max=MAX_ALLOWLIST)
        return entries
    out: list[str] = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            c.add("allowlist", N_("Not an IP address or network: {entry}"), entry=entry[:64])
            continue
        out.append(str(net.network_address) if net.num_addresses == 1 and "/" not in entry else str(net))
    return out


async def update_settings(s: AsyncSession, domain_id: uuid.UUID, data: SettingsInput) -> ApiSettings:
    """Validate every field, then save them together; raises ``ValidationFailed`` and changes nothing."""
    row = await _existing(s, domain_id)
    c = Check()
    crm_url = _check_url(c, data.crm_url, data.tls_required)
    allowlist = _check_allowlist(c, data.allowlist)
    timeout_s = 0
    raw_timeout = str(data.timeout_s).strip()
    if not raw_timeout.isdigit() or not (TIMEOUT_RANGE_S[0] <= int(raw_timeout) <= TIMEOUT_RANGE_S[1]):
        c.add(
            "timeout_s",
            N_("A whole number from {min} to {max}"),
            min=TIMEOUT_RANGE_S[0],
            max=TIMEOUT_RANGE_S[1],
        )
    else:
        timeout_s = int(raw_timeout)
    if any(t not in EVENT_TYPES for t in data.event_types):
        c.add("event_types", N_("Unknown value"))
    if any(t not in EVENT_STATES for t in data.event_states):
        c.add("event_states", N_("Unknown value"))
    if data.number_info and await amocrm_connected(s, domain_id):
        c.add(
            "number_info",
            N_(
                "The amoCRM integration cannot be on at the same time as the API method number_info. "
                "Switch off the amoCRM integration."
            ),
        )
    c.done()
    row.crm_url = crm_url
    row.allowlist = "\n".join(allowlist)
    row.timeout_s = timeout_s
    row.tls_required = data.tls_required
    row.send_events = data.send_events
    row.event_types = [t for t in EVENT_TYPES if t in data.event_types]
    row.event_states = [t for t in EVENT_STATES if t in data.event_states]
    row.send_autoinformer_events = data.send_autoinformer_events
    row.send_ai_notifications = data.send_ai_notifications
    row.number_info = data.number_info
    row.verify_crm_sign = data.verify_crm_sign
    await s.flush()
    return row
