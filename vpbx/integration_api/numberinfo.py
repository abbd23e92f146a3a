"""``get_number_info`` (integration-api.md §5.3): the engine's routing hook that asks the domain's CRM for the
caller's name and the user or group to ring, before the routing rules run.

Asked only for domains with the service on, «Запрашивать информацию о вызывающем номере» on and a CRM address.
The body is exactly ``{"domain","from_number","request_number"}``, signed; the wait is the domain's «Таймаут»
capped by the platform's (the engine's routing hook deadline, 3 s by default); never retried. The answer is
read tolerantly (trimmed, case-insensitive keys, an exact spelling winning; ``result`` and ``PIN`` as strings
or numbers); anything unusable leaves the call to the rules. Every question is a log row with the PBX's
reading of the answer or the reason it fell back (e.g. «PIN 777 не найден»).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from vpbx.billing import INTEGRATION_API, is_enabled
from vpbx.integration_api.core import api_settings, dumps, sign, verify
from vpbx.integration_api.notify import Exchange, crm_url, log_exchange, post, target
from vpbx.logs import get_logger
from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery
from vpbx.store.models import CallGroup, User

log = get_logger("vpbx.integration_api.numberinfo")

METHOD = "get_number_info"
MAX_NAME = 64
MARGIN_S = 0.2  # our wait ends before the engine's deadline, so the log row is written


@dataclass(frozen=True, slots=True)
class Reading:
    """What the PBX made of an answer: the name and PIN to use, and the reason when it fell back."""

    display_name: str = ""
    pin: str = ""
    reason: str = ""  # why (part of) the answer is not used; "" when all of it is

    def answer(self) -> RoutingAnswer | None:
        if not self.display_name and not self.pin:
            return None
        return RoutingAnswer(pin=self.pin, display_name=self.display_name)


def _key(data: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """``data[name]``, else the first key that trimmed and case-folded is ``name`` (§5.3)."""
    if name in data:
        return True, data[name]
    for key, value in data.items():
        if key.strip().casefold() == name.casefold():
            return True, value
    return False, None


def clean_name(name: str) -> str:
    """Control characters, ``"`` and ``\\`` stripped, cut to 64 characters (§5.3)."""
    return "".join(c for c in name if c.isprintable() and c not in '"\\').strip()[:MAX_NAME]


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip()


def interpret(raw: bytes) -> Reading:
    """The answer's body as the PBX reads it (§5.3), before the PIN is looked up."""
    try:
        data = json.loads(raw)
    except ValueError:
        return Reading(reason="ответ не JSON")
    if not isinstance(data, dict):
        return Reading(reason="ответ не JSON-объект")
    has_result, result = _key(data, "result")
    has_name, name = _key(data, "displayName")
    has_pin, pin = _key(data, "PIN")
    if not has_result and not has_name and not has_pin:
        return Reading(reason="в ответе нет result, displayName и PIN")
    if has_result and _scalar(result) != "0":
        return Reading(reason=f"result = {json.dumps(result, ensure_ascii=False)[:32]}")
    display = clean_name(name) if isinstance(name, str) else ""
    pin_text = _scalar(pin) if has_pin and pin is not None else ""
    if pin_text is None or (pin_text and not pin_text.isdigit()):
        return Reading(display_name=display, reason=f"PIN {str(pin)[:16]} некорректен")
    return Reading(display_name=display, pin=pin_text)


class NumberInfoHook:
    """The routing hook (``b2bua.routing_hooks``) of the Integration API."""

    def __init__(self, core: Any, *, cap_s: float = 3.0) -> None:
        self.core = core
        self.cap_s = cap_s
        self._logs: set[asyncio.Task[None]] = set()

    async def __call__(self, query: RoutingQuery) -> RoutingAnswer | None:
        async with self.core.sessions() as s:
            if not await is_enabled(s, query.domain_id, INTEGRATION_API):
                return None
            settings = await api_settings(s, query.domain_id)
            if settings is None or not settings.number_info or not settings.crm_url.strip():
                return None
            tgt = await target(self.core, s, settings)
            check_sign = settings.verify_crm_sign
        raw = dumps(
            {"domain": query.domain, "from_number": query.from_number, "request_number": query.request_number}
        )
        ex = await post(
            crm_url(tgt.base_url, METHOD),
            METHOD,
            raw,
            client_id=tgt.client_id,
            signature=sign(tgt.client_id, raw, tgt.key),
            timeout_s=max(0.5, min(float(tgt.timeout_s), self.cap_s) - MARGIN_S),
            tls_required=tgt.tls_required,
            pems=tgt.pems,
        )
        reading = await self.read(query.domain_id, ex, tgt.client_id, tgt.key, check_sign)
        verdict = self.verdict(reading)
        # the engine may stop waiting any moment now: the log row is written on its own
        task = asyncio.create_task(log_exchange(self.core, query.domain_id, ex, test=False, verdict=verdict))
        self._logs.add(task)
        task.add_done_callback(self._logs.discard)
        log.info("api.number_info", domain=query.domain, status=ex.status, verdict=verdict[:120])
        return reading.answer()

    async def read(
        self, domain_id: uuid.UUID, ex: Exchange, client_id: str, key: str, check_sign: bool
    ) -> Reading:
        """The exchange's answer as the PBX uses it, with the PIN resolved in the domain."""
        if ex.status is None:
            return Reading(reason=ex.error or "нет ответа")
        if not ex.delivered:
            return Reading(reason=f"HTTP {ex.status}")
        if ex.response_too_large:
            return Reading(reason="ответ больше 16 КиБ")
        if check_sign and not verify(
            client_id, ex.response_raw, key, ex.response_headers.get("x-client-sign")
        ):
            return Reading(reason="подпись ответа CRM неверна или отсутствует")
        reading = interpret(ex.response_raw)
        if not reading.pin:
            return reading
        target_name = await self.resolve(domain_id, reading.pin)
        if target_name is None:
            return Reading(display_name=reading.display_name, reason=f"PIN {reading.pin} не найден")
        return Reading(display_name=reading.display_name, pin=reading.pin, reason="")

    async def resolve(self, domain_id: uuid.UUID, pin: str) -> str | None:
        """The domain's user or group with this PIN, named for the log; None when there is none."""
        async with self.core.sessions() as s:
            user = await s.scalar(select(User).where(User.domain_id == domain_id, User.pin == pin))
            if user is not None:
                return f"пользователь {user.name}"
            group = await s.scalar(
                select(CallGroup).where(CallGroup.domain_id == domain_id, CallGroup.pin == pin)
            )
            return f"группа {group.name}" if group is not None else None

    @staticmethod
    def verdict(reading: Reading) -> str:
        parts = []
        if reading.pin:
            parts.append(f"PIN {reading.pin}")
        if reading.display_name:
            parts.append(f"имя «{reading.display_name}»")
        if reading.reason:
            parts.append(f"правила маршрутизации: {reading.reason}")
        return "; ".join(parts) or "правила маршрутизации"

    async def aclose(self) -> None:
        if self._logs:
            await asyncio.gather(*self._logs, return_exceptions=True)
