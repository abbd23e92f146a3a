"""SIP: messages, transports, transactions, dialogs and digest authentication."""

from __future__ import annotations

from vpbx.sip.digest import ha1
from vpbx.sip.message import (
    URI,
    Address,
    CSeq,
    MediaType,
    Parameters,
    Request,
    Response,
    Via,
    branch,
    build_response,
    parse,
    recover_for_reply,
    serialize,
    top_via,
)
from vpbx.sip.sdp import (
    Connection,
    Direction,
    MediaDescription,
    Origin,
    RtpMap,
    SessionDescription,
    build_offer,
    negotiate,
    parse_sdp,
    serialize_sdp,
)

__all__ = [
    "URI",
    "Address",
    "CSeq",
    "Connection",
    "Direction",
    "MediaDescription",
    "MediaType",
    "Origin",
    "Parameters",
    "Request",
    "Response",
    "RtpMap",
    "SessionDescription",
    "Via",
    "branch",
    "build_offer",
    "build_response",
    "ha1",
    "negotiate",
    "parse",
    "parse_sdp",
    "recover_for_reply",
    "serialize",
    "serialize_sdp",
    "top_via",
]
