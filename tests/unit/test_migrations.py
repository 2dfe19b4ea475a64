"""The alembic migrations produce exactly the schema the models describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from provisioner.db.engine import get_engine
from provisioner.paths import Paths


def test_migrated_schema_matches_models(paths: Paths) -> None:
    engine = get_engine(paths.db_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == []


def test_sqlite_database_uses_wal(paths: Paths) -> None:
    if not paths.db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL run: WAL is SQLite's")
    engine = get_engine(paths.db_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
