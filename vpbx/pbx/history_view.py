"""How a call record reads: the compact protocol string and the protocol as steps, both from ``session_log``.

``CallRecord.session_log`` is a list of ``[offset_s, code, party]`` entries. The Integration API sends it as
``<seconds from start>:<code>:<party>;`` repeated (integration-api.md §4.4, ``call_info.session_log``); the
cabinet's call card shows it as a timeline in words. Both are pure functions of the list, so the journal, the
CSV export and the API cannot disagree. Entries the engine might write in a future shape (unknown codes,
missing parties) are kept, never dropped: clients treat unknown codes as opaque, and so do we.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vpbx.pbx.validation import N_

# session_log codes: ct, cc, cd as in the vendor's example (observed); tr, pu, vm are ours
STEP_MSGIDS: dict[str, str] = {
    "ct": N_("Ringing the party"),
    "cc": N_("Connected"),
    "cd": N_("Disconnected"),
    "tr": N_("Transferred"),
    "pu": N_("Picked up"),
    "vm": N_("Voicemail"),
}
UNKNOWN_STEP = N_("Event «{code}»")


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a call's protocol: when (seconds from the start), what (a code), who (a PIN or number)."""

    offset_s: int
    code: str
    party: str

    @property
    def msgid(self) -> str:
        """The English catalog message naming what happened; unknown codes keep their code."""
        return STEP_MSGIDS.get(self.code, UNKNOWN_STEP)

    @property
    def offset_text(self) -> str:
        return duration_text(self.offset_s)


def _offset(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float):
        return max(0, int(value))
    try:
        return max(0, int(float(str(value))))
    except ValueError:
        return 0


def parse_steps(session_log: Iterable[Any] | None) -> list[Step]:
    """The stored entries as steps, in stored order; a malformed entry becomes a step with what it has."""
    steps: list[Step] = []
    for entry in session_log or ():
        items: Sequence[Any] = entry if isinstance(entry, list | tuple) else (0, str(entry), "")
        offset = _offset(items[0]) if len(items) > 0 else 0
        code = str(items[1]) if len(items) > 1 and items[1] is not None else ""
        party = str(items[2]) if len(items) > 2 and items[2] is not None else ""
        steps.append(Step(offset_s=offset, code=code, party=party))
    return steps


def build_wire_log(session_log: Iterable[Any] | None) -> str:
    """The compact protocol string: ``0:ct:501;6:cc:501;101:cd:501;`` (integration-api.md §4.4).

    Separators inside a code or party would break the format for every reader, so they are dropped.
    """
    out = []
    for step in parse_steps(session_log):
        code = step.code.replace(":", "").replace(";", "")
        party = step.party.replace(":", "").replace(";", "")
        out.append(f"{step.offset_s}:{code}:{party};")
    return "".join(out)


def duration_text(seconds: float) -> str:
    """Seconds as ``M:SS`` or ``H:MM:SS``."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
