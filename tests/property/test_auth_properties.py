"""Digest credentials from hostile bytes: every input ends as a failure or a challenge, never an exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vpbx.sip.auth import AuthFailure, Challenge, DigestAuth

AUTH = DigestAuth(b"k" * 32)
REALM = "acme.vpbx.test"

PARAM_NAMES = st.sampled_from(
    ["username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "algorithm", "opaque", "x"]
)
VALUES = st.one_of(st.text(max_size=40), st.from_regex(r'"[^"\\]{0,40}"', fullmatch=True))
DIGESTISH = st.lists(st.tuples(PARAM_NAMES, VALUES), max_size=10).map(
    lambda ps: "Digest " + ", ".join(f"{k}={v}" for k, v in ps)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=200), DIGESTISH), min_size=1, max_size=3))
def test_any_credentials_are_a_failure_never_an_exception(headers: list[str]) -> None:
    out = AUTH.parse("REGISTER", headers, realm=REALM, now=1_760_000_000.0)
    assert isinstance(out, AuthFailure | Challenge)
