"""Helpers for tests that talk to the emulator through the real client (``vpbx.amocrm.client``).

``amo_settings(emu, db_url, data_dir)``: settings whose amoCRM section points at the emulator;
``install_tokens(core, emu, account)``: a real code exchange through ``vpbx.amocrm.oauth.exchange_code``, the
pair stored in an ``AmoInstall`` row (what amobind's OAuth callback does, without a binding);
``ShiftedClock``: wall time plus an offset the test moves together with the emulator's ``clock/advance``.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from tests.amocrm.emu_kit import DEMO, Emu
from vpbx.amocrm import oauth
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import AmoInstall

TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
PUBLIC_URL = "http://127.0.0.1:8000"  # the demo fixture's redirect_uri host
ACCOUNT_IDS = {"demo.amocrm.ru": 30000001, "other.amocrm.ru": 30000002}


def amo_settings(emu: Emu, db_url: str, data_dir: Path, **amo: object) -> Settings:
    return Settings(
        env="test",
        secret_key=TEST_SECRET,  # type: ignore[arg-type]
        data_dir=data_dir,
        database_url=db_url,
        public_url=PUBLIC_URL,
        amocrm=AmoSettings(
            client_id=emu.client_id,
            client_secret=emu.client_secret,  # type: ignore[arg-type]
            api_url_template=emu.api_url_template,
            **amo,  # type: ignore[arg-type]
        ),
    )


async def install_tokens(core: Core, emu: Emu, account: str = DEMO) -> AmoInstall:
    """Issue a code at the emulator and exchange it through our OAuth module; store the pair."""
    issued = await emu.install(account, call=False)
    async with httpx.AsyncClient() as http:
        pair = await oauth.exchange_code(http, core.settings, account, issued["code"], now=core.clock.now())
    async with core.sessions() as s:
        row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == ACCOUNT_IDS[account]))
        if row is None:
            row = AmoInstall(
                amo_account_id=ACCOUNT_IDS[account], base_domain=account, client_id=emu.client_id
            )
        await store_tokens(s, core.box, row, pair)
        await s.commit()
        return row


class ShiftedClock:
    """The system clock moved ``shift`` seconds ahead (the emulator's virtual clock moves alike)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.shift)

    def monotonic(self) -> float:
        return time.monotonic() + self.shift
