"""Call records around the B2BUA: registry and channel limits, event wire form, directory, destinations."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

from tests.unit.pbx.b2bua_kit import RecordingBus
from vpbx.app import Core
from vpbx.clock import FakeClock
from vpbx.pbx import domains, users
from vpbx.pbx.b2bua import binding_destination
from vpbx.pbx.bus import SessionId
from vpbx.pbx.calls import (
    Call,
    CallEvents,
    EngineDirectory,
    JsonLinesEventLog,
    MemoryCallRegistry,
    Party,
    event_json,
)
from vpbx.pbx.directory import DomainInfo, SipDirectory
from vpbx.pbx.registrar import Binding
from vpbx.sip.flow import Destination
from vpbx.store.models import DomainId

T0 = dt.datetime(2026, 1, 15, 9, 0, tzinfo=dt.UTC)


def domain(limit: int = 2, name: str = "acme.vpbx.test") -> DomainInfo:
    return DomainInfo(DomainId(uuid.uuid4()), name, limit, "Europe/Moscow")


def party(pin: str, d: DomainInfo) -> Party:
    return Party(user_id=uuid.uuid4(), login=f"user{pin}", pin=pin, display_name=f"User {pin}", domain=d.name)


def call(d: DomainInfo, n: int = 0) -> Call:
    return Call(
        session_id=SessionId(str(uuid.uuid4())),
        domain=d,
        caller=party("101", d),
        callee=party("102", d),
        started_at=T0 + dt.timedelta(seconds=n),
    )


def test_registry_admits_up_to_the_tenant_limit_and_counts_per_tenant() -> None:
    reg = MemoryCallRegistry()
    d1, d2 = domain(2), domain(1, "other.vpbx.test")
    first, second, third = call(d1, 0), call(d1, 1), call(d1, 2)

    assert reg.admit(first) and reg.admit(second)
    assert not reg.admit(third)
    assert reg.admit(call(d2))  # another tenant's limit is its own
    assert reg.active(d1.id) == 2 and reg.active(d2.id) == 1

    reg.remove(first.session_id)
    assert reg.admit(third)
    assert [s.session_id for s in reg.snapshot(d1.id)] == [second.session_id, third.session_id]


def test_registry_has_a_node_wide_cap() -> None:
    reg = MemoryCallRegistry(max_calls=1)
    assert reg.admit(call(domain(10)))
    assert not reg.admit(call(domain(10)))


def test_snapshot_names_pins_numbers_and_state() -> None:
    d = domain()
    c = call(d)
    snap = c.snapshot()
    assert (snap.from_pin, snap.to_pin) == ("101", "102")
    assert (snap.from_number, snap.to_number) == ("user101@acme.vpbx.test", "user102@acme.vpbx.test")
    assert snap.state == "ringing" and snap.started_at == T0


async def test_events_carry_seq_per_session_and_wire_fields(tmp_path: Path) -> None:
    bus = RecordingBus()
    events = CallEvents(bus, FakeClock(T0))
    c = call(domain())

    await events.publish(c, "new")
    await events.publish(c, "calling", request_uri="sip:desk@192.0.2.20:5060")
    await events.publish(c, "disconnected", disconnect_reason="5", is_record=True)
    await events.publish(c, "end", is_record=False)

    assert [e.seq for e in bus.events] == [1, 2, 3, 4]
    wire = [event_json(e) for e in bus.events]
    assert wire[0] == {
        "state": "new",
        "type": "internal",
        "session_id": c.session_id,
        "seq": 1,
        "timestamp": T0.isoformat(),
        "from_number": "user101@acme.vpbx.test",
        "from_pin": "101",
        "from_uri": "sip:101@acme.vpbx.test",
        "request_number": "user102@acme.vpbx.test",
        "request_pin": "102",
        "request_uri": "sip:102@acme.vpbx.test",
        "domain": "acme.vpbx.test",
    }
    assert wire[1]["request_uri"] == "sip:desk@192.0.2.20:5060"
    assert wire[2]["disconnect_reason"] == "5" and "is_record" not in wire[2]
    assert wire[3]["is_record"] == "false" and "disconnect_reason" not in wire[3]

    log = JsonLinesEventLog(tmp_path / "events.jsonl")
    for e in bus.events:
        await log(e)
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [x["state"] for x in lines] == ["new", "calling", "disconnected", "end"]


async def test_engine_directory_reads_the_tenants_and_falls_back_for_addresses(core: Core) -> None:
    async with core.sessions() as s:
        d = await domains.create_domain(s, domains.DomainInput(name="acme.vpbx.test", channel_limit=7))
        await users.create_user(
            s,
            d.id,
            users.UserInput(
                name="ivanov", display_name="Ivanov", pin="501", sip_login="501", sip_password="Secret-1"
            ),
            box=core.box,
        )
        await s.commit()
    sip = SipDirectory(core.sessions, core.config)
    plain = EngineDirectory(sip)
    fallback = EngineDirectory(sip, default_domain="acme.vpbx.test")

    found = await plain.domain("ACME.vpbx.test")
    assert found is not None and found.channel_limit == 7
    assert await plain.domain("192.0.2.1") is None
    assert await fallback.domain("192.0.2.1") == found
    assert await fallback.domain("unknown.example") is None
    ivanov = await plain.user_by_pin(found, "501")
    assert (
        ivanov is not None
        and ivanov.number == "ivanov@acme.vpbx.test"
        and ivanov.uri == "sip:501@acme.vpbx.test"
    )
    assert await plain.user_by_login(found, "501") == ivanov
    assert await plain.user_by_pin(found, "502") is None


def binding(contact: str, flow: Destination, **kw: object) -> Binding:
    return Binding(contact=contact, flow=flow, call_id="c", cseq=1, expires_at=1.0, updated_at=0.0, **kw)  # type: ignore[arg-type]


def test_requests_go_to_the_contact_unless_the_phone_is_behind_nat_tcp_or_a_proxy() -> None:
    flow = Destination("udp", "192.0.2.20", 40123)
    assert binding_destination(binding("sip:102@192.0.2.20:5070", flow)) == Destination(
        "udp", "192.0.2.20", 5070
    )
    assert binding_destination(binding("sip:102@192.0.2.20", flow)).port == 5060
    assert binding_destination(binding("sip:102@10.0.0.5:5060", flow, nated=True)) == flow
    assert binding_destination(binding("sip:102@phone.example:5060", flow)) == flow
    assert binding_destination(binding("sip:102@192.0.2.20:5070", flow, path=("<sip:edge;lr>",))) == flow
    tcp = Destination("tcp", "192.0.2.20", 40123, conn_id=7)
    assert binding_destination(binding("sip:102@192.0.2.20:5070", tcp)) == tcp
