"""The vpbx exception tree.

Every error a client can see carries a stable kebab-case ``code`` that is never renamed once shipped::

    VpbxError (code: str)
    ├── ConfigError                      settings that refuse to start the process
    ├── SipError ── SipParseError, SdpParseError, TransactionError, LocationFull
    ├── MediaError ── MediaParseError, NoMediaPorts, NoMediaSession, WorkerUnavailable
    ├── StoreError ── NotFound, Conflict
    │                 └── ValidationFailed (field → message; nothing was saved)
    ├── AuthError ── LoginFailed, LoginLocked, CsrfFailed
    └── IntegrationError ── SignatureInvalid, ReplayDetected, DeliveryFailed, CrmUnavailable

Layers add their branch here; one handler per API surface maps codes to responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import ClassVar


class VpbxError(Exception):
    code: ClassVar[str] = "vpbx-error"

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, object] = details or {}


class ConfigError(VpbxError):
    code = "config-invalid"


class StoreError(VpbxError):
    code = "store-error"


class NotFound(StoreError):
    code = "not-found"

    def __init__(self, kind: str, ident: object | None = None) -> None:
        super().__init__(f"No such {kind}", details={"kind": kind, "id": str(ident) if ident else None})
        self.kind = kind


class Conflict(StoreError):
    code = "conflict"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One field's problem: ``msgid`` is an English catalog message, translated when shown."""

    field: str
    msgid: str
    params: dict[str, object] = dc_field(default_factory=dict)


class ValidationFailed(StoreError):
    code = "validation-failed"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("Validation failed", details={"fields": [e.field for e in errors]})
        self.errors = errors

    @classmethod
    def one(cls, field_name: str, msgid: str, **params: object) -> ValidationFailed:
        return cls([FieldError(field_name, msgid, dict(params))])

    def by_field(self) -> dict[str, list[FieldError]]:
        out: dict[str, list[FieldError]] = {}
        for e in self.errors:
            out.setdefault(e.field, []).append(e)
        return out


class AuthError(VpbxError):
    code = "auth-error"


class LoginFailed(AuthError):
    code = "login-failed"


class LoginLocked(AuthError):
    code = "login-locked"


class CsrfFailed(AuthError):
    code = "csrf-failed"


class SipError(VpbxError):
    code = "sip-error"


class MediaError(VpbxError):
    code = "media-error"


class IntegrationError(VpbxError):
    code = "integration-error"


class MediaParseError(MediaError):
    """A malformed RTP or telephone-event packet; ``reason`` names the failed check (``rtp-short``, …)."""

    code = "media-parse"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason, details={"reason": reason})
        self.reason = reason


class NoMediaPorts(MediaError):
    """Every RTP/RTCP port pair of the configured range is in use."""

    code = "no-media-ports"


class TransactionError(SipError):
    """The transaction user misused the transaction layer (an ACK or a reused branch as a new transaction)."""

    code = "sip-transaction"


class LocationFull(SipError):
    """The location store holds as many bindings as it may; the REGISTER gets 503 (telephony.md §3.6)."""

    code = "location-full"

    def __init__(self, limit: int) -> None:
        super().__init__("Location store is full", details={"limit": limit})


class SipParseError(SipError):
    """A SIP message that cannot be accepted (telephony.md §3.1).

    ``status`` is the response it earns (400, 416, 505 or 513) when it is a request and a reply is possible;
    ``reason`` is a short stable kebab-case word (``missing-call-id``, ``bad-content-length``…), also the
    label of ``vpbx_sip_parse_errors_total``.
    """

    code = "sip-parse"

    def __init__(self, reason: str, detail: str = "", *, status: int = 400) -> None:
        super().__init__(
            f"{reason}: {detail}" if detail else reason, details={"reason": reason, "status": status}
        )
        self.reason = reason
        self.status = status


class SdpParseError(SipError):
    """A session description that cannot be read (RFC 8866); ``reason`` names the failed check."""

    code = "sdp-parse"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason, details={"reason": reason})
        self.reason = reason


class NoMediaSession(MediaError):
    code = "no-media-session"

    def __init__(self, session_id: str) -> None:
        super().__init__("No such media session", details={"session_id": session_id})


class WorkerUnavailable(MediaError):
    """A media worker process is down, restarting, or did not answer a command in time (telephony.md §3.9)."""

    code = "media-worker-unavailable"


class RecordingFailed(MediaError):
    """A recording's file could not be written, finalised or encoded (telephony.md §3.10)."""

    code = "recording-failed"
