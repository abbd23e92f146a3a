"""Autoinformer benchmark (issue 9): a campaign of N numbers against SIPp recipients at concurrency C.

    python bench/ai_bench.py                              # 1000 numbers, L = 8 s, C = 12 (~11 min)
    python bench/ai_bench.py --numbers 100                # quick check (~70 s)
    python bench/ai_bench.py --numbers 200 --length 4 --concurrency 6 --no-write

``python -m vpbx serve`` on a temp SQLite file, provisioned in-process (tests/integration/peers/vpbx.py) with
the domain's IP trunk to a SIPp carrier on 127.0.0.2 (the recipients: 180, 200, then after ``--length`` s
they send the BYE), the autoinformer service on, a running campaign (TTS message, one attempt, DTMF wait
30 s so the recipient ends every call, concurrency C) and N contacts. The domain's time zone is one where it
is about noon, so quiet hours never hold it back; the channel limit and the trunk's max_calls are 2·C + 2.

Figures (all from the database and SIPp's message log after the run, so measuring costs the server nothing):
- campaign time: first claim (``AiCampaign.first_attempt_at``) → the last attempt ended; and → ``completed``
  as seen by polling (0.5 s); next to the physical bound N·L/C (ratio = bound / measured; issue floor 0.95)
  and the pacing bound (N-1)/2 + L (the dispatcher starts at most 2 attempts a second per campaign);
- ramp: first claim → C calls answered and up at once;
- dial latency: the attempt's claim time (``AiAttempt.started_at``, the tick's clock) → the INVITE's
  arrival at SIPp (its -trace_msg time stamp, same wall clock), p50/p99;
- CPU: Δ(utime + stime) of ``vpbx serve``, its live descendants (the media workers) and its reaped children
  (espeak-ng, ffmpeg: cutime + cstime) from /proc over the campaign, per call and per concurrent call
  (the CPU-seconds per second of campaign divided by C).
Results: stdout and ``bench/results/ai-latest.txt``; the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "ai-latest.txt"
LINE = "74951234567"
CAMPAIGN_CPS = 2
POLL_S = 0.5
START_SLACK_S = 120.0  # beyond 2× the pacing/physical bound, before the run is abandoned


def _utc(t: dt.datetime | None) -> dt.datetime | None:
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=dt.UTC))


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime of pid and its live descendants, cutime + cstime of pid) in clock ticks."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()  # fields from 3 (state) on
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    own, stack = 0, [pid]
    while stack:
        p = stack.pop()
        if p in stats:
            own += int(stats[p][11]) + int(stats[p][12])
        stack.extend(children.get(p, []))
    reaped = int(stats[pid][13]) + int(stats[pid][14]) if pid in stats else 0
    return own, reaped


def _invite_times(log: str) -> dict[str, float]:
    """Call-ID → epoch time of the first INVITE SIPp received with it."""
    out: dict[str, float] = {}
    for m in re.finditer(r"-{10,} ([^\n]*)\n(?:UDP|TCP) message received[^\n]*\n\s*\nINVITE sip:", log):
        head = m.group(1)
        epoch = re.search(r"(\d{9,}\.\d+)", head)
        if epoch:
            when = float(epoch.group(1))
        else:
            stamp = re.search(r"(\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d(?:\.\d+)?)", head)
            if not stamp:
                continue
            when = dt.datetime.fromisoformat(f"{stamp.group(1)} {stamp.group(2)}").astimezone().timestamp()
        rest = log[m.end() : m.end() + 4000]
        call_id = re.search(r"^Call-ID:\s*(\S+)", rest, re.M | re.I)
        if call_id:
            out.setdefault(call_id.group(1), when)
    return out


def schedule_bound(numbers: int, length_s: float, concurrency: int) -> float:
    """The best finish with pacing: slot i opens at i/2 s (2 attempts/s) and runs its share of whole
    calls of L back to back (the first N mod C slots one call more)."""
    per, extra = divmod(numbers, concurrency)
    return max(
        i / CAMPAIGN_CPS + (per + (1 if i < extra else 0)) * length_s
        for i in range(min(concurrency, numbers))
    )


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def run(numbers: int, length_s: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import AsyncSession

    from tests.autoinformer.campaign_kit import (
        Stand,
        add_campaign,
        carrier,
        open_domain,
        recipient_scenario,
        running_spec,
    )
    from tests.integration.peers.net import free_port_block, wait_until
    from tests.integration.peers.process import require_binary
    from tests.integration.peers.sipp import SippProcess
    from tests.integration.test_history import serve
    from tests.integration.test_outbound_calls import carrier_trunk
    from vpbx import store
    from vpbx.app import Core
    from vpbx.store.models import AiAttempt, AiCampaign

    for program in ("sipp", "espeak-ng"):
        require_binary(program)
    physical = numbers * length_s / concurrency
    pacing = (numbers - 1) / CAMPAIGN_CPS + length_s  # from the first claim to the last call's end
    schedule = schedule_bound(numbers, length_s, concurrency)
    limit_s = 2 * max(physical, pacing) + START_SLACK_S
    port = free_port_block(1)
    stand = Stand.make(tmp)
    settings = stand.settings
    trunk = carrier_trunk(port)
    lines = 2 * concurrency + 2
    campaign_id = uuid.uuid4()

    async def setup(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
        await open_domain(s, core, domain_id, trunk, max_calls=lines)
        spec = running_spec(
            "Bench",
            attempts={"max": 1, "interval_min": 30},
            concurrency=concurrency,
            dtmf={"wait_s": 30},  # the recipient hangs up first
        )
        phones = (f"7916{row:07d}" for row in range(numbers))
        await add_campaign(s, domain_id, spec, phones, campaign_id=campaign_id)

    await stand.provision(setup, channel_limit=lines)
    scenario = tmp / "ai_recipient.xml"
    scenario.write_text(recipient_scenario(hangup_after_ms=round(length_s * 1000)))
    sipp = carrier(scenario, port, timeout_s=limit_s + 300, calls=10_000_000)
    engine = store.create_engine(settings.database_url)
    sessions = store.session_factory(engine)
    try:
        async with SippProcess.running(sipp, tmp) as far_end:
            await far_end.wait_listening()
            async with serve(stand.workdir, stand.data, stand.env, "bench") as (_service, proc):
                ticks0 = _cpu_ticks(proc.pid)
                mono0 = time.monotonic()
                completed_at: dt.datetime | None = None

                async def done() -> bool:
                    nonlocal completed_at
                    async with sessions() as s:
                        status = await s.scalar(select(AiCampaign.status).where(AiCampaign.id == campaign_id))
                    if status == "completed":
                        completed_at = dt.datetime.now(dt.UTC)
                        return True
                    return False

                await wait_until(done, timeout_s=limit_s, interval_s=POLL_S, what="campaign completed")
                ticks1 = _cpu_ticks(proc.pid)
                wall_cpu = time.monotonic() - mono0
                await far_end.proc.stop(sig=signal.SIGUSR1, timeout_s=120)
        async with sessions() as s:
            campaign = await s.get(AiCampaign, campaign_id)
            assert campaign is not None
            first = _utc(campaign.first_attempt_at)
            attempts = list(
                (await s.scalars(select(AiAttempt).where(AiAttempt.campaign_id == campaign_id))).all()
            )
    finally:
        await engine.dispose()
    invites = _invite_times((far_end.workdir / "messages.log").read_text(errors="replace"))
    assert first is not None and completed_at is not None
    ends = [_utc(a.ended_at) for a in attempts if a.ended_at is not None]
    last_end = max(e for e in ends if e is not None)
    measured = (last_end - first).total_seconds()
    to_completed = (completed_at - first).total_seconds()
    # ramp: the first moment C answered calls are up together
    edges: list[tuple[float, int]] = []
    for a in attempts:
        up, down = _utc(a.answered_at), _utc(a.ended_at)
        if up is not None and down is not None:
            edges += [((up - first).total_seconds(), 1), ((down - first).total_seconds(), -1)]
    level, peak, ramp = 0, 0, None
    for t, d in sorted(edges, key=lambda e: (e[0], e[1])):
        level += d
        peak = max(peak, level)
        if ramp is None and level >= concurrency:
            ramp = t
    latency = []
    for a in attempts:
        start = _utc(a.started_at)
        if start is not None and a.call_id in invites:
            latency.append(invites[a.call_id] - start.timestamp())
    outcomes: dict[str, int] = {}
    for a in attempts:
        outcomes[str(a.outcome)] = outcomes.get(str(a.outcome), 0) + 1
    hz = os.sysconf("SC_CLK_TCK")
    cpu_s = ((ticks1[0] - ticks0[0]) + (ticks1[1] - ticks0[1])) / hz
    return {
        "numbers": numbers,
        "length_s": length_s,
        "concurrency": concurrency,
        "attempts": len(attempts),
        "invites_at_sipp": len(invites),
        "outcomes": outcomes,
        "physical_bound_s": physical,
        "pacing_bound_s": pacing,
        "measured_s": measured,
        "to_completed_s": to_completed,
        "ratio": physical / measured if measured > 0 else float("nan"),
        "ratio_to_max_bound": max(physical, pacing) / measured if measured > 0 else float("nan"),
        "schedule_bound_s": schedule,
        "ratio_to_schedule": schedule / measured if measured > 0 else float("nan"),
        "overhead_per_cycle_ms": (measured - schedule) / -(-numbers // concurrency) * 1000,
        "ramp_s": ramp,
        "peak_up": peak,
        "latency_p50_ms": _pct(latency, 0.5) * 1000,
        "latency_p99_ms": _pct(latency, 0.99) * 1000,
        "latency_max_ms": _pct(latency, 1.0) * 1000,
        "cpu_s": cpu_s,
        "cpu_wall_s": wall_cpu,
        "cpu_ms_per_call": cpu_s / max(1, len(attempts)) * 1000,
        "cpu_pct_per_concurrent_call": cpu_s / wall_cpu / concurrency * 100 if wall_cpu > 0 else float("nan"),
    }


def report(r: dict[str, Any]) -> str:
    n, c, length = r["numbers"], r["concurrency"], r["length_s"]
    out = [
        f"## autoinformer campaign: N={n} numbers, L={length:g} s, C={c}",
        f"attempts {r['attempts']}, INVITEs at SIPp {r['invites_at_sipp']}, outcomes {r['outcomes']}",
        f"physical bound N·L/C       {r['physical_bound_s']:8.1f} s",
        f"pacing bound (N-1)/2 + L   {r['pacing_bound_s']:8.1f} s   (2 new attempts/s per campaign)",
        f"measured 1st claim → last end {r['measured_s']:8.1f} s"
        f"   (→ completed seen {r['to_completed_s']:.1f} s)",
        f"schedule bound             {r['schedule_bound_s']:8.1f} s   (C slots opened 1/2 s apart, "
        f"whole calls of L per slot: ⌈N/C⌉·L + ramp)",
        f"ratio bound / measured     {r['ratio']:8.3f}     (issue floor 0.95; against max(bounds): "
        f"{r['ratio_to_max_bound']:.3f})",
        f"ratio schedule bound / measured {r['ratio_to_schedule']:.3f}: "
        f"{r['overhead_per_cycle_ms']:.0f} ms lost per call cycle of a slot (end → next claim → answer)",
        f"ramp to {c} calls up        {r['ramp_s'] if r['ramp_s'] is None else round(r['ramp_s'], 2)} s "
        f"(peak {r['peak_up']} up at once)",
        f"dial latency claim → INVITE at SIPp: p50 {r['latency_p50_ms']:.0f} ms, "
        f"p99 {r['latency_p99_ms']:.0f} ms, max {r['latency_max_ms']:.0f} ms",
        f"CPU of vpbx serve + media workers + reaped children: {r['cpu_s']:.1f} s "
        f"over {r['cpu_wall_s']:.0f} s; "
        f"{r['cpu_ms_per_call']:.1f} ms per call; {r['cpu_pct_per_concurrent_call']:.2f} % of a core per "
        "concurrent call",
    ]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--numbers", type=int, default=1000)
    ap.add_argument("--length", type=float, default=8.0, help="call length L in seconds (≤ 25)")
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/ai-latest.txt")
    ap.add_argument(
        "--append", action="store_true", help="append to the results file instead of replacing it"
    )
    args = ap.parse_args()
    if not 1 <= args.numbers <= 100_000 or not 0.5 <= args.length <= 25 or not 1 <= args.concurrency <= 200:
        ap.error("numbers 1–100000, length 0.5–25 s, concurrency 1–200")
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="ai-bench-") as tmp:
        r = asyncio.run(run(args.numbers, args.length, args.concurrency, Path(tmp)))
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg()))
    text = "\n".join(
        [
            f"# {started:%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
            f"python {platform.python_version()}",
            report(r),
            f"# machine load (1/5/15-min load average): before {before}, after {after}",
            "",
        ]
    )
    print(text, end="")  # noqa: T201
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a" if args.append else "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
