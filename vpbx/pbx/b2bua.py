"""The B2BUA for calls between phones (telephony.md §3.7, §4): one A-leg, forked B-legs, anchored media.

An authenticated INVITE from a user to an extension of the same tenant becomes a call: every live binding of
the callee is rung in parallel, each B-leg with its own Call-ID, tags, CSeq and our anchored SDP offer; the
first 2xx wins (ACK, CANCEL the others with ``Reason: SIP;cause=200;text="Call completed elsewhere"``), A gets
200 with our SDP and the relay bridges the two legs. Only the caller's identity crosses legs (From display
name and extension), never copied headers. Hold, OPTIONS and UPDATE are answered on the leg where they arrive
(media is anchored, the other leg is not re-INVITEd). A call ends on BYE from either side, on CANCEL, when
nobody answers within ``no_answer_s``, when the media goes silent (``on_media_timeout``), when A never
ACKs our 2xx (64·T1, RFC 3261 §13.3.1.4) and when the node stops.

The node (``vpbx.pbx.node.SipNode``) calls ``on_request``/``on_response``/``on_terminated`` as a
``CallHandler``; everything a call does happens under its own lock, in arrival order. Timers go through
``Timers`` (the running loop in production, a fake clock in tests). Events go out through ``CallEvents``;
the live calls are in the ``CallRegistry``, which also applies the tenant's channel limit.

Use::

    b2bua = B2bua(registry=MemoryCallRegistry(), events=CallEvents(bus, clock), clock=clock, no_answer_s=60)
    media = InlineMediaBackend(..., on_media_timeout=b2bua.on_media_timeout)
    b2bua.media = media
    node = SipNode(core, calls=b2bua)
    b2bua.attach(node, EngineDirectory(node.directory, default_domain=...))
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import secrets
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import Counter, Gauge

from vpbx.clock import Clock
from vpbx.errors import MediaError, NoMediaPorts, NotFound, SdpParseError, SipError, SipParseError
from vpbx.logs import get_logger
from vpbx.media.backend import MediaBackend, MediaPorts
from vpbx.media.dtmf import Digit
from vpbx.media.prompts import Prompt, SystemPhrase, Tone, Voice
from vpbx.media.relay import Address as MediaAddress
from vpbx.media.relay import LegRef
from vpbx.pbx.bus import SessionId, new_session_id
from vpbx.pbx.callplan import Plan, Rotation, external_plan, group_plan, user_plan
from vpbx.pbx.calls import (
    REASON_HELD_OR_TRANSFER_HANGUP,
    REASON_NORMAL,
    REASON_TRANSFER,
    Call,
    CallEvents,
    CallRegistry,
    Directory,
    Party,
    Phase,
    outside_party,
)
from vpbx.pbx.dnd import END_REASON as DND_END_REASON
from vpbx.pbx.dnd import FEATURE_CODES, FEATURE_REPLY_CODE, FEATURE_REPLY_PHRASE, set_dnd
from vpbx.pbx.incoming import RoutingQuery
from vpbx.pbx.node import ALLOW, SUPPORTED, USER_AGENT
from vpbx.pbx.numbering import to_e164
from vpbx.pbx.recording import wants_recording
from vpbx.pbx.registrar import Binding, aor_for
from vpbx.pbx.voicemail import MIN_MESSAGE_S, Recorded
from vpbx.sip.dialog import (
    Dialog,
    DialogState,
    LocalVia,
    build_cancel,
    build_initial_request,
    new_call_id,
    new_tag,
    reason_header,
    tag_of,
)
from vpbx.sip.flow import Destination
from vpbx.sip.message import (
    REASON_PHRASES,
    URI,
    Address,
    Parameters,
    Request,
    Response,
    parse_address,
    parse_uri,
    serialize,
)
from vpbx.sip.sdp import (
    MediaDescription,
    Origin,
    SessionDescription,
    build_offer,
    negotiate,
    parse_sdp,
    serialize_sdp,
)
from vpbx.sip.transaction import T1, T2, TIMEOUT_FACTOR, TransactionKey

if TYPE_CHECKING:
    import datetime as dt

    from vpbx.pbx.broadcaster import Broadcast
    from vpbx.pbx.directory import DomainInfo
    from vpbx.pbx.incoming import Decision, RoutingAnswer
    from vpbx.pbx.ivr_plan import MenuAction, MenuPlan
    from vpbx.pbx.node import SipNode
    from vpbx.pbx.originate import Originate
    from vpbx.pbx.outbound import OutboundDecision
    from vpbx.pbx.recording import CallRecordings
    from vpbx.pbx.transfer import Transfer
    from vpbx.pbx.trunkmon import TrunkInfo
    from vpbx.pbx.voicemail import VoicemailTarget
    from vpbx.store.models import DomainId

log = get_logger("vpbx.pbx.b2bua")
security = get_logger("vpbx.security")

NO_ANSWER_S = 60.0  # telephony.md §3.7: no answer per route → 480
SDP = "application/sdp"
SUPPORTED_OPTIONS = frozenset({"replaces", "norefersub"})  # option tags an INVITE may Require; never 100rel
BUSY_CODES = frozenset({486, 600, 603})  # any of them from a B-leg → 486 to A (RFC 3261 §21.4.24)
PASSED_CODES = frozenset({404, 480})  # passed to A as they are when every B-leg says the same
FAILOVER_CODES = frozenset({408, 500, 502, 503, 504})  # a carrier that fails this way: try the next trunk
MAX_MENUS = 10  # menus one call may pass through (menu → menu by keys)
MAX_PHRASE_S = 10.0  # a refusal's spoken phrase is cut after this
ROUTING_HOOK_DEADLINE_S = 3.0  # integration-api.md §5.3: the platform cap of get_number_info
MAX_DISPLAY_NAME = 64
ELSEWHERE = reason_header(200, "Call completed elsewhere")  # RFC 3326, telephony.md §3.6
CANCELLED = reason_header(487)  # BYE of a B-leg that answered after our CANCEL (telephony.md §4)
MEDIA_TIMEOUT = reason_header(200, "media timeout")  # telephony.md §3.7
MEDIA_LOST = reason_header(503, "media lost")  # the media worker holding the call died (telephony.md §3.9)
NO_ACK = reason_header(408, "no ACK")  # RFC 3261 §13.3.1.4: our 2xx was never acknowledged
SHUTDOWN = reason_header(503, "server shutting down")
RETRY_AFTER_S = "5"

# CallEvent.extra["end_reason"] of each outcome (vpbx.pbx.calls.EXTRA_KEYS)
END_REASONS = {"answered": "normal", "unanswered": "no_answer"}
UNREACHABLE = "unreachable"  # unanswered because every branch failed on a transport error (ICMP, refused TCP)
CALLS = Counter("vpbx_calls_total", "Calls handled by the B2BUA, by outcome", ["outcome"])
CALLS_ACTIVE = Gauge("vpbx_calls_active", "Live calls on this node")

Side = Literal["a", "b"]


# --- timers -------------------------------------------------------------------------------------------------
class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class TrunkLookup(Protocol):
    """The trunk monitor, as the B2BUA sees it: which carrier a request came from."""

    def trunk_for_source(self, host: str, port: int) -> TrunkInfo | None: ...

    def outbound_trunks(self, domain_id: DomainId) -> list[TrunkInfo]:
        """The domain's usable trunks in failover order."""
        ...


class PhraseSource(Protocol):
    """Where the engine's spoken phrases come from (``vpbx.media.prompts.PromptStore``)."""

    async def system_phrase(self, phrase: SystemPhrase, voice: Voice = "ru") -> Prompt: ...

    def get(self, prompt_id: str) -> Prompt:
        """A stored prompt by id; ``PromptError`` when its files are gone."""
        ...

    async def tone(self, kind: Tone) -> Prompt:
        """The platform's ringback or music-on-hold tone as a stored prompt."""
        ...


class MenuSource(Protocol):
    """Voice menus as the engine plays them (``vpbx.pbx.ivr_plan.MenuPlans``)."""

    async def menu_plan(self, domain_id: DomainId, menu_id: uuid.UUID) -> MenuPlan: ...


class VoicemailDesk(Protocol):
    """Voicemail boxes for the engine (``vpbx.pbx.voicemail.Voicemail``)."""

    async def target(
        self, domain_id: uuid.UUID, *, user_id: uuid.UUID | None = None, group_id: uuid.UUID | None = None
    ) -> VoicemailTarget | None: ...

    def recording_path(self, domain_id: uuid.UUID, session_id: str) -> Path: ...

    def save(self, rec: Recorded) -> None: ...

    def discard(self, path: Path) -> None: ...


class OutboundRoutes(Protocol):
    """Whether and how a user may call an outside number (``vpbx.pbx.outbound.OutboundRouter``)."""

    async def decide(
        self, domain_id: DomainId, user_id: uuid.UUID | None, dialled: str
    ) -> OutboundDecision | None: ...


class IncomingRoutes(Protocol):
    """Where a call to one of the domains' lines goes (``vpbx.pbx.incoming.IncomingRouter``)."""

    async def decide(self, line_e164: str, when: dt.datetime) -> Decision | None: ...

    async def by_extension(self, domain_id: uuid.UUID, line_e164: str, pin: str) -> Decision | None: ...

    async def by_group(
        self, domain_id: uuid.UUID, line_e164: str, group_id: uuid.UUID
    ) -> Decision | None: ...


RoutingHook = Callable[[RoutingQuery], Awaitable["RoutingAnswer | None"]]
"""Asked before an incoming call is routed (the Integration API's get_number_info, amoCRM's routing)."""


class Timers(Protocol):
    """Per-call timers (no answer, 2xx retransmission, ACK wait): the loop in production, fakes in tests."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle: ...

    def monotonic(self) -> float:
        """The clock ``call_later`` counts on (ringing plans measure their stages with it)."""
        ...


class LoopTimers:
    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()


# --- legs ---------------------------------------------------------------------------------------------------
@dataclass(eq=False, slots=True)
class _Unacked:
    """Our 2xx to an INVITE, retransmitted T1 doubling to T2 until its ACK (RFC 3261 §13.3.1.4)."""

    data: bytes
    dest: Destination
    cseq: int
    interval: float
    resend: TimerHandle | None = None
    give_up: TimerHandle | None = None

    def stop(self) -> None:
        for handle in (self.resend, self.give_up):
            if handle is not None:
                handle.cancel()


@dataclass(eq=False, slots=True, kw_only=True)
class Leg:
    side: Side
    token: str  # the user part of our Contact on this leg: in-dialog requests find the leg by it
    flow: Destination  # where this leg's requests and our retransmissions go (telephony.md §3.2)
    via: LocalVia
    contact: Address
    origin: Origin  # our SDP's o= line on this leg (its version moves only when our SDP changes)
    dialog: Dialog | None = None
    last_sdp: bytes | None = None
    held: bool = False
    unacked: _Unacked | None = None
    awaiting_answer: bool = False  # we offered in a 2xx: the answer comes in the ACK
    bye_reason: str | None = None  # a BYE waits for the ACK of our 2xx (RFC 3261 §15)
    bye_pending: bool = False


@dataclass(eq=False, slots=True, kw_only=True)
class ALeg(Leg):
    key: TransactionKey
    invite: Request
    tag: str
    offer: SessionDescription | None  # the caller's SDP offer; None: it wants ours in the 200
    record_route: tuple[str, ...] = ()
    final_sent: bool = False
    final_code: int = 0  # the final response the caller got (the history's status of an unanswered call)
    ringing_sent: bool = False
    early_sent: bool = False


class BState(enum.Enum):
    CALLING = "calling"  # INVITE sent, nothing heard
    PROCEEDING = "proceeding"  # a provisional arrived: a CANCEL may go
    ANSWERED = "answered"
    FAILED = "failed"  # a final ≥ 300 (or our BYE after a late 2xx)


@dataclass(eq=False, slots=True, kw_only=True)
class BLeg(Leg):
    contact_uri: str  # the binding rung
    party: Party | None = None  # the user this leg rings (events name them once it rings or answers)
    stage: int = 0  # the ringing plan's stage that started it
    trunk: TrunkInfo | None = None  # a leg to a carrier
    spare_trunks: tuple[TrunkInfo, ...] = ()  # failover: tried in turn when the carrier fails
    authenticated: bool = False  # our INVITE already answered the carrier's 401/407
    dialled: str = ""  # a leg to a carrier: the number (E.164) it calls
    invite: Request
    key: TransactionKey | None = None
    state: BState = BState.CALLING
    cancel_wanted: bool = False
    cancel_reason: str | None = None
    cancel_sent: bool = False
    final: int | None = None
    unreachable: bool = False  # the transaction failed on a transport error (ICMP, refused connection)
    ack: bytes | None = None


@dataclass(eq=False, slots=True, kw_only=True)
class _Ivr:
    """A caller in a voice menu: the menu, greetings left, the digit timer, an extension being keyed."""

    plan: MenuPlan
    plays_left: int
    timer: TimerHandle | None = None
    keyed: str | None = None  # the "extension" key: digits so far (None: not collecting)
    invalid_playing: bool = False
    menus: int = 1  # menus visited in this call (menu → menu loops end at MAX_MENUS)


@dataclass(eq=False, slots=True, kw_only=True)
class _Vm:
    """A caller leaving a voicemail: the greeting, the beep, then the recording until # or the limit."""

    target: VoicemailTarget
    stage: Literal["greeting", "beep", "recording"] = "greeting"
    path: Path | None = None
    t0: float = 0.0  # monotonic start of the recording
    timer: TimerHandle | None = None


@dataclass(eq=False, slots=True, kw_only=True)
class _Ctx:
    call: Call
    a: ALeg
    b: list[BLeg] = field(default_factory=list)
    ports: MediaPorts | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    winner: BLeg | None = None
    early: BLeg | None = None  # the B-leg whose early media is bridged (the first with SDP)
    a_answer: bytes | None = None  # our answer to A's offer: sent in the 183 and again in the 200
    no_answer: TimerHandle | None = None
    ended: bool = False
    forgotten: bool = False
    # incoming calls on a line: the line, and the ringing plan (vpbx.pbx.callplan) with its progress
    line: Party | None = None
    plan: Plan | None = None
    plan_people: dict[str, Party] = field(default_factory=dict)  # pin → party
    plan_t0: float = 0.0  # monotonic start
    plan_skipped: float = 0.0  # seconds jumped ahead when a stage ended early (everyone failed)
    plan_timer: TimerHandle | None = None
    stage_legs: dict[int, list[BLeg]] = field(default_factory=dict)
    display: str = ""
    caller_id: str = ""  # outbound calls: the number the carrier is told (E.164)
    fallthrough: Decision | None = None  # incoming calls: where to go when the plan ends unanswered
    trunks_held: set[uuid.UUID] = field(default_factory=set)  # trunks whose channels this call uses
    answered_by_pbx: bool = False  # our voice menu answered the caller (200 sent, no B-leg yet)
    ivr: _Ivr | None = None  # the voice menu the caller is in
    vm: _Vm | None = None  # the voicemail the caller is leaving
    vm_owner: uuid.UUID | None = None  # the user rung, whose box may take the call when unanswered or busy
    dnd_busy: bool = False  # the user plan's user is on DND (vpbx.pbx.dnd): nobody rung, the call is busy
    # hold and transfer (vpbx.pbx.transfer): who talks on each media side once a transfer changed it
    sides: dict[Side, Leg | None] = field(default_factory=dict)  # side → leg (None: nobody any more)
    parties: dict[Side, Party] = field(default_factory=dict)  # side → party, once a transfer changed them
    handed_over: list[Leg] = field(default_factory=list)  # legs an attended transfer moved to another call
    transfer: Transfer | None = None  # a REFER being carried out
    moh: set[Side] = field(default_factory=set)  # sides hearing music on hold
    merged: bool = False  # a consultation call that an attended transfer merged into another call
    end_reason: str = ""  # why the call ended, when not its outcome (media_lost, shutdown…), for the history
    originate: Originate | None = None  # a call we placed (call_back): A is no caller, side a the employee
    broadcast: Broadcast | None = None  # an autoinformer call (vpbx.pbx.broadcaster): side a the recipient

    @property
    def session_id(self) -> SessionId:
        return self.call.session_id


@dataclass(eq=False, slots=True)
class _Pending:
    """An INVITE being authenticated and routed: a CANCEL may arrive before the call exists."""

    cancelled: bool = False


# --- helpers ------------------------------------------------------------------------------------------------
def _to_tag(msg: Request | Response) -> str | None:
    try:
        return tag_of(msg.to_address)
    except SipParseError:
        return None


def _origin(host: str) -> Origin:
    return Origin(
        session_id=str(secrets.randbits(62)),
        version=1,
        addr_type="IP6" if ":" in host else "IP4",
        address=host,
    )


def _contact(token: str, advertised: tuple[str, int], transport: str) -> Address:
    host, port = advertised
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    params = Parameters(transport=transport.lower()) if transport.lower() != "udp" else Parameters()
    return Address(uri=URI(scheme="sip", user=token, host=host, port=port, parameters=params))


def _incoming_leg(
    node: SipNode,
    side: Side,
    key: TransactionKey,
    invite: Request,
    flow: Destination,
    offer: SessionDescription | None,
) -> ALeg:
    """The leg of the party that sent us ``invite``: a new call's caller, or a phone taking a side with
    Replaces (RFC 3891); our Contact, Via and SDP origin on it, no dialog yet."""
    token = secrets.token_hex(8)
    return ALeg(
        side=side,
        token=token,
        flow=flow,
        via=LocalVia(flow.transport.upper(), *node.advertised_for(flow.transport)),
        contact=_contact(token, node.advertised_for(flow.transport), flow.transport),
        origin=_origin(node.advertised[0]),
        key=key,
        invite=invite,
        tag=new_tag(),
        offer=offer,
        record_route=tuple(invite.headers.getlist("Record-Route")),
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def binding_destination(binding: Binding) -> Destination:
    """Where a new request to a registered contact goes (telephony.md §3.2).

    To the flow the phone registered over when it is behind NAT, registered over TCP/TLS (only that
    connection reaches it) or through a proxy (Path); otherwise to the Contact's own address, which is where a
    phone that registers from another socket (or a registrar client acting for it) listens.
    """
    flow = binding.flow
    if flow.transport != "udp" or binding.nated or binding.path:
        return flow
    try:
        uri = parse_uri(binding.contact)
    except SipParseError:
        return flow
    host = uri.host.strip("[]")
    if not _is_ip(host):
        return flow
    return Destination("udp", host, uri.port or 5060)


def _sdp_of(msg: Request | Response) -> SessionDescription | Literal["bad"] | None:
    """The message's SDP; None without a body, ``"bad"`` for a body we cannot read as SDP."""
    if not msg.body:
        return None
    try:
        ctype = msg.content_type
    except SipParseError:
        return "bad"
    if ctype is not None and ctype.mime_type.lower() != SDP:
        return "bad"
    try:
        return parse_sdp(msg.body)
    except SdpParseError:
        return "bad"


def _accepted(offer: SessionDescription, answer: SessionDescription) -> MediaDescription | None:
    """The offer's m-line that the answer accepted (port ≠ 0), by position (RFC 3264 §6)."""
    for m_offer, m_answer in zip(offer.media, answer.media, strict=False):
        if m_answer.port != 0 and m_answer.media == "audio":
            return m_offer
    return None


def _remote(sd: SessionDescription, m: MediaDescription) -> MediaAddress | None:
    """Where the peer wants RTP: its c= and m= port; None for hold (c=0.0.0.0), port 0 or a host name."""
    conn = sd.connection_of(m)
    if conn is None or conn.is_hold or m.port == 0:
        return None
    host = conn.address.split("/", 1)[0]
    if not _is_ip(host):
        return None
    return MediaAddress(host.strip("[]"), m.port)


_DTMF_KEYS = frozenset("0123456789*#")


def _info_digit(request: Request) -> str | None:
    """The key of a SIP INFO DTMF body: ``application/dtmf-relay`` (``Signal=5``) or ``application/dtmf``."""
    kind = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    text = request.body.decode("ascii", "replace")
    if kind == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "signal":
                text = value
                break
        else:
            return None
    elif kind != "application/dtmf":
        return None
    key = text.strip()
    return key if len(key) == 1 and key in _DTMF_KEYS else None


def _line_of(ctx: _Ctx) -> str:
    """The line (E.164) an incoming call came in on, or ""."""
    return f"+{ctx.line.external}" if ctx.line is not None else ""


def _a_closed(ctx: _Ctx) -> bool:
    """The caller has had its final response, and not from our own menu (whose dialog goes on)."""
    return ctx.a.final_sent and not ctx.answered_by_pbx


def _ringable(decision: Decision) -> bool:
    """A decision the B2BUA can ring: people, or an outside number (through a trunk)."""
    if decision.action in ("user", "group"):
        return bool(decision.people)
    return decision.action == "external" and bool(decision.number)


def _overflowing(hooked: Decision, rules: Decision, after_s: float, session_id: str) -> Decision:
    """A hook's target rung for ``after_s``, then the rules' decision (amocrm.md F9.5): the rules become its
    fall-through. A menu answers the caller itself, so it cannot follow a ringing plan: the target then rings
    as long as the rules would ring it, with no overflow."""
    if rules.action == "menu":
        log.info("call.overflow_to_menu_unsupported", session_id=session_id)
        return hooked
    follow = rules if _ringable(rules) or rules.action == "voicemail" else None  # none, reject: hang up
    return replace(hooked, ring_s=max(1.0, float(after_s)), fallthrough=follow)


def _box_owner(decision: Decision) -> uuid.UUID | None:
    """The user whose box may take a call to ``decision`` left unanswered: a user's, not a group's."""
    return decision.people[0].user_id if decision.action == "user" and decision.people else None


def _clean_display(name: str) -> str:
    """A display name from outside (a CRM): no control characters, quotes or backslashes; 64 characters."""
    kept = "".join(c for c in name if c.isprintable() and c not in '"\\')
    return kept.strip()[:MAX_DISPLAY_NAME]


def _end_extra(ctx: _Ctx, outcome: str) -> dict[str, str]:
    """What ``end`` tells the call history: why the call ended and, unanswered, the caller's final answer."""
    reason = ctx.end_reason or END_REASONS.get(outcome, outcome)
    if outcome == "unanswered" and not ctx.end_reason and ctx.b and all(leg.unreachable for leg in ctx.b):
        reason = UNREACHABLE  # every contact rung is gone (RFC 3261 §18.4): none merely unanswered
    extra = {"end_reason": reason}
    if ctx.call.answered_at is None and ctx.a.final_code >= 300:
        extra["status_code"] = str(ctx.a.final_code)
        extra["status_text"] = REASON_PHRASES.get(ctx.a.final_code, "")
    return extra


def _final_for_a(codes: list[int]) -> int:
    """A's final when no B-leg answered (telephony.md §4): busy wins, then a shared 404/480, else 480."""
    if any(c in BUSY_CODES for c in codes):
        return 486
    if codes and all(c == codes[0] for c in codes) and codes[0] in PASSED_CODES:
        return codes[0]
    return 480


# --- the B2BUA ----------------------------------------------------------------------------------------------
class B2bua:
    """Calls between the phones of one tenant (the node's ``CallHandler``)."""

    def __init__(
        self,
        *,
        registry: CallRegistry,
        events: CallEvents,
        clock: Clock,
        directory: Directory | None = None,
        media: MediaBackend | None = None,
        timers: Timers | None = None,
        no_answer_s: float = NO_ANSWER_S,
        t1: float = T1,
        t2: float = T2,
    ) -> None:
        self.directory = directory
        self.registry = registry
        self.events = events
        self.clock = clock
        self.media = media
        self.timers: Timers = timers or LoopTimers()
        self.no_answer_s = no_answer_s
        self.t1 = t1
        self.t2 = t2
        self._node: SipNode | None = None
        # incoming calls on the domains' lines (issue core-3): set by the composition root
        self.trunks: TrunkLookup | None = None
        self.incoming: IncomingRoutes | None = None
        self.outbound: OutboundRoutes | None = None
        self.routing_hooks: list[tuple[str, RoutingHook]] = []  # (name, hook), asked in this order
        self.prompts: PhraseSource | None = None  # system phrases (vpbx.media.prompts.PromptStore)
        self.menus: MenuSource | None = None  # voice menus (vpbx.pbx.ivr_plan.MenuPlans)
        self.voicemail: VoicemailDesk | None = None  # voicemail boxes (vpbx.pbx.voicemail.Voicemail)
        self.recordings: CallRecordings | None = None  # call recording (vpbx.pbx.recording)
        self.routing_hook_deadline_s = ROUTING_HOOK_DEADLINE_S
        self.rotation = Rotation()  # cyclic groups' next first member
        self._trunk_load: dict[uuid.UUID, int] = {}  # calls holding a channel of each trunk
        self._calls: dict[SessionId, _Ctx] = {}
        self._pending: dict[TransactionKey, _Pending] = {}
        self._by_invite: dict[TransactionKey, _Ctx] = {}
        self._tokens: dict[str, tuple[_Ctx, Leg]] = {}
        self._dialogs: dict[tuple[str, str], tuple[_Ctx, Leg]] = {}
        self._clients: dict[TransactionKey, tuple[_Ctx, BLeg]] = {}
        from vpbx.pbx.transfer import Transfers

        self.transfers = Transfers(self)  # hold music, REFER, Replaces
        from vpbx.pbx.originate import Originator

        self.originator = Originator(self)  # calls we place: call_back (integration-api.md §4.1)
        # place a call: ring the employee first, then dial the number (E.164) and bridge them; False when
        # the call could not start at all (the channel limit)
        self.originate = self.originator.originate
        from vpbx.pbx.broadcaster import Broadcaster

        self.broadcaster = Broadcaster(self)  # autoinformer calls (the BroadcastDialer of vpbx.pbx.broadcast)

    # --- introspection (tests, the cabinet through the registry) ---
    def __len__(self) -> int:
        return len(self._calls)

    @property
    def node(self) -> SipNode:
        if self._node is None:
            raise SipError("The B2BUA is not attached to a SIP node yet")
        return self._node

    def attach(self, node: SipNode, directory: Directory | None = None) -> None:
        """The node this B2BUA serves (its timers send through it) and, if given, the directory to use."""
        self._node = node
        if directory is not None:
            self.directory = directory

    def indexes(self) -> dict[str, int]:
        """Sizes of the internal tables: all zero again once every call and leg is over."""
        return {
            "calls": len(self._calls),
            "pending": len(self._pending),
            "invites": len(self._by_invite),
            "tokens": len(self._tokens),
            "dialogs": len(self._dialogs),
            "clients": len(self._clients),
        }

    # --- CallHandler --------------------------------------------------------------------------------------
    async def on_request(self, node: SipNode, key: TransactionKey | None, request: Request) -> None:
        self._node = node
        if key is None:
            if request.method == "ACK":
                await self._on_ack(request)
            return
        if request.method == "CANCEL":
            await self._on_cancel(node, key, request)
            return
        if request.method == "INVITE" and _to_tag(request) is None:
            await self._new_call(node, key, request)
            return
        found = self._find(request)
        if found is None:
            node.respond(key, request, 481)
            return
        ctx, leg = found
        async with ctx.lock:
            try:
                await self._in_dialog(node, ctx, leg, key, request)
            except Exception:
                await self._abort(ctx, "in-dialog")
                raise

    async def on_response(self, node: SipNode, key: TransactionKey, response: Response) -> None:
        self._node = node
        found = self._clients.get(key)
        if found is None:
            return  # BYE and CANCEL answers, or a leg already forgotten
        ctx, leg = found
        async with ctx.lock:
            try:
                if ctx.transfer is not None and leg in ctx.transfer.legs:
                    await self.transfers.on_target_response(ctx, leg, response)
                elif response.code < 200:
                    await self._b_provisional(ctx, leg, response)
                elif response.code < 300:
                    await self._b_answered(ctx, leg, response)
                elif response.code in (401, 407) and self._authenticate_trunk_leg(ctx, leg, response):
                    pass  # the INVITE went again with our credentials
                elif leg.spare_trunks and response.code in FAILOVER_CODES and await self._fail_over(ctx, leg):
                    pass  # the next trunk rings instead
                else:
                    if ctx.broadcast is not None:
                        self.broadcaster.note_final(ctx, leg, response)
                    await self._b_failed(ctx, leg, response.code)
            except Exception:
                await self._abort(ctx, "response")
                raise

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        found = self._clients.get(key)
        if found is not None:
            if reason == "transport-error":  # before the synthetic 503's task runs: it is queued behind us
                found[1].unreachable = True
            # after the response tasks already queued have looked the leg up (they run first)
            asyncio.get_running_loop().call_soon(self._clients.pop, key, None)

    async def stop(self, node: SipNode) -> None:
        """End every live call with BYE (answered) or 503 and CANCEL (ringing)."""
        self._node = node
        for ctx in list(self._calls.values()):
            async with ctx.lock:
                if ctx.ended:
                    continue
                ctx.end_reason = "shutdown"
                if ctx.call.phase is Phase.CONNECTED or ctx.answered_by_pbx:  # a menu or voicemail too
                    await self._hangup(ctx, by=None, reason=SHUTDOWN, outcome="answered")
                    for leg in self._pair(ctx):  # no waiting for an ACK now
                        if leg.bye_pending:
                            if leg.unacked is not None:
                                leg.unacked.stop()
                                leg.unacked = None
                            self._send_bye(leg, leg.bye_reason)
                    self._forget_if_done(ctx)
                else:
                    if not ctx.a.final_sent:
                        self._reply_a(ctx, 503, headers=(("Retry-After", RETRY_AFTER_S),))
                    self._cancel_all(ctx, None)
                    await self._finish(ctx, "failed")

    def on_media_timeout(self, leg: LegRef, idle_s: float) -> None:
        """The media backend's hook: a leg has been silent for the media timeout."""
        ctx = self._calls.get(leg.session)
        if ctx is None or self._node is None:
            return
        self._spawn(self._media_timeout(ctx, leg.side, idle_s), "call-media-timeout")

    def on_media_lost(self, session: SessionId) -> None:
        """The media backend's hook: the call's relay is gone (its worker died). The call cannot carry audio
        any more, held or not, ringing or not: it ends now, with BYE, or 503 and CANCEL while ringing."""
        ctx = self._calls.get(session)
        if ctx is None or self._node is None:
            return
        self._spawn(self._media_lost(ctx), "call-media-lost")

    async def _media_lost(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            if ctx.ended:
                return
            log.warning("call.media_lost", session_id=ctx.session_id, phase=ctx.call.phase.value)
            ctx.end_reason = "media_lost"
            if ctx.call.phase is Phase.CONNECTED:
                await self._hangup(ctx, by=None, reason=MEDIA_LOST, outcome="answered")
                return
            if not ctx.a.final_sent:
                self._reply_a(ctx, 503, headers=(("Retry-After", RETRY_AFTER_S),))
            self._cancel_all(ctx, None)
            await self._finish(ctx, "failed")

    # --- lookups ------------------------------------------------------------------------------------------
    def _find(self, request: Request) -> tuple[_Ctx, Leg] | None:
        tag = _to_tag(request) or ""
        try:
            call_id = request.call_id
        except (KeyError, ValueError):
            return None
        user = request.uri.user
        if user:
            hit = self._tokens.get(user)
            if hit is not None:
                d = hit[1].dialog
                if d is not None and d.call_id == call_id and d.local_tag == tag:
                    return hit
        return self._dialogs.get((call_id, tag))

    def _index(self, ctx: _Ctx, leg: Leg) -> None:
        self._tokens[leg.token] = (ctx, leg)
        if leg.dialog is not None:
            self._dialogs[(leg.dialog.call_id, leg.dialog.local_tag)] = (ctx, leg)

    def _unindex(self, leg: Leg) -> None:
        self._tokens.pop(leg.token, None)
        if leg.dialog is not None:
            self._dialogs.pop((leg.dialog.call_id, leg.dialog.local_tag), None)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.node.spawn(coro, name)

    # --- a new call ---------------------------------------------------------------------------------------
    async def _new_call(self, node: SipNode, key: TransactionKey, invite: Request) -> None:
        pending = _Pending()
        self._pending[key] = pending
        try:
            await self._setup(node, key, invite, pending)
        finally:
            self._pending.pop(key, None)

    async def _setup(self, node: SipNode, key: TransactionKey, invite: Request, pending: _Pending) -> None:
        unsupported = [t for t in invite.require if t.lower() not in SUPPORTED_OPTIONS]
        if unsupported:  # RFC 3261 §8.2.2.3; PRACK (RFC 3262) is not supported: telephony.md §4
            node.respond(key, invite, 420, headers=(("Unsupported", ", ".join(unsupported)),))
            return
        if invite.max_forwards == 0:
            node.respond(key, invite, 483)
            return
        if self.directory is None:
            raise SipError("The B2BUA has no directory")
        source = node.flow_of(key)
        trunk = (
            self.trunks.trunk_for_source(source.host, source.port)
            if self.trunks is not None and source is not None
            else None
        )
        if (
            trunk is not None
            and source is not None
            and await node.location.registered_from(source.host, source.port)
        ):
            trunk = None  # a phone registered from inside the carrier's networks: a phone, with digest
        if trunk is not None:  # a carrier: no digest, the Request-URI names one of our lines
            await self._setup_incoming(node, key, invite, pending, trunk)
            return
        from_host = invite.from_address.uri.host
        domain = await self.directory.domain(from_host)
        if pending.cancelled:
            return
        auth = await node.authenticate(
            key, invite, domain.name if domain is not None else None, fallback_realm=from_host
        )
        if auth is None or domain is None or pending.cancelled:
            return
        caller = await self.directory.user_by_login(domain, auth.user.username)
        if pending.cancelled:
            return
        if caller is None:
            node.respond(key, invite, 403)
            return
        if invite.headers.get("Replaces") is not None:  # RFC 3891: take over one of our dialogs
            await self.transfers.on_replaces(node, key, invite, domain, caller)
            return
        extension = invite.uri.user or ""
        if extension in FEATURE_CODES:
            await self._feature_code(node, key, invite, domain, caller, extension)
            return
        callee = await self.directory.user_by_pin(domain, extension) if extension else None
        if pending.cancelled:
            return
        if callee is None and self.outbound is not None and extension:
            await self._setup_outbound(node, key, invite, pending, domain, caller, extension)
            return
        if callee is None:
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 404)
            return
        acceptable, offer = self._checked_offer(node, key, invite)
        if not acceptable:
            return
        flow = node.flow_of(key)
        if flow is None:
            return  # the transaction is gone (it timed out meanwhile)
        call = Call(
            session_id=new_session_id(),
            domain=domain,
            caller=caller,
            callee=callee,
            started_at=self.clock.now(),
        )
        ctx = self._admit(node, key, invite, flow, call, offer)
        if ctx is None:
            return
        display = invite.from_address.name or caller.display_name
        async with ctx.lock:
            try:
                await self._route(node, ctx, display)
            except Exception:
                await self._abort(ctx, "setup")
                raise

    async def _feature_code(
        self,
        node: SipNode,
        key: TransactionKey,
        invite: Request,
        domain: DomainInfo,
        caller: Party,
        code: str,
    ) -> None:
        """A feature code dialled from the user's own phone (``vpbx.pbx.dnd``): the switch flipped, then a
        final answer whose reason phrase says the new state (nothing is answered, nothing recorded)."""
        on = FEATURE_CODES[code]
        if caller.user_id is None:
            node.respond(key, invite, 403)
            return
        try:
            async with node.core.sessions() as s:
                await set_dnd(s, domain.id, caller.user_id, on, now=self.clock.now())
                await s.commit()
        except NotFound:
            node.respond(key, invite, 404)
            return
        log.info("call.feature_code", domain=domain.name, user=caller.pin, code=code, dnd=on)
        node.respond(key, invite, FEATURE_REPLY_CODE, FEATURE_REPLY_PHRASE[on])

    # --- calls from a carrier to a line (issue core-3) ---------------------------------------------------
    def _hold_trunk(self, ctx: _Ctx, trunk: TrunkInfo) -> None:
        """The call uses one of the trunk's channels until it ends (once per call and trunk)."""
        if trunk.id not in ctx.trunks_held:
            ctx.trunks_held.add(trunk.id)
            self._trunk_load[trunk.id] = self._trunk_load.get(trunk.id, 0) + 1

    def _release_trunks(self, ctx: _Ctx) -> None:
        for trunk_id in ctx.trunks_held:
            left = self._trunk_load.get(trunk_id, 1) - 1
            if left > 0:
                self._trunk_load[trunk_id] = left
            else:
                self._trunk_load.pop(trunk_id, None)
        ctx.trunks_held.clear()

    async def _setup_incoming(
        self, node: SipNode, key: TransactionKey, invite: Request, pending: _Pending, trunk: TrunkInfo
    ) -> None:
        assert self.directory is not None
        if self._trunk_load.get(trunk.id, 0) >= trunk.max_calls:
            log.warning("call.trunk_full", trunk=trunk.name, limit=trunk.max_calls)
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 503, headers=(("Retry-After", RETRY_AFTER_S),))
            return
        line = to_e164(invite.uri.user or "")
        decision = await self.incoming.decide(line, self.clock.now()) if line and self.incoming else None
        if pending.cancelled:
            return
        if decision is None or decision.domain_id != trunk.domain_id:  # another tenant's number: not ours
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 404)
            return
        domain = await self.directory.domain(decision.domain)
        if domain is None or pending.cancelled:
            if not pending.cancelled:
                node.respond(key, invite, 404)
            return
        raw_from = invite.from_address.uri.user or ""
        caller_number = (to_e164(raw_from) or raw_from).lstrip("+")
        session_id = new_session_id()
        answer = await self._ask_hooks(
            RoutingQuery(
                session_id=session_id,
                domain_id=domain.id,
                domain=domain.name,
                from_number=caller_number if caller_number.isdigit() else "",
                request_number=(line or "").lstrip("+"),
            )
        )
        if pending.cancelled:
            return
        hooked = None
        if answer is not None and answer.pin and self.incoming is not None:
            hooked = await self.incoming.by_extension(domain.id, line or "", answer.pin)
            if hooked is None:
                log.info("call.hook_pin_unknown", pin=answer.pin[:16], domain=domain.name)
        if hooked is not None and answer is not None and answer.overflow_after_s is not None:
            hooked = _overflowing(hooked, decision, answer.overflow_after_s, session_id)
        if hooked is not None:
            decision = hooked
        if decision.action == "reject":
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 603)
            return
        menu = decision.menu_id if decision.action == "menu" and self.menus is not None else None
        to_box = decision.action == "voicemail" and self.voicemail is not None
        if menu is None and not to_box and not _ringable(decision):
            log.info("call.line_unrouted", line=line, action=decision.action, domain=domain.name)
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 480)
            return
        acceptable, offer = self._checked_offer(node, key, invite)
        if not acceptable:
            return
        if (menu is not None or to_box) and offer is None:  # we answer with our SDP: it needs the offer
            node.respond(key, invite, 488, headers=(("Accept", SDP),))
            return
        flow = node.flow_of(key)
        if flow is None:
            return
        line_party = outside_party(line or "", domain.name)
        call = Call(
            session_id=session_id,
            domain=domain,
            caller=outside_party(caller_number, domain.name, invite.from_address.name),
            callee=line_party,
            type="incoming",
            started_at=self.clock.now(),
            line=line_party.external,
        )
        ctx = self._admit(node, key, invite, flow, call, offer)
        if ctx is None:
            return
        ctx.line = line_party
        self._hold_trunk(ctx, trunk)
        ctx.display = invite.from_address.name or (f"+{caller_number}" if caller_number.isdigit() else "")
        if answer is not None and answer.display_name:
            ctx.display = _clean_display(answer.display_name)
        async with ctx.lock:
            try:
                if menu is not None:
                    await self._start_menu(ctx, menu)
                elif to_box:
                    await self._start_voicemail(ctx, decision)
                else:
                    plan, parties = self._plan_for(decision, domain.name)
                    ctx.fallthrough = decision.fallthrough
                    ctx.vm_owner = _box_owner(decision)
                    await self._start_plan(node, ctx, plan, parties)
            except Exception:
                await self._abort(ctx, "setup")
                raise

    # --- voice menus (IVR): the caller answered by us, a greeting, keys (issue core-3) ---------------------
    async def _start_menu(self, ctx: _Ctx, menu_id: uuid.UUID) -> None:
        call = ctx.call
        log.info("call.new", session_id=call.session_id, domain=call.domain.name, menu=str(menu_id))
        await self.events.publish(call, "new")
        if not await self._media_ports(ctx):
            return
        if not await self._pbx_answers(ctx):
            self._reply_a(ctx, 488)
            await self._finish(ctx, "failed")
            return
        await self._menu_enter(ctx, menu_id, 1)

    async def _menu_enter(self, ctx: _Ctx, menu_id: uuid.UUID, visited: int) -> None:
        if self.menus is None or visited > MAX_MENUS:
            await self._menu_hangup(ctx)
            return
        try:
            plan = await self.menus.menu_plan(ctx.call.domain.id, menu_id)
        except (NotFound, MediaError) as e:
            log.warning("call.menu_unusable", session_id=ctx.session_id, error=type(e).__name__)
            await self._menu_hangup(ctx)
            return
        ctx.ivr = _Ivr(plan=plan, plays_left=plan.repeat_count, menus=visited)
        await self._menu_greet(ctx)

    async def _menu_greet(self, ctx: _Ctx) -> None:
        ivr = ctx.ivr
        assert ivr is not None
        ivr.plays_left -= 1
        await self._menu_play(ctx, ivr.plan.greeting_prompt_id)

    async def _menu_play(self, ctx: _Ctx, prompt_id: str) -> None:
        if self.media is None or self.prompts is None:
            await self._menu_hangup(ctx)
            return
        try:
            prompt = self.prompts.get(prompt_id)
        except MediaError:
            await self._menu_hangup(ctx)
            return
        await self.media.play(LegRef(ctx.session_id, "a"), prompt)

    def _menu_wait(self, ctx: _Ctx) -> None:
        """Wait for a key (the digit timeout) from now."""
        ivr = ctx.ivr
        if ivr is None:
            return
        if ivr.timer is not None:
            ivr.timer.cancel()
        ivr.timer = self.timers.call_later(
            ivr.plan.digit_timeout_s, lambda: self._spawn(self._menu_timeout(ctx), "call-menu-timeout")
        )

    def on_play_done(self, leg: LegRef) -> None:
        """The media backend's hook: a prompt has played to the end on ``leg``."""
        ctx = self._calls.get(leg.session)
        if ctx is not None and ctx.broadcast is not None and self.broadcaster.takes_play_done(ctx, leg):
            return
        if ctx is not None and ctx.ivr is not None and leg.side == "a" and self._node is not None:
            self._spawn(self._menu_played(ctx), "call-menu-played")
        elif ctx is not None and ctx.vm is not None and leg.side == "a" and self._node is not None:
            self._spawn(self._vm_played(ctx), "call-voicemail-played")

    async def _menu_played(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            ivr = ctx.ivr
            if ivr is None or ctx.ended:
                return
            if ivr.invalid_playing:  # "invalid choice" said: the menu again
                ivr.invalid_playing = False
                await self._menu_play(ctx, ivr.plan.greeting_prompt_id)
                return
            self._menu_wait(ctx)

    def on_amd(self, leg: LegRef, event: str) -> None:
        """The media backend's hook: answering-machine detection decided on ``leg`` (``vpbx.media.amd``)."""
        ctx = self._calls.get(leg.session)
        if ctx is not None and ctx.broadcast is not None and self._node is not None:
            self._spawn(self.broadcaster.amd(ctx, leg.side, event), "broadcast-amd")

    def on_dtmf(self, leg: LegRef, digit: Digit) -> None:
        """The media backend's hook: a key pressed on ``leg`` (RFC 4733)."""
        ctx = self._calls.get(leg.session)
        if (
            ctx is not None
            and ctx.broadcast is not None
            and self.broadcaster.takes_key(ctx, leg.side, digit.digit)
        ):
            return
        if ctx is not None and _in_menu(ctx) and leg.side == "a" and self._node is not None:
            self._spawn(self._menu_key(ctx, digit.digit), "call-menu-key")
        elif ctx is not None and ctx.vm is not None and leg.side == "a" and self._node is not None:
            self._spawn(self._vm_key(ctx, digit.digit), "call-voicemail-key")

    async def _menu_key(self, ctx: _Ctx, key: str) -> None:
        async with ctx.lock:
            ivr = ctx.ivr
            if ivr is None or ctx.ended:
                return
            if ivr.timer is not None:
                ivr.timer.cancel()
                ivr.timer = None
            if self.media is not None:
                await self.media.stop_play(LegRef(ctx.session_id, "a"))  # barge-in
            if ivr.keyed is not None:  # keying an extension: # ends it, the timeout too
                if key == "#":
                    await self._menu_dial(ctx, ivr.keyed)
                else:
                    ivr.keyed += key
                    self._menu_wait(ctx)
                return
            action = ivr.plan.action_for(key)
            if action is None:
                ivr.invalid_playing = True
                await self._menu_play(ctx, ivr.plan.invalid_prompt_id)
                return
            await self._menu_act(ctx, action)

    async def _menu_timeout(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            ivr = ctx.ivr
            if ivr is None or ctx.ended:
                return
            ivr.timer = None
            if ivr.keyed is not None:
                await self._menu_dial(ctx, ivr.keyed)
            elif ivr.plays_left > 0:
                await self._menu_greet(ctx)
            else:
                await self._menu_act(ctx, ivr.plan.timeout)

    async def _menu_act(self, ctx: _Ctx, action: MenuAction) -> None:
        ivr = ctx.ivr
        assert ivr is not None
        kind = action.action
        line = _line_of(ctx)
        if kind == "repeat":
            ivr.plays_left = ivr.plan.repeat_count
            await self._menu_greet(ctx)
        elif kind == "menu" and action.menu_id is not None:
            await self._menu_enter(ctx, action.menu_id, ivr.menus + 1)
        elif kind == "extension":
            ivr.keyed = ""
            self._menu_wait(ctx)
        elif kind == "user" and action.pin and self.incoming is not None:
            await self._menu_route(
                ctx, await self.incoming.by_extension(ctx.call.domain.id, line, action.pin)
            )
        elif kind == "group" and action.group_id is not None and self.incoming is not None:
            await self._menu_route(
                ctx, await self.incoming.by_group(ctx.call.domain.id, line, action.group_id)
            )
        elif kind == "external" and action.number:
            await self._menu_ring(ctx, external_plan(action.number, ring_s=self.no_answer_s), {}, None)
        elif kind == "voicemail" and await self._to_voicemail(
            ctx, user_id=action.user_id, group_id=action.group_id
        ):
            return
        else:
            await self._menu_hangup(ctx)

    async def _menu_dial(self, ctx: _Ctx, keyed: str) -> None:
        """The extension the caller keyed: that user or group; an unknown one is an invalid choice."""
        ivr = ctx.ivr
        assert ivr is not None
        ivr.keyed = None
        line = _line_of(ctx)
        found = (
            await self.incoming.by_extension(ctx.call.domain.id, line, keyed)
            if keyed and self.incoming
            else None
        )
        if found is None:
            ivr.invalid_playing = True
            await self._menu_play(ctx, ivr.plan.invalid_prompt_id)
            return
        await self._menu_route(ctx, found)

    async def _menu_route(self, ctx: _Ctx, decision: Decision | None) -> None:
        if decision is None or not _ringable(decision):
            await self._menu_hangup(ctx)
            return
        plan, parties = self._plan_for(decision, ctx.call.domain.name)
        ctx.vm_owner = _box_owner(decision)
        await self._menu_ring(ctx, plan, parties, decision.fallthrough)

    async def _menu_ring(
        self, ctx: _Ctx, plan: Plan, parties: dict[str, Party], fallthrough: Decision | None
    ) -> None:
        """Leave the menu: ring the chosen target while the caller stays on our answered dialog."""
        ivr, ctx.ivr = ctx.ivr, None
        if ivr is not None and ivr.timer is not None:
            ivr.timer.cancel()
        ctx.plan, ctx.plan_people, ctx.fallthrough = plan, parties, fallthrough
        ctx.stage_legs = {}
        ctx.plan_t0, ctx.plan_skipped = self.timers.monotonic(), 0.0
        await self._ringback(ctx)
        await self._plan_tick(ctx)

    async def _ringback(self, ctx: _Ctx) -> None:
        """The caller we answered hears ringback while the target rings (stopped when audio is bridged)."""
        if self.media is None or self.prompts is None:
            return
        try:
            prompt = await self.prompts.tone("ringback")
            await self.media.play(LegRef(ctx.session_id, "a"), prompt, loop=True)
        except MediaError:
            log.warning("call.ringback_failed", session_id=ctx.session_id)

    async def _menu_hangup(self, ctx: _Ctx) -> None:
        ivr, ctx.ivr = ctx.ivr, None
        if ivr is not None and ivr.timer is not None:
            ivr.timer.cancel()
        await self._hangup(ctx, by=None, reason=None, outcome="answered")

    # --- voicemail: the caller answered by us, a greeting, a beep, the message recorded (issue core-4) -----
    async def _start_voicemail(self, ctx: _Ctx, decision: Decision) -> None:
        """A line routed straight to a box."""
        call = ctx.call
        log.info("call.new", session_id=call.session_id, domain=call.domain.name, to="voicemail")
        await self.events.publish(call, "new")
        if ctx.ended:
            return
        if not await self._to_voicemail(ctx, user_id=decision.user_id, group_id=decision.group_id):
            if not ctx.a.final_sent:
                self._reply_a(ctx, 480)
            await self._finish(ctx, "unanswered")

    async def _owner_box(self, ctx: _Ctx, code: int) -> bool:
        """The rung user did not answer (``code``: 486 busy, else no answer): their box, if it says so."""
        if ctx.vm_owner is None:
            return False
        return await self._to_voicemail(
            ctx, user_id=ctx.vm_owner, group_id=None, when="busy" if code == 486 else "no_answer"
        )

    async def _to_voicemail(
        self,
        ctx: _Ctx,
        *,
        user_id: uuid.UUID | None,
        group_id: uuid.UUID | None,
        when: Literal["busy", "no_answer"] | None = None,
    ) -> bool:
        """Send the caller to a box: answered by us (once), the ringing stopped, the greeting playing.
        False (nothing changed) without a usable box, media or offer, or when ``when`` is not the box's."""
        media, desk = self.media, self.voicemail
        if media is None or desk is None or ctx.ended or _a_closed(ctx) or ctx.vm is not None:
            return False
        if not ctx.answered_by_pbx and ctx.a.offer is None:
            return False  # a caller without an offer would answer ours in the ACK; not worth a box
        target = await desk.target(ctx.call.domain.id, user_id=user_id, group_id=group_id)
        if target is None or ctx.ended or _a_closed(ctx):
            return False
        if (when == "busy" and not target.on_busy) or (when == "no_answer" and not target.on_no_answer):
            return False
        if ctx.ports is None:
            try:
                ctx.ports = await media.allocate(ctx.session_id)
            except NoMediaPorts:
                return False
        if not ctx.answered_by_pbx and not await self._pbx_answers(ctx):
            return False
        self._plan_stop(ctx)
        ctx.plan, ctx.fallthrough = None, None
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
            ctx.no_answer = None
        self._cancel_all(ctx, None)
        ivr, ctx.ivr = ctx.ivr, None
        if ivr is not None and ivr.timer is not None:
            ivr.timer.cancel()
        await media.stop_play(LegRef(ctx.session_id, "a"))  # a menu's prompt still playing
        ctx.vm = _Vm(target=target)
        log.info("call.voicemail", session_id=ctx.session_id, box_id=str(target.box_id), when=when or "")
        await self._vm_play(ctx, target.greeting_prompt_id)
        return True

    async def _vm_play(self, ctx: _Ctx, prompt_id: str | None) -> None:
        """Play the greeting or the beep; one that cannot play is skipped."""
        if prompt_id is not None and self.prompts is not None and self.media is not None:
            try:
                await self.media.play(LegRef(ctx.session_id, "a"), self.prompts.get(prompt_id))
                return
            except (ValueError, MediaError) as e:
                log.warning("call.voicemail_prompt_failed", session_id=ctx.session_id, error=type(e).__name__)
        await self._vm_next(ctx)

    async def _vm_next(self, ctx: _Ctx) -> None:
        vm = ctx.vm
        if vm is None or ctx.ended:
            return
        if vm.stage == "greeting":
            vm.stage = "beep"
            await self._vm_play(ctx, vm.target.beep_prompt_id)
        elif vm.stage == "beep":
            await self._vm_record(ctx)

    async def _vm_played(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            await self._vm_next(ctx)

    async def _vm_key(self, ctx: _Ctx, key: str) -> None:
        """# skips the greeting, and ends the message once recording."""
        async with ctx.lock:
            vm = ctx.vm
            if vm is None or ctx.ended or key != "#":
                return
            if vm.stage == "recording":
                await self._vm_hangup(ctx)
                return
            if self.media is not None:
                await self.media.stop_play(LegRef(ctx.session_id, "a"))
            await self._vm_next(ctx)

    async def _vm_record(self, ctx: _Ctx) -> None:
        vm = ctx.vm
        assert vm is not None and self.voicemail is not None and self.media is not None
        vm.stage = "recording"
        path = self.voicemail.recording_path(ctx.call.domain.id, ctx.session_id)
        try:
            await self.media.record_start(ctx.session_id, path, channels="a")
        except (ValueError, MediaError) as e:
            log.warning("call.voicemail_record_failed", session_id=ctx.session_id, error=type(e).__name__)
            await self._vm_hangup(ctx)
            return
        vm.path = path
        vm.t0 = self.timers.monotonic()
        vm.timer = self.timers.call_later(
            vm.target.max_message_s, lambda: self._spawn(self._vm_limit(ctx), "call-voicemail-limit")
        )

    async def _vm_limit(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            if ctx.vm is not None and not ctx.ended:
                await self._vm_hangup(ctx)

    async def _vm_hangup(self, ctx: _Ctx) -> None:
        await self._hangup(ctx, by=None, reason=None, outcome="voicemail")

    async def _vm_close(self, ctx: _Ctx) -> dict[str, str]:
        """The call ends: stop the recording and hand a long enough message over to be saved; the ``end``
        event's extras."""
        vm, ctx.vm = ctx.vm, None
        if vm is None:
            return {}
        if vm.timer is not None:
            vm.timer.cancel()
        if vm.path is None or self.voicemail is None or self.media is None:
            return {}
        duration = self.timers.monotonic() - vm.t0
        try:
            result = await self.media.record_stop(ctx.session_id)
        except MediaError as e:
            log.warning("call.voicemail_stop_failed", session_id=ctx.session_id, error=type(e).__name__)
            self.voicemail.discard(vm.path)
            return {}
        if result is not None:
            duration = result.duration_s  # what the file holds
        if duration < MIN_MESSAGE_S:
            log.info("call.voicemail_too_short", session_id=ctx.session_id, duration_s=round(duration, 2))
            self.voicemail.discard(vm.path)
            return {}
        caller = ctx.call.caller
        self.voicemail.save(
            Recorded(
                target=vm.target,
                session_id=ctx.session_id,
                caller_number=f"+{caller.external}" if caller.external else caller.pin,
                caller_name=caller.display_name,
                started_at=self.clock.now(),
                path=vm.path,
                duration_s=duration,
            )
        )
        return {"voicemail": "true"}

    def trunk_room(self, domain_id: DomainId) -> int:
        """Free channels of the domain's usable outbound trunks (``max_calls`` minus their calls)."""
        if self.trunks is None:
            return 0
        trunks = self.trunks.outbound_trunks(domain_id)
        return sum(max(0, t.max_calls - self._trunk_load.get(t.id, 0)) for t in trunks)

    def _free_trunks(self, domain_id: DomainId) -> list[TrunkInfo]:
        """The domain's usable trunks in failover order, those at their channel limit left out."""
        if self.trunks is None:
            return []
        return [
            t for t in self.trunks.outbound_trunks(domain_id) if self._trunk_load.get(t.id, 0) < t.max_calls
        ]

    def _plan_for(self, decision: Decision, domain: str) -> tuple[Plan, dict[str, Party]]:
        """The ringing plan of a user or group decision, and the parties it rings by PIN."""
        if decision.action == "external" and decision.number:
            return external_plan(decision.number, ring_s=self.no_answer_s), {}
        people = decision.people
        parties = {
            p.pin: Party(
                user_id=p.user_id, login=p.login, pin=p.pin, display_name=p.display_name, domain=domain
            )
            for p in people
        }
        pins = tuple(parties)
        if decision.action == "user":
            mobiles = tuple(e for n in people[0].contact_numbers if (e := to_e164(n)))
            plan = user_plan(
                pins[0],
                mobiles,
                mobile_delay_s=people[0].mobile_delay_s,
                ring_s=decision.ring_s or self.no_answer_s,
            )
        else:
            first = self.rotation.take(decision.group_id, len(pins)) if decision.group_id else 0
            plan = group_plan(
                decision.strategy,
                pins,
                member_timeout_s=decision.member_timeout_s,
                overall_timeout_s=min(
                    decision.overall_timeout_s, decision.ring_s or decision.overall_timeout_s
                ),
                first=first,
            )
        return plan, parties

    async def _ask_hooks(self, query: RoutingQuery) -> RoutingAnswer | None:
        """Every hook at once within the deadline; the first hook (in order) with an answer wins. A hook that
        fails, times out or has nothing to say leaves the call to the rules."""
        if not self.routing_hooks:
            return None
        tasks = [asyncio.ensure_future(hook(query)) for _, hook in self.routing_hooks]
        _, pending = await asyncio.wait(tasks, timeout=self.routing_hook_deadline_s)
        for task in pending:
            task.cancel()
        for (name, _), task in zip(self.routing_hooks, tasks, strict=True):
            if task in pending:
                log.info("call.routing_hook_late", hook=name, session_id=query.session_id)
                continue
            if task.exception() is not None:
                log.warning("call.routing_hook_failed", hook=name, error=type(task.exception()).__name__)
                continue
            found = task.result()
            if found is not None and (found.pin or found.display_name):
                return found
        return None

    def _checked_offer(
        self, node: SipNode, key: TransactionKey, invite: Request
    ) -> tuple[bool, SessionDescription | None]:
        """(acceptable, the caller's offer or None if it sent none); not acceptable: answered here."""
        offer = _sdp_of(invite)
        if offer == "bad":
            node.respond(key, invite, 488 if invite.body else 400, headers=(("Accept", SDP),))
            return False, None
        if (
            offer is not None
            and negotiate(offer, origin=_origin("0.0.0.0"), address="0.0.0.0", port=9) is None
        ):
            node.respond(key, invite, 488)  # nothing we can bridge: RFC 3264 §6
            return False, None
        return True, offer

    def _admit(
        self,
        node: SipNode,
        key: TransactionKey,
        invite: Request,
        flow: Destination,
        call: Call,
        offer: SessionDescription | None,
    ) -> _Ctx | None:
        """Count the call against its tenant's channels, set up its A-leg; None (answered 503) when full."""
        if not self.registry.admit(call):
            security.warning(
                "SessionLimit", domain=call.domain.name, limit=call.domain.channel_limit, source=flow.host
            )
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 503, headers=(("Retry-After", RETRY_AFTER_S),))
            return None
        CALLS_ACTIVE.inc()
        a = _incoming_leg(node, "a", key, invite, flow, offer)
        a.dialog = Dialog.uas(invite, local_tag=a.tag, local_contact=a.contact)
        ctx = _Ctx(call=call, a=a)
        self._calls[call.session_id] = ctx
        self._by_invite[key] = ctx
        self._index(ctx, a)
        return ctx

    async def _start_plan(self, node: SipNode, ctx: _Ctx, plan: Plan, parties: dict[str, Party]) -> None:
        call = ctx.call
        log.info("call.new", session_id=call.session_id, domain=call.domain.name, line=call.callee.external)
        await self.events.publish(call, "new")
        if ctx.ended:
            return
        if not await self._media_ports(ctx):
            return
        ctx.plan = plan
        ctx.plan_people = parties
        ctx.plan_t0 = self.timers.monotonic()
        await self._plan_tick(ctx)

    def _plan_elapsed(self, ctx: _Ctx) -> float:
        return self.timers.monotonic() - ctx.plan_t0 + ctx.plan_skipped

    async def _plan_tick(self, ctx: _Ctx) -> None:
        """Bring the ringing in line with the plan at this moment: end finished stages, start due ones."""
        plan = ctx.plan
        if plan is None or ctx.ended or ctx.winner is not None or _a_closed(ctx) or self._node is None:
            return
        node = self._node
        if ctx.plan_timer is not None:
            ctx.plan_timer.cancel()
            ctx.plan_timer = None
        now = self._plan_elapsed(ctx)
        if now >= plan.overall_s:
            await self._plan_over(ctx)
            return
        due = {i for i, st in enumerate(plan.stages) if st.start_s <= now < st.stop_s}
        for i in [i for i in ctx.stage_legs if i not in due]:
            self._cancel_legs(ctx.stage_legs.pop(i))
        for i in sorted(due - set(ctx.stage_legs)):
            ctx.stage_legs[i] = await self._ring_stage(node, ctx, i)
            if ctx.ended or ctx.winner is not None:
                return
        later = [t for t in plan.boundaries() if t > now]
        if later:
            delay = later[0] - now
            ctx.plan_timer = self.timers.call_later(
                delay, lambda: self._spawn(self._plan_timer_fired(ctx), "call-plan")
            )
        if not any(leg.state is not BState.FAILED for leg in ctx.b):
            await self._plan_skip(ctx)

    async def _plan_timer_fired(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            ctx.plan_timer = None
            await self._plan_tick(ctx)

    async def _ring_stage(self, node: SipNode, ctx: _Ctx, index: int) -> list[BLeg]:
        assert ctx.plan is not None
        now = self.clock.monotonic()
        legs: list[BLeg] = []
        for pin in ctx.plan.stages[index].targets.pins:
            party = ctx.plan_people.get(pin)
            if party is None or await self._skip_dnd(ctx, party):
                continue
            aor = aor_for(pin, ctx.call.domain.name)
            for binding in [
                b for b in await node.location.lookup(ctx.call.domain.id, aor) if b.expires_at > now
            ]:
                leg = await self._ring(node, ctx, binding, ctx.display, party)
                if leg is not None:
                    leg.stage = index
                    legs.append(leg)
        numbers = ctx.plan.stages[index].targets.numbers
        usable = self._free_trunks(ctx.call.domain.id) if numbers else []
        owner = next(iter(ctx.plan_people.values()), None)  # a user plan's contact numbers are its user's
        if numbers and owner is not None and await self._skip_dnd(ctx, owner):
            usable = []  # a user on DND: no mobile forwarding either
        for number in numbers if usable else ():
            leg = await self._ring_trunk(
                node, ctx, usable[0], tuple(usable[1:]), number, ctx.caller_id or _line_of(ctx), owner
            )
            leg.stage = index
            legs.append(leg)
        return legs

    async def on_dnd(self, domain: DomainInfo, pin: str) -> bool:
        """The user with this PIN is on DND now (the directory's snapshot)."""
        if self.directory is None or not pin:
            return False
        user = await self.directory.user_by_pin(domain, pin)
        return user is not None and user.dnd

    async def _skip_dnd(self, ctx: _Ctx, party: Party) -> bool:
        """``party`` is on DND (as the directory says now): not rung. The user of a user plan makes the call
        busy; a group's member is just left out."""
        if not await self.on_dnd(ctx.call.domain, party.pin):
            return False
        if party.user_id is not None and party.user_id == ctx.vm_owner:
            ctx.dnd_busy = True
        log.info("call.skip_dnd", session_id=ctx.session_id, pin=party.pin)
        return True

    def _codes(self, ctx: _Ctx, codes: list[int]) -> list[int]:
        """The B-legs' finals, with a busy for the user plan's user on DND (who was not rung)."""
        return [*codes, 486] if ctx.dnd_busy else codes

    def _busy_reason(self, ctx: _Ctx, code: int) -> None:
        """The history's end reason of a busy call whose user is on DND."""
        if code == 486 and ctx.dnd_busy and not ctx.end_reason:
            ctx.end_reason = DND_END_REASON

    async def _plan_skip(self, ctx: _Ctx) -> bool:
        """Everyone rung so far failed: jump to the next stage now. False when no stage is left."""
        plan = ctx.plan
        if plan is None or ctx.ended or _a_closed(ctx):
            return False
        now = self._plan_elapsed(ctx)
        starts = [st.start_s for st in plan.stages if st.start_s > now and st.start_s < plan.overall_s]
        if not starts:
            await self._plan_over(ctx)
            return True
        ctx.plan_skipped += min(starts) - now
        await self._plan_tick(ctx)
        return True

    async def _plan_over(self, ctx: _Ctx) -> None:
        """Nobody answered within the plan: the group's fall-through (a user or another group) rings next;
        otherwise the caller hears the best failure."""
        if ctx.ended or _a_closed(ctx):
            return
        nxt = ctx.fallthrough
        if nxt is not None and nxt.action == "voicemail":
            log.info("call.fallthrough", session_id=ctx.session_id, to=nxt.action)
            if await self._to_voicemail(ctx, user_id=nxt.user_id, group_id=nxt.group_id):
                return
        if nxt is not None and _ringable(nxt):
            log.info("call.fallthrough", session_id=ctx.session_id, to=nxt.action)
            ctx.vm_owner = _box_owner(nxt)
            ctx.dnd_busy = False
            self._plan_stop(ctx)
            for legs in ctx.stage_legs.values():
                self._cancel_legs(legs)
            ctx.plan, ctx.plan_people = self._plan_for(nxt, ctx.call.domain.name)
            ctx.fallthrough = nxt.fallthrough
            ctx.stage_legs = {}
            ctx.plan_t0, ctx.plan_skipped = self.timers.monotonic(), 0.0
            await self._plan_tick(ctx)
            return
        if ctx.broadcast is not None:  # the operator of an autoinformer call did not answer
            await self.broadcaster.operator_missed(ctx)
            return
        codes = self._codes(ctx, [leg.final for leg in ctx.b if leg.final is not None and leg.final != 487])
        code = _final_for_a(codes) if codes else 480
        if await self._owner_box(ctx, code):
            return
        self._busy_reason(ctx, code)
        self._plan_stop(ctx)
        if ctx.answered_by_pbx:  # the caller is in our menu's dialog: nobody came, so it ends
            self._cancel_all(ctx, None)
            await self._hangup(ctx, by=None, reason=reason_header(code), outcome="unanswered")
            return
        self._reply_a(ctx, code)
        self._cancel_all(ctx, None)
        await self._finish(ctx, "busy" if code == 486 else "unanswered")

    def _plan_stop(self, ctx: _Ctx) -> None:
        if ctx.plan_timer is not None:
            ctx.plan_timer.cancel()
            ctx.plan_timer = None

    def _cancel_legs(self, legs: list[BLeg]) -> None:
        for leg in legs:
            if leg.state is BState.ANSWERED or leg.state is BState.FAILED:
                continue
            if not leg.cancel_wanted:
                leg.cancel_wanted = True
            if leg.state is BState.PROCEEDING:
                self._send_cancel(leg)

    # --- calls from users to outside numbers, through the domain's trunks (issue core-3) ----------------
    async def _setup_outbound(
        self,
        node: SipNode,
        key: TransactionKey,
        invite: Request,
        pending: _Pending,
        domain: DomainInfo,
        caller: Party,
        dialled: str,
    ) -> None:
        assert self.outbound is not None
        decision = await self.outbound.decide(domain.id, caller.user_id, dialled)
        if pending.cancelled:
            return
        if decision is None:  # neither an extension nor a number
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 404)
            return
        if not decision.allowed:
            log.info("call.outbound_refused", caller=caller.pin, kind=decision.kind, domain=domain.name)
            CALLS.labels("rejected").inc()
            reason = f"Forbidden ({decision.kind.replace('_', ' ')} calls)"
            await self._refuse_spoken(node, key, invite, pending, SystemPhrase.NOT_ALLOWED, 403, reason)
            return
        usable = self._free_trunks(domain.id)
        if not usable:
            log.warning("call.no_trunk", caller=caller.pin, domain=domain.name)
            CALLS.labels("rejected").inc()
            node.respond(key, invite, 503, "No Trunk Available", headers=(("Retry-After", RETRY_AFTER_S),))
            return
        acceptable, offer = self._checked_offer(node, key, invite)
        flow = node.flow_of(key)
        if not acceptable or flow is None:
            return
        call = Call(
            session_id=new_session_id(),
            domain=domain,
            caller=caller,
            callee=outside_party(decision.number, domain.name),
            type="outbound",
            started_at=self.clock.now(),
            line=decision.caller_id.lstrip("+"),
        )
        ctx = self._admit(node, key, invite, flow, call, offer)
        if ctx is None:
            return
        async with ctx.lock:
            try:
                log.info("call.new", session_id=call.session_id, domain=domain.name, caller=caller.pin)
                await self.events.publish(call, "new")
                if not await self._media_ports(ctx):
                    return
                ctx.caller_id = decision.caller_id
                await self._ring_trunk(
                    node, ctx, usable[0], tuple(usable[1:]), decision.number, decision.caller_id
                )
                ctx.no_answer = self.timers.call_later(
                    self.no_answer_s, lambda: self._spawn(self._no_answer(ctx), "call-no-answer")
                )
            except Exception:
                await self._abort(ctx, "setup")
                raise

    async def _refuse_spoken(
        self,
        node: SipNode,
        key: TransactionKey,
        invite: Request,
        pending: _Pending,
        phrase: SystemPhrase,
        code: int,
        reason: str,
    ) -> None:
        """Say why before refusing: early media (183) with a system phrase, then the final ``code``. Without
        a usable offer, media or prompts, just the final response."""
        offer = _sdp_of(invite)
        media, prompts = self.media, self.prompts
        if media is None or prompts is None or not isinstance(offer, SessionDescription):
            node.respond(key, invite, code, reason)
            return
        tag = new_tag()
        session = new_session_id()
        try:
            prompt = await prompts.system_phrase(phrase)
            ports = await media.allocate(session)
        except MediaError:
            node.respond(key, invite, code, reason)
            return
        try:
            answer = negotiate(offer, origin=_origin(ports.a.host), address=ports.a.host, port=ports.a.port)
            m_offer = _accepted(offer, answer) if answer is not None else None
            audio = answer.audio if answer is not None else None
            if answer is None or m_offer is None or audio is None or audio.codec is None:
                node.respond(key, invite, code, reason, to_tag=tag)
                return
            leg = LegRef(session, "a")
            await media.update(leg, _remote(offer, m_offer), audio.codec.payload_type, audio.telephone_event)
            node.respond(
                key, invite, 183, headers=(("Content-Type", SDP),), to_tag=tag, body=serialize_sdp(answer)
            )
            await media.play(leg, prompt)
            await asyncio.sleep(min(prompt.duration_s, MAX_PHRASE_S))  # a CANCEL meanwhile answers 487
            if not pending.cancelled:
                node.respond(key, invite, code, reason, to_tag=tag)
        finally:
            await media.release(session)

    async def _ring_trunk(
        self,
        node: SipNode,
        ctx: _Ctx,
        trunk: TrunkInfo,
        spare: tuple[TrunkInfo, ...],
        number: str,
        caller_id: str,
        party: Party | None = None,
        *,
        side: Side = "b",
        headers: tuple[tuple[str, str], ...] = (),
        call_id: str = "",
    ) -> BLeg:
        """An INVITE to ``number`` through ``trunk``: its number format, its From, our caller ID;
        ``call_id``: the INVITE's Call-ID (default: a new one)."""
        dialled = trunk.format_number(number)
        target = parse_uri(f"sip:{dialled}@{trunk.uri_host}")
        if trunk.caller_id_mode == "fixed" and trunk.caller_id_number:
            shown = trunk.format_number(trunk.caller_id_number)
        elif caller_id:
            shown = trunk.format_number(caller_id)
        else:
            shown = trunk.from_user or trunk.username or "anonymous"
        from_ = Address(
            uri=URI(scheme="sip", user=shown, host=trunk.from_host), parameters=Parameters(tag=new_tag())
        )
        to = Address(uri=URI(scheme="sip", user=dialled, host=trunk.host))
        leg = self._new_b_leg(
            node,
            ctx,
            trunk.destination,
            target,
            side=side,
            trunk=trunk,
            spare_trunks=spare,
            party=party,
            dialled=number,
        )
        self._hold_trunk(ctx, trunk)
        # ringing a user's mobile is «начало дозвона на контактный номер сотрудника»; an outside call is not
        await self._invite_b(
            node,
            ctx,
            leg,
            from_,
            to,
            trunk.route(),
            calling=party is not None,
            headers=headers,
            call_id=call_id,
        )
        return leg

    def _authenticate_trunk_leg(self, ctx: _Ctx, leg: BLeg, challenge: Response) -> bool:
        """The carrier challenged our INVITE: send it again once with the trunk's credentials."""
        trunk = leg.trunk
        if trunk is None or leg.authenticated or ctx.ended or ctx.winner is not None or self._node is None:
            return False
        answer = trunk.credentials(challenge, "INVITE", str(leg.invite.uri))
        if answer is None:
            return False
        old = leg.invite
        again = Request("INVITE", old.uri, old.body)
        for name in old.headers.keys():
            again.headers.setlist(name, list(old.headers.getlist(name)))
        again.headers.set("CSeq", f"{old.cseq.sequence + 1} INVITE")
        again.headers.setlist("Via", [leg.via.header()])  # a new transaction: a fresh branch
        again.headers.add(*answer)
        leg.invite = again
        leg.authenticated = True
        if leg.key is not None:
            self._clients.pop(leg.key, None)
        leg.key = self._node.send_request(again, leg.flow)
        self._clients[leg.key] = (ctx, leg)
        return True

    async def _fail_over(self, ctx: _Ctx, leg: BLeg) -> bool:
        """The carrier failed (5xx, timeout): the same call through the next trunk."""
        if ctx.ended or ctx.winner is not None or ctx.a.final_sent or self._node is None:
            return False
        leg.state = BState.FAILED
        nxt, rest = leg.spare_trunks[0], leg.spare_trunks[1:]
        failed = leg.trunk.name if leg.trunk else ""
        log.info("call.trunk_failover", session_id=ctx.session_id, failed=failed, next=nxt.name)
        await self._ring_trunk(
            self._node, ctx, nxt, rest, leg.dialled, ctx.caller_id, leg.party, side=leg.side
        )
        return True

    async def _route(self, node: SipNode, ctx: _Ctx, display: str) -> None:
        call = ctx.call
        log.info(
            "call.new",
            session_id=call.session_id,
            domain=call.domain.name,
            caller=call.caller.pin,
            callee=call.callee.pin,
        )
        await self.events.publish(call, "new")
        now = self.clock.monotonic()
        aor = aor_for(call.callee.pin, call.domain.name)
        bindings = [b for b in await node.location.lookup(call.domain.id, aor) if b.expires_at > now]
        if ctx.ended:
            return  # cancelled while we looked
        ctx.vm_owner = call.callee.user_id
        if call.callee.dnd:  # vpbx.pbx.dnd: none of the callee's phones rings, the call is busy
            log.info("call.callee_dnd", session_id=call.session_id, callee=call.callee.pin)
            if await self._owner_box(ctx, 486):
                return
            ctx.end_reason = DND_END_REASON
            self._reply_a(ctx, 486)
            await self._finish(ctx, "busy")
            return
        if not bindings and await self._owner_box(ctx, 480):
            return
        if not bindings:
            self._reply_a(ctx, 480)
            await self._finish(ctx, "unanswered")
            return
        if not await self._media_ports(ctx):
            return
        for binding in bindings:
            await self._ring(node, ctx, binding, display)
        if all(leg.state is BState.FAILED for leg in ctx.b):
            await self._after_failure(ctx)
            return
        ctx.no_answer = self.timers.call_later(
            self.no_answer_s, lambda: self._spawn(self._no_answer(ctx), "call-no-answer")
        )

    async def _ring(
        self,
        node: SipNode,
        ctx: _Ctx,
        binding: Binding,
        display: str,
        party: Party | None = None,
        *,
        side: Side = "b",
        headers: tuple[tuple[str, str], ...] = (),
        from_user: str | None = None,
        to_user: str | None = None,
    ) -> BLeg | None:
        """Ring one registered device of ``party`` (default: the callee) on ``side``: From the caller (or
        ``from_user``) named ``display``, To the party's PIN (or ``to_user``). None for a bad binding."""
        call = ctx.call
        try:
            target = parse_uri(binding.contact)
            route = [parse_address(p) for p in binding.path]
        except SipParseError:
            log.warning("call.bad_binding", session_id=call.session_id, contact=binding.contact[:80])
            return None
        domain = call.domain.name
        if from_user is None:
            from_user = f"+{call.caller.external}" if call.caller.external else call.caller.pin
        from_ = Address(
            uri=URI(scheme="sip", user=from_user, host=domain),
            name=display,
            parameters=Parameters(tag=new_tag()),
        )
        to = Address(uri=URI(scheme="sip", user=to_user or (party or call.callee).pin, host=domain))
        leg = self._new_b_leg(
            node,
            ctx,
            binding_destination(binding),
            target,
            contact_uri=binding.contact,
            party=party,
            side=side,
        )
        await self._invite_b(node, ctx, leg, from_, to, route, calling=True, headers=headers)
        return leg

    async def _media_ports(self, ctx: _Ctx) -> bool:
        """The call's worker ports; with none free the caller gets 503 and the call ends (False)."""
        if self.media is None:
            raise SipError("The B2BUA has no media backend")
        try:
            ctx.ports = await self.media.allocate(ctx.session_id)
        except NoMediaPorts:
            log.warning("call.no_media_ports", session_id=ctx.session_id)
            self._reply_a(ctx, 503, headers=(("Retry-After", RETRY_AFTER_S),))
            await self._finish(ctx, "failed")
            return False
        return True

    def _new_b_leg(
        self,
        node: SipNode,
        ctx: _Ctx,
        dest: Destination,
        target: URI,
        contact_uri: str = "",
        side: Side = "b",
        **fields: Any,
    ) -> BLeg:
        """A B-leg towards ``dest`` with its own token, Via and Contact (its INVITE comes in ``_invite_b``);
        ``contact_uri``: what it rings as the events name it (default: ``target``); ``side``: the media side
        it will talk on (``a`` only for the target of a transfer by the caller)."""
        assert ctx.ports is not None
        token = secrets.token_hex(8)
        return BLeg(
            side=side,
            token=token,
            flow=dest,
            via=LocalVia(dest.transport.upper(), *node.advertised_for(dest.transport)),
            contact=_contact(token, node.advertised_for(dest.transport), dest.transport),
            origin=_origin(ctx.ports.b.host),
            contact_uri=contact_uri or str(target),
            invite=Request("INVITE", target),  # replaced in _invite_b, once the offer is built
            **fields,
        )

    async def _invite_b(
        self,
        node: SipNode,
        ctx: _Ctx,
        leg: BLeg,
        from_: Address,
        to: Address,
        route: list[Address],
        *,
        calling: bool,
        headers: tuple[tuple[str, str], ...] = (),
        call_id: str = "",
    ) -> None:
        """Our offer on ``leg``, its INVITE sent; ``calling``: the event for the party it rings."""
        assert ctx.ports is not None
        local = ctx.ports.a if leg.side == "a" else ctx.ports.b
        body = self._sdp(leg, lambda origin: build_offer(origin=origin, address=local.host, port=local.port))
        leg.invite = build_initial_request(
            "INVITE",
            leg.invite.uri,
            via=leg.via,
            from_=from_,
            to=to,
            call_id=call_id or new_call_id(),
            cseq=1,
            contact=leg.contact,
            route=route,
            headers=(("Allow", ALLOW), ("User-Agent", USER_AGENT), *headers),
            body=body,
            content_type=SDP,
        )
        ctx.b.append(leg)
        self._tokens[leg.token] = (ctx, leg)
        if leg.party is not None:
            ctx.call.callee = leg.party
        if calling:
            await self.events.publish(ctx.call, "calling", request_uri=leg.contact_uri)
        leg.key = node.send_request(leg.invite, leg.flow)
        self._clients[leg.key] = (ctx, leg)

    # --- responses on B-legs ------------------------------------------------------------------------------
    async def _b_provisional(self, ctx: _Ctx, leg: BLeg, response: Response) -> None:
        if response.code == 100 or (leg.state is not BState.CALLING and leg.state is not BState.PROCEEDING):
            return
        leg.state = BState.PROCEEDING
        if leg.cancel_wanted:
            self._send_cancel(leg)  # RFC 3261 §9.1: the CANCEL waited for a provisional
            return
        if ctx.ended or ctx.winner is not None or ctx.a.final_sent:
            return
        sdp = _sdp_of(response)
        if isinstance(sdp, SessionDescription) and ctx.early is None and ctx.a.offer is not None:
            if await self._bridge_b(ctx, leg, sdp):
                body = await self._answer_a(ctx)
                if body is not None:
                    ctx.early = leg
                    ctx.a.early_sent = True
                    self._reply_a(ctx, 183, body=body)
                    return
        if response.code == 180 and not ctx.a.ringing_sent and not ctx.a.early_sent:
            ctx.a.ringing_sent = True
            self._reply_a(ctx, 180)

    async def _b_answered(self, ctx: _Ctx, leg: BLeg, response: Response) -> None:
        node = self.node
        tag = _to_tag(response)
        if tag is None:
            return  # a 2xx without a To tag makes no dialog: nothing to ACK
        if leg.dialog is not None:
            if tag == leg.dialog.remote_tag and leg.ack is not None:
                node.send_stateless(leg.ack, leg.flow)  # a retransmitted 2xx: ACK it again
            else:
                self._ack_and_bye(leg, response, reason=ELSEWHERE)  # a second dialog of a forked INVITE
            return
        dialog = Dialog.uac(leg.invite, response, local_contact=leg.contact)
        leg.dialog = dialog
        leg.state = BState.ANSWERED
        leg.ack = serialize(dialog.build_ack(leg.invite.cseq.sequence, via=leg.via))
        node.send_stateless(leg.ack, leg.flow)
        if ctx.ended or ctx.winner is not None or leg.cancel_wanted:
            reason = leg.cancel_reason or (ELSEWHERE if ctx.winner is not None else CANCELLED)
            self._bye(leg, reason)
            leg.state = BState.FAILED
            return
        self._index(ctx, leg)
        sdp = _sdp_of(response)
        if ctx.originate is not None and leg.side == "a":
            await self.originator.employee_answered(ctx, leg, sdp)
            return
        if ctx.broadcast is not None and leg.side == "a" and "a" not in ctx.sides:
            await self.broadcaster.answered(ctx, leg, sdp)
            return
        if not isinstance(sdp, SessionDescription) or not await self._bridge_b(ctx, leg, sdp):
            self._bye(leg, reason_header(488, "no usable SDP answer"))
            self._unindex(leg)
            leg.state = BState.FAILED
            leg.final = 488
            await self._after_failure(ctx)
            return
        ctx.winner = leg
        self._cancel_all(ctx, ELSEWHERE)
        await self._connect(ctx)

    async def _b_failed(self, ctx: _Ctx, leg: BLeg, code: int) -> None:
        if leg.state is BState.ANSWERED or leg.state is BState.FAILED:
            return
        leg.state = BState.FAILED
        leg.final = code
        if ctx.early is leg:
            ctx.early = None
        await self._after_failure(ctx)

    async def _after_failure(self, ctx: _Ctx) -> None:
        if ctx.ended or ctx.winner is not None or _a_closed(ctx) or ctx.vm is not None:
            return
        employee = ctx.sides.get("a") if ctx.originate is not None else None  # answered, waiting
        if any(leg.state is not BState.FAILED for leg in ctx.b if leg is not employee):
            return
        if ctx.broadcast is not None:  # an autoinformer call: the recipient's legs, or its operator's
            if "a" not in ctx.sides:
                await self.broadcaster.not_answered(ctx)
            elif ctx.plan is not None:
                await self._plan_skip(ctx)
            return
        if ctx.plan is not None and await self._plan_skip(ctx):
            return  # everyone rung so far failed: the next stage starts now
        codes = self._codes(ctx, [leg.final for leg in ctx.b if leg.final is not None])
        code = _final_for_a(codes)
        if await self._owner_box(ctx, code):
            return
        self._busy_reason(ctx, code)
        self._reply_a(ctx, code)
        await self._finish(ctx, "busy" if code == 486 else "unanswered")

    # --- connecting -----------------------------------------------------------------------------------------
    async def _connect(self, ctx: _Ctx) -> None:
        if ctx.originate is not None or ctx.broadcast is not None:  # a call we placed: nothing to answer
            await self._connected(ctx)
            return
        a = ctx.a
        if a.offer is not None:
            body = await self._answer_a(ctx)
        else:  # an INVITE without SDP: our offer goes in the 200, the answer must come in the ACK
            assert ctx.ports is not None
            ports = ctx.ports
            body = self._sdp(a, lambda o: build_offer(origin=o, address=ports.a.host, port=ports.a.port))
            a.awaiting_answer = True
        if body is None:  # cannot happen: the offer was checked at setup
            raise SipError("No answer for the caller's offer")
        if ctx.answered_by_pbx:  # our menu answered the caller already: bridge, no second 200
            await self._connected(ctx)
            return
        response = self._reply_a(ctx, 200, body=body)
        assert a.dialog is not None
        a.dialog.confirm()
        self._start_unacked(ctx, a, response, a.invite.cseq.sequence)
        await self._connected(ctx)

    async def _connected(self, ctx: _Ctx) -> None:
        """Audio flows between the caller and the winner: the call's connected state and event."""
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
        placed = ctx.originate is not None or ctx.broadcast is not None
        if (ctx.answered_by_pbx or placed) and self.media is not None:
            await self.media.stop_play(LegRef(ctx.session_id, "a"))  # a menu prompt still playing
        call = ctx.call
        call.phase = Phase.CONNECTED
        if call.answered_at is None:  # an autoinformer's recipient answered before its operator
            call.answered_at = self.clock.now()
        winner = ctx.winner
        if winner is not None and winner.party is not None:
            call.callee = winner.party
        self._plan_stop(ctx)
        log.info(
            "call.connected", session_id=call.session_id, contact=winner.contact_uri[:80] if winner else ""
        )
        await self.events.publish(call, "connected", request_uri=winner.contact_uri if winner else "")
        if ctx.broadcast is not None:  # recorded (or not) from the recipient's answer, as the campaign says
            self.broadcaster.operator_answered(ctx)
        elif self.recordings is not None and await wants_recording(call, self.directory):
            await self.recordings.start(call)

    # --- SDP and media --------------------------------------------------------------------------------------
    def _sdp(self, leg: Leg, build: Callable[[Origin], SessionDescription]) -> bytes:
        """Our SDP on ``leg``; the o= version moves only when the description changes (RFC 3264 §8)."""
        body = serialize_sdp(build(leg.origin))
        if leg.last_sdp is not None and body != leg.last_sdp:
            leg.origin = leg.origin.bumped()
            body = serialize_sdp(build(leg.origin))
        leg.last_sdp = body
        return body

    async def _update_media(
        self, ctx: _Ctx, side: Side, remote: MediaAddress | None, codec: MediaDescription
    ) -> bool:
        rtpmap = codec.codec
        if rtpmap is None or self.media is None:
            return False
        try:
            await self.media.update(
                LegRef(ctx.session_id, side), remote, rtpmap.payload_type, codec.telephone_event
            )
        except (ValueError, MediaError):  # a bad address, or the relay is gone (on_media_lost ends the call)
            return False
        return True

    async def _take_answer_a(self, ctx: _Ctx, leg: BLeg, sdp: SessionDescription | str | None) -> bool:
        """Point the relay's A side at a leg we dialled there (an originated call's employee, a broadcast's
        recipient). An answer without usable audio: BYE 488, the leg failed, False."""
        audio = sdp.audio if isinstance(sdp, SessionDescription) else None
        if (
            isinstance(sdp, SessionDescription)
            and audio is not None
            and await self._update_media(ctx, "a", _remote(sdp, audio), audio)
        ):
            return True
        self._bye(leg, reason_header(488, "no usable SDP answer"))
        self._unindex(leg)
        leg.state = BState.FAILED
        leg.final = 488
        return False

    async def _bridge_b(self, ctx: _Ctx, leg: BLeg, answer: SessionDescription) -> bool:
        """Point the relay's B side at this leg (its answer to our offer: its address, codec, events)."""
        audio = answer.audio
        if audio is None:
            return False
        return await self._update_media(ctx, "b", _remote(answer, audio), audio)

    async def _answer_a(self, ctx: _Ctx) -> bytes | None:
        """Our answer to A's offer (once per call; the 183 and the 200 carry the same), relay updated."""
        if ctx.a_answer is not None:
            return ctx.a_answer
        offer = ctx.a.offer
        if offer is None or ctx.ports is None:
            return None
        body = await self._offer_answer(ctx, ctx.a, offer, ctx.ports.a)
        if isinstance(body, int):
            return None
        ctx.a_answer = body
        return body

    async def _offer_answer(
        self, ctx: _Ctx, leg: Leg, offer: SessionDescription, local: MediaAddress
    ) -> bytes | int:
        """Answer ``offer`` on ``leg`` from our port there and apply it to the relay; an error status else."""
        answer_sd: SessionDescription | None = None

        def build(origin: Origin) -> SessionDescription:
            nonlocal answer_sd
            answer_sd = negotiate(offer, origin=origin, address=local.host, port=local.port)
            if answer_sd is None:
                raise _NotAcceptable
            return answer_sd

        try:
            body = self._sdp(leg, build)
        except _NotAcceptable:
            return 488
        assert answer_sd is not None
        m_offer = _accepted(offer, answer_sd)
        audio = answer_sd.audio
        if m_offer is None or audio is None:
            return 488
        if not await self._update_media(ctx, leg.side, _remote(offer, m_offer), audio):
            return 488
        leg.held = offer.is_hold(m_offer)
        return body

    async def _media_timeout(self, ctx: _Ctx, side: Side, idle_s: float) -> None:
        async with ctx.lock:
            if ctx.ended or ctx.call.phase is not Phase.CONNECTED or ctx.call.held or ctx.transfer:
                return  # telephony.md §4: no media timeout while held (or waiting for a transfer's target)
            log.info("call.media_timeout", session_id=ctx.session_id, leg=side, idle_s=round(idle_s, 1))
            ctx.end_reason = "media_timeout"
            await self._hangup(ctx, by=None, reason=MEDIA_TIMEOUT, outcome="answered")

    # --- replies to A ---------------------------------------------------------------------------------------
    async def _pbx_answers(self, ctx: _Ctx) -> bool:
        """The PBX itself answers the caller (a menu, voicemail): 200 with our SDP answer, resent until the
        ACK; False (nothing sent) when the caller's offer has no answer."""
        body = await self._answer_a(ctx)
        if body is None:
            return False
        a = ctx.a
        response = self._reply_a(ctx, 200, body=body)
        assert a.dialog is not None
        a.dialog.confirm()
        self._start_unacked(ctx, a, response, a.invite.cseq.sequence)
        ctx.answered_by_pbx = True
        return True

    def _reply_a(
        self,
        ctx: _Ctx,
        code: int,
        *,
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Response:
        a = ctx.a
        if ctx.originate is not None:  # nobody called us: the answer goes nowhere, the employee is hung up
            return self.originator.final(ctx, code)
        if ctx.broadcast is not None:
            return self.broadcaster.final(ctx, code)
        extra: list[tuple[str, str]] = list(headers)
        if code < 300 and code != 100:
            extra += [("Record-Route", rr) for rr in a.record_route]  # RFC 3261 §12.1.1
            extra.append(("Contact", str(a.contact)))
        if 200 <= code < 300:
            extra += [("Allow", ALLOW), ("Supported", SUPPORTED)]
        if body:
            extra.append(("Content-Type", SDP))
        if code >= 200:
            a.final_sent = True
            a.final_code = code
        return self.node.respond(a.key, a.invite, code, headers=tuple(extra), to_tag=a.tag, body=body)

    def _start_unacked(self, ctx: _Ctx, leg: Leg, response: Response, cseq: int) -> None:
        if leg.unacked is not None:
            leg.unacked.stop()
        pending = _Unacked(serialize(response), leg.flow, cseq, self.t1)
        leg.unacked = pending
        if not leg.flow.reliable:
            pending.resend = self.timers.call_later(self.t1, lambda: self._resend_2xx(leg, pending))
        pending.give_up = self.timers.call_later(
            TIMEOUT_FACTOR * self.t1, lambda: self._spawn(self._no_ack(ctx, leg, pending), "call-no-ack")
        )

    def _resend_2xx(self, leg: Leg, pending: _Unacked) -> None:
        if leg.unacked is not pending:
            return
        self.node.send_stateless(pending.data, pending.dest)
        pending.interval = min(2 * pending.interval, self.t2)
        pending.resend = self.timers.call_later(pending.interval, lambda: self._resend_2xx(leg, pending))

    async def _no_ack(self, ctx: _Ctx, leg: Leg, pending: _Unacked) -> None:
        async with ctx.lock:
            if leg.unacked is not pending:
                return
            leg.unacked = None
            log.info("call.no_ack", session_id=ctx.session_id, leg=leg.side)
            if leg.bye_pending:
                self._send_bye(leg, leg.bye_reason)
            if not ctx.ended:
                await self._hangup(ctx, by=None, reason=NO_ACK, outcome="answered")
            self._forget_if_done(ctx)

    # --- CANCEL, ACK and in-dialog requests -----------------------------------------------------------------
    async def _on_cancel(self, node: SipNode, key: TransactionKey, cancel: Request) -> None:
        invite_key = node.table.cancel_target(cancel)
        if invite_key is None:
            node.respond(key, cancel, 481)
            return
        node.respond(key, cancel, 200)  # RFC 3261 §9.2: the CANCEL is answered first, then the INVITE
        ctx = self._by_invite.get(invite_key)
        if ctx is None:
            pending = self._pending.get(invite_key)
            invite_tx = node.table.get(invite_key)
            if pending is not None and invite_tx is not None and isinstance(invite_tx.request, Request):
                pending.cancelled = True
                node.respond(invite_key, invite_tx.request, 487)
            return
        async with ctx.lock:
            if ctx.ended or ctx.a.final_sent:
                return
            self._reply_a(ctx, 487)
            self._cancel_all(ctx, None)
            await self._finish(ctx, "cancelled")

    async def _on_ack(self, ack: Request) -> None:
        found = self._find(ack)
        if found is None:
            return
        ctx, leg = found
        async with ctx.lock:
            pending = leg.unacked
            if pending is None or ack.cseq.sequence != pending.cseq:
                return
            pending.stop()
            leg.unacked = None
            if leg.bye_pending:
                self._send_bye(leg, leg.bye_reason)
                self._forget_if_done(ctx)
                return
            if leg.awaiting_answer and not ctx.ended:
                leg.awaiting_answer = False
                if not await self._apply_ack_answer(ctx, leg, ack):
                    await self._hangup(
                        ctx, by=None, reason=reason_header(488, "no SDP answer"), outcome="failed"
                    )

    async def _apply_ack_answer(self, ctx: _Ctx, leg: Leg, ack: Request) -> bool:
        sdp = _sdp_of(ack)
        if not isinstance(sdp, SessionDescription) or sdp.audio is None:
            return False
        audio = sdp.audio
        return await self._update_media(ctx, leg.side, _remote(sdp, audio), audio)

    async def _in_dialog(
        self, node: SipNode, ctx: _Ctx, leg: Leg, key: TransactionKey, request: Request
    ) -> None:
        method = request.method
        dialog = leg.dialog
        if ctx.ended or dialog is None or dialog.state is DialogState.TERMINATED:
            node.respond(key, request, 481)
            return
        status = dialog.receive(request)
        if status is not None:
            node.respond(key, request, status, headers=(("Retry-After", "1"),))
            return
        if method == "BYE":
            node.respond(key, request, 200)
            dialog.terminate()
            if await self.transfers.on_bye(ctx, leg):
                return  # a transferor leaving: the call goes on
            if ctx.call.phase is Phase.CONNECTED:
                await self._hangup(ctx, by=leg, reason=None, outcome="answered")
            elif leg is ctx.a or (ctx.originate is not None and leg is ctx.sides.get("a")):
                # a BYE on the early dialog, or the employee of a call_back hanging up: as good as a CANCEL
                if not ctx.a.final_sent:
                    self._reply_a(ctx, 487)
                self._cancel_all(ctx, None)
                await self._finish(ctx, "cancelled")
        elif method == "INVITE":
            await self._reinvite(node, ctx, leg, key, request)
        elif method == "UPDATE":
            await self._update(node, ctx, leg, key, request)
        elif method == "OPTIONS":
            node.respond(
                key,
                request,
                200,
                headers=(("Allow", ALLOW), ("Accept", SDP), ("Supported", SUPPORTED)),
            )
        elif method == "INFO":
            node.respond(key, request, 200)  # DTMF over INFO is acknowledged (telephony.md §3.8)
            digit = _info_digit(request)
            if (
                digit is not None
                and ctx.broadcast is not None
                and self.broadcaster.takes_key(ctx, leg.side, digit)
            ):
                pass
            elif digit is not None and leg is ctx.a and _in_menu(ctx):
                self._spawn(self._menu_key(ctx, digit), "call-menu-key")
            elif digit is not None and leg is ctx.a and ctx.vm is not None:
                self._spawn(self._vm_key(ctx, digit), "call-voicemail-key")
        elif method == "REFER":
            await self.transfers.on_refer(node, ctx, leg, key, request)
        elif method == "NOTIFY":
            node.respond(key, request, 481)  # no subscription lives in our dialogs (RFC 6665 §4.1.3)
        else:
            node.respond(key, request, 501)

    async def _reinvite(
        self, node: SipNode, ctx: _Ctx, leg: Leg, key: TransactionKey, request: Request
    ) -> None:
        unsupported = [t for t in request.require if t.lower() not in SUPPORTED_OPTIONS]
        if unsupported:
            node.respond(key, request, 420, headers=(("Unsupported", ", ".join(unsupported)),))
            return
        if ctx.call.phase is not Phase.CONNECTED or ctx.ports is None:
            node.respond(key, request, 491)  # RFC 3261 §14.2: no offer/answer while the call is set up
            return
        local = ctx.ports.a if leg.side == "a" else ctx.ports.b
        offer = _sdp_of(request)
        if offer == "bad":
            node.respond(key, request, 488, headers=(("Accept", SDP),))
            return
        if offer is None:  # an offerless re-INVITE: we offer in the 200, the answer comes in the ACK
            body = self._sdp(leg, lambda o: build_offer(origin=o, address=local.host, port=local.port))
            leg.awaiting_answer = True
        else:
            answered = await self._offer_answer(ctx, leg, offer, local)
            if isinstance(answered, int):
                node.respond(key, request, answered)
                return
            body = answered
            await self._held_changed(ctx)
        response = node.respond(
            key,
            request,
            200,
            headers=(
                ("Contact", str(leg.contact)),
                ("Allow", ALLOW),
                ("Supported", SUPPORTED),
                ("Content-Type", SDP),
            ),
            body=body,
        )
        self._start_unacked(ctx, leg, response, request.cseq.sequence)

    async def _update(
        self, node: SipNode, ctx: _Ctx, leg: Leg, key: TransactionKey, request: Request
    ) -> None:
        offer = _sdp_of(request)
        if offer is None:  # a refresh (RFC 3311 §5.2)
            node.respond(key, request, 200, headers=(("Contact", str(leg.contact)),))
            return
        if offer == "bad" or ctx.ports is None:
            node.respond(key, request, 488)
            return
        local = ctx.ports.a if leg.side == "a" else ctx.ports.b
        answered = await self._offer_answer(ctx, leg, offer, local)
        if isinstance(answered, int):
            node.respond(key, request, answered)
            return
        await self._held_changed(ctx)
        node.respond(
            key, request, 200, headers=(("Contact", str(leg.contact)), ("Content-Type", SDP)), body=answered
        )

    async def _held_changed(self, ctx: _Ctx) -> None:
        held = any(leg.held for leg in self._pair(ctx))
        if held != ctx.call.held:
            ctx.call.held = held
            log.info("call.hold" if held else "call.resume", session_id=ctx.session_id)
        await self.transfers.music(ctx)

    def _pair(self, ctx: _Ctx) -> list[Leg]:
        """The legs talking on the call's two media sides (a transfer may have changed them)."""
        a = ctx.sides["a"] if "a" in ctx.sides else ctx.a
        b = ctx.sides["b"] if "b" in ctx.sides else ctx.winner
        return [leg for leg in (a, b) if leg is not None]

    def _disconnect_reason(self, ctx: _Ctx) -> str:
        """integration-api.md §5.2: "0" a consultation call merged by a transfer, "4" hung up during a
        transfer or on hold, else "5"."""
        if ctx.merged:
            return REASON_TRANSFER
        if ctx.transfer is not None or ctx.call.held:
            return REASON_HELD_OR_TRANSFER_HANGUP
        return REASON_NORMAL

    # --- ending ---------------------------------------------------------------------------------------------
    def _cancel_all(self, ctx: _Ctx, reason: str | None) -> None:
        for leg in ctx.b:
            if leg is ctx.winner or leg.state is BState.ANSWERED or leg.state is BState.FAILED:
                continue
            if not leg.cancel_wanted:
                leg.cancel_wanted = True
                leg.cancel_reason = reason
            if leg.state is BState.PROCEEDING:
                self._send_cancel(leg)

    def _send_cancel(self, leg: BLeg) -> None:
        if leg.cancel_sent:
            return
        leg.cancel_sent = True
        headers = (("Reason", leg.cancel_reason),) if leg.cancel_reason else ()
        self.node.send_request(build_cancel(leg.invite, headers=headers), leg.flow)

    def _send_bye(self, leg: Leg, reason: str | None) -> None:
        dialog = leg.dialog
        if dialog is None:
            return
        headers = (("Reason", reason),) if reason else ()
        bye = dialog.build_request("BYE", via=leg.via, headers=headers)
        dialog.terminate()
        leg.bye_pending = False
        self.node.send_request(bye, leg.flow)

    def _bye(self, leg: Leg, reason: str | None) -> None:
        """BYE a leg's confirmed dialog; on A before the ACK of our 2xx, once it arrives (RFC 3261 §15)."""
        dialog = leg.dialog
        if dialog is None or dialog.state is not DialogState.CONFIRMED or leg.bye_pending:
            return
        if leg.unacked is not None and leg.side == "a":
            leg.bye_pending = True
            leg.bye_reason = reason
            return
        self._send_bye(leg, reason)

    def _ack_and_bye(self, leg: BLeg, response: Response, reason: str) -> None:
        """A 2xx of a dialog we do not want: ACK it, then BYE it (RFC 3261 §13.2.2.4)."""
        stray = Dialog.uac(leg.invite, response, local_contact=leg.contact)
        self.node.send_stateless(serialize(stray.build_ack(leg.invite.cseq.sequence, via=leg.via)), leg.flow)
        self.node.send_request(
            stray.build_request("BYE", via=leg.via, headers=(("Reason", reason),)), leg.flow
        )

    async def _hangup(self, ctx: _Ctx, *, by: Leg | None, reason: str | None, outcome: str) -> None:
        """End a connected call: BYE every other confirmed leg, then ``disconnected`` and ``end``."""
        for leg in self._pair(ctx):
            if leg is not by:
                self._bye(leg, reason)
        if ctx.call.phase is Phase.CONNECTED:
            await self.events.publish(
                ctx.call, "disconnected", disconnect_reason=self._disconnect_reason(ctx)
            )
        await self._finish(ctx, outcome)

    async def _finish(self, ctx: _Ctx, outcome: str) -> None:
        """The call is over for A: out of the registry, media released, ``end`` published."""
        if ctx.ended:
            return
        ctx.ended = True
        call = ctx.call
        if ctx.broadcast is not None:
            await self.broadcaster.ending(ctx)
        extra = await self._vm_close(ctx)
        if extra:
            outcome = "voicemail"
        self.transfers.call_ended(ctx)
        if ctx.no_answer is not None:
            ctx.no_answer.cancel()
        self._plan_stop(ctx)
        self._release_trunks(ctx)
        if ctx.line is not None and call.answered_at is None:
            call.callee = ctx.line  # integration-api.md §5.2: `end` names the line when nobody answered
        call.phase = Phase.ENDED
        call.ended_at = self.clock.now()
        if self.registry.remove(call.session_id) is not None:
            CALLS_ACTIVE.dec()
        CALLS.labels(outcome).inc()
        is_record = False
        if self.recordings is not None:
            try:
                is_record = await self.recordings.stop(call.session_id)  # before the media goes
            except Exception:
                log.exception("call.recording_stop_failed", session_id=call.session_id)
        if ctx.ports is not None and self.media is not None:
            try:
                await self.media.release(call.session_id)
            except Exception:
                log.exception("call.media_release_failed", session_id=call.session_id)
        log.info("call.ended", session_id=call.session_id, outcome=outcome)
        await self.events.publish(
            call, "end", is_record=is_record, extra={**_end_extra(ctx, outcome), **extra}
        )
        if ctx.broadcast is not None:
            self.broadcaster.ended(ctx)
        self._forget_if_done(ctx)

    def _forget_if_done(self, ctx: _Ctx) -> None:
        """Drop the call's lookups once nothing more can arrive for it (an ACK still awaited keeps them)."""
        if ctx.forgotten or not ctx.ended:
            return
        legs = [
            leg
            for leg in (ctx.a, *ctx.b, *(x for x in ctx.sides.values() if x is not None))
            if leg not in ctx.handed_over
        ]
        if any(leg.unacked is not None for leg in legs):
            return
        ctx.forgotten = True
        for leg in legs:
            self._unindex(leg)
        self._by_invite.pop(ctx.a.key, None)
        self._calls.pop(ctx.session_id, None)

    async def _abort(self, ctx: _Ctx, where: str) -> None:
        """A handler failed: end the call as cleanly as we can (its lock is held)."""
        log.error("call.aborted", session_id=ctx.session_id, where=where)
        try:
            if not ctx.a.final_sent:
                self._reply_a(ctx, 500)
            self._cancel_all(ctx, None)
            for leg in self._pair(ctx):
                if leg.unacked is not None:
                    leg.unacked.stop()
                    leg.unacked = None
                self._bye(leg, reason_header(500))
            if ctx.call.phase is Phase.CONNECTED:
                await self.events.publish(ctx.call, "disconnected", disconnect_reason=REASON_NORMAL)
            await self._finish(ctx, "failed")
        except Exception:
            log.exception("call.abort_failed", session_id=ctx.session_id)
            ctx.ended = True
            self._forget_if_done(ctx)

    async def _no_answer(self, ctx: _Ctx) -> None:
        async with ctx.lock:
            if ctx.ended or ctx.winner is not None or ctx.a.final_sent:
                return
            if await self._owner_box(ctx, 480):
                return
            self._reply_a(ctx, 480)
            self._cancel_all(ctx, None)
            await self._finish(ctx, "unanswered")


def _in_menu(ctx: _Ctx) -> bool:
    """Keys from the caller go to the menu: it is listening, or answered and still being set up (a key
    pressed before the greeting starts waits for the call's lock, then counts)."""
    if ctx.ivr is not None:
        return True
    return ctx.answered_by_pbx and ctx.vm is None and ctx.call.phase is not Phase.CONNECTED


class _NotAcceptable(Exception):
    """No codec in an offer that we can bridge (answered 488)."""


__all__ = [
    "NO_ANSWER_S",
    "B2bua",
    "BLeg",
    "BState",
    "Leg",
    "LoopTimers",
    "Party",
    "TimerHandle",
    "Timers",
    "binding_destination",
]
