"""Trunk monitor core: REGISTER with digest, OPTIONS health, failover order, reloads (telephony.md §3.2)."""

from __future__ import annotations

import hashlib
import ipaddress
import uuid

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.pbx import trunks
from vpbx.pbx.trunkmon import TrunkInfo, TrunkMonitor
from vpbx.sip import transaction as tx
from vpbx.sip.auth import parse_credentials
from vpbx.sip.flow import Destination
from vpbx.sip.message import Request, Response, build_response, parse, serialize
from vpbx.sip.transaction import TransactionKey
from vpbx.store.models import DomainId

D1 = DomainId(uuid.uuid4())
D2 = DomainId(uuid.uuid4())
CHALLENGE = 'Digest realm="carrier.example", nonce="n0nce", qop="auth", algorithm=MD5, opaque="op"'


class Node:
    """Records what the monitor sends, as the SIP node's client transactions would take it."""

    def __init__(self) -> None:
        self.sent: list[tuple[TransactionKey, Request, Destination]] = []

    def advertised_for(self, transport: str) -> tuple[str, int]:
        return ("198.51.100.1", 5060)

    def send_request(
        self, request: Request, dest: Destination, *, user: TrunkMonitor | None = None
    ) -> TransactionKey:
        key = tx.client_key(request)
        assert key is not None
        self.sent.append((key, request, dest))
        return key

    def take(self, method: str) -> list[tuple[TransactionKey, Request, Destination]]:
        found = [s for s in self.sent if s[1].method == method]
        self.sent = [s for s in self.sent if s[1].method != method]
        return found


def info(**kw: object) -> TrunkInfo:
    base: dict[str, object] = {
        "id": uuid.uuid4(),
        "domain_id": D1,
        "name": "Carrier",
        "kind": "registration",
        "host": "carrier.example",
        "port": 5060,
        "transport": "udp",
        "address": "192.0.2.10",
        "proxy": None,
        "proxy_host": None,
        "username": "74951234567",
        "auth_username": "",
        "password": "right-pass",
        "expires_s": 300,
        "from_user": "",
        "from_domain": "",
        "caller_id_mode": "domain",
        "caller_id_number": None,
        "number_format": "e164",
        "max_calls": 10,
        "priority": 10,
        "enabled": True,
        "networks": (),
    }
    base.update(kw)
    return TrunkInfo(**base)  # type: ignore[arg-type]


def setup(*infos: TrunkInfo) -> tuple[TrunkMonitor, Node, FakeClock]:
    node, clock = Node(), FakeClock()
    monitor = TrunkMonitor(node, None, None, None, clock=clock, options_interval_s=30, retry_s=30)
    monitor.configure(infos)
    return monitor, node, clock


def answer(request: Request, code: int, *headers: tuple[str, str]) -> Response:
    response = parse(serialize(build_response(request, code, to_tag="t", headers=headers)))
    assert isinstance(response, Response)
    return response


def state(monitor: TrunkMonitor, t: TrunkInfo) -> str:
    status = monitor.status(t.id)
    assert status is not None
    return status.state


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def test_register_answers_the_challenge_and_refreshes_at_80_percent() -> None:
    t = info()
    monitor, node, clock = setup(t)
    assert state(monitor, t) == "registering"
    monitor.tick(clock.monotonic())
    [(key, first, dest)] = node.take("REGISTER")
    assert dest == Destination("udp", "192.0.2.10", 5060)
    assert str(first.uri) == "sip:carrier.example"
    assert first.headers.get("Authorization") is None and first.headers["Expires"] == "300"
    assert first.from_address.uri.user == "74951234567"

    monitor.on_response(key, answer(first, 401, ("WWW-Authenticate", CHALLENGE)))
    [(key2, second, _)] = node.take("REGISTER")
    assert second.call_id == first.call_id and second.cseq.sequence == first.cseq.sequence + 1
    creds = parse_credentials(second.headers["Authorization"])
    assert creds is not None
    assert (creds["username"], creds["realm"], creds["uri"], creds["opaque"]) == (
        "74951234567",
        "carrier.example",
        "sip:carrier.example",
        "op",
    )
    ha1 = md5("74951234567:carrier.example:right-pass")
    ha2 = md5("REGISTER:sip:carrier.example")
    expected = md5(f"{ha1}:n0nce:{creds['nc']}:{creds['cnonce']}:auth:{ha2}")
    assert creds["response"] == expected

    contact = f"{second.headers['Contact']};expires=120"
    monitor.on_response(key2, answer(second, 200, ("Contact", contact)))
    assert state(monitor, t) == "registered"
    clock.advance(95)
    monitor.tick(clock.monotonic())
    assert node.take("REGISTER") == []
    clock.advance(2)  # past 0.8 × 120 s
    monitor.tick(clock.monotonic())
    assert len(node.take("REGISTER")) == 1


async def test_wrong_password_is_auth_failed_and_retried_with_backoff() -> None:
    t = info(password="wrong")
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(key, first, _)] = node.take("REGISTER")
    monitor.on_response(key, answer(first, 401, ("WWW-Authenticate", CHALLENGE)))
    [(key2, second, _)] = node.take("REGISTER")
    monitor.on_response(key2, answer(second, 401, ("WWW-Authenticate", CHALLENGE)))
    assert node.take("REGISTER") == []  # no loop of challenges
    status = monitor.status(t.id)
    assert status is not None and (status.state, status.last_code) == ("auth-failed", 401)
    assert monitor.outbound_trunks(D1) == []

    clock.advance(29)
    monitor.tick(clock.monotonic())
    assert node.take("REGISTER") == []
    clock.advance(2)
    monitor.tick(clock.monotonic())
    [(key3, third, _)] = node.take("REGISTER")
    monitor.on_response(key3, answer(third, 403))  # refused outright: wrong credentials as well
    assert state(monitor, t) == "auth-failed"
    clock.advance(31)  # the second retry waits twice as long
    monitor.tick(clock.monotonic())
    assert node.take("REGISTER") == []
    clock.advance(30)
    monitor.tick(clock.monotonic())
    assert len(node.take("REGISTER")) == 1


async def test_stale_nonce_is_answered_again() -> None:
    t = info()
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(key, first, _)] = node.take("REGISTER")
    monitor.on_response(key, answer(first, 401, ("WWW-Authenticate", CHALLENGE)))
    [(key2, second, _)] = node.take("REGISTER")
    monitor.on_response(key2, answer(second, 401, ("WWW-Authenticate", CHALLENGE + ", stale=true")))
    assert len(node.take("REGISTER")) == 1
    assert state(monitor, t) == "registering"


async def test_unanswered_register_is_unreachable() -> None:
    t = info()
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(key, _, _)] = node.take("REGISTER")
    monitor.on_terminated(key, "timeout")
    assert state(monitor, t) == "unreachable"


async def test_options_down_after_three_misses_then_up_and_failover() -> None:
    first = info(kind="ip", name="A", priority=1, networks=(ipaddress.ip_network("192.0.2.0/24"),))
    second = info(kind="ip", name="B", priority=2, address="192.0.2.20", networks=())
    monitor, node, clock = setup(first, second)
    assert [t.name for t in monitor.outbound_trunks(D1)] == ["A", "B"]
    monitor.tick(clock.monotonic())
    sent = node.take("OPTIONS")
    assert {d.host for _, _, d in sent} == {"192.0.2.10", "192.0.2.20"}
    for key, request, dest in sent:
        if dest.host == "192.0.2.20":
            monitor.on_response(key, answer(request, 200))
    assert state(monitor, second) == "up" and state(monitor, first) == "unknown"

    for n in (1, 2, 3):
        clock.advance(30)
        monitor.tick(clock.monotonic())
        for key, request, dest in node.take("OPTIONS"):
            if dest.host == "192.0.2.20":
                monitor.on_response(key, answer(request, 404))  # any answer is an answer
        status = monitor.status(first.id)
        assert status is not None and status.misses == n
    assert state(monitor, first) == "down" and state(monitor, second) == "up"
    assert [t.name for t in monitor.outbound_trunks(D1)] == ["B"]

    clock.advance(30)
    monitor.tick(clock.monotonic())
    for key, request, dest in node.take("OPTIONS"):
        if dest.host == "192.0.2.10":
            monitor.on_response(key, answer(request, 200))
    assert state(monitor, first) == "up"
    assert [t.name for t in monitor.outbound_trunks(D1)] == ["A", "B"]


async def test_one_options_in_flight_and_transport_errors_are_misses() -> None:
    t = info(kind="ip", networks=())
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(key, _, _)] = node.take("OPTIONS")
    clock.advance(10)
    monitor.tick(clock.monotonic())
    assert node.take("OPTIONS") == []  # still waiting for the first
    monitor.on_terminated(key, "transport-error")
    status = monitor.status(t.id)
    assert status is not None and status.misses == 1


async def test_trunk_for_source_by_network_or_by_carrier_address() -> None:
    ip = info(kind="ip", name="IP", networks=(ipaddress.ip_network("203.0.113.0/24"),))
    registered = info(name="Reg", domain_id=D2, address="192.0.2.10", port=5080)
    disabled = info(kind="ip", name="Off", enabled=False, networks=(ipaddress.ip_network("0.0.0.0/0"),))
    monitor, _, _ = setup(ip, registered, disabled)
    assert monitor.trunk_for_source("203.0.113.77", 5060) == ip
    assert monitor.trunk_for_source("192.0.2.10", 5080) == registered
    assert monitor.trunk_for_source("192.0.2.10", 5060) is None  # another port: not the carrier
    assert monitor.trunk_for_source("198.51.100.1", 5060) is None
    assert monitor.trunk_for_source("not-an-address", 5060) is None
    assert monitor.outbound_trunks(D2) == [registered]
    assert state(monitor, disabled) == "disabled"


async def test_outbound_proxy_gets_the_requests_with_a_route() -> None:
    t = info(proxy=("192.0.2.99", 5070), proxy_host="proxy.example:5070")
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(_, request, dest)] = node.take("REGISTER")
    assert dest == Destination("udp", "192.0.2.99", 5070)
    assert request.headers["Route"] == "<sip:proxy.example:5070;lr>"


async def test_changed_credentials_start_over_and_removed_trunks_go() -> None:
    t = info()
    monitor, node, clock = setup(t)
    monitor.tick(clock.monotonic())
    [(key, first, _)] = node.take("REGISTER")
    monitor.on_response(key, answer(first, 200))
    assert state(monitor, t) == "registered"
    monitor.configure([info(id=t.id, priority=3)])  # not a registration matter: stays
    assert state(monitor, t) == "registered"
    monitor.configure([info(id=t.id, password="new-pass")])
    assert state(monitor, t) == "registering"
    monitor.tick(clock.monotonic())
    assert [r.headers["Expires"] for _, r, _ in node.take("REGISTER")] == ["0", "300"]  # old binding out
    monitor.configure([])
    assert monitor.status(t.id) is None and monitor.board.for_domain(D1) == {}


def test_number_formats() -> None:
    assert info(number_format="e164").format_number("+74951234567") == "+74951234567"
    assert info(number_format="plain").format_number("+74951234567") == "74951234567"
    assert info(number_format="national").format_number("+74951234567") == "84951234567"
    assert info(number_format="national").format_number("+442071234567") == "810442071234567"


async def test_reloads_when_the_cabinet_changes_trunks(core: Core, t1: Tenant) -> None:
    node, clock = Node(), FakeClock()
    monitor = TrunkMonitor(node, core.sessions, core.config, core.box, clock=clock)
    async with core.sessions() as s:
        created = await trunks.create_trunk(
            s,
            t1.id,
            trunks.TrunkInput(name="Carrier", host="127.0.0.1", username="user1", password="pass-1"),
            box=core.box,
        )
        await s.commit()
    assert await monitor.refresh() is True
    loaded = monitor.trunk(created.id)
    assert loaded is not None and (loaded.address, loaded.password) == ("127.0.0.1", "pass-1")
    assert "pass-1" not in repr(loaded)
    assert await monitor.refresh() is False  # nothing moved
    async with core.sessions() as s:
        await trunks.update_trunk(
            s,
            t1.id,
            created.id,
            trunks.TrunkInput(name="Carrier", host="127.0.0.1", username="user1", priority=2),
            box=core.box,
        )
        await s.commit()
    assert await monitor.refresh() is True
    reloaded = monitor.trunk(created.id)
    assert reloaded is not None and (reloaded.priority, reloaded.password) == (2, "pass-1")


async def registered(monitor: TrunkMonitor, node: Node, clock: FakeClock) -> Request:
    monitor.tick(clock.monotonic())
    [(key, first, _)] = node.take("REGISTER")
    monitor.on_response(key, answer(first, 200))
    node.take("OPTIONS")
    return first


async def test_a_removed_trunk_is_unregistered_answering_one_challenge() -> None:
    t = info()
    monitor, node, clock = setup(t)
    first = await registered(monitor, node, clock)
    monitor.configure([])  # deleted in the cabinet
    [(key, bye, dest)] = node.take("REGISTER")
    assert bye.headers["Expires"] == "0" and dest == Destination("udp", "192.0.2.10", 5060)
    assert bye.call_id == first.call_id and bye.cseq.sequence == first.cseq.sequence + 1
    monitor.on_response(key, answer(bye, 401, ("WWW-Authenticate", CHALLENGE)))
    [(key2, authed, _)] = node.take("REGISTER")
    assert authed.headers["Expires"] == "0" and authed.headers.get("Authorization")
    monitor.on_response(key2, answer(authed, 401, ("WWW-Authenticate", CHALLENGE)))
    assert node.take("REGISTER") == []  # one challenge is answered, not a second
    assert monitor.status(t.id) is None
    monitor.tick(clock.monotonic() + 3600)
    assert node.sent == []  # nothing more for a trunk that is gone


async def test_changed_credentials_unregister_the_old_binding_first() -> None:
    t = info()
    monitor, node, clock = setup(t)
    first = await registered(monitor, node, clock)
    monitor.configure([info(id=t.id, username="74950000000")])
    [(key, bye, _)] = node.take("REGISTER")
    assert bye.headers["Expires"] == "0" and bye.from_address.uri.user == first.from_address.uri.user
    monitor.tick(clock.monotonic())
    [(_, fresh, _)] = node.take("REGISTER")
    assert fresh.headers["Expires"] == "300" and fresh.from_address.uri.user == "74950000000"
    assert fresh.call_id != first.call_id
    monitor.on_response(key, answer(bye, 200))
    assert state(monitor, t) == "registering"  # the old binding's answer does not touch the new one


async def test_stop_unregisters_and_waits_a_bounded_time() -> None:
    t, never = info(), info(kind="ip")
    monitor, node, clock = setup(t, never)
    await registered(monitor, node, clock)
    await monitor.stop(unregister_timeout_s=0.05)  # the carrier never answers: stop anyway
    [(_, bye, _)] = node.take("REGISTER")
    assert bye.headers["Expires"] == "0"
    assert node.sent == []  # an IP trunk has nothing to un-register
