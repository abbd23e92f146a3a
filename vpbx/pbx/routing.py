"""Routing rules of incoming numbers (being built)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession


async def assert_no_loops(s: AsyncSession, domain_id: uuid.UUID) -> None:
    """Raise ``ValidationFailed`` when the domain's rules and group fall-throughs form a loop (to be built)."""
