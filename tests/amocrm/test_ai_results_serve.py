"""A real campaign on ``vpbx serve`` → amoCRM (autoinformer.md §5 "amoCRM"): SIPp recipients behind the IP
trunk answer and hear the message, the contacts become final, and the serve process's job runner writes the
results to the amoCRM emulator running in this process: one call note on the contact amoCRM knows (with the
recording link and a task, the campaign's «Создавать задачу в amoCRM»), nothing for the unknown number."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm.emu_kit import emulator
from tests.amocrm.test_finish_serve import amo_env, bound, created, wait_created
from tests.autoinformer.campaign_kit import (
    Stand,
    add_campaign,
    open_domain,
    recipient_scenario,
    running_spec,
)
from tests.autoinformer.campaign_kit import carrier as carrier_run
from tests.integration.peers.net import free_port_block, wait_until
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import SippProcess
from tests.integration.test_autoinformer_campaign import contacts_of, in_db
from tests.integration.test_history import serve
from tests.integration.test_outbound_calls import carrier_trunk
from vpbx.amocrm.ai_results import KIND
from vpbx.app import Core
from vpbx.store.models import CrmJob

pytestmark = pytest.mark.peers

KNOWN = "79161234567"  # Анна Смирнова (9001) in the demo fixture
UNKNOWN = "79031112233"
WAIT_S = 120.0  # a bound, not a speed


async def test_a_campaigns_results_become_one_note_per_known_contact_and_a_task(tmp_path: Path) -> None:
    for program in ("sipp", "espeak-ng"):
        require_binary(program)
    port = free_port_block(1)
    stand = Stand.make(tmp_path)
    ids: dict[str, uuid.UUID] = {}
    scenario = tmp_path / "recipient.xml"
    scenario.write_text(recipient_scenario())

    async def campaign(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, carrier_trunk(port))
        spec = running_spec(
            "Напоминание",
            message={"segments": [{"type": "tts", "text": "Проверка"}]},
            success={"criterion": "answered"},
            record=True,
            amocrm_task={"text": "Перезвонить клиенту", "due_days": 1},
        )
        row = await add_campaign(s, domain_id, spec, (KNOWN, UNKNOWN))
        ids["campaign"] = row.id

    async with emulator() as emu:
        await stand.provision(await bound(emu, campaign))
        env = {**stand.env, **amo_env(emu)}
        async with (
            SippProcess.running(carrier_run(scenario, port, timeout_s=300.0), tmp_path) as far_end,
        ):
            await far_end.wait_listening()
            async with serve(stand.workdir, stand.data, env, "ai-amo"):

                async def final() -> bool:
                    cs = await contacts_of(stand.settings, ids["campaign"])
                    return all(c.status == "succeeded" for c in cs.values())

                await wait_until(final, timeout_s=WAIT_S, what="both contacts succeeded")

                async def jobs(s: AsyncSession) -> list[CrmJob]:
                    return list(await s.scalars(select(CrmJob).where(CrmJob.kind == KIND)))

                async def settled() -> bool:
                    return {j.state for j in await in_db(stand.settings, jobs)} == {"done"}

                await wait_until(settled, timeout_s=WAIT_S, what="the amo.ai_result jobs done")
                state = await wait_created(emu, "notes", 1)
                finished = await in_db(stand.settings, jobs)
                contacts = await contacts_of(stand.settings, ids["campaign"])

    assert len(finished) == 2  # one job per contact; the unknown number's found nobody
    [note] = created(state, "notes")  # autoinformer calls run no scenario: no amo.finish note either
    assert note["entity_id"] == 9001 and note["note_type"] == "call_out"
    params = note["params"]
    assert params["uniq"] == contacts[KNOWN].last_session_id
    assert params["phone"] == "+" + KNOWN and params["call_status"] == 4
    assert "«Напоминание»" in params["call_result"] and "Успешно" in params["call_result"]
    assert params["link"].startswith("https://pbx.example/rec/amo/")
    [task] = created(state, "tasks")
    assert (task["entity_type"], task["entity_id"], task["text"]) == ("contacts", 9001, "Перезвонить клиенту")
    assert task["responsible_user_id"] == 5001  # the contact's responsible
    assert not created(state, "contacts")
