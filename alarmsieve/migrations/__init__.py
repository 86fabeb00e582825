"""Catalog schema migrations (Alembic). ``upgrade(url)`` brings any catalog to the current schema.

Layers add their own revisions; several may branch from the same parent (one head per layer), so
the upgrade target is every head.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alarmsieve.pfs.db import get_engine

HERE = Path(__file__).resolve().parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply pending migrations; a cheap no-op when the catalog is current."""
    cfg = alembic_config(url)
    heads = set(ScriptDirectory.from_config(cfg).get_heads())
    engine = get_engine(url)
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == heads:
        return
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
