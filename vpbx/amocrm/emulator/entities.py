"""Writes to an account's entities with amoCRM's validation (amocrm.md §2.3, §4.4).

A batch is all or nothing: every item is checked first, and one violation anywhere answers 400 with every
violation found (``request_id`` is the item's own, else its position). Paths are relative to the item, e.g.
``custom_fields_values.0.field_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from vpbx.amocrm.emulator.world import (
    DETAILS,
    LOST,
    WON,
    Account,
    Invalid,
    Json,
    Problem,
    Violation,
    World,
    _cf_value,
    _enum_of,
    _new_lead,
)

MAX_BATCH = 250
TASK_ENTITY_TYPES = ("leads", "contacts", "companies", "customers")
NOTE_ENTITIES = ("contacts", "leads")
CALL_NOTE_TYPES = ("call_in", "call_out")
CALL_STATUSES = range(1, 8)
WEBHOOK_ACTIONS = {
    "add_contact": "add",
    "update_contact": "update",
    "delete_contact": "delete",
    "restore_contact": "restore",
    "responsible_contact": "responsible",
}


class Checker:
    """Collects violations for one batch."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.prefix = ""  # set while checking an embedded entity (leads/complex: "_embedded.contacts.0.")

    def add(self, rid: str, code: str, path: str) -> None:
        self.violations.append(Violation(rid, code, self.prefix + path, DETAILS[code]))

    def raise_if_any(self) -> None:
        if self.violations:
            raise Invalid(self.violations)


def batch(body: Any) -> list[Json]:
    if not isinstance(body, list):
        raise Problem(400, "Request body must be an array")
    if len(body) > MAX_BATCH:
        raise Problem(400, f"Too many entities: at most {MAX_BATCH} per request")
    if not body:
        raise Problem(400, "Request body is empty")
    for item in body:
        if not isinstance(item, dict):
            raise Problem(400, "Every item must be an object")
    return body


def rid_of(item: Json, position: int) -> str:
    rid = item.get("request_id")
    return str(rid) if rid is not None else str(position)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def check_user(acc: Account, ck: Checker, rid: str, item: Json, key: str) -> None:
    if key in item and item[key] is not None and _int(item[key]) not in acc.users:
        ck.add(rid, "NotSupportedChoice", key)


def check_cfv(acc: Account, entity: str, ck: Checker, rid: str, cfv: Any) -> None:
    if cfv is None:
        return
    if not isinstance(cfv, list):
        ck.add(rid, "InvalidType", "custom_fields_values")
        return
    for n, item in enumerate(cfv):
        path = f"custom_fields_values.{n}"
        if not isinstance(item, dict):
            ck.add(rid, "InvalidType", path)
            continue
        if item.get("field_id") is not None:
            f = acc.field_by(entity, field_id=_int(item["field_id"]))
            if f is None:
                ck.add(rid, "NotSupportedChoice", f"{path}.field_id")
                continue
        elif item.get("field_code") is not None:
            f = acc.field_by(entity, code=item["field_code"])
            if f is None:
                ck.add(rid, "NotSupportedChoice", f"{path}.field_code")
                continue
        else:
            ck.add(rid, "FieldMissing", f"{path}.field_id")
            continue
        values = item.get("values", ...)
        if values is ...:
            ck.add(rid, "FieldMissing", f"{path}.values")
            continue
        if values is None:
            continue  # clears the field
        if not isinstance(values, list):
            ck.add(rid, "InvalidType", f"{path}.values")
            continue
        for m, v in enumerate(values):
            vpath = f"{path}.values.{m}"
            if not isinstance(v, dict):
                ck.add(rid, "InvalidType", vpath)
                continue
            _check_value(f, ck, rid, vpath, v)


def _check_value(f: Json, ck: Checker, rid: str, vpath: str, v: Json) -> None:
    ftype = f["type"]
    if ftype == "multitext":
        if not str(v.get("value") or "").strip():
            ck.add(rid, "NotBlank", f"{vpath}.value")
        key = (
            "enum_code"
            if "enum_code" in v
            else "enum"
            if "enum" in v
            else "enum_id"
            if "enum_id" in v
            else ""
        )
        if key and _enum_of(f, v) is None:
            ck.add(rid, "NotSupportedChoice", f"{vpath}.{key}")
    elif ftype in ("select", "multiselect", "radiobutton"):
        if "enum_id" in v or "enum_code" in v:
            if _enum_of(f, v) is None:
                ck.add(rid, "NotSupportedChoice", f"{vpath}.{'enum_id' if 'enum_id' in v else 'enum_code'}")
        elif "value" in v:
            if _enum_of(f, v) is None:
                ck.add(rid, "NotSupportedChoice", f"{vpath}.value")
        else:
            ck.add(rid, "FieldMissing", f"{vpath}.value")
    elif ftype == "checkbox":
        if not isinstance(v.get("value"), bool):
            ck.add(rid, "InvalidType", f"{vpath}.value")
    elif ftype in ("date", "date_time", "birthday", "numeric"):
        if not isinstance(v.get("value"), int | float) or isinstance(v.get("value"), bool):
            ck.add(rid, "InvalidType", f"{vpath}.value")
    else:
        if "value" not in v:
            ck.add(rid, "FieldMissing", f"{vpath}.value")
        elif v["value"] is None:
            ck.add(rid, "NotNullable", f"{vpath}.value")


def merged_cfv(
    world: World, acc: Account, entity: str, old: list[Json] | None, cfv: Any
) -> list[Json] | None:
    """Apply validated ``custom_fields_values`` onto the stored ones: each named field is replaced."""
    if cfv is None:
        return old
    out = {c["field_id"]: c for c in old or []}
    for item in cfv:
        if item.get("field_id") is not None:
            f = acc.field_by(entity, field_id=_int(item["field_id"]))
        else:
            f = acc.field_by(entity, code=item["field_code"])
        assert f is not None
        if item.get("values") is None:
            out.pop(f["id"], None)
        else:
            out[f["id"]] = _cf_value(f, item["values"], world.switches)
    return list(out.values()) or None


def check_tags(ck: Checker, rid: str, item: Json) -> None:
    tags = (item.get("_embedded") or {}).get("tags")
    if tags is None:
        return
    if not isinstance(tags, list):
        ck.add(rid, "InvalidType", "_embedded.tags")
        return
    for n, t in enumerate(tags):
        if not isinstance(t, dict) or not (t.get("name") or t.get("id")):
            ck.add(rid, "FieldMissing", f"_embedded.tags.{n}.name")


def tags_of(world: World, acc: Account, entity: str, item: Json) -> list[Json] | None:
    tags = (item.get("_embedded") or {}).get("tags")
    if tags is None:
        return None
    return [world.tag(acc, entity, t) for t in tags]


# --- contacts ---------------------------------------------------------------------------------------------


def _check_contact(acc: Account, ck: Checker, rid: str, item: Json) -> None:
    for key in ("name", "first_name", "last_name"):
        if key in item and item[key] is not None and not isinstance(item[key], str):
            ck.add(rid, "InvalidType", key)
    check_user(acc, ck, rid, item, "responsible_user_id")
    check_cfv(acc, "contacts", ck, rid, item.get("custom_fields_values"))
    check_tags(ck, rid, item)


def create_contacts(world: World, acc: Account, body: Any, user_id: int) -> list[Json]:
    items = batch(body)
    ck = Checker()
    for n, item in enumerate(items):
        _check_contact(acc, ck, rid_of(item, n), item)
    ck.raise_if_any()
    return [
        add_contact(world, acc, item, user_id) | {"request_id": rid_of(item, n)}
        for n, item in enumerate(items)
    ]


def add_contact(world: World, acc: Account, item: Json, user_id: int) -> Json:
    """A validated contact item stored; fires ``add_contact``. Answers ``{id}``."""
    now = world.now()
    cid = world.next_id("contacts")
    first, last = str(item.get("first_name") or ""), str(item.get("last_name") or "")
    contact = {
        "id": cid,
        "name": str(item.get("name") or f"{first} {last}".strip()),
        "first_name": first,
        "last_name": last,
        "responsible_user_id": _int(item.get("responsible_user_id")) or user_id,
        "group_id": 0,
        "created_by": _int(item.get("created_by")) or user_id,
        "updated_by": _int(item.get("created_by")) or user_id,
        "created_at": _int(item.get("created_at")) or now,
        "updated_at": _int(item.get("updated_at")) or now,
        "closest_task_at": None,
        "is_deleted": False,
        "is_unsorted": False,
        "custom_fields_values": merged_cfv(world, acc, "contacts", None, item.get("custom_fields_values")),
        "account_id": acc.id,
        "tags": tags_of(world, acc, "contacts", item) or [],
    }
    acc.contacts[cid] = contact
    fire(world, acc, "add_contact", contact)
    return {"id": cid}


def patch_contacts(world: World, acc: Account, items: list[Json], user_id: int) -> list[Json]:
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        cid = _int(item.get("id"))
        if cid is None:
            ck.add(rid, "FieldMissing", "id")
        elif cid not in acc.contacts or acc.contacts[cid]["is_deleted"]:
            ck.add(rid, "NotSupportedChoice", "id")
        _check_contact(acc, ck, rid, item)
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        c = acc.contacts[int(item["id"])]
        old_resp = c["responsible_user_id"]
        for key in ("name", "first_name", "last_name"):
            if item.get(key) is not None:
                c[key] = item[key]
        if item.get("responsible_user_id") is not None:
            c["responsible_user_id"] = int(item["responsible_user_id"])
        c["custom_fields_values"] = merged_cfv(
            world, acc, "contacts", c["custom_fields_values"], item.get("custom_fields_values")
        )
        tags = tags_of(world, acc, "contacts", item)
        if tags is not None:
            c["tags"] = tags
        c["updated_at"] = (
            max(world.now(), c["updated_at"] + 1) if "updated_at" not in item else int(item["updated_at"])
        )
        c["updated_by"] = user_id
        fire(world, acc, "update_contact", c)
        if c["responsible_user_id"] != old_resp:
            fire(world, acc, "responsible_contact", c, old_responsible=old_resp)
        out.append(
            {"id": c["id"], "name": c["name"], "updated_at": c["updated_at"], "request_id": rid_of(item, n)}
        )
    return out


# --- leads ------------------------------------------------------------------------------------------------


def _check_lead(acc: Account, ck: Checker, rid: str, item: Json, old: Json | None) -> None:
    pipeline_id = _int(item.get("pipeline_id")) if item.get("pipeline_id") is not None else None
    if item.get("pipeline_id") is not None and pipeline_id not in acc.pipelines:
        ck.add(rid, "NotSupportedChoice", "pipeline_id")
    elif item.get("status_id") is not None:
        pid = pipeline_id or (old["pipeline_id"] if old else None)
        if pid is None:
            main = acc.main_pipeline()
            pid = main["id"] if main else None
        if pid is None or _int(item["status_id"]) not in acc.status_ids(pid):
            ck.add(rid, "NotSupportedChoice", "status_id")
    if "price" in item and item["price"] is not None and _int(item["price"]) is None:
        ck.add(rid, "InvalidType", "price")
    check_user(acc, ck, rid, item, "responsible_user_id")
    check_cfv(acc, "leads", ck, rid, item.get("custom_fields_values"))
    check_tags(ck, rid, item)
    contacts = (item.get("_embedded") or {}).get("contacts")
    if contacts is not None:
        if not isinstance(contacts, list):
            ck.add(rid, "InvalidType", "_embedded.contacts")
        else:
            for n, c in enumerate(contacts):
                if not isinstance(c, dict) or _int(c.get("id")) not in acc.contacts:
                    ck.add(rid, "NotSupportedChoice", f"_embedded.contacts.{n}.id")


def create_leads(world: World, acc: Account, body: Any, user_id: int) -> list[Json]:
    items = batch(body)
    ck = Checker()
    for n, item in enumerate(items):
        _check_lead(acc, ck, rid_of(item, n), item, None)
    ck.raise_if_any()
    return [
        add_lead(world, acc, item, user_id) | {"request_id": rid_of(item, n)} for n, item in enumerate(items)
    ]


def add_lead(world: World, acc: Account, item: Json, user_id: int, *, unsorted: bool = False) -> Json:
    now = world.now()
    pipeline = acc.pipelines.get(_int(item.get("pipeline_id")) or 0) or acc.main_pipeline()
    assert pipeline is not None
    if unsorted:
        status_id = pipeline["_statuses"][0]["id"]
    elif item.get("status_id") is not None:
        status_id = int(item["status_id"])
    else:
        status_id = pipeline["_statuses"][1]["id"]  # the first status after «Неразобранное»
    lid = world.next_id("leads")
    doc = {**item, "responsible_user_id": _int(item.get("responsible_user_id")) or user_id}
    doc.setdefault("created_by", user_id)
    lead = _new_lead(lid, doc, acc, pipeline["id"], status_id, now)
    lead["custom_fields_values"] = merged_cfv(world, acc, "leads", None, item.get("custom_fields_values"))
    lead["tags"] = tags_of(world, acc, "leads", item) or []
    if not lead["name"]:
        lead["name"] = f"Сделка #{lid}"
    acc.leads[lid] = lead
    for n, c in enumerate((item.get("_embedded") or {}).get("contacts") or []):
        acc.links[(int(c["id"]), lid)] = bool(c.get("is_main", n == 0))
    return {"id": lid}


def patch_leads(world: World, acc: Account, items: list[Json], user_id: int) -> list[Json]:
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        lid = _int(item.get("id"))
        if lid is None:
            ck.add(rid, "FieldMissing", "id")
            continue
        if lid not in acc.leads:
            ck.add(rid, "NotSupportedChoice", "id")
            continue
        _check_lead(acc, ck, rid, item, acc.leads[lid])
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        ld = acc.leads[int(item["id"])]
        for key in ("name", "price", "responsible_user_id", "pipeline_id", "status_id"):
            if item.get(key) is not None:
                ld[key] = item[key] if key == "name" else int(item[key])
        if item.get("pipeline_id") is not None and item.get("status_id") is None:
            ld["status_id"] = acc.pipelines[ld["pipeline_id"]]["_statuses"][1]["id"]
        if ld["status_id"] in (WON, LOST) and ld["closed_at"] is None:
            ld["closed_at"] = world.now()
        ld["custom_fields_values"] = merged_cfv(
            world, acc, "leads", ld["custom_fields_values"], item.get("custom_fields_values")
        )
        tags = tags_of(world, acc, "leads", item)
        if tags is not None:
            ld["tags"] = tags
        for m, c in enumerate((item.get("_embedded") or {}).get("contacts") or []):
            acc.links[(int(c["id"]), ld["id"])] = bool(c.get("is_main", m == 0))
        ld["updated_at"] = max(world.now(), ld["updated_at"] + 1)
        ld["updated_by"] = user_id
        out.append({"id": ld["id"], "updated_at": ld["updated_at"], "request_id": rid_of(item, n)})
    return out


def is_active_lead(lead: Json) -> bool:
    return lead["status_id"] not in (WON, LOST) and not lead["is_deleted"]


# --- tasks ------------------------------------------------------------------------------------------------


def _check_task(acc: Account, ck: Checker, rid: str, item: Json, *, create: bool) -> None:
    if create:
        if not item.get("text"):
            ck.add(rid, "FieldMissing" if "text" not in item else "NotBlank", "text")
        if item.get("complete_till") is None:
            ck.add(rid, "FieldMissing", "complete_till")
    if item.get("complete_till") is not None and _int(item["complete_till"]) is None:
        ck.add(rid, "InvalidType", "complete_till")
    if item.get("task_type_id") is not None and _int(item["task_type_id"]) not in (1, 2):
        ck.add(rid, "NotSupportedChoice", "task_type_id")
    etype = item.get("entity_type")
    if etype is not None and etype not in TASK_ENTITY_TYPES:
        ck.add(rid, "NotSupportedChoice", "entity_type")
    elif item.get("entity_id") is not None:
        eid = _int(item["entity_id"])
        if etype is None:
            ck.add(rid, "FieldMissing", "entity_type")
        elif etype in ("contacts", "leads") and eid not in getattr(acc, etype):
            ck.add(rid, "NotSupportedChoice", "entity_id")
    check_user(acc, ck, rid, item, "responsible_user_id")


def create_tasks(world: World, acc: Account, body: Any, user_id: int) -> list[Json]:
    items = batch(body)
    ck = Checker()
    for n, item in enumerate(items):
        _check_task(acc, ck, rid_of(item, n), item, create=True)
    ck.raise_if_any()
    out = []
    now = world.now()
    for n, item in enumerate(items):
        tid = world.next_id("tasks")
        acc.tasks[tid] = {
            "id": tid,
            "created_by": _int(item.get("created_by")) or user_id,
            "updated_by": _int(item.get("created_by")) or user_id,
            "created_at": _int(item.get("created_at")) or now,
            "updated_at": now,
            "responsible_user_id": _int(item.get("responsible_user_id")) or user_id,
            "group_id": 0,
            "entity_id": _int(item.get("entity_id")),
            "entity_type": item.get("entity_type"),
            "duration": int(item.get("duration") or 0),
            "is_completed": bool(item.get("is_completed", False)),
            "task_type_id": _int(item.get("task_type_id")) or 1,
            "text": str(item["text"]),
            "result": [],
            "complete_till": int(item["complete_till"]),
            "account_id": acc.id,
        }
        touch_closest_task(acc, acc.tasks[tid])
        out.append({"id": tid, "request_id": rid_of(item, n)})
    return out


def touch_closest_task(acc: Account, task: Json) -> None:
    """Keep the entity's ``closest_task_at`` (E6 reads it): the earliest deadline of its open tasks."""
    etype, eid = task.get("entity_type"), task.get("entity_id")
    if etype not in ("contacts", "leads") or eid is None:
        return
    entity = getattr(acc, etype).get(eid)
    if entity is None:
        return
    open_tasks = [
        t["complete_till"]
        for t in acc.tasks.values()
        if t["entity_type"] == etype and t["entity_id"] == eid and not t["is_completed"]
    ]
    entity["closest_task_at"] = min(open_tasks) if open_tasks else None


def patch_tasks(world: World, acc: Account, items: list[Json], user_id: int) -> list[Json]:
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        if _int(item.get("id")) not in acc.tasks:
            ck.add(rid, "NotSupportedChoice" if item.get("id") is not None else "FieldMissing", "id")
            continue
        _check_task(acc, ck, rid, item, create=False)
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        t = acc.tasks[int(item["id"])]
        for key in (
            "text",
            "complete_till",
            "responsible_user_id",
            "task_type_id",
            "entity_id",
            "entity_type",
        ):
            if item.get(key) is not None:
                t[key] = item[key]
        if "is_completed" in item:
            t["is_completed"] = bool(item["is_completed"])
        if isinstance(item.get("result"), dict):
            t["result"] = item["result"]
        t["updated_at"] = world.now()
        t["updated_by"] = user_id
        touch_closest_task(acc, t)
        out.append({"id": t["id"], "updated_at": t["updated_at"], "request_id": rid_of(item, n)})
    return out


# --- notes ------------------------------------------------------------------------------------------------


def check_call_params(
    ck: Checker, rid: str, params: Any, prefix: str = "params.", *, phone: bool = False
) -> None:
    """A call note's ``params`` (or a call of E15, ``prefix=""``, where ``phone`` finds the card)."""
    if not isinstance(params, dict):
        ck.add(rid, "FieldMissing", prefix.rstrip("."))
        return
    if not str(params.get("source") or "").strip():
        ck.add(rid, "NotBlank", f"{prefix}source")
    if params.get("duration") is None:
        ck.add(rid, "FieldMissing", f"{prefix}duration")
    elif _int(params["duration"]) is None:
        ck.add(rid, "InvalidType", f"{prefix}duration")
    if params.get("call_status") is not None and _int(params["call_status"]) not in CALL_STATUSES:
        ck.add(rid, "NotSupportedChoice", f"{prefix}call_status")
    if phone and not str(params.get("phone") or "").strip():
        ck.add(rid, "NotBlank", f"{prefix}phone")


def create_notes(
    world: World, acc: Account, entity: str, body: Any, user_id: int, entity_id: int | None = None
) -> list[Json]:
    if entity not in NOTE_ENTITIES:
        raise Problem(404, "Not Found")
    items = batch(body)
    ck = Checker()
    store: dict[int, Json] = getattr(acc, entity)
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        eid = entity_id if entity_id is not None else _int(item.get("entity_id"))
        if eid is None:
            ck.add(rid, "FieldMissing", "entity_id")
        elif eid not in store or store[eid]["is_deleted"]:
            ck.add(rid, "NotSupportedChoice", "entity_id")
        note_type = item.get("note_type")
        if not note_type:
            ck.add(rid, "FieldMissing", "note_type")
        elif note_type in CALL_NOTE_TYPES:
            check_call_params(ck, rid, item.get("params"))
        elif note_type not in ("common", "service_message", "extended_service_message", "sms_in", "sms_out"):
            ck.add(rid, "NotSupportedChoice", "note_type")
        check_user(acc, ck, rid, item, "responsible_user_id")
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        eid = entity_id if entity_id is not None else int(item["entity_id"])
        note = add_note(world, acc, entity, eid, item, user_id)
        row: Json = {"id": note["id"], "request_id": rid_of(item, n)}
        if world.switches.notes_echo_entity_id:
            row["entity_id"] = eid
        out.append(row)
    return out


def live_note(acc: Account, entity: str, note_id: int | None) -> Json | None:
    """The ``entity``'s note ``note_id`` while its card exists (a deleted card takes its notes along)."""
    note = acc.notes.get(note_id) if note_id is not None else None
    if note is None or note["entity_type"] != entity:
        return None
    card = getattr(acc, entity).get(note["entity_id"])
    if card is None or card.get("is_deleted"):
        return None
    return note


def patch_notes(world: World, acc: Account, entity: str, items: list[Json], user_id: int) -> list[Json]:
    """Note edit (``PATCH /api/v4/{entity}/notes``, each item with ``id``): ``params`` replace the note's
    params as a whole (a call note's are checked like on create), ``note_type`` cannot change (amoCRM?)."""
    if entity not in NOTE_ENTITIES:
        raise Problem(404, "Not Found")
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        note = live_note(acc, entity, _int(item.get("id")))
        if note is None:
            ck.add(rid, "NotSupportedChoice" if item.get("id") is not None else "FieldMissing", "id")
            continue
        if item.get("entity_id") is not None and _int(item["entity_id"]) != note["entity_id"]:
            ck.add(rid, "NotSupportedChoice", "entity_id")
        if item.get("note_type") is not None and item["note_type"] != note["note_type"]:
            ck.add(rid, "NotSupportedChoice", "note_type")
        if "params" in item:
            if note["note_type"] in CALL_NOTE_TYPES:
                check_call_params(ck, rid, item["params"])
            elif not isinstance(item["params"], dict):
                ck.add(rid, "InvalidType", "params")
        check_user(acc, ck, rid, item, "responsible_user_id")
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        note = acc.notes[int(item["id"])]
        if "params" in item:
            params = dict(item["params"])
            if note["note_type"] in CALL_NOTE_TYPES:
                params["duration"] = int(params["duration"])
                if params.get("call_status") is not None:
                    params["call_status"] = int(params["call_status"])
            note["params"] = params
        if item.get("responsible_user_id") is not None:
            note["responsible_user_id"] = int(item["responsible_user_id"])
        note["updated_at"] = world.now()
        note["updated_by"] = user_id
        out.append(
            {
                "id": note["id"],
                "entity_id": note["entity_id"],
                "updated_at": note["updated_at"],
                "request_id": rid_of(item, n),
            }
        )
    return out


def add_note(world: World, acc: Account, entity: str, entity_id: int, item: Json, user_id: int) -> Json:
    now = world.now()
    nid = world.next_id("notes")
    params = dict(item.get("params") or {})
    if item.get("note_type") in CALL_NOTE_TYPES:
        params["duration"] = int(params["duration"])
        if params.get("call_status") is not None:
            params["call_status"] = int(params["call_status"])
    note = {
        "id": nid,
        "entity_id": entity_id,
        "entity_type": entity,
        "created_by": _int(item.get("created_by")) if item.get("created_by") is not None else user_id,
        "updated_by": user_id,
        "created_at": _int(item.get("created_at")) or now,
        "updated_at": now,
        "responsible_user_id": _int(item.get("responsible_user_id")) or user_id,
        "group_id": 0,
        "note_type": item["note_type"],
        "params": params,
        "account_id": acc.id,
    }
    acc.notes[nid] = note
    return note


# --- webhooks ---------------------------------------------------------------------------------------------


def fire(
    world: World, acc: Account, action: str, contact: Json, *, old_responsible: int | None = None
) -> None:
    """Queue a webhook (E18 shape) for every destination subscribed to ``action``; sent after the answer."""
    for hook in acc.webhooks.values():
        if action not in hook["settings"] or hook.get("disabled"):
            continue
        key = f"contacts[{WEBHOOK_ACTIONS[action]}][0]"
        fields: list[tuple[str, Any]] = [
            (f"{key}[id]", contact["id"]),
            (f"{key}[name]", contact["name"]),
            (f"{key}[responsible_user_id]", contact["responsible_user_id"]),
            (f"{key}[date_create]", contact["created_at"]),
            (f"{key}[last_modified]", contact["updated_at"]),
            (f"{key}[created_user_id]", contact["created_by"]),
            (f"{key}[modified_user_id]", contact["updated_by"]),
            (f"{key}[account_id]", acc.id),
            (f"{key}[type]", "contact"),
        ]
        if old_responsible is not None:
            fields.append((f"{key}[old_responsible_user_id]", old_responsible))
        for n, cf in enumerate(contact.get("custom_fields_values") or []):
            fields.append((f"{key}[custom_fields][{n}][id]", cf["field_id"]))
            fields.append((f"{key}[custom_fields][{n}][name]", cf["field_name"]))
            if cf.get("field_code"):
                fields.append((f"{key}[custom_fields][{n}][code]", cf["field_code"]))
            for m, v in enumerate(cf["values"]):
                fields.append((f"{key}[custom_fields][{n}][values][{m}][value]", v.get("value")))
                if v.get("enum_id") is not None:
                    fields.append((f"{key}[custom_fields][{n}][values][{m}][enum]", v["enum_id"]))
        fields += [
            ("account[id]", acc.id),
            ("account[subdomain]", acc.subdomain),
            ("account[_links][self]", acc.href("")),
        ]
        body = "&".join(f"{quote(k, safe='')}={quote(str(v), safe='')}" for k, v in fields)
        world.pending_hooks.append((acc, hook["destination"], body))


def form_pairs(body: str) -> Sequence[tuple[str, str]]:
    """Decode a delivered webhook (tests use it to read what was sent)."""
    from urllib.parse import parse_qsl

    return parse_qsl(body, keep_blank_values=True)


# --- leads/complex, unsorted ------------------------------------------------------------------------------

MAX_COMPLEX = 50


def _phone_keys(contact: Json) -> set[str]:
    from vpbx.amocrm.emulator.matcher import national10

    keys: set[str] = set()
    for cf in contact.get("custom_fields_values") or []:
        if cf.get("field_code") == "PHONE":
            keys.update(national10(v.get("value", "")) for v in cf.get("values") or [])
    keys.discard("")
    return keys


def create_complex(world: World, acc: Account, body: Any, user_id: int) -> list[Json]:
    """``POST /api/v4/leads/complex`` (E10): a top-level array; with the account's duplicate control a contact
    with the same normalised phone is reused (``merged: true``)."""
    items = batch(body)
    if len(items) > MAX_COMPLEX:
        raise Problem(400, f"Too many entities: at most {MAX_COMPLEX} per request")
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        embedded = item.get("_embedded") or {}
        lead_only = {
            **item,
            "_embedded": {k: v for k, v in embedded.items() if k not in ("contacts", "companies")},
        }
        _check_lead(acc, ck, rid, lead_only, None)
        contacts = embedded.get("contacts") or []
        if not isinstance(contacts, list) or len(contacts) > 1:
            ck.add(rid, "NotSupportedChoice", "_embedded.contacts")
            continue
        if len(embedded.get("companies") or []) > 1:
            ck.add(rid, "NotSupportedChoice", "_embedded.companies")
        for m, c in enumerate(contacts):
            if not isinstance(c, dict):
                ck.add(rid, "InvalidType", f"_embedded.contacts.{m}")
                continue
            if c.get("id") is not None:
                if ent_contact_missing(acc, c["id"]):
                    ck.add(rid, "NotSupportedChoice", f"_embedded.contacts.{m}.id")
                continue
            ck.prefix = f"_embedded.contacts.{m}."
            _check_contact(acc, ck, rid, c)
            ck.prefix = ""
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        embedded = item.get("_embedded") or {}
        contact_id: int | None = None
        merged = False
        for c in embedded.get("contacts") or []:
            if c.get("id") is not None:
                contact_id = int(c["id"])
                continue
            if acc.duplicate_control:
                probe = {
                    "custom_fields_values": merged_cfv(
                        world, acc, "contacts", None, c.get("custom_fields_values")
                    )
                }
                keys = _phone_keys(probe)
                twins = [
                    x for x in acc.contacts.values() if not x["is_deleted"] and keys and keys & _phone_keys(x)
                ]
                if twins:
                    contact_id = max(twins, key=lambda x: (x["updated_at"], x["id"]))["id"]
                    merged = True
                    continue
            contact_id = add_contact(world, acc, c, user_id)["id"]
        lead_item = {
            **item,
            "_embedded": {
                "tags": embedded.get("tags"),
                "contacts": [{"id": contact_id, "is_main": True}] if contact_id else [],
            },
        }
        lead = add_lead(world, acc, lead_item, user_id)
        out.append(
            {
                "id": lead["id"],
                "contact_id": contact_id,
                "company_id": None,
                "request_id": [rid_of(item, n)],
                "merged": merged,
            }
        )
    return out


def ent_contact_missing(acc: Account, value: Any) -> bool:
    cid = _int(value)
    return cid is None or cid not in acc.contacts or acc.contacts[cid]["is_deleted"]


def create_unsorted_sip(world: World, acc: Account, body: Any, user_id: int) -> list[Json]:
    """``POST /api/v4/leads/unsorted/sip`` (E19): a lead in the pipeline's unsorted status, its contact."""
    import uuid as _uuid

    items = batch(body)
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        for key in ("source_name", "source_uid"):
            if not str(item.get(key) or "").strip():
                ck.add(rid, "NotBlank", key)
        if item.get("pipeline_id") is not None and _int(item["pipeline_id"]) not in acc.pipelines:
            ck.add(rid, "NotSupportedChoice", "pipeline_id")
        meta = item.get("metadata")
        if not isinstance(meta, dict):
            ck.add(rid, "FieldMissing", "metadata")
        else:
            for key in ("from", "phone", "called_at", "uniq", "service_code"):
                if meta.get(key) in (None, ""):
                    ck.add(rid, "FieldMissing", f"metadata.{key}")
        embedded = item.get("_embedded") or {}
        for m, c in enumerate(embedded.get("contacts") or []):
            ck.prefix = f"_embedded.contacts.{m}."
            _check_contact(acc, ck, rid, c if isinstance(c, dict) else {})
            ck.prefix = ""
    ck.raise_if_any()
    out = []
    for n, item in enumerate(items):
        embedded = item.get("_embedded") or {}
        contact_ids = [add_contact(world, acc, c, user_id)["id"] for c in embedded.get("contacts") or []]
        for cid in contact_ids:
            acc.contacts[cid]["is_unsorted"] = True
        lead_ids = []
        for ld in embedded.get("leads") or [{}]:
            lead_item = {
                **ld,
                "pipeline_id": item.get("pipeline_id"),
                "_embedded": {
                    "contacts": [{"id": cid, "is_main": k == 0} for k, cid in enumerate(contact_ids)]
                },
            }
            lead_ids.append(add_lead(world, acc, lead_item, user_id, unsorted=True)["id"])
        uid = str(_uuid.uuid4())
        acc.unsorted.append(
            {
                "uid": uid,
                "source_uid": item["source_uid"],
                "source_name": item["source_name"],
                "category": "sip",
                "pipeline_id": acc.leads[lead_ids[0]]["pipeline_id"],
                "created_at": _int(item.get("created_at")) or world.now(),
                "metadata": item["metadata"],
                "lead_ids": lead_ids,
                "contact_ids": contact_ids,
            }
        )
        out.append(
            {
                "uid": uid,
                "account_id": acc.id,
                "request_id": rid_of(item, n),
                "lead_ids": lead_ids,
                "contact_ids": contact_ids,
            }
        )
    return out


# --- calls, v2 events --------------------------------------------------------------------------------------


def _cards_with(world: World, acc: Account, phone: str) -> list[Json]:
    from vpbx.amocrm.emulator.matcher import phone_matches

    mode = world.switches.calls_match_mode
    found = [c for c in acc.contacts.values() if not c["is_deleted"] and phone_matches(c, phone, mode)]
    return sorted(found, key=lambda c: (c["updated_at"], c["id"]), reverse=True)


def add_calls(world: World, acc: Account, body: Any, user_id: int) -> tuple[list[Json], list[Json]]:
    """``POST /api/v4/calls`` (E15) with the attach rule of §2.3: one active lead → the lead, else the
    contact; no card with the number → an ``Entity not found`` error for that item."""
    items = batch(body)
    ck = Checker()
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        if item.get("direction") not in ("inbound", "outbound"):
            ck.add(rid, "NotSupportedChoice" if "direction" in item else "FieldMissing", "direction")
        check_call_params(ck, rid, item, prefix="", phone=True)
        check_user(acc, ck, rid, item, "responsible_user_id")
    ck.raise_if_any()
    done: list[Json] = []
    errors: list[Json] = []
    for n, item in enumerate(items):
        rid = rid_of(item, n)
        cards = _cards_with(world, acc, str(item["phone"]))
        if not cards:
            errors.append(
                {"title": "Entity not found", "status": 400, "request_id": rid, "detail": "Entity not found"}
            )
            continue
        contact = cards[0]
        active = [
            acc.leads[lid]
            for (cid, lid) in acc.links
            if cid == contact["id"] and lid in acc.leads and is_active_lead(acc.leads[lid])
        ]
        if len(active) == 1:
            entity, entity_id, kind = "leads", active[0]["id"], "lead"
        else:
            entity, entity_id, kind = "contacts", contact["id"], "contact"
        params = {
            k: item[k]
            for k in (
                "uniq",
                "duration",
                "source",
                "link",
                "phone",
                "call_status",
                "call_result",
                "call_responsible",
            )
            if k in item
        }
        note_item = {
            "note_type": "call_in" if item["direction"] == "inbound" else "call_out",
            "params": params,
            "created_by": item.get("created_by"),
            "created_at": item.get("created_at"),
            "responsible_user_id": item.get("responsible_user_id"),
        }
        note = add_note(world, acc, entity, entity_id, note_item, user_id)
        call = {
            "id": note["id"],
            "entity_id": entity_id,
            "entity_type": kind,
            "account_id": acc.id,
            "request_id": rid,
        }
        acc.calls.append(
            call | {"direction": item["direction"], "phone": item["phone"], "uniq": item.get("uniq")}
        )
        done.append(call)
    return done, errors


def add_events_v2(world: World, acc: Account, body: Any) -> None:
    """``POST /api/v2/events`` (E16): each ``add`` item recorded with the card its phone resolves to."""
    if not isinstance(body, dict) or not isinstance(body.get("add"), list) or not body["add"]:
        raise Problem(400, 'Expected {"add": [...]}')
    for item in body["add"]:
        if not isinstance(item, dict) or not item.get("phone_number"):
            raise Problem(400, "Every event needs phone_number")
        cards = _cards_with(world, acc, str(item["phone_number"]))
        acc.events_v2.append(
            {
                "type": item.get("type"),
                "phone_number": item["phone_number"],
                "users": list(item.get("users") or []),
                "resolved": {"type": "contact", "id": cards[0]["id"]} if cards else None,
                "at": world.now(),
            }
        )


# --- webhook subscriptions --------------------------------------------------------------------------------


def subscribe(world: World, acc: Account, body: Any, user_id: int) -> Json:
    if not isinstance(body, dict) or not str(body.get("destination") or "").strip():
        raise Invalid([Violation("0", "NotBlank", "destination", DETAILS["NotBlank"])])
    settings = body.get("settings")
    if not isinstance(settings, list) or not settings:
        raise Invalid([Violation("0", "NotBlank", "settings", DETAILS["NotBlank"])])
    bad = [
        n
        for n, s in enumerate(settings)
        if s not in WEBHOOK_ACTIONS and not str(s).endswith(("_lead", "_task"))
    ]
    if bad:
        raise Invalid(
            [Violation("0", "NotSupportedChoice", f"settings.{bad[0]}", DETAILS["NotSupportedChoice"])]
        )
    dest = str(body["destination"])
    now = world.now()
    hook = acc.webhooks.get(dest)
    if hook is None:
        hook = acc.webhooks[dest] = {
            "id": world.next_id("webhooks"),
            "destination": dest,
            "created_at": now,
            "updated_at": now,
            "account_id": acc.id,
            "created_by": user_id,
            "sort": int(body.get("sort") or 1),
            "disabled": False,
            "settings": [],
        }
    hook["settings"] = [str(s) for s in settings]
    hook["updated_at"] = now
    return hook


def unsubscribe(acc: Account, body: Any) -> None:
    if not isinstance(body, dict) or not str(body.get("destination") or "").strip():
        raise Invalid([Violation("0", "NotBlank", "destination", DETAILS["NotBlank"])])
    acc.webhooks.pop(str(body["destination"]), None)
