"""The notification ledger: one row per idempotency key makes delivery exactly-once (outbox pattern).

Flow of :meth:`NotificationLedger.deliver_once`: insert-or-get the row by key; a ``sent`` row returns
without touching the channel; otherwise claim an attempt (attempts+1, state pending) and COMMIT before
sending, then record ``sent`` with the provider id. A crash between those two commits leaves a
``pending`` row that the next call sends again. That is safe for :class:`OutboxChannel` (idempotent by
file name); providers without an idempotency key (SendGrid) may then deliver twice — they need a
delivery check against the provider before resending (future issue).

Concurrent calls for one key: threads of one process are serialised by a per-key lock; across
processes the attempts compare-and-set stops two workers that read the same row from both sending,
but a worker that reads the row after another's claim cannot tell "in flight" from "crashed" and sends
again (at-least-once there; a lease column would close it, at the price of delaying crash recovery).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmsieve.notify.channels import Channel, DeliveryError
from alarmsieve.notify.message import AlarmNotification
from alarmsieve.pfs.db import Base, get_engine

State = Literal["pending", "sent", "failed"]
STATES: tuple[str, ...] = ("pending", "sent", "failed")
MAX_BACKOFF_S = 60.0  # cap on one wait, whatever Retry-After says: a worker must not stall for hours


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that always gives back aware UTC (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


_key_locks: dict[tuple[str, str], list[Any]] = {}  # (url, key) -> [lock, users]
_key_locks_guard = threading.Lock()


@contextmanager
def _key_lock(url: str, key: str) -> Iterator[None]:
    """Serialise deliveries of one key within this process; entries are dropped when unused."""
    with _key_locks_guard:
        entry = _key_locks.setdefault((url, key), [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _key_locks_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _key_locks[(url, key)]


class NotificationRecord(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'sent', 'failed')", name="state"),
        Index("ix_notifications_recipient_created_at", "recipient", "created_at"),
        Index("ix_notifications_state", "state"),
        Index("ix_notifications_sent_at", "sent_at"),  # /metrics reads the deliveries since its last look
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    channel: Mapped[str] = mapped_column(String(50))
    recipient: Mapped[str] = mapped_column(String(1000))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    provider_id: Mapped[str | None] = mapped_column(String(500), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # 0002_notify: routing, grouping and the dead-letter list.
    camera: Mapped[str | None] = mapped_column(String(200), nullable=True)
    incident_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    dead: Mapped[bool] = mapped_column(Boolean, default=False)  # permanent failure: only a command retries it
    first_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:
        return f"NotificationRecord(key={self.key!r}, state={self.state!r}, attempts={self.attempts})"


class NotificationPayload(Base):
    """The message of a delivery (AlarmNotification JSON), kept so that a dead letter can be retried."""

    __tablename__ = "notify_payloads"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    body: Mapped[str] = mapped_column(Text)


class LedgerSummary(BaseModel):
    """Counts for ``alarmsieve status``: ``dead_letter`` are permanent failures waiting for a retry command."""

    pending: int = 0
    sent: int = 0
    failed: int = 0
    dead_letter: int = 0
    oldest_pending_at: datetime | None = None


class DeliveryOutcome(BaseModel):
    key: str
    state: State
    provider_id: str | None
    attempts: int  # all attempts recorded for this key, across calls
    already_sent: bool
    last_error: str | None = None
    dead: bool = False  # a permanent failure on the dead-letter list


class NotificationLedger:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _get_or_create(self, channel: Channel, key: str, n: AlarmNotification | None = None) -> NotificationRecord:
        with self._session() as s:
            row = s.scalars(select(NotificationRecord).where(NotificationRecord.key == key)).one_or_none()
            if row is not None:
                return row
            row = NotificationRecord(
                key=key,
                channel=channel.name,
                recipient=getattr(channel, "recipient", ""),
                state="pending",
                attempts=0,
                camera=n.camera if n else None,
                incident_id=n.incident_id if n else None,
                kind=n.kind if n else None,
                dead=False,
            )
            s.add(row)
            if n is not None and s.get(NotificationPayload, key) is None:
                s.add(NotificationPayload(key=key, body=n.model_dump_json()))
            try:
                s.commit()
                return row
            except IntegrityError:
                # Another worker inserted the same key between our select and insert: use its row.
                s.rollback()
                return s.scalars(select(NotificationRecord).where(NotificationRecord.key == key)).one()

    def _claim(self, channel: Channel, row: NotificationRecord) -> bool:
        """attempts+1 as a compare-and-set, committed before sending; False when another worker won."""
        with self._session() as s:
            res = s.execute(
                update(NotificationRecord)
                .where(
                    NotificationRecord.id == row.id,
                    NotificationRecord.attempts == row.attempts,
                    NotificationRecord.state != "sent",
                )
                .values(
                    state="pending",
                    attempts=row.attempts + 1,
                    channel=channel.name,
                    recipient=getattr(channel, "recipient", ""),
                    updated_at=_now(),
                    last_attempt_at=_now(),
                    first_attempt_at=func.coalesce(NotificationRecord.first_attempt_at, _now()),
                )
            )
            s.commit()
            return res.rowcount == 1  # type: ignore[attr-defined]

    def _finish(self, row_id: int, **values: Any) -> NotificationRecord:
        with self._session() as s:
            s.execute(
                update(NotificationRecord).where(NotificationRecord.id == row_id).values(updated_at=_now(), **values)
            )
            s.commit()
            return s.get_one(NotificationRecord, row_id)

    def _load(self, key: str) -> NotificationRecord:
        with self._session() as s:
            return s.scalars(select(NotificationRecord).where(NotificationRecord.key == key)).one()

    @staticmethod
    def _outcome(row: NotificationRecord, *, already_sent: bool = False) -> DeliveryOutcome:
        return DeliveryOutcome(
            key=row.key,
            state=row.state,  # type: ignore[arg-type]
            provider_id=row.provider_id,
            attempts=row.attempts,
            already_sent=already_sent,
            last_error=row.last_error,
            dead=bool(row.dead),
        )

    def deliver_once(
        self,
        channel: Channel,
        n: AlarmNotification,
        *,
        max_attempts: int = 5,
        backoff: float = 0.5,
        retry_dead: bool = True,
    ) -> DeliveryOutcome:
        """Send ``n`` through ``channel`` unless its key was sent before.

        Retryable errors are retried up to ``max_attempts`` times in this call with exponential backoff
        and jitter (at least the provider's Retry-After); a permanent error or the last failed retry
        marks the row ``failed``; a permanent error also puts it on the dead-letter list (``dead``).
        A ``failed`` row is tried again by a later call, except a dead letter when ``retry_dead`` is
        False (the pipeline's setting: only ``alarmsieve retry notification`` resends those).

        A row left ``pending`` by an attempt that never reported (crash between "pending" and
        "sent") is first checked with :meth:`Channel.already_delivered` when the channel can ask its
        provider; a message that arrived is then marked sent without sending it again.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        with _key_lock(self.url, n.key):
            return self._deliver(channel, n, max_attempts, backoff, retry_dead)

    def _deliver(
        self, channel: Channel, n: AlarmNotification, max_attempts: int, backoff: float, retry_dead: bool
    ) -> DeliveryOutcome:
        row = self._get_or_create(channel, n.key, n)
        if row.state == "failed" and row.dead and not retry_dead:
            return self._outcome(row)
        if row.state == "pending" and row.attempts > 0:
            delivered = channel.already_delivered(n)
            if delivered is not None:
                row = self._finish(row.id, state="sent", provider_id=delivered, sent_at=_now(), last_error=None)
                return self._outcome(row)
        for attempt in range(1, max_attempts + 1):
            if row.state == "sent":
                return self._outcome(row, already_sent=True)
            if not self._claim(channel, row):
                # Lost the race to a concurrent worker: do not send a second copy; report what it did.
                row = self._load(n.key)
                return self._outcome(row, already_sent=row.state == "sent")
            try:
                provider_id = channel.send(n)
            except DeliveryError as exc:
                last = attempt == max_attempts or not exc.retryable
                error = (
                    exc.message if not last or not exc.retryable else f"gave up after {attempt} attempts: {exc.message}"
                )
                row = self._finish(
                    row.id,
                    state="failed" if last else "pending",
                    last_error=error[:4000],
                    dead=last and not exc.retryable,
                )
                if last:
                    return self._outcome(row)
                delay = backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
                time.sleep(min(max(delay, exc.retry_after or 0.0), MAX_BACKOFF_S))
                continue
            except Exception as exc:
                # A bug, not a delivery outcome: record it, keep the row pending, let it propagate.
                self._finish(row.id, last_error=f"{type(exc).__name__}: {exc}"[:4000])
                raise
            row = self._finish(
                row.id, state="sent", provider_id=provider_id, sent_at=_now(), last_error=None, dead=False
            )
            return self._outcome(row)
        raise AssertionError("unreachable")  # the loop always returns

    def get(self, key: str) -> NotificationRecord | None:
        with self._session() as s:
            return s.scalars(select(NotificationRecord).where(NotificationRecord.key == key)).one_or_none()

    def list(self, state: str | None = None) -> list[NotificationRecord]:
        """Rows, oldest first, optionally of one state."""
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; one of {', '.join(STATES)}")
        query = select(NotificationRecord).order_by(NotificationRecord.id)
        if state is not None:
            query = query.where(NotificationRecord.state == state)
        with self._session() as s:
            return list(s.scalars(query))

    def list_failed(self, *, dead_only: bool = False) -> list[NotificationRecord]:
        """Failed deliveries (``dead_only``: the dead-letter list), oldest first."""
        query = select(NotificationRecord).where(NotificationRecord.state == "failed").order_by(NotificationRecord.id)
        if dead_only:
            query = query.where(NotificationRecord.dead.is_(True))
        with self._session() as s:
            return list(s.scalars(query))

    def by_id(self, row_id: int) -> NotificationRecord | None:
        with self._session() as s:
            return s.get(NotificationRecord, row_id)

    def payload(self, key: str) -> AlarmNotification | None:
        """The message recorded for ``key`` (None for rows written before 0002_notify)."""
        with self._session() as s:
            row = s.get(NotificationPayload, key)
            return None if row is None else AlarmNotification.model_validate_json(row.body)

    def count_recent(self, channel: str, recipient: str, since: datetime, *, exclude_kinds: tuple[str, ...]) -> int:
        """Deliveries to ``recipient`` over ``channel`` recorded since ``since`` (for rate limits)."""
        query = select(func.count(NotificationRecord.id)).where(
            NotificationRecord.channel == channel,
            NotificationRecord.recipient == recipient,
            NotificationRecord.created_at >= since,
        )
        if exclude_kinds:
            query = query.where(
                (NotificationRecord.kind.is_(None)) | (NotificationRecord.kind.not_in(list(exclude_kinds)))
            )
        with self._session() as s:
            return int(s.scalar(query) or 0)

    def summary(self) -> LedgerSummary:
        """Counts by state and the dead-letter count, for ``alarmsieve status`` (one cheap query)."""
        query = select(
            NotificationRecord.state,
            NotificationRecord.dead,
            func.count(NotificationRecord.id),
            func.min(NotificationRecord.created_at),
        ).group_by(NotificationRecord.state, NotificationRecord.dead)
        out = LedgerSummary()
        with self._session() as s:
            for state, dead, count, oldest in s.execute(query):
                if state == "pending":
                    out.pending += count
                    if oldest is not None:
                        oldest = UTCDateTime().process_result_value(oldest, self.engine.dialect)
                        if out.oldest_pending_at is None or oldest < out.oldest_pending_at:
                            out.oldest_pending_at = oldest
                elif state == "sent":
                    out.sent += count
                else:
                    out.failed += count
                    if dead:
                        out.dead_letter += count
        return out
