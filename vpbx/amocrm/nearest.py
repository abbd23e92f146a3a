"""A contact's nearest active deal (amocrm.md F13, §5.3 ``connected``: "read the nearest active deal (E5/E6,
cached 60 s)", §5.9's budget), shared in the process by the pop-ups and ``amo.finish``.

One read is E5 (the contact with its lead ids) and, when it has leads, E6 (those leads). The answer — the
contact's name and its nearest active deal, or none — is kept 60 s per (binding, contact), so a repeated
call of the same client within a minute costs no E5/E6 at all (§5.9: "0 when cached"). The pop-up also
writes its answer into the call's context (``AmoCall.nearest_lead_id``: the deal's id, or ``NO_ACTIVE_LEAD``
(0) for "read, no active deal"; NULL = not read), so the call's own finish does not read it again however
long the call was.

Staleness (ours): the finish's deal check exists so that no duplicate deal is made. A known active deal is
trusted (the call was about it; at worst a deal closed during the call gets no new one, and the call note is
written anyway). A "no active deal" answer is re-read (E5/E6) only when the finish would otherwise create a
deal, because a manager may have made one during the call. Webhook hints (E18) about a contact drop its entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vpbx.amocrm.per_core import PerCore

if TYPE_CHECKING:
    from vpbx.amocrm.api import AmoApi, Json, Lane
    from vpbx.clock import Clock

LEAD_TTL_S = 60.0
MAX_ENTRIES = 10_000
IN_FLIGHT_WAIT_S = 2.0  # the finish waits this long at most for a pop-up's read in flight (its budget: 1.5 s)
NO_ACTIVE_LEAD = 0  # AmoCall.nearest_lead_id: read, and the contact had no active deal (amoCRM ids are > 0)
WON, LOST = 142, 143  # amoCRM's closed statuses (§2.3 E2)


def active_lead(leads: Sequence[Json]) -> Json | None:
    """F13's nearest active deal: the soonest ``closest_task_at``, else the most recently updated."""
    active = [lead for lead in leads if lead.get("status_id") not in (WON, LOST)]
    with_task = [lead for lead in active if lead.get("closest_task_at")]
    if with_task:
        return min(with_task, key=lambda lead: int(lead["closest_task_at"]))
    return max(active, key=lambda lead: int(lead.get("updated_at") or 0)) if active else None


def lead_ids(contact: Json | None) -> list[int]:
    """The ids of the leads E4/E5 embedded in ``contact``."""
    return [int(x["id"]) for x in ((contact or {}).get("_embedded") or {}).get("leads") or []]


@dataclass(frozen=True, slots=True)
class Nearest:
    """One E5/E6 answer: the contact's name (None: the contact is gone) and its nearest active deal."""

    name: str | None
    lead: Json | None
    at: float  # the clock's monotonic time of the read

    @property
    def lead_id(self) -> int | None:
        return int(self.lead["id"]) if self.lead is not None and self.lead.get("id") is not None else None


class NearestLeads:
    """The 60 s cache of ``Nearest`` per (binding, contact) of this process."""

    def __init__(self, clock: Clock, ttl_s: float = LEAD_TTL_S) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._entries: dict[tuple[uuid.UUID, int], Nearest] = {}
        self._in_flight: dict[tuple[uuid.UUID, int], asyncio.Event] = {}

    def cached(self, binding_id: uuid.UUID, contact_id: int) -> Nearest | None:
        entry = self._entries.get((binding_id, contact_id))
        if entry is None or self.clock.monotonic() - entry.at >= self.ttl_s:
            return None
        return entry

    def remember(
        self, binding_id: uuid.UUID, contact_id: int, name: str | None, leads: Sequence[Json]
    ) -> Nearest:
        now = self.clock.monotonic()
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if now - v.at < self.ttl_s}
            while len(self._entries) >= MAX_ENTRIES:  # all fresh: the oldest go first
                del self._entries[next(iter(self._entries))]
        entry = self._entries[(binding_id, contact_id)] = Nearest(name, active_lead(leads), now)
        return entry

    async def settled(
        self, binding_id: uuid.UUID, contact_id: int, wait_s: float = IN_FLIGHT_WAIT_S
    ) -> Nearest | None:
        """``cached``, once a read of the same contact in flight (the pop-up's, while the call's finish
        already runs) has ended or ``wait_s`` has passed: one read serves both."""
        pending = self._in_flight.get((binding_id, contact_id))
        if pending is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await pending.wait()
        return self.cached(binding_id, contact_id)

    def forget(self, binding_id: uuid.UUID, contact_id: int) -> None:
        self._entries.pop((binding_id, contact_id), None)

    async def read(
        self,
        api: AmoApi,
        binding_id: uuid.UUID,
        contact_id: int,
        *,
        lane: Lane = "background",
        deadline: float | None = None,
    ) -> tuple[Nearest, Json | None, list[Json]]:
        """E5, then E6 when the contact has leads; remembered. (the answer, the contact, all its leads)."""
        key = (binding_id, contact_id)
        done = self._in_flight[key] = asyncio.Event()
        try:
            contact = await api.get_contact(contact_id, lane=lane, deadline=deadline)
            ids = lead_ids(contact)
            leads = await api.get_leads(ids, lane=lane, deadline=deadline) if ids else []
        finally:
            if self._in_flight.get(key) is done:
                del self._in_flight[key]
            done.set()
        return self.remember_read(binding_id, contact_id, contact, leads), contact, leads

    def remember_read(
        self, binding_id: uuid.UUID, contact_id: int, contact: Json | None, leads: Sequence[Json]
    ) -> Nearest:
        """``remember`` an E5 answer (None: the contact is gone) and its E6 leads."""
        name = str(contact.get("name") or "") if contact else None
        return self.remember(binding_id, contact_id, name, leads)


_CACHES: PerCore[NearestLeads] = PerCore()


def nearest_for(core: Any) -> NearestLeads:
    """The process's cache for ``core`` (the pop-ups, the finish jobs and the webhook hints share it)."""
    return _CACHES.get(core, lambda: NearestLeads(core.clock))


__all__ = [
    "LEAD_TTL_S",
    "NO_ACTIVE_LEAD",
    "Nearest",
    "NearestLeads",
    "active_lead",
    "lead_ids",
    "nearest_for",
]
