"""Pop-ups (amocrm.md F13, §3.6): the nearest-deal rule, the message, and the hub's tickets and queues."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import HTTPException

from vpbx.amocrm.nearest import active_lead
from vpbx.amocrm.popups import (
    CLOSE,
    MAX_STREAMS_PER_USER,
    NEW_CLIENT,
    STREAM_QUEUE,
    TICKET_TTL_S,
    PopupHub,
    popup_payload,
    sse,
)


def lead(
    ident: int, *, status: int = 7001, task_at: int | None = None, updated: int = 0
) -> dict[str, object]:
    return {
        "id": ident,
        "name": f"L{ident}",
        "status_id": status,
        "closest_task_at": task_at,
        "updated_at": updated,
    }


def test_nearest_lead_prefers_the_soonest_task() -> None:
    leads = [lead(1, task_at=3000, updated=9), lead(2, task_at=2000, updated=1), lead(3, updated=99)]
    assert active_lead(leads) == leads[1]


def test_nearest_lead_else_the_most_recently_updated() -> None:
    leads = [lead(1, updated=10), lead(2, updated=30), lead(3, updated=20)]
    assert active_lead(leads) == leads[1]


def test_nearest_lead_skips_won_and_lost() -> None:
    leads = [lead(1, status=142, task_at=1), lead(2, status=143, updated=50), lead(3, updated=5)]
    assert active_lead(leads) == leads[2]
    assert active_lead([lead(1, status=142), lead(2, status=143)]) is None
    assert active_lead([]) is None


def test_payload_known_contact_links_both_cards() -> None:
    msg = popup_payload(
        session_id="s1",
        direction="incoming",
        client_digits="79161234567",
        line="74951234567",
        extension="101",
        base_domain="demo.amocrm.ru",
        contact=(9001, "Анна Смирнова"),
        lead={"id": 8001, "name": "Поставка"},
        at=1764000000,
    )
    assert msg == {
        "event": "answered",
        "session_id": "s1",
        "direction": "incoming",
        "client_phone": "+79161234567",
        "line": "+74951234567",
        "extension": "101",
        "contact": {
            "id": 9001,
            "name": "Анна Смирнова",
            "url": "https://demo.amocrm.ru/contacts/detail/9001",
        },
        "lead": {"id": 8001, "name": "Поставка", "url": "https://demo.amocrm.ru/leads/detail/8001"},
        "title": "Анна Смирнова",
        "at": 1764000000,
    }


def test_payload_new_client_has_no_links() -> None:
    msg = popup_payload(
        session_id="s2",
        direction="outgoing",
        client_digits="79990001122",
        line="",
        extension="102",
        base_domain="demo.amocrm.ru",
        contact=None,
        lead={"id": 8001},
        at=1,
    )
    assert msg["contact"] is None and msg["lead"] is None
    assert msg["title"] == NEW_CLIENT and msg["direction"] == "outgoing"
    assert sse("call", msg).startswith(b"event: call\ndata: {")


def test_ticket_is_single_use_and_expires() -> None:
    hub = PopupHub()
    t = hub.issue(30000001, 5001, now=100.0)
    assert hub.redeem(t, now=101.0) == (30000001, 5001)
    assert hub.redeem(t, now=101.0) is None  # used
    t2 = hub.issue(30000001, 5001, now=100.0)
    assert hub.redeem(t2, now=100.0 + TICKET_TTL_S) is None  # expired
    assert hub.redeem("forged", now=100.0) is None


async def test_push_reaches_only_that_user_and_queues_are_bounded() -> None:
    hub = PopupHub()
    mine = hub.open(30000001, 5001)
    other_user = hub.open(30000001, 5002)
    other_account = hub.open(30000002, 5001)
    for n in range(STREAM_QUEUE + 5):
        assert hub.push(30000001, 5001, {"n": n}) == 1
    assert mine.qsize() == STREAM_QUEUE
    assert (await asyncio.wait_for(mine.get(), 1))["n"] == 5  # the oldest were dropped
    assert other_user.empty() and other_account.empty()
    hub.close(30000001, 5001, mine)
    assert not hub.has_stream(30000001, 5001)
    assert hub.push(30000001, 5001, {"n": 0}) == 0


def test_streams_per_user_are_capped() -> None:
    hub = PopupHub()
    for _ in range(MAX_STREAMS_PER_USER):
        hub.open(1, 2)
    with pytest.raises(HTTPException):
        hub.open(1, 2)


def test_shutdown_ends_every_stream_and_voids_tickets() -> None:
    hub = PopupHub()
    t = hub.issue(1, 2, now=0.0)
    full = hub.open(1, 2)
    for n in range(STREAM_QUEUE):
        hub.push(1, 2, {"n": n})
    hub.shutdown()
    items = [full.get_nowait() for _ in range(full.qsize())]
    assert items[-1] is CLOSE
    assert hub.redeem(t, now=1.0) is None
    with pytest.raises(HTTPException):
        hub.issue(1, 2, now=1.0)
    with pytest.raises(HTTPException):
        hub.open(1, 2)
