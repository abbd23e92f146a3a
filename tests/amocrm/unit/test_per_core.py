"""The per-core registry the amoCRM features share their pool, lookup, deal cache and pop-up hub through."""

from __future__ import annotations

from vpbx.amocrm.per_core import PerCore


class _Core:
    """Stands for ``Core``: an object compared by identity."""


def test_one_object_per_core_made_once() -> None:
    reg: PerCore[list[int]] = PerCore()
    a, b = _Core(), _Core()
    made: list[object] = []

    def make() -> list[int]:
        made.append(1)
        return []

    first = reg.get(a, make)
    assert reg.get(a, make) is first
    assert reg.get(b, make) is not first
    assert len(made) == 2


def test_pop_drops_it_and_only_for_that_core() -> None:
    reg: PerCore[list[int]] = PerCore()
    a = _Core()
    first = reg.get(a, list)
    assert reg.pop(_Core()) is None
    assert reg.pop(a) is first
    assert reg.pop(a) is None
    assert reg.get(a, list) is not first
