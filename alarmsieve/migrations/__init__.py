"""Catalog schema migrations (Alembic). ``upgrade(url)`` brings any catalog to the current schema.

Layers add their own revisions; several may branch from the same parent (one head per layer), so
the upgrade target is every head.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text

from alarmsieve.pfs.db import get_engine

if TYPE_CHECKING:
    from alembic.config import Config

HERE = Path(__file__).resolve().parent
_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:"([^"]*)"|None)', re.MULTILINE)


@cache
def known_heads() -> frozenset[str]:
    """The head revisions, read from the revision files without importing Alembic (CLI start-up time)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (HERE / "versions").glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text()):
            if value:
                (revisions if kind == "revision" else parents).add(value)
    return frozenset(revisions - parents)


def _current_heads(url: str) -> set[str] | None:
    try:
        with get_engine(url).connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    except Exception:  # no catalog yet (no alembic_version table): let Alembic create it
        return None


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str) -> None:
    """Apply pending migrations; a cheap no-op (one query, no Alembic import) when the catalog is current."""
    if _current_heads(url) == set(known_heads()):
        return
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

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
