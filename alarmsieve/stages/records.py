"""The files the stages write, one pydantic schema each (the stage outputs are an external format).

Each alarm is one folder per stage: ``<camera>/<file name>/`` in the ``validate``, ``detect``,
``assess`` and ``notify`` repos, so a ``/*/*`` glob makes one datum per alarm downstream.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

META_FILE = "meta.json"
DETECTIONS_FILE = "detections.json"
VERDICT_FILE = "verdict.json"
NOTIFICATION_FILE = "notification.json"
ANNOTATED_FILE = "annotated.jpg"

AlarmStatus = Literal["ok", "rejected", "uniform", "detector_error"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlarmMeta(Record):
    """Written by ``validate``: what the alarm is and whether its image can be used."""

    alarm: str  # the input path, e.g. /cam-1/0001.jpg: the alarm's identity
    camera: str
    time: datetime
    time_source: Literal["exif", "filename", "commit"]
    image_file: str | None  # file name of the (unchanged) image beside this record, None if rejected
    sha256: str
    size_bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    status: Literal["ok", "rejected", "uniform"]
    reason_code: str = ""
    reason: str = ""


class ModelRef(Record):
    name: str
    sha256: str


class BoxRecord(Record):
    label: str
    score: float
    box: tuple[float, float, float, float]


class DetectionsRecord(Record):
    """Written by ``detect``."""

    meta: AlarmMeta
    status: AlarmStatus
    reason: str = ""
    model: ModelRef | None = None
    detections: list[BoxRecord] = []
    inference_ms: float | None = None
    pipeline_version: str = ""


class JudgedBox(Record):
    label: str
    score: float
    box: tuple[float, float, float, float]
    kept: bool
    severity: str
    why: str


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
