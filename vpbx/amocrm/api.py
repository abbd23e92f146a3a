"""What the rest of ``vpbx.amocrm`` may ask of amoCRM (amocrm.md §2.3): one method per endpoint we use.

``vpbx.amocrm.client.AmoClient`` implements it over HTTP (limiter, tokens, error tree of
``vpbx.amocrm.errors``); results are amoCRM's JSON objects as plain dicts (§2.3's "read" fields),
a 204 is an empty list or None. ``lane`` picks the limiter's lane: ``realtime`` (routing lookups, pop-up data;
skipped with ``AmoSkipped`` when no token is free before ``deadline``, a loop time) goes before
``background`` (jobs, metadata). Writes are never retried by the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

Lane = Literal["realtime", "background"]
Json = dict[str, Any]
NoteEntity = Literal["contacts", "leads"]


class AmoApi(Protocol):
    # --- metadata (background, cached by the callers) ---------------------------------------------------
    async def account(self) -> Json:
        """E: ``GET /api/v4/account?with=users_groups,task_types,datetime_settings``."""
        ...

    async def users(self) -> list[Json]:
        """E1, every page."""
        ...

    async def pipelines(self) -> list[Json]:
        """E2 (statuses embedded)."""
        ...

    async def custom_fields(self, entity: Literal["contacts", "leads"]) -> list[Json]:
        """E3, every page."""
        ...

    # --- reads ------------------------------------------------------------------------------------------
    async def search_contacts(
        self, query: str, *, lane: Lane = "background", deadline: float | None = None
    ) -> list[Json]:
        """E4 ``GET /api/v4/contacts?query=…&with=leads&limit=50`` (first page; the caller post-filters)."""
        ...

    async def get_contact(
        self, contact_id: int, *, lane: Lane = "background", deadline: float | None = None
    ) -> Json | None:
        """E5 with leads; None for 204 (deleted or unknown)."""
        ...

    async def get_leads(
        self, ids: Sequence[int], *, lane: Lane = "background", deadline: float | None = None
    ) -> list[Json]:
        """E6 ``filter[id][]``."""
        ...

    async def list_tasks(
        self, *, entity_type: str, entity_ids: Sequence[int], is_completed: bool | None = False
    ) -> list[Json]:
        """E12."""
        ...

    async def list_notes(
        self, entity: NoteEntity, entity_id: int, note_types: Sequence[str] = ("call_in", "call_out")
    ) -> list[Json]:
        """E14."""
        ...

    # --- writes (batches are lists; each item may carry ``request_id``) ------------------------------------
    async def create_contacts(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E7 → ``_embedded.contacts``."""
        ...

    async def update_contact(self, contact_id: int, fields: Mapping[str, Any]) -> Json:
        """E8."""
        ...

    async def update_lead(self, lead_id: int, fields: Mapping[str, Any]) -> Json:
        """E8."""
        ...

    async def create_leads(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E9 → ``_embedded.leads``."""
        ...

    async def create_complex(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E10 → the top-level array."""
        ...

    async def add_unsorted_sip(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E19 → ``_embedded.unsorted``."""
        ...

    async def create_tasks(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E11 → ``_embedded.tasks``."""
        ...

    async def add_notes(self, entity: NoteEntity, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E13 → ``_embedded.notes``."""
        ...

    async def update_note(self, entity: NoteEntity, note_id: int, fields: Mapping[str, Any]) -> Json:
        """E13b ``PATCH /api/v4/{entity}/notes/{id}`` (one object; a call note's ``params`` go as a whole) →
        ``id``, ``entity_id``, ``updated_at``; ``AmoEntityNotFound`` when the note (or its card) is gone."""
        ...

    async def add_calls(self, items: Sequence[Mapping[str, Any]]) -> list[Json]:
        """E15 → ``_embedded.calls``; ``AmoEntityNotFound`` when no card has the number."""
        ...

    async def add_events_v2(self, items: Sequence[Mapping[str, Any]]) -> None:
        """E16 ``POST /api/v2/events`` ``{"add": items}`` (the server pop-up)."""
        ...

    async def subscribe_webhook(self, destination: str, settings: Sequence[str]) -> Json:
        """E17 ``POST /api/v4/webhooks``."""
        ...

    async def unsubscribe_webhook(self, destination: str) -> None:
        """E17 ``DELETE /api/v4/webhooks``."""
        ...


class AmoClients(Protocol):
    """One client per amoCRM account (its limiter and token lock are per account, §2.5)."""

    def for_account(self, amo_account_id: int) -> AmoApi: ...
