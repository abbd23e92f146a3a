"""SIP trunks service: validation with clear messages, the sealed password, tenant isolation."""

from __future__ import annotations

import pytest

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx import trunks
from vpbx.pbx.trunks import TrunkInput, split_hostport
from vpbx.store.models import Trunk


def _fields(e: ValidationFailed) -> dict[str, list[str]]:
    return {k: [x.msgid for x in v] for k, v in e.by_field().items()}


def reg(**kw: object) -> TrunkInput:
    base: dict[str, object] = {
        "name": "Carrier",
        "kind": "registration",
        "host": "sip.carrier.example",
        "username": "74951234567",
        "password": "s3cret-pass",
    }
    base.update(kw)
    return TrunkInput(**base)  # type: ignore[arg-type]


async def _create(core: Core, t: Tenant, data: TrunkInput) -> Trunk:
    async with core.sessions() as s:
        trunk = await trunks.create_trunk(s, t.id, data, box=core.box)
        await s.commit()
        return trunk


async def _errors(core: Core, t: Tenant, data: TrunkInput) -> dict[str, list[str]]:
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as e:
            await trunks.create_trunk(s, t.id, data, box=core.box)
    return _fields(e.value)


async def test_registration_trunk_is_stored_with_a_sealed_password(core: Core, t1: Tenant) -> None:
    t = await _create(core, t1, reg(host=" SIP.Carrier.Example ", outbound_proxy="Proxy.Example:5070"))
    assert t.host == "sip.carrier.example"
    assert t.outbound_proxy == "proxy.example:5070"
    assert "s3cret-pass" not in t.password_enc
    assert trunks.trunk_password(t, core.box) == "s3cret-pass"
    assert (t.caller_id_mode, t.number_format, t.enabled) == ("domain", "e164", True)


async def test_bad_fields_each_get_a_message(core: Core, t1: Tenant) -> None:
    errors = await _errors(
        core,
        t1,
        reg(
            name="",
            kind="sideways",
            host="not a host",
            port="70000",
            transport="sctp",
            outbound_proxy="proxy:port",
            username="bad user@x",
            expires_s="10",
            caller_id_mode="fixed",
            caller_id_number="",
            number_format="e123",
            max_calls="0",
            priority="x",
            allowed_networks=["10.0.0.0/33", "0.0.0.0/0"],
        ),
    )
    assert errors == {
        "name": ["Required field"],
        "kind": ["Choose one of the options"],
        "host": ["Not a host name or IP address"],
        "port": ["Must be from {lo} to {hi}"],
        "transport": ["Choose one of the options"],
        "outbound_proxy": ["A host name or IP address, with an optional :port"],
        "username": ["Latin letters, digits, dot, dash, plus and underscore"],
        "expires_s": ["Must be from {lo} to {hi}"],
        "caller_id_number": ["Required field"],
        "number_format": ["Choose one of the options"],
        "max_calls": ["Must be from {lo} to {hi}"],
        "priority": ["Must be a whole number"],
        "allowed_networks": ["Not an IP address or network: {value}", "Too wide a network: {value}"],
    }


async def test_registration_needs_credentials_and_ip_needs_networks(core: Core, t1: Tenant) -> None:
    assert await _errors(core, t1, reg(username="", password="")) == {
        "username": ["A registration trunk needs the account's username"],
        "password": ["A registration trunk needs the account's password"],
    }
    ip = TrunkInput(name="IP", kind="ip", host="203.0.113.5")
    assert await _errors(core, t1, ip) == {"allowed_networks": ["An IP trunk needs the carrier's addresses"]}
    ip.allowed_networks = ["203.0.113.5", "198.51.100.0/24", "198.51.100.7/24"]
    t = await _create(core, t1, ip)
    assert t.allowed_networks.splitlines() == ["203.0.113.5/32", "198.51.100.0/24"]
    assert t.password_enc == ""


async def test_empty_password_keeps_the_stored_one_and_names_are_unique(core: Core, t1: Tenant) -> None:
    t = await _create(core, t1, reg())
    async with core.sessions() as s:
        updated = await trunks.update_trunk(s, t1.id, t.id, reg(password="", priority="5"), box=core.box)
        await s.commit()
    assert trunks.trunk_password(updated, core.box) == "s3cret-pass"
    assert updated.priority == 5
    assert await _errors(core, t1, reg()) == {"name": ["A trunk with this name already exists"]}


async def test_fixed_caller_id_is_normalised(core: Core, t1: Tenant) -> None:
    t = await _create(core, t1, reg(caller_id_mode="fixed", caller_id_number="8 (495) 123-45-67"))
    assert t.caller_id_number == "+74951234567"


async def test_other_tenant_sees_nothing(core: Core, t1: Tenant, t2: Tenant) -> None:
    t = await _create(core, t1, reg())
    async with core.sessions() as s:
        assert await trunks.list_trunks(s, t2.id) == []
        with pytest.raises(NotFound):
            await trunks.get_trunk(s, t2.id, t.id)
        with pytest.raises(NotFound):
            await trunks.update_trunk(s, t2.id, t.id, reg(name="Hijack"), box=core.box)
        with pytest.raises(NotFound):
            await trunks.delete_trunk(s, t2.id, t.id)
    # the same name in another domain is fine
    await _create(core, t2, reg())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("proxy.example", ("proxy.example", 5060)),
        ("sip:proxy.example:5080", ("proxy.example", 5080)),
        ("[2001:db8::1]:5062", ("2001:db8::1", 5062)),
        ("192.0.2.1", ("192.0.2.1", 5060)),
        ("proxy:x", None),
        ("[2001:db8::1", None),
        ("proxy.example:0", None),
        ("bad host", None),
    ],
)
def test_split_hostport(text: str, expected: tuple[str, int] | None) -> None:
    assert split_hostport(text) == expected
