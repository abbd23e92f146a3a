"""REFER's pieces (RFC 3515, 3891, 3892, 4488, 3420): Refer-To with its embedded headers, Replaces, sipfrag.

Pure parse and build on strings and bytes; the transfer logic lives in ``vpbx.pbx.transfer``. ``parse_uri``
refuses URIs with ``?headers`` (a Request-URI must not carry them), so Refer-To, whose URI may carry
``?Replaces=…`` (RFC 3515 §2.1, RFC 3891 §4), is split here first: the bare URI goes to ``parse_uri``, the
headers are percent-decoded into a mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from vpbx.errors import SipParseError
from vpbx.sip.message import URI, parse_uri

SIPFRAG = "message/sipfrag;version=2.0"  # RFC 3420, the NOTIFY body of a refer subscription (RFC 3515 §2.4.5)
MAX_REFER_TO = 1024  # characters; a Refer-To longer than this is refused


@dataclass(frozen=True, slots=True, kw_only=True)
class Replaces:
    """The dialog a Replaces header names, from the view of the UA that receives it (RFC 3891 §6.1)."""

    call_id: str
    to_tag: str  # the receiver's local tag
    from_tag: str  # the receiver's remote tag
    early_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReferTo:
    """A Refer-To value: the target URI without headers, its Replaces (if any) and every embedded header."""

    uri: URI
    display_name: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    replaces: Replaces | None = None


def parse_replaces(value: str) -> Replaces:
    """``callid;to-tag=…;from-tag=…[;early-only]`` or ``SipParseError`` (``bad-replaces``)."""
    parts = [p.strip() for p in value.strip().split(";")]
    call_id = parts[0]
    if not call_id or any(c.isspace() for c in call_id):
        raise SipParseError("bad-replaces", value[:80])
    params: dict[str, str] = {}
    early_only = False
    for part in parts[1:]:
        name, eq, val = part.partition("=")
        name = name.strip().lower()
        if name == "early-only" and not eq:
            early_only = True
        elif eq and name:
            params[name] = val.strip()
    to_tag, from_tag = params.get("to-tag"), params.get("from-tag")
    if not to_tag or not from_tag:  # RFC 3891 §6.1: both are mandatory
        raise SipParseError("bad-replaces", value[:80])
    return Replaces(call_id=call_id, to_tag=to_tag, from_tag=from_tag, early_only=early_only)


def parse_refer_to(value: str) -> ReferTo:
    """One Refer-To value (name-addr or addr-spec, RFC 3515 §2.1) or ``SipParseError`` (``bad-refer-to``)."""
    text = value.strip()
    if not text or len(text) > MAX_REFER_TO:
        raise SipParseError("bad-refer-to", text[:80])
    display = ""
    lt = text.find("<")
    if lt >= 0:
        gt = text.find(">", lt)
        if gt < 0:
            raise SipParseError("bad-refer-to", text[:80])
        display = text[:lt].strip().strip('"').strip()
        spec = text[lt + 1 : gt].strip()
    else:
        spec = text.split(";", 1)[0].strip()  # an addr-spec: what follows ";" are header parameters
    uri_text, _, query = spec.partition("?")
    try:
        uri = parse_uri(uri_text, reason="bad-refer-to")
    except SipParseError:
        raise SipParseError("bad-refer-to", text[:80]) from None  # an unsupported scheme too
    if uri.scheme not in ("sip", "sips"):  # tel: targets come as sip:digits@domain from phones
        raise SipParseError("bad-refer-to", text[:80])
    headers: list[tuple[str, str]] = []
    replaces = None
    for item in query.split("&") if query else ():
        name, eq, raw = item.partition("=")
        if not name or not eq:
            raise SipParseError("bad-refer-to", text[:80])
        name, val = unquote(name).strip(), unquote(raw)
        headers.append((name, val))
        if name.lower() == "replaces":
            replaces = parse_replaces(val)
    return ReferTo(uri=uri, display_name=display, headers=tuple(headers), replaces=replaces)


def refer_sub_wanted(value: str | None) -> bool:
    """Whether a REFER's ``Refer-Sub`` (RFC 4488 §4) asks for the implicit subscription (absent: yes)."""
    return value is None or value.strip().lower() != "false"


def build_sipfrag(code: int, reason: str) -> bytes:
    """The NOTIFY body reporting the referred request's status line (RFC 3515 §2.4.5, RFC 3420)."""
    if not 100 <= code <= 699:
        raise ValueError(f"not a SIP status code: {code}")
    return f"SIP/2.0 {code} {reason}\r\n".encode()


def parse_sipfrag(body: bytes) -> int:
    """The status code of a sipfrag status line, or ``SipParseError`` (``bad-sipfrag``)."""
    line = body.split(b"\n", 1)[0].strip()
    parts = line.split(b" ", 2)
    if len(parts) < 2 or parts[0] != b"SIP/2.0" or not parts[1].isdigit() or len(parts[1]) != 3:
        raise SipParseError("bad-sipfrag", line[:80].decode("latin-1"))
    return int(parts[1])


__all__ = [
    "SIPFRAG",
    "ReferTo",
    "Replaces",
    "build_sipfrag",
    "parse_refer_to",
    "parse_replaces",
    "parse_sipfrag",
    "refer_sub_wanted",
]
