"""TransactionTable: matching (RFC 3261 §17.1.3, §17.2.3), creation, routing, removal and the size cap."""

from __future__ import annotations

import pytest

from tests.unit.sip.transaction_kit import (
    T0,
    UDP,
    ack_for_2xx,
    ack_for_final,
    codes,
    delivered,
    request,
    response,
    sends,
    sent,
    terminated,
)
from vpbx.errors import ConfigError, TransactionError
from vpbx.sip.flow import Destination
from vpbx.sip.message import Request
from vpbx.sip.transaction import (
    TIMER_B,
    TIMER_CANCEL,
    TIMER_H,
    TIMER_J,
    TIMER_L,
    Action,
    Deliver,
    InviteClientTransaction,
    NonInviteServerTransaction,
    Output,
    Refuse,
    StartTimer,
    State,
    TimerConfig,
    TransactionKey,
    TransactionTable,
    client_key,
    server_key,
)


def actions(outputs: list[Output]) -> list[Action]:
    return [a for _, a in outputs]


def only_key(outputs: list[Output]) -> TransactionKey:
    """The one transaction all ``outputs`` belong to."""
    keys = {k for k, _ in outputs}
    assert len(keys) == 1
    key = keys.pop()
    assert key is not None
    return key


# --- keys ---


def test_server_key_is_branch_sent_by_and_method_with_ack_as_invite() -> None:
    invite = server_key(request("INVITE", via_host="PC33.Example.COM", via_port=None))
    assert invite == TransactionKey("server", "z9hG4bK-1", "pc33.example.com:5060", "INVITE")
    assert server_key(request("ACK", via_host="pc33.example.com", via_port=5060)) == invite
    cancel = server_key(request("CANCEL"))
    assert cancel is not None and cancel.method == "CANCEL" and cancel.branch == "z9hG4bK-1"


def test_sent_by_default_port_follows_the_transport() -> None:
    key = server_key(request("OPTIONS", transport="TLS", via_port=None))
    assert key is not None and key.sent_by == "192.0.2.20:5061"


def test_rfc_2543_requests_get_the_legacy_key() -> None:
    invite = request("INVITE", branch=None)
    key = server_key(invite)
    assert key is not None and key.sent_by == "" and key.branch.startswith("rfc2543")
    assert server_key(request("INVITE", branch="1234")) == server_key(request("INVITE", branch="1234"))
    assert server_key(request("ACK", branch=None, to_tag="ours")) == key  # the To tag is left out
    assert server_key(request("INVITE", branch=None, from_tag="other")) != key
    assert server_key(request("INVITE", branch=None, cseq=2)) != key
    assert server_key(request("INVITE", branch=None, uri="sip:202@pbx.example.com")) != key
    cancel = server_key(request("CANCEL", branch=None))
    assert cancel is not None and cancel.method == "CANCEL" and cancel.branch == key.branch


def test_client_key_uses_the_cseq_method_of_responses() -> None:
    invite = request("INVITE")
    assert client_key(invite) == TransactionKey("client", "z9hG4bK-1", "", "INVITE")
    assert client_key(response(invite, 200)) == client_key(invite)
    assert client_key(response(invite, 200, method="CANCEL")) == TransactionKey(
        "client", "z9hG4bK-1", "", "CANCEL"
    )
    assert client_key(response(request("INVITE", branch=None), 200)) is None


def test_unusable_messages_have_no_key() -> None:
    no_via = request("INVITE")
    no_via.headers.remove("Via")
    assert server_key(no_via) is None and client_key(no_via) is None
    bad_cseq = request("INVITE", branch=None)
    bad_cseq.headers.set("CSeq", "x INVITE")
    assert server_key(bad_cseq) is None


# --- server side ---


def test_new_invite_creates_a_server_transaction_with_100_trying() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    out = table.on_request(invite, UDP, T0)
    key = only_key(out)
    assert key == server_key(invite)
    assert codes(sent(actions(out))) == [100]
    assert delivered(actions(out)) == [invite]
    assert len(table) == 1 and key in table and table.state(key) is State.PROCEEDING


def test_retransmission_matches_and_is_not_delivered_again() -> None:
    table = TransactionTable()
    table.on_request(request("OPTIONS"), UDP, T0)
    assert table.on_request(request("OPTIONS"), UDP, T0 + 0.5) == []
    assert len(table) == 1


def test_same_branch_from_another_sent_by_is_another_transaction() -> None:
    table = TransactionTable()
    table.on_request(request("OPTIONS"), UDP, T0)
    out = table.on_request(request("OPTIONS", via_host="198.51.100.7"), UDP, T0)
    assert len(delivered(actions(out))) == 1
    assert len(table) == 2


def test_ack_of_a_non_2xx_final_matches_its_invite() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    key = only_key(table.on_request(invite, UDP, T0))
    busy = response(invite, 486)
    out = table.respond(key, busy, T0 + 1)
    assert codes(sent(actions(out))) == [486]
    assert table.state(key) is State.COMPLETED
    out = table.on_request(ack_for_final(invite, busy), UDP, T0 + 1.1)
    assert delivered(actions(out)) == []
    assert table.state(key) is State.CONFIRMED


def test_ack_of_a_2xx_goes_to_the_tu_outside_any_transaction() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    key = only_key(table.on_request(invite, UDP, T0))
    ok = response(invite, 200)
    table.respond(key, ok, T0 + 1)
    ack = ack_for_2xx(invite, ok)
    assert table.on_request(ack, UDP, T0 + 1.1) == [(None, Deliver(ack))]
    assert table.on_request(request("INVITE"), UDP, T0 + 1.2) == []  # Accepted absorbs the retransmission
    assert len(table) == 1


def test_cancel_is_its_own_transaction_and_finds_its_invite() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    invite_key = only_key(table.on_request(invite, UDP, T0))
    cancel = request("CANCEL")
    out = table.on_request(cancel, UDP, T0 + 1)
    cancel_key = only_key(out)
    assert cancel_key != invite_key
    assert delivered(actions(out)) == [cancel]
    assert table.state(invite_key) is State.PROCEEDING  # untouched until the TU answers
    assert table.cancel_target(cancel) == invite_key
    assert isinstance(table.get(cancel_key), NonInviteServerTransaction)
    # The UAS core answers both: 200 to the CANCEL, 487 to the INVITE (RFC 3261 §9.2).
    assert codes(sent(actions(table.respond(cancel_key, response(cancel, 200), T0 + 1)))) == [200]
    assert codes(sent(actions(table.respond(invite_key, response(invite, 487), T0 + 1)))) == [487]


def test_cancel_without_its_invite_has_no_target() -> None:
    table = TransactionTable()
    cancel = request("CANCEL", branch="z9hG4bK-nothing")
    table.on_request(cancel, UDP, T0)
    assert table.cancel_target(cancel) is None
    table.on_request(request("OPTIONS", branch="z9hG4bK-opt"), UDP, T0)
    assert table.cancel_target(request("CANCEL", branch="z9hG4bK-opt")) is None  # only INVITEs are cancelled


def test_legacy_cancel_finds_a_legacy_invite() -> None:
    table = TransactionTable()
    invite_key = only_key(table.on_request(request("INVITE", branch=None), UDP, T0))
    assert table.cancel_target(request("CANCEL", branch=None)) == invite_key


def test_terminated_transactions_leave_the_table() -> None:
    table = TransactionTable()
    bye = request("BYE", to_tag="tt1")
    key = only_key(table.on_request(bye, UDP, T0))
    out = table.respond(key, response(bye, 200), T0 + 1)
    assert StartTimer(TIMER_J, T0 + 33) in actions(out)
    out = table.on_timer(key, TIMER_J, T0 + 33)
    assert terminated(actions(out)) == "done"
    assert len(table) == 0 and table.state(key) is None
    assert table.on_timer(key, TIMER_J, T0 + 33) == []
    assert table.respond(key, response(bye, 200), T0 + 34) == []
    # A late retransmission is a new request again.
    assert delivered(actions(table.on_request(request("BYE", to_tag="tt1"), UDP, T0 + 40))) != []


def test_server_over_a_reliable_flow_ends_when_answered() -> None:
    table = TransactionTable()
    tcp = Destination("tcp", "192.0.2.20", 40000, conn_id=3)
    register = request("REGISTER", transport="TCP")
    key = only_key(table.on_request(register, tcp, T0))
    out = table.respond(key, response(register, 200), T0)
    assert [s.dest for s in sends(actions(out))] == [tcp]
    assert len(table) == 0


def test_invite_without_ack_ends_on_timer_h() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    key = only_key(table.on_request(invite, UDP, T0))
    table.respond(key, response(invite, 404), T0)
    assert terminated(actions(table.on_timer(key, TIMER_H, T0 + 32))) == "timeout"
    assert len(table) == 0


def test_accepted_ends_on_timer_l() -> None:
    table = TransactionTable()
    invite = request("INVITE")
    key = only_key(table.on_request(invite, UDP, T0))
    table.respond(key, response(invite, 200), T0)
    assert terminated(actions(table.on_timer(key, TIMER_L, T0 + 32))) == "done"
    assert len(table) == 0


def test_server_transport_error_removes_it() -> None:
    table = TransactionTable()
    key = only_key(table.on_request(request("OPTIONS"), UDP, T0))
    assert terminated(actions(table.on_transport_error(key, T0 + 1))) == "transport-error"
    assert len(table) == 0
    assert table.on_transport_error(key, T0 + 1) == []


def test_unusable_request_is_dropped() -> None:
    no_via = request("INVITE")
    no_via.headers.remove("Via")
    table = TransactionTable()
    assert table.on_request(no_via, UDP, T0) == []
    assert len(table) == 0


# --- client side ---


def test_client_transaction_routes_responses_by_branch_and_cseq_method() -> None:
    table = TransactionTable()
    invite = request("INVITE", branch="z9hG4bK-out")
    out = table.send_request(invite, UDP, T0)
    key = only_key(out)
    assert key == client_key(invite)
    assert [s.data for s in sends(actions(out))] == [bytes(invite)]
    ringing = response(invite, 180)
    assert delivered(actions(table.on_response(ringing, T0 + 0.3))) == [ringing]
    assert table.state(key) is State.PROCEEDING


def test_cancel_gets_its_own_client_transaction_and_arms_the_guard() -> None:
    table = TransactionTable()
    invite = request("INVITE", branch="z9hG4bK-out")
    invite_key = only_key(table.send_request(invite, UDP, T0))
    table.on_response(response(invite, 180), T0 + 0.3)
    cancel = request("CANCEL", branch="z9hG4bK-out")
    out = table.send_request(cancel, UDP, T0 + 5)
    assert (invite_key, StartTimer(TIMER_CANCEL, T0 + 37)) in out
    cancel_key = client_key(cancel)
    assert cancel_key is not None and cancel_key in table and len(table) == 2
    # 200 to the CANCEL goes to the CANCEL transaction, 487 to the INVITE one.
    out = table.on_response(response(cancel, 200), T0 + 5.1)
    assert only_key(out) == cancel_key and codes(delivered(actions(out))) == [200]
    out = table.on_response(response(invite, 487), T0 + 5.2)
    assert {k for k, _ in out} == {invite_key}
    assert codes(delivered(actions(out))) == [487]
    (ack,) = sent(actions(out))
    assert isinstance(ack, Request) and ack.method == "ACK"


def test_stray_responses_are_dropped() -> None:
    table = TransactionTable()
    table.send_request(request("INVITE", branch="z9hG4bK-out"), UDP, T0)
    assert table.on_response(response(request("INVITE", branch="z9hG4bK-unknown"), 200), T0) == []
    other_method = response(request("INVITE", branch="z9hG4bK-out"), 200, method="BYE")
    assert table.on_response(other_method, T0) == []
    broken = response(request("INVITE", branch="z9hG4bK-out"), 200)
    broken.headers.remove("Via")
    assert table.on_response(broken, T0) == []


def test_client_timeout_reaches_the_tu_and_clears_the_table() -> None:
    table = TransactionTable()
    invite = request("INVITE", branch="z9hG4bK-out")
    key = only_key(table.send_request(invite, UDP, T0))
    out = table.on_timer(key, TIMER_B, T0 + 32)
    assert codes(delivered(actions(out))) == [408]
    assert len(table) == 0
    assert table.on_response(response(invite, 200), T0 + 33) == []  # now a stray


def test_client_transport_error_delivers_503() -> None:
    table = TransactionTable()
    key = only_key(table.send_request(request("OPTIONS", branch="z9hG4bK-out"), UDP, T0))
    assert codes(delivered(actions(table.on_transport_error(key, T0 + 0.1)))) == [503]
    assert len(table) == 0


def test_client_and_server_transactions_with_one_branch_do_not_collide() -> None:
    table = TransactionTable()
    table.send_request(request("OPTIONS"), UDP, T0)
    out = table.on_request(request("OPTIONS"), UDP, T0)  # our own request looped back to us
    assert len(delivered(actions(out))) == 1
    assert len(table) == 2


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (request("ACK", branch="z9hG4bK-a"), "outside transactions"),
        (request("OPTIONS", branch=None), "z9hG4bK"),
        (request("OPTIONS", branch="old-style"), "z9hG4bK"),
    ],
)
def test_send_request_refuses_misuse(req: Request, message: str) -> None:
    with pytest.raises(TransactionError, match=message):
        TransactionTable().send_request(req, UDP, T0)


def test_send_request_refuses_a_reused_branch() -> None:
    table = TransactionTable()
    table.send_request(request("OPTIONS", branch="z9hG4bK-x"), UDP, T0)
    with pytest.raises(TransactionError) as err:
        table.send_request(request("OPTIONS", branch="z9hG4bK-x"), UDP, T0)
    assert err.value.code == "sip-transaction"


# --- size cap ---


def test_full_table_refuses_new_server_transactions_but_serves_existing_ones() -> None:
    table = TransactionTable(max_transactions=1)
    invite = request("INVITE")
    table.on_request(invite, UDP, T0)
    second = request("INVITE", branch="z9hG4bK-2")
    out = table.on_request(second, UDP, T0)
    assert out == [(server_key(second), Refuse(second, UDP))]
    assert len(table) == 1
    assert codes(sent(actions(table.on_request(request("INVITE"), UDP, T0 + 0.5)))) == [100]
    ack = request("ACK", branch="z9hG4bK-ack")
    assert table.on_request(ack, UDP, T0) == [(None, Deliver(ack))]


def test_full_table_gives_the_tu_a_503_for_new_client_transactions() -> None:
    table = TransactionTable(max_transactions=1)
    table.on_request(request("INVITE"), UDP, T0)
    opts = request("OPTIONS", branch="z9hG4bK-out")
    out = table.send_request(opts, UDP, T0)
    assert only_key(out) == client_key(opts)
    assert codes(delivered(actions(out))) == [503]
    assert sends(actions(out)) == []
    assert len(table) == 1


# --- timer configuration ---


def test_timer_config_derives_every_timer() -> None:
    cfg = TimerConfig(t1=1.0, t2=8.0, t4=10.0)
    assert cfg.timeout == 64.0
    assert (cfg.timer_d(False), cfg.timer_d(True)) == (32.0, 0.0)
    assert (cfg.timer_i(False), cfg.timer_i(True)) == (10.0, 0.0)
    assert (cfg.timer_j(False), cfg.timer_j(True)) == (64.0, 0.0)
    assert (cfg.timer_k(False), cfg.timer_k(True)) == (10.0, 0.0)


@pytest.mark.parametrize(("t1", "t2", "t4"), [(0, 4, 5), (5, 4, 5), (0.5, 4, 0), (-1, 4, 5)])
def test_timer_config_refuses_nonsense(t1: float, t2: float, t4: float) -> None:
    with pytest.raises(ConfigError):
        TimerConfig(t1=t1, t2=t2, t4=t4)


def test_table_uses_its_timer_config() -> None:
    table = TransactionTable(TimerConfig(t1=0.25, t2=2.0, t4=2.5))
    out = table.send_request(request("INVITE", branch="z9hG4bK-out"), UDP, T0)
    tx = table.get(only_key(out))
    assert isinstance(tx, InviteClientTransaction)
    assert tx.timers[TIMER_B] == T0 + 16.0
