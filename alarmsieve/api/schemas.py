"""Request and response bodies of the HTTP API (pydantic: the OpenAPI spec is generated from them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alarmsieve.pps.ops import PipelineStatus as PipelineHealth

FeedbackLabel = Literal["false_alarm", "missed_threat", "correct"]
EXPECTED = {"false_alarm": "dismiss", "missed_threat": "alert"}


class ErrorBody(BaseModel):
    error: str = Field(description="stable machine-readable reason, e.g. camera_forbidden, too_large")
    detail: str = Field(description="what is wrong and how to fix it")


class DetectionOut(BaseModel):
    model_config = ConfigDict(extra="allow")  # later fields of `verdicts --json` pass through

    label: str
    score: float
    box: list[float]
    kept: bool
    why: str


class VerdictOut(BaseModel):
    """One verdict, as ``alarmsieve verdicts --json`` prints it (fields added there pass through)."""

    model_config = ConfigDict(extra="allow")

    input_path: str
    device: str
    time: str
    verdict: Literal["alert", "review", "dismiss"]
    reasons: list[str]
    status: str
    rule_path: str
    rules_version: str | None
    detections: list[DetectionOut]
    model: dict[str, Any] | None
    pipeline_versions: dict[str, str]


class ClipVerdictOut(BaseModel):
    """One video clip's verdict with its sampled frames' verdicts, as ``alarmsieve verdicts --json`` prints it."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["clip"]
    input_path: str
    device: str
    time: str
    verdict: Literal["alert", "review", "dismiss"]
    reasons: list[str]
    deciding_frame: str | None
    partial: str
    capped: bool
    rules_version: str | None
    model: dict[str, Any] | None
    best_frame: str | None = Field(description="clips@master:<clip>/best.jpg, the annotated frame that decided")
    summary: str | None = Field(description="clips@master:<clip>/summary.gif, the annotated frames in order")
    frames: list[VerdictOut]


class RepoStatus(BaseModel):
    name: str
    head: str | None
    file_count: int
    size_bytes: int


class PipelineStatus(PipelineHealth):
    """`alarmsieve status`'s own pipeline model (state running/paused/failing/crashing with the reason,
    workers, queued and failed datums, last job), plus the alarm backlog the HTTP server counts."""

    queue_depth: int | None = Field(default=None, description="alarms in the stage's input not yet in its output")


class RunnerStatus(BaseModel):
    in_process: bool = Field(description="whether this server runs the pipeline itself (serve --http)")
    alive: bool
    error: str | None
    worker_restarts: dict[str, int]


class StatusOut(BaseModel):
    repos: list[RepoStatus]
    pipelines: list[PipelineStatus]
    problems: list[str] = Field(default_factory=list, description="as `alarmsieve status` lists them")
    runner: RunnerStatus
    alarms_received_over_http: int


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alarm_id: str = Field(max_length=500, description="<camera>/<name>, as returned by POST /api/v1/alarms")
    label: FeedbackLabel = Field(description="false_alarm: should not have alerted; missed_threat: should have")
    note: str = Field(default="", max_length=2000)


class FeedbackRecord(BaseModel):
    """``feedback@master:/<camera>/<name>/label.json``: one labelled example for later evaluation."""

    model_config = ConfigDict(extra="forbid")

    alarm: str
    camera: str
    label: FeedbackLabel
    verdict_given: str | None
    expected_verdict: str | None
    operator: str
    note: str
    at: datetime
    image_file: str
    image_sha256: str
    rules_commit: str | None
    model: dict[str, Any] | None
    detections: list[dict[str, Any]]


class FeedbackOut(BaseModel):
    alarm_id: str
    commit: str
    path: str
    record: FeedbackRecord
