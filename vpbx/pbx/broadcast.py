"""Broadcast calls: the engine's side of the autoinformer (autoinformer.md §3.4–§3.5, §5, §7.1).

The PBX dials one number through the domain's trunk from a campaign's caller ID, plays a message to whoever
answers, listens for keys (RFC 4733 and SIP INFO) and acts on the first mapped one: connect to an operator
within the same call and ``session_id``, repeat, confirm, opt out, hang up. It reports raw facts
(``BroadcastResult``); the autoinformer turns them into an outcome and a contact status.

This module is the contract between the two: the request and result types and the ``BroadcastDialer``
protocol. The autoinformer depends on it, the engine implements it; the engine never imports
``vpbx.autoinformer``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

ActionName = Literal["connect", "repeat", "confirm", "opt_out", "hangup"]
TargetType = Literal["user", "group", "menu", "number"]
AmdResult = Literal["human", "machine", "unknown"]

AI_NAMESPACE = uuid.UUID("6f1d8a52-3c47-4b8e-9a3f-2d1c0b9e8a71")


def broadcast_ids(dispatch_key: str) -> tuple[str, str]:
    """``(session_id, call_id)`` of the attempt with this dispatch key (§7.1): both derive from the key, so a
    second INVITE for one key is refused by the engine (the call record's ``session_id`` is unique) and a
    restart finds the call again by either."""
    sid = uuid.uuid5(AI_NAMESPACE, dispatch_key)
    return str(sid), f"ai-{sid.hex}"


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyAction:
    """What a key does (§3.5). ``prompt_id`` is an optional stored prompt played first: the confirmation of
    ``confirm``/``opt_out``, the «оператор недоступен» of ``connect``."""

    action: ActionName
    target_type: TargetType | None = None
    target: str | None = None  # a PIN (user, group, menu) or an E.164 number
    prompt_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AmdSettings:
    analysis_s: float = 3.5
    initial_silence_s: float = 2.5
    greeting_s: float = 1.5
    after_greeting_silence_s: float = 0.8
    on_machine: Literal["hangup", "leave_message"] = "hangup"


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastRequest:
    domain_id: uuid.UUID
    session_id: str
    call_id: str
    number: str  # digits, E.164 without "+"
    caller_id: str  # digits: one of the domain's lines
    ring_timeout_s: int
    message_prompt_id: str  # the whole message for this contact, one stored prompt (8 kHz)
    repeat: int = 1  # plays of the message, 1 s apart
    max_extra_repeats: int = 3  # the ``repeat`` key's limit per call
    dtmf_wait_s: float = 5.0  # keys still count this long after the last play
    actions: Mapping[str, KeyAction] = field(default_factory=dict)
    record: bool = False
    operator_display: str = ""  # «Автоинформатор: <campaign name>», shown on the operator's phone
    operator_timeout_s: float = 30.0
    amd: AmdSettings | None = None  # None = answering-machine detection off


@dataclass(frozen=True, slots=True, kw_only=True)
class BroadcastResult:
    """What happened on one dial. ``sip_code``: the INVITE's final answer (200 when answered; 408 on our ring
    timeout; None when no response came at all: transport error, no trunk)."""

    sip_code: int | None
    started_at: dt.datetime
    answered_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    listen_s: float = 0.0  # seconds of message played to the recipient
    played_full: bool = False  # the message played to its end at least once
    digits: str = ""  # keys in the order pressed
    action: ActionName | None = None  # the action of the first mapped key
    operator_target: str | None = None
    operator_answered: bool | None = None
    amd_result: AmdResult | None = None
    detail: str = ""  # e.g. "no_trunk", "channels", "duplicate"


class BroadcastDialer(Protocol):
    async def dial(self, request: BroadcastRequest) -> BroadcastResult:
        """Place the call and return when it has ended. Never raises for call failures (they are results);
        refuses (``detail`` "duplicate", no INVITE sent) a ``call_id``/``session_id`` it has seen before."""
        ...
