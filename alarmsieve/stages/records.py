"""The files the stages write, one pydantic schema each (the stage outputs are an external format).

Each alarm is one folder per stage: ``<camera>/<file name>/`` in the ``validate``, ``detect``,
``assess`` and ``notify`` repos, so a ``/*/*`` glob makes one datum per alarm downstream. A video clip
is one folder too (``<camera>/<clip>/`` in ``frames`` and ``clips``), with one sub-folder per sampled
frame (``<camera>/<clip>/<frame>.jpg/``) in ``validate``, ``detect``, ``assess`` and ``notify``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

META_FILE = "meta.json"
DETECTIONS_FILE = "detections.json"
VERDICT_FILE = "verdict.json"
NOTIFICATION_FILE = "notification.json"
CLIP_FILE = "clip.json"
CLIP_VERDICT_FILE = "clip-verdict.json"
ANNOTATED_FILE = "annotated.jpg"

AlarmStatus = Literal["ok", "rejected", "uniform", "detector_error"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ClipRef(Record):
    """Where a video frame comes from (``frames`` stage): its clip and its place in it."""

    clip: str  # the clip's alarm path, e.g. /cam-1/0001.mp4
    offset_s: float
    reasons: list[str]  # first | interval | motion
    partial: str = ""  # why the clip's decoding stopped early
    capped: bool = False
    sha256: str = ""  # of the clip file: with the clip path, the key of its one notification


class AlarmMeta(Record):
    """Written by ``validate``: what the alarm is and whether its image can be used."""

    alarm: str  # the input path, e.g. /cam-1/0001.jpg: the alarm's identity
    camera: str
    # UTC. For a reading without an offset (``wall_time`` set) it is provisional: the reading labelled
    # UTC, as records before wall_time had it; ``assess`` resolves the reading in the camera's zone.
    time: datetime
    time_source: Literal["exif", "filename", "commit", "container"]
    wall_time: datetime | None = None  # the camera's wall-clock reading when it had no offset (naive)
    upload_time: datetime | None = None  # when the file was committed (clock-skew check); None: unknown
    image_file: str | None  # file name of the (unchanged) image beside this record, None if rejected
    sha256: str
    size_bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    status: Literal["ok", "rejected", "uniform"]
    reason_code: str = ""
    reason: str = ""
    clip: ClipRef | None = None  # set for the frames of a video clip


class ClipFrame(Record):
    file: str
    offset_s: float
    time: datetime
    reasons: list[str]
    motion: float


class ClipRecord(Record):
    """Written by ``frames`` for each clip: how it was read and which frames were kept (and why)."""

    clip: str
    camera: str
    status: Literal["ok", "rejected"]
    reason_code: str = ""
    reason: str = ""
    start: datetime
    start_source: Literal["container", "filename", "commit"]
    sha256: str
    size_bytes: int
    codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration_s: float = 0.0
    frames_decoded: int = 0
    partial: str = ""
    capped: bool = False
    frames: list[ClipFrame] = []


class ModelRef(Record):
    name: str
    sha256: str


class BoxRecord(Record):
    label: str
    score: float
    box: tuple[float, float, float, float]
    # the detectors that saw this box, with their raw scores (highest first); older records have none
    sources: dict[str, float] = {}


class DetectionsRecord(Record):
    """Written by ``detect``. ``models``: every detector that ran, with its sha256 (fused into one list
    of boxes when several); ``model``: the first of them, kept for readers of older records."""

    meta: AlarmMeta
    status: AlarmStatus
    reason: str = ""
    model: ModelRef | None = None
    models: list[ModelRef] = []
    detections: list[BoxRecord] = []
    inference_ms: float | None = None
    pipeline_version: str = ""
    # the cascade: the frame's kind, why it got a second look and which looks ran ("" = one pass)
    second_look: str = ""


class JudgedBox(Record):
    label: str
    score: float
    box: tuple[float, float, float, float]
    kept: bool
    severity: str
    why: str
    zone: str | None = None  # the camera zone the box stands in, if any
    # the looks that saw it (model or model/view) with their raw scores (detect's BoxRecord.sources)
    sources: dict[str, float] = {}
    rule_path: str = ""  # the camera or zone rules that judged this box


class VerdictRecord(Record):
    """Written by ``assess``: the verdict, its reasons and everything needed to reproduce it."""

    alarm: str
    camera: str
    time: datetime
    verdict: Literal["alert", "review", "dismiss"]
    reasons: list[str]
    rule_path: str
    rules_commit: str | None
    status: AlarmStatus
    detections: list[JudgedBox]
    model: ModelRef | None
    annotated_file: str | None
    image_sha256: str
    pipeline_versions: dict[str, str]
    clip: ClipRef | None = None  # set for a frame of a video clip (copied from AlarmMeta.clip)
    rules_note: str = ""  # e.g. the head of rules@master is invalid and older rules were used
    # every detector that ran on the frame (detect's DetectionsRecord.models) and why it got a second look
    models: list[ModelRef] = []
    second_look: str = ""
    # Camera time (``time`` above is absolute UTC: what schedules were checked against).
    timezone: str = ""  # the camera's IANA zone in the rules that judged it ("" in older records: UTC)
    time_note: str = ""  # how a time without offset was read (DST gap/overlap), or why the upload time was used
    camera_time: datetime | None = None  # what the camera's clock said, when it differs from ``time`` (skew)
    clock_skew_s: float | None = None  # camera time minus upload time, when beyond clock_skew_max


class ClipFrameVerdict(Record):
    alarm: str
    offset_s: float
    verdict: str
    reasons: list[str]
    top: str = ""  # the strongest kept detection, e.g. "person 0.81"


class ClipVerdictRecord(Record):
    """Written by ``clips``: one verdict for a whole clip, from its frames' verdicts."""

    clip: str
    camera: str
    time: datetime
    verdict: Literal["alert", "review", "dismiss"]
    reasons: list[str]
    deciding_frame: str | None  # alarm path of the frame that decided
    best_frame_file: str | None  # annotated JPEG beside this record
    summary_file: str | None  # animated GIF of the annotated frames
    frames: list[ClipFrameVerdict]
    partial: str = ""
    capped: bool = False
    clip_sha256: str = ""  # of the clip file (with ``clip``, the notification key)
    detections: list[JudgedBox] = []  # the deciding frame's judged boxes (what the notification shows)
    rules_commit: str | None = None  # of the deciding frame (else the first)
    model: ModelRef | None = None
    timezone: str = ""  # the camera's IANA zone its frames were judged in ("" in older records: UTC)


class NotificationRecord(Record):
    """Written by ``notify`` for each alarm: what was sent (or why nothing was)."""

    alarm: str
    camera: str
    verdict: str
    key: str
    state: Literal["sent", "already_sent", "failed", "not_needed"]
    channel: str | None = None
    provider_id: str | None = None
    attempts: int = 0
    reason: str = ""
