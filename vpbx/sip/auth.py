"""Digest authentication of phones (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760; telephony.md §3.5).

Sans-I/O: time comes in as ``now``, the user lookup goes through the ``Credentials`` protocol. ``now`` must be
wall time (Unix seconds, ``clock.now().timestamp()``): nonces outlive a restart and travel between nodes, and
the monotonic clock restarts with the host.

Use::

    auth = DigestAuth(server_key)
    headers = request.headers.getlist(auth_header(request.method))
    outcome = await auth.authenticate(request.method, headers, realm=tenant_domain,
                                      credentials=directory, now=now, source=ip)
    match outcome:
        case AuthOk(user): ...                       # go on with the request
        case Challenge() as ch: reply(ch.code, ch.reason, [(ch.header, v) for v in ch.values])
        case AuthFailure(event, ch): bans.record_failure(ip, now); reply with ch as above

Nonce = base64url(expiry ‖ salt ‖ HMAC-SHA256(key, expiry ‖ salt ‖ realm)): stateless and bound to the tenant.
The salt keeps two phones challenged in the same second from sharing one nonce (and one ``nc`` sequence).
An expired nonce with a correct response gets a fresh challenge with ``stale=true`` (RFC 7616 §3.3); the
``nc`` values seen per nonce sit in a bounded LRU, so a captured request cannot be replayed.

No enumeration: an unknown user, a wrong password and a wrong realm all get the challenge a first request gets
(same headers; only the nonce differs), after the same work: a dummy HA1 is derived for unknown users.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
import struct
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Protocol

from vpbx.logs import get_logger
from vpbx.sip.digest import Algorithm

log = get_logger("vpbx.security")


def _security_debug() -> bool:
    """Whether debug security events are logged: checked first, as every successful request has one."""
    return logging.getLogger("vpbx.security").isEnabledFor(logging.DEBUG)


NONCE_TTL_S = 300  # telephony.md §3.5
NONCE_SALT_BYTES = 8
NONCE_MAC_BYTES = 16
NONCE_BYTES = 8 + NONCE_SALT_BYTES + NONCE_MAC_BYTES
NONCE_CHARS = math.ceil(NONCE_BYTES * 4 / 3)  # base64url, no padding
NC_CACHE_SIZE = 100_000  # nonces whose nc values are remembered (about 100 B each)
NC_WINDOW = 64  # nc values below the highest seen that may still arrive out of order (UDP)
QOP_AUTH = "auth"  # RFC 7616 §3.3; auth-int is not offered
MAX_HEADER_CHARS = 4096  # longer credentials are malformed, not parsed
MAX_HEADERS = 4  # credentials headers looked at per request (one per realm in practice)
MAX_LOGGED_CHARS = 64  # of the attacker-chosen username in a security event
HASHES: dict[Algorithm, str] = {"MD5": "md5", "SHA-256": "sha256"}
HEX_LENGTH: dict[Algorithm, int] = {"MD5": 32, "SHA-256": 64}
_HASH_NEW = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}  # the named constructors beat hashlib.new
NC_RE = re.compile(r"[0-9a-fA-F]{8}")  # nc-value = 8LHEX (RFC 2617 §3.2.2)
REGISTER = "REGISTER"


class SecurityEvent(StrEnum):
    """Asterisk's security event names (telephony.md §3.5); they reach logger ``vpbx.security``."""

    INVALID_ACCOUNT_ID = "InvalidAccountID"
    INVALID_PASSWORD = "InvalidPassword"
    CHALLENGE_RESPONSE_FAILED = "ChallengeResponseFailed"
    FAILED_ACL = "FailedACL"
    REQUEST_BAD_FORMAT = "RequestBadFormat"
    SESSION_LIMIT = "SessionLimit"
    UNEXPECTED_ADDRESS = "UnexpectedAddress"
    SUCCESSFUL_AUTH = "SuccessfulAuth"


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredCredentials:
    """What the registrar keeps per SIP account: HA1 per algorithm, never the password."""

    username: str  # the SIP login, as in the digest
    ha1_md5: str
    ha1_sha256: str
    extension: str = ""  # the user's PIN: the AoR is sip:<extension>@<domain>
    user_id: uuid.UUID | None = None
    tenant_id: uuid.UUID | None = None

    def ha1(self, algorithm: Algorithm) -> str:
        return self.ha1_md5 if algorithm == "MD5" else self.ha1_sha256


class Credentials(Protocol):
    """Finds a SIP account by realm (the tenant's domain) and digest username."""

    async def find(self, realm: str, username: str) -> StoredCredentials | None: ...


@dataclass(frozen=True, slots=True)
class Challenge:
    """A 401/407: one ``header`` line per entry of ``values``, preferred algorithm first (RFC 8760 §2.4)."""

    code: int
    header: str
    values: tuple[str, ...]
    stale: bool = False

    @property
    def reason(self) -> str:
        return "Unauthorized" if self.code == 401 else "Proxy Authentication Required"


@dataclass(frozen=True, slots=True)
class AuthOk:
    user: StoredCredentials
    algorithm: Algorithm = "MD5"


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Credentials that failed: count them against the source, log ``event``, answer with ``challenge``."""

    event: SecurityEvent
    challenge: Challenge
    detail: str = ""


AuthOutcome = AuthOk | Challenge | AuthFailure


@dataclass(frozen=True, slots=True, kw_only=True)
class DigestAttempt:
    """Well-formed credentials answering one of our nonces: look the user up, then ``DigestAuth.verify``."""

    method: str
    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: Algorithm
    qop: str
    nc: str
    cnonce: str
    nonce_expiry: int


def auth_header(method: str) -> str:
    """The credentials header a phone answers our challenge with: REGISTER → 401 → Authorization."""
    return "Authorization" if method == REGISTER else "Proxy-Authorization"


def _h(algorithm: Algorithm, data: str) -> str:
    return _HASH_NEW[algorithm](data.encode(), usedforsecurity=False).hexdigest()


def digest_response(
    *,
    ha1: str,
    nonce: str,
    nc: str,
    cnonce: str,
    qop: str,
    method: str,
    uri: str,
    algorithm: Algorithm = "MD5",
) -> str:
    """KD(HA1, nonce:nc:cnonce:qop:H(method:uri)) for ``qop=auth`` (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1)."""
    ha2 = _h(algorithm, f"{method}:{uri}")
    return _h(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


class _Replay(Enum):
    FRESH = "fresh"
    REPLAYED = "replayed"
    FORGOTTEN = "forgotten"


class NonceCounts:
    """The ``nc`` values seen per nonce: a bounded LRU of (highest nc, bitmap of the NC_WINDOW below it).

    When the table is full the least recently used nonce is forgotten; any nonce not in the table that expires
    no later than a forgotten one is then treated as stale, so eviction never reopens a replay.
    """

    def __init__(self, size: int = NC_CACHE_SIZE) -> None:
        self._size = size
        self._seen: OrderedDict[str, tuple[int, int, int]] = OrderedDict()  # nonce → (highest, mask, expiry)
        self._forgotten_expiry = -1

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, nonce: str, nc: int, expiry: int, now: float) -> _Replay:
        entry = self._seen.get(nonce)
        if entry is None:
            if expiry <= self._forgotten_expiry:
                return _Replay.FORGOTTEN
            self._drop_expired(now)
            self._seen[nonce] = (nc, 1, expiry)
            if len(self._seen) > self._size:
                _, (_, _, old_expiry) = self._seen.popitem(last=False)
                self._forgotten_expiry = max(self._forgotten_expiry, old_expiry)
            return _Replay.FRESH
        highest, mask, _ = entry
        if nc > highest:
            shift = nc - highest
            mask = ((mask << shift) | 1) & ((1 << NC_WINDOW) - 1) if shift < NC_WINDOW else 1
            highest = nc
        else:
            back = highest - nc
            if back >= NC_WINDOW or mask & (1 << back):
                return _Replay.REPLAYED
            mask |= 1 << back
        self._seen[nonce] = (highest, mask, expiry)
        self._seen.move_to_end(nonce)
        return _Replay.FRESH

    def _drop_expired(self, now: float) -> None:
        # Expired nonces are refused (stale) before they get here, so dropping them reopens nothing.
        while self._seen:
            nonce, (_, _, expiry) = next(iter(self._seen.items()))
            if expiry > now:
                break
            del self._seen[nonce]


class DigestAuth:
    """Challenges and verifies digest credentials for every tenant; one per process (no shared state)."""

    def __init__(
        self,
        key: bytes,
        *,
        nonce_ttl_s: int = NONCE_TTL_S,
        nc_cache_size: int = NC_CACHE_SIZE,
        salt: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if len(key) < 16:
            raise ValueError("the digest server key needs at least 16 bytes")
        self._key = hmac.new(key, b"vpbx sip digest nonce", hashlib.sha256).digest()
        self._dummy = hmac.new(key, b"vpbx sip digest dummy ha1", hashlib.sha256).hexdigest()
        self._ttl = nonce_ttl_s
        self._salt = salt
        self._counts = NonceCounts(nc_cache_size)

    # --- challenges ---------------------------------------------------------------------------------------

    def challenge(
        self, method: str, realm: str, now: float, *, sha256: bool = False, stale: bool = False
    ) -> Challenge:
        """A fresh challenge: 401 + WWW-Authenticate for REGISTER, 407 + Proxy-Authenticate otherwise."""
        nonce = self._nonce(realm, math.ceil(now) + self._ttl)
        algorithms: tuple[Algorithm, ...] = ("SHA-256", "MD5") if sha256 else ("MD5",)
        quoted = quoted_string(realm)
        tail = ", stale=true" if stale else ""
        values = [
            f'Digest realm={quoted}, nonce="{nonce}", algorithm={algorithm}, qop="{QOP_AUTH}"{tail}'
            for algorithm in algorithms
        ]
        if method == REGISTER:
            return Challenge(401, "WWW-Authenticate", tuple(values), stale)
        return Challenge(407, "Proxy-Authenticate", tuple(values), stale)

    def _nonce(self, realm: str, expiry: int) -> str:
        head = struct.pack(">Q", max(0, expiry)) + self._salt(NONCE_SALT_BYTES)
        mac = hmac.digest(self._key, head + realm.encode(), "sha256")[:NONCE_MAC_BYTES]
        return base64.urlsafe_b64encode(head + mac).rstrip(b"=").decode()

    def _nonce_expiry(self, nonce: str, realm: str) -> int | None:
        """The expiry our MAC vouches for, or None if the nonce is not one of ours for this realm."""
        if len(nonce) != NONCE_CHARS:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != NONCE_BYTES:
            return None
        head, mac = raw[:-NONCE_MAC_BYTES], raw[-NONCE_MAC_BYTES:]
        good = hmac.digest(self._key, head + realm.encode(), "sha256")[:NONCE_MAC_BYTES]
        if not hmac.compare_digest(mac, good):
            return None
        expiry: int = struct.unpack(">Q", head[:8])[0]
        return expiry

    # --- verification -------------------------------------------------------------------------------------

    def parse(
        self,
        method: str,
        headers: Sequence[str],
        *,
        realm: str,
        now: float,
        sha256: bool = False,
        source: str = "",
    ) -> DigestAttempt | Challenge | AuthFailure:
        """Step one: read the credentials headers. Malformed ones are failures, never exceptions."""
        if not headers:
            return self.challenge(method, realm, now, sha256=sha256)
        params = _pick(headers, realm)
        if params is None:
            return self._fail(
                SecurityEvent.REQUEST_BAD_FORMAT, "malformed", method, realm, now, sha256, source
            )
        username = params.get("username", "")
        fail = self._checker(method, realm, now, sha256, source, username)
        missing = [
            k
            for k in ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce")
            if not params.get(k)
        ]
        if missing:
            return fail(SecurityEvent.REQUEST_BAD_FORMAT, "missing-" + missing[0])
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in (("SHA-256", "MD5") if sha256 else ("MD5",)):
            return fail(SecurityEvent.CHALLENGE_RESPONSE_FAILED, "algorithm")
        alg: Algorithm = "SHA-256" if algorithm == "SHA-256" else "MD5"
        if params["qop"].lower() != QOP_AUTH:
            return fail(SecurityEvent.CHALLENGE_RESPONSE_FAILED, "qop")
        if not NC_RE.fullmatch(params["nc"]) or int(params["nc"], 16) == 0:
            return fail(SecurityEvent.REQUEST_BAD_FORMAT, "nc")
        response = params["response"].lower()
        if len(response) != HEX_LENGTH[alg] or not all(c in "0123456789abcdef" for c in response):
            return fail(SecurityEvent.REQUEST_BAD_FORMAT, "response")
        expiry = self._nonce_expiry(params["nonce"], realm)
        if expiry is None:
            return fail(SecurityEvent.CHALLENGE_RESPONSE_FAILED, "nonce-forged")
        return DigestAttempt(
            method=method,
            username=username,
            realm=params["realm"],
            nonce=params["nonce"],
            uri=params["uri"],
            response=response,
            algorithm=alg,
            qop=params["qop"],
            nc=params["nc"],
            cnonce=params["cnonce"],
            nonce_expiry=expiry,
        )

    def verify(
        self,
        attempt: DigestAttempt,
        user: StoredCredentials | None,
        *,
        realm: str,
        now: float,
        sha256: bool = False,
        source: str = "",
    ) -> AuthOutcome:
        """Step two, after the lookup: the same work whether or not the user exists."""
        alg = attempt.algorithm
        dummy = _h(alg, f"{self._dummy}:{attempt.username}:{realm}")
        stored = user.ha1(alg).lower() if user is not None else ""
        known = len(stored) == HEX_LENGTH[alg]
        ha1 = stored if known else dummy
        expected = digest_response(
            ha1=ha1,
            nonce=attempt.nonce,
            nc=attempt.nc,
            cnonce=attempt.cnonce,
            qop=attempt.qop,
            method=attempt.method,
            uri=attempt.uri,
            algorithm=alg,
        )
        matches = hmac.compare_digest(expected.encode(), attempt.response.encode())
        fail = self._checker(attempt.method, realm, now, sha256, source, attempt.username)
        if user is None or not known:
            return fail(SecurityEvent.INVALID_ACCOUNT_ID, "unknown-user")
        if attempt.realm != realm:
            return fail(SecurityEvent.CHALLENGE_RESPONSE_FAILED, "realm")
        if not matches:
            return fail(SecurityEvent.INVALID_PASSWORD, "response")
        if attempt.nonce_expiry <= now:
            return self.challenge(attempt.method, realm, now, sha256=sha256, stale=True)
        replay = self._counts.use(attempt.nonce, int(attempt.nc, 16), attempt.nonce_expiry, now)
        if replay is _Replay.FORGOTTEN:
            return self.challenge(attempt.method, realm, now, sha256=sha256, stale=True)
        if replay is _Replay.REPLAYED:
            return fail(SecurityEvent.CHALLENGE_RESPONSE_FAILED, "nc-replayed")
        if _security_debug():
            log.debug(SecurityEvent.SUCCESSFUL_AUTH, realm=realm, account=user.username, source=source)
        return AuthOk(user, alg)

    async def authenticate(
        self,
        method: str,
        headers: Sequence[str],
        *,
        realm: str,
        credentials: Credentials,
        now: float,
        sha256: bool = False,
        source: str = "",
    ) -> AuthOutcome:
        """``parse``, one lookup, ``verify``: the whole check for one request."""
        attempt = self.parse(method, headers, realm=realm, now=now, sha256=sha256, source=source)
        if not isinstance(attempt, DigestAttempt):
            return attempt
        user = await credentials.find(realm, attempt.username)
        return self.verify(attempt, user, realm=realm, now=now, sha256=sha256, source=source)

    def _checker(
        self, method: str, realm: str, now: float, sha256: bool, source: str, username: str
    ) -> Callable[[SecurityEvent, str], AuthFailure]:
        def fail(event: SecurityEvent, detail: str) -> AuthFailure:
            return self._fail(event, detail, method, realm, now, sha256, source, username)

        return fail

    def _fail(
        self,
        event: SecurityEvent,
        detail: str,
        method: str,
        realm: str,
        now: float,
        sha256: bool,
        source: str,
        username: str = "",
    ) -> AuthFailure:
        # The HA1, the response and the nonce never reach the log; the username is cut to a safe length.
        log.warning(
            event,
            realm=realm,
            account=username[:MAX_LOGGED_CHARS].encode("unicode_escape").decode("ascii"),
            source=source,
            method=method[:MAX_LOGGED_CHARS],
            detail=detail,
        )
        return AuthFailure(event, self.challenge(method, realm, now, sha256=sha256), detail)


def quoted_string(value: str) -> str:
    """An RFC 3261 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# auth-param = token LWS "=" LWS ( token / quoted-string ), separated by commas (RFC 3261 §25.1, RFC 7616)
_AUTH_PARAM_RE = re.compile(
    r'[ \t]*([A-Za-z0-9!%*_+`\'~.\-]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)"|([^ \t,"]+))[ \t]*(?:,|$)'
)
_ESCAPE_RE = re.compile(r"\\(.)")
_SCHEME_RE = re.compile(r"[ \t]*([A-Za-z0-9!%*_+`'~.\-]+)[ \t]+")


def parse_credentials(value: str) -> dict[str, str] | None:
    """The parameters (names lower-cased, quotes removed) of a ``Digest`` credentials value, or None."""
    m = _SCHEME_RE.match(value)
    if m is None or m.group(1).lower() != "digest":
        return None
    rest = value[m.end() :].rstrip(" \t")
    params: dict[str, str] = {}
    pos, end = 0, len(rest)
    while pos < end:
        m = _AUTH_PARAM_RE.match(rest, pos)
        if m is None or m.end() == pos:
            return None
        quoted = m.group(2)
        if quoted is None:
            params[m.group(1).lower()] = m.group(3)
        else:
            params[m.group(1).lower()] = _ESCAPE_RE.sub(r"\1", quoted) if "\\" in quoted else quoted
        pos = m.end()
    return params or None


def _pick(headers: Sequence[str], realm: str) -> dict[str, str] | None:
    """The digest parameters (names lower-cased) of the header for our realm, else of the first good one."""
    first: dict[str, str] | None = None
    for value in headers[:MAX_HEADERS]:
        if len(value) > MAX_HEADER_CHARS:
            continue
        params = parse_credentials(value)
        if params is None:
            continue
        if params.get("realm") == realm:
            return params
        first = first or params
    return first
