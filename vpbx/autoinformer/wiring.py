"""Builds the autoinformer's dispatcher for ``vpbx serve`` from the core, the engine's dialer and the live
calls."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.dispatcher import Dispatcher, RenderFn
from vpbx.logs import get_logger
from vpbx.store.models import AiCampaign, AiContact, DomainId

if TYPE_CHECKING:
    import uuid

    from vpbx.app import Core
    from vpbx.pbx.broadcast import BroadcastDialer
    from vpbx.pbx.calls import CallRegistry

log = get_logger("vpbx.autoinformer.wiring")


def _renderer(core: Core) -> RenderFn | None:
    """The message renderer (``vpbx.autoinformer.render.render_contact`` over the core's prompt store), or
    None while this build has none."""
    try:
        module: Any = importlib.import_module("vpbx.autoinformer.render")
    except ImportError:
        return None
    render_contact = module.render_contact

    async def render(s: AsyncSession, campaign: AiCampaign, contact: AiContact) -> str | None:
        prompt_id: str | None = await render_contact(s, core.prompts, campaign, contact)
        return prompt_id

    return render


def build_dispatcher(core: Core, dialer: BroadcastDialer, calls: CallRegistry) -> Dispatcher | None:
    """The dispatcher, or None when there is nothing to render messages with."""
    render = _renderer(core)
    if render is None:
        log.warning("autoinformer.dispatcher_off", reason="no message renderer")
        return None
    holder: list[Dispatcher] = []

    def busy_channels(domain_id: uuid.UUID) -> int:
        """The domain's calls in progress other than the dispatcher's own (those it counts itself)."""
        own = holder[0].sessions_in_flight if holder else frozenset()
        return sum(1 for c in calls.snapshot(DomainId(domain_id)) if c.session_id not in own)

    dispatcher = Dispatcher(core.sessions, dialer, render, core.clock, core.settings.node_id, busy_channels)
    holder.append(dispatcher)
    return dispatcher
