"""INVITE server transaction: RFC 3261 Figure 7 with RFC 6026 §8.7 (Accepted, Timer L)."""

from __future__ import annotations

import pytest

from tests.unit.sip.transaction_kit import (
    T0,
    TCP,
    UDP,
    ack_for_2xx,
    ack_for_final,
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
    TIMER_G,
    TIMER_H,
    TIMER_I,
    TIMER_L,
    InviteServerTransaction,
    State,
)


@pytest.fixture
def invite() -> Request:
    inv = request("INVITE")
    inv.headers.add("Timestamp", "54")
    return inv


@pytest.fixture
def tx(invite: Request) -> InviteServerTransaction:
    tx = InviteServerTransaction(invite, UDP)
    tx.start(T0)
    return tx


def completed(tx: InviteServerTransaction, code: int = 486) -> Response:
    final = response(tx.request, code)
    tx.respond(final, T0 + 1)
    assert tx.state is State.COMPLETED
    return final


def test_start_sends_100_trying_at_once_and_passes_the_invite_up(invite: Request) -> None:
    tx = InviteServerTransaction(invite, UDP)
    actions = tx.start(T0)
    (trying,) = sent(actions)
    assert isinstance(trying, Response) and trying.code == 100
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Timestamp"):
        assert trying.headers.getlist(name) == invite.headers.getlist(name)
    assert trying.headers["Content-Length"] == "0"
    assert sends(actions)[0].dest == UDP
    assert delivered(actions) == [invite]
    assert started(actions) == {}
    assert tx.state is State.PROCEEDING


def test_retransmitted_invite_in_proceeding_gets_the_latest_provisional(tx: InviteServerTransaction) -> None:
    assert codes(sent(tx.on_request(request("INVITE"), T0 + 0.5))) == [100]
    ringing = response(tx.request, 180)
    assert codes(sent(tx.respond(ringing, T0 + 0.6))) == [180]
    actions = tx.on_request(request("INVITE"), T0 + 1.5)
    assert [s.data for s in sends(actions)] == [bytes(ringing)]
    assert delivered(actions) == []  # never a second call
    assert tx.state is State.PROCEEDING


def test_2xx_from_the_tu_enters_accepted_with_timer_l(tx: InviteServerTransaction) -> None:
    ok = response(tx.request, 200)
    actions = tx.respond(ok, T0 + 3)
    assert [s.data for s in sends(actions)] == [bytes(ok)]
    assert started(actions) == {TIMER_L: T0 + 3 + 32.0}
    assert tx.state is State.ACCEPTED


def test_accepted_absorbs_invite_retransmissions_and_passes_acks_up(tx: InviteServerTransaction) -> None:
    ok = response(tx.request, 200)
    tx.respond(ok, T0 + 3)
    assert tx.on_request(request("INVITE"), T0 + 3.5) == []  # RFC 6026: no second call, no resend
    ack = ack_for_2xx(tx.request, ok, branch="z9hG4bK-1")  # an ACK that matches this transaction
    assert delivered(tx.on_request(ack, T0 + 4)) == [ack]
    # The UAS core retransmits its 2xx through the transaction; anything else is refused.
    assert [s.data for s in sends(tx.respond(ok, T0 + 3.5))] == [bytes(ok)]
    assert tx.respond(response(tx.request, 500), T0 + 4) == []
    assert tx.respond(response(tx.request, 180), T0 + 4) == []
    actions = tx.on_timer(TIMER_L, T0 + 35)
    assert terminated(actions) == "done"
    assert tx.state is State.TERMINATED


def test_reliable_2xx_still_waits_for_timer_l(invite: Request) -> None:
    tx = InviteServerTransaction(invite, TCP)
    tx.start(T0)
    assert started(tx.respond(response(invite, 200), T0 + 1)) == {TIMER_L: T0 + 33.0}


def test_non_2xx_final_arms_g_and_h(tx: InviteServerTransaction) -> None:
    busy = response(tx.request, 486)
    actions = tx.respond(busy, T0 + 1)
    assert [s.data for s in sends(actions)] == [bytes(busy)]
    assert started(actions) == {TIMER_G: T0 + 1.5, TIMER_H: T0 + 33.0}
    assert tx.state is State.COMPLETED


def test_timer_g_doubles_to_t2_and_timer_h_ends_without_ack(tx: InviteServerTransaction) -> None:
    busy = completed(tx)
    offsets = []
    while tx.timers[TIMER_G] < tx.timers[TIMER_H]:
        at = tx.timers[TIMER_G]
        assert [s.data for s in sends(tx.on_timer(TIMER_G, at))] == [bytes(busy)]
        offsets.append(at - T0 - 1)
    assert offsets == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    actions = tx.on_timer(TIMER_H, T0 + 33)
    assert stopped(actions) == {TIMER_G}
    assert delivered(actions) == []
    assert terminated(actions) == "timeout"


def test_completed_resends_the_final_for_a_retransmitted_invite(tx: InviteServerTransaction) -> None:
    busy = completed(tx)
    actions = tx.on_request(request("INVITE"), T0 + 1.2)
    assert [s.data for s in sends(actions)] == [bytes(busy)]
    assert delivered(actions) == []
    assert tx.respond(response(tx.request, 200), T0 + 1.3) == []  # one final only


def test_ack_confirms_then_timer_i_ends(tx: InviteServerTransaction) -> None:
    busy = completed(tx)
    ack = ack_for_final(tx.request, busy)
    actions = tx.on_request(ack, T0 + 2)
    assert delivered(actions) == []  # the non-2xx ACK belongs to the transaction
    assert stopped(actions) == {TIMER_G, TIMER_H}
    assert started(actions) == {TIMER_I: T0 + 7.0}
    assert tx.state is State.CONFIRMED
    assert tx.on_request(ack, T0 + 3) == []  # absorbed
    assert tx.on_request(request("INVITE"), T0 + 3) == []
    assert terminated(tx.on_timer(TIMER_I, T0 + 7)) == "done"


def test_reliable_completed_has_no_g_and_ack_ends_at_once(invite: Request) -> None:
    tx = InviteServerTransaction(invite, TCP)
    tx.start(T0)
    busy = response(invite, 603)
    assert started(tx.respond(busy, T0 + 1)) == {TIMER_H: T0 + 33.0}
    actions = tx.on_request(ack_for_final(invite, busy), T0 + 2)
    assert stopped(actions) == {TIMER_H}
    assert terminated(actions) == "done"


def test_ack_in_proceeding_is_ignored(tx: InviteServerTransaction) -> None:
    assert tx.on_request(ack_for_final(tx.request, response(tx.request, 486)), T0 + 1) == []
    assert tx.state is State.PROCEEDING


@pytest.mark.parametrize("final", [None, 486])
def test_transport_error_ends_the_transaction(tx: InviteServerTransaction, final: int | None) -> None:
    if final:
        completed(tx, final)
    actions = tx.on_transport_error(T0 + 2)
    assert terminated(actions) == "transport-error"
    assert tx.timers == {}
    assert tx.respond(response(tx.request, 200), T0 + 3) == []


def test_transport_error_in_accepted_keeps_absorbing(tx: InviteServerTransaction) -> None:
    tx.respond(response(tx.request, 200), T0 + 1)
    assert tx.on_transport_error(T0 + 2) == []
    assert tx.state is State.ACCEPTED
    assert tx.on_request(request("INVITE"), T0 + 3) == []
