"""The routing hook end to end: a carrier's call on a line asks a URL (``VPBX_DEBUG_ROUTING_HOOK_URL``, the
plain JSON form of the hook get_number_info uses) before the rules run.

- The hook names extension 103 and the caller's name: the call rings 103 (not the rule's 102) and the INVITE
  the phone gets shows the name in its From.
- The hook never answers: past the deadline (1 s here) the rule routes the call to 102 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.peers.sipp import SippProcess, run_sipp
from tests.integration.test_calls import bind, callee_run, running
from tests.integration.test_incoming_calls import CALLER, LINE, carrier_run, line_to

pytestmark = pytest.mark.peers

DEADLINE_S = 1.0
NAME = "Иван Петров"
REQUEST_TIMEOUT_S = 5.0


@dataclass
class HookServer:
    """A CRM's routing endpoint on loopback: answers ``reply`` at once, or never when ``reply`` is None."""

    reply: dict[str, str] | None
    url: str = ""
    asked: list[tuple[dt.datetime, dict[str, str]]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
            self.asked.append((dt.datetime.now(dt.UTC), json.loads(body)))
            if self.reply is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self.release.wait()  # hold the request: the deadline must not wait for us
                return
            payload = json.dumps(self.reply, ensure_ascii=False).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + payload
            )
            await writer.drain()
        finally:
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HookServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/route"
        try:
            yield self
        finally:
            self.release.set()
            server.close()
            await server.wait_closed()


def hook_env(hook: HookServer) -> dict[str, str]:
    return {"VPBX_DEBUG_ROUTING_HOOK_URL": hook.url, "VPBX_ROUTING_HOOK_DEADLINE_S": str(DEADLINE_S)}


async def test_the_hooks_answer_routes_the_call_and_the_phone_shows_the_callers_name(tmp_path: Path) -> None:
    async with (
        HookServer({"pin": "103", "display_name": NAME}).running() as hook,
        running(tmp_path, env=hook_env(hook), setup=line_to("user")) as server,
        SippProcess.running(callee_run("uas_answer", trace_msg=True), tmp_path) as phone,
    ):
        # the rule's user 102 has no phone: only the hook's answer reaches one
        await bind(server, "103", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    [(_, asked)] = hook.asked
    assert asked["from_number"] == CALLER and asked["request_number"] == LINE
    assert asked["session_id"] == events[0]["session_id"] and asked["domain"] == server.service.domain
    assert [(e["state"], e.get("request_pin")) for e in events][1:3] == [
        ("calling", "103"),
        ("connected", "103"),
    ]
    invite = (answered.workdir / "messages.log").read_text(encoding="utf-8", errors="replace")
    assert f'From: "{NAME}" <sip:+{CALLER}@' in invite


async def test_a_hook_past_its_deadline_leaves_the_call_to_the_rules_at_once(tmp_path: Path) -> None:
    async with (
        HookServer(None).running() as hook,
        running(tmp_path, env=hook_env(hook), setup=line_to("user")) as server,
        SippProcess.running(callee_run("uas_answer"), tmp_path) as phone,
    ):
        await bind(server, "102", phone)
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=300), tmp_path)
        answered = await phone.wait()
        [events] = (await server.calls(ended=1)).values()
        still_waiting = not hook.release.is_set()

    assert caller.ok, caller.describe()
    assert answered.ok, answered.describe()
    assert still_waiting and len(hook.asked) == 1  # the hook never answered, yet the call went on
    assert [(e["state"], e.get("request_pin")) for e in events][1:3] == [
        ("calling", "102"),
        ("connected", "102"),
    ]
    asked_at = hook.asked[0][0]
    rung_at = dt.datetime.fromisoformat(events[1]["timestamp"])
    # the rules took over at the deadline, not when the hook gave up (a generous bound for a busy box)
    assert (rung_at - asked_at).total_seconds() < DEADLINE_S + 2.0, (asked_at, rung_at)
