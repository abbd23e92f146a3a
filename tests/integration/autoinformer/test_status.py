"""``status.set_status`` (the one writer of a campaign's status) and ``counters`` (autoinformer.md §4), and
the ``autoinformer_events`` the dispatcher writes into the Integration API's outbox (§10)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from tests.integration.autoinformer.conftest import START, World
from vpbx.autoinformer import status
from vpbx.billing import INTEGRATION_API
from vpbx.store.models import AiCampaign, AiContact, ApiDelivery, ApiSettings, AuditEntry, DomainService


async def move(
    world: World, cid: object, to: str, *, system: bool = False, reason: str | None = None
) -> None:
    async with world.sessions() as s:
        row = await s.get(AiCampaign, cid)
        assert row is not None
        await status.set_status(
            s,
            row,
            to,
            domain="d.test",
            actor="api",
            now=world.clock.now(),
            system=system,
            error_reason=reason,
        )
        await s.commit()


async def test_admin_moves_follow_the_table(world: World) -> None:
    cid = await world.campaign(status="draft")
    with pytest.raises(status.InvalidTransition):
        await move(world, cid, "paused")  # §12: pause on a draft → -41
    assert (await world.campaign_row(cid)).status == "draft"
    await move(world, cid, "scheduled")
    with pytest.raises(status.InvalidTransition):
        await move(world, cid, "running")  # only the system starts a scheduled campaign
    await move(world, cid, "running", system=True)
    row = await world.campaign_row(cid)
    assert row.started_at == START
    await move(world, cid, "paused")
    await move(world, cid, "running")
    with pytest.raises(status.InvalidTransition):
        await move(world, cid, "error")  # a system move, not an admin's
    await move(world, cid, "error", system=True, reason="domain_blocked")
    assert (await world.campaign_row(cid)).error_reason == "domain_blocked"
    await move(world, cid, "running")  # resume
    assert (await world.campaign_row(cid)).error_reason is None
    await move(world, cid, "stopped")
    for to in ("running", "paused", "completed", "draft"):
        with pytest.raises(status.InvalidTransition):
            await move(world, cid, to, system=True)
    async with world.sessions() as s:
        actions = list(
            await s.scalars(
                select(AuditEntry.action).where(AuditEntry.object_id == cid.hex).order_by(AuditEntry.at)
            )  # type: ignore[attr-defined]
        )
    assert len(actions) == 7 and actions[-1] == "autoinformer.campaign.stopped"


@pytest.mark.parametrize(("to", "final"), [("stopped", "cancelled"), ("completed", "expired")])
async def test_final_moves_close_open_contacts_but_not_calls_in_progress(
    world: World, to: str, final: str
) -> None:
    cid = await world.campaign()
    ids = await world.contacts(cid, "79160000001", "79160000002", "79160000003", "79160000004")
    async with world.sessions() as s:
        for cid_, st in zip(ids, ("pending", "waiting_retry", "in_progress", "succeeded"), strict=True):
            c = await s.get(AiContact, cid_)
            assert c is not None
            c.status = st
        await s.commit()
    await move(world, cid, to, system=True)
    got = [(await world.contact(i)).status for i in ids]
    assert got == [final, final, "in_progress", "succeeded"]
    assert (await world.campaign_row(cid)).finished_at == START
    async with world.sessions() as s:
        counters = await status.counters(s, cid)
    assert counters["total"] == 4 and counters[final] == 2 and counters["in_progress"] == 1
    assert counters["pending"] == 0 and set(counters) >= {"opted_out", "excluded", "expired"}


async def enable_notifications(world: World) -> None:
    async with world.sessions() as s:
        s.add(DomainService(domain_id=world.domain_id, code=INTEGRATION_API, enabled=True))
        s.add(
            ApiSettings(
                domain_id=world.domain_id,
                client_id="A" * 32,
                sign_key_enc="x",
                crm_url="https://crm.example/h",
            )
        )
        await s.commit()


async def test_dispatcher_writes_autoinformer_events_in_order(world: World) -> None:
    await enable_notifications(world)
    cid = await world.campaign()
    [contact] = await world.contacts(cid, ["79161110001", "79161110002"])
    world.dialer.script["79161110001"] = ["busy"]
    d = world.dispatcher()
    for _ in range(4):
        await d.tick()
        await d.drain()
        world.clock.advance(1)
    async with world.sessions() as s:
        rows = list(await s.scalars(select(ApiDelivery).order_by(ApiDelivery.session_id, ApiDelivery.seq)))
    bodies = [(r.session_id, r.seq, json.loads(r.body)) for r in rows]
    per_contact = [b for b in bodies if b[0] == f"ai-contact:{contact.hex}"]
    assert [(seq, b["event"]) for _, seq, b in per_contact] == [
        (1, "attempt_finished"),
        (2, "attempt_finished"),
        (1_000_000, "number_finished"),
    ]
    first, second, done = (b for _, _, b in per_contact)
    assert (first["phone"], first["outcome"], first["sip_code"], first["number_status"]) == (
        "79161110001",
        "busy",
        486,
        "waiting_retry",
    )
    assert (second["phone"], second["outcome"], second["criterion_met"], second["number_status"]) == (
        "79161110002",
        "success",
        True,
        "succeeded",
    )
    assert done["number_status"] == "succeeded" and done["attempts_made"] == 1
    statuses = [b for b in bodies if b[0] == f"ai-campaign:{cid.hex}"]
    assert [(b["status"], b["counters"]["succeeded"]) for _, _, b in statuses] == [("completed", 1)]
