"""amoCRM in the demo (amocrm.md §4 intro): ``vpbx serve --demo`` runs the emulator alongside on a free
loopback port and links the demo domain to its account ``demo.amocrm.ru`` the way a customer would.

- ``demo_settings(settings)``: the emulator's port is chosen before the app is built, so the integration's
  settings (client id and secret, the API URL template, the harness origin) point at it.
- ``DemoAmo``: an ``AmoRuntime`` part. It starts the emulator (in-memory: a fresh world every start), then,
  before our HTTP listener opens (so /healthz answering means the demo is complete), plays the widget
  install (``/__emu__/install`` makes the code, the OAuth callback's work exchanges it), activates the
  binding (counter +1, as «Подключить» does; get_number_info stays off in the demo), maps the demo users to
  the emulator's users, creates the scenario «Основной» on the demo line and adds the emulator's URLs to
  ``demo.json``.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select

from vpbx.amocrm import binding as amo
from vpbx.amocrm.emulator import EmulatorServer, make_world, read_fixture
from vpbx.amocrm.scenario import ScenarioDocument
from vpbx.amocrm.widget_auth import public_origin
from vpbx.logs import get_logger
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import AmoPhoneCache, AmoScenario, AmoScenarioLine, CrmBinding, CrmUserMap

if TYPE_CHECKING:
    from vpbx.amocrm.wiring import AmoRuntime

log = get_logger("vpbx.amocrm.demo")

DEMO_ACCOUNT = "demo.amocrm.ru"
DEMO_SCENARIO = "Основной"
# the emulator's demo users (demo_fixture.json) ↔ the demo domain's extensions (vpbx/demo.py)
DEMO_USER_MAP = {5001: "101", 5002: "102", 5003: "103"}
READY_WAIT_S = 30.0
SETUP_TIMEOUT_S = 60.0


def _client_secret(settings: Settings) -> str:
    """A stable per-instance secret of 64 hex digits (PyJWT wants 32 bytes or more for HS256)."""
    seed = settings.secret_key.get_secret_value().encode() + b"/amocrm-demo"
    return hashlib.sha256(seed).hexdigest()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def demo_settings(settings: Settings) -> Settings:
    """``settings`` with the integration pointed at an emulator on a free loopback port (unless an operator
    configured a real integration)."""
    if settings.amocrm.client_id:
        return settings
    url = f"http://127.0.0.1:{_free_port('127.0.0.1')}"
    integ = read_fixture()["integrations"][0]
    amocrm = AmoSettings(
        client_id=str(integ["client_id"]),
        client_secret=_client_secret(settings),
        api_url_template=f"{url}/_acc/{{base_domain}}",
        widget_origins=[url],
    )
    return settings.model_copy(update={"amocrm": amocrm})


def emulator_url(settings: Settings) -> str:
    """The demo emulator's root URL, from the API URL template ``demo_settings`` wrote ('' when not local)."""
    parts = urlsplit(settings.amocrm.api_url_template)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
        return ""
    return f"http://127.0.0.1:{parts.port}"


def demo_info(settings: Settings) -> dict[str, Any]:
    """What ``demo.json`` says about amoCRM."""
    url = emulator_url(settings)
    fixture = read_fixture()
    account = next(a for a in fixture["accounts"] if a["base_domain"] == DEMO_ACCOUNT)
    users = [
        {"id": u["id"], "name": u["name"], "extension": DEMO_USER_MAP.get(int(u["id"]), "")}
        for u in account.get("users", [])
    ]
    return {
        "amocrm": {
            "account": DEMO_ACCOUNT,
            "emulator_url": url,
            "state_url": f"{url}/__emu__/state?account={DEMO_ACCOUNT}",
            "harness_url": f"{url}/__emu__/widget-harness?account={DEMO_ACCOUNT}&user_id=5001",
            "users": users,
        }
    }


def default_scenario() -> ScenarioDocument:
    """«Основной»: the ИМК on; an incoming call from a new number creates a contact, a deal and a task; a
    missed call from a new number leaves a task to call back."""
    return ScenarioDocument.model_validate(
        {
            "smart_routing": {"enabled": True},
            "events": {
                "incoming": {
                    "new": {
                        "enabled": True,
                        "contact": {"enabled": True},
                        "lead": {"enabled": True},
                        "task": {"enabled": True},
                    }
                },
                "missed": {"new": {"enabled": True, "task": {"enabled": True}}},
            },
        }
    )


class DemoAmo:
    """The emulator and the demo domain's binding, for one ``vpbx serve --demo`` process."""

    def __init__(self, runtime: AmoRuntime) -> None:
        self.core = runtime.core
        self.settings = runtime.core.settings
        self.server: EmulatorServer | None = None
        self.ready = asyncio.Event()

    @staticmethod
    def wanted(settings: Settings) -> bool:
        return settings.demo and bool(emulator_url(settings))

    async def start(self) -> None:
        if not self.wanted(self.settings):
            return
        fixture = copy.deepcopy(read_fixture())
        origin = public_origin(self.settings)
        integ = fixture["integrations"][0]
        integ["client_secret"] = self.settings.amocrm.client_secret.get_secret_value()  # type: ignore[union-attr]
        integ["redirect_uri"] = f"{origin}/amo/oauth/callback"
        integ["disconnect_hook"] = f"{origin}/amo/oauth/disconnect"
        port = urlsplit(emulator_url(self.settings)).port
        self.server = EmulatorServer(make_world(fixture), host="127.0.0.1", port=port or 0)
        await self.server.start()
        log.info("amocrm.demo.emulator", url=self.server.url)
        await self._setup()  # before the HTTP listener: healthz answers only once demo.json is complete

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()

    async def _setup(self) -> None:
        """The widget install and the binding, before ``vpbx serve`` opens its HTTP listener: the emulator
        makes the install's code but does not send it (``call: false``); the code goes through the OAuth
        callback's own work (``binding.record_install``: the real code exchange and account read over HTTP),
        so a script that sees /healthz answer finds the binding made and ``demo.json``'s ``amocrm`` block."""
        from vpbx.amocrm.client import shared_pool

        assert self.server is not None
        core = self.core
        try:
            async with asyncio.timeout(SETUP_TIMEOUT_S), httpx.AsyncClient(timeout=10.0) as http:
                resp = await http.post(
                    f"{self.server.url}/__emu__/install",
                    json={"account": DEMO_ACCOUNT, "user_id": 5001, "call": False},
                )
                resp.raise_for_status()
                params = resp.json()["params"]
                async with core.sessions() as s:
                    install = await amo.record_install(
                        s,
                        core.box,
                        self.settings,
                        code=str(params["code"]),
                        referer=str(params["referer"]),
                        client_id=str(params["client_id"]),
                        now=core.clock.now(),
                        http=http,
                    )
                    await s.commit()
                shared_pool(core).tokens.forget(install.amo_account_id)
                await self.link()
        except Exception as e:  # the demo still runs without amoCRM
            log.warning("amocrm.demo.setup_failed", error=f"{type(e).__name__}: {e}")
            return
        self.ready.set()
        log.info("amocrm.demo.ready", account=DEMO_ACCOUNT)

    async def link(self) -> None:
        """The binding, the user map, «Основной» and demo.json (each only if missing)."""
        from vpbx.demo import DEMO_DOMAIN, DEMO_FILE, DEMO_LINE, _write_private
        from vpbx.pbx import domains

        core = self.core
        async with core.sessions() as s:
            domain = await domains.find_domain(s, DEMO_DOMAIN)
            install = await amo.install_of(s, 30000001)
            if domain is None or install is None:
                raise RuntimeError("no demo domain or no install from the OAuth callback")
            binding = await s.scalar(
                select(CrmBinding).where(CrmBinding.domain_id == domain.id, CrmBinding.status == "active")
            )
            if binding is None:
                binding = await amo.activate(s, domain_id=domain.id, install=install, now=core.clock.now())
                await s.flush()
            # the emulator starts empty every time: what the cache remembers of the last run is gone
            await s.execute(delete(AmoPhoneCache).where(AmoPhoneCache.binding_id == binding.id))
            mapped = set(
                await s.scalars(select(CrmUserMap.crm_user_id).where(CrmUserMap.binding_id == binding.id))
            )
            if not mapped:
                for crm_user_id, ext in DEMO_USER_MAP.items():
                    s.add(CrmUserMap(binding_id=binding.id, crm_user_id=crm_user_id, extension=ext))
                binding.fallback_user_id = 5001
            scenario = await s.scalar(select(AmoScenario.id).where(AmoScenario.binding_id == binding.id))
            if scenario is None:
                row = AmoScenario(
                    binding_id=binding.id,
                    name=DEMO_SCENARIO,
                    is_active=True,
                    position=0,
                    document=default_scenario().model_dump(mode="json"),
                )
                s.add(row)
                await s.flush()
                s.add(AmoScenarioLine(scenario_id=row.id, line=DEMO_LINE))
            await s.commit()
        path = self.settings.data_dir / DEMO_FILE
        if path.exists():
            data = json.loads(path.read_text())
            data.update(demo_info(self.settings))
            _write_private(path, data)
