"""Every text the cabinet shows has a Russian translation, and the switch changes the language."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from babel.messages.extract import extract_from_file

import vpbx
from vpbx.web.i18n import load_catalog, load_translators

PACKAGE = Path(vpbx.__file__).parent
KEYWORDS = {"_": None, "N_": None, "gettext": None, "ngettext": (1, 2)}


def extracted() -> Iterator[tuple[str, str]]:
    """(msgid, where) for every marked message in the package's Python code and cabinet templates."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for lineno, msg, _comments, _ctx in extract_from_file("python", path, keywords=KEYWORDS):
            for m in msg if isinstance(msg, tuple) else (msg,):
                if m:
                    yield m, f"{path.relative_to(PACKAGE)}:{lineno}"
    for path in sorted((PACKAGE / "web" / "templates").rglob("*.html")):
        for lineno, msg, _comments, _ctx in extract_from_file(
            "jinja2.ext:babel_extract", path, keywords=KEYWORDS, options={"trim_blocks": "true"}
        ):
            for m in msg if isinstance(msg, tuple) else (msg,):
                if m:
                    yield m, f"{path.relative_to(PACKAGE)}:{lineno}"


def test_messages_are_found() -> None:
    ids = {m for m, _ in extracted()}
    assert "Log in" in ids and "Users" in ids and "Required field" in ids


def test_every_message_has_a_russian_translation() -> None:
    ru = load_catalog("ru")
    missing = sorted({f"{where}: {m!r}" for m, where in extracted() if not (ru.get(m) and ru.get(m).string)})
    assert not missing, "untranslated:\n" + "\n".join(missing)


def test_translations_keep_their_placeholders() -> None:
    import re

    ru = load_catalog("ru")
    for msg in ru:
        if msg.id and msg.string and isinstance(msg.id, str):
            assert set(re.findall(r"\{\w+\}", msg.id)) == set(re.findall(r"\{\w+\}", msg.string)), msg.id


def test_russian_is_default_and_english_is_identity() -> None:
    t = load_translators()
    assert t["ru"].gettext("Log in") == "Войти"
    assert t["en"].gettext("Log in") == "Log in"
    assert t["ru"].gettext("Page {n} of {total}", n=2, total=5) == "Страница 2 из 5"
