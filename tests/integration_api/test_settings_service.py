"""The settings service (integration-api.md §2.1, §2.4, §6.1, §6.2): activation, regeneration, validation."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.integration_api.fixture_f import CLIENT_ID, KEY, FixtureF, post
from vpbx.app import Core
from vpbx.billing import INTEGRATION_API, disable
from vpbx.errors import ValidationFailed
from vpbx.integration_api.core import api_settings, sign_key
from vpbx.integration_api.settings import SettingsInput, ensure_settings, regenerate, update_settings
from vpbx.pbx import domains

HEX32 = re.compile(r"[0-9A-F]{32}")


async def test_activation_creates_fresh_sealed_credentials_once(core: Core) -> None:
    async with core.sessions() as s:
        a = await domains.create_domain(s, domains.DomainInput(name="a.vpbx.example"))
        b = await domains.create_domain(s, domains.DomainInput(name="b.vpbx.example"))
        ra = await ensure_settings(s, a.id, core.box)
        rb = await ensure_settings(s, b.id, core.box)
        await s.commit()
        key_a = sign_key(ra, core.box)
        assert HEX32.fullmatch(ra.client_id) and HEX32.fullmatch(key_a)
        assert key_a not in ra.sign_key_enc  # sealed at rest
        assert ra.client_id != rb.client_id and key_a != sign_key(rb, core.box)
        assert (ra.tls_required, ra.allowlist, ra.timeout_s, ra.number_info) == (True, "", 3, False)
        again = await ensure_settings(s, a.id, core.box)  # re-activation keeps them
        assert (again.client_id, sign_key(again, core.box)) == (ra.client_id, key_a)


async def test_regenerated_client_id_and_key_work_at_once(
    crm: httpx.AsyncClient, core: Core, f: FixtureF
) -> None:
    async with core.sessions() as s:
        new_id = await regenerate(s, f.domain_id, core.box, "client_id")
        await s.commit()
    assert HEX32.fullmatch(new_id) and new_id != CLIENT_ID
    assert (await post(crm, "users_info", b"{}")).status_code == 401  # old ID: R4
    assert (await post(crm, "users_info", b"{}", client_id=new_id)).status_code == 200
    async with core.sessions() as s:
        new_key = await regenerate(s, f.domain_id, core.box, "key")
        await s.commit()
    old_key = await post(crm, "users_info", b"{}", client_id=new_id)
    assert (old_key.status_code, old_key.json()["result"]) == (401, "-3")
    assert (await post(crm, "users_info", b"{}", client_id=new_id, key=new_key)).status_code == 200
    assert new_key != KEY


async def test_disabling_keeps_settings_and_rejects_with_r5(
    crm: httpx.AsyncClient, core: Core, f: FixtureF
) -> None:
    async with core.sessions() as s:
        await disable(s, f.domain_id, INTEGRATION_API, core.clock.now())
        await s.commit()
        row = await api_settings(s, f.domain_id)
        assert row is not None and row.client_id == CLIENT_ID
    assert (await post(crm, "users_info", b"{}")).json()["result"] == "-6"


async def test_update_applies_every_field_together(core: Core, f: FixtureF) -> None:
    data = SettingsInput(
        crm_url="https://crm.example/rt/",
        allowlist="203.0.113.0/24\n2001:db8::/32\n198.51.100.7",
        timeout_s="7",
        tls_required=True,
        event_states=["end", "new"],
        event_types=["incoming"],
        number_info=True,
        verify_crm_sign=True,
    )
    async with core.sessions() as s:
        row = await update_settings(s, f.domain_id, data)
        await s.commit()
    assert row.crm_url == "https://crm.example/rt/"
    assert row.allowlist.split("\n") == ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]
    assert (row.timeout_s, row.event_states, row.event_types) == (7, ["new", "end"], ["incoming"])
    assert row.number_info and row.verify_crm_sign


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"crm_url": "ftp://crm.example"}, "crm_url"),
        ({"crm_url": "https://crm.example/rt?x=1"}, "crm_url"),
        ({"crm_url": "https://crm.example/rt#top"}, "crm_url"),
        ({"crm_url": "http://crm.example/rt", "tls_required": True}, "crm_url"),
        ({"allowlist": "203.0.113.0/24\nnot-an-ip"}, "allowlist"),
        ({"allowlist": "\n".join(f"10.0.0.{n}" for n in range(51))}, "allowlist"),
        ({"timeout_s": "0"}, "timeout_s"),
        ({"timeout_s": "11"}, "timeout_s"),
        ({"timeout_s": "2.5"}, "timeout_s"),
        ({"event_states": ["answered"]}, "event_states"),
        ({"event_types": ["fax"]}, "event_types"),
    ],
)
async def test_validation_refuses_and_changes_nothing(
    core: Core, f: FixtureF, change: dict[str, object], field: str
) -> None:
    data = SettingsInput(**{"crm_url": "https://crm.example/rt", **change})  # type: ignore[arg-type]
    async with core.sessions() as s:
        with pytest.raises(ValidationFailed) as err:
            await update_settings(s, f.domain_id, data)
        await s.rollback()
        row = await api_settings(s, f.domain_id)
        assert row is not None and row.crm_url == "" and row.timeout_s == 3
    assert field in err.value.by_field()


async def test_plain_http_crm_is_fine_without_encryption(core: Core, f: FixtureF) -> None:
    async with core.sessions() as s:
        row = await update_settings(
            s, f.domain_id, SettingsInput(crm_url="http://crm.example:8080/rt", tls_required=False)
        )
        assert row.crm_url == "http://crm.example:8080/rt" and row.allowlist == ""
