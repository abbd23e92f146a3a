"""Cabinet translations: Babel message catalogs, Russian by default, English by a switch.

Message ids are English. Each language has a folder of ``.po`` files under ``locale/`` (one per section, so
sections can be translated independently); they are merged and compiled in memory at start-up.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("ru", "en")
DEFAULT_LANGUAGE = "ru"
LANG_COOKIE = "vpbx_lang"


def load_catalog(lang: str, locale_dir: Path = LOCALE_DIR) -> Catalog:
    merged = Catalog(locale=lang)
    for po in sorted((locale_dir / lang).glob("*.po")):
        with po.open("rb") as f:
            cat = read_po(f, locale=lang)
        for msg in cat:
            if msg.id and msg.string:
                merged.add(msg.id, msg.string, context=msg.context)
    return merged


@dataclass(frozen=True, slots=True)
class Translator:
    lang: str
    translations: Translations

    def gettext(self, msgid: str, **params: object) -> str:
        text: str = self.translations.gettext(msgid)
        return text.format(**params) if params else text

    def ngettext(self, singular: str, plural: str, n: int, **params: object) -> str:
        text: str = self.translations.ngettext(singular, plural, n)
        return text.format(n=n, **params)


def load_translators(locale_dir: Path = LOCALE_DIR) -> Mapping[str, Translator]:
    out: dict[str, Translator] = {}
    for lang in LANGUAGES:
        buf = io.BytesIO()
        write_mo(buf, load_catalog(lang, locale_dir))
        buf.seek(0)
        out[lang] = Translator(lang, Translations(buf))
    return out


def pick_language(cookie: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """The cookie's language if it is one we have, else the default (Russian): never the browser's guess."""
    return cookie if cookie in LANGUAGES else default
