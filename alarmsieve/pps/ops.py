"""Operating the pipelines: system status, asking failed datums to run again, and deletes that know
what depends on what.

Everything here reads or changes the catalog only; the runner (``alarmsieve run`` / ``serve``) does the
work. A request made while a runner is up (``restart datum``, ``rerun job``) is picked up by its next
pass; ``alarmsieve run`` runs it at once.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime

from pydantic import BaseModel
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from alarmsieve.pfs.tables import BranchRow, CommitRow, FileRow, ProvenanceRow
from alarmsieve.pps.api import JobInfo, Pps, PpsError, job_info
from alarmsieve.pps.spec import parse_spec
from alarmsieve.pps.tables import (
    DatumClaimRow,
    DatumRow,
    JobRow,
    LogRow,
    PipelineRow,
    PipelineVersionRow,
    ProcessedDatumRow,
    WorkerRow,
)


class WorkerStatus(BaseModel):
    worker: str
    pipeline: str
    version: int
    pid: int
    state: str  # idle | busy | dead | stopped
    alive: bool
    restarts: int
    reason: str
    updated_at: datetime


class PipelineStatus(BaseModel):
    """One pipeline's health: the one model `status`, `GET /api/v1/status` and the dashboard's /system render."""

    name: str
    version: int
    state: str  # running | paused | failing | crashing
    reason: str
    parallelism: int = 1  # workers the spec asks for
    workers_alive: int
    workers_busy: int
    restarts: int
    queued: int
    failed_datums: int
    datums: int
    last_job: JobInfo | None


class NotificationCounts(BaseModel):
    pending: int = 0
    failed: int = 0
    sent: int = 0


class StatusReport(BaseModel):
    at: datetime
    pipelines: list[PipelineStatus]
    workers: list[WorkerStatus]
    notifications: NotificationCounts
    problems: list[str]


class DeletePlan(BaseModel):
    """What a delete removes: the thing asked for and everything downstream that goes with it."""

    pipelines: list[str] = []
    repos: list[str] = []
    commits: list[str] = []  # repo@commit


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Operations:
    def __init__(self, pps: Pps) -> None:
        self.pps = pps
        self.pfs = pps.pfs

    def session(self) -> Session:
        return self.pfs.session()

    # ---- status ------------------------------------------------------------------------------------
    def status(self) -> StatusReport:
        """One look at the whole system; a handful of indexed queries, whatever the datum count."""
        with self.session() as s:
            rows = list(s.scalars(select(PipelineRow).order_by(PipelineRow.name)))
            failed_by = dict(
                s.execute(
                    select(ProcessedDatumRow.pipeline, func.count())
                    .where(ProcessedDatumRow.state.in_(("failed", "restart")))
                    .group_by(ProcessedDatumRow.pipeline)
                ).all()
            )
            workers = [
                WorkerStatus(
                    worker=w.worker_id,
                    pipeline=w.pipeline,
                    version=w.version,
                    pid=w.pid,
                    state=w.state,
                    alive=w.state in ("idle", "busy") and _pid_alive(w.pid),
                    restarts=w.restarts,
                    reason=w.reason,
                    updated_at=_aware(w.updated_at),
                )
                for w in s.scalars(select(WorkerRow).order_by(WorkerRow.pipeline, WorkerRow.worker_id))
            ]
            pipelines = []
            problems = []
            for row in rows:
                last = s.scalar(
                    select(JobRow).where(JobRow.pipeline == row.name).order_by(JobRow.created_at.desc()).limit(1)
                )
                last_info = job_info(last) if last is not None else None
                queued = 0
                if last is not None and last.state == "running":
                    done = s.scalar(select(func.count()).select_from(DatumRow).where(DatumRow.job_id == last.id)) or 0
                    queued = max(0, (last.to_run or 0) - done)
                mine = [w for w in workers if w.pipeline == row.name]
                failed = int(failed_by.get(row.name, 0))
                total = (last.datums_total if last is not None and last.state != "running" else None) or 0
                state, reason = row.state, row.reason or ""
                if state == "running" and last is not None and last.state in ("failure", "error"):
                    state, reason = "failing", last.reason
                elif state == "running" and failed:
                    state, reason = "failing", f"{failed} datum(s) failed; see `alarmsieve list datum {row.name}`"
                if state in ("failing", "crashing"):
                    problems.append(f"{row.name} {state}: {reason}")
                pipelines.append(
                    PipelineStatus(
                        name=row.name,
                        version=row.version,
                        state=state,
                        reason=reason,
                        parallelism=self._parallelism(row.name),
                        workers_alive=sum(1 for w in mine if w.alive),
                        workers_busy=sum(1 for w in mine if w.alive and w.state == "busy"),
                        restarts=sum(w.restarts for w in mine if w.state in ("idle", "busy")),
                        queued=queued,
                        failed_datums=failed,
                        datums=total,
                        last_job=last_info,
                    )
                )
        notes = self._notification_counts()
        if notes.failed:
            problems.append(f"{notes.failed} notification(s) failed; see `alarmsieve logs --pipeline notify`")
        return StatusReport(
            at=datetime.now(UTC), pipelines=pipelines, workers=workers, notifications=notes, problems=problems
        )

    def _parallelism(self, name: str) -> int:
        try:
            return self.pps.get_spec(name)[0].parallelism_spec.workers(os.cpu_count() or 1)
        except PpsError:  # deleted between the two reads
            return 0

    def _notification_counts(self) -> NotificationCounts:
        from alarmsieve.notify.ledger import NotificationRecord

        counts = NotificationCounts()
        with self.session() as s, contextlib.suppress(Exception):  # no ledger table: nothing to count
            for state, n in s.execute(
                select(NotificationRecord.state, func.count()).group_by(NotificationRecord.state)
            ):
                if state in ("pending", "failed", "sent"):
                    setattr(counts, state, int(n))
        return counts

    # ---- running again -----------------------------------------------------------------------------
    def request(self, pipeline: str, what: str = "rerun") -> None:
        """Ask the runner for work on ``pipeline`` even though its inputs have not moved."""
        with self.session() as s, s.begin():
            row = s.get(PipelineRow, pipeline)
            if row is None:
                self.pps.get_spec(pipeline)  # raises, naming the pipelines that exist
                return
            if row.pending != "rebuild":
                row.pending = what

    def restart_datum(self, pipeline: str, datum: str) -> list[str]:
        """Mark datums (an id prefix, or ``failed`` for all failed ones) to run in the pipeline's next job.

        Returns the full ids marked.
        """
        with self.session() as s, s.begin():
            if s.get(PipelineRow, pipeline) is None:
                self.pps.get_spec(pipeline)
            q = select(ProcessedDatumRow.datum_id).where(ProcessedDatumRow.pipeline == pipeline)
            if datum == "failed":
                q = q.where(ProcessedDatumRow.state == "failed")
            else:
                q = q.where(ProcessedDatumRow.datum_id.startswith(datum))
            ids = list(s.scalars(q))
            if not ids:
                what = "no failed datums" if datum == "failed" else f"no datum {datum!r}"
                raise PpsError(
                    f"pipeline {pipeline!r} has {what} in its current output; see `alarmsieve list datum {pipeline}`"
                )
            if datum != "failed" and len(ids) > 1:
                raise PpsError(f"datum prefix {datum!r} matches {len(ids)} datums; give more characters")
            for start in range(0, len(ids), 500):
                s.execute(
                    update(ProcessedDatumRow)
                    .where(
                        ProcessedDatumRow.pipeline == pipeline, ProcessedDatumRow.datum_id.in_(ids[start : start + 500])
                    )
                    .values(state="restart")
                )
        self.request(pipeline)
        return ids

    def rerun_job(self, job_id: str) -> tuple[JobInfo, list[str]]:
        """Run a job's failed datums again (those still failed in the pipeline's current output)."""
        job = self.pps.inspect_job(job_id)
        with self.session() as s:
            failed = set(
                s.scalars(select(DatumRow.datum_id).where(DatumRow.job_id == job.id, DatumRow.state == "failed"))
            )
            still = set(
                s.scalars(
                    select(ProcessedDatumRow.datum_id).where(
                        ProcessedDatumRow.pipeline == job.pipeline, ProcessedDatumRow.state == "failed"
                    )
                )
            )
        ids = sorted(failed & still)
        if job.state == "error":
            self.request(job.pipeline)  # an errored job (workers could not start) is simply tried again
            return job, ids
        if not ids:
            raise PpsError(
                f"job {job.id} of {job.pipeline} has no failed datums left to run "
                f"({len(failed)} failed in it, all run again since); see `alarmsieve list datum {job.pipeline}`"
            )
        with self.session() as s, s.begin():
            for start in range(0, len(ids), 500):
                s.execute(
                    update(ProcessedDatumRow)
                    .where(
                        ProcessedDatumRow.pipeline == job.pipeline,
                        ProcessedDatumRow.datum_id.in_(ids[start : start + 500]),
                    )
                    .values(state="restart")
                )
        self.request(job.pipeline)
        return job, ids

    # ---- dependencies and deletes ------------------------------------------------------------------
    def _readers(self) -> dict[str, list[str]]:
        """repo -> pipelines that read it."""
        out: dict[str, list[str]] = {}
        with self.session() as s:
            for row in s.scalars(select(PipelineRow)):
                v = s.get(PipelineVersionRow, (row.name, row.version))
                if v is None:
                    continue
                for repo in parse_spec(json.loads(v.spec_json), source=row.name).input_repos():
                    out.setdefault(repo, []).append(row.name)
        return out

    def _downstream_pipelines(self, repo: str) -> list[str]:
        readers = self._readers()
        seen: list[str] = []
        todo = list(readers.get(repo, []))
        while todo:
            name = todo.pop(0)
            if name in seen:
                continue
            seen.append(name)
            todo.extend(readers.get(name, []))
        return seen

    def plan_delete_pipeline(self, name: str) -> DeletePlan:
        self.pps.get_spec(name)
        down = self._downstream_pipelines(name)
        return DeletePlan(pipelines=[name, *down], repos=[name, *down])

    def plan_delete_repo(self, name: str) -> DeletePlan:
        if not self.pfs.repo_exists(name):
            self.pfs.list_files(name)  # raises, naming the repos that exist
        with self.session() as s:
            if s.get(PipelineRow, name) is not None:
                raise PpsError(
                    f"repo {name!r} is the output of pipeline {name!r}; delete the pipeline instead "
                    f"(`alarmsieve delete pipeline {name}`), which deletes its repo too"
                )
        down = self._downstream_pipelines(name)
        return DeletePlan(pipelines=down, repos=[name, *down])

    def plan_delete_commit(self, repo: str, ref: str) -> tuple[str, DeletePlan]:
        info = self.pfs.inspect_commit(repo, ref)
        head = self.pfs.head(repo, info.branch)
        if head is None or head.id != info.id:
            raise PpsError(
                f"{repo}@{info.id} is not the head of {repo}@{info.branch}; only the newest commit can be deleted "
                "(delete the newer ones first, newest first)"
            )
        commits = [f"{repo}@{info.id}"]
        todo = [info.id]
        while todo:
            cid = todo.pop(0)
            for sub in self.pfs.subvenance(cid):
                label = f"{sub.repo}@{sub.id}"
                if label not in commits:
                    sub_head = self.pfs.head(sub.repo, sub.branch)
                    if sub_head is None or sub_head.id != sub.id:
                        raise PpsError(
                            f"{repo}@{info.id} cannot be deleted: {label} was made from it and is no longer the head "
                            f"of {sub.repo}; later output depends on it"
                        )
                    commits.append(label)
                    todo.append(sub.id)
        return info.id, DeletePlan(commits=commits)

    def delete_pipelines(self, names: list[str]) -> None:
        """Delete pipelines (downstream first) with their output repos, jobs, datums, workers and logs."""
        for name in reversed(names):
            with self.session() as s, s.begin():
                for table in (ProcessedDatumRow, DatumRow, DatumClaimRow, JobRow, LogRow, WorkerRow):
                    s.execute(delete(table).where(table.pipeline == name))
                s.execute(delete(PipelineVersionRow).where(PipelineVersionRow.pipeline == name))
                s.execute(delete(PipelineRow).where(PipelineRow.name == name))
            if self.pfs.repo_exists(name):
                self.pfs.delete_repo(name)

    def delete_commits(self, labels: list[str]) -> None:
        """Delete head commits (downstream first): their file versions go, the branch moves to the parent.

        A pipeline whose output commit goes rebuilds its output from its inputs in its next job.
        """
        for label in reversed(labels):
            repo, _, cid = label.partition("@")
            with self.session() as s, s.begin():
                row = s.get(CommitRow, cid)
                if row is None:
                    continue
                branch = s.get(BranchRow, (row.repo_id, row.branch))
                assert branch is not None and branch.head_commit_id == cid
                base = (FileRow.repo_id == row.repo_id, FileRow.branch == row.branch)
                s.execute(delete(FileRow).where(*base, FileRow.added_seq == row.seq))
                s.execute(update(FileRow).where(*base, FileRow.removed_seq == row.seq).values(removed_seq=None))
                s.execute(delete(ProvenanceRow).where(ProvenanceRow.commit_id == cid))
                branch.head_commit_id = row.parent_id
                branch.head_seq = row.seq - 1
                s.delete(row)
                if s.get(PipelineRow, repo) is not None:
                    # its processed-datum index described the commit that is gone: plan everything again
                    s.execute(delete(ProcessedDatumRow).where(ProcessedDatumRow.pipeline == repo))
                    s.execute(
                        update(JobRow)
                        .where(JobRow.pipeline == repo, JobRow.output_commit == cid)
                        .values(state="killed", reason=f"its output commit {cid} was deleted")
                    )
                    pipe = s.get(PipelineRow, repo)
                    assert pipe is not None
                    pipe.pending = "rebuild"

    def delete_repo(self, name: str) -> None:
        if self.pfs.repo_exists(name):
            self.pfs.delete_repo(name)
