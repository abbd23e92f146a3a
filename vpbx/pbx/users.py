"""Users («абоненты»): cabinet account, extension (PIN), SIP credentials, rights and mobile forwarding."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.crypto import SecretBox, hash_password, random_password, verify_password
from vpbx.errors import NotFound, ValidationFailed
from vpbx.pbx.actions import is_target
from vpbx.pbx.validation import N_, Check
from vpbx.sip.digest import ha1
from vpbx.store.models import CallGroup, CallGroupMember, Domain, User, UserContactNumber, WebSession
from vpbx.store.paging import Page, like_pattern, paginate

ROLES = ("admin", "user")
MAX_CONTACT_NUMBERS = 5
MIN_PASSWORD = 8


@dataclass(kw_only=True)
class UserInput:
    name: str
    display_name: str
    pin: str
    sip_login: str = ""
    sip_password: str = ""  # empty: keep (update) or generate (create)
    email: str = ""
    role: str = "user"
    web_password: str = ""  # empty: keep (update) or no cabinet access (create)
    record_calls: bool = False
    allow_international: bool = False
    allow_long_distance: bool = True
    allow_mobile: bool = True
    mobile_delay_s: str | int = 15
    contact_numbers: list[str] = field(default_factory=list)


async def pin_owner(s: AsyncSession, domain_id: uuid.UUID, pin: str) -> tuple[str, uuid.UUID] | None:
    """Who has this PIN in the domain: users and groups share one numbering plan."""
    uid = await s.scalar(select(User.id).where(User.domain_id == domain_id, User.pin == pin))
    if uid is not None:
        return ("user", uid)
    gid = await s.scalar(select(CallGroup.id).where(CallGroup.domain_id == domain_id, CallGroup.pin == pin))
    if gid is not None:
        return ("group", gid)
    return None


async def _validate(s: AsyncSession, domain_id: uuid.UUID, d: UserInput, current: User | None) -> Check:
    c = Check()
    d.name = c.login("name", d.name)
    d.display_name = c.text("display_name", d.display_name, max_len=128)
    d.pin = c.pin("pin", d.pin)
    d.sip_login = c.login("sip_login", d.sip_login or d.name)
    email = c.email("email", d.email)
    d.email = email or ""
    c.choice("role", d.role, ROLES)
    if d.sip_password and not MIN_PASSWORD <= len(d.sip_password) <= 64:
        c.add("sip_password", N_("From {lo} to {hi} characters"), lo=MIN_PASSWORD, hi=64)
    if d.web_password and not MIN_PASSWORD <= len(d.web_password) <= 128:
        c.add("web_password", N_("From {lo} to {hi} characters"), lo=MIN_PASSWORD, hi=128)
    d.mobile_delay_s = c.integer("mobile_delay_s", d.mobile_delay_s, lo=0, hi=300)
    d.contact_numbers = c.numbers("contact_numbers", d.contact_numbers, max_count=MAX_CONTACT_NUMBERS)
    own = current.id if current else None
    if not c.has("pin"):
        owner = await pin_owner(s, domain_id, d.pin)
        if owner is not None and owner[1] != own:
            c.add("pin", N_("This extension is taken by a user or a group"))
    for fld, col, value in (("name", User.name, d.name), ("sip_login", User.sip_login, d.sip_login)):
        if not c.has(fld):
            taken = await s.scalar(select(User.id).where(User.domain_id == domain_id, col == value))
            if taken is not None and taken != own:
                c.add(fld, N_("Already used by another user"))
    if current is not None and current.role == "admin" and d.role != "admin":
        admins = await s.scalar(
            select(User.id)
            .where(User.domain_id == domain_id, User.role == "admin", User.id != current.id)
            .limit(1)
        )
        if admins is None:
            c.add("role", N_("The domain must keep at least one administrator"))
    return c


async def validate_user(s: AsyncSession, domain_id: uuid.UUID, data: UserInput) -> Check:
    """Check a new user's fields (normalising ``data``) without saving anything."""
    return await _validate(s, domain_id, data, None)


async def rekey(s: AsyncSession, domain_id: uuid.UUID, realm: str, box: SecretBox) -> None:
    """The SIP realm is the domain name: after a rename every user's HA1 digests are derived anew."""
    for u in await all_users(s, domain_id):
        password = box.open(u.sip_password_enc)
        u.ha1_md5 = ha1(u.sip_login, realm, password, "MD5")
        u.ha1_sha256 = ha1(u.sip_login, realm, password, "SHA-256")
    await s.flush()


def _apply(u: User, d: UserInput, realm: str, box: SecretBox) -> None:
    u.name, u.display_name, u.pin, u.sip_login = d.name, d.display_name, d.pin, d.sip_login
    u.email = d.email or None
    u.role = d.role
    u.record_calls = d.record_calls
    u.allow_international, u.allow_long_distance, u.allow_mobile = (
        d.allow_international,
        d.allow_long_distance,
        d.allow_mobile,
    )
    u.mobile_delay_s = int(d.mobile_delay_s)
    if d.sip_password:
        u.sip_password_enc = box.seal(d.sip_password)
    password = box.open(u.sip_password_enc)
    u.ha1_md5 = ha1(u.sip_login, realm, password, "MD5")
    u.ha1_sha256 = ha1(u.sip_login, realm, password, "SHA-256")
    if d.web_password:
        u.web_password_hash = hash_password(d.web_password)
    u.contact_numbers = [UserContactNumber(position=i, number=n) for i, n in enumerate(d.contact_numbers)]


async def create_user(s: AsyncSession, domain_id: uuid.UUID, data: UserInput, *, box: SecretBox) -> User:
    domain = await s.get(Domain, domain_id)
    if domain is None:
        raise NotFound("domain", domain_id)
    c = await _validate(s, domain_id, data, None)
    c.done()
    data.sip_password = data.sip_password or random_password()
    u = User(domain_id=domain_id, sip_password_enc="")
    _apply(u, data, domain.name, box)
    s.add(u)
    await s.flush()
    return u


async def update_user(
    s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID, data: UserInput, *, box: SecretBox
) -> User:
    u = await get_user(s, domain_id, user_id)
    domain = await s.get(Domain, domain_id)
    assert domain is not None
    c = await _validate(s, domain_id, data, u)
    c.done()
    _apply(u, data, domain.name, box)
    if data.web_password:
        await end_sessions(s, u.id)
    await s.flush()
    return u


async def delete_user(s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID) -> None:
    u = await get_user(s, domain_id, user_id)
    if u.role == "admin":
        others = await s.scalar(
            select(User.id).where(User.domain_id == domain_id, User.role == "admin", User.id != u.id).limit(1)
        )
        if others is None:
            raise ValidationFailed.one("role", N_("The domain must keep at least one administrator"))
    if await is_target(s, domain_id, "user", u.id):
        raise ValidationFailed.one(
            "id", N_("The user is a target of a routing rule or a group; change it first")
        )
    await s.delete(u)
    await s.flush()


async def get_user(s: AsyncSession, domain_id: uuid.UUID, user_id: uuid.UUID) -> User:
    u: User | None = await s.scalar(select(User).where(User.domain_id == domain_id, User.id == user_id))
    if u is None:
        raise NotFound("user", user_id)
    return u


async def user_by_pin(s: AsyncSession, domain_id: uuid.UUID, pin: str) -> User | None:
    result: User | None = await s.scalar(select(User).where(User.domain_id == domain_id, User.pin == pin))
    return result


async def list_users(s: AsyncSession, domain_id: uuid.UUID, q: str = "", page: int = 1) -> Page[User]:
    stmt = select(User).where(User.domain_id == domain_id).order_by(User.pin)
    if q.strip():
        pat = like_pattern(q.strip())
        stmt = stmt.where(
            or_(
                User.name.ilike(pat, escape="\\"),
                User.display_name.ilike(pat, escape="\\"),
                User.pin.ilike(pat, escape="\\"),
                User.email.ilike(pat, escape="\\"),
            )
        )
    return await paginate(s, stmt, page)


async def all_users(s: AsyncSession, domain_id: uuid.UUID) -> list[User]:
    return list((await s.scalars(select(User).where(User.domain_id == domain_id).order_by(User.pin))).all())


async def group_ids_of(s: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    return list(await s.scalars(select(CallGroupMember.group_id).where(CallGroupMember.user_id == user_id)))


async def change_own_password(
    s: AsyncSession,
    domain_id: uuid.UUID,
    user_id: uuid.UUID,
    current: str,
    new: str,
    repeat: str,
    *,
    keep_session: uuid.UUID | None = None,
) -> None:
    """A user changes their cabinet password (current one required, new one typed twice); their other
    sessions end."""
    u = await get_user(s, domain_id, user_id)
    c = Check()
    if not verify_password(u.web_password_hash, current[:256]):
        c.add("current_password", N_("Wrong password"))
    if not MIN_PASSWORD <= len(new) <= 128:
        c.add("new_password", N_("From {lo} to {hi} characters"), lo=MIN_PASSWORD, hi=128)
    elif new != repeat:
        c.add("repeat_password", N_("The passwords do not match"))
    c.done()
    u.web_password_hash = hash_password(new)
    await end_sessions(s, u.id, keep=keep_session)


async def end_sessions(s: AsyncSession, user_id: uuid.UUID, *, keep: uuid.UUID | None = None) -> None:
    """Log the user out everywhere (but ``keep``): after a password change old sessions must not live on."""
    stmt = delete(WebSession).where(WebSession.user_id == user_id)
    if keep is not None:
        stmt = stmt.where(WebSession.id != keep)
    await s.execute(stmt)


def sip_password(u: User, box: SecretBox) -> str:
    return box.open(u.sip_password_enc)
