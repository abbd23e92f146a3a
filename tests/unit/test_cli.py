"""The vpbx command: a bad configuration stops it before it binds a port; `vpbx demo` writes demo.json."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from typer.testing import CliRunner

import vpbx.app
from vpbx import store
from vpbx.cli import app
from vpbx.settings import SECRETS_FILE


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No VPBX_* variable of the calling shell leaks in; the CLI's logging set-up is undone afterwards."""
    for name in list(os.environ):
        if name.startswith("VPBX_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.configure(**config)
    logging.getLogger("uvicorn.access").disabled = False


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any attempt to migrate or to start the server (neither should happen on a bad config)."""
    calls: list[str] = []

    async def fake_run(*_a: Any, **_kw: Any) -> None:
        calls.append("serve")

    def fake_upgrade(*_a: Any, **_kw: Any) -> None:
        calls.append("store.upgrade")

    monkeypatch.setattr(vpbx.app, "serve", fake_run)
    monkeypatch.setattr(store, "upgrade", fake_upgrade)
    return calls


def test_serve_in_production_without_a_secret_exits_2_naming_it(tmp_path: Path, no_server: list[str]) -> None:
    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(data), "--http-port", "0"])
    assert result.exit_code == 2, result.output
    assert "VPBX_SECRET_KEY" in result.output
    assert no_server == []
    assert not data.exists()  # nothing was created either


def test_serve_with_a_placeholder_secret_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_server: list[str]
) -> None:
    monkeypatch.setenv("VPBX_SECRET_KEY", "changeme")
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "VPBX_SECRET_KEY" in result.output
    assert "changeme" not in result.output
    assert no_server == []


def test_serve_with_a_bad_rtp_range_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_server: list[str]
) -> None:
    monkeypatch.setenv("VPBX_SECRET_KEY", "s" * 40)
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--rtp-ports", "20000-10000"])
    assert result.exit_code == 2
    assert "VPBX_RTP_PORTS" in result.output
    assert no_server == []


def test_serve_passes_cli_options_to_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_server: list[str]
) -> None:
    seen: dict[str, Any] = {}

    async def fake_serve(settings: Any) -> None:
        seen["settings"] = settings

    monkeypatch.setattr(vpbx.app, "serve", fake_serve)
    monkeypatch.setenv("VPBX_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("VPBX_HTTP_PORT", "9999")
    result = CliRunner().invoke(
        app,
        ["serve", "--data-dir", str(tmp_path), "--http-port", "8081", "--sip-port", "5070", "--rtp-ports",
         "10000-10100"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    s = seen["settings"]
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8081)
    assert (s.http_port, s.sip_port, s.rtp_ports, s.data_dir) == (8081, 5070, (10000, 10100), tmp_path)
    assert no_server == ["store.upgrade"]


def test_demo_writes_demo_json_once_and_reuses_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = CliRunner().invoke(app, ["demo", "--data-dir", str(data)])
    assert first.exit_code == 0, first.output

    path = data / "demo.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / SECRETS_FILE).stat().st_mode) == 0o600
    info = json.loads(path.read_text())
    assert info["domain"] == "demo.vpbx.local"
    assert info["admin_login"] == "admin@demo.vpbx.local"
    assert len(info["admin_password"]) >= 8
    assert len(info["users"]) == 3
    pins = [u["pin"] for u in info["users"]]
    assert len(set(pins)) == 3 and all(p.isdigit() for p in pins)
    for u in info["users"]:
        assert u["sip_login"] and len(u["sip_password"]) >= 8
        assert u["sip_password"] in first.output  # printed for people as well
    assert info["admin_login"] in first.output
    assert "http://127.0.0.1:8080/" in first.output
    assert list((data / "prompts").glob("*.wav"))  # the demo menu's greeting, spoken once and stored
    # the Integration API (integration-api.md §6.1): on, its base URLs and credentials in demo.json
    assert info["api_url"] == "http://127.0.0.1:8080/api"
    assert info["api_test_url"] == "http://127.0.0.1:8080/api-test"
    assert re.fullmatch(r"[0-9A-F]{32}", info["api_client_id"])
    assert re.fullmatch(r"[0-9A-F]{32}", info["api_sign_key"])
    # the autoinformer: on, one draft campaign (never dials) with two contacts and their variables
    with sqlite3.connect(data / "vpbx.sqlite3") as db:
        assert db.execute("select status from ai_campaigns").fetchall() == [("draft",)]
        rows = db.execute("select phones, variables from ai_contacts order by row_no").fetchall()
    assert [json.loads(p) for p, _ in rows] == [["79161234567"], ["79169876543"]]
    assert json.loads(rows[0][1])["sum"] == "1500.50"

    second = CliRunner().invoke(app, ["demo", "--data-dir", str(data)])
    assert second.exit_code == 0, second.output
    assert json.loads(path.read_text()) == info  # same domain, same credentials
    assert info["admin_password"] in second.output


def test_demo_uses_vpbx_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "elsewhere"
    monkeypatch.setenv("VPBX_DATA_DIR", str(data))
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert (data / "demo.json").exists() and (data / SECRETS_FILE).exists()
    assert not (tmp_path / "data").exists()
