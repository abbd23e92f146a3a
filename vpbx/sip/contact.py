"""The REGISTER facts the registrar needs, read from a parsed request; SIP URI comparison (RFC 3261 §19.1.4).

``read_register`` turns a sipmessage ``Request`` into a plain ``RegisterRequest`` (strings and numbers only),
so ``vpbx.pbx.registrar`` applies RFC 3261 §10.3 without touching the SIP grammar. Parameter values are kept
raw (``expires``, ``q``): judging them is the registrar's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipmessage import URI, Address, Request

from vpbx.errors import SipParseError
from vpbx.sip.flow import Destination
from vpbx.sip.message import Request as ParsedRequest
from vpbx.sip.message import format_uri

SPECS_MEMO_SIZE = 4096  # Contact values whose specs are remembered: a phone re-registers with the same one
_specs_memo: dict[tuple[str, ...], tuple[ContactSpec, ...]] = {}
STAR = "*"  # Contact: * (RFC 3261 §10.2.2), only with Expires: 0
# §19.1.4: these match only if both URIs carry them; other parameters found in one URI only are ignored.
STRICT_URI_PARAMS = ("user", "ttl", "method", "maddr")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactSpec:
    """One Contact of a REGISTER: the URI and the parameters the registrar reads."""

    uri: str
    host: str  # the URI's host, brackets removed from IPv6 references
    expires: str | None = None  # raw ``expires`` parameter
    q: str | None = None  # raw ``q`` parameter
    instance: str | None = None  # ``+sip.instance`` without its quotes (RFC 5626 §4.1)


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterRequest:
    """What RFC 3261 §10.3 looks at in a REGISTER, and the flow it came over."""

    to_user: str | None
    to_host: str
    contacts: tuple[ContactSpec, ...] = ()
    star: bool = False  # a bare ``*`` was among the Contact values
    expires: int | None = None  # the Expires header
    call_id: str
    cseq: int
    require: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    user_agent: str | None = None
    source: Destination


def read_register(request: Request, source: Destination) -> RegisterRequest | str:
    """The REGISTER facts, or the reason for a 400 when Contact, To, Call-ID or CSeq cannot be read."""
    try:
        to = request.to_address
    except (KeyError, ValueError):
        return "Bad To header"
    try:
        call_id = request.call_id
        cseq = request.cseq.sequence
    except (KeyError, ValueError):
        return "Bad Call-ID or CSeq header"
    star = False
    contacts: list[ContactSpec] = []
    values = request.headers.getlist("Contact")
    if isinstance(request, ParsedRequest) and not any(v.strip() == STAR for v in values):
        memo_key = tuple(values)
        known = _specs_memo.get(memo_key)
        if known is None:
            try:
                known = tuple(_spec(a) for a in request.contact)  # parsed (and checked) by ``parse``
            except SipParseError:
                return "Bad Contact header"
            if len(_specs_memo) >= SPECS_MEMO_SIZE:
                _specs_memo.clear()
            _specs_memo[memo_key] = known
        contacts = list(known)
        values = []
    for value in values:
        if value.strip() == STAR:
            if star:
                return "Contact * more than once"
            star = True
            continue
        try:
            addresses = Address.parse_many(value)
        except ValueError:
            return "Bad Contact header"
        contacts.extend(_spec(a) for a in addresses)
    try:
        expires = request.expires
    except ValueError:
        expires = None  # RFC 3261 §20.19: a malformed Expires counts as absent (3600)
    path: list[str] = []
    for value in request.headers.getlist("Path"):
        path.extend(v.strip() for v in value.split(",") if v.strip())
    return RegisterRequest(
        to_user=to.uri.user,
        to_host=to.uri.host.lower(),
        contacts=tuple(contacts),
        star=star,
        expires=expires,
        call_id=call_id,
        cseq=cseq,
        require=tuple(t.lower() for t in request.require),
        path=tuple(path),
        user_agent=request.user_agent,
        source=source,
    )


def _spec(address: Address) -> ContactSpec:
    params = {k.lower(): v for k, v in address.parameters.items()}
    instance = params.get("+sip.instance")
    return ContactSpec(
        uri=format_uri(address.uri),
        host=address.uri.host.strip("[]"),
        expires=params.get("expires"),
        q=params.get("q"),
        instance=instance.strip('"') if instance else None,
    )


def uri_equal(a: str, b: str) -> bool:
    """SIP URI equality of RFC 3261 §19.1.4: user part case-sensitive, the rest not; unparseable: exact."""
    if a == b:
        return True
    try:
        x, y = URI.parse(a), URI.parse(b)
    except ValueError:
        return False
    if (x.scheme.lower(), x.user, x.password, x.host.lower(), x.port) != (
        y.scheme.lower(),
        y.user,
        y.password,
        y.host.lower(),
        y.port,
    ):
        return False
    px = {k.lower(): (v or "").lower() for k, v in x.parameters.items()}
    py = {k.lower(): (v or "").lower() for k, v in y.parameters.items()}
    if any((k in px) != (k in py) for k in STRICT_URI_PARAMS):
        return False
    return all(px[k] == py[k] for k in px.keys() & py.keys())
