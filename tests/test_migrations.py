"""The Alembic history builds exactly the schema the models declare (no drift between the two)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import alarmsieve.api.tables
import alarmsieve.notify.grouping
import alarmsieve.notify.ledger
import alarmsieve.pfs.tables
import alarmsieve.pps.tables  # noqa: F401  (every layer's tables on Base.metadata)
from alarmsieve.migrations import known_heads, upgrade
from alarmsieve.pfs.db import Base, get_engine


def test_migrations_build_the_schema_the_models_declare(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    upgrade(url)
    with get_engine(url).connect() as conn:
        heads = set(MigrationContext.configure(conn).get_current_heads())
        drift = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert heads == set(known_heads())
    assert drift == [], f"models and migrations differ; add a migration for: {drift}"
