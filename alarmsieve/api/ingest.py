"""Alarms in over HTTP: check the upload, commit it to ``images`` (a clip: ``videos``) and read its progress back.

The alarm id is its path in the ``images`` (or ``videos``) repo without the leading slash,
``<camera>/<name>``, with ``name = <UTC time YYYYmmdd_HHMMSS>Z_<sha256[:12]>.<ext>``: stable (the same
file posted again for the same camera and time gets the same id and is not committed twice) and
readable by the ``validate`` and ``frames`` stages (the time in the name is the alarm's time when the
file carries none of its own). The extension says what it is: a clip's is mp4, mov, mkv, webm or avi.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel, Field, PrivateAttr
from sqlalchemy.orm import Session

from alarmsieve.api.tables import ApiAlarm, now
from alarmsieve.api.tokens import check_camera_id
from alarmsieve.errors import AlarmsieveError
from alarmsieve.ingest import CLIP_EXTENSIONS
from alarmsieve.pfs.db import get_engine
from alarmsieve.stages.records import (
    CLIP_FILE,
    CLIP_VERDICT_FILE,
    DETECTIONS_FILE,
    META_FILE,
    NOTIFICATION_FILE,
    VERDICT_FILE,
    ClipVerdictRecord,
    VerdictRecord,
)
from alarmsieve.workspace import Workspace

if TYPE_CHECKING:
    from alarmsieve.api.fastpath import FastPath

IMAGES_REPO = "images"
VIDEOS_REPO = "videos"
STAGE_FILES: tuple[tuple[str, str], ...] = (
    ("validate", META_FILE),
    ("detect", DETECTIONS_FILE),
    ("assess", VERDICT_FILE),
    ("notify", NOTIFICATION_FILE),
)
# a clip: its frames go through validate/detect/assess under /<camera>/<clip>/<frame>/
CLIP_STAGE_FILES: tuple[tuple[str, str | None], ...] = (
    ("frames", CLIP_FILE),
    ("validate", None),
    ("detect", None),
    ("assess", None),
    ("clips", CLIP_VERDICT_FILE),
    ("notify", NOTIFICATION_FILE),
)
ClipExt = Literal["mp4", "mov", "mkv", "webm", "avi"]
CLIP_EXTS: tuple[str, ...] = CLIP_EXTENSIONS
Kind = Literal["image", "clip"]


class IngestError(AlarmsieveError):
    """An upload refused; ``status`` is the HTTP status, ``code`` a stable machine-readable reason."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class IngestLimits(BaseModel):
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="largest image accepted")
    max_clip_bytes: int = Field(default=100 * 1024 * 1024, gt=0, description="largest video clip accepted")
    max_pixels: int = Field(default=40_000_000, gt=0, description="largest width*height accepted")
    rate_per_minute: int = Field(default=120, gt=0, description="alarms one token may post per minute")
    max_metadata_bytes: int = Field(default=4096, gt=0, description="largest metadata JSON accepted")


class AlarmAccepted(BaseModel):
    id: str = Field(description="the alarm id: <camera>/<name>, its path in the images (clip: videos) repo")
    camera: str
    kind: Kind = Field(default="image", description="image (a snapshot) or clip (a video)")
    repo: str = Field(default=IMAGES_REPO, description="the repo it was committed to: images or videos")
    path: str = Field(description="path of the alarm in that repo (master)")
    commit: str = Field(description="the commit that holds it")
    received_at: datetime
    duplicate: bool = Field(description="true when this exact alarm had been received before")
    status_url: str


class StageProgress(BaseModel):
    stage: str
    done: bool


class ProvisionalOut(BaseModel):
    """How a provisional verdict was made (``state: provisional``), or how it compared (``state: done``)."""

    verdict: str = Field(description="the provisional verdict: alert, review or dismiss")
    computed_ms: float = Field(description="validate + detect + assess in the API process")
    detector_ms: float | None = Field(description="of which the detector itself (its inference_ms)")
    rules_commit: str | None = Field(description="the rules commit it was judged by")
    model_sha256: str | None = Field(description="sha256 of the detector model file")
    pipeline_versions: dict[str, str]
    agrees: bool | None = Field(
        default=None, description="once committed: whether the committed verdict is the same record"
    )


class AlarmStatus(BaseModel):
    id: str
    camera: str
    kind: Kind = Field(default="image", description="image (a snapshot) or clip (a video)")
    state: Literal["pending", "provisional", "done"] = Field(
        description="provisional: the API's own verdict is readable (same stages, rules and model), the "
        "pipeline's is not committed yet; done: the committed verdict"
    )
    stages: list[StageProgress]
    received_at: datetime | None
    verdict: dict[str, Any] | None = None
    provisional: ProvisionalOut | None = None
    notification: dict[str, Any] | None = None
    _committed: VerdictRecord | None = PrivateAttr(default=None)  # the committed record, for `agrees`


FORMATS_HINT = (
    "send a snapshot (JPEG, PNG, BMP or WebP) or a video clip (MP4, MOV, Matroska/WebM or AVI); "
    "the format is judged by the file's first bytes"
)


def _clip_container(data: bytes) -> ClipExt | None:
    """The container of a video clip, from its leading bytes (ISO BMFF, QuickTime, Matroska, AVI)."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"avif", b"mif1", b"msf1", b"avis"):  # still images in ISO BMFF
            return None
        return "mov" if brand == b"qt  " else "mp4"
    if data[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):  # QuickTime without ftyp
        return "mov"
    if data.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: the DocType element says which
        return "webm" if b"webm" in data[:64] else "mkv" if b"matroska" in data[:64] else None
    if data.startswith(b"RIFF") and data[8:12] == b"AVI ":
        return "avi"
    return None


def sniff(data: bytes, content_type: str | None = None) -> tuple[Kind, str]:
    """(image or clip, file extension) of an upload, from its leading bytes; 415 for anything else."""
    if data.startswith(b"\xff\xd8"):
        return "image", "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image", "png"
    if data.startswith(b"BM"):
        return "image", "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image", "webp"
    clip = _clip_container(data)
    if clip is not None:
        return "clip", clip
    if not data:
        raise IngestError(400, "empty", "the upload is empty; send the snapshot's or clip's bytes")
    if data.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")) or (
        len(data) > 188 and data[0] == 0x47 and data[188] == 0x47
    ):
        raise IngestError(
            415, "unsupported_media_type", "MPEG program/transport streams are not accepted; " + FORMATS_HINT
        )
    what = f" (Content-Type {content_type})" if content_type and content_type.startswith("video/") else ""
    raise IngestError(
        415, "unsupported_media_type", f"the upload is no image or clip this API reads{what}; " + FORMATS_HINT
    )


def kind_of(alarm_id: str) -> Kind:
    return "clip" if alarm_id.rsplit(".", 1)[-1].lower() in CLIP_EXTS else "image"


def check_pixels(data: bytes, limits: IngestLimits) -> None:
    """Refuse images whose declared size is over the limit, reading the header only."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Exception:  # broken headers are judged by the validate stage (verdict review, with a reason)
        return
    if width * height > limits.max_pixels:
        raise IngestError(
            413,
            "too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels, over the limit of {limits.max_pixels}; "
            "lower the camera's snapshot resolution",
        )


def parse_metadata(text: str | None, limits: IngestLimits) -> dict[str, Any]:
    if not text:
        return {}
    if len(text.encode()) > limits.max_metadata_bytes:
        raise IngestError(413, "metadata_too_large", f"metadata is over {limits.max_metadata_bytes} bytes")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise IngestError(422, "bad_metadata", f"metadata is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(value, dict):
        raise IngestError(422, "bad_metadata", 'metadata must be a JSON object, e.g. {"zone": "gate"}')
    return value


def alarm_name(sha256: str, ext: str, when: datetime) -> str:
    # Z: the stamp is UTC, not the camera's wall clock (validate reads a stamp without it in the camera's zone)
    return f"{when.astimezone(UTC):%Y%m%d_%H%M%S}Z_{sha256[:12]}.{ext}"


def split_alarm_id(alarm_id: str) -> tuple[str, str]:
    camera, sep, name = alarm_id.strip("/").partition("/")
    if not sep or not name or "/" in name or name in (".", "..") or "\\" in name or "\x00" in name:
        raise IngestError(404, "not_found", f"alarm id {alarm_id!r} is not of the form <camera>/<name>")
    try:
        check_camera_id(camera)
    except AlarmsieveError as exc:
        raise IngestError(404, "not_found", f"alarm {alarm_id!r} not found: {exc}") from exc
    return camera, name


@dataclass(frozen=True)
class Committed:
    """What ``Ingestor.on_commit`` hears about a new alarm (metrics, waking the runner)."""

    alarm_id: str
    camera: str
    kind: Kind


class Ingestor:
    """Commits alarms to ``images`` / ``videos`` and reads their progress through the stages."""

    def __init__(
        self,
        ws: Workspace,
        limits: IngestLimits,
        on_commit: Callable[[Committed], None] | None = None,
        fast: FastPath | None = None,
    ) -> None:
        self.ws = ws
        self.limits = limits
        self.on_commit = on_commit
        self.fast = fast
        self.engine = get_engine(ws.catalog_url)
        self._commit_lock = threading.Lock()
        if not ws.pfs.repo_exists(IMAGES_REPO):
            ws.pfs.create_repo(IMAGES_REPO, exist_ok=True)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False, autoflush=False)

    def _videos_ready(self) -> None:
        """A clip is only worth committing when a pipeline reads ``videos``; the repo is made on demand."""
        readers = []
        for name in self.ws.pps.pipeline_names():
            try:
                if VIDEOS_REPO in self.ws.pps.get_spec(name)[0].input_repos():
                    readers.append(name)
            except Exception:  # a pipeline that cannot be read reads nothing here
                continue
        if not readers:
            raise IngestError(
                409,
                "clips_not_configured",
                "this workspace has no pipeline reading the `videos` repo, so a clip would never be judged; "
                "add the video pipelines (`alarmsieve init` creates frames and clips) or send a snapshot instead",
            )
        if not self.ws.pfs.repo_exists(VIDEOS_REPO):
            self.ws.pfs.create_repo(VIDEOS_REPO, exist_ok=True)

    def accept(
        self,
        camera: str,
        data: bytes,
        *,
        content_type: str | None = None,
        when: datetime | None = None,
        site: str | None = None,
        metadata: dict[str, Any] | None = None,
        token_id: str | None = None,
    ) -> AlarmAccepted:
        try:
            check_camera_id(camera)
        except AlarmsieveError as exc:
            raise IngestError(422, "bad_camera", str(exc)) from exc
        kind, ext = sniff(data, content_type)  # the first bytes say which limit applies
        limit = self.limits.max_bytes if kind == "image" else self.limits.max_clip_bytes
        if len(data) > limit:
            hint = (
                "lower the camera's snapshot quality or resolution"
                if kind == "image"
                else "send a shorter clip (the seconds around the alarm) or a lower resolution"
            )
            raise IngestError(
                413, "too_large", f"the {kind} is over the limit of {limit} bytes ({len(data)} read); {hint}"
            )
        if kind == "image":
            check_pixels(data, self.limits)
            repo = IMAGES_REPO
        else:
            self._videos_ready()
            repo = VIDEOS_REPO
        received = now()
        when = when or received
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        sha = hashlib.sha256(data).hexdigest()
        alarm_id = f"{camera}/{alarm_name(sha, ext, when)}"
        if self.fast is not None and kind == "image":
            # judged while the commit is written: the image's bytes and name are all it reads (the name carries
            # the time validate falls back on), so the commit need not come first; a duplicate id is judged once
            self.fast.submit(alarm_id, data, received)
        with self._commit_lock:  # one commit at a time from this process: no duplicate ids racing
            with self._session() as s, s.begin():
                existing = s.get(ApiAlarm, alarm_id)
                if existing is not None:
                    existing.attempt_count += 1
                    return self._accepted(existing, duplicate=True)
            builder = self.ws.pfs.start_commit(repo, description=f"alarm {alarm_id} over HTTP")
            builder.put_bytes(f"/{alarm_id}", data)
            commit = builder.finish()
            row = ApiAlarm(
                id=alarm_id,
                camera=camera,
                site=site or None,
                received_at=received,
                token_id=token_id,
                commit_id=commit.id,
                sha256=sha,
                metadata_json=json.dumps(metadata or {}),
                attempt_count=1,
            )
            with self._session() as s, s.begin():
                s.add(row)
        if self.on_commit:
            self.on_commit(Committed(alarm_id, camera, kind))
        return self._accepted(row, duplicate=False)

    @staticmethod
    def _accepted(row: ApiAlarm, *, duplicate: bool) -> AlarmAccepted:
        kind = kind_of(row.id)
        return AlarmAccepted(
            id=row.id,
            camera=row.camera,
            kind=kind,
            repo=VIDEOS_REPO if kind == "clip" else IMAGES_REPO,
            path=f"/{row.id}",
            commit=row.commit_id,
            received_at=row.received_at,
            duplicate=duplicate,
            status_url=f"/api/v1/alarms/{row.id}",
        )

    def received(self, alarm_id: str) -> ApiAlarm | None:
        with self._session() as s:
            return s.get(ApiAlarm, alarm_id)

    def verdict_ready(self, alarm_id: str) -> bool:
        """One indexed lookup: whether the committed verdict is there (long polls check this first)."""
        pfs = self.ws.pfs
        alarm = alarm_id.strip("/")
        repo, marker = ("clips", CLIP_VERDICT_FILE) if kind_of(alarm) == "clip" else ("assess", VERDICT_FILE)
        try:
            if pfs.head(repo) is None:
                return False
            if pfs.lookup(repo, "master", [f"/{alarm}/{marker}"]):
                return True
            # a clip that is no usable video gets a verdict (review, with the reason) from assess only
            return repo == "clips" and bool(pfs.lookup("assess", "master", [f"/{alarm}/{VERDICT_FILE}"]))
        except Exception:  # no such repo yet, or a path pfs refuses: the full status() says why
            return False

    def _lookup(self, repo: str, path: str) -> Any:
        """The file's info, or None (also when the repo does not exist yet): one query, polls call it often."""
        try:
            return self.ws.pfs.lookup(repo, "master", [path]).get(path)
        except AlarmsieveError:
            return None

    def _under(self, repo: str, prefix: str) -> bool:
        pfs = self.ws.pfs
        if not pfs.repo_exists(repo) or pfs.head(repo) is None:
            return False
        return next(iter(pfs.walk(repo, "master", prefix)), None) is not None

    def committed_status(self, alarm_id: str) -> AlarmStatus:
        """The alarm's progress and committed verdict, from the repos (404 for an unknown alarm)."""
        camera, name = split_alarm_id(alarm_id)
        path = f"/{camera}/{name}"
        kind = kind_of(name)
        repo = VIDEOS_REPO if kind == "clip" else IMAGES_REPO
        if self._lookup(repo, path) is None:
            raise IngestError(404, "not_found", f"no alarm {alarm_id!r} in {repo}@master; POST it first")
        row = self.received(alarm_id)
        if kind == "clip":
            return self._clip_status(camera, name, row)
        # Latest stage first: a stage's output implies its upstream's (each reads the one before), so a
        # poll costs two or three lookups rather than four.
        files: dict[str, bytes] = {}

        def read(repo: str, marker: str) -> bool:
            found = self._lookup(repo, f"{path}/{marker}")
            if found is not None and found.sha256 and marker in (VERDICT_FILE, NOTIFICATION_FILE):
                files[marker] = self.ws.pfs.objects.get_bytes(found.sha256)
            return found is not None

        done = dict.fromkeys((repo for repo, _ in STAGE_FILES), False)
        if read("assess", VERDICT_FILE):
            done.update(validate=True, detect=True, assess=True, notify=read("notify", NOTIFICATION_FILE))
        elif read("detect", DETECTIONS_FILE):
            done.update(validate=True, detect=True)
        else:
            done["validate"] = read("validate", META_FILE)
        stages = [StageProgress(stage=stage_repo, done=done[stage_repo]) for stage_repo, _ in STAGE_FILES]
        from alarmsieve.verdicts import verdict_json

        committed = VerdictRecord.model_validate_json(files[VERDICT_FILE]) if VERDICT_FILE in files else None
        notification = json.loads(files[NOTIFICATION_FILE]) if NOTIFICATION_FILE in files else None
        status = AlarmStatus(
            id=f"{camera}/{name}",
            camera=camera,
            state="done" if committed is not None else "pending",
            stages=stages,
            received_at=row.received_at if row else None,
            verdict=verdict_json(committed) if committed is not None else None,
            notification=notification,
        )
        status._committed = committed
        return status

    def status(self, alarm_id: str) -> AlarmStatus:
        """What the repos hold for the alarm and, for a snapshot, the provisional verdict (see fastpath)."""
        return self.with_provisional(self.committed_status(alarm_id))

    def with_provisional(self, status: AlarmStatus) -> AlarmStatus:
        """``status`` (from :meth:`committed_status`) with this server's provisional verdict, when it has one."""
        early = self.fast.result(status.id) if self.fast is not None and status.kind == "image" else None
        if early is None:
            return status
        from alarmsieve.verdicts import verdict_json

        rec, committed = early.record, status._committed
        provisional = ProvisionalOut(
            verdict=rec.verdict,
            computed_ms=round(early.seconds * 1000, 1),
            detector_ms=early.detector_ms,
            rules_commit=rec.rules_commit,
            model_sha256=rec.model.sha256 if rec.model else None,
            pipeline_versions=rec.pipeline_versions,
            agrees=committed == rec if committed is not None else None,
        )
        if committed is not None:
            return status.model_copy(update={"provisional": provisional})
        shown = {"state": "provisional", "verdict": verdict_json(rec), "provisional": provisional}
        return status.model_copy(update=shown)

    def _clip_status(self, camera: str, name: str, row: ApiAlarm | None) -> AlarmStatus:
        from alarmsieve.verdicts import ClipEntry, clip_entry_json, verdict_json

        path = f"/{camera}/{name}"
        stages = [
            StageProgress(
                stage=stage_repo,
                done=(
                    self._lookup(stage_repo, f"{path}/{marker}") is not None
                    if marker
                    else self._under(stage_repo, path + "/")
                ),
            )
            for stage_repo, marker in CLIP_STAGE_FILES
        ]
        verdict: dict[str, Any] | None = None
        found = self._lookup("clips", f"{path}/{CLIP_VERDICT_FILE}")
        if found is not None and found.sha256:
            clip = ClipVerdictRecord.model_validate_json(self.ws.pfs.objects.get_bytes(found.sha256))
            frame_paths = [f"{f.alarm}/{VERDICT_FILE}" for f in clip.frames]
            frames = self.ws.pfs.lookup("assess", "master", frame_paths) if frame_paths else {}
            records = [
                VerdictRecord.model_validate_json(self.ws.pfs.objects.get_bytes(frames[p].sha256 or ""))
                for p in frame_paths
                if p in frames
            ]
            verdict = clip_entry_json(ClipEntry(clip, records))
        else:
            rejected = self._lookup("assess", f"{path}/{VERDICT_FILE}")  # not a usable clip: one verdict
            if rejected is not None and rejected.sha256:
                record = VerdictRecord.model_validate_json(self.ws.pfs.objects.get_bytes(rejected.sha256))
                verdict = {"kind": "clip", **verdict_json(record)}
        note = self._lookup("notify", f"{path}/{NOTIFICATION_FILE}")
        notification = json.loads(self.ws.pfs.objects.get_bytes(note.sha256)) if note and note.sha256 else None
        return AlarmStatus(
            id=f"{camera}/{name}",
            camera=camera,
            kind="clip",
            state="done" if verdict else "pending",
            stages=stages,
            received_at=row.received_at if row else None,
            verdict=verdict,
            notification=notification,
        )
