"""TransactionTable.on_unreachable: an ICMP error for a UDP destination fails its client transactions.

RFC 3261 §18.4: an ICMP "port unreachable" (host, network, protocol unreachable) for a request sent over UDP
is a transport error; the client transaction reports it as a 503 (§8.1.3.1, §17.1.1.2, §17.1.2.2). ICMP is
not authenticated: only the transactions to that exact address and port fail.
"""

from __future__ import annotations

from tests.unit.sip.transaction_kit import T0, UDP, codes, delivered, request, response, terminated
from vpbx.sip.flow import Destination
from vpbx.sip.transaction import (
    TIMER_A,
    TIMER_B,
    Action,
    Deliver,
    Output,
    State,
    StopTimer,
    TransactionKey,
    TransactionTable,
    client_key,
)

DEAD = Destination("udp", "192.0.2.30", 5062)  # the phone that exited
ALIVE = Destination("udp", "192.0.2.31", 5060)


def actions(outputs: list[Output], key: TransactionKey | None = None) -> list[Action]:
    return [a for k, a in outputs if key is None or k == key]


def keys(outputs: list[Output]) -> set[TransactionKey | None]:
    return {k for k, _ in outputs}


def start(table: TransactionTable, method: str, branch: str, dest: Destination) -> TransactionKey:
    out = table.send_request(request(method, branch=branch), dest, T0)
    key = client_key(request(method, branch=branch))
    assert key is not None and key in keys(out)  # a CANCEL also arms its INVITE's guard
    return key


def test_invite_to_the_dead_contact_gets_a_local_503_and_ends() -> None:
    table = TransactionTable()
    dead = start(table, "INVITE", "z9hG4bK-dead", DEAD)
    alive = start(table, "INVITE", "z9hG4bK-alive", ALIVE)
    out = table.on_unreachable("192.0.2.30", 5062, T0 + 0.01)
    assert keys(out) == {dead}  # the fork's other branch is untouched
    got = actions(out)
    assert codes(delivered(got)) == [503]
    assert [a.local for a in got if isinstance(a, Deliver)] == [True]
    assert terminated(got) == "transport-error"
    assert dead not in table and table.state(alive) is State.CALLING
    # its timers are stopped: A and B are both in the actions, nothing fires later
    assert {a.name for a in got if isinstance(a, StopTimer)} == {TIMER_A, TIMER_B}
    assert table.on_timer(dead, TIMER_B, T0 + 32) == []
    assert table.on_response(response(request("INVITE", branch="z9hG4bK-dead"), 200), T0 + 1) == []


def test_only_the_exact_address_and_port_fail() -> None:
    table = TransactionTable()
    dead = start(table, "INVITE", "z9hG4bK-dead", DEAD)
    other_port = start(table, "INVITE", "z9hG4bK-port", Destination("udp", DEAD.host, 5060))
    over_tcp = start(table, "OPTIONS", "z9hG4bK-tcp", Destination("tcp", DEAD.host, DEAD.port))
    assert table.on_unreachable(DEAD.host, 5063, T0) == []
    assert table.on_unreachable("192.0.2.3", DEAD.port, T0) == []
    assert keys(table.on_unreachable(DEAD.host, DEAD.port, T0)) == {dead}
    assert other_port in table and over_tcp in table  # ICMP speaks of UDP datagrams only


def test_server_transactions_from_that_address_are_left_alone() -> None:
    table = TransactionTable()
    incoming = request("INVITE", branch="z9hG4bK-in", via_host=DEAD.host, via_port=DEAD.port)
    out = table.on_request(incoming, DEAD, T0)
    (server,) = keys(out) - {None}
    assert server is not None
    assert table.on_unreachable(DEAD.host, DEAD.port, T0 + 0.1) == []
    assert server in table


def test_non_invite_and_its_invite_both_fail() -> None:
    table = TransactionTable()
    invite = start(table, "INVITE", "z9hG4bK-dead", DEAD)
    table.on_response(response(request("INVITE", branch="z9hG4bK-dead"), 180), T0 + 0.1)
    cancel = start(table, "CANCEL", "z9hG4bK-dead", DEAD)
    options = start(table, "OPTIONS", "z9hG4bK-ping", DEAD)
    out = table.on_unreachable(DEAD.host, DEAD.port, T0 + 1)
    assert keys(out) == {invite, cancel, options}
    for key in (invite, cancel, options):
        assert codes(delivered(actions(out, key))) == [503]
        assert terminated(actions(out, key)) == "transport-error"
    assert len(table) == 0
    assert table.on_unreachable(DEAD.host, DEAD.port, T0 + 2) == []  # a second ICMP finds nothing


def test_answered_and_finished_transactions_are_not_failed_again() -> None:
    table = TransactionTable()
    answered = start(table, "INVITE", "z9hG4bK-ok", DEAD)
    table.on_response(response(request("INVITE", branch="z9hG4bK-ok"), 200), T0 + 0.1)
    assert table.state(answered) is State.ACCEPTED
    done = start(table, "OPTIONS", "z9hG4bK-done", DEAD)
    table.on_response(response(request("OPTIONS", branch="z9hG4bK-done"), 200), T0 + 0.1)
    assert table.state(done) is State.COMPLETED
    out = table.on_unreachable(DEAD.host, DEAD.port, T0 + 0.2)
    # Accepted stays (RFC 6026: the 2xx came); Completed only ends early, with nothing delivered
    assert delivered(actions(out)) == []
    assert keys(out) <= {done}
    assert table.state(answered) is State.ACCEPTED


def test_ended_transactions_leave_the_index() -> None:
    table = TransactionTable()
    key = start(table, "INVITE", "z9hG4bK-gone", DEAD)
    table.on_timer(key, TIMER_B, T0 + 32)
    assert key not in table
    assert table.on_unreachable(DEAD.host, DEAD.port, T0 + 33) == []
    assert table._by_hop == {}


def test_addresses_match_as_the_kernel_reports_them() -> None:
    table = TransactionTable()
    v6 = start(table, "INVITE", "z9hG4bK-v6", Destination("udp", "[2001:DB8:0::7]", 5060))
    v4 = start(table, "INVITE", "z9hG4bK-v4", Destination("udp", "::ffff:192.0.2.9", 5060))
    assert keys(table.on_unreachable("2001:db8::7", 5060, T0)) == {v6}
    assert keys(table.on_unreachable("192.0.2.9", 5060, T0)) == {v4}


def test_timeouts_and_transport_errors_are_local_deliveries() -> None:
    table = TransactionTable()
    key = start(table, "INVITE", "z9hG4bK-slow", UDP)
    timeout = actions(table.on_timer(key, TIMER_B, T0 + 32))
    assert codes(delivered(timeout)) == [408]
    assert [a.local for a in timeout if isinstance(a, Deliver)] == [True]
    key = start(table, "INVITE", "z9hG4bK-peer", UDP)
    peer = actions(table.on_response(response(request("INVITE", branch="z9hG4bK-peer"), 503), T0 + 1))
    assert [a.local for a in peer if isinstance(a, Deliver)] == [False]  # the peer's own 503
