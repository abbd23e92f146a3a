"""A CRM-side client as public ones write it, against ``vpbx serve``'s real HTTP port: every method, its body
encoded three ways (PHP ``json_encode``: ``\\/`` and ``\\uXXXX`` escapes; spaces after colons; compact), the
signature over the exact bytes sent, and the documented envelope: ``result`` the string "0" on success,
``resultMessage`` always present."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.integration.peers.net import wait_until
from tests.integration.peers.vpbx import Vpbx
from tests.integration_api.fixture_f import CALL_ID, f_call, signed_headers
from tests.integration_api.test_records import MP3
from tests.integration_api.test_serve import api_on
from vpbx.app import Core
from vpbx.store.models import Recording

pytestmark = pytest.mark.peers

OK = "Операция выполнена успешно"


def php_json_encode(obj: Any) -> bytes:
    """PHP's ``json_encode`` defaults: compact, non-ASCII as ``\\uXXXX``, ``/`` as ``\\/``."""
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":")).replace("/", "\\/").encode()


def spaced(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()  # ``{"a": 1, "b": 2}``


def compact(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


ENCODINGS: dict[str, Callable[[Any], bytes]] = {"php": php_json_encode, "spaced": spaced, "compact": compact}


async def api_with_record(s: AsyncSession, core: Core, domain_id: uuid.UUID) -> None:
    """``api_on`` plus F's recording stored where the server's recording store reads it."""
    await api_on(s, core, domain_id)
    name = core.recordings.new_name(domain_id, CALL_ID, f_call(domain_id).started_at)
    path = core.recordings.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MP3)
    s.add(Recording(domain_id=domain_id, session_id=CALL_ID, status="ready", path=name))


class CrmClient:
    """Signs and posts a body encoded the client's way; returns the decoded envelope (and the response)."""

    def __init__(self, http: httpx.AsyncClient, encode: Callable[[Any], bytes]) -> None:
        self.http = http
        self.encode = encode

    async def call(self, method: str, params: dict[str, Any], *, base: str = "/api") -> httpx.Response:
        body = self.encode(params)
        return await self.http.post(f"{base}/{method}", content=body, headers=signed_headers(body))


def envelope(resp: httpx.Response, *, ok: bool = True) -> dict[str, Any]:
    assert resp.headers["content-type"].split(";")[0] == "application/json", resp.text
    body: dict[str, Any] = json.loads(resp.content)
    assert isinstance(body["result"], str) and isinstance(body["resultMessage"], str), body
    if ok:
        assert (resp.status_code, body["result"], body["resultMessage"]) == (200, "0", OK), body
    else:
        assert body["result"] != "0" and body["resultMessage"], body
    return body


@pytest.mark.parametrize("style", list(ENCODINGS))
async def test_every_method_from_a_public_style_client(tmp_path: Path, style: str) -> None:
    async with (
        Vpbx.running(tmp_path, users={"501": "secret-501-pass"}, setup=api_with_record) as pbx,
        httpx.AsyncClient(base_url=pbx.http_url, timeout=10) as http,
    ):
        crm = CrmClient(http, ENCODINGS[style])
        users = envelope(await crm.call("users_info", {"user_pin": "501"}))
        assert [u["pin"] for u in users["users"]] == ["501"]

        info = envelope(await crm.call("call_info", {"session_id": CALL_ID}))
        assert info["info"]["session_log"] == "0:ct:501;6:cc:501;101:cd:501;"
        # a string that PHP escapes both ways: "\u0438\u0434\/1"; unknown, yet an envelope all the same
        missing = envelope(await crm.call("call_info", {"session_id": "ид/1"}), ok=False)
        assert missing["info"] is None

        record = envelope(await crm.call("get_record", {"session_id": CALL_ID, "ip_adress": "127.0.0.1"}))
        assert isinstance(record["url"], str) and "/record/download/" in record["url"]

        day = {"date_start": "2025-06-12 00:00:00", "date_end": "2025-06-13 00:00:00"}
        charges = envelope(await crm.call("user_calls_charges", {**day, "user_pin": 501}))
        assert "result" in charges
        order = envelope(await crm.call("domain_call_history", {**day, "direction": 0, "state": 0}))
        order_id = order["order_id"]
        assert isinstance(order_id, str) and order_id

        async def exported() -> bool:
            resp = await crm.call("download_call_history", {"order_id": order_id})
            return resp.status_code == 200

        await wait_until(exported, timeout_s=30.0, what="the history export", interval_s=1.0)
        gone = await crm.call("download_call_history", {"order_id": "nope"})
        envelope(gone, ok=False)

        rights = envelope(await crm.call("get_user_restrictions", {"user_pin": "501"}))
        assert [r["user_pin"] for r in rights["restrictions"]] == ["501"]
        changed = envelope(
            await crm.call("set_user_restrictions", {"user_pin": 501, "allowed": {"mobile": False}})
        )
        assert changed["restrictions"][0]["allowed"]["mobile"] is False
        again = envelope(await crm.call("get_user_restrictions", {"user_pin": 501}))
        assert again["restrictions"] == changed["restrictions"]

        # call_back: the test mode answers without ringing; the real one to a phone-less PIN says why
        sandbox = envelope(
            await crm.call(
                "call_back", {"request_number": "+79161234567", "from_pin": "501"}, base="/api-test"
            )
        )
        assert sandbox["session_id"].startswith("test-")
        real = await crm.call("call_back", {"request_number": "+79161234567", "from_pin": "599"})
        envelope(real, ok=False)
