"""Registrar: RFC 3261 §10.3 rules with an explicit ``now``, the memory location store, SQL credentials."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.helpers import Tenant
from vpbx.app import Core
from vpbx.errors import LocationFull
from vpbx.pbx import users
from vpbx.pbx.directory import SipDirectory
from vpbx.pbx.registrar import (
    Binding,
    LocationStore,
    MemoryLocationStore,
    RegisterPlan,
    RegistrarPolicy,
    aor_for,
    is_nated,
    plan_register,
    register,
)
from vpbx.sip.auth import AuthOk, DigestAuth, StoredCredentials, digest_response
from vpbx.sip.contact import ContactSpec, RegisterRequest
from vpbx.sip.digest import ha1
from vpbx.sip.flow import Destination
from vpbx.store.models import DomainId, User

DOMAIN = "acme.vpbx.test"
T1 = DomainId(uuid.UUID(int=1))
T2 = DomainId(uuid.UUID(int=2))
AOR = f"sip:101@{DOMAIN}"
SRC = Destination("udp", "198.51.100.7", 40000)
NOW = 5000.0
ALICE = StoredCredentials(username="alice", ha1_md5="0" * 32, ha1_sha256="0" * 64, extension="101")


def c(
    uri: str, *, expires: str | None = None, q: str | None = None, instance: str | None = None
) -> ContactSpec:
    rest = uri.split("@")[-1].removeprefix("sip:")
    host = rest[1 : rest.index("]")] if rest.startswith("[") else re.split("[:;]", rest)[0]
    return ContactSpec(uri=uri, host=host, expires=expires, q=q, instance=instance)


def reg(
    *contacts: ContactSpec,
    expires: int | None = None,
    call_id: str = "call-1",
    cseq: int = 1,
    star: bool = False,
    to_user: str | None = "alice",
    require: tuple[str, ...] = (),
    path: tuple[str, ...] = (),
    source: Destination = SRC,
    user_agent: str | None = "Yealink T46U",
) -> RegisterRequest:
    return RegisterRequest(
        to_user=to_user,
        to_host=DOMAIN,
        contacts=contacts,
        star=star,
        expires=expires,
        call_id=call_id,
        cseq=cseq,
        require=require,
        path=path,
        user_agent=user_agent,
        source=source,
    )


PHONE = "sip:alice@198.51.100.7:40000"
PHONE2 = "sip:alice@198.51.100.8:5060"


def plan(
    req: RegisterRequest, existing: list[Binding] | None = None, now: float = NOW, **kw: object
) -> RegisterPlan:
    policy = RegistrarPolicy(**kw)  # type: ignore[arg-type]
    return plan_register(req, user=ALICE, domain=DOMAIN, existing=existing or [], now=now, policy=policy)


def contacts_of(p: RegisterPlan) -> list[str]:
    return [v for k, v in p.reply.headers if k == "Contact"]


def header(p: RegisterPlan, name: str) -> str | None:
    return next((v for k, v in p.reply.headers if k == name), None)


# --- AoR and authorization ----------------------------------------------------------------------------------


def test_aor_is_the_extension_at_the_tenant_domain() -> None:
    assert aor_for("101", "ACME.vpbx.test") == AOR
    p = plan(reg(c(PHONE)))
    assert p.aor == AOR
    assert p.reply.code == 200


@pytest.mark.parametrize("to_user", ["alice", "101"])
def test_to_may_name_the_login_or_the_extension(to_user: str) -> None:
    assert plan(reg(c(PHONE), to_user=to_user)).reply.code == 200


@pytest.mark.parametrize("to_user", ["bob", "102", None, ""])
def test_registering_someone_else_is_forbidden(to_user: str | None) -> None:
    p = plan(reg(c(PHONE), to_user=to_user))
    assert p.reply.code == 403
    assert p.changed is False


def test_unsupported_require_gets_420() -> None:
    p = plan(reg(c(PHONE), require=("path", "gruu", "foo")))
    assert (p.reply.code, p.reply.reason) == (420, "Bad Extension")
    assert header(p, "Unsupported") == "gruu, foo"
    assert plan(reg(c(PHONE), require=("path",))).reply.code == 200


# --- expiry -------------------------------------------------------------------------------------------------


def test_default_expiry_is_3600() -> None:
    p = plan(reg(c(PHONE)))
    (b,) = p.bindings
    assert b.expires_at == NOW + 3600
    assert contacts_of(p) == [f"<{PHONE}>;expires=3600"]


def test_expires_header_applies_without_contact_param() -> None:
    (b,) = plan(reg(c(PHONE), expires=120)).bindings
    assert b.expires_at == NOW + 120


def test_contact_param_wins_over_expires_header() -> None:
    p = plan(reg(c(PHONE, expires="300"), c(PHONE2), expires=120))
    assert [b.expires_at - NOW for b in p.bindings] == [300, 120]


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", ""])
def test_malformed_contact_expires_counts_as_absent(value: str) -> None:
    (b,) = plan(reg(c(PHONE, expires=value), expires=600)).bindings
    assert b.expires_at == NOW + 600


@pytest.mark.parametrize(("asked", "code"), [(1, 423), (59, 423), (60, 200)])
def test_below_min_expires_gets_423(asked: int, code: int) -> None:
    p = plan(reg(c(PHONE, expires=str(asked))))
    assert p.reply.code == code
    if code == 423:
        assert p.reply.reason == "Interval Too Brief"
        assert header(p, "Min-Expires") == "60"
        assert p.changed is False
        assert p.bindings == ()


def test_one_short_contact_fails_the_whole_request() -> None:
    p = plan(reg(c(PHONE, expires="3600"), c(PHONE2, expires="30")))
    assert p.reply.code == 423
    assert p.changed is False


@pytest.mark.parametrize("asked", ["3601", "86400", "99999999999999"])
def test_above_max_expires_is_clamped(asked: str) -> None:
    p = plan(reg(c(PHONE, expires=asked)))
    assert p.reply.code == 200
    assert p.bindings[0].expires_at == NOW + 3600
    assert contacts_of(p) == [f"<{PHONE}>;expires=3600"]


def test_policy_bounds_are_configurable() -> None:
    p = plan(reg(c(PHONE, expires="100")), min_expires_s=120, max_expires_s=600)
    assert header(p, "Min-Expires") == "120"
    p = plan(reg(c(PHONE, expires="1000")), min_expires_s=120, max_expires_s=600)
    assert p.bindings[0].expires_at == NOW + 600


# --- Contact: * ---------------------------------------------------------------------------------------------


def existing_bindings(
    *uris: str, call_id: str = "call-1", cseq: int = 1, at: float = NOW - 100
) -> list[Binding]:
    return [
        Binding(
            contact=u,
            flow=SRC,
            call_id=call_id,
            cseq=cseq,
            expires_at=at + 3600,
            updated_at=at + i,
        )
        for i, u in enumerate(uris)
    ]


def test_star_with_expires_zero_clears_the_aor() -> None:
    old = existing_bindings(PHONE, PHONE2)
    p = plan(reg(star=True, expires=0, cseq=2), old)
    assert p.reply.code == 200
    assert p.bindings == ()
    assert p.removed == tuple(old)
    assert p.changed is True
    assert contacts_of(p) == []


def test_star_from_another_call_id_clears_too() -> None:
    old = existing_bindings(PHONE, call_id="other", cseq=99)
    assert plan(reg(star=True, expires=0, cseq=1), old).bindings == ()


@pytest.mark.parametrize(
    "req",
    [
        reg(c(PHONE), star=True, expires=0),
        reg(star=True),
        reg(star=True, expires=60),
    ],
    ids=["beside-contacts", "no-expires", "non-zero-expires"],
)
def test_star_misused_gets_400(req: RegisterRequest) -> None:
    old = existing_bindings(PHONE)
    p = plan(req, old)
    assert p.reply.code == 400
    assert p.changed is False
    assert p.bindings == tuple(old)


def test_star_with_old_cseq_gets_500() -> None:
    old = existing_bindings(PHONE, cseq=5)
    p = plan(reg(star=True, expires=0, cseq=5), old)
    assert p.reply.code == 500
    assert p.changed is False


# --- step 7: Call-ID and CSeq -------------------------------------------------------------------------------


@pytest.mark.parametrize("cseq", [4, 5])
def test_same_call_id_with_lower_or_equal_cseq_gets_500(cseq: int) -> None:
    old = existing_bindings(PHONE, cseq=5)
    p = plan(reg(c(PHONE, expires="600"), cseq=cseq), old)
    assert p.reply.code == 500
    assert p.changed is False
    assert p.bindings == tuple(old)


def test_same_call_id_with_higher_cseq_refreshes() -> None:
    old = existing_bindings(PHONE, cseq=5)
    p = plan(reg(c(PHONE, expires="600"), cseq=6), old)
    assert p.reply.code == 200
    (b,) = p.bindings
    assert (b.cseq, b.expires_at, b.updated_at) == (6, NOW + 600, NOW)


def test_new_call_id_replaces_whatever_its_cseq() -> None:
    old = existing_bindings(PHONE, call_id="before-reboot", cseq=900)
    (b,) = plan(reg(c(PHONE), call_id="after-reboot", cseq=1), old).bindings
    assert (b.call_id, b.cseq) == ("after-reboot", 1)


def test_one_out_of_order_contact_aborts_every_change() -> None:
    old = existing_bindings(PHONE, cseq=5)
    p = plan(reg(c(PHONE2), c(PHONE), cseq=5), old)
    assert p.reply.code == 500
    assert p.bindings == tuple(old)


def test_expires_zero_removes_one_contact() -> None:
    old = existing_bindings(PHONE, PHONE2)
    p = plan(reg(c(PHONE, expires="0"), cseq=2), old)
    assert p.reply.code == 200
    assert [b.contact for b in p.bindings] == [PHONE2]
    assert p.removed == (old[0],)
    assert contacts_of(p) == [f"<{PHONE2}>;expires=3500"]


def test_expires_zero_for_an_unknown_contact_changes_nothing_else() -> None:
    old = existing_bindings(PHONE)
    p = plan(reg(c(PHONE2, expires="0"), cseq=2), old)
    assert p.reply.code == 200
    assert p.bindings == tuple(old)
    assert p.removed == ()


def test_contacts_match_by_uri_equality_not_spelling() -> None:
    old = existing_bindings("sip:alice@Phone.Example.COM:5060;transport=udp")
    p = plan(reg(c("sip:alice@phone.example.com:5060"), call_id="x"), old)
    assert len(p.bindings) == 1
    assert p.bindings[0].contact == "sip:alice@phone.example.com:5060"
    # The user part is case-sensitive (RFC 3261 §19.1.4): another binding.
    p = plan(reg(c("sip:ALICE@phone.example.com:5060"), call_id="x"), old)
    assert len(p.bindings) == 2


def test_same_instance_replaces_the_old_contact() -> None:
    inst = "<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"
    first = plan(reg(c(PHONE, instance=inst))).bindings
    p = plan(reg(c(PHONE2, instance=inst), call_id="new", cseq=1), list(first), now=NOW + 10)
    assert [b.contact for b in p.bindings] == [PHONE2]
    assert contacts_of(p) == [f'<{PHONE2}>;expires=3600;+sip.instance="{inst}"']


def test_a_contact_twice_in_one_request_is_one_binding() -> None:
    p = plan(reg(c(PHONE, expires="600"), c(PHONE, expires="900")))
    assert p.reply.code == 200
    assert [b.expires_at - NOW for b in p.bindings] == [900]


# --- max contacts -------------------------------------------------------------------------------------------


def test_sixth_contact_evicts_the_oldest() -> None:
    uris = [f"sip:alice@198.51.100.{i}:5060" for i in range(5)]
    old = existing_bindings(*uris)
    old[0], old[2] = old[2], old[0]  # storage order is not age: updated_at decides
    new = "sip:alice@198.51.100.99:5060"
    p = plan(reg(c(new), call_id="c9"), old)
    assert p.reply.code == 200
    assert len(p.bindings) == 5
    assert p.evicted == (old[2],)
    assert old[2].contact == uris[0]
    assert uris[0] not in [b.contact for b in p.bindings]
    assert new in [b.contact for b in p.bindings]


def test_refreshing_a_contact_does_not_evict() -> None:
    uris = [f"sip:alice@198.51.100.{i}:5060" for i in range(5)]
    old = existing_bindings(*uris)
    p = plan(reg(c(uris[0]), cseq=2), old)
    assert len(p.bindings) == 5
    assert p.evicted == ()


def test_more_contacts_in_one_request_than_allowed_keeps_the_last() -> None:
    p = plan(reg(*(c(f"sip:alice@198.51.100.{i}:5060") for i in range(7))))
    assert [b.contact for b in p.bindings] == [f"sip:alice@198.51.100.{i}:5060" for i in range(2, 7)]
    assert p.evicted == ()


def test_full_aor_can_refuse_instead() -> None:
    old = existing_bindings(*(f"sip:alice@198.51.100.{i}:5060" for i in range(2)))
    p = plan(reg(c(PHONE), call_id="z"), old, max_contacts=2, reject_when_full=True)
    assert p.reply.code == 403
    assert p.bindings == tuple(old)


# --- the 200 ------------------------------------------------------------------------------------------------


def test_200_lists_every_binding_with_its_remaining_expiry() -> None:
    old = existing_bindings(PHONE, at=NOW - 1000.4)  # 2599.6 s left
    p = plan(reg(c(PHONE2, expires="1800", q="0.5"), call_id="c2"), old)
    assert contacts_of(p) == [f"<{PHONE}>;expires=2600", f"<{PHONE2}>;expires=1800;q=0.5"]


def test_query_lists_bindings_and_changes_nothing() -> None:
    old = existing_bindings(PHONE, PHONE2)
    p = plan(reg(), old, now=NOW + 100)
    assert p.reply.code == 200
    assert p.changed is False
    assert contacts_of(p) == [f"<{PHONE}>;expires=3400", f"<{PHONE2}>;expires=3400"]


def test_expired_bindings_are_dropped_and_reported() -> None:
    old = existing_bindings(PHONE, at=NOW - 4000)
    p = plan(reg(c(PHONE2), call_id="c2"), old)
    assert [b.contact for b in p.bindings] == [PHONE2]
    assert p.expired == (old[0],)
    assert plan(reg(), old).bindings == ()


@pytest.mark.parametrize("q", ["2", "0.5555", "abc", "-1", "1.1"])
def test_bad_q_gets_400(q: str) -> None:
    p = plan(reg(c(PHONE, q=q)))
    assert p.reply.code == 400


def test_binding_keeps_flow_path_agent_and_q() -> None:
    path = ("<sip:edge.example.net;lr>",)
    tcp = Destination("tcp", "198.51.100.7", 51234, conn_id=17)
    p = plan(reg(c(PHONE, q="1.0"), path=path, source=tcp))
    (b,) = p.bindings
    assert (b.flow, b.path, b.q, b.user_agent, b.call_id, b.cseq) == (
        tcp,
        path,
        1.0,
        "Yealink T46U",
        "call-1",
        1,
    )
    assert header(p, "Path") == path[0]


@pytest.mark.parametrize(
    ("contact_host", "source_host", "nated"),
    [
        ("203.0.113.5", "203.0.113.5", False),
        ("192.168.1.20", "203.0.113.5", True),
        ("10.0.0.5", "10.0.0.5", True),  # private: behind something whatever the source says
        ("phone.example.com", "203.0.113.5", True),
        ("[2001:db8::1]", "2001:db8::1", False),
        ("2001:DB8::1", "2001:db8:0::1", False),
    ],
)
def test_nated_flag(contact_host: str, source_host: str, nated: bool) -> None:
    assert is_nated(contact_host, Destination("udp", source_host, 5060)) is nated


def test_contact_behind_nat_is_marked() -> None:
    (b,) = plan(reg(c("sip:alice@192.168.1.20:5060"))).bindings
    assert b.nated is True
    (b,) = plan(reg(c("sip:alice@198.51.100.7:40000"))).bindings
    assert b.nated is False


# --- the store ----------------------------------------------------------------------------------------------


async def test_register_saves_and_lookup_finds() -> None:
    store: LocationStore = MemoryLocationStore()
    p = await register(store, T1, reg(c(PHONE)), user=ALICE, domain=DOMAIN, now=NOW)
    assert p.reply.code == 200
    assert await store.lookup(T1, AOR) == list(p.bindings)
    assert await store.lookup(T2, AOR) == []


async def test_refused_register_leaves_the_store_alone() -> None:
    store = MemoryLocationStore()
    await register(store, T1, reg(c(PHONE), cseq=5), user=ALICE, domain=DOMAIN, now=NOW)
    before = await store.lookup(T1, AOR)
    p = await register(store, T1, reg(c(PHONE2), c(PHONE), cseq=4), user=ALICE, domain=DOMAIN, now=NOW + 1)
    assert p.reply.code == 500
    assert await store.lookup(T1, AOR) == before


async def test_unregister_all_empties_the_store() -> None:
    store = MemoryLocationStore()
    await register(store, T1, reg(c(PHONE), c(PHONE2)), user=ALICE, domain=DOMAIN, now=NOW)
    assert len(store) == 2
    await register(store, T1, reg(star=True, expires=0, cseq=2), user=ALICE, domain=DOMAIN, now=NOW + 1)
    assert await store.lookup(T1, AOR) == []
    assert len(store) == 0


async def test_expire_returns_bindings_whose_time_is_up() -> None:
    store = MemoryLocationStore()
    await register(
        store, T1, reg(c(PHONE, expires="60"), c(PHONE2, expires="120")), user=ALICE, domain=DOMAIN, now=NOW
    )
    await register(store, T2, reg(c(PHONE, expires="90")), user=ALICE, domain=DOMAIN, now=NOW)
    assert store.next_expiry() == NOW + 60
    assert await store.expire(NOW + 59) == []
    gone = await store.expire(NOW + 90)
    assert [(e.tenant, e.aor, e.binding.contact) for e in gone] == [(T1, AOR, PHONE), (T2, AOR, PHONE)]
    assert [b.contact for b in await store.lookup(T1, AOR)] == [PHONE2]
    assert len(store) == 1


async def test_refreshed_binding_does_not_expire_at_its_old_time() -> None:
    store = MemoryLocationStore()
    await register(store, T1, reg(c(PHONE, expires="60")), user=ALICE, domain=DOMAIN, now=NOW)
    await register(store, T1, reg(c(PHONE, expires="60"), cseq=2), user=ALICE, domain=DOMAIN, now=NOW + 30)
    assert await store.expire(NOW + 61) == []
    (gone,) = await store.expire(NOW + 91)
    assert gone.binding.cseq == 2


async def test_unregistered_binding_never_expires_later() -> None:
    store = MemoryLocationStore()
    await register(store, T1, reg(c(PHONE, expires="60")), user=ALICE, domain=DOMAIN, now=NOW)
    await register(store, T1, reg(c(PHONE, expires="0"), cseq=2), user=ALICE, domain=DOMAIN, now=NOW + 1)
    assert await store.expire(NOW + 1000) == []


async def test_expiry_heap_stays_bounded_under_refreshes() -> None:
    store = MemoryLocationStore()
    for i in range(5000):
        await register(store, T1, reg(c(PHONE), cseq=i + 1), user=ALICE, domain=DOMAIN, now=NOW + i)
    assert len(store._heap) <= 2 * len(store) + 1024 + 1


async def test_full_store_answers_503_and_changes_nothing() -> None:
    store = MemoryLocationStore(max_bindings=2)
    await register(store, T1, reg(c(PHONE), c(PHONE2)), user=ALICE, domain=DOMAIN, now=NOW)
    p = await register(store, T2, reg(c(PHONE)), user=ALICE, domain=DOMAIN, now=NOW)
    assert p.reply.code == 503
    assert ("Retry-After", "300") in p.reply.headers
    assert p.changed is False
    assert await store.lookup(T2, AOR) == []
    # Refreshing what is there still works when full.
    assert (
        await register(store, T1, reg(c(PHONE), cseq=2), user=ALICE, domain=DOMAIN, now=NOW)
    ).reply.code == 200


async def test_store_save_and_remove() -> None:
    store = MemoryLocationStore(max_bindings=2)
    (a,) = plan(reg(c(PHONE))).bindings
    (b,) = plan(reg(c(PHONE2))).bindings
    assert await store.save(T1, AOR, a) == [a]
    assert await store.save(T1, AOR, b) == [a, b]
    newer = Binding(contact=PHONE, flow=SRC, call_id="n", cseq=1, expires_at=NOW + 10, updated_at=NOW)
    assert await store.save(T1, AOR, newer) == [b, newer]
    with pytest.raises(LocationFull):
        await store.save(T2, AOR, a)
    assert await store.remove(T1, AOR, PHONE2) == [b]
    assert await store.remove(T1, AOR, PHONE2) == []
    assert await store.remove(T1, AOR) == [newer]
    assert len(store) == 0


# --- credentials from the database --------------------------------------------------------------------------


async def test_directory_finds_users_by_realm_and_login(core: Core, t1: Tenant, t2: Tenant) -> None:
    async with core.sessions() as s:
        u1 = await users.create_user(
            s,
            t1.id,
            users.UserInput(name="alice", display_name="Alice", pin="101", sip_password="Alice-Sip-Pass-1"),
            box=core.box,
        )
        await s.commit()
    creds = SipDirectory(core.sessions, core.config)
    found = await creds.find(t1.name, "alice")
    assert found is not None
    assert (found.username, found.extension, found.user_id, found.tenant_id) == ("alice", "101", u1.id, t1.id)
    assert found.ha1_md5 == ha1("alice", t1.name, "Alice-Sip-Pass-1", "MD5")
    assert found.ha1_sha256 == ha1("alice", t1.name, "Alice-Sip-Pass-1", "SHA-256")
    # Tenant-scoped: the same login is unknown in another realm, and each tenant's "admin" is its own.
    assert await creds.find(t2.name, "alice") is None
    assert await creds.find(t1.name, "nobody") is None
    assert await creds.find("unknown.example", "alice") is None
    a1, a2 = await creds.find(t1.name, "admin"), await creds.find(t2.name, "admin")
    assert a1 is not None
    assert a2 is not None
    assert a1.tenant_id == t1.id
    assert a2.tenant_id == t2.id
    assert a1.user_id != a2.user_id


async def test_digest_against_the_database_end_to_end(core: Core, t1: Tenant) -> None:
    async with core.sessions() as s:
        u = (await users.all_users(s, t1.id))[0]
        assert isinstance(u, User)
        password = users.sip_password(u, core.box)
        login = u.sip_login
    auth = DigestAuth(b"server-key-0123456789abcdef")
    ch = auth.challenge("REGISTER", t1.name, NOW)
    nonce = ch.values[0].split('nonce="')[1].split('"')[0]
    response = digest_response(
        ha1=ha1(login, t1.name, password),
        nonce=nonce,
        nc="00000001",
        cnonce="abc",
        qop="auth",
        method="REGISTER",
        uri=f"sip:{t1.name}",
    )
    header = (
        f'Digest username="{login}", realm="{t1.name}", nonce="{nonce}", uri="sip:{t1.name}", '
        f'response="{response}", qop=auth, nc=00000001, cnonce="abc"'
    )
    out = await auth.authenticate(
        "REGISTER", [header], realm=t1.name, credentials=SipDirectory(core.sessions, core.config), now=NOW
    )
    assert isinstance(out, AuthOk)
    p = await register(
        MemoryLocationStore(),
        DomainId(t1.id),
        reg(c(PHONE), to_user=login),
        user=out.user,
        domain=t1.name,
        now=NOW,
    )
    assert p.reply.code == 200
    assert p.aor == f"sip:100@{t1.name}"


async def test_the_store_knows_which_addresses_phones_registered_from() -> None:
    store = MemoryLocationStore()
    other = Destination("udp", "198.51.100.9", 5062)
    first = Binding(contact=PHONE, flow=SRC, call_id="a", cseq=1, expires_at=NOW + 10, updated_at=NOW)
    second = Binding(
        contact=PHONE + ";x=1", flow=other, call_id="b", cseq=1, expires_at=NOW + 20, updated_at=NOW
    )
    await store.save(T1, AOR, first)
    await store.save(T1, AOR, second)
    assert await store.registered_from(SRC.host, SRC.port) and await store.registered_from(
        other.host, other.port
    )
    assert not await store.registered_from(SRC.host, SRC.port + 1)
    await store.remove(T1, AOR, PHONE)
    assert not await store.registered_from(SRC.host, SRC.port)
    await store.expire(NOW + 30)  # the second one runs out
    assert not await store.registered_from(other.host, other.port)
