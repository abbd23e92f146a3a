"""The domain's Integration API settings as a service (integration-api.md §2.1, §6.1).

A minimal version written by the cabinet's helper until the gateway's settings service lands: activation
creates the settings with fresh credentials, and the credentials can be regenerated.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.crypto import SecretBox
from vpbx.integration_api.core import new_credential
from vpbx.store.models import ApiSettings


async def ensure_settings(s: AsyncSession, domain_id: uuid.UUID, box: SecretBox) -> ApiSettings:
    """The domain's settings, created with a fresh X-Client-ID and key on first activation; kept as they are
    afterwards (deactivation keeps the settings and the credentials, §6.1)."""
    row = await s.get(ApiSettings, domain_id)
    if row is None:
        row = ApiSettings(
            domain_id=domain_id, client_id=new_credential(), sign_key_enc=box.seal(new_credential())
        )
        s.add(row)
        await s.flush()
    return row


def regenerate_client_id(settings: ApiSettings, now: dt.datetime) -> str:
    """A new X-Client-ID, in force at once in both directions (§2.1)."""
    settings.client_id = new_credential()
    settings.updated_at = now
    return settings.client_id


def regenerate_key(settings: ApiSettings, box: SecretBox, now: dt.datetime) -> str:
    """A new signing key, sealed at rest, in force at once in both directions (§2.1)."""
    key = new_credential()
    settings.sign_key_enc = box.seal(key)
    settings.updated_at = now
    return key
