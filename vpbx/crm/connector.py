"""The CRM connector interface (amocrm.md §7.1): what the call engine and the cabinet know of a CRM.

amoCRM (``vpbx.amocrm``) comes first; Bitrix24 (§7.2) fits behind the same protocol. The engine
never imports a CRM package: it asks the routing hook (``vpbx.pbx.b2bua.RoutingHook``) and publishes call
events; the connector turns them into CRM work through the durable job outbox (``CrmJob``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from vpbx.pbx.bus import CallEvent
    from vpbx.pbx.incoming import RoutingQuery
    from vpbx.store.models import CallRecord, CrmBinding

CAPABILITIES = frozenset({"route_hint", "popup", "click_to_call", "server_autocreate"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Binding:
    """A domain's link to one CRM account, as the features see it (a read-only copy of ``CrmBinding``)."""

    id: uuid.UUID
    domain_id: uuid.UUID
    kind: str  # "amocrm"
    account_id: int  # the CRM's account id
    base_domain: str  # e.g. demo.amocrm.ru
    active: bool
    fallback_user_id: int | None = None

    @classmethod
    def of(cls, row: CrmBinding) -> Binding:
        return cls(
            id=row.id,
            domain_id=row.domain_id,
            kind=row.crm_kind,
            account_id=row.external_account_id,
            base_domain=row.base_domain,
            active=row.status == "active",
            fallback_user_id=row.fallback_user_id,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CrmUser:
    """A CRM manager for the mapping UI (F7)."""

    id: int
    name: str
    is_active: bool = True
    is_admin: bool = False
    group_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteHint:
    """A connector's routing answer: ring ``pin`` (a user's extension), show ``display_name``; if the pin has
    not answered within ``overflow_after_s`` the call continues with the domain's rules (F9.5). ``step`` and
    ``why`` are for the call's log: which step decided (responsible, fallback, rules) and the reason."""

    pin: str | None
    display_name: str | None = None
    overflow_after_s: int = 20
    step: str = "responsible"
    why: str = ""


class CrmConnector(Protocol):
    kind: ClassVar[str]  # "amocrm", "bitrix24"
    capabilities: ClassVar[frozenset[str]]  # a subset of CAPABILITIES

    async def route_hint(self, b: Binding, call: RoutingQuery, deadline: float) -> RouteHint | None:
        """Before an incoming call is routed; ``deadline`` is the loop time by which to answer."""
        ...

    async def on_call_event(self, b: Binding, ev: CallEvent) -> None:
        """new / calling / connected / disconnected: update the call's context, push pop-ups."""
        ...

    async def on_call_finished(self, b: Binding, rec: CallRecord) -> None:
        """``end``: enqueue the durable jobs only (never talk to the CRM here)."""
        ...

    async def on_recording_ready(self, b: Binding, session_id: str, url: str) -> None: ...

    async def list_users(self, b: Binding) -> list[CrmUser]:
        """The CRM's managers, for the mapping UI."""
        ...

    async def disconnect(self, b: Binding, reason: str) -> None: ...
