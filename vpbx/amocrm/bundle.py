"""The widget's bundle (amocrm.md §3.1): ``vpbx amocrm widget-build --backend URL --name NAME --out ZIP``.

The zip's root holds ``manifest.json``, ``script.js``, ``i18n/ru.json``, ``i18n/en.json`` and the logo set
amoCRM asks for (``images/logo*.png``). The sources live in ``vpbx/amocrm/widget/``; the build bakes our
backend origin and the widget's name into them (amoCRM keeps no settings of ours: ``settings`` is empty) and
draws the logos, so the zip is the same bytes for the same inputs.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlsplit

SOURCE = Path(__file__).parent / "widget"
MAX_NAME = 64
ZIP_TIME = (2026, 1, 1, 0, 0, 0)  # fixed entry times: the same inputs give the same zip
# amoCRM's logo set: file → (width, height)
LOGOS: dict[str, tuple[int, int]] = {
    "images/logo_min.png": (84, 84),
    "images/logo_small.png": (108, 108),
    "images/logo.png": (130, 100),
    "images/logo_medium.png": (240, 84),
    "images/logo_main.png": (400, 272),
    "images/logo_dp.png": (174, 109),
}
BRAND = (0x1F, 0x6F, 0xD6)  # background
MARK = (0xFF, 0xFF, 0xFF)  # the ring


class BundleError(ValueError):
    pass


def backend_origin(url: str) -> str:
    """``https://pbx.example.org/`` → ``https://pbx.example.org``; anything but an http(s) origin: refused."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise BundleError(f"--backend must be an http(s) URL, got {url!r}")
    if parts.path not in ("", "/"):
        raise BundleError("--backend is an origin: no path")
    return f"{parts.scheme}://{parts.netloc}"


def _png(width: int, height: int) -> bytes:
    """A logo: the brand colour with a white ring in the middle (RGB, 8 bits, no interlace)."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    outer = min(width, height) * 0.36
    inner = outer * 0.62
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter: none
        for x in range(width):
            d2 = (x - cx) ** 2 + (y - cy) ** 2
            rows.extend(MARK if inner**2 <= d2 <= outer**2 else BRAND)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def bundle_files(backend: str, name: str) -> dict[str, bytes]:
    """The zip's files by path: the sources with the backend and the name baked in, and the logos."""
    origin = backend_origin(backend)
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise BundleError(f"--name must be 1–{MAX_NAME} characters")
    host = urlsplit(origin).hostname or "localhost"
    manifest = json.loads((SOURCE / "manifest.json").read_text("utf-8"))
    manifest["widget"]["support"] = {"link": f"{origin}/support", "email": f"support@{host}"}
    script = (SOURCE / "script.js").read_text("utf-8")
    script = script.replace("__VPBX_BACKEND__", json.dumps(origin)).replace("__VPBX_NAME__", json.dumps(name))
    files = {
        "manifest.json": json.dumps(manifest, ensure_ascii=False, indent=2).encode(),
        "script.js": script.encode(),
    }
    for lang in ("ru", "en"):
        strings = json.loads((SOURCE / "i18n" / f"{lang}.json").read_text("utf-8"))
        strings["widget"]["name"] = name
        files[f"i18n/{lang}.json"] = json.dumps(strings, ensure_ascii=False, indent=2).encode()
    for path, (w, h) in LOGOS.items():
        files[path] = _png(w, h)
    return files


def build(backend: str, name: str, out: Path) -> Path:
    files = bundle_files(backend, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            info = zipfile.ZipInfo(path, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return out
