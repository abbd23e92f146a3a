"""IncomingRouter: the line's rules at a moment in the domain's time zone, as plain decisions."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.pbx import lines, routing, schedules, users
from vpbx.pbx.actions import ActionInput
from vpbx.pbx.incoming import IncomingRouter
from vpbx.store.models import Domain, User

LINE = "+74951234567"
MSK = dt.timezone(dt.timedelta(hours=3))  # Europe/Moscow has no DST since 2014


async def _office_line(core: Core, domain_id: uuid.UUID) -> None:
    async with core.sessions() as s:
        await users.create_user(
            s,
            domain_id,
            users.UserInput(
                name="duty", display_name="Duty", pin="101", sip_login="duty", sip_password="Pw-123456"
            ),
            box=core.box,
        )
        user_id = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == "101"))
        office = await schedules.create_schedule(
            s, domain_id, schedules.ScheduleInput(name="Office", days=["09:00-18:00"] * 5 + ["", ""])
        )
        number = await lines.create_number(s, domain_id, lines.NumberInput(number=LINE))
        for condition, action in (
            ("work", ActionInput(action="user", user_id=user_id)),
            ("non_work", ActionInput(action="reject")),
        ):
            await routing.add_rule(
                s,
                domain_id,
                number.id,
                routing.RuleInput(condition=condition, schedule_id=office.id, target=action),
            )
        await s.commit()


async def test_closing_time_in_the_domains_zone(core: Core, t1: Tenant) -> None:
    await _office_line(core, t1.id)
    router = IncomingRouter(core.sessions)
    wednesday = dt.date(2026, 11, 25)
    before = await router.decide(
        LINE, dt.datetime.combine(wednesday, dt.time(17, 59), MSK).astimezone(dt.UTC)
    )
    after = await router.decide(LINE, dt.datetime.combine(wednesday, dt.time(18, 1), MSK).astimezone(dt.UTC))
    assert before is not None and before.action == "user" and [p.pin for p in before.people] == ["101"]
    assert after is not None and after.action == "reject"
    saturday = dt.datetime(2026, 11, 28, 12, 0, tzinfo=MSK).astimezone(dt.UTC)
    assert (await router.decide(LINE, saturday)).action == "reject"  # type: ignore[union-attr]


async def test_unknown_lines_and_blocked_domains(core: Core, t1: Tenant) -> None:
    await _office_line(core, t1.id)
    router = IncomingRouter(core.sessions)
    now = dt.datetime.now(dt.UTC)
    assert await router.decide("+74959999999", now) is None
    async with core.sessions() as s:
        domain = await s.get(Domain, t1.id)
        assert domain is not None
        domain.status = "blocked"
        await s.commit()
    assert await router.decide(LINE, now) is None
