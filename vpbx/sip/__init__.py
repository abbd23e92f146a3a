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

__all__ = [
    "URI",
    "Address",
    "CSeq",
    "MediaType",
    "Parameters",
    "Request",
    "Response",
    "Via",
    "branch",
    "build_response",
    "ha1",
    "parse",
    "recover_for_reply",
    "serialize",
    "top_via",
]
