"""Non-INVITE server transaction: RFC 3261 Figure 8 under RFC 4320 (no provisionals, never a 408)."""

from __future__ import annotations

import pytest

from tests.unit.sip.transaction_kit import (
    T0,
    TCP,
    UDP,
    codes,
    delivered,
    request,
    response,
    sends,
    sent,
    started,
    terminated,
)
from vpbx.sip.message import Request
from vpbx.sip.transaction import RELEASED_REQUEST, TIMER_J, NonInviteServerTransaction, State


@pytest.fixture
def bye() -> Request:
    return request("BYE", to_tag="tt1", cseq=2)


@pytest.fixture
def tx(bye: Request) -> NonInviteServerTransaction:
    tx = NonInviteServerTransaction(bye, UDP)
    tx.start(T0)
    return tx


def test_start_passes_the_request_up_and_sends_nothing(bye: Request) -> None:
    tx = NonInviteServerTransaction(bye, UDP)
    actions = tx.start(T0)
    assert actions and delivered(actions) == [bye]
    assert sends(actions) == [] and started(actions) == {}
    assert tx.state is State.TRYING


def test_trying_absorbs_retransmissions(tx: NonInviteServerTransaction) -> None:
    assert tx.on_request(request("BYE", to_tag="tt1", cseq=2), T0 + 0.5) == []


@pytest.mark.parametrize("code", [100, 180, 183])
def test_no_provisional_responses_rfc_4320(tx: NonInviteServerTransaction, code: int) -> None:
    assert tx.respond(response(tx.request, code), T0 + 0.1) == []
    assert tx.state is State.TRYING


@pytest.mark.parametrize("code", [200, 404, 481, 500])
def test_final_completes_with_timer_j(tx: NonInviteServerTransaction, code: int) -> None:
    final = response(tx.request, code)
    actions = tx.respond(final, T0 + 1)
    assert [s.data for s in sends(actions)] == [bytes(final)]
    assert sends(actions)[0].dest == UDP
    assert started(actions) == {TIMER_J: T0 + 1 + 32.0}
    assert tx.state is State.COMPLETED


def test_completed_resends_the_final_for_each_retransmission(tx: NonInviteServerTransaction) -> None:
    original = tx.request
    ok = response(original, 200)
    tx.respond(ok, T0 + 1)
    assert tx.request is RELEASED_REQUEST  # Completed keeps the response bytes, not the request
    for t in (1.5, 2.5, 4.5):
        assert [s.data for s in sends(tx.on_request(request("BYE", to_tag="tt1", cseq=2), T0 + t))] == [
            bytes(ok)
        ]
    assert tx.respond(response(original, 500), T0 + 5) == []  # one final only
    assert terminated(tx.on_timer(TIMER_J, T0 + 33)) == "done"
    assert tx.state is State.TERMINATED


def test_408_is_never_sent_rfc_4320(tx: NonInviteServerTransaction) -> None:
    actions = tx.respond(response(tx.request, 408), T0 + 1)
    assert sends(actions) == []
    assert started(actions) == {TIMER_J: T0 + 33.0}
    assert tx.state is State.COMPLETED
    assert tx.on_request(request("BYE", to_tag="tt1", cseq=2), T0 + 2) == []  # stays quiet


def test_reliable_final_terminates_at_once(bye: Request) -> None:
    tx = NonInviteServerTransaction(bye, TCP)
    tx.start(T0)
    actions = tx.respond(response(bye, 200), T0 + 1)
    assert codes(sent(actions)) == [200]
    assert started(actions) == {}
    assert terminated(actions) == "done"


@pytest.mark.parametrize("answered", [False, True])
def test_transport_error_ends_the_transaction(tx: NonInviteServerTransaction, answered: bool) -> None:
    if answered:
        tx.respond(response(tx.request, 200), T0 + 1)
    actions = tx.on_transport_error(T0 + 2)
    assert terminated(actions) == "transport-error"
    assert tx.timers == {}
    assert tx.on_request(request("BYE", to_tag="tt1", cseq=2), T0 + 3) == []
