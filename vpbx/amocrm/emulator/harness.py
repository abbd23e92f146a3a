"""The widget harness (amocrm.md §4.7): an offline amoCRM host page for the widget, served by the emulator.

``GET /__emu__/widget-harness?account=demo.amocrm.ru&user_id=5001&card=contacts:9001&widget=<zip or dir>``
loads the widget bundle (an http(s) URL or a local path of a zip or a directory, as ``widget-build`` makes
it), and answers a page with:

- jQuery from the project's npm dependency and a minimal AMD loader (``define``/``require``);
- ``APP``/``AMOCRM`` stubs: ``constant('user'|'account')``, ``data.current_card``, ``notifications.add_call``,
  ``show_message``, ``addNotificationCallback``; every call is recorded in ``window.__emu.notifications``;
- the widget instance's methods ``i18n``, ``system``, ``get_settings``, ``render_template``, ``add_action``,
  ``crm_post`` and ``$authorizedAjax``, which takes a fresh token from ``/__emu__/disposable-token`` for each
  request (``aud`` = the request's origin) and sends it as ``X-Auth-Token``; answers are recorded in
  ``window.__emu.requests``;
- the settings container (``callbacks.settings`` runs at once) and a fake card whose phone link fires the
  registered ``phone`` action.

Loopback only, like the rest of ``/__emu__``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter()

PREFIX = "/__emu__/widget-harness"
JQUERY = Path(__file__).resolve().parents[3] / "node_modules" / "jquery" / "dist" / "jquery.min.js"
FETCH_TIMEOUT = httpx.Timeout(5.0)
MAX_BUNDLE = 5 * 1024 * 1024
BUNDLE_FILES = ("manifest.json", "script.js", "i18n/ru.json", "i18n/en.json")
LOOPBACK = ("127.0.0.1", "::1", "localhost", "testclient", "testserver")
DEFAULT_PHONE = "+79161234567"  # the card's phone when the emulator's world does not know the card


def _known(request: Request, account: str, user_id: int, card_type: str, card_id: str) -> dict[str, Any]:
    """What the emulator's world (``app.state.world``, when the harness runs inside the emulator) knows of the
    account, the user and the card: their names and the card's first phone."""
    world = getattr(request.app.state, "world", None)
    if world is None:
        return {}
    try:
        acc = world.account_named(account)
    except Exception:  # an unknown account: the page still renders, the token request will say why
        return {}
    out: dict[str, Any] = {"account_id": acc.id, "user_name": (acc.users.get(user_id) or {}).get("name")}
    entity = getattr(acc, card_type, None) if card_type in ("contacts", "leads") else None
    row = entity.get(int(card_id)) if isinstance(entity, dict) and card_id.isdigit() else None
    if isinstance(row, dict):
        out["card_name"] = row.get("name")
        for cf in row.get("custom_fields_values") or []:
            if cf.get("field_code") == "PHONE" and cf.get("values"):
                out["phone"] = cf["values"][0].get("value")
                break
    return out


def _loopback(request: Request) -> None:
    host = request.client.host if request.client is not None else ""
    if host not in LOOPBACK:
        raise HTTPException(status_code=403, detail={"error": "loopback-only"})


def _from_zip(data: bytes) -> dict[str, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    except zipfile.BadZipFile:
        raise HTTPException(status_code=422, detail={"error": "widget-not-a-zip"}) from None


async def _load(widget: str) -> dict[str, bytes]:
    """The bundle's files by path, from a zip or a directory, local or over http(s)."""
    parts = urlsplit(widget)
    if parts.scheme in ("http", "https"):
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as http:
            if widget.endswith(".zip"):
                r = await http.get(widget)
                r.raise_for_status()
                return _from_zip(r.content[:MAX_BUNDLE])
            base = widget.rstrip("/")
            files: dict[str, bytes] = {}
            for name in BUNDLE_FILES:
                r = await http.get(f"{base}/{name}")
                if r.status_code == 200:
                    files[name] = r.content
            return files
    local = Path(unquote(parts.path) if parts.scheme == "file" else widget)
    return await asyncio.to_thread(_load_local, local)


def _load_local(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return _from_zip(path.read_bytes()[:MAX_BUNDLE])
    if path.is_dir():
        return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    raise HTTPException(status_code=404, detail={"error": "widget-not-found"})


def _bundles(request: Request) -> dict[str, dict[str, bytes]]:
    state = request.app.state
    found: dict[str, dict[str, bytes]] | None = getattr(state, "harness_bundles", None)
    if found is None:
        found = state.harness_bundles = {}
    return found


@router.get(f"{PREFIX}/jquery.js")
async def jquery(request: Request) -> Response:
    _loopback(request)
    try:
        data = await asyncio.to_thread(JQUERY.read_bytes)
    except OSError:
        raise HTTPException(status_code=503, detail={"error": "jquery-missing"}) from None
    return Response(data, media_type="application/javascript")


@router.get(PREFIX + "/files/{key}/{path:path}")
async def bundle_file(request: Request, key: str, path: str) -> Response:
    _loopback(request)
    data = _bundles(request).get(key, {}).get(path)
    if data is None:
        raise HTTPException(status_code=404, detail={"error": "no-such-file"})
    media = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers={"Cache-Control": "no-store"})


@router.get(PREFIX)
async def harness(
    request: Request,
    widget: str,
    account: str = "demo.amocrm.ru",
    user_id: int = 5001,
    card: str = "contacts:9001",
    phone: str = "",
    is_admin: bool | None = None,
    lang: str = Query(default="ru", pattern="^(ru|en)$"),
) -> HTMLResponse:
    _loopback(request)
    files = await _load(widget)
    if "script.js" not in files:
        raise HTTPException(status_code=422, detail={"error": "widget-without-script"})
    key = hashlib.sha256(widget.encode()).hexdigest()[:16]
    _bundles(request)[key] = files
    card_type, _, card_id = card.partition(":")
    i18n = json.loads(files.get(f"i18n/{lang}.json", b"{}") or b"{}")
    known = _known(request, account, user_id, card_type, card_id)
    config: dict[str, Any] = {
        "account": account,
        "account_id": known.get("account_id"),
        "subdomain": account.split(".")[0],
        "user_id": user_id,
        "user_name": known.get("user_name") or f"user {user_id}",
        "is_admin": is_admin,
        "card": {"type": card_type, "id": int(card_id) if card_id.isdigit() else card_id},
        "card_name": known.get("card_name") or "",
        "phone": phone or known.get("phone") or DEFAULT_PHONE,
        "lang": lang,
        "i18n": i18n,
        "files": f"{PREFIX}/files/{key}",
    }
    page = (
        _PAGE.replace("__CONFIG__", json.dumps(config, ensure_ascii=True).replace("</", "<\\/"))
        .replace("__JQUERY__", f"{PREFIX}/jquery.js")
        .replace("__SCRIPT__", f"{PREFIX}/files/{key}/script.js")
    )
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})


_PAGE = """<!doctype html>
<html lang="ru"><head><meta charset="utf-8"><title>amoCRM widget harness</title>
<style>
 body{font:14px sans-serif;margin:16px} .emu-card{border:1px solid #ccc;padding:8px;margin-bottom:16px}
 .vpbx-error{color:#b00} .vpbx-inactive{color:#999} nav button.vpbx-current{font-weight:bold}
</style></head>
<body>
<div class="emu-card" id="emu-card"><b id="emu-card-name">Карточка</b> <span id="emu-card-ref"></span>:
 <a href="#" class="emu-phone" id="emu-phone"></a></div>
<div id="vpbx-widget-settings" class="widget_settings_block"></div>
<script src="__JQUERY__"></script>
<script>
(function () {
  'use strict';
  var CONFIG = __CONFIG__;
  var emu = window.__emu = {notifications: [], requests: [], actions: {}, errors: [], ready: false};
  window.addEventListener('error', function (e) { emu.errors.push(String(e.message)); });
  window.addEventListener('unhandledrejection', function (e) { emu.errors.push(String(e.reason)); });
  function record(kind, payload) { emu.notifications.push({kind: kind, payload: payload}); }
  var user = {id: CONFIG.user_id, name: CONFIG.user_name};
  var account = {id: CONFIG.account_id, subdomain: CONFIG.subdomain, base_domain: CONFIG.account};
  var APP = window.APP = window.AMOCRM = {
    constant: function (name) { return name === 'user' ? user : name === 'account' ? account : undefined; },
    data: {current_card: CONFIG.card},
    lang_id: CONFIG.lang,
    notifications: {
      add_call: function (n) { record('add_call', n); },
      show_message: function (n) { record('show_message', n); },
      show_message_error: function (n) { record('show_message_error', n); },
      addNotificationCallback: function (name, fn) { record('addNotificationCallback', name); }
    }
  };
  // a minimal AMD loader: named and anonymous define(), require() of loaded modules
  var modules = {jquery: window.jQuery}, anonymous = [];
  window.define = function (name, deps, factory) {
    if (typeof name !== 'string') { factory = deps; deps = name; name = null; }
    if (typeof deps === 'function') { factory = deps; deps = []; }
    var value = factory.apply(null, deps.map(function (d) { return modules[d]; }));
    if (name) { modules[name] = value; } else { anonymous.push(value); }
  };
  window.define.amd = {jQuery: true};
  window.require = function (deps, cb) {
    var got = deps.map(function (d) { return modules[d]; });
    if (cb) { cb.apply(null, got); }
    return got[0];
  };
  var $ = window.jQuery;
  function token(opts) {
    var aud = new URL(opts.url, window.location.href).origin;
    var body = {account: CONFIG.account, user_id: CONFIG.user_id, aud: aud, ttl: 300};
    if (CONFIG.is_admin !== null) { body.is_admin = CONFIG.is_admin; }
    return $.ajax({url: '/__emu__/disposable-token', method: 'POST', contentType: 'application/json',
                   data: JSON.stringify(body), dataType: 'json'});
  }
  var base = {
    i18n: function (key) { return key ? CONFIG.i18n[key] : CONFIG.i18n; },
    system: function () {
      return {area: 'ccard', amouser_id: CONFIG.user_id, amouser: user.name, subdomain: CONFIG.subdomain,
              domain: CONFIG.account};
    },
    get_settings: function () {
      return {widget_code: 'vpbx', path: CONFIG.files, images_path: CONFIG.files + '/images',
              lang: CONFIG.lang, active: 'Y'};
    },
    render_template: function (params) { return (params && params.body) || ''; },
    add_action: function (name, fn) { emu.actions[name] = fn; record('add_action', name); },
    crm_post: function (url, data, cb) { return $.post(url, data, cb); },
    $authorizedAjax: function (opts) {
      var d = $.Deferred();
      var entry = {method: opts.type || opts.method || 'GET', url: opts.url, headers: opts.headers || {},
                   body: opts.data || null, status: null, answer: null};
      emu.requests.push(entry);
      token(opts).done(function (tok) {
        var raw = typeof tok === 'string' ? tok : (tok.token || tok.access_token || tok.jwt);
        var headers = $.extend({}, opts.headers || {}, {'X-Auth-Token': raw});
        $.ajax($.extend({}, opts, {headers: headers}))
          .done(function (data, status, xhr) {
            entry.status = xhr.status; entry.answer = data === undefined ? null : data;
            d.resolve(data, status, xhr);
          })
          .fail(function (xhr, status, err) {
            entry.status = xhr.status; entry.answer = xhr.responseJSON || xhr.responseText || null;
            d.reject(xhr, status, err);
          });
      }).fail(function (xhr, status, err) { entry.status = -1; d.reject(xhr, status, err); });
      return d.promise();
    }
  };
  var phone = document.getElementById('emu-phone');
  phone.textContent = CONFIG.phone;
  document.getElementById('emu-card-ref').textContent = CONFIG.card.type + ':' + CONFIG.card.id;
  if (CONFIG.card_name) { document.getElementById('emu-card-name').textContent = CONFIG.card_name; }
  phone.addEventListener('click', function (ev) {
    ev.preventDefault();
    var fn = emu.actions.phone;
    if (fn) { fn({value: CONFIG.phone, element: phone}); } else { emu.errors.push('no phone action'); }
  });
  window.__emuBoot = function () {
    var Widget = anonymous.pop();
    if (typeof Widget !== 'function') { emu.errors.push('the widget defined no module'); return; }
    var instance = Object.create(base);
    Widget.call(instance);
    emu.widget = instance;
    var cb = instance.callbacks;
    cb.init(); cb.render(); cb.bind_actions();
    cb.settings($('#vpbx-widget-settings'));
    emu.ready = true;
  };
})();
</script>
<script src="__SCRIPT__" onload="window.__emuBoot()"></script>
</body></html>
"""
