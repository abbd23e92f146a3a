"""``vpbx serve --demo`` with amoCRM (amocrm.md §4 intro): the emulator runs alongside, the demo domain is
bound to demo.amocrm.ru through the real OAuth path, and the demo's first incoming call from a new number
creates the contact (and the deal and the task of «Основной») in the emulator. A SIPp carrier calls the
demo line, a SIPp phone registered as 102 answers."""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.integration.peers.net import LOOPBACK, free_port_block, free_ports, wait_sip_ready, wait_until
from tests.integration.peers.process import PeerProcess, require_binary
from tests.integration.peers.service import SipService
from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.peers.vpbx import REPO, START_TIMEOUT_S, _env
from tests.integration.test_calls import bind, callee_run
from tests.integration.test_incoming_calls import CARRIER_IP, carrier_run
from vpbx.app import build_core
from vpbx.demo import DEMO_DOMAIN, DEMO_LINE
from vpbx.pbx import domains, routing, trunks
from vpbx.pbx.actions import ActionInput
from vpbx.settings import Settings
from vpbx.store.models import AmoScenario, CrmBinding, CrmUserMap, IncomingNumber, User

pytestmark = pytest.mark.peers

NEW = "79035556677"
WAIT_S = 60.0  # a bound, not a speed


@dataclasses.dataclass
class _Server:
    service: SipService


async def _run(argv: list[str], env: dict[str, str], log: Path) -> None:
    proc = await PeerProcess.start("vpbx-demo", argv, log_path=log, cwd=REPO, env=env)
    code = await proc.wait(timeout_s=START_TIMEOUT_S * 4)
    assert code == 0, proc.log_tail()


async def _carrier_to_102(settings: Settings) -> None:
    """The demo domain gets an IP trunk for the carrier, and its line rings 102 at any hour (the demo's own
    rules depend on the clock)."""
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            d = await domains.find_domain(s, DEMO_DOMAIN)
            assert d is not None
            await trunks.create_trunk(
                s,
                d.id,
                trunks.TrunkInput(
                    name="Carrier", kind="ip", host=CARRIER_IP, allowed_networks=[f"{CARRIER_IP}/32"]
                ),
                box=core.box,
            )
            number = await s.scalar(
                select(IncomingNumber).where(
                    IncomingNumber.domain_id == d.id, IncomingNumber.number == DEMO_LINE
                )
            )
            assert number is not None
            for rule in await routing.list_rules(s, d.id, number.id):
                await routing.delete_rule(s, d.id, rule.id)
            user = await s.scalar(select(User.id).where(User.domain_id == d.id, User.pin == "102"))
            await routing.add_rule(
                s, d.id, number.id, routing.RuleInput(target=ActionInput(action="user", user_id=user))
            )
            await s.commit()
    finally:
        await core.engine.dispose()


async def test_the_demos_first_call_from_a_new_number_creates_the_contact_in_the_emulator(
    tmp_path: Path,
) -> None:
    for program in ("sipsak", "sipp"):
        require_binary(program)
    data = tmp_path / "data"
    data.mkdir()
    secret = secrets.token_urlsafe(40)
    env = _env(data, DEMO_DOMAIN, secret, {})
    await _run([sys.executable, "-m", "vpbx", "demo", "--data-dir", str(data)], env, tmp_path / "demo.log")
    settings = Settings(
        env="test",
        secret_key=secret,
        data_dir=data,
        database_url=env["VPBX_DATABASE_URL"],  # type: ignore[arg-type]
    )
    await _carrier_to_102(settings)

    sip_port, http_port = free_port_block(1), free_ports(1)[0]
    argv = [sys.executable, "-m", "vpbx", "serve", "--demo", "--data-dir", str(data)]
    argv += ["--http-port", str(http_port), "--sip-port", str(sip_port)]
    proc = await PeerProcess.start("vpbx", argv, log_path=tmp_path / "vpbx.log", cwd=REPO, env=env)
    try:
        info: dict[str, Any] = {}

        async def bound() -> bool:  # the binding is made before our HTTP listener opens
            nonlocal info
            if not proc.running:
                raise RuntimeError(f"vpbx exited:\n{proc.log_tail()}")
            info = json.loads((data / "demo.json").read_text())
            return "amocrm" in info

        await wait_until(bound, timeout_s=WAIT_S, what="demo.json with amoCRM")
        await wait_sip_ready(LOOPBACK, sip_port, timeout_s=START_TIMEOUT_S)
        amo = info["amocrm"]
        emu = amo["emulator_url"]
        assert emu.startswith("http://127.0.0.1:") and amo["account"] == "demo.amocrm.ru"
        assert amo["harness_url"].startswith(f"{emu}/__emu__/widget-harness?")
        assert [(u["id"], u["extension"]) for u in amo["users"]] == [
            (5001, "101"),
            (5002, "102"),
            (5003, "103"),
        ]
        ivanov = next(u for u in info["users"] if u["pin"] == "102")
        service = SipService(
            host=LOOPBACK,
            port=sip_port,
            domain=DEMO_DOMAIN,
            users={ivanov["sip_login"]: ivanov["sip_password"]},
        )
        async with (
            httpx.AsyncClient(timeout=10) as http,
            SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
        ):
            await bind(_Server(service), ivanov["sip_login"], phone)  # type: ignore[arg-type]
            run = carrier_run(_Server(service), calls=1, duration_ms=1500)  # type: ignore[arg-type]
            run = dataclasses.replace(run, keys={**run.keys, "caller": NEW})
            caller = await run_sipp(run, tmp_path)
            assert caller.ok, caller.describe()
            state: dict[str, Any] = {}

            async def contact_made() -> bool:
                nonlocal state
                resp = await http.get(f"{emu}/__emu__/state", params={"account": "demo.amocrm.ru"})
                state = resp.json()
                return any(NEW in json.dumps(c, ensure_ascii=False) for c in state["contacts"])

            await wait_until(contact_made, timeout_s=WAIT_S, what="the new caller's contact in the emulator")
    finally:
        await proc.stop(sig=signal.SIGTERM)

    [contact] = [c for c in state["contacts"] if NEW in json.dumps(c, ensure_ascii=False)]
    assert contact["name"] == f"Новый клиент +{NEW}" and contact["responsible_user_id"] == 5002
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            [binding] = await s.scalars(select(CrmBinding).where(CrmBinding.status == "active"))
            assert binding.base_domain == "demo.amocrm.ru"
            maps = await s.scalars(select(CrmUserMap).where(CrmUserMap.binding_id == binding.id))
            assert sorted((m.crm_user_id, m.extension) for m in maps) == [
                (5001, "101"),
                (5002, "102"),
                (5003, "103"),
            ]
            [scenario] = await s.scalars(select(AmoScenario).where(AmoScenario.binding_id == binding.id))
            assert scenario.name == "Основной" and scenario.document["smart_routing"]["enabled"] is True
    finally:
        await core.engine.dispose()
