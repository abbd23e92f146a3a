"""One object per process and ``Core``: the amoCRM features share their client pool, phone lookup, deal cache
and pop-up hub this way, so the routing hook, the widget routes, the jobs and the pop-ups see one limiter, one
set of failure counters and one cache per account.

Keyed by ``id(core)`` with the core kept beside it (``Core`` is an unhashable dataclass, and a new core that
reuses a dead one's id must not get the dead one's object).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerCore(Generic[T]):
    """One ``T`` per core: ``get`` makes it on first use, ``pop`` drops it (the caller closes it)."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[Any, T]] = {}

    def get(self, core: Any, make: Callable[[], T]) -> T:
        entry = self._entries.get(id(core))
        if entry is None or entry[0] is not core:
            entry = self._entries[id(core)] = (core, make())
        return entry[1]

    def pop(self, core: Any) -> T | None:
        entry = self._entries.pop(id(core), None)
        return entry[1] if entry is not None and entry[0] is core else None
