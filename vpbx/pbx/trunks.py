"""SIP trunks («Транки»): a domain's carriers, by registration or by source address (telephony.md §3.2).

The service checks and stores what the trunk monitor (``vpbx.pbx.trunkmon``) and the B2BUA need; the
password is sealed with the secret box like the users' SIP passwords and never shown back. Every function
takes the tenant first; another tenant's trunk is simply not found.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.crypto import SecretBox
from vpbx.errors import NotFound
from vpbx.pbx.validation import N_, Check
from vpbx.store.models import Domain, Trunk

KINDS = ("registration", "ip")
TRANSPORTS = ("udp", "tcp")
CALLER_ID_MODES = ("domain", "user", "fixed")
NUMBER_FORMATS = ("e164", "plain", "national")  # +74951234567, 74951234567, 84951234567
MAX_NETWORKS = 20
MIN_PREFIX = {4: 8, 6: 16}  # wider networks than these are a typo, not a carrier
MAX_PASSWORD = 128
HOST_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
# the user part of a SIP URI, restricted to what carriers hand out (RFC 3261 §25.1 allows more)
SIP_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+\-]{0,63}")


@dataclass(kw_only=True)
class TrunkInput:
    """A trunk as typed in the cabinet; ``_validate`` normalises it in place."""

    name: str
    kind: str = "registration"
    host: str = ""
    port: str | int = 5060
    transport: str = "udp"
    outbound_proxy: str = ""
    username: str = ""
    auth_username: str = ""
    password: str = ""  # empty: keep the stored one (update)
    expires_s: str | int = 3600
    from_user: str = ""
    from_domain: str = ""
    caller_id_mode: str = "domain"
    caller_id_number: str = ""
    number_format: str = "e164"
    max_calls: str | int = 10
    priority: str | int = 10
    enabled: bool = True
    allowed_networks: list[str] | None = None


def is_host(value: str) -> bool:
    """A DNS name or an IP address literal (IPv6 with or without brackets)."""
    try:
        ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return bool(HOST_RE.fullmatch(value)) and not value.replace(".", "").isdigit()
    return True


def split_hostport(value: str, default_port: int = 5060) -> tuple[str, int] | None:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port); None when it is neither."""
    value = value.strip()
    if value.startswith("sip:"):
        value = value[4:]
    host, port = value, default_port
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                return None
            port = int(rest[1:])
    elif value.count(":") == 1:
        host, _, p = value.partition(":")
        if not p.isdigit():
            return None
        port = int(p)
    if not host or not is_host(host) or not 1 <= port <= 65535:
        return None
    return host, port


def parse_networks(lines: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Stored allowed networks (already checked) as network objects."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in lines:
        try:
            out.append(ipaddress.ip_network(line.strip(), strict=False))
        except ValueError:
            continue
    return out


def networks_of(t: Trunk) -> list[str]:
    return [n for n in t.allowed_networks.splitlines() if n.strip()]


async def _validate(s: AsyncSession, domain_id: uuid.UUID, d: TrunkInput, current: Trunk | None) -> Check:
    c = Check()
    d.name = c.text("name", d.name, max_len=64)
    kind = c.choice("kind", d.kind, KINDS)
    d.host = c.text("host", d.host, max_len=253).lower().strip("[]")
    if d.host and not c.has("host") and not is_host(d.host):
        c.add("host", N_("Not a host name or IP address"))
    d.port = c.integer("port", d.port, lo=1, hi=65535)
    c.choice("transport", d.transport, TRANSPORTS)
    d.outbound_proxy = c.text("outbound_proxy", d.outbound_proxy, max_len=260, required=False).lower()
    if d.outbound_proxy and not c.has("outbound_proxy"):
        hp = split_hostport(d.outbound_proxy)
        if hp is None:
            c.add("outbound_proxy", N_("A host name or IP address, with an optional :port"))
        else:
            host = f"[{hp[0]}]" if ":" in hp[0] else hp[0]
            d.outbound_proxy = f"{host}:{hp[1]}"
    for name in ("username", "auth_username", "from_user"):
        value = c.text(name, getattr(d, name), max_len=64, required=False)
        setattr(d, name, value)
        if value and not c.has(name) and not SIP_USER_RE.fullmatch(value):
            c.add(name, N_("Latin letters, digits, dot, dash, plus and underscore"))
    d.from_domain = c.text("from_domain", d.from_domain, max_len=253, required=False).lower()
    if d.from_domain and not c.has("from_domain") and not is_host(d.from_domain):
        c.add("from_domain", N_("Not a host name or IP address"))
    if d.password and (len(d.password) > MAX_PASSWORD or any(ord(ch) < 32 for ch in d.password)):
        c.add("password", N_("At most {max} characters, no control characters"), max=MAX_PASSWORD)
    if kind == "registration":
        if not d.username and not c.has("username"):
            c.add("username", N_("A registration trunk needs the account's username"))
        if not d.password and (current is None or not current.password_enc):
            c.add("password", N_("A registration trunk needs the account's password"))
    d.expires_s = c.integer("expires_s", d.expires_s, lo=60, hi=86400)
    mode = c.choice("caller_id_mode", d.caller_id_mode, CALLER_ID_MODES)
    fixed = c.number("caller_id_number", d.caller_id_number, required=mode == "fixed")
    d.caller_id_number = fixed or ""
    c.choice("number_format", d.number_format, NUMBER_FORMATS)
    d.max_calls = c.integer("max_calls", d.max_calls, lo=1, hi=1000)
    d.priority = c.integer("priority", d.priority, lo=1, hi=1000)
    nets: list[str] = []
    for raw in d.allowed_networks or []:
        try:
            net = ipaddress.ip_network(raw.strip(), strict=False)
        except ValueError:
            c.add("allowed_networks", N_("Not an IP address or network: {value}"), value=raw[:45])
            continue
        if net.prefixlen < MIN_PREFIX[net.version]:
            c.add("allowed_networks", N_("Too wide a network: {value}"), value=str(net))
        elif str(net) not in nets:
            nets.append(str(net))
    if len(nets) > MAX_NETWORKS:
        c.add("allowed_networks", N_("At most {max} networks"), max=MAX_NETWORKS)
    if kind == "ip" and not nets and not c.has("allowed_networks"):
        c.add("allowed_networks", N_("An IP trunk needs the carrier's addresses"))
    d.allowed_networks = nets
    if not c.has("name"):
        taken = await s.scalar(select(Trunk.id).where(Trunk.domain_id == domain_id, Trunk.name == d.name))
        if taken is not None and (current is None or taken != current.id):
            c.add("name", N_("A trunk with this name already exists"))
    return c


def _apply(t: Trunk, d: TrunkInput, box: SecretBox) -> None:
    t.name, t.kind, t.host, t.port, t.transport = d.name, d.kind, d.host, int(d.port), d.transport
    t.outbound_proxy = d.outbound_proxy or None
    t.username, t.auth_username = d.username, d.auth_username
    if d.password:
        t.password_enc = box.seal(d.password)
    t.expires_s = int(d.expires_s)
    t.from_user, t.from_domain = d.from_user, d.from_domain
    t.caller_id_mode, t.caller_id_number = d.caller_id_mode, d.caller_id_number or None
    t.number_format = d.number_format
    t.max_calls, t.priority, t.enabled = int(d.max_calls), int(d.priority), d.enabled
    t.allowed_networks = "\n".join(d.allowed_networks or [])


async def create_trunk(s: AsyncSession, domain_id: uuid.UUID, data: TrunkInput, *, box: SecretBox) -> Trunk:
    if await s.get(Domain, domain_id) is None:
        raise NotFound("domain", domain_id)
    c = await _validate(s, domain_id, data, None)
    c.done()
    t = Trunk(domain_id=domain_id, password_enc="")
    _apply(t, data, box)
    s.add(t)
    await s.flush()
    return t


async def update_trunk(
    s: AsyncSession, domain_id: uuid.UUID, trunk_id: uuid.UUID, data: TrunkInput, *, box: SecretBox
) -> Trunk:
    t = await get_trunk(s, domain_id, trunk_id)
    c = await _validate(s, domain_id, data, t)
    c.done()
    _apply(t, data, box)
    await s.flush()
    return t


async def delete_trunk(s: AsyncSession, domain_id: uuid.UUID, trunk_id: uuid.UUID) -> None:
    t = await get_trunk(s, domain_id, trunk_id)
    await s.delete(t)
    await s.flush()


async def get_trunk(s: AsyncSession, domain_id: uuid.UUID, trunk_id: uuid.UUID) -> Trunk:
    t: Trunk | None = await s.scalar(select(Trunk).where(Trunk.domain_id == domain_id, Trunk.id == trunk_id))
    if t is None:
        raise NotFound("trunk", trunk_id)
    return t


async def list_trunks(s: AsyncSession, domain_id: uuid.UUID) -> list[Trunk]:
    """The domain's trunks in failover order: priority, then name."""
    stmt = select(Trunk).where(Trunk.domain_id == domain_id).order_by(Trunk.priority, Trunk.name)
    return list((await s.scalars(stmt)).all())


def trunk_password(t: Trunk, box: SecretBox) -> str:
    return box.open(t.password_enc) if t.password_enc else ""
