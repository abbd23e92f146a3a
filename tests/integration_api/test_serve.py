"""The Integration API on `vpbx serve`'s real HTTP port: signed requests with httpx, /api and /api-test."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.vpbx import DEFAULT_DOMAIN, Vpbx
from tests.integration_api.fixture_f import CALL_ID, CLIENT_ID, KEY, f_call, signed_headers
from vpbx.app import Core
from vpbx.billing import INTEGRATION_API, enable
from vpbx.integration_api.settings import ensure_settings

pytestmark = pytest.mark.peers


async def api_on(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
    """The service on with F's credentials, plain HTTP allowed, any source; F's call in the history."""
    await enable(s, domain_id, INTEGRATION_API, core.clock.now())
    row = await ensure_settings(s, domain_id, core.box)
    row.client_id = CLIENT_ID
    row.sign_key_enc = core.box.seal(KEY)
    row.tls_required = False
    s.add(f_call(domain_id, caller_number=f"sip:79161234567@{DEFAULT_DOMAIN}"))


async def test_signed_requests_on_the_http_port(tmp_path: Path) -> None:
    async with (
        Vpbx.running(tmp_path, users={"501": "secret-501-pass"}, setup=api_on) as pbx,
        httpx.AsyncClient(base_url=pbx.http_url, timeout=5) as client,
    ):
        body = b'{"user_pin": 501}'
        resp = await client.post("/api/users_info", content=body, headers=signed_headers(body))
        assert resp.status_code == 200
        assert json.loads(resp.content) == {
            "result": "0",
            "resultMessage": "Операция выполнена успешно",
            "users": [
                {
                    "display_name": "User 501",
                    "name": "user501",
                    "pin": "501",
                    "sipuri": f"user501@{DEFAULT_DOMAIN}",
                    "email": None,
                }
            ],
        }
        body = f'{{"session_id":"{CALL_ID}"}}'.encode()
        info = await client.post("/api-test/call_info", content=body, headers=signed_headers(body))
        assert info.json()["info"]["session_log"] == "0:ct:501;6:cc:501;101:cd:501;"
        bad = await client.post("/api/users_info", content=b"{}", headers=signed_headers(b"{ }"))
        assert (bad.status_code, bad.json()["result"]) == (401, "-3")
        doc = await client.get("/api/openapi.json")
        assert doc.json()["servers"] == [{"url": f"{pbx.http_url}/api"}]
