"""The scenario document (amocrm.md §3.4, F6–F12): validated with pydantic, stored as JSON in
``AmoScenario.document`` (``smart_routing`` and ``events``; name, activity, position and lines have columns).

Checks against amoCRM's metadata (pipelines, statuses, field ids: E2/E3) are made by the widget API on save;
this module checks only the document's own shape. Unknown keys are refused, so a typo never silently turns
an option off.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TEMPLATE_MAX = 255
Direction = Literal["incoming", "outgoing", "missed", "failed_outgoing"]
ClientKind = Literal["new", "existing"]
DIRECTIONS: tuple[Direction, ...] = ("incoming", "outgoing", "missed", "failed_outgoing")
TEMPLATE_VARIABLES = ("$(phone)", "$(line)", "$(ext)", "$(date)", "$(time)")


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Responsible(_Doc):
    """Who gets an entity (F11's table): answered, contact, user (+user_id), group (+group_id), fallback."""

    rule: Literal["answered", "contact", "user", "group", "fallback"] = "answered"
    user_id: int | None = None
    group_id: int | None = None

    @model_validator(mode="after")
    def _target(self) -> Responsible:
        if self.rule == "user" and self.user_id is None:
            raise ValueError("user_id is required for the rule 'user'")
        if self.rule == "group" and self.group_id is None:
            raise ValueError("group_id is required for the rule 'group'")
        return self


class FieldValue(_Doc):
    """An extra field: by ``field_id``; a text value (templates allowed) or a select's ``enum_id``."""

    field_id: int
    value: str | int | bool | None = None
    enum_id: int | None = None

    @model_validator(mode="after")
    def _one(self) -> FieldValue:
        if (self.value is None) == (self.enum_id is None):
            raise ValueError("give exactly one of value and enum_id")
        return self


Tags = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=20)]
Fields = Annotated[list[FieldValue], Field(max_length=40)]


class Deadline(_Doc):
    kind: Literal["minutes", "end_of_day"] = "minutes"
    minutes: int = Field(default=60, ge=1, le=60 * 24 * 30)


class ContactOptions(_Doc):
    enabled: bool = False
    name_template: str = Field(default="Новый клиент $(phone)", min_length=1, max_length=TEMPLATE_MAX)
    tags: Tags = []
    fields: Fields = []
    responsible: Responsible = Responsible()


class TaskOptions(_Doc):
    enabled: bool = False
    text: str = Field(default="Перезвонить $(phone)", min_length=1, max_length=TEMPLATE_MAX)
    responsible: Responsible = Responsible()
    deadline: Deadline = Deadline()
    task_type_id: int = 1


class LeadOptions(_Doc):
    enabled: bool = False
    target: Literal["deal", "unsorted"] = "deal"  # «Неразобранное» (E19) instead of a deal (ours)
    name_template: str = Field(default="Звонок $(phone)", min_length=1, max_length=TEMPLATE_MAX)
    pipeline_id: int | None = None  # None: the account's main pipeline
    status_id: int | None = None  # None: the pipeline's first status
    tags: Tags = []
    fields: Fields = []
    responsible: Responsible = Responsible()
    skip_if_active_lead: bool = True  # existing clients only (F12)


class NewClient(_Doc):
    enabled: bool = False
    update_responsible_on_transfer: bool = True
    contact: ContactOptions = ContactOptions()
    task: TaskOptions = TaskOptions()
    lead: LeadOptions = LeadOptions()


class ExistingClient(_Doc):
    enabled: bool = False
    task: TaskOptions = TaskOptions()
    lead: LeadOptions = LeadOptions()


class EventTab(_Doc):
    """One of «Входящие», «Исходящие», «Пропущенные», «Неудачные исходящие» (F10)."""

    new: NewClient = NewClient()
    existing: ExistingClient = ExistingClient()


class Events(_Doc):
    incoming: EventTab = EventTab()
    outgoing: EventTab = EventTab()
    missed: EventTab = EventTab()
    failed_outgoing: EventTab = EventTab()

    def tab(self, direction: Direction) -> EventTab:
        tab: EventTab = getattr(self, direction)
        return tab


class SmartRouting(_Doc):
    """«Интеллектуальный менеджер контактов» (F9) and its «Исключения» (amoCRM user ids)."""

    enabled: bool = False
    excluded_user_ids: Annotated[list[int], Field(max_length=500)] = []


class ScenarioDocument(_Doc):
    """What ``AmoScenario.document`` holds."""

    smart_routing: SmartRouting = SmartRouting()
    events: Events = Events()


class Scenario(_Doc):
    """The widget's full scenario (§3.4's JSON): the document plus the columns and the lines."""

    id: int | None = None
    name: str = Field(min_length=1, max_length=64)
    is_active: bool = True
    position: int = Field(default=0, ge=0, le=10_000)
    lines: Annotated[list[Annotated[str, Field(max_length=20)]], Field(max_length=500)] = []
    smart_routing: SmartRouting = SmartRouting()
    events: Events = Events()

    def document(self) -> ScenarioDocument:
        return ScenarioDocument(smart_routing=self.smart_routing, events=self.events)


NEW_SCENARIO_NAME = "Новый сценарий"  # F6 «+»
COPY_SUFFIX = " (копия)"  # F6 copy
