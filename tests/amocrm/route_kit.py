"""The ИМК's test world (amoroute): a domain with extensions 101–103 and the line +74951234567, bound to the
amoCRM account of the §4.1 fixture by rows inserted directly (mapping 5001↔101, 5002↔102, 5003↔103,
fallback 5002), and the scenario «Основной» holding the line with smart routing on (5003 excluded).

``FakeAmo`` is an in-test stand-in for ``AmoApi`` (E1, E4, E5 only): the unit tests check our logic around
it; the real client and the emulator are exercised by the peer tests.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tests.amocrm import kit
from vpbx.amocrm.api import Json
from vpbx.amocrm.errors import AmoError
from vpbx.app import Core
from vpbx.store.models import AmoInstall, AmoScenario, CrmBinding

ACCOUNT = kit.DEMO_ACCOUNT
LINE = kit.LINE
MAPPING = kit.MAPPING
FALLBACK = kit.FALLBACK
EXCLUDED = kit.EXCLUDED


def phone_field(*numbers: str) -> list[Json]:
    return [
        {
            "field_id": 101,
            "field_code": "PHONE",
            "values": [{"value": n, "enum_code": "WORK"} for n in numbers],
        }
    ]


def contact(
    ident: int, name: str, responsible: int, *phones: str, updated_at: int = 1700000000, **more: Any
) -> Json:
    fields = phone_field(*phones) if phones else []
    fields += more.pop("fields", [])
    return {
        "id": ident,
        "name": name,
        "responsible_user_id": responsible,
        "updated_at": updated_at,
        "created_at": 1690000000,
        "custom_fields_values": fields or None,
        **more,
    }


ANNA = contact(9001, "Анна Смирнова", 5001, "+79161234567")
OLEG = contact(9002, "Олег Ким", 5003, "89167654321")
SKLAD = contact(
    9003,
    "Склад",
    5002,
    fields=[
        {
            "field_id": 104,
            "field_name": "Комментарий",
            "values": [{"value": "перезвонить 9161234567 после 18"}],
        }
    ],
)


@dataclass
class FakeAmo:
    """E1/E4/E5 over a list of contacts, with amoCRM's full-text ``query`` (a substring of any value's digits
    or text, so «Склад» is a false positive), a delay, and failures on demand."""

    contacts: list[Json] = field(default_factory=lambda: [ANNA, OLEG, SKLAD])
    users_list: list[Json] = field(
        default_factory=lambda: [{"id": u, "name": str(u), "rights": {"is_active": True}} for u in MAPPING]
    )
    delay_s: float = 0.0
    fail: Exception | None = None
    searches: list[tuple[str, str]] = field(default_factory=list)  # (query, lane)
    reads: list[int] = field(default_factory=list)

    def for_account(self, amo_account_id: int) -> FakeAmo:
        return self

    async def _wait(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail

    async def search_contacts(
        self, query: str, *, lane: str = "background", deadline: float | None = None
    ) -> list[Json]:
        self.searches.append((query, lane))
        await self._wait()

        def texts(c: Json) -> list[str]:
            out = [str(c.get("name", ""))]
            for f in c.get("custom_fields_values") or ():
                out += [str(v.get("value", "")) for v in f.get("values", ())]
            return out

        digits = "".join(ch for ch in query if ch.isdigit())
        return [
            c
            for c in self.contacts
            if any(
                query.lower() in t.lower() or (digits and digits in "".join(ch for ch in t if ch.isdigit()))
                for t in texts(c)
            )
        ]

    async def get_contact(
        self, contact_id: int, *, lane: str = "background", deadline: float | None = None
    ) -> Json | None:
        self.reads.append(contact_id)
        await self._wait()
        return next((c for c in self.contacts if c["id"] == contact_id), None)

    async def users(self) -> list[Json]:
        return self.users_list

    async def subscribe_webhook(self, destination: str, settings: Sequence[str]) -> Json:
        self.subscribed = (destination, list(settings))
        return {"id": 77}

    async def unsubscribe_webhook(self, destination: str) -> None:
        self.unsubscribed = destination


class Down(AmoError):
    """What a failing client raises in these tests."""


@dataclass
class World:
    domain_id: uuid.UUID
    domain: str
    binding_id: uuid.UUID
    hook_secret: str
    scenario_id: int


async def bind_rows(
    s: AsyncSession,
    domain_id: uuid.UUID,
    *,
    account: int = ACCOUNT,
    line: str = LINE,
    smart: bool = True,
    excluded: Sequence[int] = EXCLUDED,
    mapping: dict[int, str] | None = None,
    fallback: int | None = FALLBACK,
    base_domain: str = "demo.amocrm.ru",
    client_id: str = "test",
    options: dict[str, Any] | None = None,
) -> tuple[AmoInstall, CrmBinding, AmoScenario]:
    """The install, the active binding, the user map and «Основной» holding ``line`` (flushed, not committed);
    what amobind's activation and amowidget's scenario API write, inserted directly."""
    smart_routing = {"enabled": smart, "excluded_user_ids": list(excluded)}
    install, binding, scenario = await kit.bind_rows(
        s,
        domain_id,
        account=account,
        base_domain=base_domain,
        client_id=client_id,
        mapping=MAPPING if mapping is None else mapping,
        fallback=fallback,
        scenario={"name": "Основной", "lines": [line], "smart_routing": smart_routing},
        options=options,
    )
    assert scenario is not None
    return install, binding, scenario


async def build_world(
    core: Core,
    name: str = "demo.vpbx.test",
    *,
    account: int = ACCOUNT,
    line: str = LINE,
    smart: bool = True,
    excluded: Sequence[int] = EXCLUDED,
    mapping: dict[int, str] | None = None,
    fallback: int | None = FALLBACK,
    pins: Sequence[str] = ("101", "102", "103"),
) -> World:
    async with core.sessions() as s:
        domain_id = await kit.make_domain(
            s, core.box, name, pins={pin: f"User {pin}" for pin in pins}, numbers=[line]
        )
        _, binding, scenario = await bind_rows(
            s,
            domain_id,
            account=account,
            line=line,
            smart=smart,
            excluded=excluded,
            mapping=mapping,
            fallback=fallback,
        )
        await s.commit()
        return World(
            domain_id=domain_id,
            domain=name,
            binding_id=binding.id,
            hook_secret=binding.hook_secret,
            scenario_id=scenario.id,
        )
