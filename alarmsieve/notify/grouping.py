"""Incidents: alarms of one camera (or one site) close in time are one incident, not a flood.

:meth:`IncidentBook.assign` decides, once per alarm and for good, what the alarm is within its
incident; the decision is stored under the alarm's key, so a retried datum, a rerun or a reprocess
gets the same decision (and so the same delivery keys, which the ledger finds sent).

- ``new``: the first alarm of an incident (every channel is notified);
- ``escalation``: a higher severity or a label the incident had not seen (a person after a car):
  notified at once, whatever the update cooldown;
- ``update``: a later alarm, at most one per ``update_every_s`` of alarm time (e-mail gets a message
  with the new image);
- ``quiet``: a later alarm inside the cooldown: MQTT and webhooks get an update, e-mail nothing.

Times are the alarms' own times (EXIF / file name), not the processing time, so the grouping of a
burst is the same however fast or late it is processed. Concurrent workers are serialised per scope
by a row lock (an UPDATE of the scope's row first: SQLite's write lock, PostgreSQL's row lock).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Boolean, Integer, String, Text, false, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from alarmsieve.notify.config import Grouping
from alarmsieve.notify.ledger import UTCDateTime
from alarmsieve.pfs.db import Base, get_engine

Kind = Literal["new", "escalation", "update", "quiet"]
SEVERITY_RANK = {"review": 1, "alert": 2}


class NotifyScope(Base):
    __tablename__ = "notify_scopes"

    scope: Mapped[str] = mapped_column(String(250), primary_key=True)
    incident_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    touched: Mapped[int] = mapped_column(Integer, default=0)


class Incident(Base):
    __tablename__ = "notify_incidents"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(250), index=True)
    camera: Mapped[str] = mapped_column(String(200))
    site: Mapped[str | None] = mapped_column(String(200), nullable=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_update_at: Mapped[datetime] = mapped_column(UTCDateTime())
    severity: Mapped[int] = mapped_column(Integer)
    labels: Mapped[str] = mapped_column(Text)  # JSON list
    alarms: Mapped[int] = mapped_column(Integer)
    # Wall-clock time of the last alarm that joined: a replay of old alarms (alarm times long past)
    # keeps its incident open while alarms keep arriving.
    touched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_sent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AlarmAssignment(Base):
    __tablename__ = "notify_alarms"

    alarm_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    incident_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    alarms: Mapped[int] = mapped_column(Integer)
    ended_incident: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Suppressed(Base):
    """Deliveries decided not to be sent (rate limit), so that a reprocess does not send them later."""

    __tablename__ = "notify_suppressed"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


@dataclass(frozen=True)
class Assignment:
    incident_id: str
    kind: Kind
    alarms: int  # alarms in the incident when this one joined, itself included
    ended_incident: str | None  # the scope's previous incident, closed by this alarm opening a new one
    repeated: bool = False  # decided before (rerun / reprocess)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class IncidentBook:
    def __init__(self, url: str) -> None:
        self.engine = get_engine(url)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _ensure_scope(self, scope: str) -> None:
        with self._session() as s:
            if s.get(NotifyScope, scope) is not None:
                return
            s.add(NotifyScope(scope=scope, incident_id=None, touched=0))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()

    def assign(
        self,
        alarm_key: str,
        *,
        scope: str,
        camera: str,
        site: str | None,
        time: datetime,
        severity: str,
        labels: list[str],
        grouping: Grouping,
    ) -> Assignment:
        t = _utc(time)
        rank = SEVERITY_RANK.get(severity, 0)
        self._ensure_scope(scope)
        with self._session() as s:
            # The write comes first: it takes the lock that serialises deciders of this scope.
            s.execute(update(NotifyScope).where(NotifyScope.scope == scope).values(touched=NotifyScope.touched + 1))
            done = s.get(AlarmAssignment, alarm_key)
            if done is not None:
                s.rollback()
                return Assignment(done.incident_id, done.kind, done.alarms, done.ended_incident, repeated=True)  # type: ignore[arg-type]
            current_id = s.scalar(select(NotifyScope.incident_id).where(NotifyScope.scope == scope))
            incident = s.get(Incident, current_id) if current_id else None
            window = timedelta(seconds=grouping.window_s)
            kind: Kind
            ended = None
            if (
                incident is not None
                and incident.opened_at - window <= t <= incident.last_at + window
                and grouping.window_s > 0
            ):
                seen = set(json.loads(incident.labels))
                if rank > incident.severity or not set(labels) <= seen:
                    kind = "escalation"
                    incident.last_update_at = max(incident.last_update_at, t)
                elif t - incident.last_update_at >= timedelta(seconds=grouping.update_every_s):
                    kind = "update"
                    incident.last_update_at = t
                else:
                    kind = "quiet"
                incident.severity = max(incident.severity, rank)
                incident.labels = json.dumps(sorted(seen | set(labels)))
                incident.alarms += 1
                incident.touched_at = datetime.now(UTC)
                incident.last_at = max(incident.last_at, t)
                incident.opened_at = min(incident.opened_at, t)
            else:
                ended = incident.id if incident is not None else None
                if incident is not None:
                    incident.ended_at = datetime.now(UTC)
                kind = "new"
                incident = Incident(
                    id=uuid.uuid4().hex,
                    scope=scope,
                    camera=camera,
                    site=site,
                    opened_at=t,
                    last_at=t,
                    last_update_at=t,
                    severity=rank,
                    labels=json.dumps(sorted(set(labels))),
                    alarms=1,
                    touched_at=datetime.now(UTC),
                )
                s.add(incident)
                s.execute(update(NotifyScope).where(NotifyScope.scope == scope).values(incident_id=incident.id))
            s.add(
                AlarmAssignment(
                    alarm_key=alarm_key,
                    incident_id=incident.id,
                    kind=kind,
                    alarms=incident.alarms,
                    ended_incident=ended,
                )
            )
            s.commit()
            return Assignment(incident.id, kind, incident.alarms, ended)

    def end_quiet(self, now: datetime, window_s: float) -> list[Incident]:
        """Close every open incident that no alarm joined for ``window_s`` (by alarm time and by wall
        clock); return the closed incidents whose ``end`` is not yet sent (those closed before too, so a
        crash between closing and sending loses no ``end``)."""
        now = _utc(now)
        cutoff = now - timedelta(seconds=window_s)
        with self._session() as s:
            quiet = s.execute(
                select(NotifyScope.scope, Incident.id)
                .join(Incident, Incident.id == NotifyScope.incident_id)
                .where(Incident.last_at < cutoff, (Incident.touched_at.is_(None)) | (Incident.touched_at < cutoff))
            ).all()
        for scope, incident_id in quiet:
            with self._session() as s:
                # the scope's lock, then a second look: an alarm may have joined since
                s.execute(update(NotifyScope).where(NotifyScope.scope == scope).values(touched=NotifyScope.touched + 1))
                incident = s.get(Incident, incident_id)
                current = s.scalar(select(NotifyScope.incident_id).where(NotifyScope.scope == scope))
                touched = _utc(incident.touched_at) if incident is not None and incident.touched_at else None
                if (
                    incident is None
                    or current != incident_id
                    or _utc(incident.last_at) >= cutoff
                    or (touched is not None and touched >= cutoff)
                ):
                    s.rollback()
                    continue
                incident.ended_at = now
                s.execute(update(NotifyScope).where(NotifyScope.scope == scope).values(incident_id=None))
                s.commit()
        with self._session() as s:
            return list(s.scalars(select(Incident).where(Incident.ended_at.is_not(None), Incident.end_sent.is_(False))))

    def mark_end_sent(self, incident_id: str) -> None:
        with self._session() as s:
            s.execute(update(Incident).where(Incident.id == incident_id).values(end_sent=True))
            s.commit()

    def get(self, incident_id: str) -> Incident | None:
        with self._session() as s:
            return s.get(Incident, incident_id)

    def suppressed(self, key: str) -> str | None:
        with self._session() as s:
            row = s.get(Suppressed, key)
            return None if row is None else row.reason

    def suppress(self, key: str, reason: str) -> None:
        with self._session() as s:
            if s.get(Suppressed, key) is None:
                s.add(Suppressed(key=key, reason=reason, created_at=datetime.now(UTC)))
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
