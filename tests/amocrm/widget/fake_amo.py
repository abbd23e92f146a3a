"""A small in-test stand-in for amoCRM's metadata endpoints (E1–E3, account), in amoCRM's answer shapes;
the HTTP tests against the emulator use the real client instead."""

from __future__ import annotations

from typing import Any

from vpbx.amocrm.errors import AmoServerError

Json = dict[str, Any]

ACCOUNTS: dict[int, Json] = {
    30000001: {
        "users": [(5001, "Иван Петров", True), (5002, "Мария Сидорова", True), (5003, "Пётр Орлов", True)],
        "groups": [(0, "Отдел продаж")],
        "pipelines": [(7000, "Воронка", False, [7001, 7002]), (7100, "Архив", True, [7101])],
        "contact_fields": [(101, "PHONE", []), (103, "POSITION", []), (104, "Комментарий", [])],
        "lead_fields": [(201, "Источник", [2011])],
    },
    30000002: {
        "users": [(6001, "Admin B", True)],
        "groups": [],
        "pipelines": [(7500, "Воронка B", False, [7501])],
        "contact_fields": [],
        "lead_fields": [],
    },
}


class FakeAmo:
    def __init__(self, account_id: int, owner: FakeClients) -> None:
        self.data = ACCOUNTS[account_id]
        self.owner = owner

    def _hit(self, what: str) -> None:
        self.owner.calls.append(what)
        if self.owner.down:
            raise AmoServerError("down")

    async def account(self) -> Json:
        self._hit("account")
        return {
            "_embedded": {
                "users_groups": [{"id": i, "name": n} for i, n in self.data["groups"]],
                "task_types": [{"id": 1, "name": "Связаться"}, {"id": 2, "name": "Встреча"}],
            }
        }

    async def users(self) -> list[Json]:
        self._hit("users")
        return [{"id": i, "name": n, "rights": {"is_active": a}} for i, n, a in self.data["users"]]

    async def pipelines(self) -> list[Json]:
        self._hit("pipelines")
        return [
            {
                "id": pid,
                "name": name,
                "is_archive": archived,
                "_embedded": {"statuses": [{"id": st, "name": f"s{st}", "type": 0} for st in statuses]},
            }
            for pid, name, archived, statuses in self.data["pipelines"]
        ]

    async def custom_fields(self, entity: str) -> list[Json]:
        self._hit(f"{entity}_fields")
        return [
            {"id": i, "name": n, "type": "text", "enums": [{"id": e, "value": str(e)} for e in enums]}
            for i, n, enums in self.data[f"{entity[:-1]}_fields"]
        ]


class FakeClients:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.down = False
        self.accounts: list[int] = []

    def for_account(self, amo_account_id: int) -> Any:
        self.accounts.append(amo_account_id)
        return FakeAmo(amo_account_id, self)
