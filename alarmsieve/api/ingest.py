"""Alarms in over HTTP: check the upload, commit it to ``images`` and read its progress back.

The alarm id is its path in the ``images`` repo without the leading slash, ``<camera>/<name>``, with
``name = <UTC time YYYYmmdd_HHMMSS>_<sha256[:12]>.<ext>``: stable (the same image posted again for the
same camera and time gets the same id and is not committed twice) and readable by the ``validate``
stage (the time in the name is the alarm's time when the image has no EXIF time).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from alarmsieve.api.tables import ApiAlarm, now
from alarmsieve.api.tokens import check_camera_id
from alarmsieve.errors import AlarmsieveError
from alarmsieve.pfs.db import get_engine
from alarmsieve.stages.records import DETECTIONS_FILE, META_FILE, NOTIFICATION_FILE, VERDICT_FILE, VerdictRecord
from alarmsieve.workspace import Workspace

IMAGES_REPO = "images"
STAGE_FILES: tuple[tuple[str, str], ...] = (
    ("validate", META_FILE),
    ("detect", DETECTIONS_FILE),
    ("assess", VERDICT_FILE),
    ("notify", NOTIFICATION_FILE),
)
ImageExt = Literal["jpg", "png", "bmp", "webp"]


class IngestError(AlarmsieveError):
    """An upload refused; ``status`` is the HTTP status, ``code`` a stable machine-readable reason."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class IngestLimits(BaseModel):
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0, description="largest request body accepted")
    max_pixels: int = Field(default=40_000_000, gt=0, description="largest width*height accepted")
    rate_per_minute: int = Field(default=120, gt=0, description="alarms one token may post per minute")
    max_metadata_bytes: int = Field(default=4096, gt=0, description="largest metadata JSON accepted")


class AlarmAccepted(BaseModel):
    id: str = Field(description="the alarm id: <camera>/<name>, its path in the images repo")
    camera: str
    path: str = Field(description="images@master path of the alarm")
    commit: str = Field(description="images commit that holds it")
    received_at: datetime
    duplicate: bool = Field(description="true when this exact alarm had been received before")
    status_url: str


class StageProgress(BaseModel):
    stage: str
    done: bool


class AlarmStatus(BaseModel):
    id: str
    camera: str
    state: Literal["pending", "done"] = Field(description="done once the verdict is readable")
    stages: list[StageProgress]
    received_at: datetime | None
    verdict: dict[str, Any] | None = None
    notification: dict[str, Any] | None = None


VIDEO_HINT = (
    "video clips are not accepted yet (there is no `videos` repo in this version); "
    "send one JPEG/PNG/BMP/WebP snapshot of the alarm instead"
)


def sniff(data: bytes, content_type: str | None = None) -> ImageExt:
    """The image format of an upload, from its leading bytes; 415 for clips and anything else."""
    if data.startswith(b"\xff\xd8"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "webp"
    is_video = (
        (content_type or "").lower().startswith("video/")
        or (data[4:8] == b"ftyp" and data[8:12] not in (b"heic", b"heix", b"avif", b"mif1"))
        or data.startswith(b"\x1a\x45\xdf\xa3")  # Matroska / WebM
        or (data.startswith(b"RIFF") and data[8:12] == b"AVI ")
        or data.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"))  # MPEG-PS
        or (len(data) > 188 and data[0] == 0x47 and data[188] == 0x47)  # MPEG-TS
    )
    if is_video:
        raise IngestError(415, "video_not_supported", VIDEO_HINT)
    if not data:
        raise IngestError(400, "empty", "the upload is empty; send the snapshot's bytes")
    raise IngestError(
        415,
        "unsupported_media_type",
        "the upload is not a JPEG, PNG, BMP or WebP image (judged by its first bytes); "
        "send a snapshot in one of those formats",
    )


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
    return f"{when.astimezone(UTC):%Y%m%d_%H%M%S}_{sha256[:12]}.{ext}"


def split_alarm_id(alarm_id: str) -> tuple[str, str]:
    camera, sep, name = alarm_id.strip("/").partition("/")
    if not sep or not name or "/" in name or name in (".", "..") or "\\" in name or "\x00" in name:
        raise IngestError(404, "not_found", f"alarm id {alarm_id!r} is not of the form <camera>/<name>")
    try:
        check_camera_id(camera)
    except AlarmsieveError as exc:
        raise IngestError(404, "not_found", f"alarm {alarm_id!r} not found: {exc}") from exc
    return camera, name


class Ingestor:
    """Commits alarms to ``images`` and reads their progress through the stages."""

    def __init__(
        self, ws: Workspace, limits: IngestLimits, on_commit: Callable[[str, str], None] | None = None
    ) -> None:
        self.ws = ws
        self.limits = limits
        self.on_commit = on_commit
        self.engine = get_engine(ws.catalog_url)
        self._commit_lock = threading.Lock()
        if not ws.pfs.repo_exists(IMAGES_REPO):
            ws.pfs.create_repo(IMAGES_REPO, exist_ok=True)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False, autoflush=False)

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
        if len(data) > self.limits.max_bytes:
            raise IngestError(413, "too_large", f"the upload is {len(data)} bytes, over {self.limits.max_bytes}")
        ext = sniff(data, content_type)
        check_pixels(data, self.limits)
        received = now()
        when = when or received
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        sha = hashlib.sha256(data).hexdigest()
        alarm_id = f"{camera}/{alarm_name(sha, ext, when)}"
        with self._commit_lock:  # one commit at a time from this process: no duplicate ids racing
            with self._session() as s, s.begin():
                existing = s.get(ApiAlarm, alarm_id)
                if existing is not None:
                    existing.attempt_count += 1
                    return self._accepted(existing, duplicate=True)
            builder = self.ws.pfs.start_commit(IMAGES_REPO, description=f"alarm {alarm_id} over HTTP")
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
            self.on_commit(alarm_id, camera)
        return self._accepted(row, duplicate=False)

    @staticmethod
    def _accepted(row: ApiAlarm, *, duplicate: bool) -> AlarmAccepted:
        return AlarmAccepted(
            id=row.id,
            camera=row.camera,
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
        """One indexed lookup: whether ``assess`` holds the alarm's verdict (long polls check this first)."""
        pfs = self.ws.pfs
        path = f"/{alarm_id.strip('/')}/{VERDICT_FILE}"
        try:
            return pfs.head("assess") is not None and bool(pfs.lookup("assess", "master", [path]))
        except Exception:  # no assess repo yet, or a path pfs refuses: the full status() says why
            return False

    def status(self, alarm_id: str) -> AlarmStatus:
        camera, _name = split_alarm_id(alarm_id)
        pfs = self.ws.pfs
        path = f"/{camera}/{_name}"
        if pfs.head(IMAGES_REPO) is None or not pfs.lookup(IMAGES_REPO, "master", [path]):
            raise IngestError(404, "not_found", f"no alarm {alarm_id!r} in images@master; POST it first")
        stages: list[StageProgress] = []
        files: dict[str, bytes] = {}
        for repo, marker in STAGE_FILES:
            found = None
            if pfs.repo_exists(repo) and pfs.head(repo) is not None:
                found = pfs.lookup(repo, "master", [f"{path}/{marker}"]).get(f"{path}/{marker}")
            stages.append(StageProgress(stage=repo, done=found is not None))
            if found is not None and found.sha256 and marker in (VERDICT_FILE, NOTIFICATION_FILE):
                files[marker] = pfs.objects.get_bytes(found.sha256)
        verdict = None
        if VERDICT_FILE in files:
            from alarmsieve.verdicts import verdict_json

            verdict = verdict_json(VerdictRecord.model_validate_json(files[VERDICT_FILE]))
        notification = json.loads(files[NOTIFICATION_FILE]) if NOTIFICATION_FILE in files else None
        row = self.received(alarm_id)
        return AlarmStatus(
            id=f"{camera}/{_name}",
            camera=camera,
            state="done" if verdict else "pending",
            stages=stages,
            received_at=row.received_at if row else None,
            verdict=verdict,
            notification=notification,
        )
