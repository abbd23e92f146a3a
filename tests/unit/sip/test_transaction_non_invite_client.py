"""Non-INVITE client transaction: RFC 3261 Figure 6 (RFC 4320: a timeout is not a 408)."""

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
    started,
    stopped,
    terminated,
)
from vpbx.sip.message import Request
from vpbx.sip.transaction import TIMER_E, TIMER_F, TIMER_K, NonInviteClientTransaction, State


@pytest.fixture
def options() -> Request:
    return request("OPTIONS")


@pytest.fixture
def tx(options: Request) -> NonInviteClientTransaction:
    tx = NonInviteClientTransaction(options, UDP)
    tx.start(T0)
    return tx


def retransmissions(tx: NonInviteClientTransaction, until: float) -> list[float]:
    """Fire Timer E until ``until`` and return the offsets of each retransmission."""
    times = []
    while TIMER_E in tx.timers and tx.timers[TIMER_E] < until:
        at = tx.timers[TIMER_E]
        assert [s.data for s in sends(tx.on_timer(TIMER_E, at))] == [bytes(tx.request)]
        times.append(at - T0)
    return times


def test_start_sends_and_arms_e_and_f(options: Request) -> None:
    tx = NonInviteClientTransaction(options, UDP)
    actions = tx.start(T0)
    assert [s.data for s in sends(actions)] == [bytes(options)]
    assert started(actions) == {TIMER_E: T0 + 0.5, TIMER_F: T0 + 32.0}
    assert tx.state is State.TRYING


def test_reliable_transport_arms_only_f(options: Request) -> None:
    assert started(NonInviteClientTransaction(options, TCP).start(T0)) == {TIMER_F: T0 + 32.0}


def test_timer_e_doubles_to_t2_then_timer_f_times_out_without_408(tx: NonInviteClientTransaction) -> None:
    # RFC 3261 §17.1.2.2: E = T1, 2·T1, 4·T1, then T2 (4 s) each time.
    assert retransmissions(tx, T0 + 32.0) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    actions = tx.on_timer(TIMER_F, T0 + 32.0)
    assert delivered(actions) == []  # RFC 4320: the TU learns it from the reason
    assert stopped(actions) == {TIMER_E}
    assert terminated(actions) == "timeout"


def test_proceeding_retransmits_every_t2(tx: NonInviteClientTransaction) -> None:
    tx.on_timer(TIMER_E, T0 + 0.5)  # next E at +1.5 with interval 1
    trying = response(tx.request, 100)
    actions = tx.on_response(trying, T0 + 1)
    assert delivered(actions) == [trying]
    assert stopped(actions) == set()  # E and F keep running
    assert tx.state is State.PROCEEDING
    assert retransmissions(tx, T0 + 14) == [1.5, 5.5, 9.5, 13.5]


def test_more_provisionals_in_proceeding_reach_the_tu(tx: NonInviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 100), T0 + 0.1)
    second = response(tx.request, 180)
    assert delivered(tx.on_response(second, T0 + 0.2)) == [second]


@pytest.mark.parametrize("provisional_first", [False, True])
@pytest.mark.parametrize("code", [200, 404, 408, 503])
def test_final_completes_with_timer_k(
    tx: NonInviteClientTransaction, provisional_first: bool, code: int
) -> None:
    if provisional_first:
        tx.on_response(response(tx.request, 100), T0 + 0.1)
    final = response(tx.request, code)
    actions = tx.on_response(final, T0 + 1)
    assert delivered(actions) == [final]
    assert stopped(actions) == {TIMER_E, TIMER_F}
    assert started(actions) == {TIMER_K: T0 + 1 + 5.0}
    assert tx.state is State.COMPLETED


def test_completed_absorbs_retransmitted_responses_until_k(tx: NonInviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 200), T0 + 1)
    assert tx.on_response(response(tx.request, 200), T0 + 2) == []
    assert tx.on_response(response(tx.request, 100), T0 + 2) == []
    assert tx.on_timer(TIMER_E, T0 + 2) == []  # stale
    actions = tx.on_timer(TIMER_K, T0 + 6)
    assert terminated(actions) == "done"
    assert tx.state is State.TERMINATED


def test_reliable_final_terminates_at_once(options: Request) -> None:
    tx = NonInviteClientTransaction(options, TCP)
    tx.start(T0)
    actions = tx.on_response(response(options, 200), T0 + 1)
    assert codes(delivered(actions)) == [200]
    assert stopped(actions) == {TIMER_F}
    assert terminated(actions) == "done"


@pytest.mark.parametrize("provisional_first", [False, True])
def test_transport_error_before_the_final_gives_a_503(
    tx: NonInviteClientTransaction, provisional_first: bool
) -> None:
    if provisional_first:
        tx.on_response(response(tx.request, 100), T0 + 0.1)
    actions = tx.on_transport_error(T0 + 1)
    (synthetic,) = delivered(actions)
    assert codes([synthetic]) == [503]
    assert str(synthetic.cseq) == "1 OPTIONS" and synthetic.call_id == tx.request.call_id
    assert stopped(actions) == {TIMER_E, TIMER_F}
    assert terminated(actions) == "transport-error"


def test_transport_error_in_completed_just_ends(tx: NonInviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 200), T0 + 1)
    actions = tx.on_transport_error(T0 + 2)
    assert delivered(actions) == []
    assert terminated(actions) == "transport-error"
    assert tx.on_transport_error(T0 + 3) == []
