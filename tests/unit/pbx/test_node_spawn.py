"""``SipNode.spawn``: handlers run as tracked tasks, or eagerly up to their first wait."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from vpbx.app import Core
from vpbx.pbx.node import SipNode, reachable_host


@pytest.fixture
def node(core: Core) -> SipNode:
    return SipNode(core)


async def test_an_eager_handler_that_never_waits_needs_no_task(node: SipNode) -> None:
    done: list[str] = []

    async def handler() -> None:
        done.append("ran")

    node.spawn(handler(), "h", eager=True)
    assert done == ["ran"]  # before spawn returned
    assert not node._tasks


async def test_an_eager_handler_that_waits_goes_on_in_a_tracked_task(node: SipNode) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def handler() -> None:
        seen.append("start")
        seen.append(await gate)
        await asyncio.sleep(0)
        seen.append("end")

    node.spawn(handler(), "h", eager=True)
    assert seen == ["start"] and len(node._tasks) == 1
    gate.set_result(42)
    await asyncio.wait_for(asyncio.gather(*node._tasks), timeout=2)
    assert seen == ["start", 42, "end"]
    assert not node._tasks


async def test_an_eager_handler_gets_the_exception_it_waits_on(node: SipNode) -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    caught: list[str] = []

    async def handler() -> None:
        try:
            await gate
        except ValueError as e:
            caught.append(str(e))

    node.spawn(handler(), "h", eager=True)
    gate.set_exception(ValueError("boom"))
    await asyncio.wait_for(asyncio.gather(*node._tasks), timeout=2)
    assert caught == ["boom"]


async def test_failing_handlers_do_not_escape_spawn(node: SipNode) -> None:
    async def at_once() -> None:
        raise RuntimeError("at once")

    async def later() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("later")

    node.spawn(at_once(), "now", eager=True)
    node.spawn(later(), "later", eager=True)
    await asyncio.wait_for(asyncio.gather(*node._tasks), timeout=2)
    assert not node._tasks


async def test_stopping_cancels_an_eager_handler_inside_its_wait(node: SipNode) -> None:
    cleaned: list[str] = []
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def handler() -> None:
        try:
            await never
        finally:
            cleaned.append("finally")

    node.spawn(handler(), "h", eager=True)
    await node.stop()
    assert cleaned == ["finally"]
    assert all(t.done() for t in node._tasks)


def test_a_wildcard_bind_advertises_a_reachable_address() -> None:
    # Via, Contact and SDP c= must name an address a phone can reach, never 0.0.0.0
    assert reachable_host("127.0.0.1") == "127.0.0.1" and reachable_host("192.0.2.7") == "192.0.2.7"
    for wildcard in ("0.0.0.0", ""):
        found = reachable_host(wildcard)
        assert found not in ("0.0.0.0", "") and ipaddress.ip_address(found).version == 4
    assert reachable_host("::") != "::"
