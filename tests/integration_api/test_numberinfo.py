"""get_number_info as the engine's routing hook, against a real HTTP CRM on loopback (integration-api.md
§5.3): the exact signed body, the tolerant reading of the acceptance table, the fallbacks and their
log reasons."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from tests.conftest import make_tenant
from tests.helpers import Tenant
from tests.integration_api.notify_crm import F_CLIENT_ID, F_KEY, Answer, Crm, Seen, activate
from vpbx.app import Core
from vpbx.integration_api.core import sign
from vpbx.integration_api.numberinfo import NumberInfoHook
from vpbx.pbx import groups, users
from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery
from vpbx.store.models import ApiLog

F_BODY = b'{"domain":"demo.vpbx.example","from_number":"79161234567","request_number":"74951234567"}'
F_SIGN = "05be6bc86a63ae7d653bb3d8c509acd54e745010db00b060cfdc6babe3be4ed2"
OK = "Операция выполнена успешно"


def query(t: Tenant) -> RoutingQuery:
    return RoutingQuery(
        session_id="s1",
        domain_id=t.id,
        domain=t.name,
        from_number="79161234567",
        request_number="74951234567",
    )


async def people(core: Core, t: Tenant) -> None:
    async with core.sessions() as s:
        await users.create_user(
            s, t.id, users.UserInput(name="ivanov", display_name="Иванов", pin="501"), box=core.box
        )
        await groups.create_group(s, t.id, groups.GroupInput(name="sales", pin="600", members=["501"]))
        await s.commit()


async def log_rows(core: Core) -> list[ApiLog]:
    async with core.sessions() as s:
        return list(await s.scalars(select(ApiLog).where(ApiLog.method == "get_number_info")))


async def ask(
    core: Core, t: Tenant, answer: Answer, **fields: object
) -> tuple[RoutingAnswer | None, Seen, ApiLog]:
    async with Crm(lambda _crm, _req: answer).running() as crm:
        await activate(core, t.id, crm.url, number_info=True, client_id=F_CLIENT_ID, key=F_KEY, **fields)
        hook = NumberInfoHook(core)
        got = await hook(query(t))
        await hook.aclose()
        (seen,) = crm.seen
    (row,) = await log_rows(core)
    return got, seen, row


def j(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


async def test_the_body_is_exact_and_signed_and_the_answer_rings_501(core: Core) -> None:
    demo = await make_tenant(core, "demo.vpbx.example")
    await people(core, demo)
    reply = {"result": "0", "resultMessage": OK, "displayName": "Иванов Сергей Петрович", "PIN": "501"}
    got, seen, row = await ask(core, demo, Answer(200, j(reply)))
    assert seen.path == "/rt/get_number_info" and seen.raw == F_BODY
    assert seen.headers["x-client-sign"] == F_SIGN
    assert got == RoutingAnswer(pin="501", display_name="Иванов Сергей Петрович")
    assert row.direction == "out" and row.status == 200 and not row.test
    assert row.verdict == "PIN 501; имя «Иванов Сергей Петрович»"


@pytest.mark.parametrize(
    ("reply", "expected", "verdict"),
    [
        (
            {"result": "0", "resultMessage": OK, "displayName ": "ООО Ромашка", "PIN ": "600"},
            RoutingAnswer(pin="600", display_name="ООО Ромашка"),
            "PIN 600",
        ),
        ({"result": 0, "pin": 501}, RoutingAnswer(pin="501"), "PIN 501"),
        (
            {"result": "0", "displayName": "Клиент", "PIN": "777"},
            RoutingAnswer(display_name="Клиент"),
            "PIN 777 не найден",
        ),
        ({"result": "1", "displayName": "X", "PIN": "501"}, None, 'result = "1"'),
        ({"displayName": "Без результата"}, RoutingAnswer(display_name="Без результата"), "имя"),
    ],
)
async def test_the_acceptance_answers(
    core: Core, t1: Tenant, reply: dict[str, object], expected: RoutingAnswer | None, verdict: str
) -> None:
    await people(core, t1)
    got, _, row = await ask(core, t1, Answer(200, j(reply)))
    assert got == expected
    assert verdict in row.verdict


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (Answer(500, b"oops"), "HTTP 500"),
        (Answer(200, b"<html>hi</html>", content_type="text/html"), "ответ не JSON"),
        (Answer(200, b"[]"), "ответ не JSON-объект"),
        (Answer(200, b'{"PIN":"501","pad":"' + b"x" * 17000 + b'"}'), "16 КиБ"),
        (Answer(200, j({"result": "0", "PIN": "501"}), delay_s=2.5), "Нет ответа"),
    ],
)
async def test_unusable_answers_leave_the_call_to_the_rules_once(
    core: Core, t1: Tenant, answer: Answer, reason: str
) -> None:
    await people(core, t1)
    got, _, row = await ask(core, t1, answer, timeout_s=1)  # one question, never retried
    assert got is None
    assert reason in row.verdict and row.verdict.startswith("правила маршрутизации")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (sign(F_CLIENT_ID, b'{"result":"0","PIN":"501"}', F_KEY), RoutingAnswer(pin="501")),
        ("0" * 64, None),
        (None, None),
    ],
)
async def test_the_optional_response_signature_check(
    core: Core, t1: Tenant, header: str | None, expected: RoutingAnswer | None
) -> None:
    await people(core, t1)
    headers = (("X-Client-Sign", header),) if header else ()
    answer = Answer(200, b'{"result":"0","PIN":"501"}', headers=headers)
    got, _, row = await ask(core, t1, answer, verify_crm_sign=True)
    assert got == expected
    assert ("подпись" in row.verdict) == (expected is None)


async def test_only_domains_with_the_toggle_on_are_asked(core: Core, t1: Tenant, t2: Tenant) -> None:
    async with Crm().running() as crm:
        await activate(core, t1.id, crm.url, number_info=False)
        hook = NumberInfoHook(core)
        assert await hook(query(t1)) is None
        assert await hook(query(t2)) is None  # no service at all
        await hook.aclose()
    assert crm.seen == []
    assert await log_rows(core) == []
