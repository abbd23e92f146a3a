"""get_number_info with a real phone (integration-api.md §5.3): a SIPp carrier calls a line of ``vpbx serve``
with the Integration API on; the CRM (a real HTTP server in the test process) names PIN 103 and the caller.
The **baresip** registered as 103 rings and answers (the rule's 102 has no phone: only the CRM's PIN reaches
one), and the INVITE it received shows the CRM's displayName: baresip reports the From display name with
the call (``peerdisplayname``) and prints the INVITE in its SIP trace. A name with characters §5.3 strips,
longer than 64 characters, arrives cleaned and cut."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.peers.baresip import Account, Baresip
from tests.integration.peers.process import require_binary
from tests.integration.peers.sipp import run_sipp
from tests.integration.test_api_events import CLIENT_ID, KEY, with_api
from tests.integration.test_calls import running
from tests.integration.test_incoming_calls import CALLER, LINE, carrier_run, line_to
from tests.integration_api.notify_crm import Answer, Crm, Script, Seen
from vpbx.integration_api.core import verify

pytestmark = pytest.mark.peers

NAMES = [  # the CRM's displayName, what the phone shows
    ("Иванов Сергей Петрович", "Иванов Сергей Петрович"),
    (
        '"ООО Ромашка"\\\t Иванов Сергей Петрович, менеджер по работе с ключевыми клиентами',
        "ООО Ромашка Иванов Сергей Петрович, менеджер по работе с ключевы",
    ),
]


def naming(name: str) -> Script:
    def script(_crm: Crm, req: Seen) -> Answer:
        if req.path.endswith("/get_number_info"):
            reply = {"result": "0", "resultMessage": "ok", "displayName": name, "PIN": "103"}
            return Answer(200, json.dumps(reply, ensure_ascii=False).encode())
        return Answer(200)

    return script


def invite_from(log: Path) -> str:
    """The From header of the first INVITE baresip received, from its ``-s`` trace."""
    text = log.read_text(encoding="utf-8", errors="replace")
    for message in re.split(r"\n(?=INVITE sip:)", text)[1:]:
        head = re.split(r"\r?\n\r?\n", message, maxsplit=1)[0]
        found = re.search(r"^From:\s*(.+?)\r?$", head, re.M | re.I)
        if found:
            return found[1]
    raise AssertionError(f"no INVITE received in {log}")


@pytest.mark.parametrize(("name", "shown"), NAMES, ids=["plain", "cleaned"])
async def test_the_crms_pin_rings_the_baresip_phone_showing_the_name(
    tmp_path: Path, name: str, shown: str
) -> None:
    require_binary("baresip")
    async with (
        Crm(naming(name)).running() as crm,
        running(tmp_path, setup=with_api(line_to("user"), crm, number_info=True)) as server,
        Baresip.start(tmp_path, name="ivanov", sip_trace=True) as phone,
    ):
        await phone.register(Account.on(server.service, "103", answermode="auto"))
        caller = await run_sipp(carrier_run(server, calls=1, duration_ms=500), tmp_path)
        established = await phone.wait_event("CALL_ESTABLISHED")
        await phone.wait_event("CALL_CLOSED")
        [events] = (await server.calls(ended=1)).values()

    assert caller.ok, caller.describe()
    [asked] = [r for r in crm.seen if r.path.endswith("/get_number_info")]
    assert (
        asked.raw
        == json.dumps(
            {"domain": server.service.domain, "from_number": CALLER, "request_number": LINE},
            separators=(",", ":"),
        ).encode()
    )
    assert verify(CLIENT_ID, asked.raw, KEY, asked.headers["x-client-sign"])
    assert [(e["state"], e.get("request_pin")) for e in events][1:3] == [
        ("calling", "103"),
        ("connected", "103"),
    ]
    assert (established["direction"], established["peerdisplayname"]) == ("incoming", shown)
    assert established["peeruri"] == f"sip:+{CALLER}@{server.service.domain}"
    assert re.fullmatch(
        rf'"{re.escape(shown)}" <sip:\+{CALLER}@[^>]+>;tag=\S+', invite_from(phone.workdir / "baresip.log")
    )
