"""Integration API benchmark: signed requests/s and p99 latency of ``users_info`` and ``call_info`` (issue 7).

    python bench/api_bench.py                      # 16 clients, 2000 requests per point
    python bench/api_bench.py --clients 32 --requests 4000 --no-write

Each point runs the real app (``create_app``: the real gateway mounted at ``/api``) under uvicorn on
127.0.0.1 in a child process, on a temp SQLite file holding fixture-F-like data (domain, two users, a group,
a line, F's finished call); its reference is a bare FastAPI endpoint returning a small JSON in the same
uvicorn setup. The load generator is httpx in this process: ``--clients`` concurrent clients send
``--requests`` signed requests in all, each bounded by ``--timeout``. The per-domain rate limit (§2.3) is
switched off in the child, or it would be measured instead of the gateway; signature check, allowlist,
the API log row and the method itself are all in. Ratio = ours / bare.

Then call_events delivery latency: ``--calls`` concurrent calls of five events each are appended through
``SqlCallJournal`` (as ``CallEvents.publish`` does) on the same kind of SQLite file, while the real pump and
dispatcher (``Notifications``, as ``vpbx serve`` runs them) deliver them to a CRM receiver on loopback;
latency = CRM receipt - the moment the append was called, p50/p99 over all events.
Results: stdout, also ``bench/results/api-latest.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

RESULTS = REPO / "bench" / "results" / "api-latest.txt"
SECRET = "api-bench-secret-key-not-for-production-use-0123456789"


def _settings(data: Path) -> Any:
    from vpbx.settings import Settings

    return Settings(
        env="test",
        secret_key=SECRET,
        data_dir=data,
        database_url=f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}",
    )


async def _provision(data: Path) -> None:
    from tests.integration_api.fixture_f import enable_api, make_fixture_f
    from vpbx.app import create_app

    app = create_app(_settings(data))
    core = app.state.core
    try:
        f = await make_fixture_f(core)
        await enable_api(core, f.domain_id, allowlist="127.0.0.0/8", tls_required=False)
    finally:
        await core.engine.dispose()


class _NoLimit:
    def hit(self, key: str, limit: int, window_s: float, now: float) -> int | None:
        return None


def _serve(kind: str, data: Path, port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    if kind == "bare":
        app = FastAPI()

        @app.post("/bare")
        async def bare() -> dict[str, str]:
            return {"result": "0", "resultMessage": "ok"}

    else:
        from vpbx.app import create_app
        from vpbx.integration_api.gateway import ApiGateway

        app = create_app(_settings(data))
        for route in app.routes:
            inner = getattr(route, "app", None)
            if isinstance(inner, ApiGateway):
                inner.limiter = _NoLimit()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _server(kind: str, data: Path) -> AsyncIterator[str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before any load
        [sys.executable, __file__, "--serve", kind, "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=1) as c:
            for _ in range(200):  # bounded: 20 s
                try:
                    await c.get(url + "/")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError(f"{kind} server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def _load(
    url: str, path: str, body: bytes, headers: dict[str, str], clients: int, total: int, req_timeout: float
) -> tuple[float, list[float], int]:
    lat: list[float] = []
    errors = 0
    left = total
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=req_timeout, limits=limits) as c:

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                t0 = time.perf_counter()
                try:
                    r = await c.post(path, content=body, headers=headers)
                    ok = r.status_code == 200 and r.json().get("result") == "0"
                except httpx.HTTPError:
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok

        for _ in range(min(50, total)):  # warm-up
            await c.post(path, content=body, headers=headers)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return wall, lat, errors


def _p(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] * 1000 if len(xs) > 1 else xs[0] * 1000


async def run(clients: int, total: int, req_timeout: float) -> list[str]:
    from tests.integration_api.fixture_f import CALL_ID, signed_headers
    from vpbx import store

    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="api-bench-") as tmp:
        data = Path(tmp)
        await store.upgrade_async(f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}")
        await _provision(data)
        points = [
            ("users_info", "/api/users_info", b'{"user_pin": 501}'),
            ("call_info", "/api/call_info", f'{{"session_id":"{CALL_ID}"}}'.encode()),
        ]
        figures: dict[str, tuple[float, float, int]] = {}
        async with _server("bare", data) as url:
            wall, lat, err = await _load(
                url, "/bare", b"{}", {"Content-Type": "application/json"}, clients, total, req_timeout
            )
            figures["bare"] = (len(lat) / wall, _p(lat, 99), err)
        async with _server("ours", data) as url:
            for name, path, body in points:
                wall, lat, err = await _load(
                    url, path, body, signed_headers(body), clients, total, req_timeout
                )
                figures[name] = (len(lat) / wall, _p(lat, 99), err)
    bare_rps, bare_p99, _ = figures["bare"]
    lines.append(
        f"# api_bench: {clients} clients, {total} requests per point, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    lines.append(
        f"{'point':<12} {'req/s':>8} {'p99 ms':>8} {'errors':>7} {'req/s ratio':>12} {'p99 ratio':>10}"
    )
    for name, (rps, p99, err) in figures.items():
        lines.append(
            f"{name:<12} {rps:8.0f} {p99:8.1f} {err:7d} {rps / bare_rps:12.2f} {p99 / bare_p99:10.2f}"
        )
    lines.append("ratio = ours / bare FastAPI endpoint in the same run")
    return lines


def _serve_crm(port: int) -> None:
    """The CRM receiver, in its own process as a real CRM is on its own machine (it does not take the PBX's
    CPU): each call_events POST is answered 200 and its receipt time kept; ``GET /seen`` returns them."""
    import json

    import uvicorn

    seen: list[tuple[str, str, float]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if scope["method"] == "POST":
            data = json.loads(raw)
            seen.append((data["session_id"], data["state"], time.monotonic()))
            body = b'{"result":"0"}'
        else:  # GET /seen?from=N: the receipts from the N-th on
            start = int(scope.get("query_string", b"").decode().partition("from=")[2] or 0)
            body = json.dumps(seen[start:]).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


async def run_events(calls: int) -> list[str]:
    import datetime as dt
    import uuid

    from tests.integration_api.notify_crm import activate
    from vpbx import store
    from vpbx.app import create_app
    from vpbx.integration_api.dispatcher import Notifications
    from vpbx.pbx import domains
    from vpbx.pbx.bus import CallEvent, CallState
    from vpbx.pbx.history import SqlCallJournal

    states: tuple[CallState, ...] = ("new", "calling", "connected", "disconnected", "end")
    sent: dict[
        tuple[str, str], float
    ] = {}  # time.monotonic(): one clock for both processes (CLOCK_MONOTONIC)
    got: dict[tuple[str, str], float] = {}

    with tempfile.TemporaryDirectory(prefix="api-bench-ev-") as tmp:
        data = Path(tmp)
        await store.upgrade_async(f"sqlite+aiosqlite:///{data / 'vpbx.sqlite3'}")
        app = create_app(_settings(data))
        core = app.state.core
        async with _server("crm", data) as crm_url:
            async with core.sessions() as s:
                d = await domains.create_domain(s, domains.DomainInput(name="bench.vpbx.example"))
                await s.commit()
            await activate(core, d.id, crm_url + "/rt")
            journal = SqlCallJournal(core.sessions, node_id="bench", spool_path=data / "spool.jsonl")
            await journal.start()
            notifications = Notifications(core)
            journal.on_commit.append(notifications.wake)  # as vpbx serve wires them
            await notifications.start()

            async def call(i: int) -> None:
                sid = str(uuid.uuid4())
                for seq, state in enumerate(states, 1):
                    sent[(sid, state)] = time.monotonic()
                    await journal.append(
                        CallEvent(
                            session_id=sid,  # type: ignore[arg-type]
                            seq=seq,
                            state=state,
                            type="incoming",
                            domain_id=d.id,
                            domain="bench.vpbx.example",
                            timestamp=dt.datetime.now(dt.UTC),
                            line="74951234567",
                            from_number=f"sip:7916{i:07d}@bench.vpbx.example",
                            request_number="sip:74951234567@bench.vpbx.example",
                        )
                    )
                    await asyncio.sleep(0.05)

            try:
                c = httpx.AsyncClient(timeout=5)  # made before the CPU count: its TLS context costs ~0.1 s
                cpu0 = time.process_time()
                await asyncio.gather(*(call(i) for i in range(calls)))
                async with asyncio.timeout(60), c:
                    while len(got) < len(sent):  # bounded by the timeout
                        await asyncio.sleep(0.1)
                        for sid, state, at in (await c.get(f"{crm_url}/seen?from={len(got)}")).json():
                            got.setdefault((sid, state), at)
                cpu = time.process_time() - cpu0
            finally:
                await notifications.stop()
                await journal.stop()
                await core.engine.dispose()
    lat = [(got[k] - sent[k]) for k in sent if k in got]
    return [
        f"# call_events delivery: {calls} concurrent calls x 5 events (50 ms apart), SQLite, "
        "pump + dispatcher as in serve, the CRM in another process",
        f"delivered {len(lat)}/{len(sent)}  p50 {_p(lat, 50):.0f} ms  p99 {_p(lat, 99):.0f} ms"
        f"  max {max(lat) * 1000:.0f} ms  (PBX process CPU {cpu:.2f} s)",
        "(latency: the journal append called -> the CRM's receipt)",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--calls", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--part", choices=("all", "requests", "events"), default="all")
    ap.add_argument("--serve", choices=("ours", "bare", "crm"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve == "crm":
        _serve_crm(args.port)
        return
    if args.serve:
        _serve(args.serve, args.data, args.port)
        return
    lines: list[str] = []
    load_before = os.getloadavg()
    if args.part in ("all", "requests"):
        lines += asyncio.run(asyncio.wait_for(run(args.clients, args.requests, args.timeout), timeout=300))
    if args.part in ("all", "events"):
        from vpbx.cli import event_loop_factory

        # on the event loop vpbx serve runs (uvloop when installed)
        with asyncio.Runner(loop_factory=event_loop_factory("auto")) as runner:
            lines += runner.run(asyncio.wait_for(run_events(args.calls), timeout=120))
    before, after = (" ".join(f"{x:.2f}" for x in load) for load in (load_before, os.getloadavg()))
    lines.append(
        f"# machine load (1/5/15-min load average, {os.cpu_count()} CPUs): before {before}, after {after}"
    )
    out = "\n".join(lines) + "\n"
    print(out, end="")  # noqa: T201
    if not args.no_write:
        RESULTS.write_text(out)


if __name__ == "__main__":
    main()
