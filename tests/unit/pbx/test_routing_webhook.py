"""The HTTP routing hook reads only a JSON object with string fields; anything else is no answer."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from vpbx.pbx.incoming import RoutingAnswer, RoutingQuery
from vpbx.pbx.routing_webhook import MAX_FIELD, HttpRoutingHook
from vpbx.store.models import DomainId

QUERY = RoutingQuery(
    session_id="s-1",
    domain_id=DomainId(uuid.uuid4()),
    domain="a.test",
    from_number="79161234567",
    request_number="74951234567",
)


def hook(status: int, content: bytes) -> tuple[HttpRoutingHook, list[dict[str, str]]]:
    seen: list[dict[str, str]] = []

    def reply(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(status, content=content)

    client = httpx.AsyncClient(transport=httpx.MockTransport(reply))
    return HttpRoutingHook("http://crm.test/route", timeout_s=1, client=client), seen


async def test_an_answer_names_the_pin_and_the_display_name() -> None:
    h, seen = hook(200, json.dumps({"pin": "103", "display_name": "Иван"}).encode())
    assert await h(QUERY) == RoutingAnswer(pin="103", display_name="Иван")
    assert seen == [
        {
            "session_id": "s-1",
            "domain": "a.test",
            "from_number": "79161234567",
            "request_number": "74951234567",
        }
    ]


@pytest.mark.parametrize(
    ("status", "content", "expected"),
    [
        (500, b'{"pin": "103"}', None),
        (200, b"not json", None),
        (200, b'["103"]', None),
        (200, b'{"pin": 103, "display_name": null}', RoutingAnswer()),
        (200, json.dumps({"display_name": "x" * 500}).encode(), RoutingAnswer(display_name="x" * MAX_FIELD)),
    ],
)
async def test_anything_but_a_json_object_of_strings_is_no_answer(
    status: int, content: bytes, expected: RoutingAnswer | None
) -> None:
    h, _ = hook(status, content)
    assert await h(QUERY) == expected
