"""Recording benchmark (telephony.md §3.10, §8.2): a long call's MP3 encode; recording's cost on the relay.

    python bench/recording_bench.py                         # 1-hour encode; relay at 100 and 200 calls, 5 s
    python bench/recording_bench.py --hours 2 --calls 300 --seconds 8
    python bench/recording_bench.py --skip-relay            # the encode only

1. **Encode.** A stereo 8 kHz s16 WAV of ``--hours`` (a 440 Hz tone left, 1000 Hz right, as the relay writes
   a call) is encoded by ``vpbx.media.recorder.Mp3Encoder`` (one process of the pool, as in ``vpbx serve``):
   wall time from the job's submission to the renamed MP3, the job's CPU, and the MP3's size. The contract is
   an MP3 ready within 60 s of ``end`` for calls up to 2 h; this is the figure that says whether a long call
   could miss it (if so, encode incrementally during the call).
2. **Capture.** The per-packet core (``vpbx.media.capture.Capture.feed``) alone, in this process: CPU per
   packet, the figure that does not depend on the neighbours of a shared box.
3. **Relay.** ``bench/media_bench.py``'s method (the C generator plays 2N phones, one worker process relays,
   pinned to separate CPUs where there are two) at each ``--calls`` point, first without recording
   (``worker``), then with every call recorded to a stereo WAV (``worker+rec``: ``record_start`` for each
   session after its set-up). The worker's CPU per packet in both, and their ratio, is recording's cost.

Results: printed, written to ``bench/results/recording-latest.txt``; one JSON line per figure appended to
``bench/results/recording-latest.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import tempfile
import time
import uuid
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import media_bench  # noqa: E402

from vpbx.media.capture import Capture, interleave  # noqa: E402
from vpbx.media.recorder import MP3_BITRATE_KBPS, Mp3Encoder, encode_mp3, mp3_duration  # noqa: E402
from vpbx.pbx.bus import SessionId  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "recording-latest.jsonl"
TEXT_RESULTS = ROOT / "bench" / "results" / "recording-latest.txt"
RATE = 8000
CONTRACT_S = 60.0


@dataclass(frozen=True, slots=True)
class EncodeFigure:
    hours: float
    wav_mib: float
    mp3_kib: float
    mp3_seconds: float
    write_wav_s: float
    encode_wall_s: float  # submission to the pool → MP3 renamed (what a call's end waits for)
    encode_cpu_s: float  # the same encode in this process, CPU time (the pool worker's cost)
    realtime_factor: float  # audio seconds per wall second


def write_call_wav(path: Path, hours: float) -> float:
    """A stereo recording of ``hours``: 440 Hz on the left, 1000 Hz on the right, one minute repeated."""
    t0 = time.perf_counter()
    minute = 60 * RATE

    def tone(hz: int) -> bytes:
        return b"".join(
            int(8000 * math.sin(2 * math.pi * hz * i / RATE)).to_bytes(2, "little", signed=True)
            for i in range(minute)
        )

    block = interleave(tone(440), tone(1000))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        for _ in range(round(hours * 60)):
            w.writeframesraw(block)
    return time.perf_counter() - t0


async def bench_encode(hours: float, tmp: Path) -> EncodeFigure:
    wav, mp3 = tmp / "call.wav", tmp / "call.mp3"
    write_s = write_call_wav(wav, hours)
    encoder = Mp3Encoder(workers=1, timeout_s=600.0)
    try:
        warm = tmp / "warm.wav"
        with wave.open(str(warm), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(bytes(4 * RATE))
        await encoder.encode(warm, tmp / "warm.mp3")  # the pool's start-up is not the encode's cost
        t0 = time.perf_counter()
        seconds = await encoder.encode(wav, mp3)
        wall = time.perf_counter() - t0
    finally:
        await encoder.aclose()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    encode_mp3(wav, tmp / "again.mp3")
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    data = mp3.read_bytes()
    return EncodeFigure(
        hours=hours,
        wav_mib=wav.stat().st_size / 2**20,
        mp3_kib=len(data) / 1024,
        mp3_seconds=mp3_duration(data),
        write_wav_s=write_s,
        encode_wall_s=wall,
        encode_cpu_s=cpu,
        realtime_factor=seconds / wall if wall > 0 else 0.0,
    )


def bench_capture(packets: int = 200_000) -> float:
    """CPU µs per packet of the capture core alone (decode, place, mix, chunk): both legs of one call."""
    cap = Capture(Path("unused.wav"), start=0.0)
    payload = memoryview(bytes(range(160)))
    t0 = time.process_time()
    for i in range(packets):
        cap.feed("a" if i & 1 else "b", payload, 8, (i >> 1) * 160, 0x1234, (i >> 1) * 0.02)
        if cap.chunks:
            cap.take_chunks()
    return 1e6 * (time.process_time() - t0) / packets


class RecordingWorkerSut(media_bench.WorkerSut):
    """The ``worker`` system under test with every call recorded to a stereo WAV in a temporary directory."""

    name = "worker+rec"

    def __init__(self, plan: media_bench.Plan, calls: int) -> None:
        super().__init__(plan, calls)
        self._dir = tempfile.TemporaryDirectory(prefix="vpbx-rec-bench-")

    async def setup(
        self, calls: int, phone_ports: list[int], plan: media_bench.Plan
    ) -> list[tuple[str, int]]:
        dest = await super().setup(calls, phone_ports, plan)
        for session in list(self.backend._where):
            path = Path(self._dir.name) / f"{uuid.uuid4().hex}.wav"
            await self.backend.record_start(SessionId(session), path)
        return dest

    async def close(self) -> None:
        await super().close()
        self._dir.cleanup()


media_bench.SUTS["worker+rec"] = RecordingWorkerSut  # type: ignore[assignment]


def render_encode(f: EncodeFigure) -> str:
    verdict = "holds" if f.encode_wall_s < CONTRACT_S else "MISSED"
    return (
        f"encode of a {f.hours:g} h stereo call ({f.wav_mib:.0f} MiB WAV) to mono {MP3_BITRATE_KBPS} kbit/s: "
        f"{f.encode_wall_s:.1f} s wall in the pool ({f.encode_cpu_s:.1f} s CPU), "
        f"{f.realtime_factor:.0f}× real time; MP3 {f.mp3_kib:.0f} KiB, {f.mp3_seconds / 3600:.3f} h. "
        f"60 s contract: {verdict}\n"
    )


def render_relay(figs: list[media_bench.Figure]) -> str:
    text = media_bench.render(figs)
    by = {(f.backend, f.calls): f for f in figs}
    rows = []
    for f in figs:
        base = by.get(("worker", f.calls))
        if f.backend != "worker+rec" or base is None or base.relay_cpu_us_per_packet <= 0:
            continue
        rows.append(
            f"{f.calls:>5} {base.relay_cpu_us_per_packet:>10.2f} {f.relay_cpu_us_per_packet:>10.2f} "
            f"{f.relay_cpu_us_per_packet / base.relay_cpu_us_per_packet:>12.2f} "
            f"{base.pps_in / base.relay_cpu_pct * 100 if base.relay_cpu_pct else 0:>14.0f} "
            f"{f.pps_in / f.relay_cpu_pct * 100 if f.relay_cpu_pct else 0:>14.0f}"
        )
    if rows:
        head = (
            f"{'calls':>5} {'plain µs':>10} {'rec µs':>10} {'rec : plain':>12} "
            f"{'plain pkt/CPU-s':>14} {'rec pkt/CPU-s':>14}"
        )
        text += "\n" + "\n".join([head, "-" * len(head), *rows]) + "\n"
    return text


async def main_async(args: argparse.Namespace) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    box = media_bench.machine()
    meta = {"bench": "recording", "run_id": uuid.uuid4().hex[:8], "started": started, "machine": box}
    lines: list[dict[str, object]] = []
    text = f"Recording benchmark {started}; {box['cpus']} CPUs ({box['cpu_model']})\n"
    with tempfile.TemporaryDirectory(prefix="vpbx-enc-bench-") as tmp:
        enc = await bench_encode(args.hours, Path(tmp))
    lines.append({**meta, "measure": "encode", **asdict(enc)})
    text += render_encode(enc)
    capture_us = bench_capture()
    lines.append({**meta, "measure": "capture", "cpu_us_per_packet": capture_us})
    text += f"capture core alone (decode, place, mix, 64 KiB chunks): {capture_us:.2f} µs CPU per packet\n"
    if not args.skip_relay:
        plan = media_bench.Plan(
            calls=args.calls,
            seconds=args.seconds,
            translate=False,
            port_first=args.ports,
            pin=True,
            backends=("worker", "worker+rec"),
        )
        figs = []
        for n in plan.calls:
            for backend in plan.backends:
                figs.append(await media_bench.run_point(backend, n, plan))
        for fig in figs:
            lines.append({**meta, "measure": "relay", **asdict(fig)})
        text += (
            f"\nrelay with and without recording: one worker process, {args.seconds:g} s per point, "
            "µ-law both legs; relay % and µs/pkt: the worker's CPU\n"
        )
        text += render_relay(figs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/recording_bench.py", description=__doc__.split("\n", 1)[0])
    p.add_argument("--hours", type=float, default=1.0, help="length of the encoded call (default 1)")
    p.add_argument("--calls", default="100,200", help="comma-separated concurrent calls for the relay points")
    p.add_argument("--seconds", type=float, default=5.0, help="measured length of each relay point")
    p.add_argument("--ports", type=int, default=31000, help="first RTP port of the relay's range")
    p.add_argument("--skip-relay", action="store_true", help="only the encode")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON lines are appended here")
    args = p.parse_args(argv)
    args.calls = tuple(int(x) for x in args.calls.split(",") if x.strip())
    if (
        not 0.01 <= args.hours <= 4
        or not args.calls
        or max(args.calls) > 500
        or not 0.5 <= args.seconds <= 60
    ):
        p.error("--hours 0.01..4, --calls 1..500 per point, --seconds 0.5..60")
    text = asyncio.run(main_async(args))
    sys.stdout.write(text)
    if args.out == RESULTS:
        TEXT_RESULTS.write_text(text)
        sys.stdout.write(f"written to {TEXT_RESULTS}; ")
    sys.stdout.write(f"appended to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
