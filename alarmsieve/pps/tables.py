"""PPS tables: pipelines and their versions, jobs, datum attempts, the processed-datum index, logs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from alarmsieve.pfs.db import Base


class PipelineRow(Base):
    __tablename__ = "pps_pipelines"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running | paused | crashing
    # why the pipeline is crashing (workers that keep dying or cannot start); "" otherwise
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    # work asked for by an operator: "" | "rerun" (failed datums now) | "rebuild" (plan everything again)
    pending: Mapped[str] = mapped_column(String(16), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PipelineVersionRow(Base):
    __tablename__ = "pps_pipeline_versions"
    pipeline: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec_json: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # JSON: what the workers reported (stage, code_version, model sha256 …); part of the version identity
    identity: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    # why this version exists: "created", "spec changed", "stage code or model changed", "reprocess"
    cause: Mapped[str] = mapped_column(Text, default="", server_default="")


class JobRow(Base):
    __tablename__ = "pps_jobs"
    __table_args__ = (Index("ix_pps_jobs_pipeline_created", "pipeline", "created_at"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # running | success | failure | killed
    input_commits: Mapped[str] = mapped_column(Text)  # JSON {input name: commit id}
    output_commit: Mapped[str | None] = mapped_column(String(32), nullable=True)
    datums_total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    recovered: Mapped[int] = mapped_column(Integer, default=0)
    removed: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    plan_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    # datums this job set out to run (known once planned): queued = to_run - datums recorded so far
    to_run: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # a job shared by several runners: JSON {"full": bool, "times": {input: ISO time}, "gone": [datum id]};
    # "" for a job one runner runs alone
    shared_plan: Mapped[str] = mapped_column(Text, default="", server_default="")


class DatumRow(Base):
    """One datum of one job: its state, attempts and, on failure, the reason and traceback."""

    __tablename__ = "pps_datums"
    __table_args__ = (Index("ix_pps_datums_job_state", "job_id", "state"),)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    datum_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63), index=True)
    hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # success | failed | recovered
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    inputs: Mapped[str] = mapped_column(Text)  # JSON [[input name, repo, root path], ...]
    reason: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str] = mapped_column(String(64), default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProcessedDatumRow(Base):
    """Per pipeline, the datums the current output reflects: hash, outputs, and whether it failed."""

    __tablename__ = "pps_processed_datums"
    __table_args__ = (Index("ix_pps_processed_state", "pipeline", "state"),)
    pipeline: Mapped[str] = mapped_column(String(63), primary_key=True)
    datum_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # success | failed | restart (asked to run again)
    job_id: Mapped[str] = mapped_column(String(32))
    roots: Mapped[str] = mapped_column(Text)  # JSON [[input name, root path], ...]
    outputs: Mapped[str] = mapped_column(Text, default="[]")  # JSON [path, ...]


class LogRow(Base):
    __tablename__ = "pps_logs"
    __table_args__ = (Index("ix_pps_logs_scope", "pipeline", "job_id", "datum_id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pipeline: Mapped[str] = mapped_column(String(63))
    job_id: Mapped[str] = mapped_column(String(32), default="")
    datum_id: Mapped[str] = mapped_column(String(64), default="")
    worker: Mapped[str] = mapped_column(String(64), default="")
    level: Mapped[str] = mapped_column(String(10), default="INFO")
    message: Mapped[str] = mapped_column(Text)


class WorkerRow(Base):
    """A worker process as the runner last saw it: what ``status`` shows (alive, busy, restarts)."""

    __tablename__ = "pps_workers"
    __table_args__ = (Index("ix_pps_workers_pipeline", "pipeline"),)
    worker_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))  # idle | busy | dead | stopped
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DatumClaimRow(Base):
    """A datum of a job shared by several runners: who holds it (a lease) and, once done, its result.

    Only jobs of runners coordinating through one catalog (``ALARMSIEVE_RUNNERS=shared``) have these
    rows; they are deleted in the transaction that makes the job's output commit.
    """

    __tablename__ = "pps_datum_claims"
    __table_args__ = (Index("ix_pps_datum_claims_job_state", "job_id", "state"),)
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    datum_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(63), index=True)
    hash: Mapped[str] = mapped_column(String(64))
    roots: Mapped[str] = mapped_column(Text)  # JSON [[input name, root path], ...]
    files: Mapped[str] = mapped_column(Text)  # JSON [[input, repo, path, sha256, size], ...]
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | claimed | done
    owner: Mapped[str] = mapped_column(String(100), default="", server_default="")  # runner id holding the lease
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    claims: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # times taken (1 + takeovers)
    result: Mapped[str] = mapped_column(Text, default="", server_default="")  # JSON of the final DatumResult
