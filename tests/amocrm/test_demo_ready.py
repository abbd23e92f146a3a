"""``vpbx serve --demo`` (amocrm.md §4 intro): the amoCRM part of the demo is complete before the HTTP
listener opens, so a script that reads ``demo.json`` the moment /healthz answers finds its ``amocrm`` block
and the demo domain already bound to demo.amocrm.ru (with «Основной» on the demo line)."""

from __future__ import annotations

import json
import secrets
import signal
import sys
from pathlib import Path

import httpx
from sqlalchemy import select

from tests.integration.peers.net import free_port_block, free_ports, wait_until
from tests.integration.peers.process import PeerProcess
from tests.integration.peers.vpbx import REPO, START_TIMEOUT_S, _env
from vpbx.app import build_core
from vpbx.demo import DEMO_DOMAIN
from vpbx.settings import Settings
from vpbx.store.models import AmoInstall, AmoScenario, CrmBinding


async def test_demo_json_has_the_amocrm_block_as_soon_as_healthz_answers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    secret = secrets.token_urlsafe(40)
    env = _env(data, DEMO_DOMAIN, secret, {})
    sip_port, http_port = free_port_block(1), free_ports(1)[0]
    argv = [sys.executable, "-m", "vpbx", "serve", "--demo", "--data-dir", str(data)]
    argv += ["--http-port", str(http_port), "--sip-port", str(sip_port)]
    proc = await PeerProcess.start("vpbx", argv, log_path=tmp_path / "vpbx.log", cwd=REPO, env=env)
    info: dict[str, object] = {}
    try:
        async with httpx.AsyncClient(timeout=2) as http:

            async def healthy() -> bool:
                nonlocal info
                if not proc.running:
                    raise RuntimeError(f"vpbx exited:\n{proc.log_tail()}")
                try:
                    ok = (await http.get(f"http://127.0.0.1:{http_port}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False
                if ok:
                    info = json.loads((data / "demo.json").read_text())  # read at once, no second chance
                return ok

            await wait_until(healthy, timeout_s=START_TIMEOUT_S * 2, what="/healthz of vpbx serve --demo")
    finally:
        await proc.stop(sig=signal.SIGTERM)
    assert "amocrm" in info, f"demo.json without amoCRM when /healthz answered: {sorted(info)}"
    amo = info["amocrm"]
    assert isinstance(amo, dict) and amo["account"] == "demo.amocrm.ru"
    assert str(amo["emulator_url"]).startswith("http://127.0.0.1:")
    settings = Settings(env="test", secret_key=secret, data_dir=data, database_url=env["VPBX_DATABASE_URL"])  # type: ignore[arg-type]
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            [binding] = await s.scalars(select(CrmBinding).where(CrmBinding.status == "active"))
            assert binding.base_domain == "demo.amocrm.ru" and binding.external_account_id == 30000001
            install = await s.scalar(select(AmoInstall).where(AmoInstall.amo_account_id == 30000001))
            assert install is not None and install.token_state == "ok"
            [scenario] = await s.scalars(select(AmoScenario).where(AmoScenario.binding_id == binding.id))
            assert scenario.name == "Основной" and scenario.is_active
    finally:
        await core.engine.dispose()
