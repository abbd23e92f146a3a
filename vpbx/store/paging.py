"""One page of a list query, with its total."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")
PER_PAGE = 20


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: Sequence[T]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


async def paginate(s: AsyncSession, stmt: Select[T], page: int, per_page: int = PER_PAGE) -> Page[T]:
    total_stmt: Select[Any] = select(func.count()).select_from(stmt.order_by(None).subquery())
    total = int(await s.scalar(total_stmt) or 0)
    page = max(1, min(page, max(1, -(-total // per_page))))
    rows = (await s.scalars(stmt.limit(per_page).offset((page - 1) * per_page))).all()
    return Page(items=rows, total=total, page=page, per_page=per_page)


def like_pattern(q: str) -> str:
    """A LIKE pattern matching ``q`` anywhere, with the wildcards in ``q`` escaped (escape char ``\\``)."""
    esc = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{esc}%"
