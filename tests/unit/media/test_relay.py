"""The relay on loopback with real UDP sockets: two fake phones, latching, A↔µ, DTMF, inactivity, ports.

Every wait is for the datagram (or the counter) itself, bounded by ``asyncio.wait_for``; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import pytest

from vpbx.clock import FakeClock, SystemClock
from vpbx.errors import NoMediaPorts, NoMediaSession
from vpbx.media import InlineMediaBackend, LegRef, MediaPorts
from vpbx.media.dtmf import Digit, digit_payloads
from vpbx.media.g711 import ALAW_TO_ULAW, ULAW_TO_ALAW
from vpbx.media.relay import LATCH_PACKETS, Address, PortAllocator
from vpbx.media.rtp import RtpPacket, parse_packet, serialize_packet
from vpbx.pbx.bus import SessionId

WAIT_S = 2.0
S1 = SessionId("00000000-0000-4000-8000-000000000001")
S2 = SessionId("00000000-0000-4000-8000-000000000002")


def free_range(pairs: int) -> tuple[int, int]:
    """A random even-aligned range whose ports are free right now (other suites run in parallel)."""
    for _ in range(50):
        first = random.randrange(20_000, 60_000, 2)
        last = first + 2 * pairs - 1
        probes = []
        try:
            for port in range(first, last + 1):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probes.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in probes:
                s.close()
        return first, last
    raise RuntimeError("no free port range")


class Phone(asyncio.DatagramProtocol):
    """A fake phone: sends RTP from its own socket, queues what arrives."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None
        self.seq = 1000
        self.ts = 160_000

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # 3.11's selector datagram transport does not subclass DatagramTransport, hence the cast
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return Address(host, port)

    def send_raw(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    def send(
        self,
        to: Address,
        *,
        pt: int = 0,
        payload: bytes = b"\xff" * 160,
        ssrc: int = 0x1234,
        seq: int | None = None,
        ts: int | None = None,
    ) -> RtpPacket:
        if seq is None:
            self.seq += 1
            self.ts += 160
            seq = self.seq
        ts = self.ts if ts is None else ts
        pkt = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload)
        self.send_raw(serialize_packet(pkt), to)
        return pkt

    async def receive(self) -> tuple[RtpPacket, tuple[str, int]]:
        data, addr = await asyncio.wait_for(self.got.get(), WAIT_S)
        return parse_packet(data), addr


class Phones:
    """Makes fake phones and closes them at the end of the test."""

    def __init__(self) -> None:
        self.made: list[Phone] = []

    async def new(self) -> Phone:
        loop = asyncio.get_running_loop()
        _, phone = await loop.create_datagram_endpoint(Phone, local_addr=("127.0.0.1", 0))
        self.made.append(phone)
        return phone

    def close(self) -> None:
        for phone in self.made:
            if phone.transport is not None:
                phone.transport.close()


@pytest.fixture
async def phones() -> AsyncIterator[Phones]:
    p = Phones()
    yield p
    p.close()
    await asyncio.sleep(0)  # let the transports finish closing


@dataclass
class Rig:
    backend: InlineMediaBackend
    clock: FakeClock
    phones: Phones
    timeouts: list[tuple[LegRef, float]] = field(default_factory=list)
    digits: list[tuple[LegRef, Digit]] = field(default_factory=list)


@pytest.fixture
async def rig(phones: Phones) -> AsyncIterator[Rig]:
    clock = FakeClock()
    timeouts: list[tuple[LegRef, float]] = []
    digits: list[tuple[LegRef, Digit]] = []
    backend = InlineMediaBackend(
        ports=free_range(8),
        advertise_host="127.0.0.1",
        clock=clock,
        on_media_timeout=lambda leg, idle: timeouts.append((leg, idle)),
        on_dtmf=lambda leg, digit: digits.append((leg, digit)),
    )
    r = Rig(backend=backend, clock=clock, phones=phones, timeouts=timeouts, digits=digits)
    yield r
    await r.backend.aclose()


async def wait_until(cond: Callable[[], bool]) -> None:
    async def spin() -> None:
        while not cond():  # noqa: ASYNC110 - sleep(0) is one loop turn, not a delay: the readers run
            await asyncio.sleep(0)

    await asyncio.wait_for(spin(), WAIT_S)


async def bridged(
    rig: Rig, *, a_pt: int = 0, b_pt: int = 0, a_te: int | None = 101, b_te: int | None = 101
) -> tuple[MediaPorts, Phone, Phone]:
    ports = await rig.backend.allocate(S1)
    alice, bob = await rig.phones.new(), await rig.phones.new()
    await rig.backend.update(LegRef(S1, "a"), alice.address, a_pt, a_te)
    await rig.backend.update(LegRef(S1, "b"), bob.address, b_pt, b_te)
    return ports, alice, bob


async def test_forwards_both_ways_with_a_stable_ssrc_per_leg(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    assert ports.a.host == ports.b.host == "127.0.0.1" and ports.a.port % 2 == 0 and ports.b.port % 2 == 0
    sent = [alice.send(ports.a, payload=bytes([i]) * 160) for i in range(3)]
    got = [await bob.receive() for _ in sent]
    assert [p.payload for p, _ in got] == [p.payload for p in sent]
    assert [p.sequence_number for p, _ in got] == [p.sequence_number for p in sent]
    assert all(addr == ports.b for _, addr in got)  # symmetric: it comes from the port bob sends to
    ssrc_to_bob = got[0][0].ssrc
    assert ssrc_to_bob != 0x1234 and {p.ssrc for p, _ in got} == {ssrc_to_bob}

    back = bob.send(ports.b, payload=b"\x01" * 160, ssrc=0x9999)
    pkt, addr = await alice.receive()
    assert pkt.payload == back.payload and addr == ports.a
    assert pkt.ssrc not in (0x9999, ssrc_to_bob)

    st = await rig.backend.stats(S1)
    assert (st.a.rx_packets, st.b.tx_packets, st.b.rx_packets, st.a.tx_packets) == (3, 3, 1, 1)
    assert st.a.rx_bytes == 3 * 172 and st.a.latched == alice.address and st.a.lost == 0


async def test_latching_to_the_real_source_and_relatching_after_five(rig: Rig) -> None:
    ports, alice, bob_sdp = await bridged(rig)
    bob_nat, bob_moved = await rig.phones.new(), await rig.phones.new()

    # before bob sends anything, alice's audio goes to bob's SDP address
    alice.send(ports.a)
    _, addr = await bob_sdp.receive()
    assert addr == ports.b

    # bob's packets really come from another address (NAT): the first valid packet latches at once
    bob_nat.send(ports.b, payload=b"\x01" * 160)
    assert (await alice.receive())[0].payload == b"\x01" * 160
    sent = alice.send(ports.a, payload=b"\x02" * 160)
    assert (await bob_nat.receive())[0].payload == sent.payload

    # a new source must send LATCH_PACKETS consecutive packets; a packet from the latched one resets the count
    for _ in range(LATCH_PACKETS - 1):
        bob_moved.send(ports.b, payload=b"\x03" * 160, ssrc=0x5555)
    bob_nat.send(ports.b, payload=b"\x04" * 160)
    assert (await alice.receive())[0].payload == b"\x04" * 160  # the four before it were dropped
    alice.send(ports.a, payload=b"\x05" * 160)
    assert (await bob_nat.receive())[0].payload == b"\x05" * 160  # still latched to bob_nat

    for i in range(LATCH_PACKETS):
        bob_moved.send(ports.b, payload=bytes([0x10 + i]) * 160, ssrc=0x5555)
    assert (await alice.receive())[0].payload == bytes([0x10 + LATCH_PACKETS - 1]) * 160
    alice.send(ports.a, payload=b"\x06" * 160)
    assert (await bob_moved.receive())[0].payload == b"\x06" * 160

    st = await rig.backend.stats(S1)
    assert st.b.unexpected_source == 2 * (LATCH_PACKETS - 1)
    assert st.b.relatches == 1 and st.b.latched == bob_moved.address and st.b.remote == bob_sdp.address
    assert bob_sdp.got.empty() and bob_nat.got.empty()


async def test_alaw_and_ulaw_legs_are_translated_and_events_remapped(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig, a_pt=8, b_pt=0, a_te=101, b_te=96)
    alaw = bytes(range(160))
    alice.send(ports.a, pt=8, payload=alaw)
    pkt, _ = await bob.receive()
    assert pkt.payload_type == 0 and pkt.payload == alaw.translate(ALAW_TO_ULAW)

    ulaw = bytes(range(96, 256))
    bob.send(ports.b, pt=0, payload=ulaw)
    pkt, _ = await alice.receive()
    assert pkt.payload_type == 8 and pkt.payload == ulaw.translate(ULAW_TO_ALAW)

    event = digit_payloads("5")[0]
    alice.send(ports.a, pt=101, payload=event)
    pkt, _ = await bob.receive()
    assert pkt.payload_type == 96 and pkt.payload == event  # events are never translated

    alice.send(ports.a, pt=0, payload=alaw)  # PCMU was not negotiated on alice's leg
    alice.send(ports.a, pt=13, payload=b"\x40")  # comfort noise was not either
    alice.send(ports.a, pt=8, payload=alaw)
    pkt, _ = await bob.receive()
    assert pkt.payload_type == 0 and pkt.payload == alaw.translate(ALAW_TO_ULAW)
    assert (await rig.backend.stats(S1)).a.unknown_pt == 2


async def test_translation_skips_header_extension_and_padding(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig, a_pt=8, b_pt=0)
    raw = bytearray(
        serialize_packet(
            RtpPacket(payload_type=8, sequence_number=1, timestamp=160, ssrc=1, payload=bytes(range(160)))
        )
    )
    raw[0] |= 0x30  # X and P
    raw[12:12] = struct.pack("!HH", 0xBEDE, 1) + b"\xd5\xd5\xd5\xd5"
    raw += b"\xd5\xd5\x03"
    alice.send_raw(bytes(raw), ports.a)
    pkt, _ = await bob.receive()
    assert pkt.payload == bytes(range(160)).translate(ALAW_TO_ULAW)
    assert pkt.extension is not None and pkt.extension.data == b"\xd5\xd5\xd5\xd5" and pkt.padding == 3


async def test_telephone_event_without_peer_support_is_dropped(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig, a_te=101, b_te=None)
    alice.send(ports.a, pt=101, payload=digit_payloads("1")[0])
    alice.send(ports.a, pt=0)
    pkt, _ = await bob.receive()
    assert pkt.payload_type == 0
    assert (await rig.backend.stats(S1)).a.dropped == 1


async def test_dtmf_is_peeked_on_the_way_through(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    for payload in digit_payloads("7"):
        alice.send(ports.a, pt=101, payload=payload, ts=48_000)  # one timestamp per event
    for _ in digit_payloads("7"):
        await bob.receive()
    assert rig.digits == [(LegRef(S1, "a"), Digit("7", 48_000, 800, True))]


async def test_lost_dtmf_end_is_closed_by_the_watchdog(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    alice.send(ports.a, pt=101, payload=digit_payloads("3")[0])
    await bob.receive()
    rig.backend.check()
    assert rig.digits == []
    rig.clock.advance(1.0)
    rig.backend.check()
    assert [(leg.side, d.digit, d.ended) for leg, d in rig.digits] == [("a", "3", False)]


async def test_invalid_packets_are_counted_not_forwarded(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    alice.send_raw(b"\x40" + bytes(171), ports.a)  # version 1
    alice.send_raw(b"\x80\x00\x00", ports.a)  # too short
    alice.send_raw(struct.pack("!BBHI", 0x81, 201, 7, 1) + bytes(24), ports.a)  # RTCP on the RTP port
    alice.send_raw(b"\x80" + bytes(3000), ports.a)  # larger than any G.711 packet
    sent = alice.send(ports.a)
    assert (await bob.receive())[0].sequence_number == sent.sequence_number
    st = await rig.backend.stats(S1)
    assert (st.a.invalid, st.a.unknown_pt, st.a.rx_packets) == (3, 1, 1)


async def test_loss_is_counted_from_sequence_numbers(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    for seq in (10, 11, 13, 14, 17):
        alice.send(ports.a, seq=seq)
        await bob.receive()
    assert (await rig.backend.stats(S1)).a.lost == 3


async def test_rtcp_is_read_on_the_odd_port_and_not_forwarded(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    rr = struct.pack("!BBHI", 0x81, 201, 7, 1) + struct.pack("!IIIIII", 9, (12 << 24) | 30, 500, 44, 0, 0)
    alice.send_raw(rr, Address(ports.a.host, ports.a.port + 1))

    relay = rig.backend.relay
    await wait_until(lambda: relay.get(S1).a.rtcp_packets == 1)
    st = await rig.backend.stats(S1)
    assert (st.a.rtcp_fraction_lost, st.a.rtcp_cumulative_lost, st.a.rtcp_jitter) == (12, 30, 44)
    assert st.a.rtcp_packets == 1 and st.a.rx_packets == 0 and bob.got.empty()


async def test_nothing_is_sent_before_the_other_side_is_known(rig: Rig) -> None:
    ports = await rig.backend.allocate(S1)
    alice, bob = await rig.phones.new(), await rig.phones.new()
    await rig.backend.update(LegRef(S1, "a"), alice.address, 0, 101)
    alice.send(ports.a)
    relay = rig.backend.relay
    await wait_until(lambda: relay.get(S1).a.rx_packets == 1)
    assert (await rig.backend.stats(S1)).a.dropped == 1
    # the B side's phone answered without SDP yet but sends media: its latch is a destination too
    bob.send(ports.b)
    await alice.receive()
    alice.send(ports.a)
    _, addr = await bob.receive()
    assert addr == ports.b


async def test_a_new_remote_drops_the_latch_and_rebases_toward_it(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    bob.send(ports.b)
    await alice.receive()
    alice.send(ports.a)
    first, _ = await bob.receive()
    carol = await rig.phones.new()  # bob transfers the call to carol: a re-INVITE points leg b at her
    await rig.backend.update(LegRef(S1, "b"), carol.address, 0, 101)
    alice.send(ports.a, ssrc=0x1234)
    pkt, _ = await carol.receive()
    assert pkt.marker and pkt.ssrc == first.ssrc and pkt.sequence_number == first.sequence_number + 1
    assert bob.got.empty()


async def test_inactivity_is_reported_per_leg_on_the_clock(rig: Rig) -> None:
    ports, alice, bob = await bridged(rig)
    rig.clock.advance(50)
    alice.send(ports.a)
    await bob.receive()
    rig.clock.advance(9)
    assert rig.backend.check() == [] and rig.timeouts == []
    rig.clock.advance(11)  # b silent 70 s since it was armed, a silent 20 s
    assert rig.backend.check() == [LegRef(S1, "b")]
    assert rig.timeouts == [(LegRef(S1, "b"), 70.0)]
    assert rig.backend.check() == []  # re-armed: not again at once
    relay = rig.backend.relay
    assert relay.get(S1).a.idle_for(rig.clock.monotonic()) == 20.0
    rig.clock.advance(60)
    assert sorted(leg.side for leg in rig.backend.check()) == ["a", "b"]
    assert (await rig.backend.stats(S1)).a.idle_s == 0.0  # just re-armed


async def test_legs_without_negotiated_media_are_not_watched(rig: Rig) -> None:
    await rig.backend.allocate(S1)
    rig.clock.advance(3600)
    assert rig.backend.check() == []


async def test_watchdog_fires_on_its_own_with_the_real_clock(phones: Phones) -> None:
    fired: asyncio.Queue[LegRef] = asyncio.Queue()
    backend = InlineMediaBackend(
        ports=free_range(2),
        clock=SystemClock(),
        media_timeout_s=0.1,
        check_interval_s=0.02,
        on_media_timeout=lambda leg, _idle: fired.put_nowait(leg),
    )
    try:
        await backend.allocate(S1)
        phone = await phones.new()
        await backend.update(LegRef(S1, "a"), phone.address, 0, None)
        assert await asyncio.wait_for(fired.get(), WAIT_S) == LegRef(S1, "a")
    finally:
        await backend.aclose()


async def test_ports_are_released_and_reused(phones: Phones) -> None:
    first, last = free_range(2)
    backend = InlineMediaBackend(ports=(first, last))
    try:
        ports = await backend.allocate(S1)
        assert {ports.a.port, ports.b.port} == {first, first + 2}
        with pytest.raises(NoMediaPorts):
            await backend.allocate(S2)
        assert backend.allocator.in_use == 2
        await backend.release(S1)
        await backend.release(S1)  # twice is harmless
        assert backend.allocator.in_use == 0
        with pytest.raises(NoMediaSession):
            await backend.stats(S1)
        again = await backend.allocate(S2)
        assert {again.a.port, again.b.port} == {first, first + 2}
        # the new session really owns the sockets: media flows
        alice, bob = await phones.new(), await phones.new()
        await backend.update(LegRef(S2, "a"), alice.address, 0, None)
        await backend.update(LegRef(S2, "b"), bob.address, 0, None)
        alice.send(again.a)
        await bob.receive()
    finally:
        await backend.aclose()
    assert backend.allocator.in_use == 0


async def test_allocator_binds_rtcp_and_skips_busy_ports() -> None:
    first, last = free_range(3)
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("127.0.0.1", first + 1))  # someone else holds the RTCP port of the first pair
    alloc = PortAllocator(first, last, host="127.0.0.1")
    try:
        port, rtp, rtcp = alloc.allocate()
        assert port == first + 2 and rtp.getsockname()[1] == port and rtcp.getsockname()[1] == port + 1
        assert rtp.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 2 * 1024  # set (the kernel may cap it)
        port2, rtp2, rtcp2 = alloc.allocate()
        assert port2 == first + 4
        with pytest.raises(NoMediaPorts):
            alloc.allocate()
        for s in (rtp, rtcp, rtp2, rtcp2):
            s.close()
        alloc.release(port)
        alloc.release(port2)
        port3, rtp3, rtcp3 = alloc.allocate()
        rtp3.close()
        rtcp3.close()
        assert port3 == first + 2  # round robin from where it stopped, skipping the busy pair
    finally:
        busy.close()


def test_allocator_range_must_hold_a_pair() -> None:
    with pytest.raises(ValueError):
        PortAllocator(20001, 20001)
    assert PortAllocator(20001, 20010).capacity == 4  # 20002..20008 (+1)


async def test_update_checks_its_input(rig: Rig) -> None:
    await rig.backend.allocate(S1)
    with pytest.raises(ValueError):
        await rig.backend.update(LegRef(S1, "a"), Address("phone.example", 4000), 0, 101)
    with pytest.raises(ValueError):
        await rig.backend.update(LegRef(S1, "a"), Address("127.0.0.1", 0), 0, 101)
    with pytest.raises(ValueError):
        await rig.backend.update(LegRef(S1, "a"), None, 128, 101)
    with pytest.raises(NoMediaSession):
        await rig.backend.update(LegRef(S2, "a"), None, 0, 101)


async def test_failing_hooks_do_not_stop_the_relay(phones: Phones) -> None:
    def boom(*_args: object) -> None:
        raise RuntimeError("subscriber bug")

    clock = FakeClock()
    backend = InlineMediaBackend(ports=free_range(2), clock=clock, on_media_timeout=boom, on_dtmf=boom)
    try:
        ports = await backend.allocate(S1)
        alice, bob = await phones.new(), await phones.new()
        await backend.update(LegRef(S1, "a"), alice.address, 0, 101)
        await backend.update(LegRef(S1, "b"), bob.address, 0, 101)
        for payload in digit_payloads("1"):
            alice.send(ports.a, pt=101, payload=payload, ts=800)
        alice.send(ports.a, payload=b"\x42" * 160)
        for _ in range(len(digit_payloads("1"))):
            await bob.receive()
        assert (await bob.receive())[0].payload == b"\x42" * 160  # the drain went on after the hook failed
        clock.advance(60)
        fired = backend.check()  # reported (and re-armed) even though the hook raised
        assert sorted(leg.side for leg in fired) == ["a", "b"]
        assert backend.check() == []
    finally:
        await backend.aclose()
