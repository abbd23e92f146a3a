"""Connecting and disconnecting (amocrm.md F2–F4, F15) on a real database, SQLite and PostgreSQL: tickets,
the checks of ``activate``, the counter and the charge, dropping queued jobs, uninstall, the widget's state.
The install rows are written directly here; the OAuth path runs against the emulator in
tests/amocrm/test_binding_http.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx import billing
from vpbx.amocrm import binding as amo
from vpbx.amocrm.oauth import is_allowed_base_domain
from vpbx.crypto import SecretBox, token_hash
from vpbx.pbx import domains
from vpbx.settings import AmoSettings
from vpbx.store.models import AmoConnectTicket, AmoInstall, ApiSettings, CrmBinding, CrmJob

JUNE_21 = dt.datetime(2025, 6, 21, 9, 0, tzinfo=dt.UTC)  # 12:00 in Moscow, ten days of thirty left
BOX = SecretBox("test-secret-key-that-is-long-enough-0123456789")
DEMO = 30000001
OTHER = 30000002


async def _domain(s: AsyncSession, name: str) -> uuid.UUID:
    d = await domains.create_domain(s, domains.DomainInput(name=name))
    return d.id


async def _install(s: AsyncSession, account_id: int, host: str) -> AmoInstall:
    row = AmoInstall(
        amo_account_id=account_id,
        base_domain=host,
        client_id="6f1c2a7e-0000-4000-8000-000000000001",
        access_token_enc=BOX.seal("access"),
        refresh_token_enc=BOX.seal("refresh"),
        expires_at=JUNE_21 + dt.timedelta(days=1),
        token_version=1,
    )
    s.add(row)
    await s.flush()
    return row


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession]) -> dict[str, uuid.UUID]:
    async with sessions() as s:
        ids = {"a": await _domain(s, "demo.vpbx.test"), "b": await _domain(s, "b.vpbx.test")}
        await _install(s, DEMO, "demo.amocrm.ru")
        await _install(s, OTHER, "other.amocrm.ru")
        await s.commit()
    return ids


async def _counter(s: AsyncSession, domain_id: uuid.UUID) -> int:
    return await billing.counter(s, domain_id, billing.EXTERNAL_INTEGRATIONS)


def test_health_word() -> None:
    assert amo.health_of({}) == "ok"
    assert amo.health_of({"status": "pbx_unreachable"}) == "pbx_unreachable"
    down = {"last_failure_at": "2025-06-21T10:00:00+00:00", "last_success_at": "2025-06-21T09:00:00+00:00"}
    assert amo.health_of({"client": {**down, "last_status": None}}) == "amo_unreachable"
    assert amo.health_of({"client": {**down, "last_status": 503}}) == "amo_unreachable"
    assert amo.health_of({"client": {**down, "last_status": 400}}) == "ok"  # a refused write
    recovered = {**down, "last_success_at": "2025-06-21T10:00:01+00:00", "last_status": 503}
    assert amo.health_of({"client": recovered}) == "ok"


def test_host_allow_list() -> None:
    assert is_allowed_base_domain(AmoSettings(), "demo.amocrm.ru")
    assert is_allowed_base_domain(AmoSettings(), "Demo.AmoCRM.com")
    assert is_allowed_base_domain(AmoSettings(), "acme.kommo.com")
    assert not is_allowed_base_domain(AmoSettings(), "www.amocrm.ru")
    assert not is_allowed_base_domain(AmoSettings(), "demo.amocrm.ru.evil.test")
    assert not is_allowed_base_domain(AmoSettings(), "a.b.amocrm.ru")
    assert not is_allowed_base_domain(AmoSettings(), "127.0.0.1:8766")
    assert is_allowed_base_domain(AmoSettings(extra_hosts=["demo.amocrm.test"]), "demo.amocrm.test")


async def test_ticket_is_single_use_hashed_and_expires(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    async with sessions() as s:
        raw = await amo.issue_ticket(s, account_id=DEMO, user_id=5001, now=JUNE_21)
        late = await amo.issue_ticket(s, account_id=DEMO, user_id=5001, now=JUNE_21)
        await s.commit()
        stored = list(await s.scalars(select(AmoConnectTicket.ticket_hash)))
        assert token_hash(raw) in stored and raw not in stored  # only the hash is kept
        t = await amo.peek_ticket(s, raw, JUNE_21 + dt.timedelta(minutes=5))
        assert (t.amo_account_id, t.amo_user_id) == (DEMO, 5001)
        await amo.peek_ticket(s, raw, JUNE_21)  # peeking does not use it up
        await amo.use_ticket(s, raw, JUNE_21 + dt.timedelta(minutes=9))
        await s.commit()
        with pytest.raises(amo.TicketInvalid):
            await amo.use_ticket(s, raw, JUNE_21 + dt.timedelta(minutes=9))
        with pytest.raises(amo.TicketInvalid):
            await amo.peek_ticket(s, late, JUNE_21 + amo.TICKET_TTL)
        for bad in ("", "x" * 200, "not-a-ticket"):
            with pytest.raises(amo.TicketInvalid):
                await amo.peek_ticket(s, bad, JUNE_21)
        with pytest.raises(amo.NotInstalled):
            await amo.issue_ticket(s, account_id=99, user_id=1, now=JUNE_21)


async def test_activate_counts_and_charges_once(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    a = world["a"]
    async with sessions() as s:
        install = await amo.install_of(s, DEMO)
        assert install is not None
        binding = await amo.activate(s, domain_id=a, install=install, now=JUNE_21)
        await s.commit()
        assert (binding.status, binding.base_domain, binding.external_account_id) == (
            "active",
            "demo.amocrm.ru",
            DEMO,
        )
        assert len(binding.hook_secret) >= 32
        again = await amo.activate(s, domain_id=a, install=install, now=JUNE_21)  # same link: a no-op
        await s.commit()
        assert again.id == binding.id
        assert await _counter(s, a) == 1
        charges = await billing.charges_of(s, a)
        # 500.00 × 10 / 30 (F2, §6 example 10)
        assert [(c.service_code, c.amount) for c in charges] == [("external_integrations", Decimal("166.67"))]
        assert await amo.active_binding(s, world["b"]) is None


async def test_number_info_refuses_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    a = world["a"]
    async with sessions() as s:
        await billing.enable(s, a, billing.INTEGRATION_API, JUNE_21)
        s.add(ApiSettings(domain_id=a, client_id="A" * 32, sign_key_enc="x", number_info=True))
        await s.commit()
        install = await amo.install_of(s, DEMO)
        assert install is not None
        assert (await amo.connect_check(s, domain_id=a, install=install)).outcome == "number_info"
        with pytest.raises(amo.NumberInfoOn):
            await amo.activate(s, domain_id=a, install=install, now=JUNE_21)
        await s.rollback()
        assert await amo.active_binding(s, a) is None and await _counter(s, a) == 0
        # the API service off: its number_info switch no longer counts
        await billing.disable(s, a, billing.INTEGRATION_API, JUNE_21)
        await s.commit()
        install = await amo.install_of(s, DEMO)
        assert install is not None
        assert (await amo.connect_check(s, domain_id=a, install=install)).outcome == "ready"


async def test_one_account_per_domain_both_ways(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    a, b = world["a"], world["b"]
    async with sessions() as s:
        demo, other = await amo.install_of(s, DEMO), await amo.install_of(s, OTHER)
        assert demo is not None and other is not None
        await amo.activate(s, domain_id=a, install=demo, now=JUNE_21)
        await s.commit()
        check = await amo.connect_check(s, domain_id=a, install=other)
        assert check.outcome == "domain_elsewhere" and check.current is not None
        with pytest.raises(amo.DomainBoundElsewhere) as e1:
            await amo.activate(s, domain_id=a, install=other, now=JUNE_21)
        assert e1.value.base_domain == "demo.amocrm.ru"
        # the reverse: demo.amocrm.ru is a's, so b cannot take it, and the refusal names a
        check = await amo.connect_check(s, domain_id=b, install=demo)
        assert (check.outcome, check.other_domain) == ("account_elsewhere", "demo.vpbx.test")
        with pytest.raises(amo.AccountBoundElsewhere) as e2:
            await amo.activate(s, domain_id=b, install=demo, now=JUNE_21)
        assert e2.value.domain_name == "demo.vpbx.test"
        await s.rollback()
        assert await _counter(s, a) == 1 and await _counter(s, b) == 0


async def test_disable_drops_queued_jobs_once_and_keeps_the_install(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    a = world["a"]
    async with sessions() as s:
        install = await amo.install_of(s, DEMO)
        assert install is not None
        binding = await amo.activate(s, domain_id=a, install=install, now=JUNE_21)
        for state in ("pending", "held", "running", "done", "dead"):
            s.add(CrmJob(binding_id=binding.id, kind="amo.finish", key=f"s-{state}", state=state))
        await s.commit()
        later = JUNE_21 + dt.timedelta(hours=1)
        assert await amo.disable(s, binding, reason="cabinet", now=later)
        await s.commit()
        assert not await amo.disable(s, binding, reason="widget", now=later)  # the second one changes nothing
        await s.commit()
        states = {r.key: r.state for r in (await s.execute(select(CrmJob.key, CrmJob.state))).all()}
        assert states == {
            "s-pending": "dropped",
            "s-held": "dropped",
            "s-running": "running",
            "s-done": "done",
            "s-dead": "dead",
        }
        row = await s.get(CrmBinding, binding.id)
        assert row is not None
        assert (row.status, row.disabled_reason) == ("disabled", "cabinet")
        assert await _counter(s, a) == 0
        assert await amo.install_of(s, DEMO) is not None  # kept: «Подключить» can link again
        assert (await amo.status_for(s, DEMO)).status == "disabled"
        # linking again: a new active row beside the disabled one, counter back to 1 and a second charge
        await amo.activate(s, domain_id=a, install=install, now=later)
        await s.commit()
        assert await _counter(s, a) == 1
        assert len(await billing.charges_of(s, a)) == 2


async def test_uninstall_disables_and_deletes_install_and_tickets(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    a = world["a"]
    async with sessions() as s:
        install = await amo.install_of(s, DEMO)
        assert install is not None
        await amo.activate(s, domain_id=a, install=install, now=JUNE_21)
        await amo.issue_ticket(s, account_id=DEMO, user_id=5001, now=JUNE_21)
        await s.commit()
        assert await amo.uninstall(s, DEMO, now=JUNE_21)
        await s.commit()
        assert await amo.install_of(s, DEMO) is None
        assert await s.scalar(select(AmoConnectTicket).where(AmoConnectTicket.amo_account_id == DEMO)) is None
        assert await amo.active_binding(s, a) is None and await _counter(s, a) == 0
        st = await amo.status_for(s, DEMO)  # the widget still runs: the spec's "disabled", no OAuth install
        assert (st.status, st.oauth_missing) == ("disabled", True)
        assert not await amo.uninstall(s, DEMO, now=JUNE_21)
        assert await amo.install_of(s, OTHER) is not None  # the other account is untouched


async def test_widget_status_follows_the_binding(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    async with sessions() as s:
        st = await amo.status_for(s, DEMO)
        assert (st.status, st.oauth_missing) == ("installed", False)
        install = await amo.install_of(s, DEMO)
        assert install is not None
        await amo.activate(s, domain_id=world["a"], install=install, now=JUNE_21)
        await s.commit()
        st = await amo.status_for(s, DEMO)
        assert (st.status, st.pbx_domain, st.connected_at, st.health) == (
            "active",
            "demo.vpbx.test",
            JUNE_21,
            "ok",
        )
        assert (await amo.status_for(s, OTHER)).status == "installed"  # the other account sees nothing of it
        install.token_state = "needs_reauth"
        await s.commit()
        assert (await amo.status_for(s, DEMO)).status == "needs_reauth"
        st = await amo.status_for(s, 12345)  # a widget token, but the OAuth callback never came (§3.2's four)
        assert (st.status, st.oauth_missing) == ("installed", True)


@pytest.mark.postgres
async def test_racing_activations_leave_one_binding_and_one_unit(
    sessions: async_sessionmaker[AsyncSession], world: dict[str, uuid.UUID]
) -> None:
    """Two admins press «Подключить» for the same domain at once: the partial unique index lets one win."""
    a = world["a"]
    async with sessions() as s1, sessions() as s2:
        if s1.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite serialises writers; the index race needs PostgreSQL")
        demo, other = await amo.install_of(s1, DEMO), await amo.install_of(s2, OTHER)
        assert demo is not None and other is not None
        await amo.activate(s1, domain_id=a, install=demo, now=JUNE_21)  # flushed, not committed
        second = asyncio.create_task(amo.activate(s2, domain_id=a, install=other, now=JUNE_21))
        done, _ = await asyncio.wait({second}, timeout=0.5)
        assert not done, "the second insert waits on the first one's index entry"
        await s1.commit()
        with pytest.raises(amo.BindingRace):
            await asyncio.wait_for(second, timeout=10)
        await s2.rollback()
    async with sessions() as s:
        assert await _counter(s, a) == 1
        rows = list(await s.scalars(select(CrmBinding).where(CrmBinding.domain_id == a)))
        assert [(r.external_account_id, r.status) for r in rows] == [(DEMO, "active")]
