"""Cabinet pages, one module per section; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from vpbx.web.pages import desktop, users

ROUTERS: list[APIRouter] = [desktop.router, users.router]
