"""Calls: who is on a call, its state, the live-call registry and its events (telephony.md §3.7, §9.3).

A ``Call`` is the part of a call that other features may know about: the session id, the tenant, the two
parties, the state and its times. The B2BUA (``vpbx.pbx.b2bua``) owns the legs and the media behind it.
Live calls are found only through a ``CallRegistry`` (in memory in v1); its ``admit`` is where the
tenant's channel limit is enforced, so a call counts once however many legs it rings.

``CallEvents`` publishes the engine's events on the bus with one ``seq`` per session, in the wire terms of
integration-api.md §5.2 (numbers ``<login>@<domain>``, PINs, SIP URIs, ``disconnect_reason`` codes).
The ``Directory`` is what the engine reads about tenants and users (``EngineDirectory``: the node's
in-memory ``SipDirectory``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import ipaddress
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vpbx.clock import Clock
from vpbx.logs import get_logger
from vpbx.pbx.bus import CallEvent, CallKind, CallState, CallType, EventBus, SequenceCounter, SessionId
from vpbx.pbx.directory import DirectoryUser, DomainInfo, SipDirectory
from vpbx.store.models import DomainId

if TYPE_CHECKING:
    from vpbx.pbx.history import CallJournal

log = get_logger("vpbx.pbx.calls")

# integration-api.md §5.2, disconnect_reason (observed codes)
REASON_NO_CONNECTION = ""  # the leg was released without an audio connection
REASON_TRANSFER = "0"
REASON_BUSY = "3"
REASON_HELD_OR_TRANSFER_HANGUP = "4"
REASON_NORMAL = "5"  # a conversation ended normally

# CallEvent.extra keys the call history reads (none of them goes on the wire of integration-api.md §5.2):
#   end:          "status_code", "status_text" (the final SIP answer of an unanswered call),
#                 "voicemail" = "true" (a message was left), "end_reason": normal, no_answer, busy, cancelled,
#                 failed, media_timeout, media_lost, shutdown; recovered (closed at start-up after a crash)
#   disconnected: "transfer_to" (the PIN or digits the call was transferred to)
#   connected:    "pickup" = "true" (answered by a pick-up, not by the rung phone)
EXTRA_KEYS = ("status_code", "status_text", "voicemail", "end_reason", "transfer_to", "pickup")

MAX_LIVE_CALLS = 100_000  # per node, whatever the tenants' limits say


class Phase(enum.Enum):
    """Where a call is: ringing (legs being rung), connected (audio bridged), ended."""

    RINGING = "ringing"
    CONNECTED = "connected"
    ENDED = "ended"


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """A user on one end of a call, as the events name them (integration-api.md §5.2)."""

    user_id: uuid.UUID | None
    login: str  # the cabinet login (User.name)
    pin: str  # the extension
    display_name: str
    domain: str
    external: str = ""  # an outside number (E.164 digits, no "+"): a caller from a trunk, or one of our lines
    record_calls: bool = False  # the user asked for their calls to be recorded (telephony.md §3.10)

    @property
    def number(self) -> str:
        if self.external:
            return f"sip:{self.external}@{self.domain}"
        return f"{self.login}@{self.domain}"

    @property
    def uri(self) -> str:
        return f"sip:{self.external or self.pin}@{self.domain}"


def outside_party(e164: str, domain: str, display_name: str = "") -> Party:
    """A number outside the PBX (a caller on a line, or the line itself) as the events name it."""
    return Party(
        user_id=None, login="", pin="", display_name=display_name, domain=domain, external=e164.lstrip("+")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSnapshot:
    """A live call as the cabinet shows it."""

    session_id: SessionId
    domain_id: DomainId
    domain: str
    type: CallType
    from_number: str
    from_pin: str
    to_number: str
    to_pin: str
    state: str
    started_at: dt.datetime
    answered_at: dt.datetime | None


@dataclass(slots=True, kw_only=True, eq=False)
class Call:
    session_id: SessionId
    domain: DomainInfo
    caller: Party
    callee: Party
    type: CallType = "internal"
    phase: Phase = Phase.RINGING
    started_at: dt.datetime
    answered_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    held: bool = False
    line: str = ""  # our line (E.164 digits): the DID of an incoming call, the caller id of an outbound one
    kind: CallKind = "normal"  # callback: placed by call_back (integration-api.md §4.1)

    def snapshot(self) -> CallSnapshot:
        return CallSnapshot(
            session_id=self.session_id,
            domain_id=self.domain.id,
            domain=self.domain.name,
            type=self.type,
            from_number=self.caller.number,
            from_pin=self.caller.pin,
            to_number=self.callee.number,
            to_pin=self.callee.pin,
            state="held" if self.held and self.phase is Phase.CONNECTED else self.phase.value,
            started_at=self.started_at,
            answered_at=self.answered_at,
        )


class CallRegistry(Protocol):
    """Live calls of this node (telephony.md §9.3): admission, lookup, snapshots."""

    def admit(self, call: Call) -> bool:
        """Add ``call`` unless its tenant is at its channel limit (or the node is full): False then."""
        ...

    def get(self, session_id: SessionId) -> Call | None: ...

    def remove(self, session_id: SessionId) -> Call | None: ...

    def active(self, domain_id: DomainId) -> int:
        """The tenant's concurrent calls."""
        ...

    def snapshot(self, domain_id: DomainId | None = None) -> list[CallSnapshot]:
        """Live calls, oldest first; one tenant's only when ``domain_id`` is given."""
        ...


class MemoryCallRegistry:
    """The v1 registry: a dictionary of calls and a counter per tenant, bounded by ``max_calls``."""

    def __init__(self, max_calls: int = MAX_LIVE_CALLS) -> None:
        self.max_calls = max_calls
        self._calls: dict[SessionId, Call] = {}
        self._per_domain: dict[DomainId, int] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def admit(self, call: Call) -> bool:
        domain = call.domain
        if call.session_id in self._calls:
            return True
        if len(self._calls) >= self.max_calls or self.active(domain.id) >= domain.channel_limit:
            return False
        self._calls[call.session_id] = call
        self._per_domain[domain.id] = self._per_domain.get(domain.id, 0) + 1
        return True

    def get(self, session_id: SessionId) -> Call | None:
        return self._calls.get(session_id)

    def remove(self, session_id: SessionId) -> Call | None:
        call = self._calls.pop(session_id, None)
        if call is not None:
            left = self._per_domain.get(call.domain.id, 1) - 1
            if left > 0:
                self._per_domain[call.domain.id] = left
            else:
                self._per_domain.pop(call.domain.id, None)
        return call

    def active(self, domain_id: DomainId) -> int:
        return self._per_domain.get(domain_id, 0)

    def snapshot(self, domain_id: DomainId | None = None) -> list[CallSnapshot]:
        calls = [c for c in self._calls.values() if domain_id is None or c.domain.id == domain_id]
        return [c.snapshot() for c in sorted(calls, key=lambda c: c.started_at)]


@dataclass
class CallEvents:
    """Publishes a call's events in order, with ``seq`` 1, 2, 3… per session (telephony.md §3.7).

    With a ``journal`` (the call history), each event is made durable first, so a consumer that sees ``end``
    on the bus finds the closed record."""

    bus: EventBus
    clock: Clock
    journal: CallJournal | None = None
    _seq: SequenceCounter = field(default_factory=SequenceCounter)

    async def publish(
        self,
        call: Call,
        state: CallState,
        *,
        request_uri: str = "",
        disconnect_reason: str | None = None,
        is_record: bool | None = None,
        extra: dict[str, str] | None = None,
    ) -> CallEvent:
        """Publish one event. ``extra`` carries what the call history needs beyond the wire fields
        (keys in ``EXTRA_KEYS``)."""
        event = CallEvent(
            session_id=call.session_id,
            seq=self._seq.next(call.session_id),
            state=state,
            type=call.type,
            call_kind=call.kind,
            domain_id=call.domain.id,
            domain=call.domain.name,
            timestamp=self.clock.now(),
            from_number=call.caller.number,
            from_pin=call.caller.pin,
            from_uri=call.caller.uri,
            request_number=call.callee.number,
            request_pin=call.callee.pin,
            request_uri=request_uri or call.callee.uri,
            line=call.line or None,
            disconnect_reason=disconnect_reason if state == "disconnected" else None,
            is_record=is_record if state == "end" else None,
            extra=dict(extra) if extra else {},
        )
        if state == "end":
            self._seq.forget(call.session_id)
        if self.journal is not None:
            try:
                await self.journal.append(event)
            except Exception:  # the history must never take a call down either
                log.exception("call.journal_failed", session_id=call.session_id, call_event=event.name)
        try:
            await self.bus.publish(event)
        except Exception:  # the bus must never take a call down
            log.exception("call.event_failed", session_id=call.session_id, call_event=event.name)
        return event


def event_json(event: CallEvent) -> dict[str, str | int]:
    """An event in the wire terms of integration-api.md §5.2 (keys that do not apply are left out)."""
    out: dict[str, str | int] = {
        "state": event.state,
        "type": event.type,
        "session_id": event.session_id,
        "seq": event.seq,
        "timestamp": event.timestamp.isoformat(),
        "from_number": event.from_number,
    }
    if event.from_pin:
        out["from_pin"] = event.from_pin
    if event.from_uri:
        out["from_uri"] = event.from_uri
    out["request_number"] = event.request_number
    if event.request_pin:
        out["request_pin"] = event.request_pin
    if event.request_uri:
        out["request_uri"] = event.request_uri
    if event.disconnect_reason is not None:
        out["disconnect_reason"] = event.disconnect_reason
    if event.is_record is not None:
        out["is_record"] = "true" if event.is_record else "false"
    out["domain"] = event.domain
    return out


class JsonLinesEventLog:
    """A bus subscriber appending each event to a file as one JSON line (tests: ``debug_call_events_file``).

    Writes go through a thread so the loop never waits on the disk.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    async def __call__(self, event: CallEvent) -> None:
        line = json.dumps(event_json(event), ensure_ascii=False) + "\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)


# --- the directory: tenants and users as the engine sees them -----------------------------------------------


class Directory(Protocol):
    async def domain(self, host: str) -> DomainInfo | None:
        """The active tenant a SIP host part names (an IP address: the default domain), else None."""
        ...

    async def user_by_pin(self, domain: DomainInfo, pin: str) -> Party | None: ...

    async def user_by_login(self, domain: DomainInfo, sip_login: str) -> Party | None: ...


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _party(user: DirectoryUser | None, domain: DomainInfo) -> Party | None:
    if user is None:
        return None
    return Party(
        user_id=user.id,
        login=user.name,
        pin=user.pin,
        display_name=user.display_name,
        domain=domain.name,
        record_calls=user.record_calls,
    )


class EngineDirectory:
    """The ``Directory`` over the SIP node's in-memory ``SipDirectory`` (no query per call)."""

    def __init__(self, directory: SipDirectory, *, default_domain: str = "") -> None:
        self._directory = directory
        self._default = default_domain.lower()

    async def domain(self, host: str) -> DomainInfo | None:
        name = host.lower().strip("[]")
        found = await self._directory.domain(name)
        if found is None and self._default and _is_address(name):
            found = await self._directory.domain(self._default)
        return found

    async def user_by_pin(self, domain: DomainInfo, pin: str) -> Party | None:
        return _party(await self._directory.user_by_pin(domain.id, pin), domain)

    async def user_by_login(self, domain: DomainInfo, sip_login: str) -> Party | None:
        return _party(await self._directory.user_by_login(domain.name, sip_login), domain)
