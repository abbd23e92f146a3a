"""call_back (integration-api.md §4.1) through its handler with the real engine (the B2BUA kit's node and
phones): the acceptance rows, the order of the business checks, idempotency, the sandbox and
«Смоделировать вызов»."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.unit.pbx.b2bua_kit import TENANT, Pbx, Phone, trunk
from tests.unit.pbx.test_b2bua_outbound import FakeTrunks
from vpbx.app import Core
from vpbx.integration_api import callback
from vpbx.integration_api.core import ApiContext, ApiError, ApiReply
from vpbx.integration_api.registry import all_methods
from vpbx.pbx import domains, groups, lines, users
from vpbx.pbx.numbering import dialled_digits
from vpbx.pbx.outbound import OutboundRouter
from vpbx.store.models import ApiDelivery, ApiIdempotency, Domain, User

LINE = "+74951234567"
GUIDE_BODY = {"request_number": "+74951234567", "from_sipuri": "test_user@cloudpbx.rt.ru"}


@pytest.fixture
async def pbx(core: Core) -> AsyncIterator[Pbx]:
    p = await Pbx.create(core)
    async with core.sessions() as s:
        await lines.create_number(s, p.domain_id, lines.NumberInput(number=LINE))
        await s.commit()
    p.b2bua.outbound = OutboundRouter(core.sessions)
    p.b2bua.trunks = FakeTrunks(trunk(p.domain_id, "Main", "198.51.100.60"))
    yield p
    await p.node.stop()


@pytest.fixture
async def ivanov(pbx: Pbx) -> Phone:
    """User 101 has a registered phone; 102 and 103 have none."""
    phone = pbx.phone("101", "192.0.2.11")
    await pbx.register(phone)
    return phone


def context(pbx: Pbx, *, sandbox: bool = False, key: str | None = None, domain_id: Any = None) -> ApiContext:
    headers = {"idempotency-key": key} if key is not None else {}
    return ApiContext(
        domain_id=domain_id or pbx.domain_id,
        domain=TENANT,
        client_id="000003C405E6525C64C184258C44EC99",
        source_ip="203.0.113.10",
        sandbox=sandbox,
        base_url="https://api-test.example" if sandbox else "https://api.example",
        headers=headers,
        sessions=pbx.core.sessions,
        services=SimpleNamespace(core=pbx.core, b2bua=pbx.b2bua),
    )


async def call_back(ctx: ApiContext, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The handler's answer as the gateway sends it: its reply, or the refusal it raised."""
    try:
        reply: ApiReply = await callback.call_back(ctx, body)
    except ApiError as e:
        return e.status, e.body()
    assert isinstance(reply.body, dict)
    return reply.status, dict(reply.body)


async def test_the_method_is_in_the_gateways_table() -> None:
    assert all_methods()["call_back"].handler is callback.call_back


async def test_answer_comes_before_anything_rings_then_the_employee_is_rung(pbx: Pbx, ivanov: Phone) -> None:
    status, body = await call_back(context(pbx), {"request_number": "+79161234567", "from_pin": "101"})
    assert status == 200 and body["result"] == "0" and body["resultMessage"] == "Операция выполнена успешно"
    sid = body["session_id"]
    assert uuid.UUID(sid).version == 4 and sid == sid.lower()
    assert list(body) == ["result", "resultMessage", "session_id"]
    assert ivanov.unread() == [] and pbx.events() == []  # answered first
    await pbx.settle()
    await ivanov.expect("INVITE")
    new = pbx.bus.events[0]
    assert (new.state, new.session_id, new.type, new.from_pin, new.call_kind) == (
        "new",
        sid,
        "outbound",
        "101",
        "callback",
    )
    assert new.request_number == f"sip:79161234567@{TENANT}"


async def test_guide_vector_body_names_a_user_not_in_the_domain(pbx: Pbx, ivanov: Phone) -> None:
    status, body = await call_back(context(pbx), GUIDE_BODY)
    assert (status, body) == (
        200,
        {"result": "-20", "resultMessage": "Пользователь не найден", "error": "user-not-found"},
    )
    await pbx.settle()
    assert pbx.events() == [] and ivanov.unread() == []


async def test_a_user_without_device_or_contact_number_is_unavailable(pbx: Pbx, ivanov: Phone) -> None:
    status, body = await call_back(context(pbx), {"request_number": "+79161234567", "from_pin": "102"})
    assert (status, body) == (
        200,
        {"result": "-20", "resultMessage": "Пользователь недоступен", "error": "user-unavailable"},
    )
    await pbx.settle()
    assert pbx.events() == []


async def test_a_contact_number_makes_the_user_available(pbx: Pbx, core: Core) -> None:
    async with core.sessions() as s:
        user = await s.scalar(select(User).where(User.domain_id == pbx.domain_id, User.pin == "102"))
        assert user is not None
        await users.update_user(
            s,
            pbx.domain_id,
            user.id,
            users.UserInput(
                name=user.name,
                display_name=user.display_name,
                pin="102",
                sip_login=user.sip_login,
                contact_numbers=["+79031234567"],
            ),
            box=core.box,
        )
        await s.commit()
    _, body = await call_back(context(pbx), {"request_number": "+79161234567", "from_pin": "102"})
    assert body["result"] == "0"
    await pbx.settle()
    assert pbx.events() == ["new", "calling"]  # the mobile, through the trunk


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"request_number": "12", "from_pin": "101"}, "request_number"),
        ({"request_number": "+79161234567"}, "from_pin"),
        ({"request_number": "+79161234567", "from_pin": ""}, "from_pin"),
        ({"request_number": "+79161234567", "from_pin": True}, "from_pin"),
        ({"request_number": "+7916abc4567", "from_pin": "101"}, "request_number"),
        ({"request_number": None, "from_pin": "101"}, "request_number"),
        ({"from_pin": "101"}, "request_number"),
        ({"request_number": "+79161234567", "from_sipuri": "no-at-sign"}, "from_sipuri"),
        ({"request_number": "+79161234567", "from_sipuri": 5}, "from_sipuri"),
        ({"request_number": "1234567890123456", "from_pin": "101"}, "request_number"),
    ],
)
async def test_bad_fields_are_r11(pbx: Pbx, ivanov: Phone, body: dict[str, Any], field: str) -> None:
    status, answer = await call_back(context(pbx), body)
    assert status == 400
    assert answer == {
        "result": "-1",
        "resultMessage": f"Некорректное значение поля {field}",
        "error": "bad-request",
        "field": field,
    }
    await pbx.settle()
    assert pbx.events() == []


def test_request_number_spellings() -> None:
    for raw in ("+79161234567", "79161234567", "89161234567", "9161234567", "+7 (916) 123-45-67"):
        assert dialled_digits(raw) == "79161234567"
    assert dialled_digits("+442071234567") == "442071234567"
    assert dialled_digits("12") is None and dialled_digits("+7916123456789012") is None
    assert dialled_digits("7916123456٧") is None  # digits are ASCII only


async def test_from_sipuri_wins_over_from_pin(pbx: Pbx, ivanov: Phone) -> None:
    body = {"request_number": "+79161234567", "from_sipuri": f"user102@{TENANT}", "from_pin": "101"}
    assert (await call_back(context(pbx), body))[1]["error"] == "user-unavailable"  # 102's, not 101's
    body = {"request_number": "+79161234567", "from_sipuri": f"sip:User101@{TENANT.upper()}"}
    assert (await call_back(context(pbx), body))[1]["result"] == "0"


async def test_groups_and_other_domains_users_are_not_employees(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    async with core.sessions() as s:
        await groups.create_group(
            s, pbx.domain_id, groups.GroupInput(name="Sales", pin="600", members=["101"])
        )
        other = await domains.create_domain(s, domains.DomainInput(name="other.vpbx.test"))
        await users.create_user(
            s, other.id, users.UserInput(name="stranger", display_name="S", pin="104"), box=core.box
        )
        await s.commit()
    for body in (
        {"request_number": "+79161234567", "from_pin": "600"},
        {"request_number": "+79161234567", "from_pin": "104"},
        {"request_number": "+79161234567", "from_sipuri": "stranger@other.vpbx.test"},
        {"request_number": "+79161234567", "from_sipuri": "user101@other.vpbx.test"},
    ):
        assert (await call_back(context(pbx), body))[1]["error"] == "user-not-found", body
    await pbx.settle()
    assert pbx.events() == []


async def test_a_domain_field_must_be_the_callers(pbx: Pbx, ivanov: Phone) -> None:
    body = {"request_number": "+79161234567", "from_pin": "101", "domain": "other.vpbx.test"}
    assert (await call_back(context(pbx), body))[1]["result"] == "-12"
    body["domain"] = TENANT.upper()
    assert (await call_back(context(pbx), body))[1]["result"] == "0"


async def test_the_users_rights_restrict_the_destination(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    async with core.sessions() as s:
        await s.execute(update(User).where(User.pin == "101").values(allow_international=False))
        await s.commit()
    status, body = await call_back(context(pbx), {"request_number": "+442071234567", "from_pin": "101"})
    assert (status, body["result"], body["error"]) == (200, "-20", "destination-restricted")
    await pbx.settle()
    assert pbx.events() == []


async def test_checks_run_in_order_unavailable_before_restricted(pbx: Pbx, core: Core) -> None:
    async with core.sessions() as s:
        await s.execute(update(User).where(User.pin == "102").values(allow_international=False))
        await s.commit()
    body = {"request_number": "+442071234567", "from_pin": "102"}
    assert (await call_back(context(pbx), body))[1]["error"] == "user-unavailable"


async def test_a_blocked_domain_places_no_call(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    async with core.sessions() as s:
        await s.execute(update(Domain).where(Domain.id == pbx.domain_id).values(status="blocked"))
        await s.commit()
    body = {"request_number": "+79161234567", "from_pin": "101"}
    assert (await call_back(context(pbx), body))[1]["error"] == "domain-blocked"


async def test_no_free_channel(core: Core) -> None:
    pbx = await Pbx.create(core, channel_limit=1)
    try:
        pbx.b2bua.outbound = OutboundRouter(core.sessions)
        await pbx.register(pbx.phone("101", "192.0.2.11"))
        body = {"request_number": "+79161234567", "from_pin": "101"}
        assert (await call_back(context(pbx), body))[1]["result"] == "0"
        await pbx.settle()  # the first call_back rings: one channel in use
        status, answer = await call_back(context(pbx), body)
        assert (status, answer["error"], answer["resultMessage"]) == (
            200,
            "channel-limit-reached",
            "Превышено число одновременных вызовов",
        )
    finally:
        await pbx.node.stop()


async def test_same_idempotency_key_twice_one_call(pbx: Pbx, ivanov: Phone) -> None:
    body = {"request_number": "+79161234567", "from_pin": "101"}
    first = await call_back(context(pbx, key="order-17"), body)
    await pbx.settle()
    second = await call_back(context(pbx, key="order-17"), body)
    await pbx.settle()
    assert first == second and first[1]["result"] == "0"
    assert pbx.events().count("new") == 1
    assert len([m for m in ivanov.unread() if m == "INVITE"]) == 1
    other = await call_back(context(pbx, key="order-18"), body)
    assert other[1]["session_id"] != first[1]["session_id"]


async def test_a_refusal_is_remembered_under_its_key_too(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    body = {"request_number": "+79161234567", "from_pin": "102"}
    first = await call_back(context(pbx, key="k1"), body)
    await pbx.register(pbx.phone("102", "192.0.2.12"))  # 102 is reachable now, but the key answers
    assert await call_back(context(pbx, key="k1"), body) == first
    assert first[1]["error"] == "user-unavailable"
    async with core.sessions() as s:
        row = await s.get(ApiIdempotency, (pbx.domain_id, "k1"))
        assert row is not None and json.loads(row.response) == first[1]


async def test_a_key_older_than_ten_minutes_places_a_new_call(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    body = {"request_number": "+79161234567", "from_pin": "101"}
    first = await call_back(context(pbx, key="old"), body)
    async with core.sessions() as s:
        row = await s.get(ApiIdempotency, (pbx.domain_id, "old"))
        assert row is not None
        row.created_at = row.created_at - callback.IDEMPOTENCY_WINDOW
        await s.commit()
    again = await call_back(context(pbx, key="old"), body)
    assert again[1]["result"] == "0" and again[1]["session_id"] != first[1]["session_id"]


async def test_keys_belong_to_their_domain(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    async with core.sessions() as s:
        other = await domains.create_domain(s, domains.DomainInput(name="other.vpbx.test"))
        await s.commit()
    body = {"request_number": "+79161234567", "from_pin": "101"}
    mine = await call_back(context(pbx, key="shared"), body)
    theirs = await call_back(context(pbx, key="shared", domain_id=other.id), body)
    assert mine[1]["result"] == "0" and theirs[1]["error"] == "user-not-found"


async def test_an_idempotency_key_over_64_characters_is_r11(pbx: Pbx, ivanov: Phone) -> None:
    status, body = await call_back(
        context(pbx, key="k" * 65), {"request_number": "+79161234567", "from_pin": "101"}
    )
    assert status == 400 and body["field"] == "Idempotency-Key"
    await pbx.settle()
    assert pbx.events() == []


async def _outbox(core: Core, session_id: str) -> list[ApiDelivery]:
    async with core.sessions() as s:
        rows = await s.scalars(
            select(ApiDelivery).where(ApiDelivery.session_id == session_id).order_by(ApiDelivery.seq)
        )
        return list(rows)


async def test_sandbox_places_no_call_and_queues_a_simulated_answered_call(pbx: Pbx, core: Core) -> None:
    # 102 has no phone: the sandbox needs none
    status, body = await call_back(
        context(pbx, sandbox=True), {"request_number": "89161234567", "from_pin": "102"}
    )
    assert status == 200 and body["result"] == "0" and body["session_id"].startswith("test-")
    uuid.UUID(body["session_id"].removeprefix("test-"))
    await pbx.settle()
    assert pbx.events() == [] and pbx.registry.active(pbx.domain_id) == 0
    rows = await _outbox(core, body["session_id"])
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert all(r.test and r.method == "call_events" and r.domain_id == pbx.domain_id for r in rows)
    events = [json.loads(r.body) for r in rows]
    assert [e["state"] for e in events] == ["new", "calling", "connected", "disconnected", "end"]
    assert list(events[3]) == [
        "state",
        "type",
        "session_id",
        "timestamp",
        "from_number",
        "from_pin",
        "request_number",
        "disconnect_reason",
        "domain",
    ]
    assert events[0]["type"] == "outbound" and events[0]["from_number"] == f"user102@{TENANT}"
    assert events[0]["request_number"] == f"sip:79161234567@{TENANT}"
    assert events[4]["is_record"] == "false" and events[3]["disconnect_reason"] == "5"
    assert len(events[0]["timestamp"]) == len("2025-06-12 11:00:00.120")


async def test_sandbox_still_validates(pbx: Pbx) -> None:
    assert (await call_back(context(pbx, sandbox=True), {"request_number": "12", "from_pin": "101"}))[
        0
    ] == 400
    assert (await call_back(context(pbx, sandbox=True), GUIDE_BODY))[1]["error"] == "user-not-found"


@pytest.mark.parametrize(
    ("scenario", "states"),
    [
        ("answered", ["new", "calling", "connected", "disconnected", "end"]),
        (
            "transferred",
            ["new", "calling", "connected", "disconnected", "calling", "connected", "disconnected", "end"],
        ),
        ("missed", ["new", "calling", "end"]),
    ],
)
async def test_simulate_call(pbx: Pbx, core: Core, scenario: callback.Scenario, states: list[str]) -> None:
    sid = await callback.simulate_call(core, pbx.domain_id, scenario)
    assert sid.startswith("test-")
    events = [json.loads(r.body) for r in await _outbox(core, sid)]
    assert [e["state"] for e in events] == states
    assert {e["type"] for e in events} == {"incoming"} and {e["session_id"] for e in events} == {sid}
    assert events[0]["from_number"] == f"sip:79161234567@{TENANT}"
    assert events[0]["request_number"] == f"sip:74951234567@{TENANT}"
    assert events[1]["request_pin"] == "101" and events[1]["request_number"] == f"user101@{TENANT}"
    if scenario == "transferred":
        assert events[3]["disconnect_reason"] == "0" and events[5]["request_pin"] == "102"
    if scenario == "missed":
        assert events[-1]["request_number"] == f"sip:74951234567@{TENANT}"


async def test_expired_keys_are_purged(pbx: Pbx, ivanov: Phone, core: Core) -> None:
    body = {"request_number": "+79161234567", "from_pin": "101"}
    await call_back(context(pbx, key="a"), body)
    async with core.sessions() as s:
        row = await s.get(ApiIdempotency, (pbx.domain_id, "a"))
        assert row is not None
        row.created_at = row.created_at - callback.IDEMPOTENCY_WINDOW
        await s.commit()
    await call_back(context(pbx, key="b"), body)
    async with core.sessions() as s:
        keys = set(
            await s.scalars(select(ApiIdempotency.key).where(ApiIdempotency.domain_id == pbx.domain_id))
        )
    assert keys == {"b"}
