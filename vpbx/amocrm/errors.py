"""The amoCRM client's error tree (amocrm.md §2.5). The client never retries a write by itself; the job engine
(§5.6–5.7) reads these to decide: retry, verify first, hold, or give up."""

from __future__ import annotations

from dataclasses import dataclass


class AmoError(Exception):
    """Any failure talking to amoCRM. ``status`` is the HTTP status when there was an answer."""

    status: int | None = None

    def __init__(self, message: str = "", *, status: int | None = None, request_id: str = "") -> None:
        super().__init__(message or type(self).__name__)
        if status is not None:
            self.status = status
        self.request_id = request_id  # amoCRM's X-Request-Id, for the log


class AmoAuthError(AmoError):
    """401: the access token was refused (the client refreshes once, then gives this up)."""

    status = 401


class AmoReauthRequired(AmoError):
    """The refresh token is dead (revoked, reused, expired) or a long-lived token was refused: the binding
    needs an administrator to install/authorise again; jobs are held, not dropped."""


class AmoPaymentRequired(AmoError):
    """402 «Аккаунт не оплачен»."""

    status = 402


class AmoForbidden(AmoError):
    """403: forbidden or the IP is blocked; the account's circuit opens for 10 minutes."""

    status = 403


class AmoRateLimited(AmoError):
    """429: never applied; the account pauses. ``retry_after_s`` when amoCRM sent Retry-After."""

    status = 429

    def __init__(
        self, message: str = "", *, retry_after_s: float | None = None, request_id: str = ""
    ) -> None:
        super().__init__(message, status=429, request_id=request_id)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Violation:
    """One item of a 400 ``validation-errors`` answer."""

    request_id: str
    code: str
    path: str
    detail: str


class AmoValidationError(AmoError):
    """400 with amoCRM's validation errors: rejected before processing, never retried."""

    status = 400

    def __init__(self, violations: list[Violation], *, detail: str = "", request_id: str = "") -> None:
        super().__init__(detail or "validation failed", status=400, request_id=request_id)
        self.violations = violations


class AmoEntityNotFound(AmoError):
    """``POST /api/v4/calls`` found no card with the number (400 ``Entity not found``)."""

    status = 400


class AmoServerError(AmoError):
    """5xx or 504: a write may or may not have been applied (verify before re-sending)."""


class AmoUnknownOutcome(AmoError):
    """A write timed out or the connection dropped after the request was sent: verify before re-sending."""


class AmoSkipped(AmoError):
    """A realtime request could not get a token from the account's limiter before its deadline, or the account
    is cache-only / its circuit is open: nothing was sent."""


class AmoUnreachable(AmoServerError):
    """No connection to amoCRM (refused, connect timeout, DNS) or a read got no answer: for a write nothing
    was sent, so it is safe to send again; otherwise handled like a 5xx (retry later)."""
