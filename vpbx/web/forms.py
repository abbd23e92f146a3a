"""Reading submitted forms: strings trimmed and bounded, checkboxes, lists, ids."""

from __future__ import annotations

import uuid

from starlette.datastructures import FormData, UploadFile

__all__ = ["FormData", "checked", "lines", "optional_id", "page_number", "parse_id", "text", "upload"]

from vpbx.errors import NotFound

MAX_FIELD = 4096  # a single value longer than this is cut; validation then reports the length


def text(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value[:MAX_FIELD] if isinstance(value, str) else default


def checked(form: FormData, name: str) -> bool:
    return form.get(name) in ("on", "1", "true", "yes")


async def upload(form: FormData, name: str, max_bytes: int) -> tuple[bytes | None, str]:
    """A file field's bytes (None when empty) and file name; ``(None, "")`` when no file was chosen. Reads at
    most one byte past ``max_bytes``: enough for validation to refuse a file that is too large."""
    value = form.get(name)
    if not isinstance(value, UploadFile) or not value.filename:
        return None, ""
    return await value.read(max_bytes + 1) or None, value.filename


def lines(form: FormData, name: str) -> list[str]:
    """A textarea or a comma list: one value per line or per comma, blanks dropped."""
    raw = text(form, name).replace(",", "\n")
    return [v.strip() for v in raw.splitlines() if v.strip()]


def parse_id(value: str, kind: str) -> uuid.UUID:
    """Ids in URLs are UUIDs; anything else is simply not found."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(kind, value[:64]) from None


def optional_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None


def page_number(value: str | None) -> int:
    try:
        return max(1, min(int(value or 1), 100_000))
    except ValueError:
        return 1
