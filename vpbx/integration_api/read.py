"""Integration API read methods (integration-api.md §4.3, §4.4) and the extension methods of §4.7.

Each handler does its work in one transaction (``ctx.sessions.begin()``), and every query filters by the
caller's domain: another domain's call or user is simply "not found".

§4.7 decisions (ours):

* ``internal`` and ``local`` calls are always allowed in this PBX (no user right withdraws them), so they
  always read ``true``; ``set_user_restrictions`` accepts ``true`` for them and refuses ``false`` with R11
  naming ``allowed.<key>``.
* Domain-level restrictions do not exist yet, so ``-19`` (``restricted-by-domain``) cannot happen for now;
  the check has its place in ``set_user_restrictions`` for when they arrive.
* There is no domain audit log yet; a change of rights goes to the platform log (``api.rights_changed``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.integration_api.core import (
    CALL_IN_PROGRESS,
    RESTRICTED_BY_DOMAIN,
    SESSION_NOT_FOUND,
    USER_NOT_FOUND,
    ApiContext,
    ApiMethod,
    ApiReply,
    bad_field,
    envelope,
    moscow,
    parse_period,
)
from vpbx.logs import get_logger
from vpbx.pbx.history import session_log_string
from vpbx.store.models import CallRecord, Charge, User

log = get_logger("vpbx.integration_api")

MAX_SESSION_ID = 64
MAX_CHARGES = 10_000  # rows of user_calls_charges (§4.7); beyond, "truncated": true
RIGHTS = ("internal", "local", "mobile", "long_distance", "international")
ALWAYS_ALLOWED = ("internal", "local")
USER_RIGHT_COLUMNS = {
    "mobile": "allow_mobile",
    "long_distance": "allow_long_distance",
    "international": "allow_international",
}
DIRECTIONS = {"incoming": 1, "outbound": 2, "internal": 3}


# --- field readers (R11) ------------------------------------------------------------------------------------


def _pin(data: dict[str, Any], name: str = "user_pin", *, required: bool = False) -> str | None:
    """A PIN given as a string or a number; R11 for anything else (a list, a bool, an empty string)."""
    value = data.get(name)
    if value is None:
        if required:
            raise bad_field(name)
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise bad_field(name)
    text = str(value).strip()
    if not text.isdigit() or len(text) > 16:
        raise bad_field(name)
    return text


def _session_id(data: dict[str, Any]) -> str:
    value = data.get("session_id")
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_SESSION_ID:
        raise bad_field("session_id")
    return value.strip()


def _pin_order(pin: str) -> tuple[int, str]:
    return (int(pin), pin) if pin.isdigit() else (10**9, pin)


async def _users(s: AsyncSession, ctx: ApiContext, pin: str | None) -> list[User]:
    query = select(User).where(User.domain_id == ctx.domain_id)
    if pin is not None:
        query = query.where(User.pin == pin)
    return sorted((await s.scalars(query)).all(), key=lambda u: _pin_order(u.pin))


# --- §4.3 users_info ----------------------------------------------------------------------------------------


async def users_info(ctx: ApiContext, data: dict[str, Any]) -> ApiReply:
    pin = _pin(data)
    async with ctx.sessions.begin() as s:
        found = await _users(s, ctx, pin)
    users = [
        {
            "display_name": u.display_name,
            "name": u.name,
            "pin": u.pin,
            "sipuri": f"{u.name}@{ctx.domain}",
            "email": u.email or None,
        }
        for u in found
    ]
    return ApiReply(envelope(users=users))


# --- §4.4 call_info -----------------------------------------------------------------------------------------


def call_info_of(record: CallRecord, domain: str) -> dict[str, object]:
    """A finished call as ``call_info``'s ``info`` (and the history export's row) shows it."""
    if record.call_type == "incoming" and record.line:
        dest = f"sip:{record.line}@{domain}"
    else:
        dest = record.callee_number
    failed = record.status_code is not None and record.status_code >= 300
    return {
        "call_type": 3 if record.call_kind == "callback" else 1,
        "direction": DIRECTIONS[record.call_type],
        "state": 1 if record.answered_at is not None else 2,
        "orig_number": record.caller_number,
        "orig_pin": record.caller_pin or None,
        "dest_number": dest,
        "answering_sipuri": record.answering_uri or None,
        "answering_pin": record.answering_pin or None,
        "start_call_date": str(int(record.started_at.timestamp())),
        "duration": record.duration_s,
        "session_log": session_log_string(record.session_log),
        "is_voicemail": record.is_voicemail,
        "is_record": record.is_record,
        "is_fax": False,
        "status_code": str(record.status_code) if failed else "0",
        "status_string": (record.status_text or None) if failed else None,
    }


async def call_info(ctx: ApiContext, data: dict[str, Any]) -> ApiReply:
    session_id = _session_id(data)
    async with ctx.sessions.begin() as s:
        record = await s.scalar(
            select(CallRecord).where(
                CallRecord.domain_id == ctx.domain_id, CallRecord.session_id == session_id
            )
        )
    if record is None:
        raise SESSION_NOT_FOUND.with_payload(info=None)
    if record.ended_at is None:
        raise CALL_IN_PROGRESS.with_payload(info=None)
    return ApiReply(envelope(info=call_info_of(record, ctx.domain)))


# --- §4.7 user_calls_charges --------------------------------------------------------------------------------


def _digits(number: str) -> str | None:
    user = number.removeprefix("sip:").split("@", 1)[0].lstrip("+")
    return user if user.isdigit() else None


async def user_calls_charges(ctx: ApiContext, data: dict[str, Any]) -> ApiReply:
    start, end = parse_period(data)
    pin = _pin(data)
    async with ctx.sessions.begin() as s:
        query = (
            select(Charge, User.pin, CallRecord)
            .outerjoin(User, (User.id == Charge.user_id) & (User.domain_id == ctx.domain_id))
            .outerjoin(
                CallRecord,
                (CallRecord.session_id == Charge.session_id) & (CallRecord.domain_id == ctx.domain_id),
            )
            .where(Charge.domain_id == ctx.domain_id, Charge.created_at >= start, Charge.created_at < end)
            .order_by(Charge.created_at, Charge.id)
            .limit(MAX_CHARGES + 1)
        )
        if pin is not None:
            user_id = await s.scalar(select(User.id).where(User.domain_id == ctx.domain_id, User.pin == pin))
            if user_id is None:
                raise USER_NOT_FOUND.with_payload(charges=[])
            query = query.where(Charge.user_id == user_id)
        rows = (await s.execute(query)).all()
    charges = []
    for charge, user_pin, call in rows[:MAX_CHARGES]:
        external = None
        if call is not None:
            external = _digits(call.callee_number if call.call_type == "outbound" else call.caller_number)
        charges.append(
            {
                "date": moscow(charge.created_at, millis=False),
                "type": charge.kind,
                "session_id": charge.session_id,
                "user_pin": user_pin,
                "number": external,
                "direction": DIRECTIONS[call.call_type] if call is not None else None,
                "duration": call.duration_s if call is not None else None,
                "amount": f"{charge.amount:.2f}",
                "currency": "RUB",
                "description": charge.description,
            }
        )
    return ApiReply(envelope(truncated=len(rows) > MAX_CHARGES, charges=charges))


# --- §4.7 user restrictions ---------------------------------------------------------------------------------


def _restrictions(user: User) -> dict[str, object]:
    allowed = dict.fromkeys(ALWAYS_ALLOWED, True)
    allowed.update({right: bool(getattr(user, col)) for right, col in USER_RIGHT_COLUMNS.items()})
    return {"user_pin": user.pin, "allowed": {right: allowed[right] for right in RIGHTS}}


async def get_user_restrictions(ctx: ApiContext, data: dict[str, Any]) -> ApiReply:
    pin = _pin(data)
    async with ctx.sessions.begin() as s:
        found = await _users(s, ctx, pin)
    if pin is not None and not found:
        raise USER_NOT_FOUND.with_payload(restrictions=[])
    return ApiReply(envelope(restrictions=[_restrictions(u) for u in found]))


def domain_forbids(right: str) -> bool:
    """Whether a domain-level restriction forbids granting ``right``; none exist yet (-19 cannot happen)."""
    del right
    return False


async def set_user_restrictions(ctx: ApiContext, data: dict[str, Any]) -> ApiReply:
    pin = _pin(data, required=True)
    allowed = data.get("allowed")
    if not isinstance(allowed, dict) or not allowed:
        raise bad_field("allowed")
    for right, value in allowed.items():
        if right not in RIGHTS or not isinstance(value, bool):
            raise bad_field(f"allowed.{right}" if right in RIGHTS else "allowed")
        if right in ALWAYS_ALLOWED and not value:
            raise bad_field(f"allowed.{right}")
    async with ctx.sessions.begin() as s:
        user = await s.scalar(select(User).where(User.domain_id == ctx.domain_id, User.pin == pin))
        if user is None:
            raise USER_NOT_FOUND.with_payload()
        if any(value and domain_forbids(right) for right, value in allowed.items()):
            raise RESTRICTED_BY_DOMAIN.with_payload()
        changed = {}
        for right, column in USER_RIGHT_COLUMNS.items():
            if right in allowed and getattr(user, column) != allowed[right]:
                setattr(user, column, allowed[right])
                changed[right] = allowed[right]
        entry = _restrictions(user)
    if changed:
        log.info("api.rights_changed", domain_id=str(ctx.domain_id), user_pin=pin, changed=changed)
    return ApiReply(envelope(restrictions=[entry]))


_USERS_SCHEMA = {"type": "object", "properties": {"user_pin": {"type": ["string", "integer"]}}}
_PERIOD = {"date_start": {"type": ["string", "integer"]}, "date_end": {"type": ["string", "integer"]}}

METHODS: tuple[ApiMethod, ...] = (
    ApiMethod(
        name="users_info",
        handler=users_info,
        limit=30,
        log_label="запрос адресной книги пользователей домена",
        request_schema=_USERS_SCHEMA,
    ),
    ApiMethod(
        name="call_info",
        handler=call_info,
        limit=100,
        log_label="запрос информации о вызове",
        error_payload={"info": None},
        request_schema={
            "type": "object",
            "required": ["session_id"],
            "properties": {"session_id": {"type": "string", "maxLength": MAX_SESSION_ID}},
        },
    ),
    ApiMethod(
        name="user_calls_charges",
        handler=user_calls_charges,
        limit=30,
        request_schema={
            "type": "object",
            "required": ["date_start", "date_end"],
            "properties": {**_PERIOD, "user_pin": {"type": ["string", "integer"]}},
        },
    ),
    ApiMethod(
        name="get_user_restrictions", handler=get_user_restrictions, limit=30, request_schema=_USERS_SCHEMA
    ),
    ApiMethod(
        name="set_user_restrictions",
        handler=set_user_restrictions,
        limit=30,
        request_schema={
            "type": "object",
            "required": ["user_pin", "allowed"],
            "properties": {
                "user_pin": {"type": ["string", "integer"]},
                "allowed": {
                    "type": "object",
                    "properties": {right: {"type": "boolean"} for right in RIGHTS},
                    "additionalProperties": False,
                },
            },
        },
    ),
)
