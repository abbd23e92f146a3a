"""The campaign object (autoinformer.md §9) as validated settings, shared by the API, the cabinet and the
dispatcher. Ranges and defaults are §3's. ``CampaignSpec`` is what a client sends; ``AiCampaign.settings``
stores ``CampaignSpec.model_dump(mode="json", exclude={"external_id", "name", "caller_id"})`` and the columns
keep the three top-level fields.

Cross-field rules that need the database (caller ID is a line of the domain, file ids exist, connect targets
exist, variables are in the list) are the service's (``vpbx.autoinformer.campaigns``), not this module's.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import zoneinfo
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from vpbx.pbx.validation import EMAIL_RE
from vpbx.store.models import AiCampaignStatus, AiContactStatus, AiOutcome

# the statuses and outcomes are the store's (one definition: the CHECK constraints' values come from them)
CampaignStatus: TypeAlias = AiCampaignStatus
ContactStatus: TypeAlias = AiContactStatus
Outcome: TypeAlias = AiOutcome
FINAL_CONTACT: frozenset[str] = frozenset(
    {
        "succeeded",
        "not_succeeded",
        "attempts_exhausted",
        "invalid_number",
        "opted_out",
        "excluded",
        "error",
        "cancelled",
        "expired",
    }
)
FINAL_CAMPAIGN: frozenset[str] = frozenset({"completed", "stopped"})
RetryOutcome = Literal["busy", "no_answer", "failed", "machine", "answered_incomplete"]
ErrorReason = Literal["domain_blocked", "service_disabled", "caller_id_unavailable", "audio_unavailable"]

# The platform's TTS voices (name → espeak-ng voice); the API's example uses "female_1".
VOICES: dict[str, str] = {
    "female_1": "ru+f3",
    "female_2": "ru+f4",
    "male_1": "ru",
    "male_2": "ru+m3",
    "en_female_1": "en-us+f3",
    "en_male_1": "en-us",
}
MAX_CONTACTS = 100_000
MAX_REPORT_EMAILS = 10  # «Отправить отчёт на e-mail» (§6)
MAX_TTS_CHARS = 1000
MAX_VALUE_CHARS = 200
VARIABLE_RE = re.compile(r"\{([a-z0-9_]{1,32})(?::(number|money|date|digits))?\}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
_MSK_FORMAT = "%Y-%m-%d %H:%M:%S"
MOSCOW = zoneinfo.ZoneInfo("Europe/Moscow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Segment(_Strict):
    type: Literal["file", "tts"]
    file_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    text: Annotated[str, Field(min_length=1, max_length=MAX_TTS_CHARS)] | None = None
    voice: str = "female_1"
    rate: Annotated[float, Field(ge=0.5, le=2.0)] = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> Segment:
        if self.type == "file" and (self.file_id is None or self.text is not None):
            raise ValueError("a file segment has file_id and no text")
        if self.type == "tts" and (self.text is None or self.file_id is not None):
            raise ValueError("a tts segment has text and no file_id")
        if self.voice not in VOICES:
            raise ValueError(f"unknown voice {self.voice!r}")
        return self

    def variables(self) -> list[tuple[str, str | None]]:
        """The ``{name}`` / ``{name:format}`` placeholders of a TTS text, in order."""
        return [(m[1], m[2]) for m in VARIABLE_RE.finditer(self.text or "")]


class Message(_Strict):
    repeat: Annotated[int, Field(ge=1, le=3)] = 1
    segments: Annotated[list[Segment], Field(min_length=1, max_length=10)]


class Window(_Strict):
    from_: Annotated[str, Field(alias="from")]
    to: str
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("from_", "to")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.fullmatch(v):
            raise ValueError("time must be HH:MM")
        return v

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.from_ >= self.to:
            raise ValueError("'from' must be before 'to' (windows do not cross midnight)")
        return self

    def serialize(self) -> dict[str, str]:
        return {"from": self.from_, "to": self.to}


def _default_windows() -> list[Window]:
    return [Window(**{"from": "10:00", "to": "20:00"})]


class Schedule(_Strict):
    start_at: str  # Moscow time "YYYY-MM-DD HH:MM:SS" in the API; the cabinet converts from the domain's zone
    end_at: str | None = None
    days: Annotated[list[Annotated[int, Field(ge=1, le=7)]], Field(min_length=1, max_length=7)] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6, 7]
    )
    windows: Annotated[list[Window], Field(min_length=1, max_length=4)] = Field(
        default_factory=_default_windows
    )
    time_basis: Literal["recipient", "domain"] = "recipient"

    @field_validator("start_at", "end_at")
    @classmethod
    def _moscow_time(cls, v: str | None) -> str | None:
        if v is not None:
            dt.datetime.strptime(v, _MSK_FORMAT).replace(tzinfo=MOSCOW)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Schedule:
        if len(set(self.days)) != len(self.days):
            raise ValueError("days repeat")
        ordered = sorted(self.windows, key=lambda w: w.from_)
        for a, b in itertools.pairwise(ordered):
            if b.from_ < a.to:
                raise ValueError("windows overlap")
        if self.end_at is not None and self.end_at <= self.start_at:
            raise ValueError("end_at must be after start_at")
        return self


def _default_retry() -> list[RetryOutcome]:
    return ["busy", "no_answer", "failed"]


class Attempts(_Strict):
    max: Annotated[int, Field(ge=1, le=10)] = 3
    interval_min: Annotated[int, Field(ge=5, le=1440)] = 30
    retry_on: list[RetryOutcome] = Field(default_factory=_default_retry)


class Success(_Strict):
    criterion: Literal["answered", "listened_full", "listened_min", "confirmed"] = "listened_full"
    min_listen_s: Annotated[int, Field(ge=1, le=600)] | None = None
    confirm_digit: Annotated[str, Field(pattern=r"^[0-9*#]$")] | None = None

    @model_validator(mode="after")
    def _params(self) -> Success:
        if self.criterion == "listened_min" and self.min_listen_s is None:
            raise ValueError("listened_min needs min_listen_s")
        if self.criterion == "confirmed" and self.confirm_digit is None:
            raise ValueError("confirmed needs confirm_digit")
        return self


class Amd(_Strict):
    enabled: bool = False
    analysis_s: Annotated[float, Field(ge=1.0, le=10.0)] = 3.5
    initial_silence_s: Annotated[float, Field(ge=0.5, le=10.0)] = 2.5
    greeting_s: Annotated[float, Field(ge=0.5, le=10.0)] = 1.5
    after_greeting_silence_s: Annotated[float, Field(ge=0.2, le=5.0)] = 0.8
    on_machine: Literal["hangup", "leave_message"] = "hangup"


class Target(_Strict):
    type: Literal["user", "group", "menu", "number"]
    pin: str | None = None  # user / group / menu
    number: str | None = None  # external number

    @model_validator(mode="after")
    def _one(self) -> Target:
        if (self.type == "number") != (self.number is not None) or (self.type != "number") != (
            self.pin is not None
        ):
            raise ValueError("a number target has 'number', the others 'pin'")
        return self


class DtmfAction(_Strict):
    action: Literal["connect", "repeat", "confirm", "opt_out", "hangup"]
    target: Target | None = None  # connect only
    segment: Segment | None = None  # confirm / opt_out confirmation; connect's «оператор недоступен»

    @model_validator(mode="after")
    def _target(self) -> DtmfAction:
        if (self.action == "connect") != (self.target is not None):
            raise ValueError("connect needs a target, other actions none")
        return self


class Dtmf(_Strict):
    wait_s: Annotated[int, Field(ge=0, le=30)] = 5
    actions: dict[str, DtmfAction] = Field(default_factory=dict)

    @field_validator("actions")
    @classmethod
    def _digits(cls, v: dict[str, DtmfAction]) -> dict[str, DtmfAction]:
        for k in v:
            if not re.fullmatch(r"[0-9*#]", k):
                raise ValueError(f"{k!r} is not a key")
        return v


class AmoCrmTask(_Strict):
    text: Annotated[str, Field(min_length=1, max_length=500)]
    responsible: str | None = None  # amoCRM user id; None = the contact's responsible
    due_days: Annotated[int, Field(ge=0, le=365)] = 1


def _email(value: str) -> str:
    value = value.strip()
    if not EMAIL_RE.fullmatch(value):
        raise ValueError("not an e-mail address")
    return value


Email = Annotated[str, Field(max_length=254), AfterValidator(_email)]


class CampaignSpec(_Strict):
    external_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    name: Annotated[str, Field(min_length=1, max_length=255)]
    caller_id: Annotated[str, Field(pattern=r"^\+?[0-9]{5,15}$")]
    message: Message
    schedule: Schedule
    attempts: Attempts = Field(default_factory=Attempts)
    ring_timeout_s: Annotated[int, Field(ge=10, le=90)] = 30
    concurrency: Annotated[int, Field(ge=1, le=100)] = 5
    allow_international: bool = False
    auto_complete: bool = True
    compliance_profile: Literal["standard", "collections"] = "standard"
    success: Success = Field(default_factory=Success)
    amd: Amd = Field(default_factory=Amd)
    dtmf: Dtmf = Field(default_factory=Dtmf)
    record: bool = False  # «Записывать разговоры»
    amocrm_task: AmoCrmTask | None = None  # «Создавать задачу в amoCRM»
    # «Отправить отчёт на e-mail»: the summary and an export link when the campaign finishes (§6)
    report_emails: list[Email] = Field(default_factory=list, max_length=MAX_REPORT_EMAILS)

    @field_validator("report_emails")
    @classmethod
    def _once_each(cls, v: list[str]) -> list[str]:
        """An address given twice gets one e-mail."""
        out: list[str] = []
        for e in v:
            if e.lower() not in {x.lower() for x in out}:
                out.append(e)
        return out

    def settings_json(self) -> dict[str, Any]:
        """What ``AiCampaign.settings`` stores (the columns keep external_id, name and caller_id)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"external_id", "name", "caller_id"})

    def variables(self) -> set[str]:
        """Every list column the message uses (``phone`` is built in)."""
        names = {name for seg in self.message.segments for name, _ in seg.variables()}
        for act in self.dtmf.actions.values():
            if act.segment is not None:
                names |= {name for name, _ in act.segment.variables()}
        return names - {"phone"}


def spec_of(row: Any) -> CampaignSpec:
    """The ``CampaignSpec`` of an ``AiCampaign`` row."""
    return CampaignSpec.model_validate(
        {**row.settings, "external_id": row.external_id, "name": row.name, "caller_id": row.caller_id}
    )
