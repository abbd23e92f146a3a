"""Migrations upgrade from empty, downgrade cleanly and leave the schema of the models (both databases)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from vpbx import store
from vpbx.store.migrate import alembic_config
from vpbx.store.models import Base

MODEL_TABLES = set(Base.metadata.tables)


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _leftovers(conn: Connection) -> list[str]:
    """Indexes, views, sequences and types that a downgrade forgot, besides tables."""
    found = [f"view {v}" for v in inspect(conn).get_view_names()]
    if conn.dialect.name == "sqlite":
        rows = conn.execute(
            text("SELECT type, name FROM sqlite_master WHERE type != 'table' AND name NOT LIKE 'sqlite_%'")
        )
        found += [f"{kind} {name}" for kind, name in rows]
    else:
        rows = conn.execute(
            text(
                "SELECT c.relkind::text, c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%' "
                "UNION ALL SELECT 'type', t.typname FROM pg_type t "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0"
            )
        )
        found += [f"{kind} {name}" for kind, name in rows]
    return found


def _version(conn: Connection) -> list[str]:
    return [r[0] for r in conn.execute(text("SELECT version_num FROM alembic_version"))]


def _schema_diff(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(ctx, Base.metadata))


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite://"))
    assert len(script.get_heads()) == 1
    assert len(script.get_bases()) == 1


async def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    engine = store.create_engine(empty_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()

        await store.upgrade_async(empty_url)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == MODEL_TABLES | {"alembic_version"}
            assert await conn.run_sync(_version) == [_head(empty_url)]

        await store.downgrade_async(empty_url, "base")
        async with engine.connect() as conn:
            # Alembic keeps its (now empty) version table; everything of ours is gone.
            assert await conn.run_sync(_tables) <= {"alembic_version"}
            assert await conn.run_sync(_leftovers) == []
            if await conn.run_sync(_tables):
                assert await conn.run_sync(_version) == []

        await store.upgrade_async(empty_url)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) == MODEL_TABLES | {"alembic_version"}
            assert await conn.run_sync(_version) == [_head(empty_url)]
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()


async def test_upgrade_is_idempotent(migrated_url: str) -> None:
    await store.upgrade_async(migrated_url)
    engine = store.create_engine(migrated_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_version) == [_head(migrated_url)]
    finally:
        await engine.dispose()


async def test_schema_matches_models(migrated_url: str) -> None:
    engine = store.create_engine(migrated_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()
