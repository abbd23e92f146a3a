"""The real server, started the way the README's first command starts it, and Debian's Chromium."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
CHROMIUM_PRESENT = Path(CHROMIUM).exists()
START_TIMEOUT_S = 30
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = (
    Path(os.environ.get("VPBX_SCREENSHOTS_DIR", "")) if os.environ.get("VPBX_SCREENSHOTS_DIR") else None
)

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    url: str
    sip_port: int  # UDP and TCP on 127.0.0.1
    demo: dict[str, Any]
    data_dir: Path
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``vpbx serve --demo`` in its own process, on SQLite in a fresh data directory."""
    data = tmp_path_factory.mktemp("e2e-data")
    port = free_port()
    sip_port = free_port()
    log = data / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VPBX_")}
    env["VPBX_SIP_HOST"] = "127.0.0.1"  # loopback only, and an address SIP peers can be sent back to
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vpbx",
                "serve",
                "--demo",
                "--data-dir",
                str(data),
                "--http-port",
                str(port),
                "--sip-port",
                str(sip_port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vpbx serve did not come up:\n{log.read_text()}")
            time.sleep(0.1)  # polling a starting process, not waiting for behaviour
        yield Server(
            url=url,
            sip_port=sip_port,
            demo=json.loads((data / "demo.json").read_text()),
            data_dir=data,
            log=log,
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_PRESENT:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860}, locale="ru-RU")
    p = await context.new_page()
    p.set_default_timeout(10_000)
    yield p
    await context.close()


async def shot(page: Page, name: str) -> None:
    """Screenshots for the README when VPBX_SCREENSHOTS_DIR is set (scripts/screenshots)."""
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
