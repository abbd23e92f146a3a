"""Trunk monitor: registration to carriers, OPTIONS health checks and the trunks the B2BUA may use.

telephony.md §3.2: a trunk is known by its source address or by our outbound registration; OPTIONS go to
every enabled trunk every 30 s, a trunk is *down* after 3 unanswered in a row and *up* again on the next
answer, and routing fails over to the next trunk by priority.

- **Registration** (``kind = registration``): we REGISTER as a UAC to the carrier (through its outbound
  proxy when set) and answer its 401/407 with digest credentials (RFC 3261 §22.2, RFC 8760). A 401/407 or
  403 *after our credentials* means wrong credentials: ``auth-failed``. No answer: ``unreachable``. The
  registration is refreshed at 80 % of the expiry the carrier granted; a failure is retried after
  ``retry_s``, doubling up to ``MAX_BACKOFF_S``.
- **Health**: any final response to OPTIONS, even 404 or 405, is an answer. An OPTIONS still unanswered when
  the next one is due counts as a miss (Timer F, 32 s, is longer than a short interval).
- **Configuration**: read from the database once, again whenever the configuration version moves (the
  cabinet's commits of trunk rows bump it, ``vpbx.store.changes``); carriers' names are resolved then, off
  the SIP path. Lookups (``trunk_for_source``, ``outbound_trunks``) never touch the database.
- **Status**: kept per trunk in a ``TrunkStatusBoard`` that the cabinet reads (memory in v1, like the
  other §9.3 interfaces).

The core (``tick``, ``on_response``, ``on_terminated``) takes the time from the injected clock and sends
through the node; ``start``/``stop`` run it with the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import secrets
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter
from sqlalchemy import select

from vpbx.clock import Clock
from vpbx.crypto import SecretUnreadable
from vpbx.errors import SipError, SipParseError
from vpbx.logs import get_logger
from vpbx.pbx.trunks import parse_networks, split_hostport
from vpbx.sip.auth import digest_response, parse_credentials, quoted_string
from vpbx.sip.dialog import LocalVia, build_initial_request, new_call_id, new_tag
from vpbx.sip.digest import Algorithm, ha1
from vpbx.sip.flow import Destination
from vpbx.sip.message import Address, Parameters, Request, Response, parse_address, parse_uri
from vpbx.sip.transaction import TransactionKey
from vpbx.store.models import Domain, DomainId, Trunk

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from vpbx.crypto import SecretBox
    from vpbx.store.changes import ConfigVersion

log = get_logger("vpbx.pbx.trunkmon")

OPTIONS_INTERVAL_S = 30.0  # telephony.md §3.2
MAX_MISSES = 3  # unanswered OPTIONS in a row before the trunk is down
RETRY_S = 30.0  # first retry of a failed registration; doubles each time
MAX_BACKOFF_S = 600.0
REFRESH_AT = 0.8  # re-REGISTER at this share of the granted expiry
MIN_REFRESH_S = 5.0
UNREGISTER_WAIT_S = 2.0  # at shutdown, for the carriers' answers to our un-REGISTERs
TICK_S = 1.0  # how often due requests go out (a fifth of a short interval when that is shorter)
RESOLVE_TIMEOUT_S = 5.0
FROM_USER = "vpbx"
USER_AGENT = "vpbx"

TRUNK_STATE_CHANGES = Counter(
    "vpbx_trunk_state_changes_total", "Trunk status changes, by the new state", ["state"]
)
TRUNK_REQUESTS = Counter("vpbx_trunk_requests_total", "REGISTER and OPTIONS sent to trunks", ["method"])

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrunkSender(Protocol):
    """What the monitor needs of the SIP node."""

    def advertised_for(self, transport: str) -> tuple[str, int]: ...

    def send_request(
        self, request: Request, dest: Destination, *, user: TrunkMonitor | None = None
    ) -> TransactionKey: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkInfo:
    """What placing a call through a trunk needs; a snapshot, never an ORM object."""

    id: uuid.UUID
    domain_id: DomainId
    name: str
    kind: str  # registration, ip
    host: str  # the carrier's host as configured (Request-URI and To of our requests)
    port: int
    transport: str  # udp, tcp
    address: str  # ``host`` resolved to an IP address; empty while unresolved
    proxy: tuple[str, int] | None  # the outbound proxy, resolved; requests go there with a Route
    proxy_host: str | None  # the proxy as configured (for the Route header)
    username: str
    auth_username: str
    password: str = field(repr=False)  # for 401/407 on REGISTER and INVITE; never logged
    expires_s: int
    from_user: str
    from_domain: str
    caller_id_mode: str  # domain, user, fixed
    caller_id_number: str | None  # E.164, for ``fixed``
    number_format: str  # e164 (+7…), plain (7…), national (8…)
    max_calls: int
    priority: int
    enabled: bool
    networks: tuple[Network, ...]

    @property
    def destination(self) -> Destination:
        """Where requests to the carrier go: the outbound proxy if any, else the carrier itself."""
        host, port = self.proxy or (self.address, self.port)
        return Destination(self.transport, host, port)

    @property
    def digest_username(self) -> str:
        return self.auth_username or self.username

    @property
    def uri_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 5060 else f"{host}:{self.port}"

    @property
    def from_host(self) -> str:
        return self.from_domain or self.host

    def route(self) -> list[Address]:
        """The Route set for requests through the outbound proxy (loose routing, RFC 3261 §16.12)."""
        if self.proxy is None or self.proxy_host is None:
            return []
        return [parse_address(f"<sip:{self.proxy_host};lr>")]

    def format_number(self, e164: str) -> str:
        """An E.164 number as the carrier wants it: ``+74951234567``, ``74951234567`` or ``84951234567``."""
        digits = e164.lstrip("+")
        if self.number_format == "plain":
            return digits
        if self.number_format == "national":
            return "8" + digits[1:] if digits.startswith("7") else "810" + digits
        return "+" + digits

    def credentials(self, challenge: Response, method: str, uri: str) -> tuple[str, str] | None:
        """The (header, value) answering ``challenge`` (401 or 407) for ``method`` ``uri``; None when the
        challenge is unusable (no Digest, unknown algorithm)."""
        return answer_challenge(challenge, method, uri, self.digest_username, self.password)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrunkStatus:
    """A trunk's live state as the cabinet shows it."""

    trunk_id: uuid.UUID
    domain_id: DomainId
    state: str  # disabled, unknown, registering, registered, auth-failed, unreachable, rejected, up, down
    registration: str | None  # None for IP trunks
    health: str  # unknown, up, down
    last_code: int | None  # the last SIP final response code from the carrier
    changed_at: dt.datetime
    misses: int = 0


class TrunkStatusBoard:
    """Trunk statuses by trunk, read by tenant (telephony.md §9.3: memory in v1)."""

    def __init__(self) -> None:
        self._by_id: dict[uuid.UUID, TrunkStatus] = {}

    def put(self, status: TrunkStatus) -> None:
        self._by_id[status.trunk_id] = status

    def drop(self, trunk_id: uuid.UUID) -> None:
        self._by_id.pop(trunk_id, None)

    def get(self, domain_id: uuid.UUID, trunk_id: uuid.UUID) -> TrunkStatus | None:
        status = self._by_id.get(trunk_id)
        return status if status is not None and status.domain_id == domain_id else None

    def for_domain(self, domain_id: uuid.UUID) -> dict[uuid.UUID, TrunkStatus]:
        return {k: v for k, v in self._by_id.items() if v.domain_id == domain_id}


def answer_challenge(
    challenge: Response, method: str, uri: str, username: str, password: str
) -> tuple[str, str] | None:
    """Digest credentials for a 401 (Authorization) or 407 (Proxy-Authorization), RFC 3261 §22.2."""
    if challenge.code == 401:
        asked, header = "WWW-Authenticate", "Authorization"
    elif challenge.code == 407:
        asked, header = "Proxy-Authenticate", "Proxy-Authorization"
    else:
        return None
    offers = [p for v in challenge.headers.getlist(asked) if (p := parse_credentials(v)) is not None]
    # RFC 8760 §2.4: the server lists its preferred algorithm first; take the first one we support
    for params in offers:
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ("MD5", "SHA-256") or "nonce" not in params:
            continue
        alg: Algorithm = "MD5" if algorithm == "MD5" else "SHA-256"
        realm, nonce = params.get("realm", ""), params["nonce"]
        key = ha1(username, realm, password, alg)
        parts = [
            f"username={quoted_string(username)}",
            f"realm={quoted_string(realm)}",
            f"nonce={quoted_string(nonce)}",
            f"uri={quoted_string(uri)}",
        ]
        qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
        if "auth" in qops:
            nc, cnonce = "00000001", secrets.token_hex(8)
            response = digest_response(
                ha1=key, nonce=nonce, nc=nc, cnonce=cnonce, qop="auth", method=method, uri=uri, algorithm=alg
            )
            parts += [
                f"response={quoted_string(response)}",
                "qop=auth",
                f"nc={nc}",
                f"cnonce={quoted_string(cnonce)}",
            ]
        elif qops:
            continue  # auth-int only: we never sign bodies
        else:  # RFC 2069 compatibility (RFC 2617 §3.2.2.1): KD(HA1, nonce:H(A2))
            new = hashlib.md5 if alg == "MD5" else hashlib.sha256
            ha2 = new(f"{method}:{uri}".encode(), usedforsecurity=False).hexdigest()
            response = new(f"{key}:{nonce}:{ha2}".encode(), usedforsecurity=False).hexdigest()
            parts.append(f"response={quoted_string(response)}")
        parts.append(f"algorithm={alg}")
        if "opaque" in params:
            parts.append(f"opaque={quoted_string(params['opaque'])}")
        return header, "Digest " + ", ".join(parts)
    return None


def _is_stale(challenge: Response) -> bool:
    for name in ("WWW-Authenticate", "Proxy-Authenticate"):
        for value in challenge.headers.getlist(name):
            params = parse_credentials(value)
            if params is not None and params.get("stale", "").lower() == "true":
                return True
    return False


@dataclass(slots=True)
class _Run:
    """The monitor's mutable state of one trunk."""

    info: TrunkInfo
    fingerprint: tuple[object, ...]
    registration: str | None
    health: str = "unknown"
    last_code: int | None = None
    changed_at: dt.datetime | None = None
    state: str = ""
    # registration
    reg_due: float = 0.0
    reg_key: TransactionKey | None = None
    reg_request: Request | None = None
    reg_authed: bool = False
    reg_call_id: str = ""
    reg_tag: str = ""
    reg_cseq: int = 0
    failures: int = 0
    # health
    opt_due: float = 0.0
    opt_key: TransactionKey | None = None
    opt_sent_at: float = 0.0
    misses: int = 0


class TrunkMonitor:
    """Registers, pings and keeps the status of every trunk; the B2BUA asks it which trunk to use."""

    def __init__(
        self,
        node: TrunkSender,
        sessions: async_sessionmaker[AsyncSession] | None,
        version: ConfigVersion | None,
        box: SecretBox | None,
        *,
        clock: Clock,
        board: TrunkStatusBoard | None = None,
        options_interval_s: float = OPTIONS_INTERVAL_S,
        max_misses: int = MAX_MISSES,
        retry_s: float = RETRY_S,
    ) -> None:
        if options_interval_s <= 0 or max_misses < 1 or retry_s <= 0:
            raise ValueError("trunk monitor: positive interval and retry, at least one miss")
        self._node = node
        self._sessions = sessions
        self._version = version
        self._box = box
        self._clock = clock
        self.board = board or TrunkStatusBoard()
        self.interval_s = options_interval_s
        self.tick_s = min(TICK_S, options_interval_s / 5)
        self._max_misses = max_misses
        self._retry_s = retry_s
        self._runs: dict[uuid.UUID, _Run] = {}
        self._pending: dict[TransactionKey, tuple[uuid.UUID, str]] = {}  # → (trunk, "reg" | "opt" | "unreg")
        self._leaving: dict[uuid.UUID, _Run] = {}  # trunks being un-registered
        self._none_leaving = asyncio.Event()
        self._none_leaving.set()
        self._loaded_version: int | None = None
        self._resolve_due = 0.0
        self._task: asyncio.Task[None] | None = None

    # --- the interface for the B2BUA ---------------------------------------------------------------------

    def trunk(self, trunk_id: uuid.UUID) -> TrunkInfo | None:
        run = self._runs.get(trunk_id)
        return run.info if run is not None else None

    def trunks_for_source(self, host: str, port: int) -> list[TrunkInfo]:
        """Enabled trunks a request from ``host:port`` may come from, in priority order: IP trunks whose
        networks hold the address, registration trunks whose carrier (or proxy) has this address and port."""
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return []
        found: list[TrunkInfo] = []
        for run in self._runs.values():
            t = run.info
            if not t.enabled:
                continue
            if t.kind == "ip" and any(addr in n for n in t.networks):
                found.append(t)
            elif t.kind == "registration" and any(
                a and ipaddress.ip_address(a) == addr and p == port
                for a, p in ((t.address, t.port), t.proxy or ("", 0))
            ):
                found.append(t)
        return sorted(found, key=_order)

    def trunk_for_source(self, host: str, port: int) -> TrunkInfo | None:
        found = self.trunks_for_source(host, port)
        return found[0] if found else None

    def outbound_trunks(self, domain_id: uuid.UUID) -> list[TrunkInfo]:
        """The domain's usable trunks in failover order: enabled, resolved, not down, credentials not
        refused."""
        usable = [
            run.info
            for run in self._runs.values()
            if run.info.domain_id == domain_id
            and run.info.enabled
            and run.info.address
            and run.health != "down"
            and run.registration != "auth-failed"
        ]
        return sorted(usable, key=_order)

    def status(self, trunk_id: uuid.UUID) -> TrunkStatus | None:
        run = self._runs.get(trunk_id)
        return self.board.get(run.info.domain_id, trunk_id) if run is not None else None

    # --- configuration -----------------------------------------------------------------------------------

    async def refresh(self) -> bool:
        """Reload the trunks if the configuration moved since the last load; True when it reloaded."""
        if self._sessions is None or self._version is None or self._box is None:
            return False
        version = self._version.value
        now = self._clock.monotonic()
        unresolved = any(r.info.enabled and not r.info.address for r in self._runs.values())
        if version == self._loaded_version and not (unresolved and now >= self._resolve_due):
            return False
        self._resolve_due = now + self._retry_s  # names that did not resolve are tried again then
        async with self._sessions() as s:
            rows = list(
                (
                    await s.scalars(
                        select(Trunk)
                        .join(Domain, Domain.id == Trunk.domain_id)
                        .where(Domain.status == "active")
                    )
                ).all()
            )
        infos = [await self._info(t, self._box) for t in rows]
        self.configure(infos)
        self._loaded_version = version
        log.info("trunks.loaded", trunks=len(infos))
        return True

    async def _info(self, t: Trunk, box: SecretBox) -> TrunkInfo:
        try:
            password = box.open(t.password_enc) if t.password_enc else ""
        except SecretUnreadable:
            log.warning("trunk.password_unreadable", trunk=str(t.id))
            password = ""
        proxy: tuple[str, int] | None = None
        proxy_host: str | None = None
        if t.outbound_proxy:
            hp = split_hostport(t.outbound_proxy)
            if hp is not None:
                proxy_host = f"[{hp[0]}]:{hp[1]}" if ":" in hp[0] else f"{hp[0]}:{hp[1]}"
                resolved = await resolve(hp[0], hp[1], t.transport)
                proxy = (resolved, hp[1]) if resolved else None
        return TrunkInfo(
            id=t.id,
            domain_id=DomainId(t.domain_id),
            name=t.name,
            kind=t.kind,
            host=t.host,
            port=t.port,
            transport=t.transport,
            address=await resolve(t.host, t.port, t.transport),
            proxy=proxy,
            proxy_host=proxy_host,
            username=t.username,
            auth_username=t.auth_username,
            password=password,
            expires_s=t.expires_s,
            from_user=t.from_user,
            from_domain=t.from_domain,
            caller_id_mode=t.caller_id_mode,
            caller_id_number=t.caller_id_number,
            number_format=t.number_format,
            max_calls=t.max_calls,
            priority=t.priority,
            enabled=t.enabled,
            networks=tuple(parse_networks(t.allowed_networks.splitlines())),
        )

    def configure(self, infos: Iterable[TrunkInfo]) -> None:
        """The trunks are now ``infos``: new ones start from scratch, changed ones register again."""
        now = self._clock.monotonic()
        wanted = {t.id: t for t in infos}
        for gone in self._runs.keys() - wanted.keys():
            self._forget(gone)
            self.board.drop(gone)
        for tid, info in wanted.items():
            fingerprint = _fingerprint(info)
            run = self._runs.get(tid)
            if run is not None and run.fingerprint == fingerprint:
                run.info = info  # priority, limits, caller ID: no need to start over
                self._publish(run)
                continue
            if run is not None:
                self._forget(tid)
            run = _Run(
                info=info,
                fingerprint=fingerprint,
                registration="registering" if info.kind == "registration" else None,
                reg_due=now,
                opt_due=now,
            )
            self._runs[tid] = run
            self._publish(run)

    def _forget(self, trunk_id: uuid.UUID) -> None:
        """Stop working a trunk (deleted, disabled, or changed); a registered binding is removed with
        REGISTER ``Expires: 0`` (RFC 3261 §10.2.2) so the carrier stops sending calls to it."""
        run = self._runs.pop(trunk_id, None)
        if run is None:
            return
        for key in (run.reg_key, run.opt_key):
            if key is not None:
                self._pending.pop(key, None)
        run.reg_key = run.opt_key = None
        if run.registration == "registered" and run.info.address:
            self._leaving[trunk_id] = run
            self._none_leaving.clear()
            if not self._register(run, None, unregister=True):
                self._left(trunk_id)

    # --- sending -----------------------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Send what is due (REGISTER, OPTIONS) and count OPTIONS left unanswered; how many went out."""
        sent = 0
        for run in list(self._runs.values()):
            info = run.info
            if not info.enabled or not info.address:
                continue
            if info.kind == "registration" and run.reg_key is None and now >= run.reg_due:
                sent += self._register(run, None)
            if run.opt_key is not None and now >= run.opt_sent_at + self.interval_s:
                self._pending.pop(run.opt_key, None)
                run.opt_key = None
                self._missed(run, "no-answer")
            if run.opt_key is None and now >= run.opt_due:
                run.opt_due = now + self.interval_s
                sent += self._options(run, now)
        return sent

    def _via(self, info: TrunkInfo) -> LocalVia:
        return LocalVia(info.transport.upper(), *self._node.advertised_for(info.transport))

    def _contact(self, info: TrunkInfo, via: LocalVia, user: str) -> Address:
        host = f"[{via.host}]" if ":" in via.host and not via.host.startswith("[") else via.host
        transport = ";transport=tcp" if info.transport == "tcp" else ""
        return parse_address(f"<sip:{user}@{host}:{via.port}{transport}>")

    def _register(self, run: _Run, challenge: Response | None, *, unregister: bool = False) -> int:
        info = run.info
        uri = f"sip:{info.uri_host}"
        expires = 0 if unregister else info.expires_s
        headers: list[tuple[str, str]] = [("Expires", str(expires)), ("User-Agent", USER_AGENT)]
        if challenge is not None:
            creds = info.credentials(challenge, "REGISTER", uri)
            if creds is None:
                if not unregister:  # a trunk being removed has no status left to show
                    self._reg_failed(run, "rejected", challenge.code)
                return 0
            headers.append(creds)
        elif not unregister:  # a removal keeps the registration's Call-ID (RFC 3261 §10.2.4)
            run.reg_call_id, run.reg_tag = new_call_id(), new_tag()
        run.reg_cseq += 1
        via = self._via(info)
        try:
            aor = parse_uri(f"sip:{info.username}@{info.from_host}")
            request = build_initial_request(
                "REGISTER",
                parse_uri(uri),
                via=via,
                from_=Address(uri=aor, parameters=Parameters(tag=run.reg_tag)),
                to=Address(uri=aor),
                call_id=run.reg_call_id,
                cseq=run.reg_cseq,
                contact=self._contact(info, via, info.username),
                route=info.route(),
                headers=headers,
            )
        except SipParseError:
            log.warning("trunk.bad_config", trunk=str(info.id))
            self._reg_failed(run, "rejected", None)
            return 0
        return self._send(run, request, "unreg" if unregister else "reg", authed=challenge is not None)

    def _options(self, run: _Run, now: float) -> int:
        info = run.info
        via = self._via(info)
        target = parse_uri(f"sip:{info.uri_host}")
        user = info.from_user or info.username or FROM_USER
        request = build_initial_request(
            "OPTIONS",
            target,
            via=via,
            from_=Address(
                uri=parse_uri(f"sip:{user}@{info.from_host}"), parameters=Parameters(tag=new_tag())
            ),
            to=Address(uri=target),
            call_id=new_call_id(),
            cseq=1,
            contact=self._contact(info, via, user),
            route=info.route(),
            headers=(("Accept", "application/sdp"), ("User-Agent", USER_AGENT)),
        )
        run.opt_sent_at = now
        return self._send(run, request, "opt")

    def _send(self, run: _Run, request: Request, what: str, *, authed: bool = False) -> int:
        try:
            key = self._node.send_request(request, run.info.destination, user=self)
        except SipError:
            log.exception("trunk.send_failed", trunk=str(run.info.id), method=request.method)
            return 0
        self._pending[key] = (run.info.id, what)
        if what in ("reg", "unreg"):
            run.reg_key, run.reg_request, run.reg_authed = key, request, authed
        else:
            run.opt_key = key
        TRUNK_REQUESTS.labels(request.method).inc()
        return 1

    # --- the client transactions' user (called by the node) ----------------------------------------------

    def on_response(self, key: TransactionKey, response: Response) -> None:
        if response.code < 200:
            return
        found = self._pending.pop(key, None)
        if found is not None and found[1] == "unreg":
            self._unregistered(found[0], response)
            return
        run = self._runs.get(found[0]) if found is not None else None
        if run is None or found is None:
            return
        run.last_code = response.code
        if found[1] == "opt":
            run.opt_key = None
            self._answered(run)
        else:
            run.reg_key = None
            self._registered(run, response)
        self._publish(run)

    def on_terminated(self, key: TransactionKey, reason: str) -> None:
        found = self._pending.pop(key, None)
        if found is not None and found[1] == "unreg":
            self._left(found[0])
            return
        run = self._runs.get(found[0]) if found is not None else None
        if run is None or found is None or reason == "done":
            return
        if found[1] == "opt":
            run.opt_key = None
            self._missed(run, reason)
        else:
            run.reg_key = None
            self._reg_failed(run, "unreachable", None)

    # --- state ---------------------------------------------------------------------------------------------

    def _answered(self, run: _Run) -> None:
        run.misses = 0
        if run.health != "up":
            run.health = "up"

    def _missed(self, run: _Run, reason: str) -> None:
        run.misses += 1
        log.info("trunk.options_missed", trunk=str(run.info.id), misses=run.misses, reason=reason)
        if run.misses >= self._max_misses:
            run.health = "down"
        self._publish(run)

    def _registered(self, run: _Run, response: Response) -> None:
        now = self._clock.monotonic()
        code = response.code
        if code in (401, 407):
            if not run.reg_authed or _is_stale(response):
                self._register(run, response)
                return
            self._reg_failed(run, "auth-failed", code)
        elif code == 403:
            self._reg_failed(run, "auth-failed", code)
        elif code == 423 and (min_expires := _int(response.headers.get("Min-Expires"))) is not None:
            run.info = dataclasses.replace(run.info, expires_s=min(max(min_expires, 1), 86400))
            run.reg_due = now
        elif 200 <= code < 300:
            granted = _granted_expiry(response, run.reg_request, run.info.expires_s)
            run.registration = "registered"
            run.failures = 0
            run.reg_due = now + max(MIN_REFRESH_S, granted * REFRESH_AT)
        else:
            self._reg_failed(run, "rejected", code)

    def _unregistered(self, trunk_id: uuid.UUID, response: Response) -> None:
        """The carrier's answer to our removal: a challenge is answered once, anything else ends it."""
        run = self._leaving.get(trunk_id)
        if run is None:
            return
        challenged = response.code in (401, 407) and not run.reg_authed
        if challenged and self._register(run, response, unregister=True):
            return
        self._left(trunk_id)
        log.info("trunk.unregistered", trunk=str(trunk_id), code=response.code)

    def _left(self, trunk_id: uuid.UUID) -> None:
        self._leaving.pop(trunk_id, None)
        if not self._leaving:
            self._none_leaving.set()

    def _reg_failed(self, run: _Run, state: str, code: int | None) -> None:
        run.failures += 1
        run.registration = state
        if code is not None:
            run.last_code = code
        delay = min(MAX_BACKOFF_S, self._retry_s * 2 ** min(run.failures - 1, 16))
        run.reg_due = self._clock.monotonic() + delay
        self._publish(run)

    def _publish(self, run: _Run) -> None:
        state = _state(run)
        if state != run.state or run.changed_at is None:
            if run.state:
                log.info(
                    "trunk.state",
                    trunk=str(run.info.id),
                    name=run.info.name,
                    state=state,
                    was=run.state,
                    code=run.last_code,
                )
            TRUNK_STATE_CHANGES.labels(state).inc()
            run.state = state
            run.changed_at = self._clock.now()
        self.board.put(
            TrunkStatus(
                trunk_id=run.info.id,
                domain_id=run.info.domain_id,
                state=state,
                registration=run.registration,
                health=run.health,
                last_code=run.last_code,
                changed_at=run.changed_at,
                misses=run.misses,
            )
        )

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="sip-trunk-monitor")

    async def stop(self, *, unregister_timeout_s: float = UNREGISTER_WAIT_S) -> None:
        """Stop working; registered trunks are un-registered, waiting at most ``unregister_timeout_s``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for trunk_id in list(self._runs):
            self._forget(trunk_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_leaving.wait(), unregister_timeout_s)
        self._leaving.clear()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                self.tick(self._clock.monotonic())
            except Exception:
                log.exception("trunks.tick_failed")
            await asyncio.sleep(self.tick_s)


def _state(run: _Run) -> str:
    info = run.info
    if not info.enabled:
        return "disabled"
    if not info.address:
        return "unreachable"  # the name did not resolve
    if run.registration == "auth-failed":
        return "auth-failed"
    if run.health == "down":
        return "down"
    if run.registration in ("unreachable", "rejected", "registered"):
        return run.registration
    if run.health == "up":
        return "up"
    return run.registration or "unknown"


def _order(t: TrunkInfo) -> tuple[int, str]:
    return (t.priority, t.name)


def _fingerprint(t: TrunkInfo) -> tuple[object, ...]:
    """What, when changed, makes the trunk register and be checked from scratch."""
    return (
        t.kind,
        t.host,
        t.port,
        t.transport,
        t.address,
        t.proxy,
        t.username,
        t.auth_username,
        t.password,
        t.expires_s,
        t.from_user,
        t.from_domain,
        t.enabled,
    )


def _int(value: str | None) -> int | None:
    try:
        return int(value.strip()) if value is not None else None
    except ValueError:
        return None


def _granted_expiry(response: Response, request: Request | None, asked: int) -> int:
    """The expiry the registrar granted our contact (RFC 3261 §10.2.4): its ``expires`` parameter in the
    200's Contact list, else the Expires header, else what we asked for."""
    ours = request.contact[0].uri if request is not None and request.contact else None
    try:
        contacts = response.contact
    except SipParseError:
        contacts = []
    for c in contacts:
        if ours is not None and c.uri.user == ours.user and c.uri.host == ours.host:
            value = _int(c.parameters.get("expires"))
            if value is not None:
                return value
    value = _int(response.headers.get("Expires"))
    return value if value is not None else asked


async def resolve(host: str, port: int, transport: str) -> str:
    """``host`` as an IP address (an address literal as it is); empty when it does not resolve in time."""
    bare = host.strip("[]")
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            infos = await asyncio.get_running_loop().getaddrinfo(bare, port, type=kind)
    except (OSError, TimeoutError):
        log.warning("trunk.unresolved", host=bare[:253])
        return ""
    for family, _, _, _, sockaddr in infos:
        if family == socket.AF_INET:
            return str(sockaddr[0])
    return str(infos[0][4][0]) if infos else ""
