"""Media relay benchmark: N relayed G.711 calls on loopback, loss and added delay/jitter (telephony.md §8.3).

    python bench/media_bench.py                             # ONE media worker process: 300, 500, 700 calls
    python bench/media_bench.py --backend worker,rtpengine  # and rtpengine (NG protocol) at the same points
    python bench/media_bench.py --backend inline            # the relay on this process's own loop
    python bench/media_bench.py --calls 100,300 --direct    # baseline: the phones without a relay

Systems under test (``--backend``, comma-separated, run one after the other at each point):

- ``worker``: the production path. A ``WorkerMediaBackend`` with one worker process (``python -m
  vpbx.media.worker``, uvloop when installed); the N calls are set up over its control socket (allocate and
  two updates each, as the B2BUA does) and the worker relays. CPU and RSS are the worker process's.
- ``rtpengine``: the reference, the Debian ``rtpengine-daemon`` in userspace (``--table=-1
  --num-threads=1``), set up over its NG protocol (bencode over UDP: offer, answer) with the same SDP.
- ``inline``: ``InlineMediaBackend`` on this process's loop (the relay alone, no control path).

A separate generator process plays 2N phones: each sends 172-byte G.711 packets every 20 ms on absolute 1 ms
slots (each stream stamped with ``time.monotonic_ns`` at send) to its leg and receives what the relay forwards
from the other phone. Per point it reports loss, one-way delay through the relay (p50/p99/p99.9: the relay's
added delay plus the generator's own send and receive cost, so an upper bound for the added delay), RFC 3550
interarrival jitter, the relay's CPU (% of one core, µs per packet in), its memory per call (RSS with the N
calls up minus RSS before them, over N; kernel socket buffers are not in RSS) and the set-up cost per call.
With two or more CPUs the relay runs on CPU 1 and the generator (and this process) on CPU 0. When two backends
ran at the same point, the last table gives their ratio in packets per CPU-second.

Results: tables on stdout, also written to ``bench/results/media-latest.txt``; one JSON line per point
appended to ``bench/results/media-latest.jsonl``. Everything is bounded: at most ``--seconds`` per point
plus a few seconds of set-up and drain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vpbx.media.backend import InlineMediaBackend, WorkerMediaBackend  # noqa: E402
from vpbx.media.relay import Address, LegRef  # noqa: E402
from vpbx.pbx.bus import SessionId  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "media-latest.jsonl"
TEXT_RESULTS = ROOT / "bench" / "results" / "media-latest.txt"
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
    backends: tuple[str, ...] = ("worker",)
    generator: str = "c"


@dataclass(frozen=True, slots=True)
class Figure:
    backend: str
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
    relay_rss_kib_per_call: float  # (RSS with the calls up − RSS before them) / N
    softirq_on_relay_cpu_pct: float  # network softirq on the relay's CPU (loopback delivery), not in relay %
    others_on_relay_cpu_pct: float  # the relay's CPU busy with other processes: other load on a shared box
    setup_ms_per_call: float  # allocate + 2 updates (worker, inline) or offer + answer (rtpengine)
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


def _delay_summary(delays: list[int]) -> dict[str, int]:
    def pct(q: float) -> int:
        return delays[min(len(delays) - 1, int(q * len(delays)))] if delays else -1

    return {
        "received": len(delays),
        "p50_ns": pct(0.50),
        "p99_ns": pct(0.99),
        "p999_ns": pct(0.999),
        "max_ns": delays[-1] if delays else -1,
    }


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
            **_delay_summary(sorted(st.delays_ns)),
            "jitter_ns": sum(st.jitter) / max(1, n_streams),
            "cpu_s": cpu1 - cpu0,
            "late_p99_ns": 1e9 * sorted(late)[int(0.99 * len(late))] if late else 0.0,
        }
    )
    loop.close()
    for s in st.socks:
        s.close()


class PyGenerator:
    """``generator`` above in a spawned process, over a pipe."""

    async def start(self, n_streams: int, seconds: float, cpu: int | None) -> list[int]:
        ctx = mp.get_context("spawn")
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=generator, args=(child, n_streams, seconds, cpu))
        self.proc.start()
        ports: list[int] = await asyncio.get_running_loop().run_in_executor(None, self.parent.recv)
        return ports

    async def send_destinations(self, dest: list[tuple[str, int]]) -> None:
        self.parent.send(dest)

    async def result(self, timeout_s: float) -> dict[str, float]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):
            result: dict[str, float] = await loop.run_in_executor(None, self.parent.recv)
        return result

    async def close(self) -> None:
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()


RTPGEN_SOURCE = ROOT / "bench" / "rtpgen.c"


def build_rtpgen() -> Path:
    """Compile ``bench/rtpgen.c`` once per source version, outside the tree."""
    source = RTPGEN_SOURCE.read_bytes()
    binary = Path(tempfile.gettempdir()) / "vpbx-bench" / f"rtpgen-{hashlib.sha256(source).hexdigest()[:12]}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(tmp), str(RTPGEN_SOURCE)], check=True, timeout=60)
        tmp.replace(binary)
    return binary


class CGenerator:
    """``bench/rtpgen.c``: the same streams and figures as ``generator``, at a fraction of its CPU."""

    async def start(self, n_streams: int, seconds: float, cpu: int | None) -> list[int]:
        argv = [str(build_rtpgen()), str(n_streams), repr(seconds), repr(WARMUP_S)]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        async with asyncio.timeout(10):
            line = await self.proc.stdout.readline()
        return [int(p) for p in line.split()]

    async def send_destinations(self, dest: list[tuple[str, int]]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(f"{h}:{p}" for h, p in dest) + "\n").encode())
        await self.proc.stdin.drain()

    async def result(self, timeout_s: float) -> dict[str, float]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            line = await self.proc.stdout.readline()
        result: dict[str, float] = json.loads(line)
        return result

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()


# --- systems under test ------------------------------------------------------------------------------


CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def proc_cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_busy_s(cpu: int | None) -> tuple[float, float]:
    """Busy time of one CPU from /proc/stat: (all but softirq, softirq); zeros when not pinned.

    Loopback delivery of what a process sends runs as softirq on its CPU and is not always charged to it.
    """
    if cpu is None:
        return 0.0, 0.0
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                softirq = v[6]
                return (sum(v[:8]) - v[3] - v[4] - softirq) / CLK_TCK, softirq / CLK_TCK
    return 0.0, 0.0


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KIB


class Sut:
    """A relay under test: ``setup`` bridges N calls to the phones and returns where each phone must send."""

    name = ""
    pid = 0

    async def start(self, cpu: int | None) -> None: ...

    async def setup(self, calls: int, phone_ports: list[int], plan: Plan) -> list[tuple[str, int]]:
        raise NotImplementedError

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    async def close(self) -> None: ...


class InlineSut(Sut):
    name = "inline"

    def __init__(self, plan: Plan, calls: int) -> None:
        self.backend = InlineMediaBackend(
            ports=(plan.port_first, plan.port_first + 4 * calls + 40),
            bind_host="127.0.0.1",
            media_timeout_s=3600,
        )
        self.pid = os.getpid()

    async def start(self, cpu: int | None) -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    async def setup(self, calls: int, phone_ports: list[int], plan: Plan) -> list[tuple[str, int]]:
        return await _bridge(self.backend, calls, phone_ports, plan)

    def cpu_s(self) -> float:
        return time.process_time()

    async def close(self) -> None:
        await self.backend.aclose()


class WorkerSut(Sut):
    name = "worker"

    def __init__(self, plan: Plan, calls: int) -> None:
        self.backend = WorkerMediaBackend(
            ports=(plan.port_first, plan.port_first + 4 * calls + 40),
            workers=1,
            bind_host="127.0.0.1",
            media_timeout_s=3600,
            log_level="warning",
        )

    async def start(self, cpu: int | None) -> None:
        await self.backend.start()
        pid = self.backend.workers[0].pid
        assert pid is not None
        self.pid = pid
        if cpu is not None:
            os.sched_setaffinity(pid, {cpu})

    async def setup(self, calls: int, phone_ports: list[int], plan: Plan) -> list[tuple[str, int]]:
        return await _bridge(self.backend, calls, phone_ports, plan)

    async def close(self) -> None:
        await self.backend.aclose()


async def _bridge(
    backend: InlineMediaBackend | WorkerMediaBackend, calls: int, phone_ports: list[int], plan: Plan
) -> list[tuple[str, int]]:
    """N sessions as the B2BUA makes them: allocate, then each leg's negotiated SDP."""
    dest: list[tuple[str, int]] = []
    codec_b = 8 if plan.translate else 0
    for c in range(calls):
        sid = SessionId(str(uuid.uuid4()))
        ports = await backend.allocate(sid)
        await backend.update(LegRef(sid, "a"), Address("127.0.0.1", phone_ports[2 * c]), 0, 101)
        await backend.update(LegRef(sid, "b"), Address("127.0.0.1", phone_ports[2 * c + 1]), codec_b, 101)
        dest += [(ports.a.host, ports.a.port), (ports.b.host, ports.b.port)]
    return dest


# rtpengine's NG protocol: "<cookie> <bencoded dict>" over UDP, the reply carries the same cookie.


def bencode(value: object) -> bytes:
    if isinstance(value, bytes):
        return str(len(value)).encode() + b":" + value
    if isinstance(value, str):
        return bencode(value.encode())
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, i: int = 0) -> tuple[object, int]:
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c in (b"l", b"d"):
        items: list[object] = []
        i += 1
        while data[i : i + 1] != b"e":
            item, i = bdecode(data, i)
            items.append(item)
        if c == b"l":
            return items, i + 1
        return {
            str(k, "utf-8") if isinstance(k, bytes) else str(k): v
            for k, v in zip(items[::2], items[1::2], strict=True)
        }, i + 1
    colon = data.index(b":", i)
    size = int(data[i:colon])
    return data[colon + 1 : colon + 1 + size], colon + 1 + size


class NgClient:
    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self._n = 0

    async def call(self, command: dict[str, object], timeout_s: float = 2.0) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        self._n += 1
        cookie = f"{os.getpid()}_{self._n}".encode()
        self.sock.sendto(cookie + b" " + bencode(command), self.addr)
        async with asyncio.timeout(timeout_s):
            while True:
                data = await loop.sock_recv(self.sock, 65536)
                got, _, body = data.partition(b" ")
                if got == cookie:
                    reply, _ = bdecode(body)
                    assert isinstance(reply, dict)
                    if reply.get("result") != b"ok" and reply.get("result") != b"pong":
                        raise RuntimeError(f"rtpengine: {reply}")
                    return reply

    def close(self) -> None:
        self.sock.close()


def _sdp(port: int, pt: int) -> str:
    return (
        f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {'PCMA' if pt == 8 else 'PCMU'}/8000\r\n"
        f"a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )


def _sdp_address(sdp: object) -> tuple[str, int]:
    assert isinstance(sdp, bytes)
    host, port = "127.0.0.1", 0
    for line in sdp.decode().splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    return host, port


class RtpengineSut(Sut):
    name = "rtpengine"
    START_TIMEOUT_S = 10.0

    def __init__(self, plan: Plan, calls: int) -> None:
        self.first = plan.port_first
        self.last = plan.port_first + 4 * calls + 40
        self.proc: asyncio.subprocess.Process | None = None
        self.ng: NgClient | None = None

    async def start(self, cpu: int | None) -> None:
        ng_port = _free_udp_port()
        argv = [
            *(["taskset", "-c", str(cpu)] if cpu is not None else []),
            RTPENGINE,
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=3",
            "--table=-1",
            "--num-threads=1",
            "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{ng_port}",
            f"--port-min={self.first}",
            f"--port-max={self.last}",
        ]
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.pid = self.proc.pid
        self.ng = NgClient(ng_port)
        async with asyncio.timeout(self.START_TIMEOUT_S):
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"rtpengine exited with {self.proc.returncode}")
                try:
                    await self.ng.call({"command": "ping"}, timeout_s=0.2)
                    return
                except TimeoutError:
                    continue

    async def setup(self, calls: int, phone_ports: list[int], plan: Plan) -> list[tuple[str, int]]:
        assert self.ng is not None
        dest: list[tuple[str, int]] = []
        codec_b = 8 if plan.translate else 0
        for c in range(calls):
            call_id = uuid.uuid4().hex
            offer = await self.ng.call(
                {
                    "command": "offer",
                    "call-id": call_id,
                    "from-tag": "a",
                    "sdp": _sdp(phone_ports[2 * c], 0),
                    "ICE": "remove",
                    "replace": ["origin", "session-connection"],
                }
            )
            answer = await self.ng.call(
                {
                    "command": "answer",
                    "call-id": call_id,
                    "from-tag": "a",
                    "to-tag": "b",
                    "sdp": _sdp(phone_ports[2 * c + 1], codec_b),
                    "ICE": "remove",
                    "replace": ["origin", "session-connection"],
                }
            )
            # the offer's SDP goes to b (where b must send); the answer's to a
            dest += [_sdp_address(answer["sdp"]), _sdp_address(offer["sdp"])]
        return dest

    async def close(self) -> None:
        if self.ng is not None:
            self.ng.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


RTPENGINE = shutil.which("rtpengine") or "/usr/bin/rtpengine"
SUTS: dict[str, type[InlineSut] | type[WorkerSut] | type[RtpengineSut]] = {
    "inline": InlineSut,
    "worker": WorkerSut,
    "rtpengine": RtpengineSut,
}


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_point(backend: str, calls: int, plan: Plan) -> Figure:
    cpus = sorted(os.sched_getaffinity(0))
    pin = plan.pin and len(cpus) >= 2
    sut = SUTS[backend](plan, calls)
    if pin and backend != "inline":
        os.sched_setaffinity(0, {cpus[0]})  # this process sets calls up, then waits with the generator
    await sut.start(cpus[1] if pin else None)
    loop = asyncio.get_running_loop()
    gen: PyGenerator | CGenerator = CGenerator() if plan.generator == "c" else PyGenerator()
    try:
        phone_ports = await gen.start(2 * calls, plan.seconds, cpus[0] if pin else None)
        rss_idle = proc_rss_kib(sut.pid)
        t0 = time.perf_counter()
        dest = [] if plan.direct else await sut.setup(calls, phone_ports, plan)
        setup_s = time.perf_counter() - t0
        if plan.direct:  # baseline: the phones talk to each other, no relay in between
            dest = [("127.0.0.1", phone_ports[i ^ 1]) for i in range(2 * calls)]
        await gen.send_destinations(dest)
        # the relay's CPU over the generator's measured window (it starts 50 ms after this, then warms up)
        relay_cpu = cpus[1] if pin else None
        marks: list[tuple[float, float, int, tuple[float, float]]] = []
        window = (0.05 + WARMUP_S, 0.05 + WARMUP_S + plan.seconds)
        for at in window:
            loop.call_later(
                at,
                lambda: marks.append(
                    (sut.cpu_s(), time.monotonic(), proc_rss_kib(sut.pid), cpu_busy_s(relay_cpu))
                ),
            )
        result = await gen.result(plan.seconds + WARMUP_S + 10)
        (cpu_a, wall_a, _, busy_a), (cpu_b, wall_b, rss_calls, busy_b) = marks
        cpu, wall = cpu_b - cpu_a, wall_b - wall_a
        others = max(0.0, (busy_b[0] - busy_a[0]) - cpu) if relay_cpu is not None else float("nan")
        softirq = busy_b[1] - busy_a[1] if relay_cpu is not None else float("nan")
    finally:
        await gen.close()
        await sut.close()
        if pin:
            os.sched_setaffinity(0, set(cpus))
    sent, received = int(result["sent"]), int(result["received"])
    pps_in = 2 * calls / PTIME_S
    cpu_share = cpu / wall if wall > 0 else 0.0
    return Figure(
        backend=backend,
        calls=calls,
        seconds=plan.seconds,
        translate=plan.translate,
        packets_sent=sent,
        packets_received=received,
        loss_pct=100.0 * max(0, sent - received) / sent if sent else 0.0,
        pps_in=pps_in,
        delay_p50_ms=float(result["p50_ns"]) / 1e6,
        delay_p99_ms=float(result["p99_ns"]) / 1e6,
        delay_p999_ms=float(result["p999_ns"]) / 1e6,
        delay_max_ms=float(result["max_ns"]) / 1e6,
        jitter_ms=float(result["jitter_ns"]) / 1e6,
        relay_cpu_pct=100.0 * cpu_share,
        relay_cpu_us_per_packet=1e6 * cpu_share / pps_in,
        relay_rss_kib_per_call=(rss_calls - rss_idle) / calls,
        softirq_on_relay_cpu_pct=100.0 * softirq / wall if wall > 0 else 0.0,
        others_on_relay_cpu_pct=100.0 * others / wall if wall > 0 else 0.0,
        setup_ms_per_call=1e3 * setup_s / calls,
        generator_cpu_pct=100.0 * float(result["cpu_s"]) / plan.seconds,
        generator_late_p99_ms=float(result["late_p99_ns"]) / 1e6,
    )


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    rtpengine = ""
    if shutil.which("rtpengine"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["rtpengine", "--version"], capture_output=True, text=True, timeout=5)
            rtpengine = (out.stdout + out.stderr).strip().splitlines()[0]
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "worker_loop": loop,  # the bench's own (inline) loop is asyncio
        "rtpengine": rtpengine,
    }


def render(figs: list[Figure]) -> str:
    head = (
        f"{'backend':<9} {'calls':>5} {'pps in':>7} {'loss %':>7} {'p50 ms':>7} {'p99 ms':>7} {'p99.9':>7} "
        f"{'max ms':>7} {'jitter':>7} {'relay %':>8} {'µs/pkt':>7} {'KiB/call':>8} {'setup ms':>8} "
        f"{'gen %':>6} {'gen late':>8} {'softirq':>7} {'others':>6}"
    )
    rows = [head, "-" * len(head)]
    for f in figs:
        rows.append(
            f"{f.backend:<9} {f.calls:>5} {f.pps_in:>7.0f} {f.loss_pct:>7.3f} {f.delay_p50_ms:>7.2f} "
            f"{f.delay_p99_ms:>7.2f} {f.delay_p999_ms:>7.2f} {f.delay_max_ms:>7.2f} {f.jitter_ms:>7.3f} "
            f"{f.relay_cpu_pct:>8.1f} {f.relay_cpu_us_per_packet:>7.1f} {f.relay_rss_kib_per_call:>8.1f} "
            f"{f.setup_ms_per_call:>8.2f} {f.generator_cpu_pct:>6.1f} {f.generator_late_p99_ms:>8.2f} "
            f"{f.softirq_on_relay_cpu_pct:>7.1f} {f.others_on_relay_cpu_pct:>6.1f}"
        )
    return "\n".join(rows) + "\n"


def render_ratio(figs: list[Figure]) -> str:
    """worker : rtpengine in packets per CPU-second (above 1: the worker relays more per CPU-second)."""
    by = {(f.backend, f.calls): f for f in figs}
    rows = []
    for f in figs:
        ref = by.get(("rtpengine", f.calls))
        if f.backend != "worker" or ref is None or f.relay_cpu_us_per_packet <= 0:
            continue
        rows.append(
            f"{f.calls:>5} {f.relay_cpu_us_per_packet:>10.2f} {ref.relay_cpu_us_per_packet:>13.2f} "
            f"{ref.relay_cpu_us_per_packet / f.relay_cpu_us_per_packet:>22.2f}"
        )
    if not rows:
        return ""
    head = f"{'calls':>5} {'worker µs':>10} {'rtpengine µs':>13} {'worker:rtpengine pkt/CPU-s':>22}"
    return "\n".join([head, "-" * len(head), *rows]) + "\n"


def parse_args(argv: list[str] | None = None) -> tuple[Plan, Path]:
    p = argparse.ArgumentParser(prog="bench/media_bench.py", description=__doc__.split("\n", 1)[0])
    p.add_argument("--calls", default="300,500,700", help="comma-separated numbers of concurrent calls")
    p.add_argument("--seconds", type=float, default=8.0, help="measured length of each point (default 8)")
    p.add_argument("--backend", default="worker", help="comma-separated: worker, rtpengine, inline")
    p.add_argument(
        "--generator", choices=("c", "python"), default="c", help="bench/rtpgen.c (default) or the Python one"
    )
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
    backends = tuple(b.strip() for b in a.backend.split(",") if b.strip())
    if not backends or any(b not in SUTS for b in backends):
        p.error(f"--backend takes {', '.join(SUTS)}")
    if "rtpengine" in backends and not Path(RTPENGINE).exists():
        p.error("rtpengine is not installed (apt-get install -y rtpengine-daemon)")
    plan = Plan(calls, a.seconds, a.translate, a.ports, not a.no_pin, a.direct, backends, a.generator)
    return plan, a.out


async def main_async(plan: Plan, out: Path) -> list[Figure]:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    figs = []
    for n in plan.calls:
        for backend in plan.backends:
            figs.append(await run_point(backend, n, plan))
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
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    figs = asyncio.run(main_async(plan, out))
    m = machine()
    text = (
        f"Media relay benchmark {started}: {plan.seconds:g} s per point, G.711 20 ms, "
        f"{'A-law ↔ µ-law' if plan.translate else 'µ-law both legs'}; {m['cpus']} CPUs ({m['cpu_model']}), "
        f"pinned: {plan.pin and int(str(m['cpus'])) >= 2}; worker loop: {m['worker_loop']}; "
        f"rtpengine: {m['rtpengine'] or 'not installed'}\n"
        "delays include the generator's own cost; relay % and µs/pkt: the relay process's CPU; "
        "softirq, others: % of the relay's CPU in network softirq and in other processes (a shared box)\n"
    )
    text += render(figs)
    ratio = render_ratio(figs)
    if ratio:
        text += "\n" + ratio
    sys.stdout.write(text)
    if out == RESULTS:
        TEXT_RESULTS.write_text(text)
        sys.stdout.write(f"written to {TEXT_RESULTS}; ")
    sys.stdout.write(f"appended to {out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
