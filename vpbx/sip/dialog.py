"""SIP dialogs (RFC 3261 §12–§15): ids, early and confirmed state, route set, target, CSeq (pure).

A ``Dialog`` is one side's view of a dialog. It is made from the request and response that create it —
``Dialog.uas(invite, local_tag=…, local_contact=…)`` when we answer, ``Dialog.uac(invite, response,
local_contact=…)`` when we get a response carrying a To tag — and then builds the requests we send inside it
(``build_request``, ``build_ack``) and checks the requests we receive (``receive``). Nothing here touches a
socket or a clock: the caller sends what it builds to the leg's flow (telephony.md §3.2).

Use::

    dialog = Dialog.uac(invite, ringing, local_contact=contact)      # early (1xx with a To tag)
    dialog.confirm(ok)                                                # 2xx: confirmed, route set and target
    ack = dialog.build_ack(invite.cseq.sequence, via=our_via)         # §13.2.2.4, outside any transaction
    bye = dialog.build_request("BYE", via=our_via, headers=[("Reason", reason_header(200, "…"))])
    match dialog.receive(request):                                    # remote CSeq check, target refresh
        case None: ...                                                # go on
        case 500: reply 500                                           # a lower CSeq (§12.2.2)

Builders for requests outside dialogs live here too: ``build_initial_request`` (a B2BUA's new leg) and
``build_cancel`` (RFC 3261 §9.1). Every request we build carries our Via with ``rport`` and a fresh
``z9hG4bK`` branch (RFC 3261 §8.1.1.7, RFC 3581 §3), ``Max-Forwards: 70`` and our Contact.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vpbx.errors import SipError, SipParseError
from vpbx.sip.message import (
    MAGIC_COOKIE,
    URI,
    Address,
    CSeq,
    Parameters,
    Request,
    Response,
)

__all__ = [
    "MAX_FORWARDS",
    "Dialog",
    "DialogId",
    "DialogState",
    "LocalVia",
    "build_cancel",
    "build_initial_request",
    "new_branch",
    "new_call_id",
    "new_tag",
    "reason_header",
    "tag_of",
]

# --- protocol numbers --------------------------------------------------------------------------------------
TAG_BITS = 64  # telephony.md §3.4: tags carry 64 random bits (RFC 3261 §19.3 asks for at least 32)
BRANCH_BITS = 96  # telephony.md §3.2: branch = z9hG4bK + 96 random bits
CALL_ID_BITS = 128  # RFC 3261 §8.1.1.4: globally unique; random, so it names no host of ours
MAX_FORWARDS = 70  # RFC 3261 §8.1.1.6
CSEQ_LIMIT = 2**31  # RFC 3261 §8.1.1.5: sequence numbers stay below 2**31
LOOSE_ROUTE = "lr"  # RFC 3261 §19.1.1: the URI parameter of a loose router
STATUS_CSEQ_TOO_LOW = 500  # RFC 3261 §12.2.2: a lower remote CSeq is answered 500
NO_CSEQ_CHECK = frozenset({"ACK", "CANCEL"})  # they reuse the CSeq number of the INVITE they follow


def new_tag() -> str:
    """A From/To tag: 64 random bits in hex."""
    return secrets.token_hex(TAG_BITS // 8)


def new_branch() -> str:
    """A Via branch for a new transaction: the RFC 3261 magic cookie and 96 random bits."""
    return MAGIC_COOKIE + secrets.token_hex(BRANCH_BITS // 8)


def new_call_id() -> str:
    """A Call-ID of 128 random bits: it tells the other leg nothing about this one (telephony.md §3.7)."""
    return secrets.token_hex(CALL_ID_BITS // 8)


def tag_of(address: Address) -> str | None:
    """The ``tag`` parameter of a From/To address, None when absent or empty."""
    return address.parameters.get("tag") or None


def reason_header(cause: int, text: str | None = None, protocol: str = "SIP") -> str:
    """A Reason header value (RFC 3326 §2): ``SIP;cause=200;text="Call completed elsewhere"``."""
    value = f"{protocol};cause={cause}"
    if text is not None:
        if any(c in text for c in '"\\\r\n'):
            raise SipError("Reason text must not hold quotes, backslashes or line breaks")
        value += f';text="{text}"'
    return value


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag, remote tag (RFC 3261 §12): the same dialog seen from the other side swaps tags."""

    call_id: str
    local_tag: str
    remote_tag: str


@dataclass(frozen=True, slots=True)
class LocalVia:
    """What our Via says: the transport and the advertised address (telephony.md §3.2)."""

    transport: str  # "UDP", "TCP", "TLS"
    host: str
    port: int

    def header(self, branch: str | None = None) -> str:
        """``SIP/2.0/UDP host:port;branch=z9hG4bK…;rport`` (formatted directly: this runs per request)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"SIP/2.0/{self.transport.upper()} {host}:{self.port};branch={branch or new_branch()};rport"


def _without_tag(address: Address) -> Address:
    params = {k: v for k, v in address.parameters.items() if k != "tag"}
    return dataclasses.replace(address, parameters=Parameters(**params))


def _with_tag(address: Address, tag: str) -> Address:
    return dataclasses.replace(address, parameters=address.parameters.replace(tag=tag))


def _contact_uri(msg: Request | Response) -> URI | None:
    try:
        contacts = msg.contact
    except SipParseError:
        return None
    return contacts[0].uri if contacts else None


def _is_loose(route: Address) -> bool:
    return LOOSE_ROUTE in route.uri.parameters


def _headers_out(
    request: Request,
    *,
    via: str,
    route: Sequence[Address],
    from_: Address,
    to: Address,
    call_id: str,
    cseq: CSeq,
    contact: Address | None,
    headers: Iterable[tuple[str, str]],
    content_type: str | None,
) -> Request:
    h = request.headers
    h.add("Via", via)
    h.add("Max-Forwards", str(MAX_FORWARDS))
    for r in route:
        h.add("Route", str(r))
    h.add("From", str(from_))
    h.add("To", str(to))
    h.add("Call-ID", call_id)
    h.add("CSeq", str(cseq))
    if contact is not None:
        h.add("Contact", str(contact))
    for name, value in headers:
        h.add(name, value)
    if content_type is not None and request.body:
        h.add("Content-Type", content_type)
    return request


@dataclass(slots=True, kw_only=True)
class Dialog:
    """One side's dialog state (RFC 3261 §12.1): mutable, owned by one leg of one call."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: Address  # our From (UAC) or To (UAS) address, without tag
    remote_uri: Address
    local_contact: Address
    remote_target: URI
    route_set: tuple[Address, ...] = ()
    local_seq: int = 0  # the CSeq of the last request we sent in this dialog (0: none yet)
    remote_seq: int | None = None  # the CSeq of the last request received (None: none yet)
    state: DialogState = DialogState.EARLY

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    # --- creation ---
    @classmethod
    def uas(
        cls,
        request: Request,
        *,
        local_tag: str,
        local_contact: Address,
        state: DialogState = DialogState.EARLY,
    ) -> Dialog:
        """The dialog our response to ``request`` (with To tag ``local_tag``) creates (§12.1.1).

        The route set is the request's Record-Route in order, the remote target its Contact, the remote
        sequence number its CSeq. The local sequence number starts empty (the first request we send has 1).
        """
        target = _contact_uri(request) or request.from_address.uri
        remote_tag = tag_of(request.from_address) or ""
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_uri=_without_tag(request.to_address),
            remote_uri=_without_tag(request.from_address),
            local_contact=local_contact,
            remote_target=target,
            route_set=tuple(request.record_route),
            remote_seq=request.cseq.sequence,
            state=state,
        )

    @classmethod
    def uac(cls, request: Request, response: Response, *, local_contact: Address) -> Dialog:
        """The dialog a response with a To tag creates for our ``request`` (§12.1.2).

        Early for a 1xx, confirmed for a 2xx. Route set: the response's Record-Route reversed; remote target:
        its Contact; local sequence number: the request's CSeq.
        """
        remote_tag = tag_of(response.to_address)
        if remote_tag is None:
            raise SipError("A response without a To tag creates no dialog (RFC 3261 §12.1)")
        target = _contact_uri(response) or request.uri
        state = DialogState.CONFIRMED if 200 <= response.code < 300 else DialogState.EARLY
        return cls(
            call_id=request.call_id,
            local_tag=tag_of(request.from_address) or "",
            remote_tag=remote_tag,
            local_uri=_without_tag(request.from_address),
            remote_uri=_without_tag(request.to_address),
            local_contact=local_contact,
            remote_target=target,
            route_set=tuple(reversed(response.record_route)),
            local_seq=request.cseq.sequence,
            state=state,
        )

    def confirm(self, response: Response | None = None) -> None:
        """Early → confirmed. A 2xx on the UAC side recomputes the route set and target (§13.2.2.4)."""
        if response is not None:
            self.route_set = tuple(reversed(response.record_route))
            target = _contact_uri(response)
            if target is not None:
                self.remote_target = target
        self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    # --- receiving ---
    def receive(self, request: Request) -> int | None:
        """Check an in-dialog request before acting on it: None to go on, else the status to answer.

        A CSeq lower than the last one seen gets 500 (§12.2.2); ACK and CANCEL are not checked. A target
        refresh (re-INVITE, UPDATE) replaces the remote target with its Contact (§12.2.2).
        """
        if request.method not in NO_CSEQ_CHECK:
            seq = request.cseq.sequence
            if self.remote_seq is not None and seq < self.remote_seq:
                return STATUS_CSEQ_TOO_LOW
            self.remote_seq = seq
        if request.method in ("INVITE", "UPDATE"):
            self.refresh_target(request)
        return None

    def refresh_target(self, msg: Request | Response) -> None:
        target = _contact_uri(msg)
        if target is not None:
            self.remote_target = target

    # --- sending ---
    def _next_seq(self) -> int:
        self.local_seq = self.local_seq + 1 if self.local_seq + 1 < CSEQ_LIMIT else 1
        return self.local_seq

    def _routing(self) -> tuple[URI, tuple[Address, ...]]:
        """Request-URI and Route headers (§12.2.1.1): loose routing, or the strict-router rewrite."""
        if not self.route_set or _is_loose(self.route_set[0]):
            return self.remote_target, self.route_set
        first, rest = self.route_set[0], self.route_set[1:]
        uri = dataclasses.replace(first.uri, parameters=Parameters())  # §12.2.1.1: no parameters kept
        return uri, (*rest, Address(uri=self.remote_target))

    def build_request(
        self,
        method: str,
        *,
        via: LocalVia,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new request in this dialog (§12.2.1.1): the next local CSeq, our tag, theirs, the route set."""
        if method in NO_CSEQ_CHECK:
            raise SipError(f"{method} is not built as a new in-dialog request")
        uri, route = self._routing()
        request = Request(method, uri, body)
        return _headers_out(
            request,
            via=via.header(),
            route=route,
            from_=_with_tag(self.local_uri, self.local_tag),
            to=_with_tag(self.remote_uri, self.remote_tag),
            call_id=self.call_id,
            cseq=CSeq(self._next_seq(), method),
            contact=self.local_contact,
            headers=headers,
            content_type=content_type,
        )

    def build_ack(
        self,
        invite_seq: int,
        *,
        via: LocalVia,
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK of a 2xx (§13.2.2.4): the INVITE's CSeq number, a fresh branch, the dialog's route set."""
        uri, route = self._routing()
        request = Request("ACK", uri, body)
        return _headers_out(
            request,
            via=via.header(),
            route=route,
            from_=_with_tag(self.local_uri, self.local_tag),
            to=_with_tag(self.remote_uri, self.remote_tag),
            call_id=self.call_id,
            cseq=CSeq(invite_seq, "ACK"),
            contact=self.local_contact,
            headers=(),
            content_type=content_type,
        )


def build_initial_request(
    method: str,
    uri: URI,
    *,
    via: LocalVia,
    from_: Address,
    to: Address,
    call_id: str,
    cseq: int,
    contact: Address,
    route: Sequence[Address] = (),
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request outside any dialog (RFC 3261 §8.1.1); ``from_`` must carry our tag, ``to`` none."""
    if tag_of(from_) is None:
        raise SipError("A new request carries a From tag (RFC 3261 §8.1.1.3)")
    request = Request(method, uri, body)
    return _headers_out(
        request,
        via=via.header(),
        route=route,
        from_=from_,
        to=to,
        call_id=call_id,
        cseq=CSeq(cseq, method),
        contact=contact,
        headers=headers,
        content_type=content_type,
    )


def build_cancel(invite: Request, *, headers: Iterable[tuple[str, str]] = ()) -> Request:
    """The CANCEL of our ``invite`` (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, CSeq number and
    Route; only the INVITE's top Via (so the same branch: it matches the INVITE's server transaction)."""
    cancel = Request("CANCEL", invite.uri)
    h = cancel.headers
    h.add("Via", str(invite.via[0]))
    h.add("Max-Forwards", str(MAX_FORWARDS))
    for value in invite.headers.getlist("Route"):
        h.add("Route", value)
    for name in ("From", "To", "Call-ID"):
        h.add(name, invite.headers[name])
    h.add("CSeq", str(CSeq(invite.cseq.sequence, "CANCEL")))
    for name, value in headers:
        h.add(name, value)
    return cancel
