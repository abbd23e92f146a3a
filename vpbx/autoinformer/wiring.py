"""Builds the autoinformer's dispatcher for ``vpbx serve`` from the core, the engine's dialer and the live
calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from vpbx.autoinformer.dispatcher import Dispatcher
from vpbx.autoinformer.render import render_contact, render_keys
from vpbx.store.models import AiCampaign, AiContact, DomainId

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from vpbx.app import Core
    from vpbx.pbx.broadcast import BroadcastDialer
    from vpbx.pbx.calls import CallRegistry


def build_dispatcher(
    core: Core,
    dialer: BroadcastDialer,
    calls: CallRegistry,
    trunk_room: Callable[[uuid.UUID], int] | None = None,
) -> Dispatcher:
    holder: list[Dispatcher] = []

    async def render(s: AsyncSession, campaign: AiCampaign, contact: AiContact) -> str | None:
        """The contact's message as one prompt of the core's store (rendered now or from the cache)."""
        return await render_contact(s, core.prompts, campaign, contact)

    async def keys(s: AsyncSession, campaign: AiCampaign, contact: AiContact) -> dict[str, str] | None:
        """The TTS segments of the campaign's keys for the contact (each rendered once, then cached)."""
        return await render_keys(s, core.prompts, campaign, contact)

    def busy_channels(domain_id: uuid.UUID) -> int:
        """The domain's calls in progress other than the dispatcher's own (those it counts itself)."""
        own = holder[0].sessions_in_flight if holder else frozenset()
        return sum(1 for c in calls.snapshot(DomainId(domain_id)) if c.session_id not in own)

    dispatcher = Dispatcher(
        core.sessions,
        dialer,
        render,
        core.clock,
        core.settings.node_id,
        busy_channels,
        trunk_room=trunk_room,
        render_keys=keys,
    )
    holder.append(dispatcher)
    return dispatcher
