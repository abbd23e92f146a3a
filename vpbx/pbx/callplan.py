"""Ringing plans: who rings when, for a user or a call group (telephony.md §4; issue core-3). Pure.

A routing action that reaches people becomes a ``Plan``: stages, each a set of targets rung from ``start_s``
to ``stop_s`` seconds after the call arrived, and an overall limit after which nobody has answered and the
action's fall-through applies. The B2BUA runs a plan with its timers: it starts each stage's legs when the
stage begins, CANCELs them when it ends, and stops at the first answer. Keeping the arithmetic here, away
from SIP, lets it be tested by itself.

- **user**: the user's registered devices at once; after ``mobile_delay_s`` also their contact numbers
  (mobile forwarding through the trunk), all until the ring limit.
- **simultaneous** group: every member at once until the overall timeout.
- **sequential** group: one member at a time for ``member_timeout_s`` each, in the group's order, round the
  list again until the overall timeout (ours: a short list keeps being tried rather than giving up early).
- **cyclic** group: as sequential, but each call starts with the member after the one the previous call of
  the group started with (round robin), so the load spreads over the members. ``Rotation`` keeps that
  pointer per group (in memory on one node; shared state comes with scale-out, telephony.md §9).

Members without a registered device are still part of the order: the B2BUA skips a stage whose targets it
cannot reach at once, so a sequential group does not wait ``member_timeout_s`` on an absent member.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

MAX_RING_S = 600  # no plan rings longer than 10 min, whatever the settings say
MIN_STAGE_S = 1  # a stage lasts at least a second


@dataclass(frozen=True, slots=True)
class Targets:
    """Who a stage rings: users by PIN (all their devices) and external numbers (E.164, through a trunk)."""

    pins: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pins or self.numbers)


@dataclass(frozen=True, slots=True)
class Stage:
    start_s: float
    stop_s: float
    targets: Targets


@dataclass(frozen=True, slots=True)
class Plan:
    stages: tuple[Stage, ...]
    overall_s: float  # after this, nobody answered: the fall-through applies

    def due(self, elapsed_s: float) -> list[Stage]:
        """The stages that should be ringing ``elapsed_s`` seconds after the call arrived."""
        if elapsed_s >= self.overall_s:
            return []
        return [s for s in self.stages if s.start_s <= elapsed_s < s.stop_s]

    def boundaries(self) -> list[float]:
        """Every moment something changes (a stage starts or stops, or the plan ends), in order."""
        points = {s.start_s for s in self.stages} | {s.stop_s for s in self.stages} | {self.overall_s}
        return sorted(p for p in points if p <= self.overall_s)


def _limit(seconds: float) -> float:
    return float(min(max(seconds, MIN_STAGE_S), MAX_RING_S))


def user_plan(pin: str, contact_numbers: tuple[str, ...], *, mobile_delay_s: float, ring_s: float) -> Plan:
    """A user's devices at once; their contact numbers from ``mobile_delay_s`` on; all until ``ring_s``."""
    overall = _limit(ring_s)
    stages = [Stage(0.0, overall, Targets(pins=(pin,)))]
    delay = max(0.0, float(mobile_delay_s))
    if contact_numbers and delay < overall:
        stages.append(Stage(delay, overall, Targets(numbers=tuple(contact_numbers))))
    return Plan(tuple(stages), overall)


def external_plan(number: str, *, ring_s: float) -> Plan:
    """An outside number (through the domain's trunk) until ``ring_s``."""
    overall = _limit(ring_s)
    return Plan((Stage(0.0, overall, Targets(numbers=(number,))),), overall)


def group_plan(
    strategy: str,
    member_pins: tuple[str, ...],
    *,
    member_timeout_s: float,
    overall_timeout_s: float,
    first: int = 0,
) -> Plan:
    """The plan of a call group; ``first`` is the member a cyclic group starts with (see ``Rotation``)."""
    overall = _limit(overall_timeout_s)
    if not member_pins:
        return Plan((), overall)
    if strategy == "simultaneous":
        return Plan((Stage(0.0, overall, Targets(pins=tuple(member_pins))),), overall)
    if strategy not in ("sequential", "cyclic"):
        raise ValueError(f"unknown group strategy {strategy!r}")
    step = _limit(member_timeout_s)
    start = first % len(member_pins) if strategy == "cyclic" else 0
    stages: list[Stage] = []
    at = 0.0
    i = start
    while at < overall:
        stages.append(Stage(at, min(at + step, overall), Targets(pins=(member_pins[i],))))
        at += step
        i = (i + 1) % len(member_pins)
    return Plan(tuple(stages), overall)


class Rotation:
    """Where each cyclic group starts its next call: one past where its previous call started."""

    def __init__(self) -> None:
        self._next: dict[uuid.UUID, int] = {}

    def take(self, group_id: uuid.UUID, members: int) -> int:
        """The member index the next call starts with; moves the pointer on."""
        if members <= 0:
            return 0
        current = self._next.get(group_id, 0) % members
        self._next[group_id] = (current + 1) % members
        return current

    def forget(self, group_id: uuid.UUID) -> None:
        self._next.pop(group_id, None)
