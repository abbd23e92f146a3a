"""The amoCRM emulator (amocrm.md §4): a FastAPI app with in-memory state and deterministic ids that answers
like amoCRM's API v4 for every endpoint the integration uses. Tests talk to it over real HTTP
(``tests/amocrm/emu_kit.py``), and the demo points its domain at it (``vpbx amocrm emulator``).

Modules: ``world`` (state, clock, ids), ``entities`` (writes and their validation), ``matcher`` (phone
search), ``oauth`` (codes, tokens, hook signature, widget tokens), ``http`` (amoCRM's routes), ``control``
(``/__emu__``), ``asgi`` (addressing, limits, faults, log), ``config`` (switches), ``wiring`` (build, serve).
"""

from __future__ import annotations

from vpbx.amocrm.emulator.config import DEMO_FIXTURE_PATH, Switches, read_fixture
from vpbx.amocrm.emulator.oauth import hook_signature
from vpbx.amocrm.emulator.wiring import build_app, make_world, serve
from vpbx.amocrm.emulator.world import World

__all__ = [
    "DEMO_FIXTURE_PATH",
    "Switches",
    "World",
    "build_app",
    "hook_signature",
    "make_world",
    "read_fixture",
    "serve",
]
