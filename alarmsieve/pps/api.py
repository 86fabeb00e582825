"""PPS API: pipelines and their versions, and read access to jobs, datums and logs."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmsieve.pfs.api import Pfs
from alarmsieve.pps.spec import PipelineSpec, parse_spec, spec_fingerprint, to_pachyderm
from alarmsieve.pps.tables import DatumRow, JobRow, LogRow, PipelineRow, PipelineVersionRow


class PpsError(Exception):
    """A PPS request that cannot be done; the message says why and what to do."""


class PipelineInfo(BaseModel):
    name: str
    version: int
    state: str
    input_repos: list[str]
    glob: list[str]
    parallelism: int
    created_at: datetime
    updated_at: datetime
    spec: dict
    last_job: JobInfo | None = None


class JobInfo(BaseModel):
    id: str
    pipeline: str
    version: int
    state: str
    input_commits: dict[str, str]
    output_commit: str | None
    datums_total: int
    processed: int
    skipped: int
    failed: int
    recovered: int
    removed: int
    reason: str
    created_at: datetime
    finished_at: datetime | None
    plan_seconds: float


class DatumInfo(BaseModel):
    job_id: str
    datum_id: str
    pipeline: str
    state: str
    attempts: int
    inputs: list[list[str]]
    reason: str
    traceback: str
    worker: str
    seconds: float
    finished_at: datetime | None


class LogInfo(BaseModel):
    ts: datetime
    pipeline: str
    job: str
    datum: str
    worker: str
    level: str
    message: str


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def job_info(row: JobRow) -> JobInfo:
    return JobInfo(
        id=row.id,
        pipeline=row.pipeline,
        version=row.version,
        state=row.state,
        input_commits=json.loads(row.input_commits),
        output_commit=row.output_commit,
        datums_total=row.datums_total,
        processed=row.processed,
        skipped=row.skipped,
        failed=row.failed,
        recovered=row.recovered,
        removed=row.removed,
        reason=row.reason,
        created_at=_aware(row.created_at),  # type: ignore[arg-type]
        finished_at=_aware(row.finished_at),
        plan_seconds=row.plan_seconds,
    )


class Pps:
    def __init__(self, pfs: Pfs) -> None:
        self.pfs = pfs

    def session(self) -> Session:
        return self.pfs.session()

    # ---- pipelines ---------------------------------------------------------------------------------
    def create_pipeline(self, spec: PipelineSpec, *, update: bool = False, reprocess: bool = False) -> tuple[int, str]:
        """Create (or with ``update``, version) a pipeline. Returns (version, what happened).

        An update keeps the datum salt, so only new data meets the new version; ``reprocess`` draws a
        new salt, so every datum's hash changes and all of them run again.
        """
        for repo in spec.input_repos():
            if not self.pfs.repo_exists(repo):
                raise PpsError(
                    f"pipeline {spec.name!r}: input repo {repo!r} does not exist; create it first "
                    f"(`alarmsieve create repo {repo}`) or create the pipeline that outputs it"
                )
        if spec.name in spec.input_repos():
            raise PpsError(f"pipeline {spec.name!r} cannot read its own output repo")
        fingerprint = spec_fingerprint(spec)
        now = datetime.now(UTC)
        with self.session() as s, s.begin():
            row = s.get(PipelineRow, spec.name)
            if row is not None and not update:
                raise PpsError(
                    f"pipeline {spec.name!r} already exists (version {row.version}); "
                    "use `alarmsieve update pipeline -f SPEC` to change it"
                )
            if row is None and self.pfs.repo_exists(spec.name):
                raise PpsError(
                    f"pipeline {spec.name!r}: a repo named {spec.name!r} already exists and would be its output; "
                    "rename the pipeline or delete that repo"
                )
            if row is not None:
                current = s.get(PipelineVersionRow, (spec.name, row.version))
                if current is not None and current.fingerprint == fingerprint and not reprocess:
                    return row.version, "unchanged"
                version = row.version + 1
                salt = current.salt if current is not None and not reprocess else uuid.uuid4().hex
                row.version = version
                row.updated_at = now
                what = "updated, reprocessing every datum" if reprocess else "updated"
            else:
                version = 1
                salt = uuid.uuid4().hex
                s.add(PipelineRow(name=spec.name, version=1, state="running", created_at=now, updated_at=now))
                what = "created"
            s.add(
                PipelineVersionRow(
                    pipeline=spec.name,
                    version=version,
                    spec_json=json.dumps(to_pachyderm(spec), sort_keys=True),
                    fingerprint=fingerprint,
                    salt=salt,
                    created_at=now,
                )
            )
        if what == "created":
            self.pfs.create_repo(spec.name, description=f"output of pipeline {spec.name}", origin="pipeline")
        return version, what

    def pipeline_names(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(PipelineRow.name).order_by(PipelineRow.name)))

    def get_spec(self, name: str, version: int | None = None) -> tuple[PipelineSpec, int, str, str]:
        """(spec, version, salt, state) of a pipeline's current (or given) version."""
        with self.session() as s:
            row = s.get(PipelineRow, name)
            if row is None:
                known = ", ".join(s.scalars(select(PipelineRow.name).order_by(PipelineRow.name))) or "none"
                raise PpsError(f"pipeline {name!r} not found (pipelines: {known})")
            v = s.get(PipelineVersionRow, (name, version or row.version))
            assert v is not None
            return (
                parse_spec(json.loads(v.spec_json), source=f"pipeline {name} v{v.version}"),
                v.version,
                v.salt,
                row.state,
            )

    def set_state(self, name: str, state: str) -> None:
        with self.session() as s, s.begin():
            row = s.get(PipelineRow, name)
            if row is None:
                raise PpsError(f"pipeline {name!r} not found")
            row.state = state

    def topological_order(self) -> list[str]:
        """Pipelines ordered so that each comes after the pipelines whose output it reads."""
        names = self.pipeline_names()
        inputs = {n: set(self.get_spec(n)[0].input_repos()) for n in names}
        indegree = {n: len(inputs[n] & set(names)) for n in names}
        readers: dict[str, list[str]] = defaultdict(list)
        for n in names:
            for repo in inputs[n] & set(names):
                readers[repo].append(n)
        queue = deque(sorted(n for n in names if indegree[n] == 0))
        order: list[str] = []
        while queue:
            n = queue.popleft()
            order.append(n)
            for reader in sorted(readers[n]):
                indegree[reader] -= 1
                if indegree[reader] == 0:
                    queue.append(reader)
        return order + sorted(set(names) - set(order))  # a cycle cannot be created, but never drop one

    def list_pipelines(self) -> list[PipelineInfo]:
        return [self.inspect_pipeline(name) for name in self.pipeline_names()]

    def inspect_pipeline(self, name: str) -> PipelineInfo:
        spec, version, _salt, state = self.get_spec(name)
        with self.session() as s:
            row = s.get(PipelineRow, name)
            assert row is not None
            last = s.scalar(select(JobRow).where(JobRow.pipeline == name).order_by(JobRow.created_at.desc()).limit(1))
            return PipelineInfo(
                name=name,
                version=version,
                state=state,
                input_repos=spec.input_repos(),
                glob=[leaf.glob for leaf in spec.input.pfs_inputs()],
                parallelism=spec.parallelism_spec.workers(_cpu_count()),
                created_at=_aware(row.created_at),  # type: ignore[arg-type]
                updated_at=_aware(row.updated_at),  # type: ignore[arg-type]
                spec=to_pachyderm(spec),
                last_job=job_info(last) if last else None,
            )

    # ---- jobs, datums, logs ------------------------------------------------------------------------
    def list_jobs(self, pipeline: str | None = None, limit: int = 50) -> list[JobInfo]:
        with self.session() as s:
            q = select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)
            if pipeline:
                q = q.where(JobRow.pipeline == pipeline)
            return [job_info(r) for r in s.scalars(q)]

    def inspect_job(self, job_id: str) -> JobInfo:
        with self.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                rows = list(s.scalars(select(JobRow).where(JobRow.id.startswith(job_id)).limit(2)))
                if len(rows) != 1:
                    raise PpsError(f"job {job_id!r} not found; see `alarmsieve list job`")
                row = rows[0]
            return job_info(row)

    def list_datums(self, pipeline: str, job_id: str | None = None) -> list[DatumInfo]:
        with self.session() as s:
            if job_id is None:
                last = s.scalar(
                    select(JobRow.id).where(JobRow.pipeline == pipeline).order_by(JobRow.created_at.desc()).limit(1)
                )
                if last is None:
                    return []
                job_id = last
            else:
                job_id = self.inspect_job(job_id).id
            q = select(DatumRow).where(DatumRow.job_id == job_id).order_by(DatumRow.finished_at)
            return [
                DatumInfo(
                    job_id=r.job_id,
                    datum_id=r.datum_id,
                    pipeline=r.pipeline,
                    state=r.state,
                    attempts=r.attempts,
                    inputs=json.loads(r.inputs),
                    reason=r.reason,
                    traceback=r.traceback,
                    worker=r.worker,
                    seconds=r.seconds,
                    finished_at=_aware(r.finished_at),
                )
                for r in s.scalars(q)
            ]

    def logs(
        self,
        pipeline: str | None = None,
        job: str | None = None,
        datum: str | None = None,
        limit: int = 10000,
    ) -> list[LogInfo]:
        with self.session() as s:
            q = select(LogRow).order_by(LogRow.id)
            if pipeline:
                q = q.where(LogRow.pipeline == pipeline)
            if job:
                q = q.where(LogRow.job_id.startswith(job))
            if datum:
                q = q.where(LogRow.datum_id.startswith(datum))
            return [
                LogInfo(
                    ts=_aware(r.ts),  # type: ignore[arg-type]
                    pipeline=r.pipeline,
                    job=r.job_id,
                    datum=r.datum_id,
                    worker=r.worker,
                    level=r.level,
                    message=r.message,
                )
                for r in s.scalars(q.limit(limit))
            ]


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1
