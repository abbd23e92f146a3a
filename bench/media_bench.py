"""Media relay benchmark: N relayed G.711 calls on loopback, loss and added delay/jitter (telephony.md §8.3).

    python bench/media_bench.py                       # 100 and 300 calls, 8 s each
    python bench/media_bench.py --calls 50,100,200,300 --seconds 5 --translate
    python bench/media_bench.py --calls 100,300 --direct   # baseline: the phones without the relay

The system under test is this process: an ``InlineMediaBackend`` (the relay on its own asyncio loop, as a
media worker will run it) with N sessions. A separate generator process plays 2N phones: each sends 172-byte
G.711 packets every 20 ms on absolute 1 ms slots (each stream stamped with ``time.monotonic_ns`` at send) to
its leg and receives what the relay forwards from the other phone. Per point it reports loss, one-way delay
through the relay (p50/p99/p99.9: the relay's added delay plus the generator's own send and receive cost, so
an upper bound for the added delay), RFC 3550 interarrival jitter, and the relay's CPU: % of one core and µs
per packet in. With two or more CPUs the relay runs on CPU 1 and the generator on CPU 0.

Results: a table on stdout, one JSON line per point appended to ``bench/results/latest.jsonl``. Everything is
bounded: at most ``--seconds`` per point plus about 2 s of set-up and drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import platform
import socket
import struct
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vpbx.media.backend import InlineMediaBackend  # noqa: E402
from vpbx.media.relay import Address, LegRef  # noqa: E402
from vpbx.pbx.bus import SessionId  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.jsonl"
PTIME_S = 0.020
SLOTS = 20  # 1 ms slots per 20 ms frame, so the load is spread instead of bursting every 20 ms
PAYLOAD = 160
WARMUP_S = 1.0
DRAIN_S = 0.3
_HDR = struct.Struct("!BBHII")


@dataclass(frozen=True, slots=True)
class Plan:
    calls: tuple[int, ...]
    seconds: float
    translate: bool
    port_first: int
    pin: bool
    direct: bool = False


@dataclass(frozen=True, slots=True)
class Figure:
    calls: int
    seconds: float
    translate: bool
    packets_sent: int
    packets_received: int
    loss_pct: float
    pps_in: float
    delay_p50_ms: float
    delay_p99_ms: float
    delay_p999_ms: float
    delay_max_ms: float
    jitter_ms: float
    relay_cpu_pct: float
    relay_cpu_us_per_packet: float
    generator_cpu_pct: float
    generator_late_p99_ms: float  # how late the generator's 1 ms send slots ran: its own overload


# --- generator process -------------------------------------------------------------------------------


class Streams:
    """2N phone sockets; stream i sends to leg address ``dest[i]`` and receives its peer's (i ^ 1) packets."""

    def __init__(self, n_streams: int) -> None:
        self.socks: list[socket.socket] = []
        for _ in range(n_streams):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            self.socks.append(s)
        self.dest: list[tuple[str, int]] = []
        self.seq = [0] * n_streams
        self.sent_at: list[list[int]] = [[] for _ in range(n_streams)]
        self.delays_ns: list[int] = []
        self.received = [0] * n_streams
        self.jitter = [0.0] * n_streams
        self.last_transit = [0] * n_streams
        self.counting = False
        self.window_start = [0] * n_streams  # per stream: index of the first packet sent while counting
        self.buf = bytearray(2048)
        self.packet = bytearray(12 + PAYLOAD)

    def send(self, i: int) -> None:
        seq = self.seq[i]
        self.seq[i] = seq + 1
        pkt = self.packet
        _HDR.pack_into(pkt, 0, 0x80, 0, seq & 0xFFFF, (seq * PAYLOAD) & 0xFFFFFFFF, 0x1000 + i)
        self.sent_at[i].append(time.monotonic_ns())  # the receiver finds it again by sequence number
        with contextlib.suppress(BlockingIOError):
            self.socks[i].sendto(pkt, self.dest[i])

    def drain(self, i: int) -> None:
        sock = self.socks[i]
        buf = self.buf
        src = i ^ 1  # the phone on the other leg of this call
        while True:
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            if n < 12:
                continue
            now = time.monotonic_ns()
            seq = (buf[2] << 8) | buf[3]
            sent = self.sent_at[src]
            # sequence numbers pass the relay unchanged for the first source; unwrap against what was sent
            k = len(sent) - 1 - ((len(sent) - 1 - seq) & 0xFFFF)
            if not self.window_start[src] <= k < len(sent) or not self.counting:
                continue  # before the measured window (warm-up), or not ours
            transit = now - sent[k]
            self.received[i] += 1
            self.delays_ns.append(transit)
            if self.last_transit[i]:
                d = abs(transit - self.last_transit[i])
                self.jitter[i] += (d - self.jitter[i]) / 16  # RFC 3550 §6.4.1 / A.8
            self.last_transit[i] = transit


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def generator(conn: Connection, n_streams: int, seconds: float, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    st = Streams(n_streams)
    conn.send([s.getsockname()[1] for s in st.socks])
    st.dest = conn.recv()
    loop = asyncio.new_event_loop()
    for i in range(n_streams):
        loop.add_reader(st.socks[i].fileno(), st.drain, i)
    t0 = loop.time() + 0.05
    end = t0 + WARMUP_S + seconds
    cpu0 = 0.0
    late: list[float] = []

    def tick(k: int) -> None:
        nonlocal cpu0
        at = t0 + k * PTIME_S / SLOTS
        if st.counting:
            late.append(loop.time() - at)
        if at >= end:
            loop.call_later(DRAIN_S, loop.stop)
            return
        if not st.counting and at >= t0 + WARMUP_S:
            st.counting = True
            cpu0 = _cpu_s()
            st.window_start[:] = [len(s) for s in st.sent_at]
        for i in range(k % SLOTS, n_streams, SLOTS):
            st.send(i)
        loop.call_at(t0 + (k + 1) * PTIME_S / SLOTS, tick, k + 1)

    loop.call_at(t0, tick, 0)
    loop.run_forever()
    cpu1 = _cpu_s()
    # packets sent while counting: from the warm-up mark to the end
    sent = sum(len(s) - w for s, w in zip(st.sent_at, st.window_start, strict=True))
    conn.send(
        {
            "sent": sent,
            "received": sum(st.received),
            "delays_ns": sorted(st.delays_ns),
            "jitter_ns": sum(st.jitter) / max(1, n_streams),
            "cpu_s": cpu1 - cpu0,
            "late_p99_s": sorted(late)[int(0.99 * len(late))] if late else 0.0,
        }
    )
    loop.close()
    for s in st.socks:
        s.close()


# --- system under test -------------------------------------------------------------------------------


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1e6


async def run_point(calls: int, plan: Plan) -> Figure:
    cpus = sorted(os.sched_getaffinity(0))
    pin = plan.pin and len(cpus) >= 2
    if pin:
        os.sched_setaffinity(0, {cpus[1]})
    backend = InlineMediaBackend(
        ports=(plan.port_first, plan.port_first + 4 * calls + 40), bind_host="127.0.0.1", media_timeout_s=3600
    )
    loop = asyncio.get_running_loop()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=generator, args=(child, 2 * calls, plan.seconds, cpus[0] if pin else None))
    proc.start()
    try:
        phone_ports: list[int] = await loop.run_in_executor(None, parent.recv)
        dest: list[tuple[str, int]] = []
        codec_b = 8 if plan.translate else 0
        for c in range(calls if not plan.direct else 0):
            sid = SessionId(str(uuid.uuid4()))
            ports = await backend.allocate(sid)
            await backend.update(LegRef(sid, "a"), Address("127.0.0.1", phone_ports[2 * c]), 0, 101)
            await backend.update(LegRef(sid, "b"), Address("127.0.0.1", phone_ports[2 * c + 1]), codec_b, 101)
            dest += [(ports.a.host, ports.a.port), (ports.b.host, ports.b.port)]
        if plan.direct:  # baseline: the phones talk to each other, no relay in between
            dest = [("127.0.0.1", phone_ports[i ^ 1]) for i in range(2 * calls)]
        parent.send(dest)
        # the relay's CPU over the generator's measured window (it starts 50 ms after this, then warms up)
        marks: list[tuple[float, float]] = []
        window = (0.05 + WARMUP_S, 0.05 + WARMUP_S + plan.seconds)
        for at in window:
            loop.call_later(at, lambda: marks.append((time.process_time(), time.monotonic())))
        result = await loop.run_in_executor(None, parent.recv)
        (cpu_a, wall_a), (cpu_b, wall_b) = marks
        cpu, wall = cpu_b - cpu_a, wall_b - wall_a
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
        await backend.aclose()
        if pin:
            os.sched_setaffinity(0, set(cpus))
    delays: list[int] = result["delays_ns"]
    sent, received = int(result["sent"]), int(result["received"])
    pps_in = 2 * calls / PTIME_S
    cpu_share = cpu / wall if wall > 0 else 0.0
    return Figure(
        calls=calls,
        seconds=plan.seconds,
        translate=plan.translate,
        packets_sent=sent,
        packets_received=received,
        loss_pct=100.0 * max(0, sent - received) / sent if sent else 0.0,
        pps_in=pps_in,
        delay_p50_ms=_percentile(delays, 0.50),
        delay_p99_ms=_percentile(delays, 0.99),
        delay_p999_ms=_percentile(delays, 0.999),
        delay_max_ms=delays[-1] / 1e6 if delays else float("nan"),
        jitter_ms=float(result["jitter_ns"]) / 1e6,
        relay_cpu_pct=100.0 * cpu_share,
        relay_cpu_us_per_packet=1e6 * cpu_share / pps_in,
        generator_cpu_pct=100.0 * float(result["cpu_s"]) / plan.seconds,
        generator_late_p99_ms=1e3 * float(result["late_p99_s"]),
    )


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loop": "asyncio",
    }


def render(figs: list[Figure]) -> str:
    head = (
        f"{'calls':>5} {'pps in':>7} {'loss %':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} {'max ms':>7} "
        f"{'jitter':>7} {'relay %':>8} {'µs/pkt':>7} {'gen %':>6} {'gen late':>8}"
    )
    rows = [head, "-" * len(head)]
    for f in figs:
        rows.append(
            f"{f.calls:>5} {f.pps_in:>7.0f} {f.loss_pct:>7.3f} {f.delay_p50_ms:>7.2f} {f.delay_p99_ms:>7.2f} "
            f"{f.delay_p999_ms:>7.2f} {f.delay_max_ms:>7.2f} {f.jitter_ms:>7.3f} {f.relay_cpu_pct:>8.1f} "
            f"{f.relay_cpu_us_per_packet:>7.1f} {f.generator_cpu_pct:>6.1f} {f.generator_late_p99_ms:>8.2f}"
        )
    return "\n".join(rows) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[Plan, Path]:
    p = argparse.ArgumentParser(prog="bench/media_bench.py", description=__doc__.split("\n", 1)[0])
    p.add_argument("--calls", default="100,300", help="comma-separated numbers of concurrent calls")
    p.add_argument("--seconds", type=float, default=8.0, help="measured length of each point (default 8)")
    p.add_argument("--translate", action="store_true", help="leg b on PCMA: every packet goes through A↔µ")
    p.add_argument("--ports", type=int, default=30000, help="first RTP port of the relay's range")
    p.add_argument("--no-pin", action="store_true", help="do not pin relay and generator to separate CPUs")
    p.add_argument("--direct", action="store_true", help="baseline: phones send to each other, no relay")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON lines are appended here")
    a = p.parse_args(argv)
    calls = tuple(int(x) for x in a.calls.split(",") if x.strip())
    if not calls or min(calls) < 1 or max(calls) > 2000:
        p.error("--calls takes 1..2000 per point")
    if not 0.5 <= a.seconds <= 120:
        p.error("--seconds takes 0.5..120")
    return Plan(calls, a.seconds, a.translate, a.ports, not a.no_pin, a.direct), a.out


async def main_async(plan: Plan, out: Path) -> list[Figure]:
    figs = []
    for n in plan.calls:
        figs.append(await run_point(n, plan))
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    meta = {
        "bench": "media_relay",
        "run_id": uuid.uuid4().hex[:8],
        "started": started,
        "machine": machine(),
        "plan": asdict(plan),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for fig in figs:
            f.write(json.dumps({**meta, **asdict(fig)}, ensure_ascii=False) + "\n")
    return figs


def main(argv: list[str] | None = None) -> int:
    plan, out = parse_args(argv)
    figs = asyncio.run(main_async(plan, out))
    m = machine()
    sys.stdout.write(
        f"Media relay benchmark: {plan.seconds:g} s per point, G.711 20 ms, "
        f"{'A-law ↔ µ-law' if plan.translate else 'µ-law both legs'}; {m['cpus']} CPUs ({m['cpu_model']}), "
        f"pinned: {plan.pin and int(str(m['cpus'])) >= 2}; delays include the generator's own cost\n"
    )
    sys.stdout.write(render(figs))
    sys.stdout.write(f"appended to {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
