"""SIP benchmark: vpbx against Kamailio on the same machine, in the same run (telephony.md §8.3).

Two figures per server, each for a bounded time at a fixed offered rate, with SIPp as the load:

* ``register``: digest REGISTER (REGISTER, 401, REGISTER with credentials, 200) from ``reg_digest.xml``
  over a table of users;
* ``call``: call set-up and tear-down through the server, SIPp UAC → server → SIPp UAS
  (INVITE, 100, 180, 200, ACK, BYE, 200 on each side) from ``uac_call.xml`` and ``uas_answer.xml``;
  the UAS is bound to an extension with a REGISTER first, so the server routes by its location table.

The server's CPU time is the utime + stime of all its processes (Kamailio forks workers) read from
/proc/<pid>/stat before and after each run, so every figure can be put per CPU-second: operations per
CPU-second are comparable across servers even when the offered rate is below what either can do. With two
or more CPUs the server is pinned to CPU 1 and SIPp to CPU 0 (``taskset``).

Kamailio is configured by the harness (tests/integration/peers/kamailio.py): registrar with digest auth
against in-memory users, in-memory usrloc, stateful proxy with Record-Route, one worker, 1 GiB of shared
memory. Every load loop is bounded in calls (``-m``) and time (``-timeout``) and stays on 127.0.0.1.

Results are printed as a table (also written to bench/results/latest.txt) and appended as JSON lines to
bench/results/latest.jsonl, with the machine described.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.integration.peers import sipsak  # noqa: E402
from tests.integration.peers.kamailio import Kamailio  # noqa: E402
from tests.integration.peers.net import LOOPBACK  # noqa: E402
from tests.integration.peers.process import PeerProcess, rss_bytes  # noqa: E402
from tests.integration.peers.service import SipService  # noqa: E402
from tests.integration.peers.sipp import SippProcess, SippResult, SippRun, run_sipp, write_users_csv  # noqa: E402
from tests.integration.peers.vpbx import Vpbx  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "latest.jsonl"
DOMAIN = "bench.test"
CALLEE = "1000"  # the SIPp UAS registers as this extension
CALLER = "1001"
FIRST_USER = 2000  # registration load uses extensions 2000, 2001, …
SIPP_SLACK_S = 30.0  # -timeout beyond the planned duration
SHM_MB = 1024  # telephony.md §7.5: -m 256 ran out near 2,000 CPS
IDLE_S = 2.0
HELD_RATE = 100.0  # calls per second while setting up the held calls
HELD_SETTLE_S = 2.0  # after the last call is set up, before sampling memory
MAX_CHANNELS = 10_000


# -- the servers ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Target:
    """A running server under test."""

    name: str
    service: SipService
    proc: PeerProcess
    invite_auth: bool

    def cpu_s(self) -> float:
        return self.proc.cpu().cpu_s

    def rss(self) -> int:
        return rss_bytes(self.proc.cpu().pids)


def bench_users(count: int) -> dict[str, str]:
    users = {f"{FIRST_USER + i}": f"bench-{FIRST_USER + i}-pw" for i in range(count)}
    users[CALLEE] = "bench-callee-pw"
    users[CALLER] = "bench-caller-pw"
    return users


@contextlib.asynccontextmanager
async def kamailio_target(
    workdir: Path, users: Mapping[str, str], *, call_auth: bool, pin: Sequence[str]
) -> AsyncIterator[Target]:
    async with Kamailio.running(
        workdir / "kamailio",
        users=users,
        domains=(DOMAIN,),
        children=1,
        invite_auth=call_auth,
        shm_mb=SHM_MB,
        argv_prefix=pin,
    ) as kamailio:
        yield Target("kamailio", kamailio.service, kamailio.proc, call_auth)


@contextlib.asynccontextmanager
async def vpbx_target(
    workdir: Path, users: Mapping[str, str], *, call_auth: bool, pin: Sequence[str]
) -> AsyncIterator[Target]:
    """vpbx as the server under test: provisioned in-process, then ``python -m vpbx serve`` on loopback.

    Loopback is on vpbx's SIP allowlist here, as a trunk or an office network would be: the load comes from
    one address at rates far above the flood limit that protects a real server (Kamailio has none).
    """
    async with Vpbx.running(
        workdir / "vpbx",
        users=users,
        domain=DOMAIN,
        env={"VPBX_SIP_ALLOWLIST": '["127.0.0.0/8"]'},
        argv_prefix=pin,
        channel_limit=MAX_CHANNELS,  # the load, not an admission cap, decides
    ) as vpbx:
        yield Target("vpbx", vpbx.service, vpbx.proc, call_auth)


TARGETS = {"kamailio": kamailio_target, "vpbx": vpbx_target}


# -- the measures -----------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class Figure:
    target: str
    measure: str  # "register" or "call"
    status: str = "ok"  # "ok" | "unavailable" | "failed"
    note: str = ""
    offered_rate: float = 0.0
    seconds: float = 0.0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    elapsed_s: float = 0.0
    achieved_rate: float = 0.0
    server_cpu_s: float = 0.0
    server_cpu_pct: float = 0.0
    idle_cpu_pct: float = 0.0
    cpu_us_per_op: float = 0.0
    ops_per_cpu_s: float = 0.0
    memory_per_op_kib: float = 0.0  # "held": RSS growth per held call
    extra: dict[str, object] = field(default_factory=dict)


def figure_from(
    target: Target, measure: str, rate: float, seconds: float, result: SippResult, cpu_s: float
) -> Figure:
    s = result.stats
    wall = result.wall_s
    ok = s.successful_calls
    return Figure(
        target=target.name,
        measure=measure,
        status="ok" if s.failed_calls == 0 and result.returncode == 0 else "failed",
        note="" if result.returncode == 0 else f"sipp exit {result.returncode}",
        offered_rate=rate,
        seconds=seconds,
        successful=ok,
        failed=s.failed_calls,
        retransmissions=s.retransmissions,
        elapsed_s=round(s.elapsed_s, 3),
        achieved_rate=round(ok / s.elapsed_s, 1) if s.elapsed_s else 0.0,
        server_cpu_s=round(cpu_s, 3),
        server_cpu_pct=round(100 * cpu_s / wall, 1) if wall else 0.0,
        cpu_us_per_op=round(1e6 * cpu_s / ok, 1) if ok else 0.0,
        ops_per_cpu_s=round(ok / cpu_s, 1) if cpu_s else 0.0,
        extra={"invite_auth": target.invite_auth} if measure == "call" else {},
    )


async def measure_register(
    target: Target,
    workdir: Path,
    users: Mapping[str, str],
    *,
    rate: float,
    seconds: float,
    pin: Sequence[str],
) -> Figure:
    load_users = {u: p for u, p in users.items() if u not in (CALLEE, CALLER)}
    csv = write_users_csv(workdir / "users.csv", load_users)
    run = SippRun(
        scenario="reg_digest",
        remote=(target.service.host, target.service.port),
        calls=max(1, int(rate * seconds)),
        rate=rate,
        limit=max(10, int(rate)),
        timeout_s=seconds + SIPP_SLACK_S,
        inf=csv,
        keys={"domain": target.service.domain, "expires": "3600"},
        auth_uri=target.service.domain,
        argv_prefix=pin,
    )
    before = target.cpu_s()
    result = await run_sipp(run, workdir / "register")
    return figure_from(target, "register", rate, seconds, result, target.cpu_s() - before)


async def measure_calls(
    target: Target,
    workdir: Path,
    users: Mapping[str, str],
    *,
    rate: float,
    seconds: float,
    pin: Sequence[str],
) -> Figure:
    calls = max(1, int(rate * seconds))
    uas = await start_callee(
        target, users, workdir / "call", calls=calls, rate=rate, timeout_s=seconds + 2 * SIPP_SLACK_S, pin=pin
    )
    if uas is None:
        return Figure(target=target.name, measure="call", status="failed", note="callee did not register")
    try:
        run = SippRun(
            scenario="uac_call",
            remote=(target.service.host, target.service.port),
            service=CALLEE,
            calls=calls,
            rate=rate,
            limit=max(10, int(3 * rate)),
            timeout_s=seconds + SIPP_SLACK_S,
            keys={"domain": target.service.domain, "caller": CALLER},
            auth_user=CALLER,
            auth_password=users[CALLER],
            auth_uri=f"{CALLEE}@{target.service.domain}",
            duration_ms=0,
            argv_prefix=pin,
        )
        before = target.cpu_s()
        result = await run_sipp(run, workdir / "call")
        cpu = target.cpu_s() - before
    finally:
        answered = await uas.stop()
        await unbind(target, users, uas.port)
    fig = figure_from(target, "call", rate, seconds, result, cpu)
    fig.extra["callee_successful"] = answered.stats.successful_calls
    return fig


async def start_callee(
    target: Target,
    users: Mapping[str, str],
    workdir: Path,
    *,
    calls: int,
    rate: float,
    timeout_s: float,
    pin: Sequence[str],
) -> SippProcess | None:
    """A SIPp UAS that answers, bound to extension ``CALLEE``; None (and stopped) if it could not register."""
    uas = await SippProcess.start(
        SippRun(scenario="uas_answer", calls=calls, rate=rate, timeout_s=timeout_s, argv_prefix=pin), workdir
    )
    await uas.wait_listening()
    bound = await sipsak.register(
        target.service.host,
        target.service.port,
        CALLEE,
        users[CALLEE],
        contact=f"sip:{CALLEE}@{LOOPBACK}:{uas.port}",
        expires_s=3600,
    )
    if not bound.ok:
        await uas.stop()
        return None
    return uas


async def unbind(target: Target, users: Mapping[str, str], port: int) -> None:
    """Remove the callee's binding to a SIPp UAS that has stopped (the next measure binds its own)."""
    await sipsak.register(
        target.service.host,
        target.service.port,
        CALLEE,
        users[CALLEE],
        contact=f"sip:{CALLEE}@{LOOPBACK}:{port}",
        expires_s=0,
    )


async def measure_held(
    target: Target,
    workdir: Path,
    users: Mapping[str, str],
    *,
    calls: int,
    hold_s: float,
    pin: Sequence[str],
) -> Figure:
    """Memory per held call: RSS of all the server's processes with ``calls`` answered calls up, minus
    before. vpbx keeps both legs, the dialog and a relay (two RTP/RTCP socket pairs) per call; Kamailio as
    configured here (tm + rr, no dialog module) keeps no state once an INVITE transaction has ended."""
    rate = HELD_RATE
    setup_s = calls / rate
    uas = await start_callee(
        target,
        users,
        workdir / "held",
        calls=calls,
        rate=rate,
        timeout_s=setup_s + hold_s + 2 * SIPP_SLACK_S,
        pin=pin,
    )
    if uas is None:
        return Figure(target=target.name, measure="held", status="failed", note="callee did not register")
    try:
        before = target.rss()
        uac = await SippProcess.start(
            SippRun(
                scenario="uac_call",
                remote=(target.service.host, target.service.port),
                service=CALLEE,
                calls=calls,
                rate=rate,
                limit=calls,
                timeout_s=setup_s + hold_s + SIPP_SLACK_S,
                keys={"domain": target.service.domain, "caller": CALLER},
                auth_user=CALLER,
                auth_password=users[CALLER],
                auth_uri=f"{CALLEE}@{target.service.domain}",
                duration_ms=int(hold_s * 1000),
                argv_prefix=pin,
            ),
            workdir / "held",
        )
        await asyncio.sleep(setup_s + HELD_SETTLE_S)  # every call is up and held now: sample the memory
        during = target.rss()
        result = await uac.wait()
    finally:
        await uas.stop()
        await unbind(target, users, uas.port)
    s = result.stats
    return Figure(
        target=target.name,
        measure="held",
        status="ok" if s.failed_calls == 0 and result.returncode == 0 else "failed",
        note="" if result.returncode == 0 else f"sipp exit {result.returncode}",
        offered_rate=rate,
        successful=s.successful_calls,
        failed=s.failed_calls,
        memory_per_op_kib=round((during - before) / 1024 / calls, 1),
        extra={"calls": calls, "hold_s": hold_s, "rss_before": before, "rss_held": during},
    )


async def measure_idle(target: Target) -> float:
    """CPU % of the server doing nothing (its timers), to read the loaded figures against."""
    before, start = target.cpu_s(), time.monotonic()
    await asyncio.sleep(IDLE_S)  # a benchmark measuring idleness, not a test waiting for something
    return round(100 * (target.cpu_s() - before) / (time.monotonic() - start), 1)


# -- one run ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    targets: tuple[str, ...]
    seconds: float
    reg_rate: float
    call_rate: float
    users: int
    runs: int
    call_auth: bool
    pin: bool
    held_calls: int = 0


def pinning(plan: Plan) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """taskset prefixes (server, load): CPU 1 for the server, CPU 0 for SIPp, when there are two CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if not plan.pin or len(cpus) < 2 or shutil.which("taskset") is None:
        return (), ()
    return ("taskset", "-c", str(cpus[1])), ("taskset", "-c", str(cpus[0]))


async def bench_target(name: str, plan: Plan, workdir: Path) -> list[Figure]:
    users = bench_users(plan.users)
    server_pin, load_pin = pinning(plan)
    figures: list[Figure] = []
    async with TARGETS[name](workdir / name, users, call_auth=plan.call_auth, pin=server_pin) as target:
        idle_pct = await measure_idle(target)
        figures.append(
            await measure_register(
                target, workdir / name, users, rate=plan.reg_rate, seconds=plan.seconds, pin=load_pin
            )
        )
        figures.append(
            await measure_calls(
                target, workdir / name, users, rate=plan.call_rate, seconds=plan.seconds, pin=load_pin
            )
        )
        if plan.held_calls:
            figures.append(
                await measure_held(
                    target,
                    workdir / name,
                    users,
                    calls=plan.held_calls,
                    hold_s=plan.held_calls / HELD_RATE + 2 * HELD_SETTLE_S,
                    pin=load_pin,
                )
            )
    for fig in figures:
        fig.idle_cpu_pct = idle_pct
    return figures


def _version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "kamailio": _version(["kamailio", "-v"]),
        "sipp": _version(["sipp", "-v"]),
        "commit": commit,
    }


def median_figure(figs: Sequence[Figure]) -> Figure:
    """The run with the median CPU per operation (so its figures stay consistent with each other)."""
    ok = [f for f in figs if f.status == "ok"] or list(figs)
    ranked = sorted(ok, key=lambda f: (f.cpu_us_per_op, f.memory_per_op_kib))
    return ranked[(len(ranked) - 1) // 2]


# -- output -----------------------------------------------------------------------------------------------

ROWS = (
    ("offered /s", "offered_rate", "{:.0f}"),
    ("achieved /s", "achieved_rate", "{:.0f}"),
    ("ok / failed", None, ""),
    ("retransmissions", "retransmissions", "{:d}"),
    ("server CPU %", "server_cpu_pct", "{:.1f}"),
    ("idle CPU %", "idle_cpu_pct", "{:.1f}"),
    ("CPU µs per op", "cpu_us_per_op", "{:.1f}"),
    ("ops per CPU-s", "ops_per_cpu_s", "{:.0f}"),
)


HELD_ROWS = (
    ("ok / failed", None, ""),
    ("RSS KiB per held call", "memory_per_op_kib", "{:.1f}"),
)


def _cell(fig: Figure | None, key: str | None, fmt: str) -> str:
    if fig is None:
        return "-"
    if fig.status == "unavailable":
        return "n/a"
    if key is None:
        return f"{fig.successful} / {fig.failed}"
    value = getattr(fig, key)
    return fmt.format(value)


def render_table(figures: Mapping[tuple[str, str], Figure], targets: Sequence[str]) -> str:
    """The side-by-side table; the last column is vpbx : Kamailio in operations per CPU-second."""
    head = ["measure", "figure", *targets]
    ratio = "kamailio" in targets and "vpbx" in targets
    if ratio:
        head.append("vpbx:kamailio per CPU-s")
    rows: list[list[str]] = [head]
    notes: list[str] = []
    for measure in ("register", "call"):
        if not any(m == measure for _, m in figures):
            continue
        for i, (label, key, fmt) in enumerate(ROWS):
            row = [measure if i == 0 else "", label]
            row += [_cell(figures.get((t, measure)), key, fmt) for t in targets]
            if ratio:
                cell = ""
                if key == "ops_per_cpu_s":
                    k, v = figures.get(("kamailio", measure)), figures.get(("vpbx", measure))
                    cell = "-"
                    if k and v and k.status == v.status == "ok" and k.ops_per_cpu_s:
                        cell = f"{v.ops_per_cpu_s / k.ops_per_cpu_s:.2f}"
                row.append(cell)
            rows.append(row)
        for t in targets:
            f = figures.get((t, measure))
            if f is not None and f.note and f"{t}: {f.note}" not in notes:
                notes.append(f"{t}: {f.note}")
    if any(m == "held" for _, m in figures):
        for i, (label, key, fmt) in enumerate(HELD_ROWS):
            row = ["held" if i == 0 else "", label]
            row += [_cell(figures.get((t, "held")), key, fmt) for t in targets]
            if ratio:
                cell = ""
                if key == "memory_per_op_kib":
                    k, v = figures.get(("kamailio", "held")), figures.get(("vpbx", "held"))
                    cell = "-"
                    if k and v and k.status == v.status == "ok" and k.memory_per_op_kib > 0:
                        cell = f"{v.memory_per_op_kib / k.memory_per_op_kib:.1f}× the memory"
                row.append(cell)
            rows.append(row)
        for t in targets:
            f = figures.get((t, "held"))
            if f is not None and f.note and f"{t}: {f.note}" not in notes:
                notes.append(f"{t}: {f.note}")
    widths = [max(len(r[c]) for r in rows) for c in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [f"note: {n}" for n in notes]) + "\n"


async def main_async(plan: Plan, out: Path) -> str:
    run_id = uuid.uuid4().hex[:12]
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    per: dict[tuple[str, str], list[Figure]] = {}
    with tempfile.TemporaryDirectory(prefix="vpbx-bench-") as tmp:
        for n in range(plan.runs):
            for name in plan.targets:
                for fig in await bench_target(name, plan, Path(tmp) / f"run{n}"):
                    per.setdefault((fig.target, fig.measure), []).append(fig)
    chosen = {key: median_figure(figs) for key, figs in per.items()}
    meta = {"run_id": run_id, "started": started, "machine": machine(), "plan": asdict(plan)}
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for figs in per.values():
            for i, fig in enumerate(figs):
                f.write(json.dumps({**meta, "repeat": i, **asdict(fig)}, ensure_ascii=False) + "\n")
    table = render_table(chosen, plan.targets)
    m = meta["machine"]
    assert isinstance(m, dict)
    header = (
        f"SIP benchmark {started} run {run_id}: {plan.seconds:g} s per point, {plan.runs} run(s), "
        f"median shown; {m['cpus']} CPUs ({m['cpu_model']}), server pinned: {bool(pinning(plan)[0])}\n"
    )
    return header + table


def parse_args(argv: Sequence[str] | None = None) -> tuple[Plan, Path]:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n", 1)[0])
    p.add_argument("--target", choices=("both", "kamailio", "vpbx"), default="both")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each measured point (default 10)")
    p.add_argument("--reg-rate", type=float, default=2000.0, help="REGISTER transactions offered per second")
    p.add_argument("--call-rate", type=float, default=300.0, help="calls offered per second")
    p.add_argument("--users", type=int, default=1000, help="users in the registration load")
    p.add_argument("--runs", type=int, default=3, help="repeat each point; the median is shown (default 3)")
    p.add_argument("--call-auth", action="store_true", help="challenge INVITEs (3 more messages per call)")
    p.add_argument(
        "--held-calls",
        type=int,
        default=500,
        help="calls held up at once for the memory figure (0: skip; default 500)",
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin server and load to separate CPUs")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="JSON lines are appended here; the table goes next to it (.txt)",
    )
    a = p.parse_args(argv)
    if not (0 < a.seconds <= 120 and 0 < a.reg_rate <= 20000 and 0 < a.call_rate <= 10000):
        p.error("keep the load bounded: seconds ≤ 120, reg-rate ≤ 20000, call-rate ≤ 10000")
    if not (1 <= a.users <= 50000 and 1 <= a.runs <= 10):
        p.error("users must be 1…50000 and runs 1…10")
    if not 0 <= a.held_calls <= 5000:
        p.error("held-calls must be 0…5000")
    targets = ("kamailio", "vpbx") if a.target == "both" else (a.target,)
    plan = Plan(
        targets=targets,
        seconds=a.seconds,
        reg_rate=a.reg_rate,
        call_rate=a.call_rate,
        users=a.users,
        runs=a.runs,
        call_auth=a.call_auth,
        pin=not a.no_pin,
        held_calls=a.held_calls,
    )
    return plan, a.out


def main(argv: Sequence[str] | None = None) -> int:
    plan, out = parse_args(argv)
    for program in ("sipp", "sipsak", "kamailio"):
        if shutil.which(program) is None:
            sys.stderr.write(f"bench: {program} is missing (scripts/test installs the peers)\n")
            return 2
    report = asyncio.run(main_async(plan, out))
    out.with_suffix(".txt").write_text(report)
    sys.stdout.write(report)
    sys.stdout.write(f"appended to {out}; table in {out.with_suffix('.txt')}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
