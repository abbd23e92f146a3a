"""The widget's zip (amocrm.md §3.1): ``vpbx amocrm widget-build``'s files, the manifest amoCRM reads, the
baked backend origin, the logo set, and a script that parses."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vpbx.amocrm.bundle import LOGOS, BundleError, bundle_files
from vpbx.cli import app

EXPECTED_MANIFEST = {
    "widget": {
        "name": "widget.name",
        "description": "widget.description",
        "short_description": "widget.short_description",
        "version": "1.0.0",
        "interface_version": 2,
        "init_once": True,
        "locale": ["ru", "en"],
        "installation": True,
        "support": {"link": "https://pbx.example.org/support", "email": "support@pbx.example.org"},
    },
    "locations": ["ccard-1", "lcard-1", "comcard-1", "settings", "everywhere"],
    "settings": {},
}


def build(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "dist" / "amocrm-widget.zip"
    result = CliRunner().invoke(
        app,
        ["amocrm", "widget-build", "--backend", "https://pbx.example.org", "--out", str(out), *args],
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    return out


def test_zip_holds_what_amocrm_wants(tmp_path: Path) -> None:
    out = build(tmp_path, "--name", "Облачная АТС")
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert sorted(names) == sorted(["manifest.json", "script.js", "i18n/ru.json", "i18n/en.json", *LOGOS])
        assert json.loads(z.read("manifest.json")) == EXPECTED_MANIFEST
        script = z.read("script.js").decode()
        ru = json.loads(z.read("i18n/ru.json"))
        en = json.loads(z.read("i18n/en.json"))
        for path, (w, h) in LOGOS.items():
            png = z.read(path)
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
            assert struct.unpack(">II", png[16:24]) == (w, h)
    assert 'var BACKEND = "https://pbx.example.org";' in script
    assert "__VPBX_" not in script
    assert script.lstrip().startswith("/*") and "define(['jquery'], function ($)" in script
    for callback in ("init:", "render:", "bind_actions:", "settings:", "onSave:", "destroy:"):
        assert callback in script
    assert "self.add_action('phone'" in script and "'Idempotency-Key': uuid4()" in script
    assert ru["widget"]["name"] == en["widget"]["name"] == "Облачная АТС"
    assert ru["vpbx"]["calling"] == "Звоним: сначала на ваш телефон…"
    assert set(ru["vpbx"]) == set(en["vpbx"])  # every string in both languages
    labels = {k: ru["vpbx"][k] for k in ("main_title", "save_mapping", "save_settings", "lines_title")}
    assert labels == {
        "main_title": "Основные настройки",
        "save_mapping": "Сохранить соответствия",
        "save_settings": "Сохранить настройки",
        "lines_title": "Список входящих номеров",
    }


def test_the_same_inputs_give_the_same_zip(tmp_path: Path) -> None:
    first = build(tmp_path).read_bytes()
    assert build(tmp_path).read_bytes() == first


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_parses(tmp_path: Path) -> None:
    path = tmp_path / "script.js"
    path.write_bytes(bundle_files("https://pbx.example.org", "x")["script.js"])
    done = subprocess.run(["node", "--check", str(path)], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize("backend", ["ftp://pbx.example.org", "pbx.example.org", "https://pbx.example.org/x"])
def test_backend_must_be_an_origin(backend: str, tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        bundle_files(backend, "x")
    result = CliRunner().invoke(
        app, ["amocrm", "widget-build", "--backend", backend, "--out", str(tmp_path / "w.zip")]
    )
    assert result.exit_code == 2 and not (tmp_path / "w.zip").exists()
