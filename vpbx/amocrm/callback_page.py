"""The page a browser lands on after consenting in amoCRM (``/amo/oauth/callback``, amocrm.md §2.2, F2.1):
the widget is installed and what to do next, or the refusal in words. Russian by default like the cabinet;
the cabinet's language cookie wins, else the browser's ``Accept-Language`` (this page has no switch).
Programs (no ``text/html`` before JSON in ``Accept``) keep getting the JSON answer."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from vpbx.pbx.validation import N_
from vpbx.web.i18n import DEFAULT_LANGUAGE, LANG_COOKIE, LANGUAGES, Translator, load_translators
from vpbx.web.render import build_env

TEMPLATE = "integrations/amo_callback.html"

# the refusal of each error code, in words (msgids; the cabinet's catalog translates them)
MESSAGES = {
    "access-denied": N_("Access to the amoCRM account was not granted, so the widget is not installed."),
    "code-required": N_("amoCRM did not send an authorisation code. Open this page only from amoCRM."),
    "client-id-mismatch": N_("The authorisation code is for another integration, not this PBX's widget."),
    "host-not-allowed": N_("This amoCRM address is not allowed for this PBX."),
    "integration-not-configured": N_("The amoCRM integration is not configured on this platform."),
    "install-failed": N_(
        "amoCRM refused the authorisation code: it is used already or expired (a code lives 20 minutes), "
        "or amoCRM did not answer."
    ),
}
GENERIC = N_("The widget could not be installed.")


@functools.cache
def _env() -> Environment:
    return build_env()


@functools.cache
def _translators() -> Mapping[str, Translator]:
    return load_translators()


def _q(part: str) -> float:
    for param in part.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def wants_html(request: Request) -> bool:
    """A browser: ``text/html`` is in ``Accept`` and ranks at least as high as JSON."""
    ranks: dict[str, float] = {}
    for part in request.headers.get("accept", "").split(","):
        kind = part.split(";")[0].strip().lower()
        if kind:
            ranks[kind] = max(ranks.get(kind, 0.0), _q(part))
    html = ranks.get("text/html", 0.0)
    return html > 0 and html >= ranks.get("application/json", 0.0)


def language(request: Request) -> str:
    """The cabinet's cookie, else the first of our languages in ``Accept-Language`` by weight, else ru."""
    cookie = request.cookies.get(LANG_COOKIE)
    if cookie in LANGUAGES:
        return cookie
    best, weight = DEFAULT_LANGUAGE, 0.0
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower().split("-")[0]
        q = _q(part)
        if tag in LANGUAGES and q > weight:
            best, weight = tag, q
    return best


def render(request: Request, status: int, *, account: str = "", error: str = "") -> HTMLResponse:
    t = _translators()[language(request)]
    title = t.gettext(
        N_("The amoCRM widget is not installed") if error else N_("The amoCRM widget is installed")
    )
    html = (
        _env()
        .get_template(TEMPLATE)
        .render(
            _=t.gettext,
            lang=t.lang,
            status=status,
            title=title,
            account=account,
            error=error,
            message=t.gettext(MESSAGES.get(error, GENERIC)) if error else "",
        )
    )
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})
