"""Camera time: a camera's wall-clock reading made absolute, DST gaps and overlaps, clock skew, display.

A time without an offset (a file-name stamp, EXIF ``DateTimeOriginal`` without ``OffsetTimeOriginal``)
is the wall clock of the camera's time zone (camera, else its site, else UTC), unless the camera's
rules say ``clock: utc``. The hour that does not exist (clocks forward) is shifted forward by the gap;
the hour that happens twice (clocks back) is read as its first occurrence. Every such choice is said
in a note. See docs/rules.md, "Camera time".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from alarmsieve.rules.schema import tz_of

ClockKind = Literal["local", "utc"]


@dataclass(frozen=True)
class CameraTime:
    """An alarm's time as the rules read it."""

    when: datetime  # aware, UTC: what schedules are checked against
    camera_time: datetime  # aware, UTC: what the camera's clock said (== when unless skewed)
    timezone: str  # the camera's IANA zone (display, and the wall clock of naive readings)
    note: str = ""  # how a naive reading was resolved (DST gap/overlap) and/or why the upload time was used
    skew_s: float | None = None  # camera time minus upload time, when beyond clock_skew_max


def offset_text(when: datetime) -> str:
    """``-04:00``, ``+05:30``, ``+00:00``."""
    offset = when.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def local_text(when: datetime, zone: str | None) -> str:
    """How a time is shown to people: ``2026-03-15 23:00:00 -04:00 (America/New_York)``.

    A naive ``when`` is taken as UTC (stored records are UTC); no zone shows UTC.
    """
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    name = zone or "UTC"
    local = aware.astimezone(tz_of(name))
    return f"{local:%Y-%m-%d %H:%M:%S} {offset_text(local)} ({name})"


def wall_to_utc(wall: datetime, zone: str) -> tuple[datetime, str]:
    """A wall-clock reading in ``zone`` as UTC, and a note when the reading was not plain.

    Nonexistent (clocks forward): read with the offset before the jump (``fold=0``) and normalised, so
    02:30 on a New York spring-forward night is 03:30 EDT. Repeated (clocks back): the first
    occurrence (``fold=0``, the summer offset). Deterministic: the same reading always gives the same time.
    """
    naive = wall.replace(tzinfo=None)
    tz = tz_of(zone)
    first = naive.replace(tzinfo=tz, fold=0)
    when = first.astimezone(UTC)
    back = when.astimezone(tz)
    if back.replace(tzinfo=None) != naive:
        return when, (
            f"{naive:%H:%M} does not exist in {zone} on {naive:%Y-%m-%d} (clocks went forward); "
            f"read as {back:%H:%M} {back.tzname()}"
        )
    second = naive.replace(tzinfo=tz, fold=1)
    if first.utcoffset() != second.utcoffset():
        return when, (
            f"{naive:%H:%M} happens twice in {zone} on {naive:%Y-%m-%d} (clocks went back); "
            f"read as the first, {naive:%H:%M} {first.tzname()} ({offset_text(first)})"
        )
    return when, ""


def duration_text(seconds: float) -> str:
    """``1 d 2 h``, ``3 h 5 min``, ``12 min``, ``40 s``."""
    s = int(abs(seconds))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days} d"] if days else []
    if hours:
        parts.append(f"{hours} h")
    if minutes and not days:
        parts.append(f"{minutes} min")
    if not parts:
        parts.append(f"{secs} s")
    return " ".join(parts)


def skew_note(
    camera_time: datetime, upload: datetime, zone: str, clock: ClockKind, limit_s: float, limit_from: str
) -> tuple[float, str]:
    """(camera minus upload in seconds, the note) for a camera clock off by more than ``limit_s``."""
    skew = (camera_time - upload).total_seconds()
    side = "ahead of" if skew > 0 else "behind"
    note = (
        f"camera clock {duration_text(skew)} {side} the upload time "
        f"(camera {local_text(camera_time, zone)}, upload {local_text(upload, zone)}; "
        f"more than clock_skew_max {duration_text(limit_s)}, {limit_from}): schedules use the upload time"
    )
    # Off by the zone's own UTC offset: the camera most likely writes the other kind of clock.
    offset = (upload.astimezone(tz_of(zone)).utcoffset() or timedelta(0)).total_seconds()
    if offset and abs(abs(skew) - abs(offset)) <= 15 * 60:
        if clock == "local":
            note += f"; the offset matches {zone}'s UTC offset: if the camera writes UTC, set `clock: utc`"
        else:
            note += f"; the offset matches {zone}'s UTC offset: if the camera writes local time, remove `clock: utc`"
    return skew, note
