"""Typed SQLAlchemy models. Every tenant-owned row carries ``domain_id``; ids are UUIDv4."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any, ClassVar, Literal, NewType, get_args

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from vpbx.store.types import Money, UtcDateTime

DomainId = NewType("DomainId", uuid.UUID)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: UtcDateTime(),
        Decimal: Money(),
        uuid.UUID: Uuid(),
    }


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


# --- platform -----------------------------------------------------------------------------------------------


class Operator(Timestamped, Base):
    """A platform operator: creates domains, blocks them, sets the price list."""

    __tablename__ = "operators"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))


class Domain(Timestamped, Base):
    __tablename__ = "domains"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="active")
    blocked_reason: Mapped[str | None] = mapped_column(String(500))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Moscow")
    channel_limit: Mapped[int] = mapped_column(Integer, default=10)
    # recording of every call of the domain (a user's own ``record_calls`` adds theirs), kept this many days
    record_calls: Mapped[bool] = mapped_column(Boolean, default=False)
    recording_retention_days: Mapped[int] = mapped_column(Integer, default=90)
    # music on hold: a stored prompt of the domain; NULL = the platform's tone
    moh_prompt_id: Mapped[str | None] = mapped_column(String(64))
    # «Резерв линий для обычных вызовов»: channels the autoinformer leaves free (autoinformer.md §3.4)
    ai_line_reserve: Mapped[int] = mapped_column(Integer, default=1)
    __table_args__ = (
        CheckConstraint("status in ('active', 'blocked')", name="status"),
        CheckConstraint("recording_retention_days between 1 and 3650", name="recording_retention_days"),
    )


# --- directory ----------------------------------------------------------------------------------------------


class User(Timestamped, Base):
    """An employee («абонент»): cabinet account, extension (PIN) and SIP credentials."""

    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(128))
    pin: Mapped[str] = mapped_column(String(6))
    sip_login: Mapped[str] = mapped_column(String(64))
    sip_password_enc: Mapped[str] = mapped_column(Text)
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(16), default="user")
    web_password_hash: Mapped[str | None] = mapped_column(String(255))
    record_calls: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_international: Mapped[bool] = mapped_column(Boolean, default=False)
    allow_long_distance: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_mobile: Mapped[bool] = mapped_column(Boolean, default=True)
    mobile_delay_s: Mapped[int] = mapped_column(Integer, default=15)
    dnd: Mapped[bool] = mapped_column(Boolean, default=False)  # Do Not Disturb: calls to the user get busy
    dnd_since: Mapped[dt.datetime | None] = mapped_column()  # when DND was switched on (None: off)
    contact_numbers: Mapped[list[UserContactNumber]] = relationship(
        order_by="UserContactNumber.position", cascade="all, delete-orphan", lazy="selectin"
    )
    __table_args__ = (
        UniqueConstraint("domain_id", "name"),
        UniqueConstraint("domain_id", "pin"),
        UniqueConstraint("domain_id", "sip_login"),
        CheckConstraint("role in ('admin', 'user')", name="role"),
    )


class UserContactNumber(Base):
    """A number rung after the user's devices (mobile forwarding), in order."""

    __tablename__ = "user_contact_numbers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    number: Mapped[str] = mapped_column(String(16))


class IncomingNumber(Timestamped, Base):
    """A line: an E.164 number owned by exactly one domain."""

    __tablename__ = "incoming_numbers"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    number: Mapped[str] = mapped_column(String(16), unique=True)
    label: Mapped[str] = mapped_column(String(128), default="")


class ActionTarget:
    """Where a call goes: shared by routing rules and a group's fall-through."""

    action: Mapped[str] = mapped_column(String(16))
    target_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    target_group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("call_groups.id"))
    target_menu_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("voice_menus.id"))
    target_number: Mapped[str | None] = mapped_column(String(16))


class CallGroup(Timestamped, Base):
    __tablename__ = "call_groups"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    pin: Mapped[str] = mapped_column(String(6))
    strategy: Mapped[str] = mapped_column(String(16), default="simultaneous")
    member_timeout_s: Mapped[int] = mapped_column(Integer, default=20)
    overall_timeout_s: Mapped[int] = mapped_column(Integer, default=60)
    # fall-through when nobody answers; NULL action = hang up
    fallthrough_action: Mapped[str | None] = mapped_column(String(16))
    fallthrough_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    fallthrough_group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("call_groups.id"))
    fallthrough_menu_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("voice_menus.id"))
    fallthrough_number: Mapped[str | None] = mapped_column(String(16))
    members: Mapped[list[CallGroupMember]] = relationship(
        order_by="CallGroupMember.position", cascade="all, delete-orphan", lazy="selectin"
    )
    __table_args__ = (
        UniqueConstraint("domain_id", "pin"),
        UniqueConstraint("domain_id", "name"),
        CheckConstraint("strategy in ('simultaneous', 'sequential', 'cyclic')", name="strategy"),
    )


class CallGroupMember(Base):
    __tablename__ = "call_group_members"
    group_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("call_groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class Schedule(Timestamped, Base):
    """Work hours per weekday and holidays, read in the domain's time zone."""

    __tablename__ = "schedules"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    intervals: Mapped[list[ScheduleInterval]] = relationship(
        order_by=lambda: [ScheduleInterval.weekday, ScheduleInterval.start_min],
        cascade="all, delete-orphan",
        lazy="selectin",
    )
    holidays: Mapped[list[ScheduleHoliday]] = relationship(
        order_by="ScheduleHoliday.day", cascade="all, delete-orphan", lazy="selectin"
    )
    __table_args__ = (UniqueConstraint("domain_id", "name"),)


class ScheduleInterval(Base):
    __tablename__ = "schedule_intervals"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    schedule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    weekday: Mapped[int] = mapped_column(Integer)  # 0 = Monday
    start_min: Mapped[int] = mapped_column(Integer)
    end_min: Mapped[int] = mapped_column(Integer)
    __table_args__ = (
        CheckConstraint("weekday between 0 and 6", name="weekday"),
        CheckConstraint("start_min >= 0 and start_min < end_min and end_min <= 1440", name="span"),
    )


class ScheduleHoliday(Base):
    __tablename__ = "schedule_holidays"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    schedule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"), index=True)
    day: Mapped[dt.date] = mapped_column(Date)
    name: Mapped[str] = mapped_column(String(128), default="")
    __table_args__ = (UniqueConstraint("schedule_id", "day"),)


class VoiceMenu(Timestamped, Base):
    """A voice menu (IVR): a greeting played ``repeat_count`` times while the caller chooses a key.

    The greeting is either an uploaded recording or ``prompt_text`` spoken in ``greeting_voice``; either way
    ``greeting_prompt_id`` names the stored prompt (vpbx.media.prompts). The keys, and what happens when the
    caller presses nothing, are ``VoiceMenuKey`` rows (the latter with key ``t``, as Asterisk names it).
    """

    __tablename__ = "voice_menus"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    greeting_source: Mapped[str] = mapped_column(String(8), default="text")
    prompt_text: Mapped[str] = mapped_column(String(1000), default="")
    greeting_voice: Mapped[str] = mapped_column(String(2), default="ru")
    greeting_prompt_id: Mapped[str | None] = mapped_column(String(64))
    greeting_file_name: Mapped[str | None] = mapped_column(String(255))
    # said after a key the menu does not know; empty = the system phrase in the greeting's voice
    invalid_text: Mapped[str] = mapped_column(String(1000), default="")
    invalid_prompt_id: Mapped[str | None] = mapped_column(String(64))
    repeat_count: Mapped[int] = mapped_column(Integer, default=2)
    digit_timeout_s: Mapped[int] = mapped_column(Integer, default=5)
    keys: Mapped[list[VoiceMenuKey]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", foreign_keys="VoiceMenuKey.menu_id"
    )
    __table_args__ = (
        UniqueConstraint("domain_id", "name"),
        CheckConstraint("greeting_source in ('text', 'upload')", name="greeting_source"),
        CheckConstraint("greeting_voice in ('ru', 'en')", name="greeting_voice"),
        CheckConstraint("repeat_count between 1 and 10", name="repeat_count"),
        CheckConstraint("digit_timeout_s between 1 and 60", name="digit_timeout_s"),
    )


class VoiceMenuKey(Base):
    """A key of a voice menu (``0``-``9``, ``*``, ``#``) or its timeout (``t``): where it sends the call."""

    __tablename__ = "voice_menu_keys"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    menu_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("voice_menus.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(1))
    action: Mapped[str] = mapped_column(String(16))
    target_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    target_group_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("call_groups.id"))
    target_menu_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("voice_menus.id"))
    target_number: Mapped[str | None] = mapped_column(String(16))
    __table_args__ = (
        UniqueConstraint("menu_id", "key"),
        CheckConstraint("key in ('0','1','2','3','4','5','6','7','8','9','*','#','t')", name="key"),
        CheckConstraint(
            "action in ('user', 'group', 'menu', 'voicemail', 'external', 'repeat', 'extension', 'hangup')",
            name="action",
        ),
    )


class DomainPrompt(Base):
    """Which domain stored which prompt: prompts are content-addressed and shared on disk, so the cabinet
    serves a prompt only to a domain that uploaded or synthesised it."""

    __tablename__ = "domain_prompts"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (
        UniqueConstraint("domain_id", "prompt_id"),
        CheckConstraint("source in ('upload', 'tts')", name="source"),
    )


class RoutingRule(Timestamped, ActionTarget, Base):
    """One ordered rule of an incoming number: a schedule condition and an action."""

    __tablename__ = "routing_rules"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    number_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("incoming_numbers.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    condition: Mapped[str] = mapped_column(String(16), default="always")
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("schedules.id"))
    __table_args__ = (
        CheckConstraint("condition in ('always', 'work', 'non_work')", name="condition"),
        CheckConstraint(
            "action in ('user', 'group', 'menu', 'voicemail', 'external', 'reject')", name="action"
        ),
    )


# --- trunks -------------------------------------------------------------------------------------------------


class Trunk(Timestamped, Base):
    """A SIP trunk to a carrier: we REGISTER to it (``registration``) or it is known by address (``ip``)."""

    __tablename__ = "trunks"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16), default="registration")
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer, default=5060)
    transport: Mapped[str] = mapped_column(String(8), default="udp")
    outbound_proxy: Mapped[str | None] = mapped_column(String(260))  # host[:port]
    username: Mapped[str] = mapped_column(String(64), default="")
    auth_username: Mapped[str] = mapped_column(String(64), default="")  # empty: the username
    password_enc: Mapped[str] = mapped_column(Text, default="")  # sealed with the secret box
    expires_s: Mapped[int] = mapped_column(Integer, default=3600)
    from_user: Mapped[str] = mapped_column(String(64), default="")
    from_domain: Mapped[str] = mapped_column(String(253), default="")
    caller_id_mode: Mapped[str] = mapped_column(String(16), default="domain")
    caller_id_number: Mapped[str | None] = mapped_column(String(16))  # for ``fixed``
    number_format: Mapped[str] = mapped_column(String(16), default="e164")
    max_calls: Mapped[int] = mapped_column(Integer, default=10)
    priority: Mapped[int] = mapped_column(Integer, default=10)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    allowed_networks: Mapped[str] = mapped_column(String(2000), default="")  # CIDRs, one per line
    __table_args__ = (
        UniqueConstraint("domain_id", "name"),
        CheckConstraint("kind in ('registration', 'ip')", name="kind"),
        CheckConstraint("transport in ('udp', 'tcp')", name="transport"),
        CheckConstraint("caller_id_mode in ('domain', 'user', 'fixed')", name="caller_id_mode"),
        CheckConstraint("number_format in ('e164', 'plain', 'national')", name="number_format"),
    )


# --- call history, recordings, voicemail ----------------------------------------------------------------


class CallRecord(Base):
    """One call from its acceptance to its end (telephony.md §3.7 "CDR"; integration-api.md §4.4).

    Written when the call is accepted and on every state change, in the same transaction as the call's
    events (``CallEventRow``), so a crash leaves an open row that the start-up reconciler closes with
    ``end_reason = 'recovered'``. ``session_log`` is a list of ``[offset_s, code, party]`` (codes ``ct``,
    ``cc``, ``cd``, ``tr``, ``pu``, ``vm``), from which the compact wire string is derived.
    """

    __tablename__ = "call_records"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(String(64), default="")
    call_type: Mapped[str] = mapped_column(String(16))  # incoming, outbound, internal
    call_kind: Mapped[str] = mapped_column(String(16), default="normal")  # normal, callback, autoinformer
    started_at: Mapped[dt.datetime] = mapped_column()
    answered_at: Mapped[dt.datetime | None] = mapped_column()
    ended_at: Mapped[dt.datetime | None] = mapped_column()
    end_reason: Mapped[str | None] = mapped_column(String(16))  # normal, recovered (ours)
    duration_s: Mapped[int] = mapped_column(Integer, default=0)  # talk time
    caller_number: Mapped[str] = mapped_column(String(128), default="")
    caller_pin: Mapped[str | None] = mapped_column(String(6))
    caller_uri: Mapped[str] = mapped_column(String(255), default="")
    callee_number: Mapped[str] = mapped_column(String(128), default="")
    callee_pin: Mapped[str | None] = mapped_column(String(6))
    callee_uri: Mapped[str] = mapped_column(String(255), default="")
    line: Mapped[str | None] = mapped_column(String(16))
    answering_uri: Mapped[str | None] = mapped_column(String(255))
    answering_pin: Mapped[str | None] = mapped_column(String(6))
    status_code: Mapped[int | None] = mapped_column(Integer)
    status_text: Mapped[str | None] = mapped_column(String(255))
    is_record: Mapped[bool] = mapped_column(Boolean, default=False)
    is_voicemail: Mapped[bool] = mapped_column(Boolean, default=False)
    session_log: Mapped[list[Any]] = mapped_column(JSON, default=list)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    __table_args__ = (
        Index("ix_call_records_domain_started", "domain_id", "started_at"),
        Index("ix_call_records_open", "ended_at", "node_id"),
        CheckConstraint("call_type in ('incoming', 'outbound', 'internal')", name="call_type"),
        CheckConstraint("call_kind in ('normal', 'callback', 'autoinformer')", name="call_kind"),
    )


class CallEventRow(Base):
    """The call events outbox: every event of every call, committed with the record's change, delivered at
    least once to the consumers that must not lose one (Integration API, amoCRM), keyed by
    ``(session_id, seq)`` (telephony.md §9.3 rule 5). ``payload`` is the event in wire terms."""

    __tablename__ = "call_events"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    session_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column()
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    __table_args__ = (UniqueConstraint("session_id", "seq"),)


class Recording(Base):
    """A call recording: stereo WAV while the call runs, then an MP3 (``status`` recording → ready)."""

    __tablename__ = "recordings"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="recording")
    path: Mapped[str] = mapped_column(String(500), default="")  # relative to the recordings directory
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    ready_at: Mapped[dt.datetime | None] = mapped_column()
    expires_at: Mapped[dt.datetime | None] = mapped_column(index=True)
    __table_args__ = (
        CheckConstraint("status in ('recording', 'encoding', 'ready', 'failed')", name="status"),
    )


class VoicemailBox(Base):
    """A user's or a group's voicemail box: its greeting and who gets an e-mail for each message."""

    __tablename__ = "voicemail_boxes"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    group_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("call_groups.id", ondelete="CASCADE"), unique=True
    )
    greeting_source: Mapped[str] = mapped_column(String(8), default="text")
    greeting_text: Mapped[str] = mapped_column(String(1000), default="")
    greeting_voice: Mapped[str] = mapped_column(String(2), default="ru")
    greeting_prompt_id: Mapped[str | None] = mapped_column(String(64))
    greeting_file_name: Mapped[str | None] = mapped_column(String(255))
    max_message_s: Mapped[int] = mapped_column(Integer, default=120)
    notify_email: Mapped[str | None] = mapped_column(String(254))
    attach_audio: Mapped[bool] = mapped_column(Boolean, default=True)
    # a user's box also takes the calls the user did not answer in the ring time, or refused as busy
    on_no_answer: Mapped[bool] = mapped_column(Boolean, default=False)
    on_busy: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        CheckConstraint("(user_id is null) != (group_id is null)", name="owner"),
        CheckConstraint("greeting_source in ('text', 'upload')", name="greeting_source"),
        CheckConstraint("greeting_voice in ('ru', 'en')", name="greeting_voice"),
        CheckConstraint("max_message_s between 10 and 600", name="max_message_s"),
    )


class VoicemailMessage(Base):
    """A message left in a box: the caller, when, how long, the MP3, and whether someone listened."""

    __tablename__ = "voicemail_messages"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    box_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("voicemail_boxes.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    caller_number: Mapped[str] = mapped_column(String(128), default="")
    caller_name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    path: Mapped[str] = mapped_column(String(500), default="")
    status: Mapped[str] = mapped_column(String(16), default="recording")
    listened: Mapped[bool] = mapped_column(Boolean, default=False)
    emailed_at: Mapped[dt.datetime | None] = mapped_column()
    __table_args__ = (CheckConstraint("status in ('recording', 'ready', 'failed')", name="status"),)


# --- Integration API (integration-api.md) -----------------------------------------------------------------


class ApiSettings(Base):
    """A domain's Integration API settings (§6.2): credentials, CRM address, allowlist, toggles."""

    __tablename__ = "api_settings"
    domain_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True
    )
    client_id: Mapped[str] = mapped_column(String(32), unique=True)  # X-Client-ID, 32 upper-case hex
    sign_key_enc: Mapped[str] = mapped_column(Text)  # the signing key, sealed with the secret box
    crm_url: Mapped[str] = mapped_column(String(500), default="")
    allowlist: Mapped[str] = mapped_column(String(4000), default="")  # addresses and CIDRs, one per line
    timeout_s: Mapped[int] = mapped_column(Integer, default=3)
    tls_required: Mapped[bool] = mapped_column(Boolean, default=True)  # «режим шифрования трафика»
    send_events: Mapped[bool] = mapped_column(Boolean, default=True)
    event_types: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["incoming", "outbound", "internal"])
    event_states: Mapped[list[str]] = mapped_column(
        JSON, default=lambda: ["new", "calling", "connected", "disconnected", "end"]
    )
    send_autoinformer_events: Mapped[bool] = mapped_column(Boolean, default=True)  # call_events of its calls
    send_ai_notifications: Mapped[bool] = mapped_column(Boolean, default=True)  # autoinformer_events (§10)
    number_info: Mapped[bool] = mapped_column(Boolean, default=False)  # get_number_info
    verify_crm_sign: Mapped[bool] = mapped_column(Boolean, default=False)
    suspended_at: Mapped[dt.datetime | None] = mapped_column()  # sending suspended after sustained failure
    events_since: Mapped[dt.datetime | None] = mapped_column()  # call events before this are not sent
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (CheckConstraint("timeout_s between 1 and 10", name="timeout_s"),)


class ApiTrustedCert(Base):
    """«Доверенные сертификаты»: a CRM server certificate or CA trusted for calls to the CRM (§2.5)."""

    __tablename__ = "api_trusted_certs"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    pem: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(500))
    not_after: Mapped[dt.datetime] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class ApiLog(Base):
    """«Лог запросов/ответов» (§6.4): one exchange in either direction, secrets masked."""

    __tablename__ = "api_log"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    direction: Mapped[str] = mapped_column(String(8))  # "in" (CRM → PBX) or "out" (PBX → CRM)
    method: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(String(1000), default="")
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    request_headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    request_body: Mapped[str] = mapped_column(Text, default="")
    request_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[str | None] = mapped_column(String(16))
    response_body: Mapped[str] = mapped_column(Text, default="")
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int | None] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(500), default="")
    test: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (Index("ix_api_log_domain_at", "domain_id", "at"),)


class ApiDelivery(Base):
    """A PBX → CRM notification in the durable outbox (§5.1): the exact body bytes sent, its state and
    attempts. One call's deliveries go out in ``seq`` order."""

    __tablename__ = "api_deliveries"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    method: Mapped[str] = mapped_column(String(64))  # call_events, history_file_completed, …
    session_id: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int | None] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column()
    last_error: Mapped[str] = mapped_column(String(500), default="")
    test: Mapped[bool] = mapped_column(Boolean, default=False)
    __table_args__ = (
        Index("ix_api_deliveries_due", "status", "next_at"),
        UniqueConstraint("method", "session_id", "seq"),
        CheckConstraint("status in ('pending', 'delivered', 'failed', 'expired')", name="status"),
    )


class ApiHistoryOrder(Base):
    """An order of ``domain_call_history`` (§4.5): built in the background, downloadable for 7 days."""

    __tablename__ = "api_history_orders"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # order_id, 32 lower-case hex
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    path: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    ready_at: Mapped[dt.datetime | None] = mapped_column()
    expires_at: Mapped[dt.datetime | None] = mapped_column()
    __table_args__ = (CheckConstraint("status in ('pending', 'ready', 'failed')", name="status"),)


class ApiRecordLink(Base):
    """A one-time recording link of ``get_record`` (§4.2), bound to one IP address."""

    __tablename__ = "api_record_links"
    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column()


class ApiIdempotency(Base):
    """The first answer to a request with an ``Idempotency-Key`` (§4.1), kept 10 minutes."""

    __tablename__ = "api_idempotency"
    domain_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


# --- platform settings, numbering table, audit log -----------------------------------------------


class PlatformSetting(Base):
    """An operator-set platform value overriding the shipped default (e.g. the autoinformer's quiet hours and
    frequency caps, autoinformer.md §3.3): ``key`` → JSON ``value``."""

    __tablename__ = "platform_settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class NumberingRange(Base):
    """One range of the national numbering plan (the regulator's ABC/DEF tables): ``first``..``last`` are full
    11-digit numbers (``7`` + code + subscriber part), the region and its IANA time zone."""

    __tablename__ = "numbering_ranges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    first: Mapped[str] = mapped_column(String(15), index=True)
    last: Mapped[str] = mapped_column(String(15))
    operator: Mapped[str] = mapped_column(String(255), default="")
    region: Mapped[str] = mapped_column(String(255), default="")
    timezone: Mapped[str | None] = mapped_column(String(64))


class AuditEntry(Base):
    """The domain's audit log: who did what to which object in the cabinet or through the API."""

    __tablename__ = "audit_log"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    actor: Mapped[str] = mapped_column(String(128))  # "user:<name>", "api", "operator:<login>", "system"
    action: Mapped[str] = mapped_column(String(64))  # e.g. "autoinformer.campaign.start"
    object_id: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    __table_args__ = (Index("ix_audit_log_domain_at", "domain_id", "at"),)


# --- autoinformer (autoinformer.md) ------------------------------------------------------------------------

# The autoinformer's statuses and outcomes (autoinformer.md §3.4, §4): one Literal each (the campaign
# object's types in vpbx.autoinformer.schemas), and the tuple of its values for the CHECK constraints.
AiCampaignStatus = Literal["draft", "scheduled", "running", "paused", "completed", "stopped", "error"]
AiContactStatus = Literal[
    "pending",
    "in_progress",
    "waiting_retry",
    "succeeded",
    "not_succeeded",
    "attempts_exhausted",
    "invalid_number",
    "opted_out",
    "excluded",
    "error",
    "cancelled",
    "expired",
]
AiOutcome = Literal[
    "success",
    "answered_incomplete",
    "opted_out",
    "machine",
    "busy",
    "no_answer",
    "rejected",
    "invalid_number",
    "failed",
]
AI_CAMPAIGN_STATUSES: tuple[str, ...] = get_args(AiCampaignStatus)
AI_CONTACT_STATUSES: tuple[str, ...] = get_args(AiContactStatus)
AI_OUTCOMES: tuple[str, ...] = get_args(AiOutcome)
AI_REPORT_MAIL = ("due", "sending", "sent", "failed")


def _in(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class AiAudioFile(Base):
    """A file of the domain's audio library (§2): the upload as received and its 8 kHz mono prompt."""

    __tablename__ = "ai_audio_files"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)  # file_id = id.hex
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    duration_ms: Mapped[int] = mapped_column(Integer)
    original_format: Mapped[str] = mapped_column(String(16))  # wav, mp3
    size_bytes: Mapped[int] = mapped_column(Integer)
    prompt_id: Mapped[str] = mapped_column(String(64))  # the converted prompt in the PromptStore
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class AiCampaign(Base):
    """A campaign («Рассылка», §2): its validated settings (``settings``, the API's campaign object without
    the top-level fields kept as columns), status and the dispatcher's lease (§7.3)."""

    __tablename__ = "ai_campaigns"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)  # campaign_id = id.hex
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    error_reason: Mapped[str | None] = mapped_column(String(32))
    caller_id: Mapped[str] = mapped_column(String(16))  # digits, one of the domain's lines
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()
    first_attempt_at: Mapped[dt.datetime | None] = mapped_column()  # message and caller ID frozen from here
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[dt.datetime | None] = mapped_column()
    # «Отправить отчёт на e-mail» (§6): "due" from the move to completed/stopped, "sending" once a mailer
    # claimed it (never sent again, even after a restart), then "sent" or "failed"; None: nothing to send
    report_mail: Mapped[str | None] = mapped_column(String(8))
    __table_args__ = (
        UniqueConstraint("domain_id", "external_id"),
        Index("ix_ai_campaigns_status", "status"),
        CheckConstraint(f"status in ({_in(AI_CAMPAIGN_STATUSES)})", name="status"),
        CheckConstraint(f"report_mail is null or report_mail in ({_in(AI_REPORT_MAIL)})", name="report_mail"),
    )


class AiContact(Base):
    """A person of a campaign's list (§3.2): 1–5 numbers rung one after another in a round, the list's
    variables and where the contact stands (§4.2)."""

    __tablename__ = "ai_contacts"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ai_campaigns.id", ondelete="CASCADE"))
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    row_no: Mapped[int] = mapped_column(Integer, default=0)  # the row of the import (1 = first data row)
    phones: Mapped[list[str]] = mapped_column(JSON)  # normalised digits, column order
    dropped: Mapped[list[int]] = mapped_column(JSON, default=list)  # indices out of later rounds
    external_id: Mapped[str | None] = mapped_column(String(128))
    variables: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    timezone: Mapped[str | None] = mapped_column(String(64))  # the recipient's, None = the domain's
    status: Mapped[str] = mapped_column(String(24), default="pending")  # "attempts_exhausted" is 18
    detail: Mapped[str | None] = mapped_column(String(32))  # e.g. tts_failed, frequency_cap
    attempts_made: Mapped[int] = mapped_column(Integer, default=0)  # rounds started
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column()
    last_outcome: Mapped[str | None] = mapped_column(String(24))
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column()
    best_listen_s: Mapped[float | None] = mapped_column(Float)
    digits: Mapped[str] = mapped_column(String(64), default="")
    succeeded_at: Mapped[dt.datetime | None] = mapped_column()
    last_session_id: Mapped[str | None] = mapped_column(String(64))
    render_hash: Mapped[str | None] = mapped_column(String(64))
    render_failures: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (
        Index("ix_ai_contacts_due", "campaign_id", "status", "next_attempt_at"),
        CheckConstraint(f"status in ({_in(AI_CONTACT_STATUSES)})", name="status"),
    )


class AiContactPhone(Base):
    """Each number of a campaign once (§3.2 ``duplicate``): which contact has it."""

    __tablename__ = "ai_contact_phones"
    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_contacts.id", ondelete="CASCADE"), index=True
    )


class AiAttempt(Base):
    """One dial of one number of one contact (§5). The dispatch key is unique (§7.1): the row is inserted as
    ``dialing`` and committed before the INVITE leaves; its ``session_id`` and Call-ID derive from the key."""

    __tablename__ = "ai_attempts"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ai_campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ai_contacts.id", ondelete="CASCADE"), index=True
    )
    attempt_no: Mapped[int] = mapped_column(Integer)  # the round, from 1
    number_index: Mapped[int] = mapped_column(Integer)  # index into the contact's phones
    dispatch_key: Mapped[str] = mapped_column(String(160), unique=True)
    phone: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="dialing")  # dialing, in_call, done
    scheduled_at: Mapped[dt.datetime | None] = mapped_column()
    started_at: Mapped[dt.datetime | None] = mapped_column()
    answered_at: Mapped[dt.datetime | None] = mapped_column()
    ended_at: Mapped[dt.datetime | None] = mapped_column()
    sip_code: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str | None] = mapped_column(String(24))
    criterion_met: Mapped[bool] = mapped_column(Boolean, default=False)
    listen_s: Mapped[float] = mapped_column(Float, default=0.0)
    played_full: Mapped[bool] = mapped_column(Boolean, default=False)
    digits: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str | None] = mapped_column(String(16))
    operator_target: Mapped[str | None] = mapped_column(String(64))
    operator_answered: Mapped[bool | None] = mapped_column(Boolean)
    amd_result: Mapped[str | None] = mapped_column(String(16))
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    call_id: Mapped[str] = mapped_column(String(128))
    cost: Mapped[Decimal | None] = mapped_column()
    detail: Mapped[str | None] = mapped_column(String(32))
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id", "attempt_no", "number_index"),
        Index("ix_ai_attempts_campaign", "campaign_id", "started_at"),
        Index("ix_ai_attempts_phone", "domain_id", "phone", "answered_at"),  # frequency caps (§3.3)
        CheckConstraint("state in ('dialing', 'in_call', 'done')", name="state"),
        CheckConstraint(f"outcome is null or outcome in ({_in(AI_OUTCOMES)})", name="outcome"),
    )


class AiStopEntry(Base):
    """The domain's stop list («Стоп-лист», §3.2): numbers no campaign of the domain calls."""

    __tablename__ = "ai_stop_list"
    domain_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True
    )
    phone: Mapped[str] = mapped_column(String(16), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ai_campaigns.id", ondelete="SET NULL"))
    author: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (CheckConstraint("source in ('opt_out', 'manual', 'import')", name="source"),)


# --- services management («Управление услугами») -------------------------------------------------------


# --- CRM integrations: amoCRM first (amocrm.md §5.10) -------------------------------------------------------

CRM_BINDING_STATUSES = ("active", "disabled")
CRM_JOB_STATES = ("pending", "running", "done", "dead", "dropped", "held")
AMO_STEP_STATES = ("pending", "in_flight", "done", "skipped", "failed")


class AmoInstall(Base):
    """An amoCRM account that installed our widget (§2.2): its tokens, not yet tied to any domain.

    Tokens are sealed with the secret box and never logged. ``token_version`` grows by one with every stored
    pair: a refresh is a compare-and-swap on it, so of two racing refreshes one stores and the other re-reads.
    """

    __tablename__ = "amo_installs"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    amo_account_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    base_domain: Mapped[str] = mapped_column(String(255))  # e.g. demo.amocrm.ru (the OAuth referer)
    client_id: Mapped[str] = mapped_column(String(64))  # the integration (UUID) the tokens belong to
    account_name: Mapped[str] = mapped_column(String(255), default="")
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/Moscow")
    auth_type: Mapped[str] = mapped_column(String(16), default="oauth")  # oauth, long_lived
    access_token_enc: Mapped[str] = mapped_column(Text, default="")
    refresh_token_enc: Mapped[str] = mapped_column(Text, default="")
    expires_at: Mapped[dt.datetime | None] = mapped_column()
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    token_state: Mapped[str] = mapped_column(String(16), default="ok")  # ok, needs_reauth
    token_error: Mapped[str] = mapped_column(String(500), default="")
    installed_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (
        CheckConstraint("auth_type in ('oauth', 'long_lived')", name="auth_type"),
        CheckConstraint("token_state in ('ok', 'needs_reauth')", name="token_state"),
    )


class CrmBinding(Base):
    """The link domain ↔ CRM account (F2–F4, F15). At most one *active* binding per domain and per external
    account (partial unique indexes); disabled rows stay as history and for re-linking."""

    __tablename__ = "crm_bindings"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    crm_kind: Mapped[str] = mapped_column(String(16), default="amocrm")
    external_account_id: Mapped[int] = mapped_column(BigInteger)  # amoCRM account id
    base_domain: Mapped[str] = mapped_column(String(255), default="")  # card links, texts
    status: Mapped[str] = mapped_column(String(16), default="active")
    fallback_user_id: Mapped[int | None] = mapped_column(BigInteger)  # F7 «для нештатных ситуаций»
    hook_secret: Mapped[str] = mapped_column(String(64))  # /amo/hooks/{hook_secret} (E17/E18)
    webhook_id: Mapped[str] = mapped_column(String(64), default="")
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # vpbx.amocrm.options
    health: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # last success/failure, 429s, circuit
    connected_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column()
    disabled_reason: Mapped[str] = mapped_column(String(64), default="")  # cabinet, widget, uninstall
    __table_args__ = (
        Index(
            "uq_crm_bindings_active_domain",
            "domain_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        Index(
            "uq_crm_bindings_active_account",
            "crm_kind",
            "external_account_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
        CheckConstraint(f"status in ({_in(CRM_BINDING_STATUSES)})", name="status"),
    )


class AmoConnectTicket(Base):
    """A single-use ticket from the widget's «Подключить» to the cabinet (F2, 10 min); stored hashed."""

    __tablename__ = "amo_connect_tickets"
    ticket_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    amo_account_id: Mapped[int] = mapped_column(BigInteger)
    amo_user_id: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column()


class CrmUserMap(Base):
    """A CRM manager ↔ an extension of the binding's domain (F7); both sides unique per binding."""

    __tablename__ = "crm_user_map"
    binding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("crm_bindings.id", ondelete="CASCADE"), primary_key=True
    )
    crm_user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    extension: Mapped[str] = mapped_column(String(6))
    __table_args__ = (UniqueConstraint("binding_id", "extension"),)


class AmoScenario(Base):
    """A call-processing scenario (F6, §3.4): the validated document (``vpbx.amocrm.scenario``) as JSON, its
    lines in ``AmoScenarioLine``. An integer id, as the widget shows it."""

    __tablename__ = "amo_scenarios"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    binding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("crm_bindings.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(64))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    document: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # smart_routing + events
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    __table_args__ = (UniqueConstraint("binding_id", "name"),)


class AmoScenarioLine(Base):
    """A line (E.164 digits, as ``IncomingNumber.number``) of a scenario (F8); one active scenario per line is
    checked on save and on activation."""

    __tablename__ = "amo_scenario_lines"
    scenario_id: Mapped[int] = mapped_column(
        ForeignKey("amo_scenarios.id", ondelete="CASCADE"), primary_key=True
    )
    line: Mapped[str] = mapped_column(String(16), primary_key=True)


class AmoPhoneCache(Base):
    """phone key → the matched contact (§5.3 lookup): kept fresh by amoCRM's webhooks; ``negative`` rows
    (nobody has the number) live 60 s."""

    __tablename__ = "amo_phone_cache"
    binding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("crm_bindings.id", ondelete="CASCADE"), primary_key=True
    )
    phone_key: Mapped[str] = mapped_column(String(16), primary_key=True)  # vpbx.crm.phone.match_key
    contact_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    negative: Mapped[bool] = mapped_column(Boolean, default=False)
    cached_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class AmoCall(Base):
    """The per-call context and step ledger (§5.2, §5.6), unique per (binding, session): a duplicate ``end``
    can never make a second job, a re-run job skips its ``done`` steps.

    ``steps`` maps a step name (contact, lead, task, responsible, note) to
    ``{"state": pending|in_flight|done|skipped|failed, "id": int|None, "attempts": int, "last_error": str}``;
    the note step also keeps ``on``/``on_id``, the card that holds the note (contacts, or leads in calls-API
    mode), so a reissued recording link edits that note.
    ``route`` says which step decided an incoming call's routing (responsible, fallback, rules) and why.
    """

    __tablename__ = "amo_calls"
    binding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("crm_bindings.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scenario_id: Mapped[int | None] = mapped_column(Integer)
    direction: Mapped[str] = mapped_column(String(16), default="")  # incoming, outgoing (engine: outbound)
    call_kind: Mapped[str] = mapped_column(String(16), default="normal")
    client_e164: Mapped[str] = mapped_column(String(16), default="")  # digits, no "+"
    line: Mapped[str] = mapped_column(String(16), default="")
    manager_pin: Mapped[str | None] = mapped_column(String(6))  # outgoing: the caller's extension
    lookup: Mapped[str] = mapped_column(String(8), default="unknown")  # hit, miss, unknown
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    contact_name: Mapped[str] = mapped_column(String(255), default="")
    responsible_user_id: Mapped[int | None] = mapped_column(BigInteger)
    # the pop-up's E5/E6 read at `connected`: the nearest active deal, 0 = none active, NULL = not read
    nearest_lead_id: Mapped[int | None] = mapped_column(BigInteger)
    rung_pins: Mapped[list[str]] = mapped_column(JSON, default=list)
    answered_pins: Mapped[list[str]] = mapped_column(JSON, default=list)
    card_hint: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # click-to-call: {"type","id"}
    route: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # {"step","why","pin"}
    processed_seqs: Mapped[list[int]] = mapped_column(JSON, default=list)
    steps: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    classification: Mapped[str] = mapped_column(String(32), default="")  # e.g. incoming.new, ignored
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column()


class CrmJob(Base):
    """The durable outbox of CRM writes (§5.6–5.7): one row per (binding, key), so a duplicate enqueue is a
    no-op; leased by one worker at a time, retried on a schedule, survives ``kill -9``."""

    __tablename__ = "crm_jobs"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    binding_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("crm_bindings.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # amo.finish, amo.refresh_contact, amo.ai_result, …
    key: Mapped[str] = mapped_column(String(128))  # e.g. the session_id for amo.finish
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column()
    lease_owner: Mapped[str] = mapped_column(String(64), default="")
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    done_at: Mapped[dt.datetime | None] = mapped_column()
    __table_args__ = (
        UniqueConstraint("binding_id", "kind", "key"),
        Index("ix_crm_jobs_due", "state", "run_after"),
        CheckConstraint(f"state in ({_in(CRM_JOB_STATES)})", name="state"),
    )


class AmoAccountLease(Base):
    """Which ``vpbx serve`` process talks to an amoCRM account in the background (§2.5: all traffic of an
    account goes through one limiter; with several processes on PostgreSQL a lease row assigns each account to
    one process). Taken and renewed by a compare-and-swap UPDATE (vpbx/amocrm/lease.py); ``owner`` is
    ``node_id:pid``; a dead owner's row is taken over once ``lease_until`` has passed."""

    __tablename__ = "amo_account_leases"
    amo_account_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(96), default="")
    lease_until: Mapped[dt.datetime | None] = mapped_column()


class AmoNode(Base):
    """A live ``vpbx serve`` process of the amoCRM integration (heartbeat, ours): an account's owner leaves a
    fixed share of ``amocrm.rps`` to each other live process for its realtime lookups (amocrm/lease.py)."""

    __tablename__ = "amo_nodes"
    owner: Mapped[str] = mapped_column(String(96), primary_key=True)
    seen_until: Mapped[dt.datetime] = mapped_column(index=True)


class AmoRecordingLink(Base):
    """A stable recording link for amoCRM notes (§5.5): ``/rec/amo/{token}.mp3``; a stored random token, so
    rotating a key breaks no link; revocable and reissuable."""

    __tablename__ = "amo_recording_links"
    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    binding_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("crm_bindings.id", ondelete="CASCADE"), index=True
    )
    session_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()


class ServicePrice(Base):
    """The operator's price list: one monthly fee per service code."""

    __tablename__ = "service_prices"
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    monthly_fee: Mapped[Decimal] = mapped_column(default=Decimal("0.00"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class DomainService(Base):
    """A service's state in one domain: enabled, and a counter for counted services."""

    __tablename__ = "domain_services"
    domain_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True
    )
    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    counter: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)


class Charge(Timestamped, Base):
    """The charges ledger: one row per charge or credit, never updated."""

    __tablename__ = "charges"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    domain_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    service_code: Mapped[str | None] = mapped_column(String(32))
    amount: Mapped[Decimal] = mapped_column()
    description: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    session_id: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        CheckConstraint("kind in ('charge', 'credit')", name="kind"),
        CheckConstraint("amount > 0", name="amount"),
    )


# --- cabinet sessions and login throttling ---------------------------------------------------------------


class WebSession(Base):
    """Server-side cabinet session; the cookie holds a random token, the table only its hash."""

    __tablename__ = "web_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    operator_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=_utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()


class LoginThrottle(Base):
    """Failed logins per key (login name or source address), for the lockout."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[dt.datetime] = mapped_column()
    locked_until: Mapped[dt.datetime | None] = mapped_column()
