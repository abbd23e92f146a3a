"""Settings: sources and their priority, the RTP range, and the refusal of weak secrets in production."""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from vpbx.errors import ConfigError
from vpbx.settings import MIN_SECRET_LEN, SECRETS_FILE, Settings, ensure_demo_secrets, load_settings

GOOD_SECRET = "k" * MIN_SECRET_LEN


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No VPBX_* variable of the calling shell leaks in; the default ./data is under tmp_path."""
    for name in list(os.environ):
        if name.startswith("VPBX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.mark.parametrize("secret", ["", "   ", "changeme", "CHANGEME", "secret", "k" * (MIN_SECRET_LEN - 1)])
def test_production_refuses_a_weak_secret_and_names_it(secret: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if secret:
        monkeypatch.setenv("VPBX_SECRET_KEY", secret)
    with pytest.raises(ConfigError, match="VPBX_SECRET_KEY") as err:
        load_settings()
    assert err.value.details == {"setting": "VPBX_SECRET_KEY"}
    if secret.strip():
        assert secret not in str(err.value)  # the message names the variable, never the value


def test_production_is_the_default_and_refuses_no_secret() -> None:
    with pytest.raises(ConfigError, match="VPBX_SECRET_KEY"):
        Settings()


def test_production_accepts_a_long_random_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPBX_SECRET_KEY", GOOD_SECRET)
    s = load_settings()
    assert s.env == "production"
    assert s.secret_key.get_secret_value() == GOOD_SECRET
    assert GOOD_SECRET not in repr(s)


@pytest.mark.parametrize("env", ["development", "test"])
def test_outside_production_an_empty_secret_is_allowed(env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPBX_ENV", env)
    assert load_settings().secret_key.get_secret_value() == ""


def test_environment_variables_and_nesting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPBX_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("VPBX_HTTP_PORT", "9090")
    monkeypatch.setenv("VPBX_SIP_PORT", "5070")
    monkeypatch.setenv("VPBX_RTP_PORTS", "12000-12100")
    monkeypatch.setenv("VPBX_LOG_JSON", "true")
    monkeypatch.setenv("VPBX_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("VPBX_LOGIN__MAX_FAILURES", "3")
    monkeypatch.setenv("VPBX_LOGIN__LOCKOUT_S", "60")
    s = load_settings()
    assert (s.http_port, s.sip_port, s.rtp_ports, s.log_json) == (9090, 5070, (12000, 12100), True)
    assert (s.login.max_failures, s.login.lockout_s, s.login.window_s) == (3, 60, 900)
    assert s.data_dir == tmp_path / "var"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'vpbx.sqlite3'}"
    assert s.sqlite


def test_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPBX_ENV", "test")
    monkeypatch.setenv("VPBX_DATABASE_URL", "postgresql+asyncpg://u:p@db:5432/vpbx")
    s = load_settings()
    assert s.database_url == "postgresql+asyncpg://u:p@db:5432/vpbx"
    assert not s.sqlite


def test_invalid_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPBX_SECRET_KEY", GOOD_SECRET)
    monkeypatch.setenv("VPBX_LOGIN__MAX_FAILURES", "0")
    with pytest.raises(ConfigError, match="VPBX_LOGIN__MAX_FAILURES"):
        load_settings()


def test_settings_file_from_vpbx_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "vpbx.toml"
    conf.write_text(
        f'secret_key = "{GOOD_SECRET}"\nhttp_port = 7070\nrtp_ports = "30000-30010"\n'
        'public_url = "https://pbx.example.com"\n\n[login]\nmax_failures = 7\n'
    )
    monkeypatch.setenv("VPBX_CONFIG_FILE", str(conf))
    s = load_settings()
    assert s.secret_key.get_secret_value() == GOOD_SECRET
    assert (s.http_port, s.rtp_ports, s.public_url) == (7070, (30000, 30010), "https://pbx.example.com")
    assert s.login.max_failures == 7

    monkeypatch.setenv("VPBX_HTTP_PORT", "9090")  # the environment beats the file
    assert load_settings().http_port == 9090


def test_missing_settings_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VPBX_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings()


def test_broken_settings_file_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "broken.toml"
    conf.write_text("http_port = \n")
    monkeypatch.setenv("VPBX_CONFIG_FILE", str(conf))
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings()


def test_cli_overrides_win_over_environment_and_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    conf = tmp_path / "vpbx.toml"
    conf.write_text(f'secret_key = "{GOOD_SECRET}"\nhttp_port = 7070\nsip_port = 5070\n')
    monkeypatch.setenv("VPBX_CONFIG_FILE", str(conf))
    monkeypatch.setenv("VPBX_HTTP_PORT", "9090")
    monkeypatch.setenv("VPBX_RTP_PORTS", "12000-12100")
    s = load_settings(http_port=8081, rtp_ports="10000-10100", sip_port=None)
    assert s.http_port == 8081
    assert s.rtp_ports == (10000, 10100)
    assert s.sip_port == 5070  # None means "not given on the command line"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10000-10100", (10000, 10100)), (" 1024 - 65535 ", (1024, 65535)), ("20000-20001", (20000, 20001))],
)
def test_rtp_port_range_parses(text: str, expected: tuple[int, int]) -> None:
    assert load_settings(env="test", rtp_ports=text).rtp_ports == expected


@pytest.mark.parametrize(
    "text",
    ["10100-10000", "10000-10000", "10000", "10000-", "-10000", "a-b", "80-100", "10000-70000", "1e4-2e4"],
)
def test_bad_rtp_port_range_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="VPBX_RTP_PORTS"):
        load_settings(env="test", rtp_ports=text)


def test_demo_secrets_are_written_once_with_mode_0600(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = ensure_demo_secrets(data)
    assert path == data / SECRETS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    secret = tomllib.loads(first)["secret_key"]
    assert len(secret) >= MIN_SECRET_LEN

    assert ensure_demo_secrets(data).read_text() == first  # a second start keeps the secret

    path.write_text('secret_key = "' + "m" * MIN_SECRET_LEN + '"\n')
    ensure_demo_secrets(data)
    assert "m" * MIN_SECRET_LEN in path.read_text()  # never overwritten, even when changed by hand


def test_demo_secrets_satisfy_production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = tomllib.loads(ensure_demo_secrets(data).read_text())["secret_key"]
    s = load_settings(data_dir=data)
    assert s.env == "production"
    assert s.secret_key.get_secret_value() == secret

    monkeypatch.setenv("VPBX_DATA_DIR", str(data))  # found through the environment as well
    assert load_settings().secret_key.get_secret_value() == secret

    monkeypatch.setenv("VPBX_SECRET_KEY", GOOD_SECRET)  # the environment beats the demo file
    assert load_settings().secret_key.get_secret_value() == GOOD_SECRET
