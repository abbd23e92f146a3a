"""NAT keep-alive: OPTIONS to every UDP binding behind NAT, spread over the interval (telephony.md §3.2).

A phone behind NAT is reached only through the pinhole its REGISTER opened, and a NAT forgets an idle UDP
mapping within tens of seconds. Every ``interval_s`` (25 s by default) each *nated* UDP binding gets an
OPTIONS over its own flow; the traffic and the phone's answer keep the mapping alive. TCP and TLS phones
keep theirs with CRLF pings (RFC 5626 §4.4.1), which the transport answers.

- **Which bindings**: those registered through this node (the node's location store is wrapped by
  ``watch``): only the node that received the REGISTER holds its flow. A re-REGISTER resets the count of
  misses, an un-REGISTER or expiry ends the pinging.
- **Spread and bound**: a new binding's first OPTIONS goes at a random point of the first interval, then
  every interval; a tick (one second, or a fifth of a short interval) sends at most ``max_per_tick``, and
  what does not fit goes in the next tick, oldest first. No new OPTIONS while the last one is in flight.
- **No answer**: any response, even an error, is an answer. An OPTIONS without one ends with Timer F
  (64·T1 = 32 s). After ``max_misses`` such in a row (3 by default) the binding is **dropped** from the
  location store and ``registration.unreachable`` is logged: the pinhole is closed or the phone is gone, so
  a call would ring nothing until the registration ran out (up to an hour). With ``max_misses = 0`` the
  binding stays and each miss is only logged.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from vpbx.clock import Clock
from vpbx.errors import SipError, SipParseError
from vpbx.logs import get_logger
from vpbx.pbx.registrar import Binding, ExpiredBinding, LocationStore
from vpbx.sip.dialog import LocalVia, build_initial_request, new_call_id, new_tag
from vpbx.sip.flow import Destination
from vpbx.sip.message import URI, Address, Parameters, Request, Response, parse_address, parse_uri
from vpbx.sip.transaction import TransactionKey
from vpbx.store.models import DomainId

log = get_logger("vpbx.pbx.keepalive")

INTERVAL_S = 25.0  # telephony.md §3.2: OPTIONS to nated UDP phones every 25 s
MAX_MISSES = 3  # unanswered OPTIONS in a row before the binding is dropped
TICK_S = 1.0  # how often due OPTIONS go out (a fifth of the interval when that is shorter)
MAX_PER_TICK = 500  # OPTIONS per tick at most: 12,500 nated bindings at 25 s, beyond that they slow down
FROM_USER = "keepalive"

KEEPALIVE_SENT = Counter("vpbx_sip_keepalive_sent_total", "NAT keep-alive OPTIONS sent")
KEEPALIVE_MISSED = Counter("vpbx_sip_keepalive_missed_total", "NAT keep-alive OPTIONS left unanswered")
KEEPALIVE_DROPPED = Counter("vpbx_sip_keepalive_dropped_total", "Bindings dropped after unanswered OPTIONS")


class Pinger(Protocol):
    """What the keep-alive needs of the SIP node."""

    def advertised_for(self, transport: str) -> tuple[str, int]: ...

    def send_request(
        self, request: Request, dest: Destination, *, user: KeepAlive | None = None
    ) -> TransactionKey: ...


_Key = tuple[DomainId, str, str]  # tenant, AoR, contact


@dataclass(slots=True)
class _Target:
    tenant: DomainId
    aor: str
    binding: Binding
    due: float
    misses: int = 0
    pending: TransactionKey | None = None


class KeepAlive:
    """Sends the OPTIONS, counts the misses, drops the dead; ``start``/``stop`` run it with the node."""

    def __init__(
        self,
        node: Pinger,
        store: LocationStore,
        *,
        clock: Clock,
        interval_s: float = INTERVAL_S,
        max_misses: int = MAX_MISSES,
        max_per_tick: int = MAX_PER_TICK,
        rng: random.Random | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the keep-alive interval is positive")
        self._node = node
        self._store = store  # the inner store: dropping a binding here is not observed back
        self._clock = clock
        self.interval_s = interval_s
        self.tick_s = min(TICK_S, interval_s / 5)
        self._max_misses = max_misses
        self._max_per_tick = max_per_tick
        self._rng = rng or random.Random()
        self._targets: dict[_Key, _Target] = {}
        self._by_aor: dict[tuple[DomainId, str], set[str]] = {}
        self._heap: list[tuple[float, int, _Key]] = []  # (due, seq, key); stale when due moved on
        self._seq = itertools.count()
        self._pending: dict[TransactionKey, _Key] = {}
        self._dead: list[_Target] = []  # to drop on the next tick (dropping awaits the store)
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._targets)

    def watch(self, store: LocationStore) -> LocationStore:
        """``store`` as the node should use it: every change through it updates the targets."""
        return WatchedLocationStore(store, self)

    # --- what to ping ----------------------------------------------------------------------------------

    def observe(self, tenant: DomainId, aor: str, bindings: Sequence[Binding]) -> None:
        """The AoR's bindings are now ``bindings``: ping its nated UDP ones, forget the others."""
        now = self._clock.monotonic()
        wanted = {b.contact: b for b in bindings if b.nated and b.flow.transport == "udp"}
        contacts = self._by_aor.get((tenant, aor), set())
        for contact in contacts - wanted.keys():
            self._remove((tenant, aor, contact))
        for contact, binding in wanted.items():
            key = (tenant, aor, contact)
            target = self._targets.get(key)
            if target is not None:
                target.binding = binding
                target.misses = 0  # it registered again: it is alive
                continue
            target = _Target(tenant, aor, binding, now + self._rng.uniform(0, self.interval_s))
            self._targets[key] = target
            self._by_aor.setdefault((tenant, aor), set()).add(contact)
            heapq.heappush(self._heap, (target.due, next(self._seq), key))
        if len(self._heap) > 2 * len(self._targets) + 1024:
            self._heap = [(t.due, next(self._seq), k) for k, t in self._targets.items()]
            heapq.heapify(self._heap)

    def forget(self, tenant: DomainId, aor: str, contacts: Sequence[str]) -> None:
        for contact in contacts:
            self._remove((tenant, aor, contact))

    def _remove(self, key: _Key) -> None:
        target = self._targets.pop(key, None)
        if target is None:
            return
        if target.pending is not None:
            self._pending.pop(target.pending, None)
        aor = (key[0], key[1])
        left = self._by_aor.get(aor)
        if left is not None:
            left.discard(key[2])
            if not left:
                del self._by_aor[aor]

    # --- sending ---------------------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Send the OPTIONS that are due (at most ``max_per_tick``); how many went out."""
        sent = 0
        while self._heap and self._heap[0][0] <= now and sent < self._max_per_tick:
            due, _, key = heapq.heappop(self._heap)
            target = self._targets.get(key)
            if target is None or target.due != due:
                continue  # forgotten or rescheduled since: a stale entry
            if target.binding.expires_at <= now:
                self._remove(key)  # the expiry sweep has not got to it yet
                continue
            target.due = due + self.interval_s if due + self.interval_s > now else now + self.interval_s
            heapq.heappush(self._heap, (target.due, next(self._seq), key))
            if target.pending is not None:
                continue  # the last one is still in flight (Timer F outlasts the interval)
            if self._send(key, target):
                sent += 1
        return sent

    def _send(self, key: _Key, target: _Target) -> bool:
        binding = target.binding
        via = LocalVia("UDP", *self._node.advertised_for("udp"))
        request = options_request(binding, target.aor, via)
        if request is None:
            log.warning("keepalive.bad_contact", aor=target.aor, contact=binding.contact[:80])
            self._remove(key)
            return False
        try:
            tx_key = self._node.send_request(request, binding.flow, user=self)
        except SipError:
            log.exception("keepalive.send_failed", aor=target.aor)
            return False
        target.pending = tx_key
        self._pending[tx_key] = key
        KEEPALIVE_SENT.inc()
        return True

    # --- the client transactions' user (called by the node) ------------------------------------------

    def on_response(self, key: TransactionKey, response: Response) -> None:
        if response.code < 200:
            return
        found = self._pending.pop(key, None)
        target = self._targets.get(found) if found is not None else None
        if target is not None:
            target.pending = None
            target.misses = 0  # any final answer, even 405 or 404, means the phone and its pinhole live

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        found = self._pending.pop(key, None)
        target = self._targets.get(found) if found is not None else None
        if target is None:
            return
        target.pending = None
        if reason == "done":
            return
        target.misses += 1
        KEEPALIVE_MISSED.inc()
        log.info("keepalive.missed", aor=target.aor, misses=target.misses, reason=reason)
        if self._max_misses and target.misses >= self._max_misses:
            self._dead.append(target)

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sip-nat-keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.drop_dead()
                self.tick(self._clock.monotonic())
            except Exception:
                log.exception("keepalive.tick_failed")

    async def drop_dead(self) -> int:
        """Remove the bindings that missed ``max_misses`` OPTIONS in a row; how many went."""
        dead, self._dead = self._dead, []
        dropped = 0
        for target in dead:
            key = (target.tenant, target.aor, target.binding.contact)
            if self._targets.get(key) is not target or target.misses < self._max_misses:
                continue  # re-registered or answered since
            self._remove(key)
            gone = await self._store.remove(target.tenant, target.aor, target.binding.contact)
            if gone:
                dropped += 1
                KEEPALIVE_DROPPED.inc()
                log.info("registration.unreachable", aor=target.aor, misses=target.misses)
        return dropped


def options_request(binding: Binding, aor: str, via: LocalVia) -> Request | None:
    """The keep-alive OPTIONS (RFC 3261 §11) to a binding's contact, through its Path, outside dialogs."""
    try:
        target = parse_uri(binding.contact)
        route = [parse_address(p) for p in binding.path]
        domain = parse_uri(aor).host
    except SipParseError:
        return None
    host = f"[{via.host}]" if ":" in via.host and not via.host.startswith("[") else via.host
    return build_initial_request(
        "OPTIONS",
        target,
        via=via,
        from_=Address(
            uri=URI(scheme="sip", user=FROM_USER, host=domain), parameters=Parameters(tag=new_tag())
        ),
        to=Address(uri=parse_uri(aor)),
        call_id=new_call_id(),
        cseq=1,
        contact=Address(uri=URI(scheme="sip", user=FROM_USER, host=host, port=via.port)),
        route=route,
        headers=(("Accept", "application/sdp"),),
    )


class WatchedLocationStore:
    """A ``LocationStore`` that tells the keep-alive about every binding change made through it."""

    def __init__(self, inner: LocationStore, keepalive: KeepAlive) -> None:
        self.inner = inner
        self._keepalive = keepalive

    async def save(self, tenant: DomainId, aor: str, binding: Binding) -> list[Binding]:
        bindings = await self.inner.save(tenant, aor, binding)
        self._keepalive.observe(tenant, aor, bindings)
        return bindings

    async def replace(self, tenant: DomainId, aor: str, bindings: Sequence[Binding]) -> list[Binding]:
        out = await self.inner.replace(tenant, aor, bindings)
        self._keepalive.observe(tenant, aor, out)
        return out

    async def registered_from(self, host: str, port: int) -> bool:
        return await self.inner.registered_from(host, port)

    async def lookup(self, tenant: DomainId, aor: str) -> list[Binding]:
        return await self.inner.lookup(tenant, aor)

    async def bindings(self, tenant: DomainId) -> list[tuple[str, Binding]]:
        return await self.inner.bindings(tenant)

    async def remove(self, tenant: DomainId, aor: str, contact: str | None = None) -> list[Binding]:
        gone = await self.inner.remove(tenant, aor, contact)
        self._keepalive.forget(tenant, aor, [b.contact for b in gone])
        return gone

    async def expire(self, now: float) -> list[ExpiredBinding]:
        gone = await self.inner.expire(now)
        for item in gone:
            self._keepalive.forget(item.tenant, item.aor, [item.binding.contact])
        return gone
