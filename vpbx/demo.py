"""The demo domain: created once per data directory, described in ``demo.json`` for people and scripts."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx import billing
from vpbx.app import Core, build_core
from vpbx.autoinformer import campaigns, contacts
from vpbx.autoinformer.schemas import CampaignSpec
from vpbx.crypto import hash_password, random_password
from vpbx.errors import ValidationFailed
from vpbx.integration_api.core import api_settings, moscow, sign_key
from vpbx.integration_api.settings import ensure_settings
from vpbx.pbx import domains, groups, lines, menus, routing, schedules, users
from vpbx.pbx.actions import ActionInput
from vpbx.settings import Settings
from vpbx.store.models import Operator

DEMO_DOMAIN = "demo.vpbx.local"
DEMO_FILE = "demo.json"
DEMO_LINE = "+74951234567"
DEMO_GROUP_PIN = "600"
DEMO_USERS = [
    # name, display name, PIN, role
    ("admin", "Администратор Демо", "101", "admin"),
    ("ivanov", "Иванов Сергей", "102", "user"),
    ("petrova", "Петрова Анна", "103", "user"),
]


async def ensure_demo(settings: Settings) -> dict[str, Any]:
    """Create the demo domain if this data directory has none; return what ``demo.json`` holds."""
    path = settings.data_dir / DEMO_FILE
    core = build_core(settings)
    try:
        async with core.sessions() as s:
            existing = await domains.find_domain(s, DEMO_DOMAIN)
            if existing is not None and path.exists():
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            info: dict[str, Any] = {"domain": DEMO_DOMAIN, "users": []}
            d = existing or await domains.create_domain(s, domains.DomainInput(name=DEMO_DOMAIN))
            admin_password = random_password(12)
            for name, display, pin, role in DEMO_USERS:
                sip_password = random_password(16)
                web = admin_password if role == "admin" else random_password(12)
                u = await users.user_by_pin(s, d.id, pin)
                data_in = users.UserInput(
                    name=name,
                    display_name=display,
                    pin=pin,
                    role=role,
                    sip_password=sip_password,
                    web_password=web,
                    email=f"{name}@example.com",
                    record_calls=role != "admin",
                )
                if u is None:
                    u = await users.create_user(s, d.id, data_in, box=core.box)
                else:
                    u = await users.update_user(s, d.id, u.id, data_in, box=core.box)
                info["users"].append(
                    {
                        "name": name,
                        "display_name": display,
                        "pin": pin,
                        "role": role,
                        "login": f"{name}@{DEMO_DOMAIN}",
                        "web_password": web,
                        "sip_login": u.sip_login,
                        "sip_password": sip_password,
                    }
                )
            if existing is None:
                info.update(await _directory(core, s, d.id))
                await _integration_api(core, s, d.id)
                await _autoinformer(core, s, d.id)
            info.update(await _api_info(core, s, d.id))
            info["admin_login"] = f"admin@{DEMO_DOMAIN}"
            info["admin_password"] = admin_password
            operator_password = random_password(12)
            op = await s.scalar(select(Operator).where(Operator.login == "operator"))
            if op is None:
                s.add(Operator(login="operator", password_hash=hash_password(operator_password)))
            else:
                op.password_hash = hash_password(operator_password)
            info["operator_login"] = "operator"
            info["operator_password"] = operator_password
            await s.commit()
            _write_private(path, info)
            return info
    finally:
        await core.engine.dispose()


async def _directory(core: Core, s: AsyncSession, domain_id: uuid.UUID) -> dict[str, Any]:
    """One line whose calls go to the sales group in office hours and to a voice menu otherwise."""
    line = await lines.create_number(s, domain_id, lines.NumberInput(number=DEMO_LINE, label="Основной"))
    admin = await users.user_by_pin(s, domain_id, DEMO_USERS[0][2])
    assert admin is not None
    group = await groups.create_group(
        s,
        domain_id,
        groups.GroupInput(
            name="Продажи",
            pin=DEMO_GROUP_PIN,
            strategy="sequential",
            member_timeout_s=20,
            overall_timeout_s=60,
            members=[pin for _, _, pin, role in DEMO_USERS if role == "user"],
            fallthrough=ActionInput(action="voicemail", user_id=admin.id),
        ),
    )
    year = core.clock.now().year
    office = await schedules.create_schedule(
        s,
        domain_id,
        schedules.ScheduleInput(
            name="Офис",
            days=["09:00-18:00"] * 5 + ["", ""],
            holidays="\n".join(
                f"{y}-01-0{d} Новогодние каникулы" for y in (year, year + 1) for d in range(1, 9)
            ),
        ),
    )
    menu_input = menus.MenuInput(
        name="Нерабочее время",
        prompt_text="Здравствуйте! Мы работаем с 9 до 18 по будням. Нажмите 1, чтобы оставить сообщение.",
        keys=[menus.KeyInput(key="1", target=ActionInput(action="voicemail", user_id=admin.id))],
    )
    try:  # the greeting is spoken now, so the cabinet can play it back at once
        async with s.begin_nested():
            menu = await menus.create_menu(s, domain_id, menu_input, core.prompts)
    except ValidationFailed:  # no espeak-ng here: the engine speaks the text on the first call instead
        menu = await menus.create_menu(s, domain_id, menu_input)
    await routing.add_rule(
        s,
        domain_id,
        line.id,
        routing.RuleInput(
            condition="work", schedule_id=office.id, target=ActionInput(action="group", group_id=group.id)
        ),
    )
    await routing.add_rule(
        s,
        domain_id,
        line.id,
        routing.RuleInput(
            condition="non_work", schedule_id=office.id, target=ActionInput(action="menu", menu_id=menu.id)
        ),
    )
    await billing.enable(s, domain_id, "call_recording", core.clock.now())
    return {"line": DEMO_LINE, "group_pin": DEMO_GROUP_PIN}


async def _integration_api(core: Core, s: AsyncSession, domain_id: uuid.UUID) -> None:
    """The Integration API on, encryption mode off, an empty allowlist, get_number_info off (§6.1)."""
    await billing.enable(s, domain_id, billing.INTEGRATION_API, core.clock.now())
    row = await ensure_settings(s, domain_id, core.box)
    row.tls_required = False
    row.allowlist = ""
    row.number_info = False


async def _autoinformer(core: Core, s: AsyncSession, domain_id: uuid.UUID) -> None:
    """The autoinformer on, with one draft campaign to look at (a draft never dials anyone): a debt
    reminder spoken by TTS with the list's variables, and two contacts."""
    now = core.clock.now()
    await billing.enable(s, domain_id, billing.AUTOINFORMER, now)
    spec = CampaignSpec.model_validate(
        {
            "name": "Напоминание о задолженности (пример)",
            "caller_id": DEMO_LINE,
            "message": {
                "segments": [
                    {
                        "type": "tts",
                        "text": "Здравствуйте, {name}! Ваша задолженность составляет {sum:money}. "
                        "Оплатите, пожалуйста, до {due:date}. Нажмите 1, чтобы поговорить с оператором, "
                        "9 — чтобы больше не получать звонков.",
                    }
                ]
            },
            "schedule": {"start_at": moscow(now, millis=False)},
            "success": {"criterion": "listened_full"},
            "dtmf": {
                "actions": {
                    "1": {"action": "connect", "target": {"type": "group", "pin": DEMO_GROUP_PIN}},
                    "9": {"action": "opt_out"},
                }
            },
        }
    )
    campaign, _ = await campaigns.create_campaign(s, domain_id, spec, actor="system", now=now)
    await contacts.import_manual(
        s,
        domain_id,
        campaign.id,
        "phone;name;sum;due\n79161234567;Иван Петрович;1500.50;20.12.2026\n79169876543;Мария;320;25.12.2026",
    )


def api_base_urls(settings: Settings) -> tuple[str, str]:
    """{API} and {API_TEST} as a CRM reaches this server (integration-api.md §1)."""
    host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host
    base = (settings.public_url or f"http://{host}:{settings.http_port}").rstrip("/")
    return settings.api_url.rstrip("/") or f"{base}/api", settings.api_test_url.rstrip(
        "/"
    ) or f"{base}/api-test"


async def _api_info(core: Core, s: AsyncSession, domain_id: uuid.UUID) -> dict[str, Any]:
    row = await api_settings(s, domain_id)
    if row is None:
        return {}
    api, api_test = api_base_urls(core.settings)
    return {
        "api_url": api,
        "api_test_url": api_test,
        "api_client_id": row.client_id,
        "api_sign_key": sign_key(row, core.box),
    }


def _write_private(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, ensure_ascii=False, indent=2)
    tmp.replace(path)
