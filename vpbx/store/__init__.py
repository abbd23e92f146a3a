"""Storage: SQLAlchemy 2 models, engines and Alembic migrations."""

from __future__ import annotations

from vpbx.store.db import create_engine, session_factory
from vpbx.store.migrate import downgrade, downgrade_async, upgrade, upgrade_async

__all__ = ["create_engine", "downgrade", "downgrade_async", "session_factory", "upgrade", "upgrade_async"]
