"""Linking a test domain to an amoCRM account, for every amoCRM test.

- ``insert_install``: an ``AmoInstall`` row written directly (tokens that no server knows), for tests that
  never talk to amoCRM.
- ``bind``: a domain's active binding to an install, through ``vpbx.amocrm.binding.activate`` (counter +1 and
  the charge, as the cabinet does it).
- ``pbx_for(emu)``: the PBX app (``create_app``) served over real HTTP on a free loopback port, set up for
  the emulator (our integration's client id and secret, its API URL template, ``public_url``), with the
  emulator's ``redirect_uri`` and disconnect hook pointed at it. Yields a ``Pbx`` (``url``, ``core``,
  ``http``, ``widget(...)`` for widget API calls with an emulator-minted token).
- ``install_and_bind(core, emu, domain_id)``: the real path, the emulator's ``/__emu__/install`` calling our
  ``/amo/oauth/callback`` over HTTP (the PBX must be served by ``pbx_for``), then ``bind``.
- The test world of the unit-level tests (the job engine's, the ИМК's, the widget API's): ``make_domain``
  (a domain, its users and lines) and ``bind_rows`` (install, active binding, user mapping, a scenario with
  its lines) insert rows directly; ``SCENARIO_DOC`` is §3.4's «Основной» on the fixture's ids (§6).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import secrets
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn

from tests.conftest import TEST_SECRET
from vpbx.amocrm import binding as amo
from vpbx.amocrm.client import close_shared_pool
from vpbx.amocrm.oauth import TokenPair
from vpbx.amocrm.scenario import Scenario
from vpbx.amocrm.tokens import store_tokens
from vpbx.app import Core, create_app
from vpbx.pbx import domains, users
from vpbx.pbx import lines as pbx_lines
from vpbx.settings import AmoSettings, Settings
from vpbx.store.models import AmoInstall, AmoScenario, AmoScenarioLine, CrmBinding, CrmUserMap

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from tests.amocrm.emu_kit import Emu
    from vpbx.crypto import SecretBox

DEMO_ACCOUNT = 30000001
DEMO_HOST = "demo.amocrm.ru"
OTHER_ACCOUNT = 30000002
OTHER_HOST = "other.amocrm.ru"
CLIENT_ID = "6f1c2a7e-0000-4000-8000-000000000001"
CLIENT_SECRET = "emu-secret"
# The §4.1 fixture with a 32-byte client secret: PyJWT warns about HMAC keys under 32 bytes (RFC 7518 §3.2),
# and pytest's ``-W error`` turns the demo fixture's "emu-secret" into a failure of every widget token.
LONG_SECRET = "emu-secret-long-enough-for-hs256-0123456789"


def emu_fixture() -> dict[str, Any]:
    """The demo fixture with ``LONG_SECRET``, for ``emulator(fixture=emu_fixture())``."""
    from tests.amocrm.emu_kit import DEMO_FIXTURE

    doc = copy.deepcopy(DEMO_FIXTURE)
    doc["integrations"][0]["client_secret"] = LONG_SECRET
    return doc


ACCOUNTS = {DEMO_HOST: DEMO_ACCOUNT, OTHER_HOST: OTHER_ACCOUNT}
WAIT_S = 15.0


async def insert_install(
    core: Core, account_id: int = DEMO_ACCOUNT, host: str = DEMO_HOST, *, now: dt.datetime | None = None
) -> None:
    at = now or core.clock.now()
    async with core.sessions() as s:
        s.add(
            AmoInstall(
                amo_account_id=account_id,
                base_domain=host,
                client_id=CLIENT_ID,
                access_token_enc=core.box.seal("test-access"),
                refresh_token_enc=core.box.seal("test-refresh"),
                expires_at=at + dt.timedelta(days=1),
                token_version=1,
                installed_at=at,
            )
        )
        await s.commit()


async def bind(
    core: Core, domain_id: uuid.UUID, account_id: int = DEMO_ACCOUNT, *, now: dt.datetime | None = None
) -> CrmBinding:
    """The domain's active binding to the account's install (which must exist)."""
    async with core.sessions() as s:
        install = await amo.install_of(s, account_id)
        assert install is not None, f"account {account_id} has no install"
        row = await amo.activate(s, domain_id=domain_id, install=install, now=now or core.clock.now())
        await s.commit()
        return row


@dataclass
class Pbx:
    url: str
    core: Core
    http: httpx.AsyncClient
    emu: Emu

    async def widget(
        self,
        method: str,
        path: str,
        *,
        account: str = DEMO_HOST,
        user_id: int = 5001,
        is_admin: bool = True,
        token: str | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """A widget API call (``/amo/widget/v1`` + path) with a fresh emulator-minted ``X-Auth-Token``."""
        if token is None:
            token = await self.emu.disposable_token(
                account=account, user_id=user_id, is_admin=is_admin, aud=self.url
            )
        return await self.http.request(
            method, f"{self.url}/amo/widget/v1{path}", headers={"X-Auth-Token": token}, **kwargs
        )


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def pbx_for(emu: Emu, data_dir: Path, template_db: Path) -> AsyncIterator[Pbx]:
    """The PBX app on real HTTP, configured for ``emu``, its SQLite copied from the migrated template."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    db = data_dir / "vpbx.sqlite3"
    shutil.copy(template_db, db)
    settings = Settings(
        env="test",
        secret_key=TEST_SECRET,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{db}",
        public_url=url,
        amocrm=AmoSettings(
            client_id=emu.client_id,
            client_secret=emu.client_secret,  # type: ignore[arg-type]
            api_url_template=emu.api_url_template,
        ),
    )
    await emu.set_integration(
        redirect_uri=f"{url}/amo/oauth/callback", disconnect_hook=f"{url}/amo/oauth/disconnect"
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="pbx-http")
    try:
        async with asyncio.timeout(WAIT_S):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as http:
            yield Pbx(url=url, core=app.state.core, http=http, emu=emu)
    finally:
        server.should_exit = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WAIT_S):
                await asyncio.gather(task, return_exceptions=True)
        task.cancel()
        await close_shared_pool(app.state.core)
        await app.state.core.engine.dispose()
        sock.close()


async def install(core: Core, emu: Emu, account: str = DEMO_HOST) -> AmoInstall:
    """The widget installed in ``account``: the emulator sends the code to our callback, which stores it."""
    await emu.install(account)
    async with core.sessions() as s:
        row = await amo.install_of(s, ACCOUNTS[account])
    assert row is not None, f"our callback stored no install for {account}"
    return row


async def install_and_bind(
    core: Core, emu: Emu, domain_id: uuid.UUID, account: str = DEMO_HOST
) -> CrmBinding:
    """Install over real OAuth, then the domain's active binding (what «Подключить» in the cabinet does)."""
    row = await install(core, emu, account)
    return await bind(core, domain_id, row.amo_account_id)


# --- the test world: rows inserted directly -----------------------------------------------------------------

LINE = "+74951234567"  # the fixture domain's line, held by «Основной»
MAPPING = {5001: "101", 5002: "102", 5003: "103"}  # amoCRM user ↔ extension (§6)
FALLBACK = 5002
EXCLUDED = (5003,)

SCENARIO_DOC: dict[str, Any] = {  # §3.4's example on the fixture's ids: the widget's full JSON of «Основной»
    "name": "Основной",
    "is_active": True,
    "position": 0,
    "lines": [LINE],
    "smart_routing": {"enabled": True, "excluded_user_ids": list(EXCLUDED)},
    "events": {
        "incoming": {
            "new": {
                "enabled": True,
                "update_responsible_on_transfer": True,
                "contact": {
                    "enabled": True,
                    "name_template": "Новый клиент $(phone)",
                    "tags": ["Входящий звонок"],
                    "fields": [{"field_id": 104, "value": "Звонок на $(line)"}],
                    "responsible": {"rule": "answered"},
                },
                "task": {
                    "enabled": True,
                    "text": "Перезвонить $(phone)",
                    "responsible": {"rule": "answered"},
                    "deadline": {"kind": "minutes", "minutes": 60},
                    "task_type_id": 1,
                },
                "lead": {
                    "enabled": True,
                    "name_template": "Звонок $(phone)",
                    "pipeline_id": 7000,
                    "status_id": 7001,
                    "tags": ["Звонок"],
                    "fields": [{"field_id": 201, "enum_id": 2011}],
                    "responsible": {"rule": "answered"},
                },
            },
            "existing": {
                "enabled": True,
                "lead": {
                    "enabled": True,
                    "skip_if_active_lead": True,
                    "name_template": "Звонок $(phone)",
                    "pipeline_id": 7000,
                    "status_id": 7001,
                },
                "task": {"enabled": False},
            },
        },
        "outgoing": {"new": {"enabled": False}, "existing": {"enabled": False}},
        "missed": {
            "new": {
                "enabled": True,
                "task": {
                    "enabled": True,
                    "text": "Пропущенный звонок $(phone)",
                    "responsible": {"rule": "fallback"},
                    "deadline": {"kind": "minutes", "minutes": 30},
                },
            },
            "existing": {
                "enabled": True,
                "task": {
                    "enabled": True,
                    "text": "Перезвонить: $(phone)",
                    "responsible": {"rule": "contact"},
                    "deadline": {"kind": "end_of_day"},
                },
            },
        },
    },
}


def scenario_doc(**changes: Any) -> dict[str, Any]:
    """A deep copy of ``SCENARIO_DOC`` with top-level ``changes``."""
    return {**copy.deepcopy(SCENARIO_DOC), **changes}


async def make_domain(
    s: AsyncSession,
    box: SecretBox,
    name: str = "demo.vpbx.test",
    *,
    pins: Mapping[str, str] | None = None,
    numbers: Sequence[str] = (),
) -> uuid.UUID:
    """A domain with its users (pin → display name) and incoming numbers, flushed (the caller commits)."""
    d = await domains.create_domain(s, domains.DomainInput(name=name))
    for pin, display in (pins or {}).items():
        await users.create_user(
            s, d.id, users.UserInput(name=f"user{pin}", display_name=display, pin=pin), box=box
        )
    for number in numbers:
        await pbx_lines.create_number(s, d.id, pbx_lines.NumberInput(number=number))
    await s.flush()
    return d.id


async def bind_rows(
    s: AsyncSession,
    domain_id: uuid.UUID,
    *,
    account: int = DEMO_ACCOUNT,
    base_domain: str = DEMO_HOST,
    client_id: str = "test",
    box: SecretBox | None = None,
    tokens: TokenPair | None = None,
    timezone: str | None = None,
    mapping: Mapping[int, str] = MAPPING,
    fallback: int | None = FALLBACK,
    scenario: Mapping[str, Any] | None = None,
    lines: Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    connected_at: dt.datetime | None = None,
) -> tuple[AmoInstall, CrmBinding, AmoScenario | None]:
    """What the OAuth callback, the activation and the widget API write, inserted directly and flushed (the
    caller commits): the account's install (``tokens`` sealed with ``box`` when given), the domain's active
    binding, the user ``mapping`` and, with ``scenario`` (the widget's JSON, e.g. ``SCENARIO_DOC``), its row
    holding ``lines`` (default: the document's, as written)."""
    install = AmoInstall(amo_account_id=account, base_domain=base_domain, client_id=client_id)
    if timezone is not None:
        install.timezone = timezone
    s.add(install)
    if tokens is not None:
        assert box is not None, "sealing the tokens needs the box"
        await store_tokens(s, box, install, tokens)
    binding = CrmBinding(
        domain_id=domain_id,
        external_account_id=account,
        base_domain=base_domain,
        status="active",
        fallback_user_id=fallback,
        hook_secret=secrets.token_urlsafe(24),
        options=options or {},
    )
    if connected_at is not None:
        binding.connected_at = connected_at
    s.add(binding)
    await s.flush()
    for user_id, ext in mapping.items():
        s.add(CrmUserMap(binding_id=binding.id, crm_user_id=user_id, extension=ext))
    row = None
    if scenario is not None:
        doc = Scenario.model_validate(scenario)
        row = AmoScenario(
            binding_id=binding.id,
            name=doc.name,
            is_active=doc.is_active,
            position=doc.position,
            document=doc.document().model_dump(),
        )
        s.add(row)
        await s.flush()
        for line in doc.lines if lines is None else lines:
            s.add(AmoScenarioLine(scenario_id=row.id, line=line))
    await s.flush()
    return install, binding, row
