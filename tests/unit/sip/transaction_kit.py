"""Builders and action filters shared by the transaction unit and property tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vpbx.sip.flow import Destination
from vpbx.sip.message import Request, Response, parse_uri
from vpbx.sip.message import parse as parse_message
from vpbx.sip.transaction import Action, Deliver, Send, StartTimer, StopTimer, Terminated

UDP = Destination("udp", "192.0.2.20", 5060)
TCP = Destination("tcp", "192.0.2.20", 5060, conn_id=7)
T0 = 1000.0  # every test starts its clock here

PHRASES = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    302: "Moved Temporarily",
    404: "Not Found",
    408: "Request Timeout",
    481: "Call/Transaction Does Not Exist",
    486: "Busy Here",
    487: "Request Terminated",
    500: "Server Internal Error",
    503: "Service Unavailable",
    603: "Decline",
}


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK-1",
    cseq: int = 1,
    cseq_method: str | None = None,
    call_id: str = "call-1@192.0.2.20",
    via: str | None = None,
    via_host: str = "192.0.2.20",
    via_port: int | None = 5060,
    transport: str = "UDP",
    from_tag: str = "ft1",
    to_tag: str | None = None,
    uri: str = "sip:201@pbx.example.com",
    routes: Sequence[str] = (),
) -> Request:
    req = Request(method, parse_uri(uri))
    if via is None:
        via = f"SIP/2.0/{transport} {via_host}" + (f":{via_port}" if via_port else "") + ";rport"
        if branch is not None:
            via += f";branch={branch}"
    req.headers.add("Via", via)
    req.headers.add("Max-Forwards", "70")
    for route in routes:
        req.headers.add("Route", route)
    req.headers.add("From", f"<sip:101@pbx.example.com>;tag={from_tag}")
    req.headers.add("To", "<sip:201@pbx.example.com>" + (f";tag={to_tag}" if to_tag else ""))
    req.headers.add("Call-ID", call_id)
    req.headers.add("CSeq", f"{cseq} {cseq_method or method}")
    req.headers.add("Content-Length", "0")
    return req


def response(req: Request, code: int, *, to_tag: str | None = "tt1", method: str | None = None) -> Response:
    """A response to ``req`` as the peer would send it (To tag added to anything but a 100)."""
    resp = Response(code, PHRASES.get(code, "Whatever"))
    for value in req.headers.getlist("Via"):
        resp.headers.add("Via", value)
    resp.headers.add("From", req.headers["From"])
    to = req.headers["To"]
    if to_tag and code != 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    resp.headers.add("To", to)
    resp.headers.add("Call-ID", req.headers["Call-ID"])
    cseq = req.cseq
    resp.headers.add("CSeq", f"{cseq.sequence} {method or cseq.method}")
    resp.headers.add("Content-Length", "0")
    return resp


def ack_for_2xx(invite: Request, resp: Response, *, branch: str = "z9hG4bK-ack2xx") -> Request:
    """The UAC core's ACK of a 2xx: a new transaction, hence a new branch (RFC 3261 §13.2.2.4)."""
    via = invite.headers.getlist("Via")[0].split(";branch=")[0] + f";branch={branch}"
    ack = request("ACK", via=via, cseq=invite.cseq.sequence, call_id=invite.call_id, uri=str(invite.uri))
    ack.headers.set("To", resp.headers["To"])
    ack.headers.set("From", invite.headers["From"])
    return ack


def ack_for_final(invite: Request, resp: Response) -> Request:
    """The ACK of a non-2xx final as the peer's client transaction builds it (same branch, §17.1.1.3)."""
    ack = request("ACK", via=invite.headers.getlist("Via")[0], cseq=invite.cseq.sequence, uri=str(invite.uri))
    ack.headers.set("Call-ID", invite.call_id)
    ack.headers.set("To", resp.headers["To"])
    ack.headers.set("From", invite.headers["From"])
    return ack


def parse(data: bytes) -> Request | Response:
    """What the peer would see: our strict parser over the bytes the transaction layer sent."""
    return parse_message(data)


def sends(actions: Iterable[Action]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def sent(actions: Iterable[Action]) -> list[Request | Response]:
    return [parse(a.data) for a in sends(actions)]


def delivered(actions: Iterable[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, Deliver)]


def started(actions: Iterable[Action]) -> dict[str, float]:
    return {a.name: a.at for a in actions if isinstance(a, StartTimer)}


def stopped(actions: Iterable[Action]) -> set[str]:
    return {a.name for a in actions if isinstance(a, StopTimer)}


def terminated(actions: Iterable[Action]) -> str | None:
    reasons = [a.reason for a in actions if isinstance(a, Terminated)]
    assert len(reasons) <= 1
    return reasons[0] if reasons else None


def codes(messages: Iterable[Request | Response]) -> list[int]:
    return [m.code for m in messages if isinstance(m, Response)]
