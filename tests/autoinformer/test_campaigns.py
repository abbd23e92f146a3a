"""The campaign service (autoinformer.md §4, §9, §11) on SQLite and PostgreSQL: what it refuses and with which
code, the status moves and their side effects, editing rules, the status object and the report, and two
domains that never see each other's campaigns."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.autoinformer.campaign_kit import campaign_body, msk
from tests.integration.store.conftest import empty_url, engine, migrated_url  # noqa: F401
from vpbx import store
from vpbx.autoinformer import campaigns as svc
from vpbx.autoinformer.errors import (
    AudioInvalid,
    CallerIdNotAllowed,
    CampaignInvalid,
    CampaignNotFound,
    LimitExceeded,
    NotEditable,
    TargetNotFound,
)
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.autoinformer.status import InvalidTransition
from vpbx.billing import AUTOINFORMER, disable, enable
from vpbx.crypto import SecretBox
from vpbx.pbx import domains, groups, lines, users
from vpbx.store.models import (
    AiAttempt,
    AiAudioFile,
    AiCampaign,
    AiContact,
    AiContactPhone,
    AuditEntry,
    Domain,
    VoiceMenu,
)

NOW = dt.datetime(2026, 6, 15, 9, 0, tzinfo=dt.UTC)  # Monday 12:00 Moscow
LINE = "74951234567"
BOX = SecretBox("test-secret-key-that-is-long-enough-0123456789")
ACTOR = "user:admin"


@dataclass(frozen=True)
class Tenant:
    id: uuid.UUID
    file_id: str


@pytest.fixture
async def sessions(engine: AsyncEngine) -> AsyncIterator[async_sessionmaker[AsyncSession]]:  # noqa: F811
    yield store.session_factory(engine)


async def make_tenant(sessions: async_sessionmaker[AsyncSession], name: str, line: str) -> Tenant:
    async with sessions.begin() as s:
        d = await domains.create_domain(s, domains.DomainInput(name=name))
        await enable(s, d.id, AUTOINFORMER, NOW)
        await users.create_user(
            s, d.id, users.UserInput(name="ivanov", display_name="Иванов", pin="501"), box=BOX
        )
        await groups.create_group(s, d.id, groups.GroupInput(name="Продажи", pin="600", members=["501"]))
        await lines.create_number(s, d.id, lines.NumberInput(number=line))
        s.add(VoiceMenu(domain_id=d.id, name="Главное меню"))
        f = AiAudioFile(
            domain_id=d.id,
            name="intro.wav",
            duration_ms=1000,
            original_format="wav",
            size_bytes=16000,
            prompt_id="0" * 64,
        )
        s.add(f)
        await s.flush()
        return Tenant(d.id, f.id.hex)


@pytest.fixture
async def t1(sessions: async_sessionmaker[AsyncSession]) -> Tenant:
    return await make_tenant(sessions, "acme.vpbx.test", LINE)


@pytest.fixture
async def t2(sessions: async_sessionmaker[AsyncSession]) -> Tenant:
    return await make_tenant(sessions, "other.vpbx.test", "74957654321")


def body(file_id: str, **over: Any) -> dict[str, Any]:
    """§9's campaign object, starting tomorrow."""
    return campaign_body(file_id, LINE, NOW, **over)


def spec(file_id: str, **over: Any) -> CampaignSpec:
    return CampaignSpec.model_validate(body(file_id, **over))


async def create(
    sessions: async_sessionmaker[AsyncSession], t: Tenant, **over: Any
) -> tuple[AiCampaign, bool]:
    async with sessions.begin() as s:
        return await svc.create_campaign(s, t.id, spec(t.file_id, **over), actor=ACTOR, now=NOW)


async def add_contact(
    sessions: async_sessionmaker[AsyncSession], c: AiCampaign, phone: str, **fields: Any
) -> AiContact:
    async with sessions.begin() as s:
        contact = AiContact(
            campaign_id=c.id,
            domain_id=c.domain_id,
            phones=[phone],
            variables=fields.pop("variables", {"name": "Анна", "sum": "1500.50", "due": "30.06.2026"}),
            **fields,
        )
        s.add(contact)
        await s.flush()
        s.add(AiContactPhone(campaign_id=c.id, phone=phone, contact_id=contact.id))
        return contact


async def status_of(sessions: async_sessionmaker[AsyncSession], c: AiCampaign) -> str:
    async with sessions() as s:
        row = await s.get(AiCampaign, c.id)
        assert row is not None
        return row.status


async def count_campaigns(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(AiCampaign)) or 0)


# --- create -------------------------------------------------------------------------------------------------


async def test_create_is_a_draft_and_a_repeated_external_id_creates_nothing(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    first, created = await create(sessions, t1)
    again, created_again = await create(sessions, t1, name="Другое имя")
    assert (created, created_again) == (True, False)
    assert again.id == first.id and again.name == "Напоминание о задолженности, июнь"
    assert first.status == "draft" and first.caller_id == LINE
    assert await count_campaigns(sessions) == 1
    async with sessions() as s:
        audit = (await s.scalars(select(AuditEntry).where(AuditEntry.domain_id == t1.id))).all()
    assert [(a.actor, a.action, a.object_id) for a in audit] == [
        (ACTOR, "autoinformer.campaign.create", first.id.hex)
    ]


async def test_create_refuses_what_is_not_the_domains(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant, t2: Tenant
) -> None:
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"caller_id": "74990000000"}, CallerIdNotAllowed, "caller_id"),
        ({"caller_id": "74957654321"}, CallerIdNotAllowed, "caller_id"),  # the other domain's line
        (
            {"message": {"segments": [{"type": "file", "file_id": t2.file_id}]}},
            AudioInvalid,
            "message.segments[0].file_id",
        ),
        (
            {"dtmf": {"actions": {"1": {"action": "connect", "target": {"type": "group", "pin": "601"}}}}},
            TargetNotFound,
            "dtmf.actions.1.target.pin",
        ),
        (
            {"dtmf": {"actions": {"3": {"action": "connect", "target": {"type": "user", "pin": "502"}}}}},
            TargetNotFound,
            "dtmf.actions.3.target.pin",
        ),
        (
            {
                "dtmf": {
                    "actions": {"0": {"action": "connect", "target": {"type": "menu", "pin": "Нет такого"}}}
                }
            },
            TargetNotFound,
            "dtmf.actions.0.target.pin",
        ),
        (
            {
                "dtmf": {
                    "actions": {
                        "5": {"action": "connect", "target": {"type": "number", "number": "+44 20 7946 0000"}}
                    }
                }
            },
            TargetNotFound,
            "dtmf.actions.5.target.number",
        ),
        (
            {
                "dtmf": {
                    "actions": {
                        "5": {"action": "connect", "target": {"type": "number", "number": "78091234567"}}
                    }
                }
            },
            TargetNotFound,
            "dtmf.actions.5.target.number",
        ),
        (
            {
                "dtmf": {
                    "actions": {
                        "9": {"action": "opt_out", "segment": {"type": "file", "file_id": uuid.uuid4().hex}}
                    }
                }
            },
            AudioInvalid,
            "dtmf.actions.9.segment.file_id",
        ),
    ]
    for over, kind, field in cases:
        with pytest.raises(kind) as e:
            await create(sessions, t1, external_id=None, **over)
        assert e.value.field == field, over  # type: ignore[attr-defined]
    assert await count_campaigns(sessions) == 0
    # what exists in the domain passes: the user, the menu by name, a Russian number, international if allowed
    ok = {
        "1": {"action": "connect", "target": {"type": "user", "pin": "501"}},
        "2": {"action": "connect", "target": {"type": "menu", "pin": "Главное меню"}},
        "3": {"action": "connect", "target": {"type": "number", "number": "8 (916) 123-45-67"}},
        "4": {"action": "connect", "target": {"type": "number", "number": "+44 20 7946 0000"}},
    }
    row, _ = await create(sessions, t1, dtmf={"actions": ok}, allow_international=True, caller_id="+" + LINE)
    assert row.caller_id == LINE


# --- start and the other moves ------------------------------------------------------------------------------


async def test_start_validates_the_variables_and_the_list(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    texts = [{"type": "file", "file_id": t1.file_id}, {"type": "tts", "text": "Долг {debt:money}, {name}."}]
    c, _ = await create(sessions, t1, message={"segments": texts})
    async with sessions.begin() as s:
        with pytest.raises(CampaignInvalid) as e:
            await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    assert e.value.field == "message.segments[1].text"  # no contact, so no column
    await add_contact(sessions, c, "79161234567")
    async with sessions.begin() as s:
        with pytest.raises(CampaignInvalid) as e:
            await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    assert (e.value.field, e.value.params) == ("message.segments[1].text", {"name": "debt"})
    bare, _ = await create(sessions, t1, external_id=None, message={"segments": texts[:1]})
    async with sessions.begin() as s:
        with pytest.raises(CampaignInvalid) as e:
            await svc.start_campaign(s, t1.id, bare.id, actor=ACTOR, now=NOW)
    assert e.value.field == "contacts"
    assert await status_of(sessions, c) == "draft"


async def test_start_schedules_or_runs_and_the_moves_follow_the_table(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    later, _ = await create(sessions, t1, external_id="later")
    now_, _ = await create(
        sessions, t1, external_id="now", schedule={"start_at": msk(NOW - dt.timedelta(hours=1))}
    )
    for c in (later, now_):
        await add_contact(sessions, c, "79161234567")
    async with sessions.begin() as s:
        with pytest.raises(InvalidTransition):
            await svc.pause_campaign(s, t1.id, later.id, actor=ACTOR, now=NOW)  # §12: pause on a draft
        assert (await svc.start_campaign(s, t1.id, later.id, actor=ACTOR, now=NOW)).status == "scheduled"
        assert (await svc.start_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)).status == "running"
    async with sessions.begin() as s:
        for action in (svc.start_campaign, svc.pause_campaign):  # scheduled: neither start nor pause
            with pytest.raises(InvalidTransition):
                await action(s, t1.id, later.id, actor=ACTOR, now=NOW)
        assert (await svc.pause_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)).status == "paused"
        assert (await svc.start_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)).status == "running"
        with pytest.raises(InvalidTransition):
            await svc.delete_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)
        assert (await svc.stop_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)).status == "stopped"
        with pytest.raises(InvalidTransition):
            await svc.start_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)
    async with sessions() as s:
        contacts = (await s.scalars(select(AiContact.status).where(AiContact.campaign_id == now_.id))).all()
        actions = (
            await s.scalars(
                select(AuditEntry.action).where(AuditEntry.object_id == now_.id.hex).order_by(AuditEntry.at)
            )
        ).all()
    assert contacts == ["cancelled"]
    assert sorted(actions) == sorted(
        [
            "autoinformer.campaign.create",
            "autoinformer.campaign.running",
            "autoinformer.campaign.paused",
            "autoinformer.campaign.running",
            "autoinformer.campaign.stopped",
        ]
    )
    async with sessions.begin() as s:
        await svc.delete_campaign(s, t1.id, now_.id, actor=ACTOR, now=NOW)
    async with sessions() as s:
        assert await s.get(AiCampaign, now_.id) is None
        assert (await s.scalars(select(AiContact).where(AiContact.campaign_id == now_.id))).all() == []


async def test_start_refuses_a_passed_end_and_a_sixth_active_campaign(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    old, _ = await create(
        sessions,
        t1,
        external_id="old",
        schedule={"start_at": msk(NOW - dt.timedelta(days=3)), "end_at": msk(NOW - dt.timedelta(days=1))},
    )
    await add_contact(sessions, old, "79160000000")
    async with sessions.begin() as s:
        with pytest.raises(CampaignInvalid) as e:
            await svc.start_campaign(s, t1.id, old.id, actor=ACTOR, now=NOW)
    assert e.value.field == "schedule.end_at"
    made = []
    for i in range(6):
        c, _ = await create(sessions, t1, external_id=f"c{i}")
        await add_contact(sessions, c, f"7916000000{i}")
        made.append(c)
    async with sessions.begin() as s:
        for c in made[:5]:
            await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    async with sessions.begin() as s:
        with pytest.raises(LimitExceeded):
            await svc.start_campaign(s, t1.id, made[5].id, actor=ACTOR, now=NOW)
    async with sessions.begin() as s:
        await svc.stop_campaign(s, t1.id, made[0].id, actor=ACTOR, now=NOW)
        assert (await svc.start_campaign(s, t1.id, made[5].id, actor=ACTOR, now=NOW)).status == "scheduled"


@pytest.mark.postgres
async def test_concurrent_starts_never_exceed_five(
    sessions: async_sessionmaker[AsyncSession],
    t1: Tenant,
    migrated_url: str,  # noqa: F811
) -> None:
    if not migrated_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: starts cannot overlap")
    made = []
    for i in range(8):
        c, _ = await create(sessions, t1, external_id=f"c{i}")
        await add_contact(sessions, c, f"7916000000{i}")
        made.append(c)

    async def start(c: AiCampaign) -> str:
        try:
            async with sessions.begin() as s:
                return (await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)).status
        except LimitExceeded:
            return "refused"

    results = await asyncio.wait_for(asyncio.gather(*(start(c) for c in made)), timeout=30)
    assert sorted(results) == ["refused"] * 3 + ["scheduled"] * 5


# --- editing ------------------------------------------------------------------------------------------------


async def test_editing_rules_per_status(sessions: async_sessionmaker[AsyncSession], t1: Tenant) -> None:
    c, _ = await create(sessions, t1, schedule={"start_at": msk(NOW - dt.timedelta(hours=1))})
    await add_contact(sessions, c, "79161234567")
    base = body(t1.file_id, schedule={"start_at": msk(NOW - dt.timedelta(hours=1))})

    async def update(**over: Any) -> AiCampaign:
        async with sessions.begin() as s:
            return await svc.update_campaign(
                s, t1.id, c.id, CampaignSpec.model_validate({**base, **over}), actor=ACTOR, now=NOW
            )

    assert (await update(ring_timeout_s=40)).settings["ring_timeout_s"] == 40  # draft: anything
    base["ring_timeout_s"] = 40
    async with sessions.begin() as s:
        await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    # running: concurrency and end_at only
    assert (await update(concurrency=7)).settings["concurrency"] == 7
    base["concurrency"] = 7
    later = {**base["schedule"], "end_at": msk(NOW + dt.timedelta(days=9))}
    assert (await update(schedule=later)).settings["schedule"]["end_at"] == later["end_at"]
    base["schedule"] = later
    for over, field in (
        ({"ring_timeout_s": 50}, "ring_timeout_s"),
        ({"schedule": {**later, "days": [1, 2]}}, "schedule"),
        ({"caller_id": LINE, "name": "Новое имя"}, "name"),
    ):
        with pytest.raises(NotEditable) as e:
            await update(**over)
        assert e.value.field == field
    # paused before any attempt: the message may still change; after the first attempt it may not
    async with sessions.begin() as s:
        await svc.pause_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    short = {"segments": [{"type": "file", "file_id": t1.file_id}]}
    assert (await update(message=short, ring_timeout_s=50)).settings["message"]["segments"][0][
        "type"
    ] == "file"
    base.update(message=short, ring_timeout_s=50)
    async with sessions.begin() as s:
        row = await s.get(AiCampaign, c.id)
        assert row is not None
        row.first_attempt_at = NOW
    with pytest.raises(NotEditable) as e:
        await update(message={"segments": [{"type": "tts", "text": "Другое"}]})
    assert e.value.field == "message"
    with pytest.raises(NotEditable):
        await update(compliance_profile="standard")
    assert (await update(attempts={"max": 5})).settings["attempts"]["max"] == 5
    async with sessions.begin() as s:
        await svc.stop_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    with pytest.raises(NotEditable):
        await update(concurrency=1)
    async with sessions() as s:
        updates = (
            await s.scalars(
                select(AuditEntry.details).where(AuditEntry.action == "autoinformer.campaign.update")
            )
        ).all()
    assert {"fields": ["ring_timeout_s"]} in updates and {"fields": ["concurrency"]} in updates


async def test_copy_is_a_draft_without_contacts(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    c, _ = await create(sessions, t1)
    await add_contact(sessions, c, "79161234567")
    async with sessions.begin() as s:
        twin = await svc.copy_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    assert (twin.status, twin.external_id, twin.caller_id) == ("draft", None, LINE)
    assert twin.settings == c.settings and twin.name.endswith("(копия)")
    async with sessions() as s:
        assert (await svc.report(s, t1.id, twin.id)).total == 0


# --- status object and report -------------------------------------------------------------------------------


async def test_status_object_and_report(sessions: async_sessionmaker[AsyncSession], t1: Tenant) -> None:
    c, _ = await create(sessions, t1)
    done = await add_contact(sessions, c, "79161111111", status="succeeded", attempts_made=1, row_no=1)
    busy = await add_contact(sessions, c, "79162222222", status="waiting_retry", attempts_made=2, row_no=2)
    await add_contact(sessions, c, "79163333333", row_no=3)
    async with sessions.begin() as s:
        for contact, no, listen, answered in (
            (done, 1, 21.0, True),
            (busy, 1, 0.0, False),
            (busy, 2, 10.0, True),
        ):
            s.add(
                AiAttempt(
                    domain_id=t1.id,
                    campaign_id=c.id,
                    contact_id=contact.id,
                    attempt_no=no,
                    number_index=0,
                    dispatch_key=f"{c.id}:{contact.id}:{no}:0",
                    phone=contact.phones[0],
                    state="done",
                    started_at=NOW,
                    answered_at=NOW if answered else None,
                    outcome="success"
                    if contact is done
                    else ("busy" if not answered else "answered_incomplete"),
                    listen_s=listen,
                    session_id=str(uuid.uuid4()),
                    call_id=uuid.uuid4().hex,
                )
            )
    async with sessions() as s:
        obj = await svc.status_object(s, t1.id, c.id, now=NOW)
        full = await svc.report(s, t1.id, c.id)
        only = await svc.report(s, t1.id, c.id, status="waiting_retry")
        page = await svc.report(s, t1.id, c.id, offset=1, limit=1)
        listed = await svc.list_campaigns(s, t1.id)
    counters = obj.pop("counters")
    assert obj == {
        "campaign_id": c.id.hex,
        "external_id": "crm-campaign-42",
        "status": "draft",
        "in_window": False,
        "error_reason": None,
        "attempts_made": 3,
        "success_rate": "0.50",
        "avg_listen_s": 15.5,
    }
    assert isinstance(counters, dict)
    assert (counters["total"], counters["succeeded"], counters["waiting_retry"], counters["pending"]) == (
        3,
        1,
        1,
        1,
    )
    assert list(counters)[:3] == ["total", "pending", "in_progress"]
    assert full.total == 3 and [r.contact.phones[0] for r in full.rows] == [
        "79161111111",
        "79162222222",
        "79163333333",
    ]
    assert [a.attempt_no for a in full.rows[1].attempts] == [1, 2]
    assert (only.total, [r.contact.id for r in only.rows]) == (1, [busy.id])
    assert (page.total, [r.contact.id for r in page.rows]) == (3, [busy.id])
    assert listed.total == 1 and listed.items[0].stats.success_rate == "0.50"
    assert svc.rate(2, 3) == "0.67" and svc.rate(1, 8) == "0.13" and svc.rate(0, 0) == "0.00"


async def test_another_domains_campaign_is_not_found(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant, t2: Tenant
) -> None:
    c, _ = await create(sessions, t1)
    theirs, created = await create(sessions, t2, caller_id="74957654321")
    assert created and theirs.id != c.id  # the same external_id in another domain is another campaign
    async with sessions.begin() as s:
        for action in (
            svc.start_campaign,
            svc.pause_campaign,
            svc.stop_campaign,
            svc.copy_campaign,
            svc.delete_campaign,
        ):
            with pytest.raises(CampaignNotFound):
                await action(s, t2.id, c.id, actor=ACTOR, now=NOW)
        with pytest.raises(CampaignNotFound):
            await svc.status_object(s, t2.id, c.id, now=NOW)
        with pytest.raises(CampaignNotFound):
            await svc.report(s, t2.id, c.id)
        with pytest.raises(CampaignNotFound):
            await svc.update_campaign(
                s, t2.id, c.id, spec(t2.file_id, caller_id="74957654321"), actor=ACTOR, now=NOW
            )
        assert [x.campaign.id for x in (await svc.list_campaigns(s, t2.id)).items] == [theirs.id]
    assert await status_of(sessions, c) == "draft"


async def test_in_window_follows_the_waiting_recipients_zones(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    """Monday 12:00 Moscow, windows 10–13 and 14–19: open in Moscow, closed at 19:00 in Vladivostok."""
    windows = [{"from": "10:00", "to": "13:00"}, {"from": "14:00", "to": "19:00"}]
    c, _ = await create(
        sessions,
        t1,
        schedule={"start_at": msk(NOW - dt.timedelta(hours=1)), "days": [1, 2, 3, 4, 5], "windows": windows},
    )
    far = await add_contact(sessions, c, "79241234567", timezone="Asia/Vladivostok")
    async with sessions.begin() as s:
        assert (await svc.status_object(s, t1.id, c.id, now=NOW))["in_window"] is False  # a draft never is
        await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    async with sessions() as s:
        assert (await svc.status_object(s, t1.id, c.id, now=NOW))["in_window"] is False
        novosibirsk = NOW + dt.timedelta(hours=0, minutes=30)  # 16:30 there, 19:30 in Vladivostok
        assert await svc.in_window(s, c, novosibirsk) is False
    await add_contact(sessions, c, "79131234567", timezone="Asia/Novosibirsk")
    async with sessions() as s:
        assert (await svc.status_object(s, t1.id, c.id, now=NOW))["in_window"] is True
        assert await svc.in_window(s, c, NOW + dt.timedelta(hours=12)) is False  # midnight in Moscow
    async with sessions.begin() as s:
        row = await s.get(AiContact, far.id)
        assert row is not None
        row.status = "succeeded"
    async with sessions() as s:
        friday_night = dt.datetime(2026, 6, 19, 16, 0, tzinfo=dt.UTC)  # 23:00 in Novosibirsk
        assert await svc.in_window(s, c, friday_night) is False


async def test_a_blocked_domain_or_the_service_off_starts_nothing(
    sessions: async_sessionmaker[AsyncSession], t1: Tenant
) -> None:
    c, _ = await create(sessions, t1)
    await add_contact(sessions, c, "79161234567")
    async with sessions.begin() as s:
        await disable(s, t1.id, AUTOINFORMER, NOW)
    async with sessions.begin() as s:
        with pytest.raises(InvalidTransition):
            await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    async with sessions.begin() as s:
        await enable(s, t1.id, AUTOINFORMER, NOW)
        domain = await s.get(Domain, t1.id)
        assert domain is not None
        domain.status = "blocked"
    async with sessions.begin() as s:
        with pytest.raises(InvalidTransition):
            await svc.start_campaign(s, t1.id, c.id, actor=ACTOR, now=NOW)
    assert await status_of(sessions, c) == "draft"
