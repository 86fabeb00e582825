"""Reading verdicts back out of the ``assess`` and ``clips`` repos, for the CLI, eval and the report.

A snapshot has one verdict (``assess``). A video clip has one verdict of its own (``clips``) and one
per sampled frame (``assess``, with ``clip`` set); listings show the clip with its frames under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from alarmsieve.errors import AlarmsieveError
from alarmsieve.pfs.api import Pfs
from alarmsieve.rules.clock import duration_text, local_text
from alarmsieve.stages.records import CLIP_VERDICT_FILE, VERDICT_FILE, ClipVerdictRecord, VerdictRecord

ASSESS_REPO = "assess"
CLIPS_REPO = "clips"


def read_verdicts(
    pfs: Pfs, *, device: str | None = None, since: datetime | None = None, repo: str = ASSESS_REPO, ref: str = "master"
) -> list[VerdictRecord]:
    if not pfs.repo_exists(repo) or pfs.head(repo) is None:
        return []
    out = []
    for info in pfs.walk(repo, ref):
        if not info.path.endswith("/" + VERDICT_FILE) or info.sha256 is None:
            continue
        record = VerdictRecord.model_validate_json(pfs.objects.get_bytes(info.sha256))
        if device and record.camera != device:
            continue
        if since and record.time < since:
            continue
        out.append(record)
    out.sort(key=lambda r: (r.time, r.alarm))
    return out


def read_clip_verdicts(
    pfs: Pfs, *, device: str | None = None, since: datetime | None = None, ref: str = "master"
) -> list[ClipVerdictRecord]:
    """One verdict per video clip (``clips`` repo), oldest first."""
    if not pfs.repo_exists(CLIPS_REPO) or pfs.head(CLIPS_REPO, ref) is None:
        return []
    out = []
    for info in pfs.walk(CLIPS_REPO, ref):
        if not info.path.endswith("/" + CLIP_VERDICT_FILE) or info.sha256 is None:
            continue
        record = ClipVerdictRecord.model_validate_json(pfs.objects.get_bytes(info.sha256))
        if (device and record.camera != device) or (since and record.time < since):
            continue
        out.append(record)
    out.sort(key=lambda r: (r.time, r.clip))
    return out


def find_clip_verdict(pfs: Pfs, alarm: str) -> ClipVerdictRecord | None:
    """A clip's verdict by its path (/cam-1/0001.mp4) or, when unique, its file name; None if it is no clip."""
    if not pfs.repo_exists(CLIPS_REPO) or pfs.head(CLIPS_REPO) is None:
        return None
    wanted = "/" + alarm.strip("/")
    found = pfs.lookup(CLIPS_REPO, "master", [f"{wanted}/{CLIP_VERDICT_FILE}"])
    if found:
        info = next(iter(found.values()))
        return ClipVerdictRecord.model_validate_json(pfs.objects.get_bytes(info.sha256 or ""))
    if "/" in alarm.strip("/"):
        return None
    named = [c for c in read_clip_verdicts(pfs) if c.clip.rsplit("/", 1)[-1] == alarm.strip("/")]
    if len(named) > 1:
        names = ", ".join(c.clip for c in named[:5])
        raise AlarmsieveError(f"clip {alarm!r} is ambiguous ({names}); give the full path /camera/file")
    return named[0] if named else None


@dataclass
class ClipEntry:
    """A clip's verdict and the verdicts of its sampled frames (in time order)."""

    clip: ClipVerdictRecord
    frames: list[VerdictRecord] = field(default_factory=list)

    @property
    def time(self) -> datetime:
        return self.clip.time


def list_verdicts(
    pfs: Pfs, *, device: str | None = None, since: datetime | None = None
) -> list[VerdictRecord | ClipEntry]:
    """Snapshots' verdicts and clips' verdicts (each with its frames), oldest first.

    A frame whose clip has no clip verdict yet (the ``clips`` job has not run) is listed on its own.
    """
    clips = {c.clip: ClipEntry(c) for c in read_clip_verdicts(pfs, device=device, since=since)}
    entries: list[VerdictRecord | ClipEntry] = list(clips.values())
    for record in read_verdicts(pfs, device=device):
        if record.clip is not None and record.clip.clip in clips:
            clips[record.clip.clip].frames.append(record)
        elif since is None or record.time >= since:
            entries.append(record)
    for entry in clips.values():
        entry.frames.sort(key=lambda r: r.clip.offset_s if r.clip else 0.0)
    entries.sort(key=lambda e: (e.time, e.clip.clip if isinstance(e, ClipEntry) else e.alarm))
    return entries


def utc_iso(when: datetime) -> str:
    """JSON times: ISO 8601 in UTC (a naive time is UTC already)."""
    return (when if when.tzinfo is not None else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def shown_time(record: VerdictRecord | ClipEntry) -> str:
    """The time people read: the camera's local time, offset and zone (a clip: its frames' zone)."""
    if isinstance(record, ClipEntry):
        zone = record.clip.timezone or next((f.timezone for f in record.frames if f.timezone), "")
        return local_text(record.time, zone or "UTC")
    return local_text(record.time, record.timezone or "UTC")


@dataclass(frozen=True)
class ClockSkew:
    """A camera whose latest verdict found its clock beyond clock_skew_max from the upload time."""

    camera: str
    skew_s: float
    alarm: str
    note: str

    def line(self) -> str:
        side = "ahead of" if self.skew_s > 0 else "behind"
        return f"camera {self.camera}: clock {duration_text(self.skew_s)} {side} the upload time ({self.alarm})"


RECENT_JOBS = 20  # clock_skews reads the verdicts of this many latest assess commits


def clock_skews(pfs: Pfs, jobs: int = RECENT_JOBS) -> list[ClockSkew]:
    """Per camera, from its latest verdict among those the last ``jobs`` assess commits wrote: a line when
    that verdict found the camera's clock skewed. Only those commits' files are read (one indexed diff),
    so ``status`` stays cheap however many verdicts the repo holds."""
    if not pfs.repo_exists(ASSESS_REPO) or pfs.head(ASSESS_REPO) is None:
        return []
    commits = pfs.list_commits(ASSESS_REPO, limit=jobs)  # newest first
    latest: dict[str, VerdictRecord] = {}
    for change in pfs.diff(ASSESS_REPO, commits[-1].parent, commits[0].id):
        if change.new_sha256 is None or not change.path.endswith("/" + VERDICT_FILE):
            continue
        record = VerdictRecord.model_validate_json(pfs.objects.get_bytes(change.new_sha256))
        seen = latest.get(record.camera)
        if seen is None or (record.time, record.alarm) > (seen.time, seen.alarm):
            latest[record.camera] = record
    return [
        ClockSkew(r.camera, r.clock_skew_s, r.alarm, r.time_note)
        for r in sorted(latest.values(), key=lambda r: r.camera)
        if r.clock_skew_s is not None
    ]


def verdict_json(record: VerdictRecord) -> dict:
    """The public JSON of one verdict (``alarmsieve verdicts --json``): times in UTC (ISO 8601)."""
    return {
        "input_path": record.alarm,
        "device": record.camera,
        "time": utc_iso(record.time),
        "timezone": record.timezone or "UTC",
        "time_note": record.time_note,
        "camera_time": utc_iso(record.camera_time) if record.camera_time else None,
        "clock_skew_s": record.clock_skew_s,
        "verdict": record.verdict,
        "reasons": record.reasons,
        "status": record.status,
        "rule_path": record.rule_path,
        "rules_version": record.rules_commit,
        "rules_note": record.rules_note,
        "detections": [
            {
                "label": d.label,
                "score": d.score,
                "box": list(d.box),
                "kept": d.kept,
                "why": d.why,
                "zone": d.zone,
                "rule_path": d.rule_path,
            }
            for d in record.detections
        ],
        "clip": record.clip.model_dump() if record.clip else None,
        "model": record.model.model_dump() if record.model else None,
        "pipeline_versions": record.pipeline_versions,
    }


def clip_entry_json(entry: ClipEntry) -> dict:
    """The public JSON of a clip's verdict with its frames' verdicts (``alarmsieve verdicts --json``)."""
    c = entry.clip
    return {
        "kind": "clip",
        "input_path": c.clip,
        "device": c.camera,
        "time": utc_iso(c.time),
        "timezone": c.timezone or "UTC",
        "verdict": c.verdict,
        "reasons": c.reasons,
        "deciding_frame": c.deciding_frame,
        "partial": c.partial,
        "capped": c.capped,
        "rules_version": c.rules_commit,
        "model": c.model.model_dump() if c.model else None,
        "best_frame": f"{CLIPS_REPO}@master:{c.clip}/{c.best_frame_file}" if c.best_frame_file else None,
        "summary": f"{CLIPS_REPO}@master:{c.clip}/{c.summary_file}" if c.summary_file else None,
        "frames": [verdict_json(f) for f in entry.frames],
    }


def entry_json(entry: VerdictRecord | ClipEntry) -> dict:
    return clip_entry_json(entry) if isinstance(entry, ClipEntry) else verdict_json(entry)
