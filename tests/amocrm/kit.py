"""Linking a test domain to an amoCRM account, for every amoCRM test.

- ``insert_install``: an ``AmoInstall`` row written directly (tokens that no server knows), for tests that
  never talk to amoCRM.
- ``bind``: a domain's active binding to an install, through ``vpbx.amocrm.binding.activate`` (counter +1 and
  the charge, as the cabinet does it).
- ``install_and_bind`` (needs the emulator): the real path, the emulator's ``/__emu__/install`` calling our
  ``/amo/oauth/callback`` over HTTP, then ``bind``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING

from vpbx.amocrm import binding as amo
from vpbx.store.models import AmoInstall, CrmBinding

if TYPE_CHECKING:
    from vpbx.app import Core

DEMO_ACCOUNT = 30000001
DEMO_HOST = "demo.amocrm.ru"
OTHER_ACCOUNT = 30000002
OTHER_HOST = "other.amocrm.ru"
CLIENT_ID = "6f1c2a7e-0000-4000-8000-000000000001"
CLIENT_SECRET = "emu-secret"


async def insert_install(
    core: Core, account_id: int = DEMO_ACCOUNT, host: str = DEMO_HOST, *, now: dt.datetime | None = None
) -> None:
    at = now or core.clock.now()
    async with core.sessions() as s:
        s.add(
            AmoInstall(
                amo_account_id=account_id,
                base_domain=host,
                client_id=CLIENT_ID,
                access_token_enc=core.box.seal("test-access"),
                refresh_token_enc=core.box.seal("test-refresh"),
                expires_at=at + dt.timedelta(days=1),
                token_version=1,
                installed_at=at,
            )
        )
        await s.commit()


async def bind(
    core: Core, domain_id: uuid.UUID, account_id: int = DEMO_ACCOUNT, *, now: dt.datetime | None = None
) -> CrmBinding:
    """The domain's active binding to the account's install (which must exist)."""
    async with core.sessions() as s:
        install = await amo.install_of(s, account_id)
        assert install is not None, f"account {account_id} has no install"
        row = await amo.activate(s, domain_id=domain_id, install=install, now=now or core.clock.now())
        await s.commit()
        return row
