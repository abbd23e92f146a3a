"""The autoinformer's cabinet forms (autoinformer.md §3, §8) read into the campaign object (§9).

Each campaign tab edits one part of ``CampaignSpec``: the page reads its fields here into a dict that replaces
that part, and ``CampaignSpec`` (then the campaign service) validates the whole. Times in the cabinet are the
domain's wall clock (``datetime-local``); the campaign object keeps Moscow time, as the API does (§3.3).
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Any

from pydantic import ValidationError

from vpbx.autoinformer.schemas import MOSCOW, VOICES
from vpbx.errors import FieldError, ValidationFailed
from vpbx.pbx.validation import N_
from vpbx.web import forms

MSK_FORMAT = "%Y-%m-%d %H:%M:%S"
LOCAL_FORMAT = "%Y-%m-%dT%H:%M"  # <input type="datetime-local">
MAX_SEGMENTS = 10
MAX_WINDOWS = 4
KEYS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "*", "#")
RETRY_OUTCOMES = ("busy", "no_answer", "failed", "machine", "answered_incomplete")
ACTIONS = ("connect", "repeat", "confirm", "opt_out", "hangup")
TARGET_TYPES = ("user", "group", "menu", "number")
CRITERIA = ("answered", "listened_full", "listened_min", "confirmed")
BAD_TIME = N_("Enter a date and time")
EMAIL_SPLIT = re.compile(r"[\s,;]+")  # the report's addresses: one per line, or a list


def to_moscow(local: str, timezone: str) -> str | None:
    """``2026-06-16T09:00`` on the domain's clock → ``2026-06-16 09:00:00`` Moscow time; None when empty."""
    local = local.strip()
    if not local:
        return None
    try:
        when = dt.datetime.strptime(local[:16], LOCAL_FORMAT).replace(tzinfo=zoneinfo.ZoneInfo(timezone))
    except ValueError:
        raise ValidationFailed.one("start_at", BAD_TIME) from None
    return when.astimezone(MOSCOW).strftime(MSK_FORMAT)


def to_local(moscow: str | None, timezone: str) -> str:
    """The reverse of ``to_moscow``, for the form's value."""
    if not moscow:
        return ""
    when = dt.datetime.strptime(moscow, MSK_FORMAT).replace(tzinfo=MOSCOW)
    return when.astimezone(zoneinfo.ZoneInfo(timezone)).strftime(LOCAL_FORMAT)


def _int(form: forms.FormData, name: str, default: int) -> int | str:
    raw = forms.text(form, name).strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        return raw  # the spec's validation names the field


def _float(form: forms.FormData, name: str, default: float) -> float | str:
    raw = forms.text(form, name).strip().replace(",", ".")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        return raw


def segment(form: forms.FormData, prefix: str) -> dict[str, Any] | None:
    """One message segment of the form (``<prefix>type``, ``…file_id``, ``…text``, ``…voice``, ``…rate``)."""
    kind = forms.text(form, f"{prefix}type")
    if kind == "file":
        file_id = forms.text(form, f"{prefix}file_id").strip()
        return {"type": "file", "file_id": file_id} if file_id else None
    if kind == "tts":
        text = forms.text(form, f"{prefix}text").strip()
        if not text:
            return None
        voice = forms.text(form, f"{prefix}voice") or "female_1"
        return {"type": "tts", "text": text, "voice": voice, "rate": _float(form, f"{prefix}rate", 1.0)}
    return None


def shown(form: forms.FormData, name: str) -> bool:
    """Whether the form sent ``name`` at all: the fields of a part the status does not let the admin change
    sit in a disabled fieldset, which the browser leaves out, and that part keeps its stored value."""
    return name in form


def message(form: forms.FormData) -> dict[str, Any]:
    """«Сообщение»: the name, the segments in order (empty rows skipped) and the repeat count."""
    part: dict[str, Any] = {}
    if shown(form, "name"):
        part["name"] = forms.text(form, "name").strip()
    if shown(form, "repeat"):
        segments = [seg for i in range(MAX_SEGMENTS) if (seg := segment(form, f"seg{i}_")) is not None]
        part["message"] = {"repeat": _int(form, "repeat", 1), "segments": segments}
    return part


def schedule(form: forms.FormData, timezone: str) -> dict[str, Any]:
    """«Расписание»: start/end on the domain's clock, weekdays, up to 4 windows, time basis, and the
    compliance profile. A running campaign sends only ``end_at``."""
    out: dict[str, Any] = {}
    if shown(form, "start_at"):
        out["start_at"] = to_moscow(forms.text(form, "start_at"), timezone) or ""
    if shown(form, "days_shown"):
        out["days"] = [d for d in range(1, 8) if forms.checked(form, f"day{d}")]
    if shown(form, "time_basis"):
        out["time_basis"] = forms.text(form, "time_basis") or "recipient"
    if shown(form, "end_at"):
        try:
            out["end_at"] = to_moscow(forms.text(form, "end_at"), timezone)
        except ValidationFailed:
            raise ValidationFailed.one("end_at", BAD_TIME) from None
    if shown(form, "win0_from"):
        windows = []
        for i in range(MAX_WINDOWS):
            start, end = forms.text(form, f"win{i}_from").strip(), forms.text(form, f"win{i}_to").strip()
            if start or end:
                windows.append({"from": start[:5], "to": end[:5]})
        out["windows"] = windows
    part: dict[str, Any] = {"schedule": out}
    if shown(form, "compliance_profile"):
        part["compliance_profile"] = forms.text(form, "compliance_profile") or "standard"
    return part


def lines(form: forms.FormData) -> dict[str, Any]:
    """«Попытки и линии»: attempts, ring timeout, concurrency, caller ID and the call options."""
    part: dict[str, Any] = {}
    if shown(form, "caller_id"):
        part["caller_id"] = forms.text(form, "caller_id").strip()
    if shown(form, "attempts_max"):
        part["attempts"] = {
            "max": _int(form, "attempts_max", 3),
            "interval_min": _int(form, "interval_min", 30),
            "retry_on": [o for o in RETRY_OUTCOMES if forms.checked(form, f"retry_{o}")],
        }
        part["ring_timeout_s"] = _int(form, "ring_timeout_s", 30)
    if shown(form, "concurrency"):
        part["concurrency"] = _int(form, "concurrency", 5)
    if shown(form, "options_shown"):
        part["record"] = forms.checked(form, "record")
        part["allow_international"] = forms.checked(form, "allow_international")
    if shown(form, "auto_complete_shown"):
        part["auto_complete"] = forms.checked(form, "auto_complete")
    if shown(form, "report_emails_shown"):
        part["report_emails"] = [e for e in EMAIL_SPLIT.split(forms.text(form, "report_emails")) if e]
    if shown(form, "amocrm_task_shown"):  # «Создавать задачу в amoCRM»
        part["amocrm_task"] = (
            {
                "text": forms.text(form, "amocrm_task_text").strip(),
                "responsible": forms.text(form, "amocrm_task_responsible").strip() or None,
                "due_days": _int(form, "amocrm_task_due_days", 1),
            }
            if forms.checked(form, "amocrm_task")
            else None
        )
    if shown(form, "criterion"):
        criterion = forms.text(form, "criterion") or "listened_full"
        success: dict[str, Any] = {"criterion": criterion}
        if criterion == "listened_min":
            success["min_listen_s"] = _int(form, "min_listen_s", 10)
        if criterion == "confirmed":
            success["confirm_digit"] = forms.text(form, "confirm_digit").strip() or "1"
        part["success"] = success
    if shown(form, "amd_on_machine"):
        part["amd"] = {
            "enabled": forms.checked(form, "amd_enabled"),
            "analysis_s": _float(form, "amd_analysis_s", 3.5),
            "on_machine": forms.text(form, "amd_on_machine") or "hangup",
        }
    return part


def keys(form: forms.FormData) -> dict[str, Any]:
    """«Реакции на нажатия»: digit → action (with a target for «connect», an optional segment to play)."""
    if not shown(form, "wait_s"):
        return {}
    actions: dict[str, Any] = {}
    for i, key in enumerate(KEYS):
        action = forms.text(form, f"key{i}_action")
        if action not in ACTIONS:
            continue
        entry: dict[str, Any] = {"action": action}
        if action == "connect":
            kind = forms.text(form, f"key{i}_target_type") or "user"
            value = forms.text(form, f"key{i}_target").strip()
            entry["target"] = {"type": kind, ("number" if kind == "number" else "pin"): value}
        seg = segment(form, f"key{i}_seg_")
        if seg is not None and action in ("connect", "confirm", "opt_out"):
            entry["segment"] = seg
        actions[key] = entry
    return {"dtmf": {"wait_s": _int(form, "wait_s", 5), "actions": actions}}


def merge(current: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """``current`` (the whole campaign object) with one tab's ``part``. ``schedule``, ``attempts`` and
    ``amd`` merge field by field: a tab may send only some of their fields."""
    out = {**current, **part}
    for key in ("schedule", "attempts", "amd"):
        if key in part and isinstance(current.get(key), dict):
            out[key] = {**current[key], **part[key]}
    return out


# pydantic's location of a problem → the form field that shows it
def _field_of(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts[:2] == ["message", "segments"] and len(parts) > 2:
        return f"seg{parts[2]}_{parts[3] if len(parts) > 3 else 'text'}"
    if parts and parts[0] == "message":
        return "repeat" if parts[1:2] == ["repeat"] else "segments"
    if parts[:2] == ["dtmf", "wait_s"]:
        return "wait_s"
    if parts[:2] == ["schedule", "windows"]:
        return "windows"
    if parts and parts[0] == "schedule":
        return parts[1] if len(parts) > 1 else "start_at"
    if parts[:2] == ["dtmf", "actions"]:
        return "keys"
    if parts and parts[0] == "attempts":
        return {"max": "attempts_max"}.get(parts[1] if len(parts) > 1 else "", parts[-1])
    if parts and parts[0] in ("success", "amd"):
        return parts[0]
    return parts[0] if parts else "id"


def form_field(api_field: str | None) -> str:
    """The campaign service's field path (``message.segments[1].text``) as the form field that shows it."""
    if not api_field:
        return "id"
    return _field_of(tuple(p for p in api_field.replace("[", ".").replace("]", "").split(".") if p))


def spec_errors(e: ValidationError) -> ValidationFailed:
    """The spec's validation errors as the cabinet's per-field messages (one per field)."""
    seen: dict[str, FieldError] = {}
    for err in e.errors():
        name = _field_of(tuple(err["loc"]))
        if name not in seen:
            seen[name] = FieldError(name, N_("Check this value: {detail}"), {"detail": _detail(err)})
    return ValidationFailed(list(seen.values()))


def _detail(err: Any) -> str:
    ctx = err.get("ctx") or {}
    kind = str(err.get("type", ""))
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        return f"{'≥' if kind == 'greater_than_equal' else '≤'} {bound}"
    if kind in ("int_parsing", "float_parsing"):
        return "0–9"
    if kind == "too_short":
        return "≥ 1"
    msg = str(err.get("msg", ""))
    return msg.removeprefix("Value error, ")[:120]


VOICE_NAMES: dict[str, str] = {
    "female_1": N_("Female voice 1 (Russian)"),
    "female_2": N_("Female voice 2 (Russian)"),
    "male_1": N_("Male voice 1 (Russian)"),
    "male_2": N_("Male voice 2 (Russian)"),
    "en_female_1": N_("Female voice (English)"),
    "en_male_1": N_("Male voice (English)"),
}
assert set(VOICE_NAMES) == set(VOICES), "every platform voice has a name in the cabinet"
