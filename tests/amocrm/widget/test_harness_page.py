"""The harness page itself (amocrm.md §4.7), served by the emulator: the bundle from a zip or a directory,
its files and jQuery served back, the world's names and the card's phone in the page, loopback only."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import httpx

from tests.amocrm.emu_kit import Emu
from vpbx.amocrm.bundle import build
from vpbx.amocrm.emulator import build_app, make_world

CONFIG_RE = re.compile(r"var CONFIG = (\{.*?\});\n")


def config_of(page: str) -> dict[str, object]:
    m = CONFIG_RE.search(page)
    assert m, "the page carries its configuration"
    out: dict[str, object] = json.loads(m.group(1))
    return out


async def test_a_zip_bundle_with_the_worlds_names(emu: Emu, tmp_path: Path) -> None:
    bundle = build("https://pbx.example.org", "Виртуальная АТС", tmp_path / "w.zip")
    async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
        page = await http.get(
            "/__emu__/widget-harness",
            params={
                "account": "demo.amocrm.ru",
                "user_id": 5002,
                "card": "contacts:9002",
                "widget": str(bundle),
            },
        )
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        config = config_of(page.text)
        assert (config["account_id"], config["user_name"], config["card_name"]) == (
            30000001,
            "Мария Сидорова",
            "Олег Ким",
        )
        assert config["phone"] == "89167654321"  # the card's phone as amoCRM stores it
        assert config["card"] == {"type": "contacts", "id": 9002}
        files = str(config["files"])
        script = await http.get(f"{files}/script.js")
        with zipfile.ZipFile(bundle) as z:
            assert script.content == z.read("script.js")
            assert json.loads((await http.get(f"{files}/i18n/ru.json")).content) == json.loads(
                z.read("i18n/ru.json")
            )
        assert (await http.get(f"{files}/images/logo.png")).headers["content-type"] == "image/png"
        assert (await http.get(f"{files}/nothing.js")).status_code == 404
        jquery = await http.get("/__emu__/widget-harness/jquery.js")
        assert jquery.status_code == 200 and b"jQuery" in jquery.content[:400]


async def test_a_directory_bundle_and_an_explicit_phone(emu: Emu, tmp_path: Path) -> None:
    bundle = build("https://pbx.example.org", "x", tmp_path / "w.zip")
    unpacked = tmp_path / "dir"
    with zipfile.ZipFile(bundle) as z:
        z.extractall(unpacked)
    async with httpx.AsyncClient(base_url=emu.url, timeout=10) as http:
        page = await http.get(
            "/__emu__/widget-harness", params={"widget": str(unpacked), "phone": "+74950000000"}
        )
        assert page.status_code == 200
        config = config_of(page.text)
        assert config["phone"] == "+74950000000"
        assert (await http.get(f"{config['files']}/manifest.json")).json()["widget"]["interface_version"] == 2
        missing = await http.get("/__emu__/widget-harness", params={"widget": str(tmp_path / "none.zip")})
        assert missing.status_code == 404


async def test_only_loopback_callers_get_the_page(tmp_path: Path) -> None:
    bundle = build("https://pbx.example.org", "x", tmp_path / "w.zip")
    app = build_app(make_world())
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://demo.amocrm.ru") as http:
            page = await http.get("/__emu__/widget-harness", params={"widget": str(bundle)})
        assert page.status_code == 403
    finally:
        await app.aclose()
