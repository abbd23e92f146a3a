"""Answers → the error tree (amocrm.md §2.1, §2.5) on raw responses: problem+json, empty and HTML bodies."""

from __future__ import annotations

import datetime as dt
import email.utils

import httpx
import pytest

from vpbx.amocrm.client import error_for, retry_after
from vpbx.amocrm.errors import (
    AmoEntityNotFound,
    AmoError,
    AmoForbidden,
    AmoPaymentRequired,
    AmoRateLimited,
    AmoServerError,
    AmoValidationError,
    Violation,
)

PROBLEM = {"content-type": "application/problem+json", "x-request-id": "rid-1"}


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> httpx.Response:
    if body is None:
        return httpx.Response(status, headers=headers or {})
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers or {})
    return httpx.Response(status, json=body, headers=headers or PROBLEM)


def test_validation_errors_become_violations() -> None:
    body = {
        "validation-errors": [
            {
                "request_id": "7",
                "errors": [
                    {"code": "FieldMissing", "path": "text", "detail": "This field is missing."},
                    {
                        "code": "NotBlank",
                        "path": "complete_till",
                        "detail": "This value should not be blank.",
                    },
                ],
            }
        ],
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request validation failed",
    }
    err = error_for(answer(400, body))
    assert isinstance(err, AmoValidationError)
    assert err.request_id == "rid-1" and str(err) == "Request validation failed"
    assert err.violations == [
        Violation("7", "FieldMissing", "text", "This field is missing."),
        Violation("7", "NotBlank", "complete_till", "This value should not be blank."),
    ]


def test_calls_entity_not_found() -> None:
    body = {"_total_items": 0, "errors": [{"title": "Entity not found", "status": 400, "request_id": "0"}]}
    assert isinstance(error_for(answer(400, body)), AmoEntityNotFound)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (
            402,
            {"title": "Payment Required", "status": 402, "detail": "Аккаунт не оплачен"},
            AmoPaymentRequired,
        ),
        (403, "<html>blocked</html>", AmoForbidden),
        (429, None, AmoRateLimited),  # amoCRM's 429 may have an empty body
        (429, "<html>Too many</html>", AmoRateLimited),
        (500, None, AmoServerError),
        (504, "Gateway Time-out", AmoServerError),
        (404, None, AmoError),
    ],
)
def test_status_classes(status: int, body: object, kind: type[AmoError]) -> None:
    err = error_for(answer(status, body))
    assert type(err) is kind and err.status == status


def test_400_without_validation_errors_keeps_the_detail() -> None:
    err = error_for(
        answer(400, {"title": "Bad Request", "status": 400, "detail": "status_id is not in pipeline"})
    )
    assert isinstance(err, AmoValidationError) and err.violations == [] and "pipeline" in str(err)


def test_retry_after_seconds_and_dates() -> None:
    assert retry_after(answer(429, None, {"retry-after": "3"})) == 3.0
    assert retry_after(answer(429)) is None
    assert retry_after(answer(429, None, {"retry-after": "soon"})) is None
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    got = retry_after(answer(429, None, {"retry-after": when}))
    assert got is not None and 20 <= got <= 31
