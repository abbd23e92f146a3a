"""Digest authentication: RFC vectors, nonces, stale, replay, no enumeration, malformed credentials."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest
from sipmessage import AuthChallenge

from vpbx.logs import configure_logging
from vpbx.sip import auth as auth_mod
from vpbx.sip.auth import (
    NONCE_TTL_S,
    AuthFailure,
    AuthOk,
    Challenge,
    DigestAuth,
    NonceCounts,
    SecurityEvent,
    StoredCredentials,
    auth_header,
    digest_response,
    parse_credentials,
)
from vpbx.sip.digest import Algorithm, ha1

KEY = b"k" * 32
REALM = "acme.vpbx.test"
OTHER_REALM = "other.vpbx.test"
NOW = 1_760_000_000.0
PASSWORD = "Secret-Sip-1"
URI = "sip:acme.vpbx.test"


def account(username: str = "alice", realm: str = REALM, password: str = PASSWORD) -> StoredCredentials:
    return StoredCredentials(
        username=username,
        ha1_md5=ha1(username, realm, password, "MD5"),
        ha1_sha256=ha1(username, realm, password, "SHA-256"),
        extension="101",
    )


class FakeCredentials:
    def __init__(self, *users: tuple[str, StoredCredentials]) -> None:
        self.users = dict(users)
        self.lookups: list[tuple[str, str]] = []

    async def find(self, realm: str, username: str) -> StoredCredentials | None:
        self.lookups.append((realm, username))
        return self.users.get(f"{username}@{realm}")


def fixed_salt(n: int) -> bytes:
    return b"\x01" * n


def params_of(value: str) -> dict[str, str]:
    ch = AuthChallenge.parse(value)
    assert ch.scheme == "Digest"
    return dict(ch.parameters)


def answer(
    challenge: Challenge,
    *,
    username: str = "alice",
    password: str = PASSWORD,
    realm: str | None = None,
    method: str = "REGISTER",
    nc: int = 1,
    cnonce: str = "0a4f113b",
    algorithm: Algorithm = "MD5",
) -> str:
    """What a phone sends back: the credentials header value for ``challenge``."""
    value = next(v for v in challenge.values if params_of(v)["algorithm"] == algorithm)
    p = params_of(value)
    realm = realm if realm is not None else p["realm"]
    key = ha1(username, realm, password, algorithm)
    ncs = f"{nc:08x}"
    response = digest_response(
        ha1=key,
        nonce=p["nonce"],
        nc=ncs,
        cnonce=cnonce,
        qop="auth",
        method=method,
        uri=URI,
        algorithm=algorithm,
    )
    return (
        f'Digest username="{username}", realm="{realm}", nonce="{p["nonce"]}", uri="{URI}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={ncs}, cnonce="{cnonce}"'
    )


@pytest.fixture
def creds() -> FakeCredentials:
    return FakeCredentials(("alice@" + REALM, account()))


# --- RFC vectors --------------------------------------------------------------------------------------------


def test_rfc2617_md5_example() -> None:
    # RFC 2617 §3.5: Mufasa / "Circle Of Life" / GET /dir/index.html
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    got = digest_response(
        ha1=key,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        nc="00000001",
        cnonce="0a4f113b",
        qop="auth",
        method="GET",
        uri="/dir/index.html",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm: Algorithm, expected: str) -> None:
    # RFC 7616 §3.9.1
    key = ha1("Mufasa", "http-auth@example.org", "Circle of Life", algorithm)
    got = digest_response(
        ha1=key,
        nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        nc="00000001",
        cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
        qop="auth",
        method="GET",
        uri="/dir/index.html",
        algorithm=algorithm,
    )
    assert got == expected


# --- challenges ---------------------------------------------------------------------------------------------


def test_register_gets_401_and_other_requests_407() -> None:
    auth = DigestAuth(KEY)
    reg = auth.challenge("REGISTER", REALM, NOW)
    assert (reg.code, reg.header, reg.reason, reg.stale) == (401, "WWW-Authenticate", "Unauthorized", False)
    inv = auth.challenge("INVITE", REALM, NOW)
    assert (inv.code, inv.header, inv.reason) == (407, "Proxy-Authenticate", "Proxy Authentication Required")
    assert auth_header("REGISTER") == "Authorization"
    assert auth_header("INVITE") == "Proxy-Authorization"
    (value,) = reg.values
    p = params_of(value)
    assert p["realm"] == REALM
    assert p["qop"] == "auth"
    assert p["algorithm"] == "MD5"
    assert "stale" not in p
    assert 'qop="auth"' in value
    assert value.startswith(f'Digest realm="{REALM}", nonce="')


def test_sha256_challenge_comes_first_when_enabled() -> None:
    ch = DigestAuth(KEY).challenge("REGISTER", REALM, NOW, sha256=True)
    assert [params_of(v)["algorithm"] for v in ch.values] == ["SHA-256", "MD5"]


def test_nonces_differ_per_challenge() -> None:
    auth = DigestAuth(KEY)
    a, b = (params_of(auth.challenge("REGISTER", REALM, NOW).values[0])["nonce"] for _ in range(2))
    assert a != b


def test_short_server_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        DigestAuth(b"short")


# --- verification -------------------------------------------------------------------------------------------


async def test_no_credentials_gets_a_challenge_without_lookup(creds: FakeCredentials) -> None:
    out = await DigestAuth(KEY).authenticate("REGISTER", [], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(out, Challenge)
    assert out.code == 401
    assert creds.lookups == []


async def test_correct_md5_response_is_accepted(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    out = await auth.authenticate("REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=NOW + 1)
    assert isinstance(out, AuthOk)
    assert out.user.username == "alice"
    assert out.user.extension == "101"
    assert out.algorithm == "MD5"
    assert creds.lookups == [(REALM, "alice")]


async def test_invite_answered_with_proxy_authorization(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("INVITE", REALM, NOW)
    header = answer(ch, method="INVITE")
    out = await auth.authenticate("INVITE", [header], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(out, AuthOk)
    # The same response does not authorise another method: HA2 covers the method.
    auth2 = DigestAuth(KEY)
    bye = await auth2.authenticate("BYE", [header], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(bye, AuthFailure)
    assert bye.event is SecurityEvent.INVALID_PASSWORD


async def test_sha256_only_when_the_tenant_enables_it(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW, sha256=True)
    header = answer(ch, algorithm="SHA-256")
    out = await auth.authenticate("REGISTER", [header], realm=REALM, credentials=creds, now=NOW, sha256=True)
    assert isinstance(out, AuthOk)
    assert out.algorithm == "SHA-256"
    off = await auth.authenticate(
        "REGISTER", [answer(ch, algorithm="SHA-256", nc=2)], realm=REALM, credentials=creds, now=NOW
    )
    assert isinstance(off, AuthFailure)
    assert off.detail == "algorithm"
    assert [params_of(v)["algorithm"] for v in off.challenge.values] == ["MD5"]


async def test_expired_nonce_with_right_password_is_stale(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    later = NOW + NONCE_TTL_S + 1
    out = await auth.authenticate("REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=later)
    assert isinstance(out, Challenge)
    assert out.stale is True
    assert params_of(out.values[0])["stale"] == "true"
    # The fresh nonce of the stale challenge works.
    again = await auth.authenticate("REGISTER", [answer(out)], realm=REALM, credentials=creds, now=later)
    assert isinstance(again, AuthOk)


async def test_nonce_still_good_just_before_expiry(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    out = await auth.authenticate(
        "REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=NOW + NONCE_TTL_S - 1
    )
    assert isinstance(out, AuthOk)


async def test_expired_nonce_with_wrong_password_is_a_failure_not_stale(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    out = await auth.authenticate(
        "REGISTER", [answer(ch, password="guess")], realm=REALM, credentials=creds, now=NOW + 3600
    )
    assert isinstance(out, AuthFailure)
    assert out.event is SecurityEvent.INVALID_PASSWORD
    assert out.challenge.stale is False


async def test_replayed_nc_is_refused(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    first = await auth.authenticate("REGISTER", [answer(ch, nc=1)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(first, AuthOk)
    replay = await auth.authenticate("REGISTER", [answer(ch, nc=1)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(replay, AuthFailure)
    assert replay.event is SecurityEvent.CHALLENGE_RESPONSE_FAILED
    assert replay.detail == "nc-replayed"
    nxt = await auth.authenticate("REGISTER", [answer(ch, nc=2)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(nxt, AuthOk)


def test_nc_window_accepts_out_of_order_once() -> None:
    counts = NonceCounts(size=10)
    assert counts.use("n", 3, expiry=2000, now=1000).value == "fresh"
    assert counts.use("n", 2, expiry=2000, now=1000).value == "fresh"  # late UDP arrival
    assert counts.use("n", 2, expiry=2000, now=1000).value == "replayed"
    assert counts.use("n", 3, expiry=2000, now=1000).value == "replayed"
    assert counts.use("n", 100, expiry=2000, now=1000).value == "fresh"
    assert counts.use("n", 4, expiry=2000, now=1000).value == "replayed"  # fell out of the window


def test_nc_table_is_bounded_and_forgotten_nonces_go_stale() -> None:
    counts = NonceCounts(size=2)
    for i, nonce in enumerate(("a", "b", "c")):
        assert counts.use(nonce, 1, expiry=2000 + i, now=1000).value == "fresh"
    assert len(counts) == 2
    # "a" was forgotten: a replay of it must not pass as new.
    assert counts.use("a", 1, expiry=2000, now=1000).value == "forgotten"
    # A nonce issued after everything forgotten is fine.
    assert counts.use("d", 1, expiry=2100, now=1000).value == "fresh"


def test_expired_entries_leave_the_nc_table() -> None:
    counts = NonceCounts(size=10)
    counts.use("a", 1, expiry=1100, now=1000)
    counts.use("b", 1, expiry=1300, now=1200)
    assert len(counts) == 1


async def test_forgotten_nonce_gets_stale_challenge(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY, nc_cache_size=1)
    old = auth.challenge("REGISTER", REALM, NOW)
    new = auth.challenge("REGISTER", REALM, NOW + 10)
    assert isinstance(
        await auth.authenticate("REGISTER", [answer(old)], realm=REALM, credentials=creds, now=NOW), AuthOk
    )
    assert isinstance(
        await auth.authenticate("REGISTER", [answer(new)], realm=REALM, credentials=creds, now=NOW), AuthOk
    )
    again = await auth.authenticate("REGISTER", [answer(old)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(again, Challenge)
    assert again.stale is True


async def test_nonce_of_another_tenant_is_refused(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    theirs = auth.challenge("REGISTER", OTHER_REALM, NOW)
    out = await auth.authenticate(
        "REGISTER", [answer(theirs, realm=REALM)], realm=REALM, credentials=creds, now=NOW
    )
    assert isinstance(out, AuthFailure)
    assert out.detail == "nonce-forged"


async def test_nonce_from_another_server_key_is_refused(creds: FakeCredentials) -> None:
    ch = DigestAuth(b"x" * 32).challenge("REGISTER", REALM, NOW)
    out = await DigestAuth(KEY).authenticate(
        "REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=NOW
    )
    assert isinstance(out, AuthFailure)
    assert out.event is SecurityEvent.CHALLENGE_RESPONSE_FAILED


async def test_nonce_survives_a_restart_with_the_same_key(creds: FakeCredentials) -> None:
    ch = DigestAuth(KEY).challenge("REGISTER", REALM, NOW)
    out = await DigestAuth(KEY).authenticate(
        "REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=NOW
    )
    assert isinstance(out, AuthOk)


async def test_header_for_our_realm_is_chosen_among_several(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    foreign = 'Digest username="x", realm="elsewhere", nonce="n", uri="sip:x", response="00"'
    out = await auth.authenticate("REGISTER", [foreign, answer(ch)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(out, AuthOk)


# --- no enumeration -----------------------------------------------------------------------------------------


async def test_unknown_user_wrong_password_and_wrong_realm_look_the_same(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY, salt=fixed_salt)
    ch = auth.challenge("REGISTER", REALM, NOW)
    unknown = await auth.authenticate(
        "REGISTER", [answer(ch, username="nobody")], realm=REALM, credentials=creds, now=NOW
    )
    wrong_pw = await auth.authenticate(
        "REGISTER", [answer(ch, password="guess")], realm=REALM, credentials=creds, now=NOW
    )
    wrong_realm = await auth.authenticate(
        "REGISTER", [answer(ch, realm=OTHER_REALM)], realm=REALM, credentials=creds, now=NOW
    )
    assert isinstance(unknown, AuthFailure)
    assert isinstance(wrong_pw, AuthFailure)
    assert isinstance(wrong_realm, AuthFailure)
    assert unknown.event is SecurityEvent.INVALID_ACCOUNT_ID
    assert wrong_pw.event is SecurityEvent.INVALID_PASSWORD
    assert wrong_realm.event is SecurityEvent.CHALLENGE_RESPONSE_FAILED
    # What goes on the wire is identical, and it is the challenge a first request gets.
    assert unknown.challenge == wrong_pw.challenge == wrong_realm.challenge == ch
    # Each one looked a user up once, so the database work is the same too.
    assert [u for _, u in creds.lookups] == ["nobody", "alice", "alice"]


async def test_unknown_user_costs_the_same_hashing(
    monkeypatch: pytest.MonkeyPatch, creds: FakeCredentials
) -> None:
    calls: list[str] = []
    real = auth_mod._h

    def counting(algorithm: Algorithm, data: str) -> str:
        calls.append(algorithm)
        return real(algorithm, data)

    auth = DigestAuth(KEY, salt=fixed_salt)
    ch = auth.challenge("REGISTER", REALM, NOW)
    known, unknown = answer(ch, password="guess"), answer(ch, username="nobody")
    monkeypatch.setattr(auth_mod, "_h", counting)
    await auth.authenticate("REGISTER", [known], realm=REALM, credentials=creds, now=NOW)
    n_known = len(calls)
    calls.clear()
    await auth.authenticate("REGISTER", [unknown], realm=REALM, credentials=creds, now=NOW)
    assert n_known == len(calls) == 3  # dummy HA1, HA2, response


async def test_user_without_a_digest_is_treated_as_unknown() -> None:
    empty = StoredCredentials(username="alice", ha1_md5="", ha1_sha256="")
    creds = FakeCredentials(("alice@" + REALM, empty))
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    out = await auth.authenticate("REGISTER", [answer(ch)], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(out, AuthFailure)
    assert out.event is SecurityEvent.INVALID_ACCOUNT_ID


# --- malformed credentials ----------------------------------------------------------------------------------


def _good_params(auth: DigestAuth) -> dict[str, str]:
    ch = auth.challenge("REGISTER", REALM, NOW)
    value = answer(ch)
    parsed = {}
    for part in value.removeprefix("Digest ").split(", "):
        k, v = part.split("=", 1)
        parsed[k] = v
    return parsed


def _join(params: dict[str, str]) -> str:
    return "Digest " + ", ".join(f"{k}={v}" for k, v in params.items())


MALFORMED: list[tuple[str, Callable[[dict[str, str]], str]]] = [
    ("empty", lambda _p: ""),
    ("scheme only", lambda _p: "Digest"),
    ("basic", lambda _p: "Basic YWxpY2U6c2VjcmV0"),
    ("token form", lambda _p: "Digest abcdef"),
    ("garbage", lambda _p: 'Digest ,,,==="""'),
    ("no response", lambda p: _join({k: v for k, v in p.items() if k != "response"})),
    ("no nonce", lambda p: _join({k: v for k, v in p.items() if k != "nonce"})),
    ("no qop", lambda p: _join({k: v for k, v in p.items() if k != "qop"})),
    ("no nc", lambda p: _join({k: v for k, v in p.items() if k != "nc"})),
    ("no cnonce", lambda p: _join({k: v for k, v in p.items() if k != "cnonce"})),
    ("empty username", lambda p: _join({**p, "username": '""'})),
    ("qop auth-int", lambda p: _join({**p, "qop": "auth-int"})),
    ("md5-sess", lambda p: _join({**p, "algorithm": "MD5-sess"})),
    ("nc not hex", lambda p: _join({**p, "nc": "0000000z"})),
    ("nc short", lambda p: _join({**p, "nc": "1"})),
    ("nc zero", lambda p: _join({**p, "nc": "00000000"})),
    ("response short", lambda p: _join({**p, "response": '"abc"'})),
    ("response not hex", lambda p: _join({**p, "response": '"' + "z" * 32 + '"'})),
    ("response non-ascii", lambda p: _join({**p, "response": '"' + "я" * 32 + '"'})),
    ("nonce garbage", lambda p: _join({**p, "nonce": '"!!!"'})),
    ("nonce wrong length", lambda p: _join({**p, "nonce": '"' + "A" * 44 + '"'})),
    ("nonce bad base64", lambda p: _join({**p, "nonce": '"' + "*" * 43 + '"'})),
    ("huge header", lambda p: _join({**p, "username": '"' + "a" * 10_000 + '"'})),
]


@pytest.mark.parametrize(("name", "make"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_credentials_fail_without_exceptions(
    name: str, make: Callable[[dict[str, str]], str], creds: FakeCredentials
) -> None:
    auth = DigestAuth(KEY, salt=fixed_salt)
    header = make(_good_params(auth))
    out = await auth.authenticate("REGISTER", [header], realm=REALM, credentials=creds, now=NOW)
    assert isinstance(out, AuthFailure), name
    assert out.challenge == auth.challenge("REGISTER", REALM, NOW)
    assert creds.lookups == []


def test_good_params_helper_round_trips(creds: FakeCredentials) -> None:
    auth = DigestAuth(KEY)
    out = auth.parse("REGISTER", [_join(_good_params(auth))], realm=REALM, now=NOW)
    assert not isinstance(out, (AuthFailure, Challenge))


def test_parameter_names_are_case_insensitive() -> None:
    auth = DigestAuth(KEY)
    header = _join({k.upper(): v for k, v in _good_params(auth).items()})
    out = auth.parse("REGISTER", [header], realm=REALM, now=NOW)
    assert not isinstance(out, (AuthFailure, Challenge))


# --- security log -------------------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(json=True, level="debug")
    buf = io.StringIO()
    root.handlers[0].setStream(buf)  # type: ignore[attr-defined]
    yield buf
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


async def test_security_events_are_logged_without_secrets(
    captured_logs: io.StringIO, creds: FakeCredentials
) -> None:
    auth = DigestAuth(KEY)
    ch = auth.challenge("REGISTER", REALM, NOW)
    wrong = answer(ch, password="guess")
    right = answer(ch, nc=2)
    await auth.authenticate(
        "REGISTER", [wrong], realm=REALM, credentials=creds, now=NOW, source="198.51.100.7"
    )
    await auth.authenticate(
        "REGISTER",
        [answer(ch, username="ghost", nc=3)],
        realm=REALM,
        credentials=creds,
        now=NOW,
        source="198.51.100.7",
    )
    await auth.authenticate(
        "REGISTER", [right], realm=REALM, credentials=creds, now=NOW, source="198.51.100.8"
    )
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    security = [entry for entry in lines if entry.get("logger") == "vpbx.security"]
    assert [e["event"] for e in security] == ["InvalidPassword", "InvalidAccountID", "SuccessfulAuth"]
    assert security[0]["source"] == "198.51.100.7"
    assert security[0]["account"] == "alice"
    assert security[0]["realm"] == REALM
    assert security[0]["level"] == "warning"
    text = captured_logs.getvalue()
    for secret in (account().ha1_md5, params_of(ch.values[0])["nonce"], PASSWORD):
        assert secret not in text
    for header in (wrong, right):
        response = header.split('response="')[1].split('"')[0]
        assert response not in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'Digest username="101", realm="acme.test", nc=00000001, qop=auth',
            {"username": "101", "realm": "acme.test", "nc": "00000001", "qop": "auth"},
        ),
        ('DIGEST\tUserName = "a\\"b" ,uri="sip:x@y;a=b,c"', {"username": 'a"b', "uri": "sip:x@y;a=b,c"}),
        ("Basic QWxhZGRpbjpvcGVu", None),
        ("Digest", None),
        ("Digest username", None),
        ('Digest username="unterminated', None),
        ("Digest a=b,,c=d", None),
        ('Digest a="1" b="2"', None),
    ],
)
def test_parse_credentials(value: str, expected: dict[str, str] | None) -> None:
    assert parse_credentials(value) == expected
