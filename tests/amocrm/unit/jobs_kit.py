"""A bound domain in a migrated SQLite database for the job engine's unit tests: §6's fixture (domain
``demo.vpbx.test``, users 5001↔101, 5002↔102, 5003↔103, fallback 5002, scenario «Основной» of §3.4 on line
+74951234567), calls written through the call history's real ``apply_events`` (so ``CallRecord`` and the
events outbox are what the engine commits), the consumer, and the runner over a ``FakeAmo``."""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.amocrm.kit import SCENARIO_DOC, bind_rows, make_domain
from tests.amocrm.unit.fake_amo import FakeAmo, FakeClients
from vpbx.amocrm.api import AmoClients
from vpbx.amocrm.calls import FINISH, CallConsumer
from vpbx.amocrm.finish import FinishHandler, FinishSettings
from vpbx.amocrm.jobs import JobRunner
from vpbx.amocrm.oauth import TokenPair
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.pbx.bus import CallEvent, SessionId
from vpbx.pbx.history import apply_events
from vpbx.store.models import AmoCall, CrmJob

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from vpbx.crypto import SecretBox

LINE = "74951234567"
DOMAIN = "demo.vpbx.test"
START = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)

SCENARIO = SCENARIO_DOC  # «Основной» of §3.4


@dataclass
class World:
    core: Core
    clock: FakeClock
    amo: FakeAmo
    domain_id: uuid.UUID
    binding_id: uuid.UUID
    scenario_id: int
    runner: JobRunner
    consumer: CallConsumer
    seqs: dict[str, int] = field(default_factory=dict)

    async def event(self, sid: str, state: str, call_type: str, **kw: Any) -> None:
        """One engine event of call ``sid`` at the clock's now, written as the journal writes it."""
        self.seqs[sid] = self.seqs.get(sid, 0) + 1
        event = CallEvent(
            session_id=SessionId(sid),
            seq=self.seqs[sid],
            state=state,  # type: ignore[arg-type]
            type=call_type,  # type: ignore[arg-type]
            domain_id=self.domain_id,
            domain=DOMAIN,
            timestamp=self.clock.now(),
            **kw,
        )
        async with self.core.sessions() as s, s.begin():
            await apply_events(s, [event], "node-1")

    async def incoming(
        self,
        caller: str,
        *,
        answered: list[str],
        rung: list[str] | None = None,
        talk_s: int = 95,
        is_record: bool = False,
    ) -> str:
        """An incoming call from ``caller`` on the line: rings ``rung`` (default: who answers), connected
        to each of ``answered`` in turn (a transfer between them), ``talk_s`` seconds, then hung up."""
        sid = f"s-{secrets.token_hex(6)}"
        frm = {"from_number": f"sip:{caller}@{DOMAIN}"}
        await self.event(sid, "new", "incoming", request_number=f"sip:{LINE}@{DOMAIN}", line=LINE, **frm)
        for pin in rung if rung is not None else answered[:1]:
            self.clock.advance(1)
            await self.event(
                sid, "calling", "incoming", request_number=f"user{pin}@{DOMAIN}", request_pin=pin, **frm
            )
        for n, pin in enumerate(answered):
            if n:
                await self.event(
                    sid, "disconnected", "incoming", request_pin=answered[n - 1], disconnect_reason="0", **frm
                )
                await self.event(
                    sid, "calling", "incoming", request_number=f"user{pin}@{DOMAIN}", request_pin=pin, **frm
                )
            self.clock.advance(2)
            await self.event(
                sid, "connected", "incoming", request_number=f"user{pin}@{DOMAIN}", request_pin=pin, **frm
            )
            self.clock.advance(talk_s // max(len(answered), 1))
        last = (answered or rung or [""])[-1]
        if answered:
            self.clock.advance(talk_s - (talk_s // len(answered)) * len(answered))
            await self.event(sid, "disconnected", "incoming", request_pin=last, disconnect_reason="5", **frm)
        else:
            self.clock.advance(20)
        extra = {} if answered else {"end_reason": "no_answer"}
        await self.event(
            sid, "end", "incoming", request_pin=last or None, is_record=is_record, extra=extra, **frm
        )
        return sid

    async def outgoing(
        self, pin: str, number: str, *, answered: bool, status_code: int = 480, talk_s: int = 30
    ) -> str:
        sid = f"s-{secrets.token_hex(6)}"
        kw = {
            "from_number": f"user{pin}@{DOMAIN}",
            "from_pin": pin,
            "request_number": f"sip:{number}@{DOMAIN}",
            "line": LINE,
        }
        await self.event(sid, "new", "outbound", **kw)
        self.clock.advance(1)
        await self.event(sid, "calling", "outbound", **kw)
        if answered:
            self.clock.advance(3)
            await self.event(sid, "connected", "outbound", **kw)
            self.clock.advance(talk_s)
            await self.event(sid, "disconnected", "outbound", disconnect_reason="5", **kw)
            extra: dict[str, str] = {}
        else:
            self.clock.advance(20)
            extra = {"status_code": str(status_code), "end_reason": "no_answer"}
        await self.event(sid, "end", "outbound", is_record=False, extra=extra, **kw)
        return sid

    async def settle(self) -> None:
        """Consume every committed event and run every due job."""
        while await self.consumer.consume_once():
            pass
        await self.runner.run_until_idle()

    async def call_row(self, sid: str) -> AmoCall:
        async with self.core.sessions() as s:
            row = await s.get(AmoCall, (self.binding_id, sid))
            assert row is not None
            return row

    async def jobs(self) -> list[CrmJob]:
        from sqlalchemy import select

        async with self.core.sessions() as s:
            return list(await s.scalars(select(CrmJob).where(CrmJob.binding_id == self.binding_id)))


async def bind_demo(
    s: AsyncSession,
    box: SecretBox,
    domain_id: uuid.UUID,
    *,
    tokens: TokenPair | None = None,
    connected_at: dt.datetime | None = None,
) -> tuple[uuid.UUID, int]:
    """§6's binding of ``domain_id`` to demo.amocrm.ru (install with ``tokens``, the mapping, fallback 5002,
    «Основной» on the line), in the caller's transaction: (binding id, scenario id)."""
    _, binding, scenario = await bind_rows(
        s,
        domain_id,
        client_id="c",
        box=box,
        tokens=tokens,
        timezone="Europe/Moscow",
        scenario=SCENARIO,
        lines=(LINE,),
        connected_at=connected_at or dt.datetime.now(dt.UTC) - dt.timedelta(days=1),
    )
    assert scenario is not None
    return binding.id, scenario.id


async def make_world(
    core: Core,
    clock: FakeClock,
    amo: FakeAmo | None = None,
    *,
    clients: AmoClients | None = None,
    tokens: TokenPair | None = None,
    **runner_kw: Any,
) -> World:
    """The bound domain; jobs go to ``clients`` (a real pool on the emulator, with ``tokens`` stored in the
    install) or else to ``amo`` (a FakeAmo by default)."""
    amo = amo or FakeAmo(clock=clock)
    async with core.sessions() as s:
        domain_id = await make_domain(s, core.box, DOMAIN)
        binding_id, scenario_id = await bind_demo(
            s, core.box, domain_id, tokens=tokens, connected_at=START - dt.timedelta(days=1)
        )
        await s.commit()
    handler = FinishHandler(FinishSettings(source_name="Виртуальная АТС", origin="https://pbx.example"))
    runner = JobRunner(core, clients or FakeClients(amo), {FINISH: handler}, **runner_kw)
    consumer = CallConsumer(core, on_enqueued=runner.wake)
    return World(core, clock, amo, domain_id, binding_id, scenario_id, runner, consumer)
