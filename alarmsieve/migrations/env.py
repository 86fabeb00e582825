"""Alembic environment: migrates the connection handed in by ``alarmsieve.migrations.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

import alarmsieve.notify.ledger
import alarmsieve.pfs.tables
import alarmsieve.pps.tables  # noqa: F401  (registers the tables on Base.metadata)
from alarmsieve.pfs.db import Base

target_metadata = Base.metadata
config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # plain `alembic` command line use
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
