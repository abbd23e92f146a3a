"""Cabinet sections behind a service switch («Интеграционный API», «Автоинформатор»): while the service is
off for the session's domain, a dependency raises ``ServiceOff`` and the section's ``SectionRoute`` answers
with the page that says where to switch it on, so each route is only what it does."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from vpbx.web.render import Renderer

OffPage = Callable[[Request, Renderer], Response]


class ServiceOff(Exception):
    """The section's service is off for the session's domain; ``page`` renders the section's «off» page."""

    def __init__(self, page: OffPage) -> None:
        super().__init__()
        self.page = page


class SectionRoute(APIRoute):
    """A route of a section: ``ServiceOff`` from its dependencies answers with that section's «off» page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handle(request)
            except ServiceOff as off:
                return off.page(request, request.app.state.renderer)

        return route
