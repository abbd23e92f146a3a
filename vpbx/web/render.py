"""Page rendering: one Jinja2 environment; each page gets the translator, the principal and the CSRF token."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from vpbx.errors import FieldError, ValidationFailed
from vpbx.pbx.numbering import display as display_number
from vpbx.web.i18n import LANG_COOKIE, Translator, pick_language

TEMPLATES = Path(__file__).parent / "templates"


def build_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["phone"] = display_number
    return env


class Renderer:
    def __init__(self, translators: Mapping[str, Translator], default_language: str) -> None:
        self.env = build_env()
        self.translators = translators
        self.default_language = default_language

    def translator(self, request: Request) -> Translator:
        return self.translators[pick_language(request.cookies.get(LANG_COOKIE), self.default_language)]

    def page(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any] | None = None,
        *,
        status_code: int = 200,
        errors: ValidationFailed | None = None,
    ) -> HTMLResponse:
        t = self.translator(request)
        principal = getattr(request.state, "principal", None)
        ctx: dict[str, Any] = {
            "request": request,
            "_": t.gettext,
            "ngettext": t.ngettext,
            "lang": t.lang,
            "principal": principal,
            "csrf_token": principal.csrf_token if principal else getattr(request.state, "pre_csrf", ""),
            "errors": field_messages(t, errors.errors if errors else []),
            "query": lambda **kw: "?" + urlencode({k: v for k, v in kw.items() if v not in (None, "")}),
            "path": request.url.path,
        }
        ctx.update(context or {})
        html = self.env.get_template(template).render(ctx)
        return HTMLResponse(html, status_code=status_code)


def field_messages(t: Translator, errors: list[FieldError]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for e in errors:
        out.setdefault(e.field, []).append(t.gettext(e.msgid, **e.params))
    return out
