"""Catalog tables of the HTTP API: API tokens (hashed) and the alarms received over HTTP.

The alarm itself lives in the ``images`` repo; ``api_alarms`` keeps what the repo does not: when it
was received (for end-to-end latency), by which token, the site and the caller's metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmsieve.notify.ledger import UTCDateTime
from alarmsieve.pfs.db import Base


def now() -> datetime:
    return datetime.now(UTC)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public part of the token
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # camera | operator
    camera: Mapped[str | None] = mapped_column(String(200), nullable=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiAlarm(Base):
    __tablename__ = "api_alarms"

    id: Mapped[str] = mapped_column(String(500), primary_key=True)  # <camera>/<name> = images path without "/"
    camera: Mapped[str] = mapped_column(String(200), index=True)
    site: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=now)
    token_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    commit_id: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    attempt_count: Mapped[int] = mapped_column(Integer, default=1)
