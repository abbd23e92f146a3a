"""Token storage and the serialised refresh (amocrm.md §2.2) on SQLite and PostgreSQL, against the emulator's
token endpoint (single-use, rotated refresh tokens): the version CAS, racing refreshers, the network retry,
refused refreshes and long-lived tokens."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.amocrm.client_kit import ACCOUNT_IDS, amo_settings, install_tokens
from tests.amocrm.emu_kit import DEMO, Emu, emulator
from vpbx.amocrm.errors import AmoReauthRequired, AmoUnknownOutcome
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.tokens import NETWORK_RETRY_S, TokenManager, store_tokens
from vpbx.app import Core, build_core
from vpbx.store.models import AmoInstall

DEMO_ID = ACCOUNT_IDS[DEMO]
TOKEN_PATH = "/oauth2/access_token"


@pytest.fixture
def db_url(database_url: str) -> str:
    """The token tests' database, on SQLite and PostgreSQL."""
    return database_url


class Sleeps:
    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


@contextlib.asynccontextmanager
async def process(emu: Emu, db_url: str, tmp_path: Path) -> AsyncIterator[tuple[Core, TokenManager, Sleeps]]:
    """One PBX process: its own engine, secret box and token manager (sleep recorded, not slept)."""
    import httpx

    core = build_core(amo_settings(emu, db_url, tmp_path))
    sleeps = Sleeps()
    async with httpx.AsyncClient() as http:
        try:
            yield core, TokenManager(core.sessions, core.box, core.settings, http, sleep=sleeps), sleeps
        finally:
            await core.engine.dispose()


async def refreshes_sent(emu: Emu) -> int:
    return sum(
        1
        for e in await emu.log()
        if e["path"] == TOKEN_PATH and "refresh_token" in str(e.get("req_body") or "")
    )


async def row_of(core: Core) -> AmoInstall:
    async with core.sessions() as s:
        row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == DEMO_ID))
        assert row is not None
        return row


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    async with emulator() as e:
        yield e


async def test_tokens_are_sealed_and_versioned(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        row = await row_of(core)
        assert row.token_version == 1 and row.token_state == "ok"
        creds = await tokens.credentials(DEMO_ID)
        assert creds.access_token not in row.access_token_enc
        assert core.box.open(row.access_token_enc) == creds.access_token
        assert row.refresh_token_enc and core.box.open(row.refresh_token_enc).startswith("def50200")
        async with core.sessions() as s:
            again = await s.get(AmoInstall, row.id)
            assert again is not None
            pair = TokenPair("a", "r", core.clock.now(), base_domain="moved.amocrm.ru")
            await store_tokens(s, core.box, again, pair)
            await s.commit()
        row = await row_of(core)
        assert row.token_version == 2 and row.base_domain == "moved.amocrm.ru"


async def test_racing_refreshers_in_one_process_send_one_refresh(
    emu: Emu, db_url: str, tmp_path: Path
) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        used = await tokens.credentials(DEMO_ID)
        got = await asyncio.gather(*(tokens.after_unauthorized(DEMO_ID, used) for _ in range(10)))
        assert len({c.access_token for c in got}) == 1
        assert got[0].access_token != used.access_token
        assert {c.version for c in got} == {used.version + 1}
        assert await refreshes_sent(emu) == 1
        assert (await row_of(core)).token_version == used.version + 1


@pytest.mark.postgres
async def test_two_processes_racing_send_one_refresh(emu: Emu, db_url: str, tmp_path: Path) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("several processes share an account on PostgreSQL only (SQLite: one process)")
    async with (
        process(emu, db_url, tmp_path) as (core_a, tokens_a, _),
        process(emu, db_url, tmp_path) as (_core_b, tokens_b, _),
    ):
        await install_tokens(core_a, emu)
        used_a = await tokens_a.credentials(DEMO_ID)
        used_b = await tokens_b.credentials(DEMO_ID)
        assert used_a.version == used_b.version
        got = await asyncio.gather(
            *(t.after_unauthorized(DEMO_ID, u) for t, u in [(tokens_a, used_a), (tokens_b, used_b)] * 3)
        )
        assert len({c.access_token for c in got}) == 1
        assert await refreshes_sent(emu) == 1
        row = await row_of(core_a)
        assert row.token_version == used_a.version + 1 and row.token_state == "ok"


async def test_a_waiter_that_finds_a_newer_version_uses_it(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        stale = await tokens.credentials(DEMO_ID)
        await install_tokens(core, emu)  # someone stored a newer pair meanwhile (version + 1)
        fresh = await tokens.after_unauthorized(DEMO_ID, stale)
        assert fresh.version == stale.version + 1 and fresh.access_token != stale.access_token
        assert await refreshes_sent(emu) == 0


async def test_network_error_retries_the_same_token_once(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, sleeps):
        await install_tokens(core, emu)
        used = await tokens.credentials(DEMO_ID)
        await emu.fault(method="POST", path_regex=f"^{TOKEN_PATH}$", reset_connection=True, times=1)
        fresh = await tokens.after_unauthorized(DEMO_ID, used)
        assert fresh.version == used.version + 1
        assert sleeps.seen == [NETWORK_RETRY_S]
        assert tokens.refreshes == 2
        assert (await row_of(core)).token_state == "ok"


async def test_applied_then_dropped_refresh_ends_in_needs_reauth(
    emu: Emu, db_url: str, tmp_path: Path
) -> None:
    """amoCRM rotated the pair but the answer was lost: the same refresh token is refused on the retry."""
    async with process(emu, db_url, tmp_path) as (core, tokens, sleeps):
        await install_tokens(core, emu)
        used = await tokens.credentials(DEMO_ID)
        await emu.fault(method="POST", path_regex=f"^{TOKEN_PATH}$", apply_then_drop=True, times=1)
        with pytest.raises(AmoReauthRequired):
            await tokens.after_unauthorized(DEMO_ID, used)
        assert sleeps.seen == [NETWORK_RETRY_S]
        row = await row_of(core)
        assert row.token_state == "needs_reauth" and "revoked" in row.token_error
        with pytest.raises(AmoReauthRequired):
            await tokens.credentials(DEMO_ID)


async def test_no_answer_twice_is_not_reauth(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        used = await tokens.credentials(DEMO_ID)
        await emu.fault(method="POST", path_regex=f"^{TOKEN_PATH}$", reset_connection=True, times=2)
        with pytest.raises(AmoUnknownOutcome):
            await tokens.after_unauthorized(DEMO_ID, used)
        row = await row_of(core)
        assert row.token_state == "ok" and row.token_version == used.version  # try again later


async def test_refused_refresh_moves_to_needs_reauth(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        used = await tokens.credentials(DEMO_ID)
        await emu.uninstall(call_hook=False)
        with pytest.raises(AmoReauthRequired):
            await tokens.after_unauthorized(DEMO_ID, used)
        assert await refreshes_sent(emu) == 1
        row = await row_of(core)
        assert row.token_state == "needs_reauth" and row.token_error
        with pytest.raises(AmoReauthRequired):
            await tokens.after_unauthorized(DEMO_ID, used)
        assert await refreshes_sent(emu) == 1  # not tried again until the admin authorises again


async def test_long_lived_token_never_refreshes(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        async with core.sessions() as s:
            row = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == DEMO_ID))
            assert row is not None
            row.auth_type = "long_lived"
            row.refresh_token_enc = ""
            row.expires_at = core.clock.now()  # even past its date: no refresh is attempted
            await s.commit()
        tokens.forget(DEMO_ID)
        used = await tokens.credentials(DEMO_ID)
        with pytest.raises(AmoReauthRequired):
            await tokens.after_unauthorized(DEMO_ID, used)
        assert await refreshes_sent(emu) == 0
        assert (await row_of(core)).token_state == "needs_reauth"


async def test_forced_refresh_probes_the_grant(emu: Emu, db_url: str, tmp_path: Path) -> None:
    async with process(emu, db_url, tmp_path) as (core, tokens, _):
        await install_tokens(core, emu)
        before = await tokens.credentials(DEMO_ID)
        after = await tokens.force_refresh(DEMO_ID)  # granted: rotated and stored
        assert after.version == before.version + 1 and await refreshes_sent(emu) == 1
        await emu.uninstall(call_hook=False)
        with pytest.raises(AmoReauthRequired) as e:
            await tokens.force_refresh(DEMO_ID)
        assert e.value.status == 401  # revoked
        assert (await row_of(core)).token_state == "needs_reauth"
