"""INVITE client transaction: RFC 3261 Figure 5 with RFC 6026 §8.4 (Accepted, Timer M)."""

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
    stopped,
    terminated,
)
from vpbx.sip.message import Request, Response
from vpbx.sip.transaction import (
    TIMER_A,
    TIMER_B,
    TIMER_CANCEL,
    TIMER_D,
    TIMER_M,
    InviteClientTransaction,
    State,
    StopTimer,
    TimerConfig,
)


@pytest.fixture
def invite() -> Request:
    return request("INVITE", routes=["<sip:proxy.example.com;lr>"])


@pytest.fixture
def tx(invite: Request) -> InviteClientTransaction:
    tx = InviteClientTransaction(invite, UDP)
    tx.start(T0)
    return tx


def proceeding(tx: InviteClientTransaction) -> InviteClientTransaction:
    tx.on_response(response(tx.request, 180), T0 + 0.1)
    assert tx.state is State.PROCEEDING
    return tx


def test_start_sends_the_invite_and_arms_a_and_b(invite: Request) -> None:
    tx = InviteClientTransaction(invite, UDP)
    actions = tx.start(T0)
    assert [s.data for s in sends(actions)] == [bytes(invite)]
    assert sends(actions)[0].dest == UDP
    assert started(actions) == {TIMER_A: T0 + 0.5, TIMER_B: T0 + 32.0}
    assert tx.state is State.CALLING


def test_reliable_transport_does_not_retransmit(invite: Request) -> None:
    tx = InviteClientTransaction(invite, TCP)
    assert started(tx.start(T0)) == {TIMER_B: T0 + 32.0}


def test_timer_a_doubles_without_cap_until_timer_b_gives_a_408(tx: InviteClientTransaction) -> None:
    # RFC 3261 §17.1.1.2: A = T1, 2·T1, 4·T1, … (no T2 cap for INVITE); B = 64·T1 ends it.
    retransmitted_at = []
    while TIMER_A in tx.timers and tx.timers[TIMER_A] < tx.timers[TIMER_B]:
        at = tx.timers[TIMER_A]
        actions = tx.on_timer(TIMER_A, at)
        assert [s.data for s in sends(actions)] == [bytes(tx.request)]
        retransmitted_at.append(at - T0)
    assert retransmitted_at == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert tx.timers[TIMER_A] - retransmitted_at[-1] - T0 == 32.0  # interval 32 s, past T2 = 4 s

    actions = tx.on_timer(TIMER_B, T0 + 32.0)
    (timeout,) = delivered(actions)
    assert isinstance(timeout, Response) and timeout.code == 408
    assert timeout.call_id == tx.request.call_id and str(timeout.cseq) == "1 INVITE"
    assert stopped(actions) == {TIMER_A}
    assert terminated(actions) == "timeout"
    assert tx.state is State.TERMINATED
    assert tx.on_timer(TIMER_A, T0 + 63.5) == []


def test_custom_t1_scales_a_and_b(invite: Request) -> None:
    tx = InviteClientTransaction(invite, UDP, TimerConfig(t1=0.25, t2=2.0, t4=2.5))
    assert started(tx.start(T0)) == {TIMER_A: T0 + 0.25, TIMER_B: T0 + 16.0}


def test_provisional_in_calling_moves_to_proceeding_and_stops_retransmits(
    tx: InviteClientTransaction,
) -> None:
    ringing = response(tx.request, 180)
    actions = tx.on_response(ringing, T0 + 0.2)
    assert delivered(actions) == [ringing]
    assert stopped(actions) == {TIMER_A, TIMER_B}
    assert sends(actions) == []
    assert tx.state is State.PROCEEDING
    assert tx.on_timer(TIMER_A, T0 + 0.5) == []  # a stale firing does nothing
    assert tx.on_timer(TIMER_B, T0 + 32.0) == []  # no Timer B in Proceeding (Figure 5)


def test_more_provisionals_in_proceeding_reach_the_tu(tx: InviteClientTransaction) -> None:
    proceeding(tx)
    progress = response(tx.request, 183)
    assert delivered(tx.on_response(progress, T0 + 1)) == [progress]
    assert tx.state is State.PROCEEDING


@pytest.mark.parametrize("ring_first", [False, True])
def test_2xx_enters_accepted_with_timer_m_and_no_ack(tx: InviteClientTransaction, ring_first: bool) -> None:
    if ring_first:
        proceeding(tx)
    ok = response(tx.request, 200)
    actions = tx.on_response(ok, T0 + 2)
    assert delivered(actions) == [ok]
    assert sends(actions) == []  # the 2xx ACK is the TU's job (§13.2.2.4)
    assert started(actions) == {TIMER_M: T0 + 2 + 32.0}
    assert tx.state is State.ACCEPTED
    assert tx.timers == {TIMER_M: T0 + 34.0}


def test_accepted_hands_2xx_retransmissions_and_forks_to_the_tu(tx: InviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 200), T0 + 2)
    again = response(tx.request, 200)
    fork = response(tx.request, 200, to_tag="other-fork")
    assert delivered(tx.on_response(again, T0 + 2.5)) == [again]
    assert delivered(tx.on_response(fork, T0 + 3)) == [fork]
    assert tx.on_response(response(tx.request, 180), T0 + 3) == []
    assert tx.on_response(response(tx.request, 486), T0 + 3) == []  # a late failure is stray now
    actions = tx.on_timer(TIMER_M, T0 + 34)
    assert terminated(actions) == "done"
    assert tx.state is State.TERMINATED
    assert tx.on_response(again, T0 + 35) == []


@pytest.mark.parametrize("ring_first", [False, True])
def test_non_2xx_final_is_acked_by_the_transaction(tx: InviteClientTransaction, ring_first: bool) -> None:
    if ring_first:
        proceeding(tx)
    busy = response(tx.request, 486, to_tag="busy-tag")
    actions = tx.on_response(busy, T0 + 3)
    assert delivered(actions) == [busy]
    assert started(actions) == {TIMER_D: T0 + 3 + 32.0}
    assert tx.state is State.COMPLETED
    (ack,) = sent(actions)
    assert isinstance(ack, Request)
    # RFC 3261 §17.1.1.3: same Request-URI, Call-ID, From, CSeq number; To of the response; one Via equal to
    # the INVITE's top Via; the INVITE's Route set; no body.
    assert ack.method == "ACK"
    assert str(ack.uri) == str(tx.request.uri)
    assert ack.headers.getlist("Via") == tx.request.headers.getlist("Via")
    assert ack.headers["To"] == busy.headers["To"] and "tag=busy-tag" in ack.headers["To"]
    assert ack.headers["From"] == tx.request.headers["From"]
    assert ack.call_id == tx.request.call_id
    assert str(ack.cseq) == "1 ACK"
    assert ack.headers.getlist("Route") == ["<sip:proxy.example.com;lr>"]
    assert ack.headers["Max-Forwards"] == "70"
    assert ack.headers["Content-Length"] == "0" and ack.body == b""
    assert sends(actions)[0].dest == UDP


def test_completed_re_acks_retransmitted_finals_and_tells_nobody(tx: InviteClientTransaction) -> None:
    first = tx.on_response(response(tx.request, 486), T0 + 3)
    again = tx.on_response(response(tx.request, 486), T0 + 4)
    assert delivered(again) == []
    assert [s.data for s in sends(again)] == [s.data for s in sends(first)]
    assert tx.on_response(response(tx.request, 200), T0 + 4) == []
    assert tx.on_response(response(tx.request, 180), T0 + 4) == []
    actions = tx.on_timer(TIMER_D, T0 + 35)
    assert terminated(actions) == "done"


def test_ack_carries_only_the_top_via_of_a_combined_header() -> None:
    invite = request(
        via="SIP/2.0/UDP 192.0.2.20;branch=z9hG4bK-top, SIP/2.0/UDP 198.51.100.1;branch=z9hG4bK-b"
    )
    tx = InviteClientTransaction(invite, UDP)
    tx.start(T0)
    (ack,) = sent(tx.on_response(response(invite, 404), T0 + 1))
    assert ack.headers.getlist("Via") == ["SIP/2.0/UDP 192.0.2.20;branch=z9hG4bK-top"]


def test_reliable_non_2xx_terminates_at_once(invite: Request) -> None:
    tx = InviteClientTransaction(invite, TCP)
    tx.start(T0)
    actions = tx.on_response(response(invite, 603), T0 + 1)
    assert len(sends(actions)) == 1  # the ACK
    assert codes(delivered(actions)) == [603]
    assert TIMER_D not in started(actions)
    assert StopTimer(TIMER_B) in actions
    assert terminated(actions) == "done"


def test_reliable_2xx_still_waits_for_timer_m(invite: Request) -> None:
    tx = InviteClientTransaction(invite, TCP)
    tx.start(T0)
    assert started(tx.on_response(response(invite, 200), T0 + 1)) == {TIMER_M: T0 + 33.0}


@pytest.mark.parametrize("ring_first", [False, True])
def test_transport_error_before_a_final_gives_a_503(tx: InviteClientTransaction, ring_first: bool) -> None:
    if ring_first:
        proceeding(tx)
    actions = tx.on_transport_error(T0 + 1)
    assert codes(delivered(actions)) == [503]  # RFC 3261 §8.1.3.1
    assert terminated(actions) == "transport-error"
    assert tx.timers == {}


def test_transport_error_in_completed_ends_without_a_second_final(tx: InviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 486), T0 + 1)
    actions = tx.on_transport_error(T0 + 1)
    assert delivered(actions) == []
    assert stopped(actions) == {TIMER_D}
    assert terminated(actions) == "transport-error"


def test_transport_error_in_accepted_is_ignored(tx: InviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 200), T0 + 1)
    assert tx.on_transport_error(T0 + 2) == []
    assert tx.state is State.ACCEPTED


def test_cancel_guard_gives_up_64_t1_after_the_cancel(tx: InviteClientTransaction) -> None:
    proceeding(tx)
    actions = tx.cancel_sent(T0 + 10)
    assert started(actions) == {TIMER_CANCEL: T0 + 42.0}
    assert tx.cancel_sent(T0 + 11) == []  # armed once
    actions = tx.on_timer(TIMER_CANCEL, T0 + 42)
    assert codes(delivered(actions)) == [408]
    assert terminated(actions) == "timeout"


def test_a_final_after_the_cancel_stops_the_guard(tx: InviteClientTransaction) -> None:
    proceeding(tx)
    tx.cancel_sent(T0 + 10)
    actions = tx.on_response(response(tx.request, 487), T0 + 11)
    assert TIMER_CANCEL in stopped(actions)
    assert codes(delivered(actions)) == [487]
    assert tx.on_timer(TIMER_CANCEL, T0 + 42) == []


def test_cancel_after_the_final_arms_nothing(tx: InviteClientTransaction) -> None:
    tx.on_response(response(tx.request, 486), T0 + 1)
    assert tx.cancel_sent(T0 + 2) == []


def test_terminated_transaction_ignores_everything(tx: InviteClientTransaction) -> None:
    tx.on_transport_error(T0 + 1)
    assert tx.on_response(response(tx.request, 200), T0 + 2) == []
    assert tx.on_transport_error(T0 + 2) == []
    assert tx.on_timer(TIMER_B, T0 + 32) == []
    assert tx.cancel_sent(T0 + 3) == []
