"""A small in-memory ``AmoApi`` for the job engine's unit tests: contacts, leads, tasks, notes and calls
with amoCRM's shapes as §2.3 reads them, every call recorded in ``requests``, and faults per method
(raise before applying, or apply and then raise: the lost answer of §5.6)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vpbx.amocrm.errors import AmoEntityNotFound, AmoError
from vpbx.crm.phone import match_key

Json = dict[str, Any]


@dataclass
class Fault:
    error: AmoError
    apply: bool = False  # perform the write, then raise (apply_then_drop)
    times: int = 1


@dataclass
class FakeAmo:
    start: int = 1_768_467_600
    clock: Any = None  # a vpbx Clock: entities get its time as created_at
    contacts: dict[int, Json] = field(default_factory=dict)
    leads: dict[int, Json] = field(default_factory=dict)
    tasks: dict[int, Json] = field(default_factory=dict)
    notes: dict[int, Json] = field(default_factory=dict)
    users_list: list[Json] = field(default_factory=list)
    pipelines_list: list[Json] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    calls_find_contact: bool = True
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def fail(self, method: str, error: AmoError, *, apply: bool = False, times: int = 1) -> None:
        self.faults.setdefault(method, []).append(Fault(error, apply, times))

    def _fault(self, method: str) -> Fault | None:
        self.requests.append(method)
        queue = self.faults.get(method) or []
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.pop(0)
        return fault

    def _check(self, method: str) -> Fault | None:
        fault = self._fault(method)
        if fault is not None and not fault.apply:
            raise fault.error
        return fault

    @property
    def now(self) -> int:
        return int(self.clock.now().timestamp()) if self.clock is not None else self.start

    def _id(self, base: int) -> int:
        return base + next(self._ids)

    def add_contact(
        self, cid: int, name: str, phone: str, responsible: int, leads: Sequence[int] = ()
    ) -> None:
        self.contacts[cid] = {
            "id": cid,
            "name": name,
            "responsible_user_id": responsible,
            "created_at": self.now - 86400,
            "updated_at": self.now - 86400,
            "custom_fields_values": [
                {"field_code": "PHONE", "values": [{"value": phone, "enum_code": "WORK"}]}
            ],
            "_embedded": {"leads": [{"id": lid} for lid in leads]},
        }

    # --- metadata
    async def account(self) -> Json:
        self.requests.append("account")
        return {"id": 30000001}

    async def users(self) -> list[Json]:
        self._check("users")
        return self.users_list

    async def pipelines(self) -> list[Json]:
        self._check("pipelines")
        return self.pipelines_list

    async def custom_fields(self, entity: str) -> list[Json]:
        return []

    # --- reads
    async def search_contacts(
        self, query: str, *, lane: str = "background", deadline: float | None = None
    ) -> list[Json]:
        self._check("search_contacts")
        out = []
        for c in self.contacts.values():
            phones = [v["value"] for cf in c.get("custom_fields_values") or [] for v in cf["values"]]
            if any(query in "".join(ch for ch in str(p) if ch.isdigit()) for p in phones):
                out.append(c)
        return out

    async def get_contact(
        self, contact_id: int, *, lane: str = "background", deadline: float | None = None
    ) -> Json | None:
        self._check("get_contact")
        return self.contacts.get(contact_id)

    async def get_leads(
        self, ids: Sequence[int], *, lane: str = "background", deadline: float | None = None
    ) -> list[Json]:
        self._check("get_leads")
        return [self.leads[i] for i in ids if i in self.leads]

    async def list_tasks(
        self, *, entity_type: str, entity_ids: Sequence[int], is_completed: bool | None = False
    ) -> list[Json]:
        self._check("list_tasks")
        return [
            t
            for t in self.tasks.values()
            if t.get("entity_type") == entity_type and t.get("entity_id") in entity_ids
        ]

    async def list_notes(
        self, entity: str, entity_id: int, note_types: Sequence[str] = ("call_in", "call_out")
    ) -> list[Json]:
        self._check("list_notes")
        return [n for n in self.notes.values() if n["entity_type"] == entity and n["entity_id"] == entity_id]

    # --- writes
    async def create_contacts(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        fault = self._check("create_contacts")
        out = []
        for item in items:
            cid = self._id(10_000_000)
            contact = {
                **item,
                "id": cid,
                "created_at": self.now,
                "updated_at": self.now,
                "_embedded": {"leads": [], **(item.get("_embedded") or {})},
            }
            contact.pop("request_id", None)
            self.contacts[cid] = contact
            out.append({"id": cid, "request_id": item.get("request_id")})
        if fault is not None:
            raise fault.error
        return out

    async def update_contact(self, contact_id: int, fields: Mapping[str, Any]) -> Json:
        self._check("update_contact")
        self.contacts[contact_id].update(fields)
        return {"id": contact_id}

    async def update_lead(self, lead_id: int, fields: Mapping[str, Any]) -> Json:
        self._check("update_lead")
        self.leads[lead_id].update(fields)
        return {"id": lead_id}

    async def create_leads(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        fault = self._check("create_leads")
        out = []
        for item in items:
            lid = self._id(20_000_000)
            lead = {**item, "id": lid, "created_at": self.now, "updated_at": self.now}
            self.leads[lid] = lead
            for c in (item.get("_embedded") or {}).get("contacts") or []:
                self.contacts[c["id"]].setdefault("_embedded", {}).setdefault("leads", []).append({"id": lid})
            out.append({"id": lid, "request_id": item.get("request_id")})
        if fault is not None:
            raise fault.error
        return out

    async def create_complex(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        raise NotImplementedError

    async def add_unsorted_sip(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        self._check("add_unsorted_sip")
        out = []
        for item in items:
            lid = self._id(20_000_000)
            self.leads[lid] = {
                "id": lid,
                "name": item["_embedded"]["leads"][0]["name"],
                "status_id": 1,
                "created_at": self.now,
                "unsorted": item,
            }
            out.append({"uid": f"u{lid}", "_embedded": {"leads": [{"id": lid}], "contacts": []}})
        return out

    async def create_tasks(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        fault = self._check("create_tasks")
        out = []
        for item in items:
            tid = self._id(30_000_000)
            self.tasks[tid] = {**item, "id": tid}
            out.append({"id": tid, "request_id": item.get("request_id")})
        if fault is not None:
            raise fault.error
        return out

    async def add_notes(self, entity: str, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        fault = self._check("add_notes")
        out = []
        for item in items:
            nid = self._id(40_000_000)
            self.notes[nid] = {**item, "id": nid, "entity_type": entity}
            out.append({"id": nid, "entity_id": item["entity_id"], "request_id": item.get("request_id")})
        if fault is not None:
            raise fault.error
        return out

    async def update_note(self, entity: str, note_id: int, fields: Mapping[str, Any]) -> Json:
        self._check("update_note")
        note = self.notes.get(note_id)
        if note is None or note["entity_type"] != entity:
            raise AmoEntityNotFound("Entity not found", status=404)
        note.update(fields)
        return {"id": note_id, "entity_id": note["entity_id"]}

    async def add_calls(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        self._check("add_calls")
        out = []
        for item in items:
            key = match_key(item["phone"])
            contact = next(
                (
                    c
                    for c in self.contacts.values()
                    if any(
                        match_key(str(v["value"])) == key
                        for cf in c.get("custom_fields_values") or []
                        for v in cf["values"]
                    )
                ),
                None,
            )
            if contact is None or not self.calls_find_contact:
                raise AmoEntityNotFound("Entity not found")
            nid = self._id(40_000_000)
            self.notes[nid] = {
                "id": nid,
                "entity_type": "contacts",
                "entity_id": contact["id"],
                "params": item,
                "note_type": item["direction"],
            }
            out.append({"id": nid, "entity_id": contact["id"], "entity_type": "contacts"})
        return out

    async def add_events_v2(self, items: Sequence[Mapping[str, Any]]) -> None:
        self.requests.append("add_events_v2")

    async def subscribe_webhook(self, destination: str, settings: Sequence[str]) -> Json:
        return {"id": 1}

    async def unsubscribe_webhook(self, destination: str) -> None:
        return None


class FakeClients:
    def __init__(self, api: FakeAmo) -> None:
        self.api = api

    def for_account(self, amo_account_id: int) -> FakeAmo:
        return self.api
