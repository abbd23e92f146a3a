"""amoCRM benchmark (issue 8, amocrm.md §5.9): the routing delay the ИМК lookup adds, and amoCRM API requests
per inbound call per flow.

    python bench/amo_bench.py                  # 50 calls per delay case, 5 calls per flow (~5 min)
    python bench/amo_bench.py --calls 20 --flow-calls 3 --no-write

``python -m vpbx serve`` on a temp SQLite file (provisioned in-process as the integration tests do: extensions
101–104, the line +74951234567 whose rule rings 102, an IP trunk for a SIPp carrier on 127.0.0.2), the amoCRM
emulator over real HTTP in this process (``tests/amocrm/emu_kit.py``, the §4.1 fixture) and §6's binding
(mapping 5001–5003 ↔ 101–103, fallback 5002, «Основной» on the line with smart routing on). A SIPp phone
registered as 102 answers every call.

Routing delay: every call comes from a number amoCRM does not know (a cache miss, so the ИМК asks E4 and,
finding nobody, overflows to the line's rules). The SIPp carrier measures INVITE → 180 per call
(``start_rtd``/``rtd``, ``-trace_rtt``). Cases: the integration off (no binding, a separate server), on with
the emulator answering E4 in ~100 ms, and on with it answering in 3 s (fault ``delay_ms``; our realtime budget
``lookup_timeout_ms`` is 1500 ms, and after 3 failures the lookup goes cache-only, so most of that case's
calls are not delayed at all: that is the design, shown as is). Added delay = p50/p99 of the case − the same
of the case with the integration off; ratio = case / off. For the delay cases the scenario's event steps are
switched off so the job runner's writes do not share the account's 5 rps bucket with the lookups.

Requests per flow: the emulator's ``/__emu__/stats`` (per route, PBX requests only) before and after each
flow, once every call placed so far has its ``amo.finish`` job done in the PBX's database and the stats have
then not moved for QUIET_S, divided by the flow's calls; printed next to §5.9's budget. Flows: new client
answered (contact + deal + task + note), the same numbers again (existing client; the cache holds them), the
fixture's contacts (existing client, cache miss), missed new (102 answers 486 Busy; the carrier expects the
486). A SIPp run that fails is reported on stderr, whatever the flow. No amoCRM tab is open, so every
answered call also sends the pop-up's server fallback E16 (``POST /api/v2/events``, §3.6): it is legit, but
not in §5.9's table, so it is printed on its own line "pop-up fallback (no widget tab open)" and left out of
the per-call sum.

Each SIPp phone's registration of 102 is removed (expires 0) when that phone stops: a stale contact left
behind would be rung too (forking), and a call would wait 32 s (Timer B) for the dead one; that made the
missed flow place 3 of its 5 calls before the carrier's timeout and read the stats before the third's task.
Results: stdout, also ``bench/results/amo-latest.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "amo-latest.txt"
RATE = 2.0  # calls/s: E4 + the note per call stay under the account's 5 rps
# the flows: E5 + E6 + E16 + the note of an existing client's call stay under it too, so what is counted is
# the flow's budget and not an overloaded limiter (a pop-up's realtime read that cannot be sent in time is
# skipped, and the finish then reads for itself)
FLOW_RATE = 1.0
# one call at a time (-l 1): 102 is one phone, a second call while it talks would get 486
QUIET_S = 3.0  # the job runner is idle when the stats have not moved for this long
IDLE_WAIT_S = 120.0  # a bound, not a speed
FIXTURE_CONTACTS = ["79161234567", "79167654321"]  # 9001 Анна Смирнова, 9002 Олег Ким (§4.1)
E16 = "/api/v2/events"  # the pop-up's server fallback (§3.6): no widget tab is open in the bench
COUNTED = "counted: every PBX request but the pop-up fallback"
BUDGET = {
    "new client answered (contact + deal + task)": "lookup 1 + re-check 1 + 3 creates + 1 note = 6"
    " (5 complex)",
    "existing client, cache hit": "routing 0 + pop-up ≤ 2 (E5+E6, 0 when cached) + finish 1 (note) = 3",
    "existing client, cache miss": "+1 (E4) = 4; 9002 has no active deal, so the scenario's deal is made"
    " after the finish reads E5 again (+2 on that call)",
    "missed, new, task only": "lookup 1 + 1 task = 2",
}


def _scenario(workdir: Path) -> Path:
    """uac_call.xml with the caller from an injection file and INVITE → 180 timed as rtd "route"."""
    from tests.integration.peers.sipp import scenario_path

    text = scenario_path("uac_call").read_text()
    text = text.replace("[caller]", "[field0]")
    text = text.replace('<send retrans="500">', '<send retrans="500" start_rtd="route">', 1)
    text = text.replace('<recv response="180" optional="true"/>', '<recv response="180" rtd="route"/>', 1)
    path = workdir / "uac_call_rtd.xml"
    path.write_text(text)
    return path


def _busy_scenario(workdir: Path) -> Path:
    """The carrier's call refused with 486 (uac_trunk_final.xml), the caller from an injection file."""
    from tests.amocrm.test_missed_serve import carrier_refused

    return carrier_refused(workdir, 486)


def _callers(workdir: Path, name: str, numbers: list[str]) -> Path:
    path = workdir / f"{name}.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"{n};\n" for n in numbers))
    return path


def _numbers(prefix: int, count: int) -> list[str]:
    return [f"790{prefix:02d}{i:06d}" for i in range(count)]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _calls(
    server: Any, workdir: Path, tag: str, numbers: list[str], *, scenario: str | Path, rate: float = RATE
) -> list[float]:
    """``numbers`` call the line through the SIPp carrier, ``rate`` per second; INVITE → 180 in ms per
    call."""
    from tests.integration.peers.sipp import run_sipp
    from tests.integration.test_incoming_calls import carrier_run

    run_dir = workdir / tag
    run_dir.mkdir()
    scenario = Path(shutil.copy(scenario, run_dir))  # SIPp writes its _rtt.csv next to the scenario
    run = carrier_run(
        server, calls=len(numbers), duration_ms=300, rate=rate, limit=1, timeout_s=60 + len(numbers) * 5
    )
    run = dataclasses.replace(
        run,
        scenario=scenario,
        inf=_callers(run_dir, tag, numbers),
        extra=("-trace_rtt", "-rtt_freq", "1"),
    )
    result = await run_sipp(run, run_dir)
    if not result.ok:
        print(f"  {tag}: SIPp: {result.describe()[:2000]}", file=sys.stderr)  # noqa: T201
    out: list[float] = []
    for csv in run_dir.rglob("*_rtt.csv"):
        for line in csv.read_text().splitlines()[1:]:
            parts = line.split(";")
            with contextlib.suppress(IndexError, ValueError):
                out.append(float(parts[1]))
    return out


@contextlib.asynccontextmanager
async def _phone(server: Any, scenario: str, calls: int, work: Path) -> AsyncIterator[Any]:
    """A SIPp phone registered as 102 for the block, unregistered when it stops."""
    from tests.integration.peers.sipp import SippProcess
    from tests.integration.test_calls import bind, callee_run, unbind

    # the tests' callee gives up after 20 s; this one lives through the whole case
    run = dataclasses.replace(callee_run(scenario, calls=calls), timeout_s=900)
    async with SippProcess.running(run, work) as phone:
        await bind(server, "102", phone)
        try:
            yield phone
        finally:
            await unbind(server, "102", phone)


async def _finished(core: Any, calls: int) -> bool:
    """``calls`` ``amo.finish`` jobs exist and none is left to run."""
    from sqlalchemy import func, select

    from vpbx.store.models import CrmJob

    async with core.sessions() as s:
        rows = (
            await s.execute(
                select(CrmJob.state, func.count()).where(CrmJob.kind == "amo.finish").group_by(CrmJob.state)
            )
        ).all()
    by_state = {str(state): int(n) for state, n in rows}
    return sum(by_state.values()) >= calls and not by_state.keys() & {"pending", "running"}


async def _idle_stats(emu: Any, core: Any = None, calls: int = 0) -> dict[str, Any]:
    """The emulator's stats once the PBX has finished the jobs of the first ``calls`` calls and the stats
    have then not moved for QUIET_S (the job runner is done)."""
    deadline = time.monotonic() + IDLE_WAIT_S
    while core is not None and not await _finished(core, calls):
        if time.monotonic() > deadline:
            print(f"  amo.finish jobs of {calls} calls not done", file=sys.stderr)  # noqa: T201
            break
        await asyncio.sleep(0.5)
    last = await emu.stats()
    still_since = time.monotonic()
    deadline = time.monotonic() + IDLE_WAIT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await emu.stats()
        if now["total"] != last["total"]:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= QUIET_S:
            break
    return dict(last)


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for route, per in after["routes"].items():
        for method, n in per.items():
            key = f"{method} {route}" if not route.startswith(method) else route
            was = before["routes"].get(route, {}).get(method, 0)
            if n - was:
                out[key] = n - was
    return out


async def _set_events(settings: Any, *, on: bool) -> None:
    from sqlalchemy import select

    from tests.amocrm.unit.jobs_kit import SCENARIO
    from vpbx.amocrm.scenario import Events, Scenario
    from vpbx.app import build_core
    from vpbx.store.models import AmoScenario

    core = build_core(settings)
    try:
        async with core.sessions() as s:
            row = await s.scalar(select(AmoScenario))
            assert row is not None
            doc = Scenario.model_validate(SCENARIO).document()
            if not on:
                doc = doc.model_copy(update={"events": Events()})
            row.document = doc.model_dump()
            await s.commit()
    finally:
        await core.engine.dispose()


async def bench(calls: int, flow_calls: int, workdir: Path) -> list[str]:
    from tests.amocrm.emu_kit import emulator
    from tests.amocrm.test_finish_serve import amo_env, bound
    from tests.integration.test_calls import running
    from tests.integration.test_incoming_calls import line_to
    from vpbx.app import build_core
    from vpbx.settings import Settings

    scenario = _scenario(workdir)
    busy_scenario = _busy_scenario(workdir)
    lines: list[str] = []
    delays: dict[str, list[float]] = {}

    # the integration off: the same line, rule and phone, no binding
    async with (
        running(workdir / "off", setup=line_to("user")) as server,
        _phone(server, "uas_answer", calls + 10, workdir / "off"),
    ):
        delays["integration off"] = await _calls(
            server, workdir, "delay-off", _numbers(10, calls), scenario=scenario
        )

    async with emulator(rate_limit_rps=7) as emu:
        setup = await bound(emu, line_to("user"))
        work = workdir / "on"
        async with running(work, env=amo_env(emu), setup=setup) as server:
            data = work / "vpbx" / "data"
            settings = Settings(
                env="test",
                secret_key="unused-here-0123456789-0123456789-0123456789",  # type: ignore[arg-type]
                data_dir=data,
                database_url=f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}",
            )
            core = build_core(settings)  # reads the job outbox: is the flow finished?
            placed = 0
            flows: list[tuple[str, int, dict[str, int]]] = []
            try:
                async with _phone(server, "uas_answer", 10 * flow_calls + 20, work):
                    new = _numbers(20, flow_calls)
                    for name, numbers in (
                        ("new client answered (contact + deal + task)", new),
                        ("existing client, cache hit", new),
                        ("existing client, cache miss", FIXTURE_CONTACTS),
                    ):
                        before = await _idle_stats(emu, core, placed)
                        await _calls(
                            server, workdir, f"flow-{len(flows)}", numbers, scenario=scenario, rate=FLOW_RATE
                        )
                        placed += len(numbers)
                        flows.append(
                            (name, len(numbers), _delta(before, await _idle_stats(emu, core, placed)))
                        )
                async with _phone(server, "uas_busy", flow_calls + 10, work):
                    before = await _idle_stats(emu, core, placed)
                    await _calls(
                        server,
                        workdir,
                        "flow-busy",
                        _numbers(30, flow_calls),
                        scenario=busy_scenario,
                        rate=FLOW_RATE,
                    )
                    placed += flow_calls
                    after = await _idle_stats(emu, core, placed)
                    flows.append(("missed, new, task only", flow_calls, _delta(before, after)))
            finally:
                await core.engine.dispose()

            await _set_events(settings, on=False)
            async with _phone(server, "uas_answer", 2 * calls + 20, work):
                for label, delay_ms, prefix in (("on, amoCRM 100 ms", 100, 40), ("on, amoCRM 3 s", 3000, 50)):
                    await emu.control("DELETE", "/__emu__/faults")
                    await emu.control(
                        "POST",
                        "/__emu__/faults",
                        json={
                            "match": {"method": "GET", "path_regex": "/api/v4/contacts$"},
                            "action": {"delay_ms": delay_ms},
                            "times": 100_000,
                        },
                    )
                    delays[label] = await _calls(
                        server, workdir, f"delay-{delay_ms}", _numbers(prefix, calls), scenario=scenario
                    )
                await emu.control("DELETE", "/__emu__/faults")

    off = delays["integration off"]
    off50, off99 = _pct(off, 0.5), _pct(off, 0.99)
    lines.append(
        f"Routing delay, INVITE → 180 at the carrier (ms), {calls} calls per case, new numbers (cache miss)"
    )
    lines.append(f"{'case':<22} {'n':>4} {'p50':>9} {'p99':>9} {'+p50':>9} {'+p99':>9} {'p50 ratio':>10}")
    for label, values in delays.items():
        p50, p99 = _pct(values, 0.5), _pct(values, 0.99)
        lines.append(
            f"{label:<22} {len(values):>4} {p50:>9.1f} {p99:>9.1f} {p50 - off50:>9.1f} {p99 - off99:>9.1f}"
            f" {p50 / off50 if off50 else float('nan'):>10.2f}"
        )
    lines.append("")
    lines.append("amoCRM API requests per inbound call (emulator /__emu__/stats, PBX requests only)")
    for name, n, delta in flows:
        fallback = sum(count for key, count in delta.items() if key.endswith(E16))
        counted = {key: count for key, count in delta.items() if not key.endswith(E16)}
        total = sum(counted.values())
        lines.append(
            f"{name}: {total / n:.2f} per call over {n} calls   budget §5.9: {BUDGET[name]} ({COUNTED})"
        )
        for key, count in sorted(counted.items()):
            lines.append(f"    {key:<40} {count / n:.2f}")
        if fallback:
            lines.append(
                f"  pop-up fallback (no widget tab open): {fallback / n:.2f} per call"
                f" (E16 POST {E16}, outside the §5.9 sum)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per routing-delay case")
    parser.add_argument("--flow-calls", type=int, default=5, help="calls per request-count flow")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amo-bench-") as tmp:
        lines = asyncio.run(asyncio.wait_for(bench(args.calls, args.flow_calls, Path(tmp)), timeout=1200))
    head = [
        f"amo_bench {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {platform.node()},"
        f" {os.cpu_count()} CPUs, Python {platform.python_version()}, {time.monotonic() - started:.0f} s",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    print(text)  # noqa: T201
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
