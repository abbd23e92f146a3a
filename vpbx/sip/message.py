"""SIP messages: parse and serialize, over sipmessage 0.7.1 (telephony.md §3.1). Pure functions.

``parse`` takes one message (a UDP datagram, or one message framed off a stream) and returns a
``Request`` or ``Response``; every failure is a ``SipParseError`` whose ``status`` is the response the
message earns (400, 416, 505, 513) and whose ``reason`` is a short stable word from
``PARSE_ERROR_REASONS`` (the metric label). Nothing else escapes.

What a parsed message guarantees: the start line, ``Call-ID``, ``CSeq`` (its method equal to the request
method), ``From``, ``To``, every ``Via`` and, on requests, ``Max-Forwards`` are present and well formed;
``Contact``, ``Route``, ``Record-Route``, ``Content-Type``, ``Expires``, ``Min-Expires`` and
``Retry-After`` are well formed where present. The typed accessors of ``Request``/``Response``
(``via``, ``cseq``, ``from_address``, ``to_address``, ``contact``, ``route``, ``record_route``,
``content_type``) parse each header once and remember the result until its raw value changes; on a message
that did not come from ``parse`` they raise ``SipParseError`` rather than ``ValueError``/``KeyError``.

Conventions of the typed view (RFC 3261 §7.3.1, §19.1.4): parameter names are lower-cased and the Via
transport upper-cased; methods stay case-sensitive. Header names are matched without regard to case,
compact forms are expanded and known names take their canonical spelling. Raw values keep their order
(Via, Route and Record-Route included) and are unfolded into one line each.

Deliberate limits: URIs must be ``sip``, ``sips`` or ``tel`` (another well-formed scheme in the Request-URI
earns 416, elsewhere 400); URIs with ``?headers`` are refused; header values must be UTF-8.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import TypeVar, cast
from urllib.parse import unquote

import sipmessage
from sipmessage import URI, Address, CSeq, Headers, MediaType, Parameters, Via, grammar
from sipmessage.address import ADDRESS_PATTERNS
from sipmessage.address import unquote as unquote_display_name
from sipmessage.uri import SIP_URI_PATTERN
from sipmessage.via import VIA_PATTERN

from vpbx.errors import SipError, SipParseError

__all__ = [
    "MAGIC_COOKIE",
    "MAX_MESSAGE",
    "PARSE_ERROR_REASONS",
    "REASON_PHRASES",
    "URI",
    "Address",
    "CSeq",
    "Headers",
    "MediaType",
    "Parameters",
    "Request",
    "Response",
    "Via",
    "branch",
    "build_response",
    "format_params",
    "format_uri",
    "format_via",
    "parse",
    "parse_address",
    "parse_uri",
    "recover_for_reply",
    "serialize",
    "top_via",
]

# --- protocol numbers --------------------------------------------------------------------------------------
SIP_VERSION = "SIP/2.0"  # RFC 3261 §7.1; compared without regard to case (ABNF literal)
MAGIC_COOKIE = "z9hG4bK"  # RFC 3261 §8.1.1.7: branch prefix of RFC 3261 clients
MAX_MESSAGE = 64 * 1024  # octets per message (telephony.md §3.1); more → 513 (RFC 3261 §21.5.14)
CSEQ_LIMIT = 2**31  # RFC 3261 §8.1.1.5: the CSeq number MUST be less than 2**31
MAX_FORWARDS_LIMIT = 255  # RFC 3261 §20.22 (token range 0-255)
DELTA_SECONDS_LIMIT = 2**32 - 1  # RFC 3261 §20.19 Expires, §20.23 Min-Expires, §20.33 Retry-After

PARSE_ERROR_REASONS = frozenset(
    {
        "malformed",
        "message-too-large",
        "truncated-headers",
        "truncated-body",
        "bad-encoding",
        "bad-line-ending",
        "bad-request-line",
        "bad-status-line",
        "bad-version",
        "bad-method",
        "bad-request-uri",
        "unsupported-uri-scheme",
        "bad-status-code",
        "bad-header",
        "duplicate-header",
        "missing-content-length",
        "bad-content-length",
        "missing-call-id",
        "missing-cseq",
        "missing-from",
        "missing-to",
        "missing-via",
        "missing-max-forwards",
        "bad-call-id",
        "bad-cseq",
        "cseq-mismatch",
        "bad-from",
        "bad-to",
        "bad-via",
        "bad-max-forwards",
        "bad-expires",
        "bad-min-expires",
        "bad-retry-after",
        "bad-contact",
        "bad-route",
        "bad-record-route",
        "bad-content-type",
    }
)

# RFC 3261 §7.3.3 and the IANA registry: compact forms we expand.
_COMPACT = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}
_CANONICAL = {
    name.lower(): name
    for name in (
        *_COMPACT.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "Call-Info",
        "Content-Disposition",
        "Content-Language",
        "CSeq",
        "Date",
        "Diversion",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Min-SE",
        "Organization",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Path",
        "Priority",
        "Privacy",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "RAck",
        "Reason",
        "Record-Route",
        "Refer-Sub",
        "Replaces",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "RSeq",
        "Server",
        "Subscription-State",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}
# Headers that may appear once only; a second value makes the message ambiguous (RFC 4475 §3.3.8, §3.3.9).
_SINGLE = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length", "Content-Type")
_SINGLE_LOWER = tuple((name.lower(), name) for name in _SINGLE)

REASON_PHRASES = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
}
_CLASS_PHRASES = {1: "Trying", 2: "OK", 3: "Redirection", 4: "Client Error", 5: "Server Error", 6: "Failure"}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"  # RFC 3261 §25.1 token
_TOKEN_RE = re.compile(_TOKEN)
_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+({_TOKEN})")
_STATUS_CODE_RE = re.compile(r"[1-6][0-9][0-9]")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+", re.I)
_DELTA_RE = re.compile(r"[ \t]*([0-9]+)")
# RFC 3261 §25.1 absoluteURI, for telling an unsupported scheme (416) from garbage (400).
_ABSOLUTE_URI_RE = re.compile(
    r"[A-Za-z][A-Za-z0-9+\-.]*:(?:[A-Za-z0-9\-_.!~*'();/?:@&=+$,]|%[0-9A-Fa-f]{2})+"
)
_SUPPORTED_SCHEMES = ("sip", "sips", "tel")
_TAG_RE = re.compile(r";[ \t]*tag[ \t]*=", re.I)

_T = TypeVar("_T")


# --- message types -----------------------------------------------------------------------------------------
_Entry = tuple[str, list[str]]  # (name as first spelt, raw values in order)


class SipHeaders(Headers):
    """sipmessage's ``Headers`` API over a dict keyed by the lower-case name: every lookup is O(1).

    sipmessage 0.7.1 keeps a list and lower-cases every stored name on each lookup, which was a tenth of the
    cost of handling a REGISTER. Order is first-seen, as there; a name keeps its first spelling.
    """

    __slots__ = ("_d",)

    def __init__(self, entries: dict[str, _Entry] | None = None) -> None:
        self._d: dict[str, _Entry] = {} if entries is None else entries

    def add(self, key: str, value: str) -> None:
        entry = self._d.get(key.lower())
        if entry is None:
            self._d[key.lower()] = (key, [value])
        else:
            entry[1].append(value)

    def get(self, key: str, default: str | None = None) -> str | None:
        entry = self._d.get(key.lower())
        return entry[1][0] if entry is not None and entry[1] else default

    def getlist(self, key: str) -> list[str]:
        entry = self._d.get(key.lower())
        return entry[1] if entry is not None else []

    def keys(self) -> list[str]:
        return [name for name, _ in self._d.values()]

    def remove(self, key: str) -> None:
        self._d.pop(key.lower(), None)

    def set(self, key: str, value: str) -> None:
        self.setlist(key, [value])

    def setlist(self, key: str, values: list[str]) -> None:
        lkey = key.lower()
        entry = self._d.get(lkey)
        self._d[lkey] = (key if entry is None else entry[0], values)

    def __getitem__(self, key: str) -> str:
        entry = self._d.get(key.lower())
        if entry is None or not entry[1]:
            raise KeyError(key)
        return entry[1][0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d

    def __str__(self) -> str:
        lines = [f"{name}: {value}\r\n" for name, values in self._d.values() for value in values]
        return "".join(lines) + "\r\n"


class _Typed:
    """Typed accessors that parse a header once and parse again only when its raw values change."""

    headers: Headers
    _memo: dict[str, tuple[tuple[str, ...], object]]

    def _typed(self, name: str, parser: Callable[[tuple[str, ...]], _T]) -> _T:
        raw = tuple(self.headers.getlist(name))
        hit = self._memo.get(name)
        if hit is not None and hit[0] == raw:
            return cast(_T, hit[1])
        value = parser(raw)
        self._memo[name] = (raw, value)
        return value

    @property
    def via(self) -> list[Via]:
        return list(self._typed("Via", _parse_vias))

    @via.setter
    def via(self, value: list[Via]) -> None:
        self.headers.setlist("Via", [str(x) for x in value])

    def set_top_via(self, via: Via) -> None:
        """Replace the first Via (``received``/``rport`` filled in) without re-parsing the others."""
        vias = self.via
        raw = self.headers.getlist("Via")
        first = _split_list(raw[0])
        first[0] = format_via(via)
        lines = [",".join(first), *raw[1:]]
        self.headers.setlist("Via", lines)
        vias[0] = via
        self._memo["Via"] = (tuple(lines), vias)

    @property
    def cseq(self) -> CSeq:
        return self._typed("CSeq", _parse_cseq)

    @cseq.setter
    def cseq(self, value: CSeq) -> None:
        self.headers.set("CSeq", str(value))

    @property
    def from_address(self) -> Address:
        return self._typed("From", _parse_from)

    @from_address.setter
    def from_address(self, value: Address) -> None:
        self.headers.set("From", str(value))

    @property
    def to_address(self) -> Address:
        return self._typed("To", _parse_to)

    @to_address.setter
    def to_address(self, value: Address) -> None:
        self.headers.set("To", str(value))

    @property
    def contact(self) -> list[Address]:
        """Contact addresses; empty for ``Contact: *`` (see ``is_wildcard_contact``)."""
        return list(self._typed("Contact", _parse_contacts))

    @contact.setter
    def contact(self, value: list[Address]) -> None:
        self.headers.setlist("Contact", [str(x) for x in value])

    @property
    def is_wildcard_contact(self) -> bool:
        """``Contact: *`` (RFC 3261 §10.2.2: remove every binding)."""
        values = self.headers.getlist("Contact")
        return len(values) == 1 and values[0].strip() == "*"

    @property
    def route(self) -> list[Address]:
        return list(self._typed("Route", _parse_routes))

    @route.setter
    def route(self, value: list[Address]) -> None:
        self.headers.setlist("Route", [str(x) for x in value])

    @property
    def record_route(self) -> list[Address]:
        return list(self._typed("Record-Route", _parse_record_routes))

    @record_route.setter
    def record_route(self, value: list[Address]) -> None:
        self.headers.setlist("Record-Route", [str(x) for x in value])

    @property
    def content_type(self) -> MediaType | None:
        return self._typed("Content-Type", _parse_content_type)

    @content_type.setter
    def content_type(self, value: MediaType | None) -> None:
        if value is None:
            self.headers.remove("Content-Type")
        else:
            self.headers.set("Content-Type", str(value))

    def __bytes__(self) -> bytes:
        return serialize(cast(Request | Response, self))


class Request(_Typed, sipmessage.Request):
    """A SIP request: sipmessage's ``Request`` with memoised typed accessors; ``bytes()`` serialises."""

    def __init__(self, method: str, uri: URI, body: bytes = b"") -> None:
        self.method = method
        self.uri = uri
        self.body = body
        self.headers = SipHeaders()
        self._memo = {}


class Response(_Typed, sipmessage.Response):
    """A SIP response: sipmessage's ``Response`` with memoised typed accessors; ``bytes()`` serialises."""

    def __init__(self, code: int, phrase: str, body: bytes = b"") -> None:
        self.code = code
        self.phrase = phrase
        self.body = body
        self.headers = SipHeaders()
        self._memo = {}


Message = sipmessage.Request | sipmessage.Response


# --- header grammar ----------------------------------------------------------------------------------------
def parse_uri(text: str, *, reason: str = "bad-request-uri") -> URI:
    """A ``sip``/``sips``/``tel`` URI (scheme case ignored, RFC 3261 §19.1.4) or ``SipParseError``.

    A well-formed URI of another scheme raises with status 416 and reason ``unsupported-uri-scheme``.
    """
    colon = text.find(":")
    scheme = text[:colon].lower() if colon > 0 else ""
    if scheme in _SUPPORTED_SCHEMES:
        try:
            uri = _uri(scheme + text[colon:])
        except ValueError:
            raise SipParseError(reason, text[:80]) from None
        if uri.port is not None and uri.port > 65535:
            raise SipParseError(reason, text[:80])
        return uri
    if _ABSOLUTE_URI_RE.fullmatch(text):
        raise SipParseError("unsupported-uri-scheme", scheme[:40], status=416)
    raise SipParseError(reason, text[:80])


def parse_address(value: str, *, reason: str = "bad-header") -> Address:
    """One name-addr or addr-spec (From, To, one Contact) with normalised parameter names."""
    try:
        address = _address(value)
    except ValueError:
        raise SipParseError(reason, value[:80]) from None
    uri = address.uri
    if uri.scheme not in _SUPPORTED_SCHEMES or (uri.port is not None and uri.port > 65535):
        raise SipParseError(reason, value[:80])
    return address


def _split_list(value: str) -> list[str]:
    """Split a header value at the commas that separate its elements (not inside quotes or <>)."""
    if "," not in value:
        return [value]
    if '"' not in value and "<" not in value:
        return value.split(",")
    parts: list[str] = []
    start = 0
    quoted = angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


_PLAIN_RE = re.compile(r"[A-Za-z0-9\-._~]*")  # what ``urllib.parse.quote`` leaves as it is


def format_params(params: Parameters) -> str:
    """``str(params)`` (each name and value percent-quoted), without ``quote`` for the usual plain values."""
    out = []
    plain = _PLAIN_RE.fullmatch
    for k, v in params.items():
        if not plain(k) or (v is not None and not plain(v)):
            return str(params)
        out.append(f";{k}" if v is None else f";{k}={v}")
    return "".join(out)


def format_uri(uri: URI) -> str:
    """``str(uri)``, without ``quote`` for a plain user part and parameters."""
    plain_user = uri.user is None or _PLAIN_RE.fullmatch(uri.user) is not None
    if uri.scheme == "tel" or uri.password is not None or not plain_user:
        return str(uri)
    user = f"{uri.user}@" if uri.user is not None else ""
    port = f":{uri.port}" if uri.port is not None else ""
    return f"{uri.scheme}:{user}{uri.host}{port}{format_params(uri.parameters)}"


def format_via(via: Via) -> str:
    """``str(via)``, faster."""
    port = f":{via.port}" if via.port is not None else ""
    return f"SIP/2.0/{via.transport} {via.host}{port}{format_params(via.parameters)}"


def _lower_params(params: Parameters) -> Parameters:
    for k in params:
        if not k.islower() and k != k.lower():
            return Parameters(**{k.lower(): v for k, v in params.items()})
    return params


# sipmessage's grammar (its compiled patterns, same results as its parse methods) with two changes: parameter
# names come out lower-cased, and the common unspaced forms skip its per-call regex substitutions, which
# were half the cost of a parse. test_message.py checks the equivalence on every fixture.
_NO_PARAMS = Parameters()


def _params(text: str) -> Parameters:
    """``Parameters.parse`` with lower-cased names; raises ``ValueError`` like it."""
    if not text:
        return _NO_PARAMS
    if " " in text:
        return _lower_params(Parameters.parse(text))
    bits = text.split(";")
    if bits[0]:
        raise ValueError("Parameters are not valid")
    escaped = "%" in text
    data: dict[str, str | None] = {}
    for bit in bits[1:]:
        if not bit:
            raise ValueError("Parameters are not valid")
        k, sep, v = bit.partition("=")
        if escaped:
            k, v = unquote(k), unquote(v)
        data[k.lower()] = v if sep else None
    return Parameters(**data)


class _Memo:
    """A bounded memo of text → parsed value for the immutable results of ``_uri`` and ``_address``.

    The same Request-URIs, To and Contact values arrive again and again (retransmissions, re-registrations,
    in-dialog requests); parsing them once is most of the saving. Failures are not remembered. Entries are
    immutable (frozen dataclasses over sipmessage's read-only ``Parameters``), so sharing them is safe.
    """

    __slots__ = ("_data", "_size")

    def __init__(self, size: int) -> None:
        self._data: dict[str, object] = {}
        self._size = size

    def get(self, text: str) -> object | None:
        return self._data.get(text)

    def put(self, text: str, value: _T) -> _T:
        if len(self._data) >= self._size:
            self._data.clear()  # crude, and enough: a flood of distinct values only costs the parsing
        self._data[text] = value
        return value


MEMO_SIZE = 4096
MAX_MEMO_TEXT = 256  # longer values are parsed each time
_uri_memo = _Memo(MEMO_SIZE)
_address_memo = _Memo(MEMO_SIZE)
_sent_by_memo = _Memo(MEMO_SIZE)
_VIA_HEAD_RE = re.compile(rf"SIP/2\.0/({grammar.TOKEN}) ")
_SENT_BY_RE = re.compile(rf"(?P<host>{grammar.HOST})(?::(?P<port>{grammar.PORT}))?")
_GENERIC_PARAMS_RE = re.compile(rf"(?:;{grammar.GENERIC_PARAM})+")  # unspaced; spaced ones go the long way


def _uri(text: str) -> URI:
    hit = _uri_memo.get(text)
    if hit is not None:
        return cast(URI, hit)
    uri = _parse_uri_text(text)
    return _uri_memo.put(text, uri) if len(text) <= MAX_MEMO_TEXT else uri


def _parse_uri_text(text: str) -> URI:
    """``URI.parse`` (sip, sips, tel) with lower-cased parameter names."""
    m = SIP_URI_PATTERN.match(text)
    if m is None:
        uri = URI.parse(text)  # tel:, or ValueError
        params = _lower_params(uri.parameters)
        return uri if params is uri.parameters else dataclasses.replace(uri, parameters=params)
    port = m.group("port")
    user = m.group("user")
    password = m.group("password")
    return URI(
        scheme=m.group("scheme"),
        host=m.group("host"),
        port=int(port) if port else None,
        user=unquote(user) if user else None,
        password=unquote(password) if password else None,
        parameters=_params(m.group("parameters")),
    )


def _sent_by(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Via, by sipmessage's grammar; memoised (a phone's sent-by never changes)."""
    hit = _sent_by_memo.get(text)
    if hit is not None:
        return cast(tuple[str, int | None], hit)
    m = _SENT_BY_RE.fullmatch(text)
    if m is None:
        return None
    port = m.group("port")
    return _sent_by_memo.put(text, (m.group("host"), int(port) if port else None))


def _via(text: str) -> Via:
    """``Via.parse`` with the transport upper-cased and parameter names lower-cased."""
    # The usual shape first: "SIP/2.0/UDP host:port;params", sent-by memoised, parameters checked by the
    # same grammar; anything else takes sipmessage's whole pattern below.
    m = _VIA_HEAD_RE.match(text)
    if m is not None:
        rest = text[m.end() :]
        semi = rest.find(";")
        sent_by = _sent_by(rest if semi < 0 else rest[:semi])
        params = "" if semi < 0 else rest[semi:]
        if sent_by is not None and (not params or _GENERIC_PARAMS_RE.fullmatch(params)):
            return Via(
                transport=m.group(1).upper(), host=sent_by[0], port=sent_by[1], parameters=_params(params)
            )
    value = " ".join(text.split())  # sipmessage.grammar.simplify_whitespace
    m = VIA_PATTERN.match(value)
    if m is None or m.end() != len(value):
        raise ValueError("Via is not valid")
    port = m.group("port")
    return Via(
        transport=m.group("transport").upper(),
        host=m.group("host"),
        port=int(port) if port else None,
        parameters=_params(m.group("parameters")),
    )


def _address(text: str) -> Address:
    """``Address.parse`` with lower-cased parameter names (the address's and its URI's)."""
    hit = _address_memo.get(text)
    if hit is not None:
        return cast(Address, hit)
    address = _name_addr_with_params(text)
    if address is not None:
        return address  # its name-addr is memoised; the parameters (a fresh tag each call) are not
    address = _parse_address_text(text)
    return _address_memo.put(text, address) if len(text) <= MAX_MEMO_TEXT else address


def _name_addr_with_params(text: str) -> Address | None:
    """``name <uri>;params`` as the memoised ``name <uri>`` plus the parameters, or None (then parse it all).

    From values differ only by their tag from call to call, so the name and URI are parsed once.
    """
    lt = text.find("<")
    if lt < 0 or '"' in text[:lt]:  # no name-addr, or a quoted name that may hide a "<"
        return None
    gt = text.find(">", lt)
    tail = text[gt + 1 :].lstrip(" \t")
    if gt < 0 or not tail or not _GENERIC_PARAMS_RE.fullmatch(tail):
        return None
    try:
        base = _address(text[: gt + 1])
    except ValueError:
        return None
    return Address(uri=base.uri, name=base.name, parameters=_params(tail))


def _parse_address_text(text: str) -> Address:
    value = " ".join(text.split())
    for pattern in ADDRESS_PATTERNS:
        m = pattern.match(value)
        if m is not None:
            if m.end() != len(value):
                break
            return Address(
                uri=_uri(m.group("uri")),
                name=unquote_display_name(m.group("name").strip()),
                parameters=_params(m.group("parameters")),
            )
    raise ValueError("Address is not valid")


def _address_list(raw: tuple[str, ...], reason: str) -> list[Address]:
    out: list[Address] = []
    for line in raw:
        for part in _split_list(line):
            part = part.strip(" \t")
            if not part:
                raise SipParseError(reason, "empty element")
            out.append(parse_address(part, reason=reason))
    return out


def _parse_vias(raw: tuple[str, ...]) -> list[Via]:
    if not raw:
        raise SipParseError("missing-via")
    out: list[Via] = []
    for line in raw:
        for part in _split_list(line):
            part = part.strip(" \t")
            try:
                via = _via(part)
            except ValueError:
                raise SipParseError("bad-via", part[:80]) from None
            if via.port is not None and via.port > 65535:
                raise SipParseError("bad-via", part[:80])
            out.append(via)
    return out


def _parse_cseq(raw: tuple[str, ...]) -> CSeq:
    if not raw:
        raise SipParseError("missing-cseq")
    if len(raw) > 1:
        raise SipParseError("duplicate-header", "CSeq")
    m = _CSEQ_RE.fullmatch(raw[0].strip(" \t"))
    if m is None or len(m.group(1)) > 20:
        raise SipParseError("bad-cseq", raw[0][:80])
    sequence = int(m.group(1))
    if sequence >= CSEQ_LIMIT:
        raise SipParseError("bad-cseq", "sequence number out of range")
    return CSeq(sequence=sequence, method=m.group(2))


def _single_address(raw: tuple[str, ...], name: str, missing: str, bad: str) -> Address:
    if not raw:
        raise SipParseError(missing)
    if len(raw) > 1:
        raise SipParseError("duplicate-header", name)
    return parse_address(raw[0], reason=bad)


def _parse_from(raw: tuple[str, ...]) -> Address:
    return _single_address(raw, "From", "missing-from", "bad-from")


def _parse_to(raw: tuple[str, ...]) -> Address:
    return _single_address(raw, "To", "missing-to", "bad-to")


def _parse_contacts(raw: tuple[str, ...]) -> list[Address]:
    if len(raw) == 1 and raw[0].strip(" \t") == "*":
        return []
    return _address_list(raw, "bad-contact")


def _parse_routes(raw: tuple[str, ...]) -> list[Address]:
    return _address_list(raw, "bad-route")


def _parse_record_routes(raw: tuple[str, ...]) -> list[Address]:
    return _address_list(raw, "bad-record-route")


def _parse_content_type(raw: tuple[str, ...]) -> MediaType | None:
    if not raw:
        return None
    if len(raw) > 1:
        raise SipParseError("duplicate-header", "Content-Type")
    try:
        return MediaType.parse(raw[0])
    except ValueError:
        raise SipParseError("bad-content-type", raw[0][:80]) from None


def _check_number(values: list[str], name: str, limit: int, reason: str, *, leading: bool = False) -> None:
    """A header holding a number in 0..limit; ``leading``: only its first token is numeric (Retry-After)."""
    if len(values) > 1:
        raise SipParseError("duplicate-header", name)
    value = values[0]
    if leading:
        m = _DELTA_RE.match(value)
        digits = m.group(1) if m else ""
    else:
        digits = value.strip(" \t")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20 or int(digits) > limit:
        raise SipParseError(reason, value[:40])


# --- parse -------------------------------------------------------------------------------------------------
def parse(data: bytes, *, stream: bool = False) -> Request | Response:
    """One SIP message from ``data`` (RFC 3261 §7, §18.3); ``stream``: it came framed off TCP/TLS.

    Over UDP the body is ``Content-Length`` octets and later octets are dropped; without the header the
    body runs to the end of the datagram. On a stream ``Content-Length`` is required. Leading CRLFs are
    ignored (§7.5). Raises ``SipParseError`` and nothing else.
    """
    try:
        return _parse(data, stream)
    except SipParseError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, UnicodeError) as e:  # a gap in our checks
        raise SipParseError("malformed", type(e).__name__) from None


def _parse(data: bytes, stream: bool) -> Request | Response:
    if data[:2] == b"\r\n":
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n", 0, MAX_MESSAGE + 1)
    if end < 0:
        if len(data) > MAX_MESSAGE:
            raise SipParseError("message-too-large", status=513)
        raise SipParseError("truncated-headers")
    body_start = end + 4
    try:
        head = data[:end].decode()
    except UnicodeDecodeError:
        raise SipParseError("bad-encoding", "header block is not UTF-8") from None
    newlines = head.count("\n")
    if newlines != head.count("\r") or newlines != head.count("\r\n"):
        raise SipParseError("bad-line-ending", "bare CR or LF in the header block")
    lines = head.split("\r\n")

    fields = lines[1:]
    if "\r\n " in head or "\r\n\t" in head:  # RFC 3261 §7.3.1 folding: CRLF + SP/HT continues a line
        fields = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t"):
                if not fields:
                    raise SipParseError("bad-header", "continuation line without a header")
                fields[-1] = fields[-1].rstrip(" \t") + " " + line.strip(" \t")
            else:
                fields.append(line)

    grouped: dict[str, tuple[str, list[str]]] = {}
    for field in fields:
        raw_name, sep, value = field.partition(":")
        if not sep:
            raise SipParseError("bad-header", field[:40])
        name = raw_name.rstrip(" \t")
        lname = name.lower()
        canonical = _CANONICAL.get(lname)
        if canonical is None:
            if len(lname) == 1 and lname in _COMPACT:
                canonical = _COMPACT[lname]
                lname = canonical.lower()
            elif _TOKEN_RE.fullmatch(name):
                canonical = name
            else:
                raise SipParseError("bad-header", name[:40])
        entry = grouped.get(lname)
        if entry is None:
            grouped[lname] = (canonical, [value.strip(" \t")])
        else:
            entry[1].append(value.strip(" \t"))

    for lname, name in _SINGLE_LOWER:
        entry = grouped.get(lname)
        if entry is not None and len(entry[1]) > 1:
            raise SipParseError("duplicate-header", name)

    # Framing (RFC 3261 §18.3).
    cl_entry = grouped.get("content-length")
    if cl_entry is not None:
        value = cl_entry[1][0]
        if not (value.isascii() and value.isdigit()) or len(value) > 20:
            raise SipParseError("bad-content-length", value[:40])
        length = int(value)
        if body_start + length > MAX_MESSAGE:
            raise SipParseError("message-too-large", status=513)
        if len(data) - body_start < length:
            raise SipParseError("truncated-body", f"{len(data) - body_start} of {length} octets")
        body = data[body_start : body_start + length]
    elif stream:
        raise SipParseError("missing-content-length")
    else:
        body = data[body_start:]
        if len(data) > MAX_MESSAGE:
            raise SipParseError("message-too-large", status=513)

    msg = _start_line(lines[0], body)
    msg.headers = SipHeaders(grouped)
    _validate(msg, grouped)
    return msg


def _start_line(line: str, body: bytes) -> Request | Response:
    if line[:4].upper() == "SIP/":  # Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SipParseError("bad-status-line", line[:80])
        if parts[0].upper() != SIP_VERSION:
            raise SipParseError("bad-version", parts[0][:20], status=505)
        if not _STATUS_CODE_RE.fullmatch(parts[1]):
            raise SipParseError("bad-status-code", parts[1][:20])
        return Response(int(parts[1]), parts[2] if len(parts) == 3 else "", body)
    # Request-Line = Method SP Request-URI SP SIP-Version, single spaces (RFC 4475 §3.1.2.8-10).
    parts = line.split(" ")
    if len(parts) == 3 and parts[2].upper() != SIP_VERSION and _VERSION_RE.fullmatch(parts[2]):
        raise SipParseError("bad-version", parts[2][:20], status=505)
    if len(parts) != 3 or parts[2].upper() != SIP_VERSION:
        raise SipParseError("bad-request-line", line[:80])
    method, uri_text = parts[0], parts[1]
    if not _TOKEN_RE.fullmatch(method):
        raise SipParseError("bad-method", method[:40])
    return Request(method, parse_uri(uri_text), body)


_Grouped = dict[str, tuple[str, list[str]]]  # lower-case name → (canonical name, raw values)


def _fill(msg: _Typed, grouped: _Grouped, name: str, parser: Callable[[tuple[str, ...]], _T]) -> _T:
    """Parse a header during validation and leave the result in the message's typed cache."""
    entry = grouped.get(name.lower())
    raw = tuple(entry[1]) if entry is not None else ()
    value = parser(raw)
    msg._memo[name] = (raw, value)
    return value


def _validate(msg: Request | Response, grouped: _Grouped) -> None:
    """RFC 3261 §8.1.1 required headers and their ranges; fills the typed cache as it goes."""
    call_id = grouped.get("call-id")
    if call_id is None:
        raise SipParseError("missing-call-id")
    value = call_id[1][0]
    if not value or " " in value or "\t" in value:
        raise SipParseError("bad-call-id", value[:80])
    cseq = _fill(msg, grouped, "CSeq", _parse_cseq)
    _fill(msg, grouped, "From", _parse_from)
    _fill(msg, grouped, "To", _parse_to)
    vias = _fill(msg, grouped, "Via", _parse_vias)
    if isinstance(msg, sipmessage.Request):
        if cseq.method != msg.method:  # RFC 4475 §3.1.2.17-18; methods are case-sensitive
            raise SipParseError("cseq-mismatch", f"{msg.method} / {cseq.method}")
        entry = grouped.get("max-forwards")
        if entry is not None:
            _check_number(entry[1], "Max-Forwards", MAX_FORWARDS_LIMIT, "bad-max-forwards")
        else:
            # An RFC 2543 client (no magic cookie) may omit it: RFC 4475 §3.4.1 asks us to accept that.
            top_branch = vias[0].parameters.get("branch") or ""
            if top_branch.startswith(MAGIC_COOKIE):
                raise SipParseError("missing-max-forwards")
    for lname, name, reason in _NUMERIC:
        entry = grouped.get(lname)
        if entry is not None:
            _check_number(entry[1], name, DELTA_SECONDS_LIMIT, reason, leading=name == "Retry-After")
    for lname, name, parser in _OPTIONAL_TYPED_LOWER:
        if lname in grouped:
            _fill(msg, grouped, name, parser)


_NUMERIC = (
    ("expires", "Expires", "bad-expires"),
    ("min-expires", "Min-Expires", "bad-min-expires"),
    ("retry-after", "Retry-After", "bad-retry-after"),
)
_OPTIONAL_TYPED: tuple[tuple[str, Callable[[tuple[str, ...]], object]], ...] = (
    ("Contact", _parse_contacts),
    ("Route", _parse_routes),
    ("Record-Route", _parse_record_routes),
    ("Content-Type", _parse_content_type),
)
_OPTIONAL_TYPED_LOWER = tuple((name.lower(), name, parser) for name, parser in _OPTIONAL_TYPED)


# --- serialize ---------------------------------------------------------------------------------------------
def serialize(msg: Message) -> bytes:
    """Wire bytes: full header names, one line per value, never folded, ``Content-Length`` always last.

    Raises ``SipError`` if a value would break the framing (a CR or LF inside it).
    """
    if isinstance(msg, sipmessage.Request):
        start = f"{msg.method} {msg.uri} {SIP_VERSION}"
    else:
        start = f"{SIP_VERSION} {msg.code} {msg.phrase}"
    out = [start]
    for key in msg.headers.keys():
        name = _COMPACT.get(key.lower(), key) if len(key) == 1 else key
        if name.lower() == "content-length":
            continue
        for value in msg.headers.getlist(key):
            out.append(f"{name}: {value}")
    out.append(f"Content-Length: {len(msg.body)}\r\n\r\n")
    text = "\r\n".join(out)
    if text.count("\n") != len(out) + 1 or "\r" in text.replace("\r\n", ""):
        raise SipError("A header or the start line contains a line break")
    return text.encode() + msg.body


# --- replies -----------------------------------------------------------------------------------------------
def recover_for_reply(data: bytes) -> Request | None:
    """The headers a stateless reply needs (Via, From, To, Call-ID, CSeq) from a request that did not parse.

    Returns None when they cannot be found, when ``data`` is a response, or when the request is an ACK (no
    response is ever due to one): such a message is dropped. The Request-URI of the result is a placeholder
    if the original is unusable; the values are copied raw, only unfolded.
    """
    try:
        return _recover(data[:MAX_MESSAGE])
    except Exception:  # recovery is best effort over hostile bytes
        return None


_RECOVERED = ("Via", "From", "To", "Call-ID", "CSeq")
_PLACEHOLDER_URI = URI(scheme="sip", host="invalid")  # RFC 6761 reserves the name


def _recover(data: bytes) -> Request | None:
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.rfind(b"\r\n")  # cut short: use the complete lines
        if end < 0:
            return None
    lines = data[:end].decode("utf-8", "replace").split("\r\n")
    start = lines[0]
    if start[:4].upper() == "SIP/":
        return None
    found: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if last is not None:
                found[last][-1] = found[last][-1].rstrip(" \t") + " " + line.strip(" \t")
            continue
        raw_name, sep, value = line.partition(":")
        lname = raw_name.strip(" \t").lower()
        name = _COMPACT.get(lname) or _CANONICAL.get(lname, "")
        if not sep or name not in _RECOVERED:
            last = None
            continue
        found.setdefault(name, []).append(value.strip(" \t"))
        last = name
    for name in _RECOVERED:
        values = found.get(name)
        if not values or not values[0] or any("\r" in v or "\n" in v for v in values):
            return None  # a bare CR or LF would break the reply's framing
    cseq = _CSEQ_RE.fullmatch(found["CSeq"][0])
    if cseq is None:
        return None
    parts = start.split(" ")
    method = parts[0] if _TOKEN_RE.fullmatch(parts[0]) else cseq.group(2)
    if method == "ACK" or cseq.group(2) == "ACK":
        return None
    try:
        uri = parse_uri(parts[1]) if len(parts) > 1 else _PLACEHOLDER_URI
    except SipParseError:
        uri = _PLACEHOLDER_URI
    request = Request(method, uri)
    for name in _RECOVERED:
        request.headers.setlist(name, found[name] if name == "Via" else found[name][:1])
    return request


def build_response(
    request: sipmessage.Request,
    code: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6: Via (all, in order), From, To, Call-ID and CSeq copied.

    ``to_tag`` is added to To unless the request's To already has a tag (§8.2.6.2). A 100 copies Timestamp
    (§8.2.6.1). ``headers`` are appended in order; ``Content-Length`` is written by ``serialize``.
    """
    phrase = reason if reason is not None else REASON_PHRASES.get(code, _CLASS_PHRASES.get(code // 100, ""))
    response = Response(code, phrase, body)
    out = response.headers
    src = request.headers
    out.setlist("Via", list(src.getlist("Via")))
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = src.get(name)
        if value is None:
            continue
        if name == "To" and to_tag and not _has_tag(value):
            value = f"{value};tag={to_tag}"
        out.set(name, value)
    if code == 100:
        stamp = src.get("Timestamp")
        if stamp is not None:
            out.set("Timestamp", stamp)
    for name, value in headers:
        out.add(name, value)
    return response


def _has_tag(value: str) -> bool:
    """Whether a raw From/To value carries a tag header parameter (outside the <> of a name-addr)."""
    close = value.rfind(">")
    if close >= 0:
        tail = value[close + 1 :]
    else:
        semi = value.find(";")
        tail = value[semi:] if semi >= 0 else ""
    return _TAG_RE.search(tail) is not None


def top_via(msg: Message) -> Via:
    """The first Via (the one this hop added), parsed; ``SipParseError`` when absent or malformed."""
    if isinstance(msg, _Typed):
        vias = msg.via
        return vias[0]
    values = msg.headers.getlist("Via")
    if not values:
        raise SipParseError("missing-via")
    first = _split_list(values[0])[0]
    return _parse_vias((first,))[0]


def branch(msg: Message) -> str | None:
    """The branch parameter of the top Via, or None (an RFC 2543 peer)."""
    return top_via(msg).parameters.get("branch")
