"""The dispatcher against a real database (SQLite and PostgreSQL) with an in-process test double of the
call engine: the engine is not what these tests are about (the real-peer end-to-end runs against
``vpbx serve``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from vpbx.autoinformer.dispatcher import Dispatcher
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.billing import AUTOINFORMER
from vpbx.clock import FakeClock
from vpbx.pbx.broadcast import BroadcastRequest, BroadcastResult
from vpbx.store.models import AiAttempt, AiCampaign, AiContact, Domain, DomainService, IncomingNumber

START = dt.datetime(2026, 6, 16, 9, 0, tzinfo=dt.UTC)  # a Tuesday, 12:00 in Moscow
LINE = "74951234567"
WAIT_S = 10.0


def result_of(kind: str, req: BroadcastRequest, now: dt.datetime) -> BroadcastResult:
    end = now + dt.timedelta(seconds=20)
    answered = now + dt.timedelta(seconds=3)
    match kind:
        case "success":
            return BroadcastResult(
                sip_code=200,
                started_at=now,
                answered_at=answered,
                ended_at=end,
                listen_s=15,
                played_full=True,
            )
        case "incomplete":
            return BroadcastResult(
                sip_code=200, started_at=now, answered_at=answered, ended_at=end, listen_s=4
            )
        case "opt_out":
            return BroadcastResult(
                sip_code=200,
                started_at=now,
                answered_at=answered,
                ended_at=end,
                listen_s=15,
                played_full=True,
                digits="9",
                action="opt_out",
            )
        case "busy":
            return BroadcastResult(sip_code=486, started_at=now, ended_at=now + dt.timedelta(seconds=2))
        case "no_answer":
            return BroadcastResult(sip_code=408, started_at=now, ended_at=now + dt.timedelta(seconds=30))
        case "invalid":
            return BroadcastResult(sip_code=404, started_at=now, ended_at=now + dt.timedelta(seconds=1))
    raise AssertionError(kind)


@dataclass
class FakeDialer:
    """A test double of the engine's ``BroadcastDialer``: answers by a per-number script, optionally holds a
    call until its gate opens, refuses a Call-ID seen before (as the engine does) and remembers every dial."""

    clock: FakeClock
    script: dict[str, list[str]] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    requests: list[BroadcastRequest] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    overlaps: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def dial(self, request: BroadcastRequest) -> BroadcastResult:
        now = self.clock.now()
        self.requests.append(request)
        if request.call_id in self.seen:
            self.duplicates += 1
            return BroadcastResult(sip_code=None, started_at=now, ended_at=now, detail="duplicate")
        self.seen.add(request.call_id)
        if self.live:
            self.overlaps.append((request.number, frozenset(self.live)))
        self.live.add(request.number)
        self.started.set()
        try:
            gate = self.gates.get(request.number)
            if gate is not None:
                async with asyncio.timeout(WAIT_S):
                    await gate.wait()
            plan = self.script.get(request.number) or ["success"]
            kind = plan.pop(0) if len(plan) > 1 else plan[0]
            return result_of(kind, request, now)
        finally:
            self.live.discard(request.number)

    def numbers(self) -> list[str]:
        return [r.number for r in self.requests]


async def stand_in_render(s: AsyncSession, campaign: AiCampaign, contact: AiContact) -> str | None:
    """Until the renderer lands: every contact's message is one stored prompt named after it."""
    return f"msg-{contact.id.hex}"


def spec(**over: Any) -> CampaignSpec:
    body: dict[str, Any] = {
        "name": "Напоминание",
        "caller_id": LINE,
        "message": {"segments": [{"type": "tts", "text": "Здравствуйте"}]},
        "schedule": {"start_at": "2026-06-16 09:00:00"},
        "attempts": {"max": 3, "interval_min": 60, "retry_on": ["busy", "no_answer", "failed"]},
        "concurrency": 5,
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return CampaignSpec.model_validate(body)


@dataclass
class World:
    sessions: async_sessionmaker[AsyncSession]
    clock: FakeClock
    dialer: FakeDialer
    domain_id: uuid.UUID
    busy: dict[uuid.UUID, int] = field(default_factory=dict)

    def dispatcher(
        self, node_id: str = "node-a", render: Any = stand_in_render, render_keys: Any = None
    ) -> Dispatcher:
        return Dispatcher(
            self.sessions,
            self.dialer,
            render,
            self.clock,
            node_id,
            lambda d: self.busy.get(d, 0),
            render_keys=render_keys,
        )

    async def campaign(self, status: str = "running", **over: Any) -> uuid.UUID:
        sp = spec(**over)
        async with self.sessions() as s:
            c = AiCampaign(
                domain_id=self.domain_id,
                name=sp.name,
                caller_id=sp.caller_id,
                settings=sp.settings_json(),
                status=status,
            )
            s.add(c)
            await s.commit()
            return c.id

    async def contacts(
        self, campaign_id: uuid.UUID, *phones: str | list[str], tz: str | None = None
    ) -> list[uuid.UUID]:
        ids = []
        async with self.sessions() as s:
            for row, p in enumerate(phones, start=1):
                c = AiContact(
                    campaign_id=campaign_id,
                    domain_id=self.domain_id,
                    row_no=row,
                    phones=[p] if isinstance(p, str) else p,
                    timezone=tz,
                )
                s.add(c)
                await s.flush()
                ids.append(c.id)
            await s.commit()
        return ids

    async def contact(self, contact_id: uuid.UUID) -> AiContact:
        async with self.sessions() as s:
            c = await s.get(AiContact, contact_id)
            assert c is not None
            return c

    async def campaign_row(self, campaign_id: uuid.UUID) -> AiCampaign:
        async with self.sessions() as s:
            c = await s.get(AiCampaign, campaign_id)
            assert c is not None
            return c

    async def attempts(self, campaign_id: uuid.UUID | None = None) -> list[AiAttempt]:
        async with self.sessions() as s:
            q = select(AiAttempt).order_by(AiAttempt.started_at, AiAttempt.attempt_no, AiAttempt.number_index)
            if campaign_id is not None:
                q = q.where(AiAttempt.campaign_id == campaign_id)
            return list((await s.scalars(q)).all())

    async def edit_domain(self, fn: Callable[[Domain], None]) -> None:
        async with self.sessions() as s:
            d = await s.get(Domain, self.domain_id)
            assert d is not None
            fn(d)
            await s.commit()


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession]) -> World:
    clock = FakeClock(START)
    async with sessions() as s:
        d = Domain(name=f"d{uuid.uuid4().hex[:8]}.vpbx.test", channel_limit=10)
        s.add(d)
        await s.flush()
        s.add(DomainService(domain_id=d.id, code=AUTOINFORMER, enabled=True))
        s.add(IncomingNumber(domain_id=d.id, number="+" + LINE))
        await s.commit()
        domain_id = d.id
    return World(sessions=sessions, clock=clock, dialer=FakeDialer(clock), domain_id=domain_id)
