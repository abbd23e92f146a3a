"""Cabinet pages, one module per section; ``ROUTERS`` is what the app mounts."""

from __future__ import annotations

from fastapi import APIRouter

from vpbx.web.pages import (
    ai_lists,
    ai_report,
    api,
    autoinformer,
    calls,
    desktop,
    devices,
    groups,
    history,
    integrations,
    menus,
    numbers,
    operator,
    recordings,
    routing,
    schedules,
    services,
    stats,
    trunks,
    users,
    voicemail,
)

ROUTERS: list[APIRouter] = [
    desktop.router,
    users.router,
    numbers.router,
    groups.router,
    menus.router,
    schedules.router,
    routing.router,
    services.router,
    operator.router,
    calls.router,
    devices.router,
    trunks.router,
    history.router,
    stats.router,
    voicemail.router,
    recordings.router,
    api.router,
    autoinformer.router,
    ai_report.router,
    ai_report.links,  # the report e-mail's signed download links: no session
    ai_lists.router,
    integrations.router,
]
