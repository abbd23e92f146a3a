"""NAT keep-alive core: which bindings get OPTIONS, when, and what misses do (telephony.md §3.2)."""

from __future__ import annotations

import dataclasses
import random
import uuid

from vpbx.clock import FakeClock
from vpbx.pbx.keepalive import KeepAlive, options_request
from vpbx.pbx.registrar import Binding, MemoryLocationStore, aor_for
from vpbx.sip import transaction as tx
from vpbx.sip.dialog import LocalVia
from vpbx.sip.flow import Destination
from vpbx.sip.message import Request, Response, build_response, parse, serialize
from vpbx.sip.transaction import TransactionKey
from vpbx.store.models import DomainId

T = DomainId(uuid.uuid4())
AOR = aor_for("101", "a.test")
NATED = Destination("udp", "203.0.113.7", 40001)


class Node:
    """Records what the keep-alive sends, as the SIP node's client transactions would take it."""

    def __init__(self) -> None:
        self.sent: list[tuple[TransactionKey, Request, Destination]] = []

    def advertised_for(self, transport: str) -> tuple[str, int]:
        return ("198.51.100.1", 5061 if transport == "tls" else 5060)

    def send_request(
        self, request: Request, dest: Destination, *, user: KeepAlive | None = None
    ) -> TransactionKey:
        key = tx.client_key(request)
        assert key is not None
        self.sent.append((key, request, dest))
        return key


def binding(
    contact: str, *, nated: bool = True, flow: Destination = NATED, expires_at: float = 5000
) -> Binding:
    return Binding(
        contact=contact,
        flow=flow,
        nated=nated,
        call_id=contact,
        cseq=1,
        expires_at=expires_at,
        updated_at=0,
    )


def setup(**kwargs: object) -> tuple[KeepAlive, Node, FakeClock, MemoryLocationStore]:
    node, clock, inner = Node(), FakeClock(), MemoryLocationStore()
    keepalive = KeepAlive(node, inner, clock=clock, interval_s=25, rng=random.Random(7), **kwargs)  # type: ignore[arg-type]
    return keepalive, node, clock, inner


def run_for(keepalive: KeepAlive, clock: FakeClock, seconds: float) -> None:
    for _ in range(round(seconds / keepalive.tick_s)):
        clock.advance(keepalive.tick_s)
        keepalive.tick(clock.monotonic())


def answer(request: Request, code: int = 200) -> Response:
    response = parse(serialize(build_response(request, code, to_tag="t")))
    assert isinstance(response, Response)
    return response


async def test_only_nated_udp_bindings_are_pinged_over_their_flow() -> None:
    keepalive, node, clock, inner = setup()
    store = keepalive.watch(inner)
    await store.replace(
        T,
        AOR,
        [
            binding("sip:101@10.0.0.5:5060"),
            binding("sip:101@203.0.113.8:5060", nated=False, flow=Destination("udp", "203.0.113.8", 5060)),
            binding("sip:101@10.0.0.6:5060;transport=tcp", flow=Destination("tcp", "203.0.113.7", 40002, 9)),
        ],
    )
    assert len(keepalive) == 1
    run_for(keepalive, clock, 25)
    assert len(node.sent) == 1
    _, request, dest = node.sent[0]
    assert dest == NATED
    assert request.method == "OPTIONS" and str(request.uri) == "sip:101@10.0.0.5:5060"
    assert str(request.via[0]).startswith("SIP/2.0/UDP 198.51.100.1:5060;branch=z9hG4bK")
    assert request.to_address.uri.host == "a.test"
    keepalive.on_response(node.sent[0][0], answer(request))
    run_for(keepalive, clock, 25)
    assert len(node.sent) == 2  # once per interval


async def test_first_options_are_spread_over_the_interval_and_bounded_per_tick() -> None:
    keepalive, node, clock, inner = setup(max_per_tick=3)
    store = keepalive.watch(inner)
    for i in range(40):
        await store.save(T, aor_for(str(200 + i), "a.test"), binding(f"sip:{200 + i}@10.0.0.9:{5000 + i}"))
    per_tick: list[int] = []
    for _ in range(25):
        clock.advance(keepalive.tick_s)
        per_tick.append(keepalive.tick(clock.monotonic()))
    assert max(per_tick) <= 3
    assert sum(1 for n in per_tick if n) >= 10  # not all in one burst
    run_for(keepalive, clock, 10)  # the ones that did not fit go in the next ticks
    assert len({key for key, _, _ in node.sent}) == 40


async def test_bindings_that_never_answer_are_dropped_after_max_misses() -> None:
    keepalive, node, clock, inner = setup(max_misses=3)
    store = keepalive.watch(inner)
    await store.save(T, AOR, binding("sip:101@10.0.0.5:5060"))
    await store.save(T, AOR, binding("sip:101@10.0.0.6:5060", flow=Destination("udp", "203.0.113.9", 1)))
    for round_ in range(3):
        run_for(keepalive, clock, 25)
        for key, request, dest in node.sent[-2:]:
            if dest == NATED:
                keepalive.on_terminated(key, "timeout")  # Timer F: no answer at all
            else:
                keepalive.on_response(key, answer(request, 405))  # an error is an answer
                keepalive.on_terminated(key, "done")
        assert await keepalive.drop_dead() == (1 if round_ == 2 else 0)
    assert [b.contact for b in await inner.lookup(T, AOR)] == ["sip:101@10.0.0.6:5060"]
    assert len(keepalive) == 1


async def test_a_register_refresh_clears_the_misses_and_an_unregister_stops_the_pings() -> None:
    keepalive, node, clock, inner = setup(max_misses=2)
    store = keepalive.watch(inner)
    phone = binding("sip:101@10.0.0.5:5060")
    await store.save(T, AOR, phone)
    run_for(keepalive, clock, 25)
    keepalive.on_terminated(node.sent[-1][0], "timeout")
    await store.save(T, AOR, phone)  # the phone registered again
    run_for(keepalive, clock, 25)
    keepalive.on_terminated(node.sent[-1][0], "timeout")
    assert await keepalive.drop_dead() == 0
    assert await inner.lookup(T, AOR) == [phone]
    await store.remove(T, AOR)
    sent = len(node.sent)
    run_for(keepalive, clock, 50)
    assert len(node.sent) == sent and len(keepalive) == 0


async def test_no_new_options_while_one_is_in_flight_and_expired_bindings_are_let_go() -> None:
    keepalive, node, clock, inner = setup()
    store = keepalive.watch(inner)
    await store.save(T, AOR, binding("sip:101@10.0.0.5:5060", expires_at=clock.monotonic() + 55))
    run_for(keepalive, clock, 50)
    assert len(node.sent) == 1  # Timer F (32 s) outlasts the 25 s interval
    keepalive.on_terminated(node.sent[0][0], "timeout")
    run_for(keepalive, clock, 25)
    assert len(node.sent) == 1 and len(keepalive) == 0  # past expires_at before the sweep removed it


async def test_max_misses_zero_only_logs() -> None:
    keepalive, node, clock, inner = setup(max_misses=0)
    store = keepalive.watch(inner)
    await store.save(T, AOR, binding("sip:101@10.0.0.5:5060"))
    for _ in range(5):
        run_for(keepalive, clock, 25)
        keepalive.on_terminated(node.sent[-1][0], "timeout")
        assert await keepalive.drop_dead() == 0
    assert len(await inner.lookup(T, AOR)) == 1


def test_options_follow_the_path_and_refuse_a_bad_contact() -> None:
    via = LocalVia("UDP", "198.51.100.1", 5060)
    proxied = dataclasses.replace(binding("sip:101@10.0.0.5:5060"), path=("<sip:edge.test;lr>",))
    request = options_request(proxied, AOR, via)
    assert request is not None and request.headers.getlist("Route") == ["<sip:edge.test;lr>"]
    assert options_request(binding("not a uri"), AOR, via) is None
