"""The emulator's in-memory world (amocrm.md §4.1): integrations, accounts with their entities, OAuth codes
and tokens, the virtual clock, fault rules, the request log and the rate limiter's windows.

Everything lives in one ``World`` per emulator process; nothing is shared between two emulators, so every test
gets its own. Ids are deterministic: one counter per entity kind for the whole process (as amoCRM's ids are
global), starting at ``Switches.id_bases`` and skipping ids the fixture uses.
"""

from __future__ import annotations

import copy
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from vpbx.amocrm.emulator.config import Switches, merge_switches

Json = dict[str, Any]

WON, LOST = 142, 143  # amoCRM's fixed closing statuses of every pipeline
UNSORTED_TYPE = 1
TASK_TYPES = (
    {"id": 1, "name": "Связаться", "code": "FOLLOW_UP"},
    {"id": 2, "name": "Встреча", "code": "MEETING"},
)
PHONE_ENUMS = ("WORK", "WORKDD", "MOB", "FAX", "HOME", "OTHER")
EMAIL_ENUMS = ("WORK", "PRIV", "OTHER")
STANDARD_FIELD_NAMES = {"PHONE": "Телефон", "EMAIL": "Email"}
LOG_CAP = 20_000  # entries kept per account
BODY_CAP = 64 * 1024  # bytes of a request or answer body kept in the log


class Problem(Exception):
    """An error answer: problem+json with ``title``/``type``/``status``/``detail`` (plus extra keys)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body: Json = {
            "title": title or TITLES.get(status, "Error"),
            "type": f"https://httpstatus.es/{status}",
            "status": status,
            "detail": detail,
            **extra,
        }
        self.headers = headers or {}


TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Violation:
    request_id: str
    code: str
    path: str
    detail: str


DETAILS = {
    "NotSupportedChoice": "The value you selected is not a valid choice.",
    "FieldMissing": "This field is missing.",
    "NotBlank": "This value should not be blank.",
    "NotNullable": "This value should not be null.",
    "FieldNotExpected": "This field was not expected.",
    "InvalidType": "This value should be of another type.",
}


class Invalid(Exception):
    """400 with amoCRM's ``validation-errors`` body (§2.1)."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__(f"{len(violations)} violation(s)")
        self.violations = violations

    def body(self) -> Json:
        grouped: dict[str, list[Json]] = {}
        for v in self.violations:
            grouped.setdefault(v.request_id, []).append({"code": v.code, "path": v.path, "detail": v.detail})
        return {
            "validation-errors": [{"request_id": rid, "errors": errs} for rid, errs in grouped.items()],
            "title": "Bad Request",
            "type": "https://httpstatus.es/400",
            "status": 400,
            "detail": "Request validation failed",
        }


@dataclass
class Integration:
    client_id: str
    client_secret: str
    redirect_uri: str
    disconnect_hook: str = ""
    name: str = "vpbx"


@dataclass
class Account:
    id: int
    base_domain: str
    name: str
    timezone: str
    users: dict[int, Json] = field(default_factory=dict)
    groups: list[Json] = field(default_factory=list)
    pipelines: dict[int, Json] = field(default_factory=dict)
    fields: dict[str, list[Json]] = field(default_factory=lambda: {"contacts": [], "leads": []})
    contacts: dict[int, Json] = field(default_factory=dict)
    leads: dict[int, Json] = field(default_factory=dict)
    links: dict[tuple[int, int], bool] = field(default_factory=dict)  # (contact, lead) → is_main
    tasks: dict[int, Json] = field(default_factory=dict)
    notes: dict[int, Json] = field(default_factory=dict)
    calls: list[Json] = field(default_factory=list)
    events_v2: list[Json] = field(default_factory=list)
    webhooks: dict[str, Json] = field(default_factory=dict)  # destination → {id, destination, settings…}
    deliveries: list[Json] = field(default_factory=list)  # webhook deliveries made (status or error)
    unsorted: list[Json] = field(default_factory=list)
    tags: dict[tuple[str, str], int] = field(default_factory=dict)
    unpaid: bool = False
    duplicate_control: bool = False
    log: deque[Json] = field(default_factory=lambda: deque(maxlen=LOG_CAP))
    window: deque[float] = field(default_factory=deque)  # monotonic times of accepted API requests (1 s)

    @property
    def subdomain(self) -> str:
        return self.base_domain.split(".", 1)[0]

    def href(self, path: str) -> str:
        """HAL links use the public form (§4.1): a client that follows them verbatim fails the tests."""
        return f"https://{self.base_domain}{path}"

    def admin_id(self) -> int:
        admins = [uid for uid, u in self.users.items() if u["rights"]["is_admin"]]
        return admins[0] if admins else next(iter(self.users), 0)

    def field_by(self, entity: str, *, field_id: Any = None, code: Any = None) -> Json | None:
        for f in self.fields.get(entity, []):
            if field_id is not None and f["id"] == field_id:
                return f
            if field_id is None and code is not None and f.get("code") == code:
                return f
        return None

    def status_ids(self, pipeline_id: int) -> set[int]:
        p = self.pipelines.get(pipeline_id)
        return {s["id"] for s in p["_statuses"]} if p else set()

    def main_pipeline(self) -> Json | None:
        for p in self.pipelines.values():
            if p["is_main"]:
                return p
        return next(iter(self.pipelines.values()), None)


@dataclass
class FaultRule:
    id: int
    method: str | None
    path_regex: re.Pattern[str] | None
    account: str | None
    action: Json
    times: int  # -1: forever

    def matches(self, method: str, path: str, host: str | None) -> bool:
        if self.times == 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        if self.account and self.account != host:
            return False
        return not (self.path_regex and not self.path_regex.search(path))

    def public(self) -> Json:
        return {
            "id": self.id,
            "match": {
                "method": self.method,
                "path_regex": self.path_regex.pattern if self.path_regex else None,
                "account": self.account,
            },
            "action": self.action,
            "times": self.times,
        }


class World:
    def __init__(self, fixture: Json | None = None, switches: Switches | None = None) -> None:
        self.base_switches = switches or Switches()
        self.key = secrets.token_bytes(32)  # signs access tokens (HS256), per process
        self.reset()
        if fixture:
            self.load(fixture)

    # --- lifecycle ----------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.switches = self.base_switches
        self.offset = 0.0
        self.integrations: dict[str, Integration] = {}
        self.accounts: dict[int, Account] = {}
        self.hosts: dict[str, int] = {}  # base_domain → account id
        self.moved: dict[str, int] = {}  # a moved account's old base_domain → account id
        self.counters: dict[str, int] = {}
        self.used_ids: dict[str, set[int]] = {}
        self.codes: dict[str, Json] = {}
        self.access: dict[str, Json] = {}  # jti → token record
        self.refresh: dict[str, Json] = {}  # refresh token → record
        self.faults: list[FaultRule] = []
        self.fault_seq = 0
        self.down_until = 0.0  # monotonic
        self.down_mode = "503"
        self.blocked: dict[str, float] = {}  # client IP → monotonic end of the block
        self.abuse: dict[str, set[int]] = {}  # client IP → whole monotonic seconds that saw a 429
        self.log_seq = 0
        self.stats: dict[int, dict[str, dict[str, int]]] = {}
        self.pending_hooks: list[tuple[Account, str, str]] = []  # (account, destination, form body)

    def load(self, fixture: Json) -> None:
        """Add a fixture document's integrations and accounts (accounts already present are replaced)."""
        if "switches" in fixture:
            self.switches = merge_switches(self.base_switches.model_dump(), fixture["switches"])
        for integ in fixture.get("integrations", []):
            i = Integration(
                client_id=str(integ["client_id"]),
                client_secret=str(integ["client_secret"]),
                redirect_uri=str(integ.get("redirect_uri", "")),
                disconnect_hook=str(integ.get("disconnect_hook", "")),
                name=str(integ.get("name", "vpbx")),
            )
            self.integrations[i.client_id] = i
        for acc in fixture.get("accounts", []):
            self._load_account(acc)

    # --- time and ids ---------------------------------------------------------------------------------------
    def now(self) -> int:
        """Virtual Unix time (wall + offset): tokens, codes, created_at."""
        return int(time.time() + self.offset)

    def next_id(self, kind: str) -> int:
        base = int(getattr(self.switches.id_bases, kind))
        n = max(self.counters.get(kind, base), base)
        used = self.used_ids.setdefault(kind, set())
        while n in used:
            n += 1
        self.counters[kind] = n + 1
        used.add(n)
        return n

    def claim_id(self, kind: str, value: int) -> int:
        self.used_ids.setdefault(kind, set()).add(value)
        return value

    # --- accounts -----------------------------------------------------------------------------------------
    def account_for_host(self, host: str) -> Account | None:
        acc_id = self.hosts.get(host)
        return self.accounts.get(acc_id) if acc_id is not None else None

    def account_named(self, ref: str | int | None) -> Account:
        """An account by base domain or id (control API); the first one when ``ref`` is empty."""
        if ref in (None, ""):
            if not self.accounts:
                raise Problem(404, "No accounts loaded")
            return next(iter(self.accounts.values()))
        if isinstance(ref, int) or str(ref).isdigit():
            acc = self.accounts.get(int(ref))
        else:
            acc = self.account_for_host(str(ref))
        if acc is None:
            raise Problem(404, f"Unknown account {ref}")
        return acc

    def _load_account(self, doc: Json) -> None:
        acc_id = int(doc["id"])
        old = self.accounts.pop(acc_id, None)
        if old is not None:
            self.hosts.pop(old.base_domain, None)
        acc = Account(
            id=acc_id,
            base_domain=str(doc["base_domain"]),
            name=str(doc.get("name", doc["base_domain"].split(".")[0])),
            timezone=str(doc.get("timezone", "Europe/Moscow")),
        )
        acc.unpaid = bool(doc.get("unpaid", False))
        acc.duplicate_control = bool(doc.get("duplicate_control", False))
        now = self.now()
        acc.groups = [{"id": int(g["id"]), "name": str(g["name"])} for g in doc.get("groups", [])]
        for u in doc.get("users", []):
            uid = int(u["id"])
            acc.users[uid] = {
                "id": uid,
                "name": str(u["name"]),
                "email": str(u.get("email") or f"user{uid}@{acc.base_domain}"),
                "lang": "ru",
                "rights": {
                    "is_admin": bool(u.get("is_admin", False)),
                    "is_free": False,
                    "is_active": bool(u.get("is_active", True)),
                    "group_id": u.get("group_id"),
                    "role_id": None,
                },
            }
        for p in doc.get("pipelines", []):
            self._add_pipeline(acc, p)
        if not acc.pipelines:
            self._add_pipeline(acc, {"id": 1000 + acc_id % 1000, "name": "Воронка", "is_main": True})
        for entity, key in (("contacts", "contact_fields"), ("leads", "lead_fields")):
            fields = doc.get(key)
            if fields is None and entity == "contacts":
                fields = [
                    {"id": acc_id % 100000 * 10 + 1, "code": "PHONE", "type": "multitext"},
                    {"id": acc_id % 100000 * 10 + 2, "code": "EMAIL", "type": "multitext"},
                ]
            for n, f in enumerate(fields or []):
                acc.fields[entity].append(_field(f, n, entity, acc_id))
        self.accounts[acc_id] = acc
        self.hosts[acc.base_domain] = acc_id
        phone = acc.field_by("contacts", code="PHONE")
        for c in doc.get("contacts", []):
            cid = self.claim_id("contacts", int(c["id"]))
            cfv: list[Json] = []
            if phone is not None and c.get("phones"):
                cfv.append(
                    _cf_value(
                        phone, [{"value": v, "enum_code": code} for v, code in c["phones"]], self.switches
                    )
                )
            for fid, value in (c.get("fields") or {}).items():
                f = acc.field_by("contacts", field_id=int(fid))
                if f is not None:
                    cfv.append(_cf_value(f, [{"value": value}], self.switches))
            acc.contacts[cid] = {
                "id": cid,
                "name": str(c.get("name", "")),
                "first_name": str(c.get("first_name", "")),
                "last_name": str(c.get("last_name", "")),
                "responsible_user_id": int(c.get("responsible_user_id") or acc.admin_id()),
                "group_id": 0,
                "created_by": 0,
                "updated_by": 0,
                "created_at": int(c.get("created_at", now)),
                "updated_at": int(c.get("updated_at", now)),
                "closest_task_at": None,
                "is_deleted": False,
                "is_unsorted": False,
                "custom_fields_values": cfv or None,
                "account_id": acc_id,
                "tags": [],
            }
        for ld in doc.get("leads", []):
            lid = self.claim_id("leads", int(ld["id"]))
            pipeline = acc.pipelines.get(int(ld.get("pipeline_id", 0))) or acc.main_pipeline()
            assert pipeline is not None
            status_id = int(ld.get("status_id") or pipeline["_statuses"][1]["id"])
            acc.leads[lid] = _new_lead(lid, ld, acc, pipeline["id"], status_id, now)
        for c in doc.get("contacts", []):
            for n, lid in enumerate(c.get("leads", [])):
                if int(lid) in acc.leads:
                    acc.links[(int(c["id"]), int(lid))] = n == 0

    def _add_pipeline(self, acc: Account, p: Json) -> None:
        pid = int(p["id"])
        unsorted_id = int(p.get("unsorted_status_id") or self.next_id("statuses"))
        statuses = [_status(unsorted_id, "Неразобранное", pid, 10, UNSORTED_TYPE)]
        for n, s in enumerate(p.get("statuses", [])):
            statuses.append(_status(int(s["id"]), str(s["name"]), pid, 20 + 10 * n, 0))
        statuses.append(_status(WON, "Успешно реализовано", pid, 10000, 0))
        statuses.append(_status(LOST, "Закрыто и не реализовано", pid, 11000, 0))
        acc.pipelines[pid] = {
            "id": pid,
            "name": str(p.get("name", "Воронка")),
            "sort": 1 + len(acc.pipelines),
            "is_main": bool(p.get("is_main", not acc.pipelines)),
            "is_unsorted_on": True,
            "is_archive": bool(p.get("is_archive", False)),
            "account_id": acc.id,
            "_statuses": statuses,
        }

    # --- tags -----------------------------------------------------------------------------------------------
    def tag(self, acc: Account, entity: str, item: Json) -> Json:
        name = str(item.get("name") or "")
        if not name and item.get("id") is not None:
            for (ent, nm), tid in acc.tags.items():
                if ent == entity and tid == int(item["id"]):
                    return {"id": tid, "name": nm, "color": None}
        found = acc.tags.get((entity, name))
        tid = found if found is not None else self.next_id("tags")
        acc.tags[(entity, name)] = tid
        return {"id": tid, "name": name, "color": None}

    # --- inspection -----------------------------------------------------------------------------------------
    def count(self, acc_id: int, route: str, status: int) -> None:
        per = self.stats.setdefault(acc_id, {}).setdefault(route, {})
        per[str(status)] = per.get(str(status), 0) + 1

    def state(self, acc: Account) -> Json:
        def tokens() -> list[Json]:
            out = []
            for jti, t in self.access.items():
                if t["account_id"] == acc.id:
                    status = "revoked" if t["revoked"] else "expired" if t["exp"] <= self.now() else "active"
                    out.append({"kind": "access", "jti": jti, "client_id": t["client_id"], "status": status})
            for r in self.refresh.values():
                if r["account_id"] == acc.id:
                    status = (
                        "used"
                        if r["used"]
                        else "revoked"
                        if r["revoked"]
                        else "expired"
                        if r["exp"] <= self.now()
                        else "active"
                    )
                    out.append({"kind": "refresh", "client_id": r["client_id"], "status": status})
            return out

        installs = sorted(
            {t["client_id"] for t in self.access.values() if t["account_id"] == acc.id and not t["revoked"]}
        )
        return copy.deepcopy(
            {
                "account": {
                    "id": acc.id,
                    "base_domain": acc.base_domain,
                    "unpaid": acc.unpaid,
                    "duplicate_control": acc.duplicate_control,
                },
                "contacts": list(acc.contacts.values()),
                "leads": list(acc.leads.values()),
                "links": [{"contact_id": c, "lead_id": ld, "is_main": m} for (c, ld), m in acc.links.items()],
                "tasks": list(acc.tasks.values()),
                "notes": list(acc.notes.values()),
                "calls": acc.calls,
                "events_v2": acc.events_v2,
                "webhooks": list(acc.webhooks.values()),
                "webhook_deliveries": acc.deliveries,
                "unsorted": acc.unsorted,
                "tokens": tokens(),
                "installs": installs,
                "faults": [f.public() for f in self.faults],
            }
        )


def _status(sid: int, name: str, pipeline_id: int, sort: int, type_: int) -> Json:
    return {
        "id": sid,
        "name": name,
        "sort": sort,
        "is_editable": sid not in (WON, LOST) and type_ != UNSORTED_TYPE,
        "pipeline_id": pipeline_id,
        "color": "#99ccff",
        "type": type_,
    }


def _field(f: Json, n: int, entity: str, acc_id: int) -> Json:
    code = f.get("code")
    ftype = str(f.get("type", "text"))
    enums: list[Json] | None = None
    if code in ("PHONE", "EMAIL") and not f.get("enums"):
        names = PHONE_ENUMS if code == "PHONE" else EMAIL_ENUMS
        enums = [
            {"id": int(f["id"]) * 100 + k + 1, "value": v, "enum_code": v, "sort": 2 * (k + 1)}
            for k, v in enumerate(names)
        ]
    elif f.get("enums"):
        enums = [
            {
                "id": int(e["id"]),
                "value": str(e["value"]),
                "enum_code": e.get("enum_code"),
                "sort": 2 * (k + 1),
            }
            for k, e in enumerate(f["enums"])
        ]
    return {
        "id": int(f["id"]),
        "name": str(f.get("name") or STANDARD_FIELD_NAMES.get(str(code), str(code or f["id"]))),
        "type": ftype,
        "account_id": acc_id,
        "code": code,
        "sort": 10 * (n + 1),
        "is_api_only": False,
        "enums": enums,
        "group_id": None,
        "required_statuses": [],
        "is_deletable": code not in ("PHONE", "EMAIL"),
        "is_predefined": code in ("PHONE", "EMAIL", "POSITION"),
        "entity_type": entity,
        "remind": None,
        "settings": None,
    }


def _cf_value(f: Json, values: list[Json], switches: Switches) -> Json:
    """A stored custom-field value in amoCRM's read shape (values already validated)."""
    out: list[Json] = []
    for v in values:
        item: Json = {"value": v.get("value")}
        enum = _enum_of(f, v)
        if enum is not None:
            item["enum_id"] = enum["id"]
            if f["type"] == "multitext":
                item[switches.enum_key] = enum["enum_code"] or enum["value"]
                if f.get("code") == "PHONE" or f.get("code") == "EMAIL":
                    item["value"] = str(v.get("value", ""))
            else:
                item["value"] = enum["value"]
                if enum.get("enum_code"):
                    item["enum_code"] = enum["enum_code"]
        out.append(item)
    return {
        "field_id": f["id"],
        "field_name": f["name"],
        "field_code": f.get("code"),
        "field_type": f["type"],
        "values": out,
    }


def _enum_of(f: Json, v: Json) -> Json | None:
    enums = f.get("enums") or []
    if not enums:
        return None
    if v.get("enum_id") is not None:
        return next((e for e in enums if e["id"] == v["enum_id"]), None)
    code = v.get("enum_code", v.get("enum"))
    if code is not None:
        return next((e for e in enums if code in (e.get("enum_code"), e["value"])), None)
    if f["type"] == "multitext":
        first: Json = enums[0]
        return first  # amoCRM files a phone without a type under the first one (WORK)
    return next((e for e in enums if e["value"] == v.get("value")), None)


def _new_lead(lid: int, doc: Json, acc: Account, pipeline_id: int, status_id: int, now: int) -> Json:
    return {
        "id": lid,
        "name": str(doc.get("name", "")),
        "price": int(doc.get("price") or 0),
        "responsible_user_id": int(doc.get("responsible_user_id") or acc.admin_id()),
        "group_id": 0,
        "status_id": status_id,
        "pipeline_id": pipeline_id,
        "loss_reason_id": None,
        "created_by": int(doc.get("created_by") or 0),
        "updated_by": int(doc.get("created_by") or 0),
        "created_at": int(doc.get("created_at") or now),
        "updated_at": int(doc.get("updated_at") or now),
        "closed_at": now if status_id in (WON, LOST) else None,
        "closest_task_at": None,
        "is_deleted": False,
        "custom_fields_values": doc.get("custom_fields_values"),
        "score": None,
        "account_id": acc.id,
        "labor_cost": None,
        "tags": [],
    }
