"""``call_back``: the CRM asks the PBX to ring an employee and then the customer (integration-api.md §4.1).

The method validates (R11), resolves the employee, runs the business checks in their order
(``user-unavailable``, ``destination-restricted``, ``domain-blocked``, ``channel-limit-reached``; each a
``"-20"``), answers ``"0"`` with the call's ``session_id`` and only then starts the engine's originate
(``vpbx.pbx.originate``) in the background; what happens to the call afterwards shows only in its events
and history.

An ``Idempotency-Key`` header (≤ 64 characters) is claimed with a unique insert **before** anything rings;
a repeat from the same domain within 10 minutes gets the first answer unchanged and places no call
(CONVENTIONS.md §11).

The sandbox (``{API_TEST}``, §6.3) validates the same way but never places a call: it answers a ``test-``
session and puts the signed ``call_events`` of a simulated answered call in the outbox. ``simulate_call``
does the same for an incoming call (answered, transferred or missed), for the cabinet's «Смоделировать
вызов».
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.integration_api.core import (
    DOMAIN_MISMATCH,
    ApiContext,
    ApiError,
    ApiMethod,
    ApiReply,
    bad_field,
    enqueue,
    envelope,
    moscow,
)
from vpbx.logs import get_logger
from vpbx.pbx.bus import SessionId
from vpbx.pbx.numbering import dialled_digits
from vpbx.pbx.outbound import OutboundRouter
from vpbx.store.models import ApiIdempotency, Domain, IncomingNumber, User, UserContactNumber

if TYPE_CHECKING:
    from vpbx.app import Core
    from vpbx.pbx.b2bua import B2bua
    from vpbx.pbx.calls import Party
    from vpbx.pbx.directory import DomainInfo

log = get_logger("vpbx.integration_api.callback")

METHOD = "call_back"
IDEMPOTENCY_WINDOW = dt.timedelta(minutes=10)
MAX_IDEMPOTENCY_KEY = 64
SIMULATED_CUSTOMER = "79161234567"  # the sandbox's caller (§6.3: the test sends' default number)
SIMULATED_LINE = "74951234567"  # a domain without lines: a line for the simulated call anyway
Scenario = Literal["answered", "transferred", "missed"]

# §3: call_back's business refusals are all "-20"; `error` tells them apart
USER_NOT_FOUND = ApiError(200, "-20", "Пользователь не найден", "user-not-found")
USER_UNAVAILABLE = ApiError(200, "-20", "Пользователь недоступен", "user-unavailable")
DESTINATION_RESTRICTED = ApiError(200, "-20", "Направление вызова запрещено", "destination-restricted")
DOMAIN_BLOCKED = ApiError(200, "-20", "Домен заблокирован", "domain-blocked")
CHANNEL_LIMIT_REACHED = ApiError(200, "-20", "Превышено число одновременных вызовов", "channel-limit-reached")
CALL_BACK_FAILED = ApiError(200, "-20", "Не удалось выполнить вызов", "call-back-failed")


@dataclass(frozen=True, slots=True)
class _Request:
    number: str  # E.164 digits, no "+"
    sipuri_login: str | None  # from_sipuri's user part (it wins over from_pin)
    sipuri_domain: str | None
    pin: str | None


@dataclass(frozen=True, slots=True)
class _Employee:
    user_id: uuid.UUID
    login: str
    pin: str
    contact_numbers: tuple[str, ...]


# --- the request ------------------------------------------------------------------------------------------


def parse_request(body: Mapping[str, Any], domain: str) -> _Request:
    """R11 in the order the fields are documented; ``domain`` (if sent) must be the caller's (§1)."""
    sent_domain = body.get("domain")
    if sent_domain is not None:
        if not isinstance(sent_domain, str):
            raise bad_field("domain")
        if sent_domain.strip().lower() != domain.lower():
            raise DOMAIN_MISMATCH.with_payload()
    raw = body.get("request_number")
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise bad_field("request_number")
    number = dialled_digits(str(raw))
    if number is None:
        raise bad_field("request_number")
    sipuri = body.get("from_sipuri")
    pin = body.get("from_pin")
    if sipuri is not None and sipuri != "":
        if not isinstance(sipuri, str):
            raise bad_field("from_sipuri")
        text = sipuri.strip()
        if text[:4].lower() == "sip:":
            text = text[4:]
        login, at, host = text.partition("@")
        if not login or not at or not host or len(text) > 320:
            raise bad_field("from_sipuri")
        return _Request(number, login, host.lower(), None)
    if pin is None or pin == "" or isinstance(pin, bool) or not isinstance(pin, str | int):
        raise bad_field("from_pin")
    text = str(pin).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 16:
        raise bad_field("from_pin")
    return _Request(number, None, None, text)


async def _employee(s: AsyncSession, domain_id: uuid.UUID, domain: str, req: _Request) -> _Employee:
    """The user the request names in the caller's domain; a group's PIN or another domain's user is no
    employee (``user-not-found``)."""
    query = select(User).where(User.domain_id == domain_id)
    if req.sipuri_login is not None:
        if req.sipuri_domain != domain.lower():
            raise USER_NOT_FOUND.with_payload()
        login = req.sipuri_login.lower()
        query = query.where((func.lower(User.name) == login) | (func.lower(User.sip_login) == login))
    else:
        query = query.where(User.pin == req.pin)
    user = (await s.scalars(query.limit(1))).first()
    if user is None:
        raise USER_NOT_FOUND.with_payload()
    numbers = await s.scalars(
        select(UserContactNumber.number)
        .where(UserContactNumber.user_id == user.id)
        .order_by(UserContactNumber.position)
    )
    return _Employee(user.id, user.name, user.pin, tuple(numbers))


# --- idempotency ----------------------------------------------------------------------------------------


def _aware(at: dt.datetime) -> dt.datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


async def _replay(ctx: ApiContext, key: str, now: dt.datetime) -> ApiReply | None:
    """The first answer to this key, if it was given within the window."""
    async with ctx.sessions() as s:
        row = await s.get(ApiIdempotency, (ctx.domain_id, key))
        if row is None or row.method != METHOD or now - _aware(row.created_at) >= IDEMPOTENCY_WINDOW:
            return None
        return ApiReply(json.loads(row.response), status=row.status)


async def _claim(
    ctx: ApiContext, key: str, now: dt.datetime, status: int, body: Mapping[str, object]
) -> ApiReply | None:
    """Record the answer under the key before anything rings; the earlier answer when another request
    with the same key got there first (None: this one is the first)."""
    async with ctx.sessions() as s:
        await s.execute(  # keys past their window are of no use: the table holds ten minutes per domain
            delete(ApiIdempotency).where(
                ApiIdempotency.domain_id == ctx.domain_id,
                ApiIdempotency.created_at < now - IDEMPOTENCY_WINDOW,
                ApiIdempotency.key != key,
            )
        )
        stale = await s.get(ApiIdempotency, (ctx.domain_id, key))
        if stale is not None and (
            stale.method != METHOD or now - _aware(stale.created_at) >= IDEMPOTENCY_WINDOW
        ):
            await s.delete(stale)
            await s.flush()
        elif stale is not None:
            return ApiReply(json.loads(stale.response), status=stale.status)
        s.add(
            ApiIdempotency(
                domain_id=ctx.domain_id,
                key=key,
                method=METHOD,
                status=status,
                response=json.dumps(body, ensure_ascii=False),
                created_at=now,
            )
        )
        try:
            await s.commit()
        except IntegrityError:
            await s.rollback()
            return await _replay(ctx, key, now) or ApiReply(CALL_BACK_FAILED.body())
    return None


# --- the method -----------------------------------------------------------------------------------------


def _now(ctx: ApiContext) -> dt.datetime:
    core = getattr(ctx.services, "core", None)
    return core.clock.now() if core is not None else dt.datetime.now(dt.UTC)


async def call_back(ctx: ApiContext, body: dict[str, Any]) -> ApiReply:
    key = ctx.headers.get("idempotency-key")
    now = _now(ctx)
    if key is not None:
        key = key.strip()
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            raise bad_field("Idempotency-Key")
        first = await _replay(ctx, key, now)
        if first is not None:
            log.info("call_back.replayed", domain=ctx.domain)
            return first
    start: Callable[[], None] | None = None
    try:
        answer, start = await _place(ctx, body, now)
        status = 200
    except ApiError as e:
        if key is None or e.status != 200:
            raise
        answer, status = e.body(), e.status
    if key is not None:
        earlier = await _claim(ctx, key, now, status, answer)
        if earlier is not None:
            return earlier  # a twin request won the key: its answer, and no second call
    if start is not None:
        start()
    return ApiReply(answer, status=status)


async def _place(
    ctx: ApiContext, body: Mapping[str, Any], now: dt.datetime
) -> tuple[dict[str, object], Callable[[], None] | None]:
    """Validate and check; the answer and what starts the call once the answer is safe."""
    req = parse_request(body, ctx.domain)
    async with ctx.sessions() as s:
        employee = await _employee(s, ctx.domain_id, ctx.domain, req)
        if ctx.sandbox:
            session_id = f"test-{uuid.uuid4()}"
            events = _callback_events(ctx.domain, session_id, employee, req.number, now)
            _enqueue_all(s, ctx.domain_id, session_id, events)
            await s.commit()
            log.info("call_back.simulated", domain=ctx.domain, session_id=session_id)
            return envelope(session_id=session_id), None
        domain_row = await s.get(Domain, ctx.domain_id)
    if domain_row is None:
        raise CALL_BACK_FAILED.with_payload()
    b2bua: B2bua | None = getattr(ctx.services, "b2bua", None)  # None: no engine runs, nothing registered
    # 1. a registered device or a contact number
    reachable = b2bua is not None and await b2bua.originator.reachable(
        domain_row.id, domain_row.name, employee.pin
    )
    if not employee.contact_numbers and not reachable:
        raise USER_UNAVAILABLE.with_payload()
    # 2. the employee's rights allow the destination
    decision = await OutboundRouter(ctx.sessions).decide(ctx.domain_id, employee.user_id, f"+{req.number}")
    if decision is None or not decision.allowed:
        raise DESTINATION_RESTRICTED.with_payload()
    # 3. no block on the domain
    if domain_row.status == "blocked":
        raise DOMAIN_BLOCKED.with_payload()
    if b2bua is None or b2bua.directory is None:
        raise CALL_BACK_FAILED.with_payload()
    info = await b2bua.directory.domain(domain_row.name)
    party = await b2bua.directory.user_by_pin(info, employee.pin) if info is not None else None
    if info is None or party is None:
        raise CALL_BACK_FAILED.with_payload()
    # 4. a free channel
    if b2bua.registry.active(info.id) >= info.channel_limit:
        raise CHANNEL_LIMIT_REACHED.with_payload()
    session_id = str(uuid.uuid4())

    def start() -> None:
        b2bua.node.spawn(
            _originate(b2bua, info, party, decision.number, session_id, employee.contact_numbers),
            "call-back-originate",
        )

    log.info("call_back.accepted", domain=ctx.domain, session_id=session_id, pin=employee.pin)
    return envelope(session_id=session_id), start


async def _originate(
    b2bua: B2bua,
    info: DomainInfo,
    party: Party,
    number: str,
    session_id: str,
    contact_numbers: tuple[str, ...],
) -> None:
    try:
        started = await b2bua.originate(
            info, party, number, session_id=SessionId(session_id), contact_numbers=contact_numbers
        )
    except Exception:
        log.exception("call_back.originate_failed", session_id=session_id)
        return
    if not started:
        log.warning("call_back.not_started", session_id=session_id)


METHODS: tuple[ApiMethod, ...] = (
    ApiMethod(
        name=METHOD,
        handler=call_back,
        log_label="запрос на совершение исходящего вызова",  # the log filter (§6.4)
    ),
)


# --- simulated calls (sandbox, «Смоделировать вызов») ----------------------------------------------------


def _event(
    state: str,
    call_type: str,
    session_id: str,
    at: dt.datetime,
    from_number: str,
    request_number: str,
    domain: str,
    *,
    from_pin: str = "",
    request_pin: str = "",
    disconnect_reason: str | None = None,
    is_record: bool | None = None,
) -> dict[str, str]:
    """One ``call_events`` body in §5.2's key order; keys that do not apply are left out."""
    out = {"state": state, "type": call_type, "session_id": session_id, "timestamp": moscow(at)}
    out["from_number"] = from_number
    if from_pin:
        out["from_pin"] = from_pin
    out["request_number"] = request_number
    if request_pin:
        out["request_pin"] = request_pin
    if disconnect_reason is not None:
        out["disconnect_reason"] = disconnect_reason
    if is_record is not None:
        out["is_record"] = "true" if is_record else "false"
    out["domain"] = domain
    return out


def _callback_events(
    domain: str, sid: str, employee: _Employee, number: str, now: dt.datetime
) -> list[dict[str, str]]:
    """A call_back that both sides answer: the employee in ``from_*`` throughout (§5.2)."""
    me, customer = f"{employee.login}@{domain}", f"sip:{number}@{domain}"
    steps: list[tuple[str, float, str | None, bool | None]] = [
        ("new", 0.0, None, None),
        ("calling", 0.3, None, None),
        ("connected", 12.0, None, None),
    ]
    steps += [("disconnected", 72.0, "5", None), ("end", 72.01, None, False)]
    return [
        _event(
            state,
            "outbound",
            sid,
            now + dt.timedelta(seconds=t),
            me,
            customer,
            domain,
            from_pin=employee.pin,
            disconnect_reason=reason,
            is_record=record,
        )
        for state, t, reason, record in steps
    ]


def _enqueue_all(
    s: AsyncSession, domain_id: uuid.UUID, session_id: str, events: list[dict[str, str]]
) -> None:
    for seq, event in enumerate(events, start=1):
        enqueue(s, domain_id, "call_events", event, session_id=session_id, seq=seq, test=True)


async def simulate_call(core: Core, domain_id: uuid.UUID, scenario: Scenario = "answered") -> str:
    """Put the signed events of a simulated incoming call in the outbox (marked as a test): answered by the
    domain's first user, transferred from the first to the second, or missed. Returns its ``test-`` id."""
    if scenario not in ("answered", "transferred", "missed"):
        raise ValueError(f"unknown scenario {scenario!r}")
    now = core.clock.now()
    session_id = f"test-{uuid.uuid4()}"
    async with core.sessions() as s:
        domain_row = await s.get(Domain, domain_id)
        if domain_row is None:
            raise ValueError("no such domain")
        domain = domain_row.name
        line = await s.scalar(
            select(IncomingNumber.number)
            .where(IncomingNumber.domain_id == domain_id)
            .order_by(IncomingNumber.created_at, IncomingNumber.number)
            .limit(1)
        )
        people = list(
            await s.scalars(select(User).where(User.domain_id == domain_id).order_by(User.pin).limit(2))
        )
        caller = f"sip:{SIMULATED_CUSTOMER}@{domain}"
        line_uri = f"sip:{(line or SIMULATED_LINE).lstrip('+')}@{domain}"
        first = (f"{people[0].name}@{domain}", people[0].pin) if people else (line_uri, "")
        second = (f"{people[1].name}@{domain}", people[1].pin) if len(people) > 1 else first

        def ev(state: str, t: float, who: tuple[str, str], **kw: Any) -> dict[str, str]:
            return _event(
                state,
                "incoming",
                session_id,
                now + dt.timedelta(seconds=t),
                caller,
                who[0],
                domain,
                request_pin=who[1],
                **kw,
            )

        events = [ev("new", 0.0, (line_uri, "")), ev("calling", 0.3, first)]
        if scenario == "answered":
            events += [ev("connected", 6.0, first), ev("disconnected", 66.0, first, disconnect_reason="5")]
            events.append(ev("end", 66.01, first, is_record=False))
        elif scenario == "transferred":
            events += [ev("connected", 6.0, first), ev("disconnected", 36.0, first, disconnect_reason="0")]
            events += [ev("calling", 36.1, second), ev("connected", 40.0, second)]
            events += [ev("disconnected", 100.0, second, disconnect_reason="5")]
            events.append(ev("end", 100.01, second, is_record=False))
        else:
            events.append(ev("end", 30.3, (line_uri, ""), is_record=False))
        _enqueue_all(s, domain_id, session_id, events)
        await s.commit()
    log.info("call_events.simulated", domain=domain, session_id=session_id, scenario=scenario)
    return session_id
