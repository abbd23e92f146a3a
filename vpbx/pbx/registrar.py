"""The registrar: REGISTER rules of RFC 3261 §10.3 and the location store (telephony.md §3.6, §9.3).

``plan_register`` is pure: given an authenticated REGISTER (``vpbx.sip.contact.read_register``), the account
it authenticated as, the tenant's domain, the AoR's current bindings and ``now``, it returns the reply and the
bindings the AoR has afterwards. ``register`` runs it against a ``LocationStore``: one lookup, one atomic
``replace`` (§10.3 step 7: all binding changes commit together or none does).

Use::

    facts = read_register(request, source)            # a str is the reason for a 400
    plan = await register(store, tenant, facts, user=ok.user, domain=domain, now=clock.monotonic())
    reply(plan.reply.code, plan.reply.reason, plan.reply.headers)   # plus Via/From/To/Call-ID/CSeq, Date
    for b in plan.expired: bus.publish("registration.expired", ...)
    ... every few seconds: for gone in await store.expire(clock.monotonic()): publish registration.expired

``now`` and ``expires_at`` share one time base (the monotonic clock in v1). ``lookup`` may return a binding
whose time is up until the next ``expire`` sweep; callers that must not ring it compare ``expires_at``.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from vpbx.errors import LocationFull
from vpbx.sip.auth import StoredCredentials
from vpbx.sip.contact import ContactSpec, RegisterRequest, uri_equal
from vpbx.sip.flow import Destination
from vpbx.store.models import DomainId

DEFAULT_EXPIRES_S = 3600  # RFC 3261 §10.3 step 6 and §20.19: no Contact expires and no Expires header
MIN_EXPIRES_S = 60  # below: 423 Interval Too Brief with Min-Expires (§10.3 step 6)
MAX_EXPIRES_S = 3600  # above: the registrar grants this much (telephony.md §3.6)
MAX_CONTACTS = 5  # bindings per AoR; then the oldest goes (telephony.md §3.6)
MAX_BINDINGS = 200_000  # bindings in one MemoryLocationStore
DELTA_SECONDS_MAX = 2**32 - 1  # RFC 3261 §20.19: larger values count as this
SUPPORTED = frozenset({"path"})  # option tags a REGISTER may Require (RFC 3327)
Q_RE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")  # qvalue, RFC 3261 §20.10
DELTA_RE = re.compile(r"\d{1,20}")
# Addresses that only exist behind a NAT: RFC 1918, RFC 6598 (carrier-grade NAT), link-local, RFC 4193 ULA.
NAT_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """One registered contact of an AoR. Requests go to ``flow``, never to the Contact host (§3.2)."""

    contact: str
    flow: Destination
    nated: bool = False
    path: tuple[str, ...] = ()
    instance: str | None = None  # +sip.instance (RFC 5626)
    q: float | None = None
    user_agent: str | None = None
    call_id: str
    cseq: int
    expires_at: float
    updated_at: float  # when the phone last registered this contact: the oldest is evicted first

    def remaining(self, now: float) -> int:
        """Seconds left, as the 200 lists them (at least 1 while the binding lives)."""
        return max(1, round(self.expires_at - now))


@dataclass(frozen=True, slots=True)
class ExpiredBinding:
    tenant: DomainId
    aor: str
    binding: Binding


class LocationStore(Protocol):
    """AoR → bindings, per tenant (telephony.md §9.3). Memory in v1; Redis or Kamailio's usrloc later."""

    async def save(self, tenant: DomainId, aor: str, binding: Binding) -> list[Binding]:
        """Add the binding, or replace the one with the same contact; the AoR's bindings afterwards."""
        ...

    async def replace(self, tenant: DomainId, aor: str, bindings: Sequence[Binding]) -> list[Binding]:
        """Set the AoR's bindings in one step; raises ``LocationFull`` and changes nothing if out of room."""
        ...

    async def lookup(self, tenant: DomainId, aor: str) -> list[Binding]: ...

    async def registered_from(self, host: str, port: int) -> bool:
        """Whether any phone's registration came from ``host:port`` (it is a phone, not a carrier)."""
        ...

    async def bindings(self, tenant: DomainId) -> list[tuple[str, Binding]]:
        """Every (AoR, binding) of the tenant, ordered by AoR: read only, for the cabinet's device list."""
        ...

    async def remove(self, tenant: DomainId, aor: str, contact: str | None = None) -> list[Binding]:
        """Remove one contact (all of the AoR with None); the bindings removed."""
        ...

    async def expire(self, now: float) -> list[ExpiredBinding]:
        """Remove and return every binding whose time is up: the caller publishes ``registration.expired``."""
        ...


class MemoryLocationStore:
    """The v1 ``LocationStore``: a dictionary per AoR and an expiry heap, bounded by ``max_bindings``."""

    def __init__(self, max_bindings: int = MAX_BINDINGS) -> None:
        self._max = max_bindings
        self._aors: dict[tuple[DomainId, str], list[Binding]] = {}
        self._count = 0
        # (expires_at, seq, tenant, aor, contact); entries of refreshed or removed bindings go stale and are
        # skipped, and the heap is rebuilt once stale entries outnumber live ones.
        self._heap: list[tuple[float, int, DomainId, str, str]] = []
        self._seq = itertools.count()
        self._flows: dict[tuple[str, int], int] = {}  # bindings per source address (host, port)

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        # an empty store is still the store: without this, ``__len__`` makes it falsy and a caller's
        # ``location or MemoryLocationStore()`` (SipNode) silently swaps the shared store for a private one
        return True

    def next_expiry(self) -> float | None:
        """When the next ``expire`` sweep may find something (for the adapter's timer)."""
        return self._heap[0][0] if self._heap else None

    async def lookup(self, tenant: DomainId, aor: str) -> list[Binding]:
        return list(self._aors.get((tenant, aor), ()))

    async def bindings(self, tenant: DomainId) -> list[tuple[str, Binding]]:
        # a scan of every AoR: people open the device list, SIP messages never do
        aors = sorted(aor for (t, aor) in self._aors if t == tenant)
        return [(aor, b) for aor in aors for b in self._aors[(tenant, aor)]]

    async def registered_from(self, host: str, port: int) -> bool:
        return (host, port) in self._flows

    def _count_flow(self, binding: Binding, delta: int) -> None:
        key = (binding.flow.host, binding.flow.port)
        left = self._flows.get(key, 0) + delta
        if left > 0:
            self._flows[key] = left
        else:
            self._flows.pop(key, None)

    async def replace(self, tenant: DomainId, aor: str, bindings: Sequence[Binding]) -> list[Binding]:
        key = (tenant, aor)
        old = self._aors.get(key, [])
        grow = len(bindings) - len(old)
        if grow > 0 and self._count + grow > self._max:
            raise LocationFull(self._max)
        for b in old:
            self._count_flow(b, -1)
        for b in bindings:
            self._count_flow(b, +1)
        known = {(b.contact, b.expires_at) for b in old}
        if bindings:
            self._aors[key] = list(bindings)
        else:
            self._aors.pop(key, None)
        self._count += grow
        for b in bindings:
            if (b.contact, b.expires_at) not in known:
                heapq.heappush(self._heap, (b.expires_at, next(self._seq), tenant, aor, b.contact))
        if len(self._heap) > 2 * self._count + 1024:
            self._rebuild_heap()
        return list(bindings)

    async def save(self, tenant: DomainId, aor: str, binding: Binding) -> list[Binding]:
        current = self._aors.get((tenant, aor), [])
        kept = [b for b in current if b.contact != binding.contact]
        return await self.replace(tenant, aor, [*kept, binding])

    async def remove(self, tenant: DomainId, aor: str, contact: str | None = None) -> list[Binding]:
        current = self._aors.get((tenant, aor), [])
        gone = [b for b in current if contact is None or b.contact == contact]
        if gone:
            await self.replace(tenant, aor, [b for b in current if b not in gone])
        return gone

    async def expire(self, now: float) -> list[ExpiredBinding]:
        out: list[ExpiredBinding] = []
        while self._heap and self._heap[0][0] <= now:
            expires_at, _, tenant, aor, contact = heapq.heappop(self._heap)
            current = self._aors.get((tenant, aor), [])
            hit = next((b for b in current if b.contact == contact and b.expires_at == expires_at), None)
            if hit is None:
                continue  # refreshed or removed since: a stale entry
            rest = [b for b in current if b is not hit]
            self._count_flow(hit, -1)
            if rest:
                self._aors[(tenant, aor)] = rest
            else:
                del self._aors[(tenant, aor)]
            self._count -= 1
            out.append(ExpiredBinding(tenant, aor, hit))
        return out

    def _rebuild_heap(self) -> None:
        self._heap = [
            (b.expires_at, next(self._seq), tenant, aor, b.contact)
            for (tenant, aor), bindings in self._aors.items()
            for b in bindings
        ]
        heapq.heapify(self._heap)


# --- the REGISTER rules -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistrarPolicy:
    min_expires_s: int = MIN_EXPIRES_S
    max_expires_s: int = MAX_EXPIRES_S
    default_expires_s: int = DEFAULT_EXPIRES_S
    max_contacts: int = MAX_CONTACTS
    reject_when_full: bool = False  # 403 instead of evicting the oldest binding


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """Status and the registrar's headers; the transaction user adds Via, From, To, Call-ID, CSeq, Date."""

    code: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterPlan:
    reply: RegisterReply
    aor: str
    bindings: tuple[Binding, ...]  # the AoR's live bindings once the request is applied
    changed: bool = False  # whether the store must be written
    added: tuple[Binding, ...] = ()  # contacts new to the AoR (not refreshes)
    removed: tuple[Binding, ...] = ()  # unregistered by the phone (expires 0 or *)
    evicted: tuple[Binding, ...] = ()  # pushed out by max_contacts
    expired: tuple[Binding, ...] = ()  # found out of time and dropped with this write


def aor_for(extension: str, domain: str) -> str:
    """The address-of-record of an extension: ``sip:<ext>@<tenant domain>`` (telephony.md §3.6)."""
    return f"sip:{extension}@{domain.lower()}"


def is_nated(contact_host: str, source: Destination) -> bool:
    """The Contact names another host than the packet came from, or a NAT-only address (telephony.md §3.2)."""
    return _nated(contact_host, source.host)


@functools.lru_cache(maxsize=4096)  # a phone re-registers with the same pair for its whole life
def _nated(contact_host: str, source_host: str) -> bool:
    host = contact_host.strip("[]").lower()
    source = Destination("udp", source_host, 0)
    if host != source.host.strip("[]").lower():
        try:
            same = ipaddress.ip_address(host) == ipaddress.ip_address(source.host.strip("[]"))
        except ValueError:
            same = False
        if not same:
            return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in NAT_NETWORKS)


def contact_expires(spec: ContactSpec, header: int | None, policy: RegistrarPolicy) -> int:
    """The expiry a contact asks for (§10.3 step 6): its ``expires`` parameter, else Expires, else default."""
    if spec.expires is not None and DELTA_RE.fullmatch(spec.expires.strip()):
        return min(int(spec.expires.strip()), DELTA_SECONDS_MAX)
    if header is not None and header >= 0:
        return min(header, DELTA_SECONDS_MAX)
    return policy.default_expires_s  # absent or malformed (§20.19)


def _q(raw: str | None) -> float | str | None:
    if raw is None:
        return None
    if not Q_RE.fullmatch(raw.strip()):
        return "Bad q value"
    return float(raw.strip())


def plan_register(
    req: RegisterRequest,
    *,
    user: StoredCredentials,
    domain: str,
    existing: Sequence[Binding],
    now: float,
    policy: RegistrarPolicy | None = None,
) -> RegisterPlan:
    """RFC 3261 §10.3 steps 2 and 4–8 for a REGISTER already authenticated as ``user`` (step 3)."""
    policy = policy or RegistrarPolicy()
    aor = aor_for(user.extension or user.username, domain)
    live = [b for b in existing if b.expires_at > now]
    expired = tuple(b for b in existing if b.expires_at <= now)

    def refuse(code: int, reason: str, *headers: tuple[str, str]) -> RegisterPlan:
        return RegisterPlan(reply=RegisterReply(code, reason, headers), aor=aor, bindings=tuple(live))

    # Step 2: option tags we do not support.
    unsupported = [t for t in req.require if t not in SUPPORTED]
    if unsupported:
        return refuse(420, "Bad Extension", ("Unsupported", ", ".join(unsupported)))
    # Step 4: the authenticated account registers only its own AoR (To: its login or its extension).
    if not req.to_user or req.to_user not in {user.username, user.extension} - {""}:
        return refuse(403, "Forbidden")
    # Step 6: Contact: * clears the AoR, but only alone and with Expires: 0.
    if req.star:
        if req.contacts or req.expires != 0:
            return refuse(400, "Bad Request: Contact * needs Expires: 0 and no other contact")
        for b in live:
            if b.call_id == req.call_id and req.cseq <= b.cseq:  # step 6 defers to step 7's ordering
                return refuse(500, "Server Internal Error: CSeq out of order")
        return RegisterPlan(
            reply=RegisterReply(200, "OK", _path_headers(req)),
            aor=aor,
            bindings=(),
            changed=True,
            removed=tuple(live),
            expired=expired,
        )
    asked: list[tuple[ContactSpec, int, float | None]] = []
    for spec in req.contacts:
        q = _q(spec.q)
        if isinstance(q, str):
            return refuse(400, f"Bad Request: {q}")
        expires = contact_expires(spec, req.expires, policy)
        if 0 < expires < policy.min_expires_s:
            return refuse(423, "Interval Too Brief", ("Min-Expires", str(policy.min_expires_s)))
        asked.append((spec, min(expires, policy.max_expires_s), q))
    if not asked:  # a query: list the bindings, change nothing (§10.3 step 8)
        return RegisterPlan(reply=_ok(req, live, now), aor=aor, bindings=tuple(live))
    # Step 7: per contact, against the binding it refreshes (same URI by §19.1.4, or same +sip.instance).
    rows = [_Row(b, b) for b in live]
    removed: list[Binding] = []
    for spec, expires, q in asked:
        at = _match(rows, spec)
        if at is not None:
            row = rows[at]
            if not row.touched and row.binding.call_id == req.call_id and req.cseq <= row.binding.cseq:
                return refuse(500, "Server Internal Error: CSeq out of order")
            if expires == 0:
                if row.original is not None:
                    removed.append(row.original)
                del rows[at]
                continue
            rows[at] = _Row(_binding(req, spec, expires, q, now), row.original, touched=True)
        elif expires:
            rows.append(_Row(_binding(req, spec, expires, q, now), None, touched=True))
    evicted: list[Binding] = []
    excess = len(rows) - policy.max_contacts
    if excess > 0:
        if policy.reject_when_full:
            return refuse(403, "Forbidden: too many contacts")
        # The oldest go first; this request's own contacts only if it brought more than max_contacts.
        order = sorted(range(len(rows)), key=lambda i: (rows[i].touched, rows[i].binding.updated_at, i))
        out = set(order[:excess])
        evicted = [r.original for i, r in enumerate(rows) if i in out and r.original is not None]
        rows = [r for i, r in enumerate(rows) if i not in out]
    bindings = [r.binding for r in rows]
    return RegisterPlan(
        reply=_ok(req, bindings, now),
        aor=aor,
        bindings=tuple(bindings),
        changed=True,
        added=tuple(r.binding for r in rows if r.original is None),
        removed=tuple(removed),
        evicted=tuple(evicted),
        expired=expired,
    )


@dataclass(slots=True)
class _Row:
    binding: Binding
    original: Binding | None  # the stored binding this row stands for, None if new in this request
    touched: bool = False


def _match(rows: list[_Row], spec: ContactSpec) -> int | None:
    for i, row in enumerate(rows):
        b = row.binding
        if (spec.instance and b.instance == spec.instance) or uri_equal(b.contact, spec.uri):
            return i
    return None


def _binding(req: RegisterRequest, spec: ContactSpec, expires: int, q: float | None, now: float) -> Binding:
    return Binding(
        contact=spec.uri,
        flow=req.source,
        nated=is_nated(spec.host, req.source),
        path=req.path,
        instance=spec.instance,
        q=q,
        user_agent=req.user_agent,
        call_id=req.call_id,
        cseq=req.cseq,
        expires_at=now + expires,
        updated_at=now,
    )


def _path_headers(req: RegisterRequest) -> tuple[tuple[str, str], ...]:
    return tuple(("Path", p) for p in req.path)  # RFC 3327 §5.3: the 200 echoes Path


def _ok(req: RegisterRequest, bindings: Sequence[Binding], now: float) -> RegisterReply:
    """Step 8: 200 with every binding and its remaining expiry."""
    headers: list[tuple[str, str]] = []
    for b in bindings:
        value = f"<{b.contact}>;expires={b.remaining(now)}"
        if b.q is not None:
            value += f";q={b.q:g}"
        if b.instance:
            value += f';+sip.instance="{b.instance}"'
        headers.append(("Contact", value))
    return RegisterReply(200, "OK", (*headers, *_path_headers(req)))


async def register(
    store: LocationStore,
    tenant: DomainId,
    req: RegisterRequest,
    *,
    user: StoredCredentials,
    domain: str,
    now: float,
    policy: RegistrarPolicy | None = None,
) -> RegisterPlan:
    """Apply an authenticated REGISTER to the store: one lookup, ``plan_register``, one atomic ``replace``."""
    aor = aor_for(user.extension or user.username, domain)
    existing = await store.lookup(tenant, aor)
    plan = plan_register(req, user=user, domain=domain, existing=existing, now=now, policy=policy)
    if plan.changed:
        try:
            await store.replace(tenant, aor, plan.bindings)
        except LocationFull:
            busy = RegisterReply(503, "Service Unavailable", (("Retry-After", "300"),))
            live = tuple(b for b in existing if b.expires_at > now)
            return replace(
                plan, reply=busy, bindings=live, changed=False, added=(), removed=(), evicted=(), expired=()
            )
    return plan
