"""The job runner: turns new input commits into jobs, jobs into datums, datums into one output commit.

For each pipeline (upstream first) whose input heads moved since its last job, the runner plans the
datums, runs the new or changed ones on the pipeline's worker pool, and writes the output commit:
parent output − outputs of removed or changed datums + new outputs, with provenance to the input
commits and the pipeline version. The commit and the processed-datum index change in one
transaction, so a runner killed mid-job leaves the previous state intact and the next run redoes it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from alarmsieve.pfs.api import CommitInfo, Pfs
from alarmsieve.pps.api import JobInfo, Pps, job_info
from alarmsieve.pps.datums import Datum, plan_all, plan_changed
from alarmsieve.pps.executor import WorkerPool, WorkerStartError, _Slot
from alarmsieve.pps.spec import PipelineSpec, cron_next
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
from alarmsieve.pps.worker import DatumFile, DatumResult, DatumTask, WorkerConfig

log = logging.getLogger("alarmsieve.runner")


class JobProgress(Protocol):
    def job_started(self, pipeline: str, job_id: str, to_run: int) -> None: ...
    def datum_done(self, pipeline: str, ok: bool) -> None: ...
    def job_finished(self, job: JobInfo) -> None: ...


@dataclass
class RuntimePaths:
    home: Path
    object_store: str
    catalog_url: str
    model_dir: Path | None
    model_cache: Path | None
    executor: str = "local"  # local | ray
    ray_address: str | None = None
    # single | shared | auto (shared unless SQLite); None: ALARMSIEVE_RUNNERS. See `Runner.shared`.
    runners: str | None = None
    lease_seconds: float | None = None  # None: ALARMSIEVE_LEASE_SECONDS


@dataclass
class _Processed:
    hash: str
    state: str
    outputs: list[str]


def _now() -> datetime:
    return datetime.now(UTC)


class Runner:
    def __init__(
        self,
        pfs: Pfs,
        pps: Pps,
        paths: RuntimePaths,
        *,
        progress: JobProgress | None = None,
        cpu_count: int | None = None,
    ) -> None:
        self.pfs = pfs
        self.pps = pps
        self.paths = paths
        self.progress = progress
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self.pools: dict[tuple[str, int], WorkerPool] = {}
        self.started_at = _now()
        runners, lease = paths.runners, paths.lease_seconds
        if runners is None or lease is None:
            from alarmsieve.config import load_settings

            settings = load_settings()
            runners = runners or settings.runners
            lease = lease or settings.lease_seconds
        if runners not in ("auto", "single", "shared"):
            raise ValueError(f"runners must be auto, single or shared, not {runners!r}")
        # Several runners on one catalog share jobs: a job is planned once, its datums are claimed in
        # chunks under leases, and one of them makes the output commit (see _work_shared).
        self.shared = runners == "shared" or (runners == "auto" and not paths.catalog_url.startswith("sqlite"))
        self.lease_seconds = float(lease)
        self.runner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._recover_interrupted_jobs()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def _recover_interrupted_jobs(self) -> None:
        if self.shared:  # a running shared job is finished by whichever runner joins it; nothing to undo
            return
        with self.pfs.session() as s, s.begin():
            s.execute(delete(DatumClaimRow))  # claims of shared jobs that are now killed
            s.execute(
                update(JobRow)
                .where(JobRow.state == "running")
                .values(
                    state="killed",
                    finished_at=_now(),
                    reason="the runner stopped before this job finished; its datums run again in the next job",
                )
            )
            s.execute(  # workers of a runner that is gone are gone too
                update(WorkerRow)
                .where(WorkerRow.state.in_(("idle", "busy")))
                .values(state="stopped", updated_at=_now())
            )

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()

    def _worker_event(self, pipeline: str, version: int) -> Callable[[str, _Slot, str], None]:
        """Keeps ``pps_workers`` (what ``status`` shows) in step with the pool's workers."""

        def on_worker(what: str, slot: _Slot, reason: str) -> None:
            now = _now()
            with self.pfs.session() as s, s.begin():
                row = s.get(WorkerRow, slot.config.worker_id)
                if row is None:
                    row = WorkerRow(
                        worker_id=slot.config.worker_id,
                        pipeline=pipeline,
                        version=version,
                        pid=slot.pid,
                        state="idle",
                        restarts=slot.restarts,
                        reason="",
                        started_at=now,
                        updated_at=now,
                    )
                    s.add(row)
                    if what == "started":  # this process's workers replace whatever an earlier run left
                        s.execute(
                            delete(WorkerRow).where(
                                WorkerRow.pipeline == pipeline,
                                WorkerRow.state.in_(("stopped", "dead")),
                                WorkerRow.worker_id != slot.config.worker_id,
                                WorkerRow.updated_at < self.started_at,
                            )
                        )
                row.pid = slot.pid
                row.updated_at = now
                row.state = {"started": "idle", "died": "dead", "stopped": "stopped"}[what]
                row.reason = reason
                if what == "died":  # keep the last few dead workers (their reasons) for `status`, not all
                    s.flush()
                    old = list(
                        s.scalars(
                            select(WorkerRow.worker_id)
                            .where(WorkerRow.pipeline == pipeline, WorkerRow.state == "dead")
                            .order_by(WorkerRow.updated_at.desc())
                            .offset(10)
                        )
                    )
                    if old:
                        s.execute(delete(WorkerRow).where(WorkerRow.worker_id.in_(old)))

        return on_worker

    def _set_workers_state(self, pipeline: str, state: str, s: Session | None = None) -> None:
        """Workers idle/busy for `status`; in ``s`` when given (one transaction less before a job's first datum)."""
        if s is None:
            with self.pfs.session() as own, own.begin():
                return self._set_workers_state(pipeline, state, own)
        s.execute(
            update(WorkerRow)
            .where(WorkerRow.pipeline == pipeline, WorkerRow.state.in_(("idle", "busy")))
            .values(state=state, updated_at=_now())
        )

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pool_for(self, name: str, version: int, spec: PipelineSpec) -> WorkerPool:
        key = (name, version)
        pool = self.pools.get(key)
        if pool is None:
            for (other, other_version), old in list(self.pools.items()):
                if other == name and other_version != version:  # a new version replaces the old workers
                    old.close()
                    del self.pools[(other, other_version)]
            run_id = uuid.uuid4().hex[:6]
            spawned: dict[int, int] = {}
            code_dir = self.pps.code_dir(name, version)

            def make_config(index: int) -> WorkerConfig:
                # a replacement worker gets its own id (…-r1, -r2), so logs and status tell them apart
                spawned[index] = spawned.get(index, -1) + 1
                suffix = f"-r{spawned[index]}" if spawned[index] else ""
                worker_id = f"{name}-v{version}-w{index}-{run_id}{suffix}"
                return WorkerConfig(
                    worker_id=worker_id,
                    pipeline=name,
                    pipeline_version=f"{name}@v{version}",
                    cmd=list(spec.transform.cmd),
                    stdin=list(spec.transform.stdin),
                    env=dict(spec.transform.env),
                    scratch=self.paths.home / "scratch" / worker_id,
                    object_store=self.paths.object_store,
                    catalog_url=self.paths.catalog_url,
                    workspace=self.paths.home,
                    model_dir=self.paths.model_dir,
                    model_cache=self.paths.model_cache,
                    err_cmd=list(spec.transform.err_cmd),
                    err_stdin=list(spec.transform.err_stdin),
                    code_dir=code_dir,
                )

            timeout = spec.datum_timeout.total_seconds() if spec.datum_timeout else None
            workers = spec.parallelism_spec.workers(self.cpu_count)
            if self.paths.executor == "ray":
                from alarmsieve.pps.executor_ray import RayWorkerPool

                pool = RayWorkerPool(  # type: ignore[assignment]
                    make_config,
                    workers,
                    datum_tries=spec.datum_tries,
                    datum_timeout=timeout,
                    address=self.paths.ray_address,
                    resource_requests=spec.resource_requests,
                    coefficient=spec.parallelism_spec.coefficient,  # × alive Ray nodes, not local CPUs
                )
            else:
                pool = WorkerPool(
                    make_config,
                    workers,
                    datum_tries=spec.datum_tries,
                    datum_timeout=timeout,
                    on_worker=self._worker_event(name, version),
                )
            self.pools[key] = pool
        return pool

    # ---- scheduling --------------------------------------------------------------------------------
    def run_until_idle(self, max_rounds: int = 1000) -> list[JobInfo]:
        """Run jobs until no pipeline has new input; returns the jobs run, in order.

        A pipeline whose job could not run (state ``error``) is not tried again in this call.
        """
        jobs: list[JobInfo] = []
        errored: set[str] = set()
        self.tick_crons()
        for _ in range(max_rounds):
            ran = False
            for name in self.pps.topological_order():
                if name in errored:
                    continue
                job = self.run_pipeline_once(name)
                if job is not None:
                    jobs.append(job)
                    ran = True
                    if job.state == "error":
                        errored.add(name)
            if not ran:
                break
        return jobs

    def tick_crons(self, now: datetime | None = None) -> list[str]:
        """Commit a tick file to every cron input whose interval has passed (Pachyderm's cron input).

        The file is named after the tick's time (RFC 3339, UTC) and holds it; with `overwrite` it
        replaces the previous tick. At most one tick per input per call, so a slow job never piles up
        ticks. Returns the repos ticked.
        """
        now = now or _now()
        ticked = []
        for name in self.pps.pipeline_names():
            spec, _version, _salt, state = self.pps.get_spec(name)
            if state == "paused":
                continue
            for cron in spec.cron_inputs():
                head = self.pfs.head(cron.repo)
                if head is not None and cron_next(cron.spec, _tick_time(head)) > now:
                    continue
                stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
                builder = self.pfs.start_commit(cron.repo, description=f"cron tick {stamp}")
                if cron.overwrite:
                    builder.delete("/")
                builder.put_bytes(f"/{stamp}", (stamp + "\n").encode())
                builder.finish()
                ticked.append(cron.repo)
        return ticked

    def _input_commits(self, spec: PipelineSpec) -> dict[str, CommitInfo] | None:
        """The head commit of every input that has one; None (nothing to do) while no input has any.

        An input without commits counts as empty, so a union of `images` and `frames` runs on images
        before any video has arrived (and a cross with an empty side has no datums, as in Pachyderm).
        """
        commits: dict[str, CommitInfo] = {}
        for leaf in spec.input.pfs_inputs():
            head = self.pfs.head(leaf.repo, leaf.branch)
            if head is not None:
                commits[leaf.name] = head
        return commits or None

    def run_pipeline_once(self, name: str) -> JobInfo | None:
        spec, version, salt, state = self.pps.get_spec(name)
        if state == "paused":
            return None
        if self.shared:
            active = self._active_shared_job(name)
            if active is not None:
                return self._work_shared(name, active)
        commits = self._input_commits(spec)
        if commits is None:
            return None
        commit_ids = {k: c.id for k, c in commits.items()}
        # A local transform's scripts are part of its version: looked at again whenever a job is planned.
        code = self.pps.current_code_identity(name, version, spec)
        if code is not None:
            version, what = self.pps.record_code_identity(name, version, code)
            if what != "unchanged":
                log.info("pipeline %s: %s (version %d)", name, what, version)
                spec, version, salt, state = self.pps.get_spec(name, version)
        with self.pfs.session() as s:
            row = s.get(PipelineRow, name)
            pending = row.pending if row is not None else ""
            last = s.scalar(
                select(JobRow)
                .where(JobRow.pipeline == name, JobRow.state.in_(("success", "failure")))
                .order_by(JobRow.created_at.desc())
                .limit(1)
            )
            if (
                not pending
                and last is not None
                and last.version == version
                and json.loads(last.input_commits) == commit_ids
            ):
                return None
            last_salt = None
            if last is not None:
                last_version = s.get(PipelineVersionRow, (name, last.version))
                last_salt = last_version.salt if last_version else None
            last_inputs = json.loads(last.input_commits) if last is not None else None
            last_id = last.id if last is not None else None
        if pending:
            with self.pfs.session() as s, s.begin():
                row = s.get(PipelineRow, name)
                if row is not None:
                    row.pending = ""
        # The workers report what they run (stage code version, model sha256): a change is a new version.
        try:
            identity = self.pool_for(name, version, spec).identity() | (code or {})
        except WorkerStartError as exc:
            broken = self.pools.pop((name, version), None)
            if broken is not None:
                broken.close()
            return self._error_job(name, version, commit_ids, f"{type(exc).__name__}: {exc}")
        new_version, what = self.pps.record_identity(name, version, identity)
        if new_version != version:
            log.info("pipeline %s: %s (version %d)", name, what, new_version)
            spec, version, salt, state = self.pps.get_spec(name, new_version)
        if pending == "rebuild" or spec.reprocess_spec == "every_job":
            last_inputs = None
        last_inputs = last_inputs if last_salt == salt else None
        if self.shared:
            return self._start_shared_job(name, spec, version, salt, commits, last_inputs, last_id)
        return self._run_job(name, spec, version, salt, commits, last_inputs)

    def _new_job(self, name: str, version: int, commit_ids: dict[str, str]) -> str:
        """A job row in state ``running``; returns its id."""
        job_id = uuid.uuid4().hex
        with self.pfs.session() as s, s.begin():
            s.add(_running_job_row(job_id, name, version, commit_ids))
        return job_id

    def _error_job(self, name: str, version: int, commit_ids: dict[str, str], reason: str) -> JobInfo:
        job_id = self._new_job(name, version, commit_ids)
        if self.progress:
            self.progress.job_started(name, job_id, 0)
        return self._fail_job(job_id, reason, crashing=True)

    # ---- one job -----------------------------------------------------------------------------------
    def _run_job(
        self,
        name: str,
        spec: PipelineSpec,
        version: int,
        salt: str,
        commits: dict[str, CommitInfo],
        last_inputs: dict[str, str] | None,
    ) -> JobInfo:
        commit_ids = {k: c.id for k, c in commits.items()}
        job_id = self._new_job(name, version, commit_ids)
        logs = _JobLog(self.pfs, name, job_id)
        present, gone, processed, full_plan, to_run, plan_seconds = self._plan_job(
            name, spec, salt, commit_ids, last_inputs
        )
        logs.add(
            f"job started: {len(to_run)} datums to process, {len(present) - len(to_run)} unchanged in this plan, "
            f"{len(gone)} removed (planned in {plan_seconds * 1000:.1f} ms)"
        )
        with self.pfs.session() as s, s.begin():
            s.execute(update(JobRow).where(JobRow.id == job_id).values(to_run=len(to_run)))
            if to_run:
                self._set_workers_state(name, "busy", s)
        if self.progress:
            self.progress.job_started(name, job_id, len(to_run))

        results: dict[str, DatumResult] = {}
        datum_rows: list[DatumRow] = []
        by_id = {d.id: d for d in to_run}
        if to_run:
            times = {k: c.finished_at for k, c in commits.items()}
            tasks = [DatumTask(job_id, d.id, d.files, times) for d in to_run]

            def on_result(result: DatumResult, attempts: int) -> None:
                results[result.datum_id] = result
                datum_rows.append(_datum_row(name, by_id[result.datum_id], result, attempts))
                logs.add_result(result, attempts)
                if len(datum_rows) >= 200:
                    self._flush(datum_rows, logs)
                if self.progress:
                    self.progress.datum_done(name, result.ok)

            def on_retry(task: DatumTask, reason: str) -> None:
                logs.add(f"attempt {task.attempt} failed, retrying: {reason}", datum=task.datum_id, level="WARNING")

            pool = self.pool_for(name, version, spec)
            try:
                pool.run(tasks, on_result, on_retry)
            except Exception as exc:
                self._flush(datum_rows, logs)
                broken = self.pools.pop((name, version), None)
                if broken is not None:
                    broken.close()
                return self._fail_job(
                    job_id, f"{type(exc).__name__}: {exc}", crashing=isinstance(exc, WorkerStartError)
                )
            finally:
                self._set_workers_state(name, "idle")
            if getattr(pool, "crash_looping", False):  # an executor without crash tracking never crash-loops
                self._set_pipeline_health(
                    name,
                    f"workers keep dying: {pool.consecutive_deaths} deaths in a row, last: {pool.last_death}",
                )
            else:
                self._set_pipeline_health(name, "")
        self._flush(datum_rows, logs)
        return self._commit_job(
            name,
            spec,
            version,
            job_id,
            commits,
            present,
            gone,
            processed,
            to_run,
            results,
            plan_seconds,
            logs,
            full_plan,
        )

    def _plan_job(
        self,
        name: str,
        spec: PipelineSpec,
        salt: str,
        commit_ids: dict[str, str],
        last_inputs: dict[str, str] | None,
    ) -> tuple[dict[str, Datum], set[str], dict[str, _Processed], bool, list[Datum], float]:
        """:meth:`_plan` plus the datums this job runs and how long planning took."""
        started = time.perf_counter()
        present, gone, processed, full_plan = self._plan(name, spec, salt, commit_ids, last_inputs)
        if spec.reprocess_spec == "every_job":  # Pachyderm: every datum runs in every job
            to_run = list(present.values())
        else:
            to_run = [d for d in present.values() if _needs_run(d, processed.get(d.id))]
        return present, gone, processed, full_plan, to_run, time.perf_counter() - started

    def _plan(
        self,
        name: str,
        spec: PipelineSpec,
        salt: str,
        commit_ids: dict[str, str],
        last_inputs: dict[str, str] | None,
    ) -> tuple[dict[str, Datum], set[str], dict[str, _Processed], bool]:
        leaves = spec.input.pfs_inputs()
        # A single pfs input, or a union of pfs inputs (validate: images + frames; notify: assess + clips):
        # every datum is one leaf's root, so each leaf is planned from its own diff. A leaf without
        # commits is empty; one that had commits and has none now is planned in full.
        flat = spec.input.pfs is not None or (
            spec.input.union is not None and all(child.pfs is not None for child in spec.input.union)
        )
        with self.pfs.session() as s:
            if (
                flat
                and last_inputs is not None
                and any(leaf.name in last_inputs for leaf in leaves)
                and all(leaf.name in commit_ids for leaf in leaves if leaf.name in last_inputs)
            ):
                failed: dict[str, list[str]] = {}
                for roots in s.scalars(
                    select(ProcessedDatumRow.roots).where(
                        ProcessedDatumRow.pipeline == name,
                        ProcessedDatumRow.state.in_(("failed", "restart", "recovered")),
                    )
                ):
                    input_name, root = json.loads(roots)[0]
                    failed.setdefault(input_name, []).append(root)
                present, gone = {}, set()
                for leaf in leaves:
                    if leaf.name not in commit_ids:
                        continue
                    found, went = plan_changed(
                        self.pfs,
                        leaf,
                        last_inputs.get(leaf.name),
                        commit_ids[leaf.name],
                        salt,
                        failed.get(leaf.name, ()),
                    )
                    present.update(found)
                    gone |= went
                ids = list(set(present) | gone)
                processed = self._load_processed(s, name, ids)
                gone = {i for i in gone if i in processed}
                full = False
            else:
                full = True
                present = plan_all(self.pfs, spec.input, commit_ids, salt)
                processed = self._load_processed(s, name, None)
                gone = set(processed) - set(present)
        return present, gone, processed, full

    @staticmethod
    def _load_processed(s: Session, name: str, ids: list[str] | None) -> dict[str, _Processed]:
        out: dict[str, _Processed] = {}
        chunks = [None] if ids is None else [ids[i : i + 500] for i in range(0, len(ids), 500)]
        for chunk in chunks:
            q = select(
                ProcessedDatumRow.datum_id,
                ProcessedDatumRow.hash,
                ProcessedDatumRow.state,
                ProcessedDatumRow.outputs,
            ).where(ProcessedDatumRow.pipeline == name)
            if chunk is not None:
                q = q.where(ProcessedDatumRow.datum_id.in_(chunk))
            for datum_id, hash_, state, outputs in s.execute(q):
                out[datum_id] = _Processed(hash_, state, json.loads(outputs))
        return out

    def _flush(self, datum_rows: list[DatumRow], logs: _JobLog) -> None:
        with self.pfs.session() as s, s.begin():
            s.add_all(datum_rows)
            logs.flush(s)
        datum_rows.clear()

    def _set_pipeline_health(self, name: str, crash_reason: str) -> None:
        """``crashing`` with the reason while its workers keep dying or cannot start; back to running after."""
        with self.pfs.session() as s, s.begin():
            row = s.get(PipelineRow, name)
            if row is None or row.state == "paused":
                return
            if crash_reason:
                row.state, row.reason = "crashing", crash_reason
            elif row.state == "crashing":
                row.state, row.reason = "running", ""

    def _fail_job(self, job_id: str, reason: str, *, crashing: bool = False) -> JobInfo:
        """The job could not run at all (e.g. its workers could not start): state ``error``.

        Unlike ``failure`` (some datums failed), an ``error`` job does not count as done, so the
        next run tries the same inputs again once the cause (a missing model, say) is fixed.
        """
        with self.pfs.session() as s, s.begin():
            row = s.get(JobRow, job_id)
            assert row is not None
            row.state = "error"
            row.reason = reason
            row.finished_at = _now()
            s.flush()
            info = job_info(row)
        if crashing:
            self._set_pipeline_health(info.pipeline, f"workers cannot start: {reason}")
        _JobLog.write(self.pfs, info.pipeline, job_id, f"job error: {reason}", level="ERROR")
        if self.progress:
            self.progress.job_finished(info)
        return info

    def _commit_job(
        self,
        name: str,
        spec: PipelineSpec,
        version: int,
        job_id: str,
        commits: dict[str, CommitInfo],
        present: dict[str, Datum],
        gone: set[str],
        processed: dict[str, _Processed],
        to_run: list[Datum],
        results: dict[str, DatumResult],
        plan_seconds: float,
        logs: _JobLog,
        full_plan: bool = False,
        shared: bool = False,
    ) -> JobInfo:
        builder = self.pfs.start_commit(
            name,
            origin="auto",
            description=f"job {job_id}",
            provenance=[c.id for c in commits.values()],
            job_id=job_id,
            pipeline_version=f"{name}@v{version}",
        )
        rewritten = gone | {d.id for d in to_run}
        if full_plan and not processed and self.pfs.head(name) is not None:
            builder.delete("/")  # nothing is known to have made the current output: rebuild it whole
        for datum_id in rewritten:
            old = processed.get(datum_id)
            for path in old.outputs if old else []:
                builder.delete(path)
        # Two datums may not write one path: check against this job and against unchanged datums.
        claimed: dict[str, str] = {}
        clashed: list[str] = []  # datums whose DatumRow (already written as ok) must now say failed
        new_paths = [p for r in results.values() if r.ok for p, _, _ in r.outputs]
        existing = self.pfs.lookup(name, "master", new_paths) if new_paths else {}
        for datum in to_run:
            result = results.get(datum.id)
            if result is None or not result.ok:
                continue
            for path, _sha, _size in result.outputs:
                owner = claimed.get(path)
                if owner is None:
                    current = existing.get(path)
                    if current is not None and current.tag not in rewritten:
                        owner = current.tag
                if owner is not None and owner != datum.id:
                    result.ok = False
                    result.reason = (
                        f"output path {path} is written by two datums: {owner[:12]} and {datum.id[:12]}; "
                        "change the glob or the stage so that each datum writes its own paths"
                    )
                    logs.add(result.reason, datum=datum.id, level="ERROR")
                    clashed.append(datum.id)
                    break
            if result.ok:
                for path, sha256, size in result.outputs:
                    claimed[path] = datum.id
                    builder.put_object(path, sha256, size, tag=datum.id)

        failed = [d for d in to_run if not results.get(d.id) or not (results[d.id].ok or results[d.id].recovered)]
        recovered = sum(
            1
            for d in to_run
            if d.id in results
            and (
                results[d.id].recovered
                or (results[d.id].ok and processed.get(d.id) and processed[d.id].state in ("failed", "restart"))
            )
        )

        def record(s: Session, commit: CommitInfo) -> None:
            if shared:
                # Exactly one runner commits a shared job: the first to move it out of `running` wins;
                # a later one (waiting on the branch lock meanwhile) finds it taken and rolls back.
                taken = s.execute(
                    update(JobRow).where(JobRow.id == job_id, JobRow.state == "running").values(state="committing")
                ).rowcount
                if not taken:
                    raise _JobTaken(job_id)
                s.execute(delete(DatumClaimRow).where(DatumClaimRow.job_id == job_id))
            for datum_id in clashed:
                s.execute(
                    update(DatumRow)
                    .where(DatumRow.job_id == job_id, DatumRow.datum_id == datum_id)
                    .values(state="failed", reason=results[datum_id].reason)
                )
            if gone:
                s.execute(
                    delete(ProcessedDatumRow).where(
                        ProcessedDatumRow.pipeline == name, ProcessedDatumRow.datum_id.in_(list(gone))
                    )
                )
            rerun = [d.id for d in to_run]
            for start in range(0, len(rerun), 500):  # replace the rows in bulk: no SELECT per datum
                s.execute(
                    delete(ProcessedDatumRow).where(
                        ProcessedDatumRow.pipeline == name, ProcessedDatumRow.datum_id.in_(rerun[start : start + 500])
                    )
                )
            for datum in to_run:
                result = results.get(datum.id)
                ok = result is not None and result.ok
                s.add(
                    ProcessedDatumRow(
                        pipeline=name,
                        datum_id=datum.id,
                        hash=datum.hash,
                        state="success" if ok else ("recovered" if result and result.recovered else "failed"),
                        job_id=job_id,
                        roots=json.dumps(datum.roots),
                        outputs=json.dumps([p for p, _, _ in result.outputs] if ok and result else []),
                    )
                )
            s.flush()
            total = s.query(ProcessedDatumRow).filter(ProcessedDatumRow.pipeline == name).count()
            job = s.get(JobRow, job_id)
            assert job is not None
            job.output_commit = commit.id
            job.datums_total = total
            job.processed = len(to_run) - len(failed) - sum(1 for r in results.values() if r.recovered)
            job.failed = len(failed)
            job.recovered = recovered
            job.skipped = total - len(to_run)
            job.removed = len(gone)
            job.plan_seconds = plan_seconds
            job.finished_at = _now()
            if failed:
                first = results.get(failed[0].id)
                job.state = "failure"
                job.reason = f"{len(failed)} datum(s) failed; first: {first.reason if first else 'no result'}"
            else:
                job.state = "success"
            logs.add(
                f"job {job.state}: {job.processed} processed, {job.skipped} skipped, {job.failed} failed, "
                f"{job.removed} removed; output commit {commit.id}"
            )
            logs.flush(s)

        builder.on_commit = record
        with contextlib.suppress(_JobTaken):  # another runner made this shared job's output commit
            builder.finish()
        info = self.pps.inspect_job(job_id)
        if self.progress and not shared:
            self.progress.job_finished(info)
        return info

    # ---- shared jobs: several runners on one catalog ---------------------------------------------------
    def _active_shared_job(self, name: str) -> str | None:
        with self.pfs.session() as s:
            return s.scalar(
                select(JobRow.id)
                .where(JobRow.pipeline == name, JobRow.state == "running", JobRow.shared_plan != "")
                .order_by(JobRow.created_at)
                .limit(1)
            )

    def _start_shared_job(
        self,
        name: str,
        spec: PipelineSpec,
        version: int,
        salt: str,
        commits: dict[str, CommitInfo],
        last_inputs: dict[str, str] | None,
        last_id: str | None,
    ) -> JobInfo | None:
        """Plan a job once for every runner: under the pipeline's row lock, write the job and a claim per datum.

        A runner that finds a job already running joins it; one that finds a newer finished job than the
        one it looked at starts over (someone else ran it meanwhile).
        """
        commit_ids = {k: c.id for k, c in commits.items()}
        job_id = uuid.uuid4().hex
        with self.pfs.session() as s, s.begin():
            # The no-op UPDATE takes the row lock on PostgreSQL (other planners wait here) and the
            # database write lock on SQLite; either way one runner plans a pipeline's job at a time.
            s.execute(update(PipelineRow).where(PipelineRow.name == name).values(updated_at=PipelineRow.updated_at))
            running = s.scalar(select(JobRow.id).where(JobRow.pipeline == name, JobRow.state == "running").limit(1))
            latest = s.scalar(
                select(JobRow.id)
                .where(JobRow.pipeline == name, JobRow.state.in_(("success", "failure")))
                .order_by(JobRow.created_at.desc())
                .limit(1)
            )
            if running is None and latest == last_id:
                present, gone, _processed, full_plan, to_run, plan_seconds = self._plan_job(
                    name, spec, salt, commit_ids, last_inputs
                )
                plan = {
                    "full": full_plan,
                    "times": {k: c.finished_at.isoformat() for k, c in commits.items()},
                    "gone": sorted(gone),
                }
                s.add(
                    _running_job_row(
                        job_id,
                        name,
                        version,
                        commit_ids,
                        to_run=len(to_run),
                        plan_seconds=plan_seconds,
                        shared_plan=json.dumps(plan),
                    )
                )
                s.flush()
                s.add_all(
                    DatumClaimRow(
                        job_id=job_id,
                        datum_id=d.id,
                        pipeline=name,
                        hash=d.hash,
                        roots=json.dumps(d.roots),
                        files=json.dumps([[f.input, f.repo, f.path, f.sha256, f.size] for f in d.files]),
                        state="queued",
                        owner="",
                        claims=0,
                        result="",
                    )
                    for d in to_run
                )
                logs = _JobLog(self.pfs, name, job_id)
                logs.add(
                    f"job started by runner {self.runner_id}: {len(to_run)} datums to process, "
                    f"{len(present) - len(to_run)} unchanged in this plan, {len(gone)} removed "
                    f"(planned in {plan_seconds * 1000:.1f} ms); runners on this catalog share its datums"
                )
                logs.flush(s)
            elif running is not None:
                job_id = running
            else:
                job_id = ""
        if not job_id:  # another runner finished a job of this pipeline meanwhile: look again
            return self.run_pipeline_once(name)
        return self._work_shared(name, job_id)

    def _work_shared(self, name: str, job_id: str) -> JobInfo | None:
        """Process claimed chunks of a shared job until none is left, then make its output commit once."""
        with self.pfs.session() as s:
            job = s.get(JobRow, job_id)
            if job is None or not job.shared_plan:  # a single runner's job (mixed modes): leave it to it
                return None
            if job.state != "running":  # another runner finished it meanwhile
                return job_info(job)
            version, to_run_count = job.version, job.to_run
            plan = json.loads(job.shared_plan)
        spec = self.pps.get_spec(name, version)[0]
        times = {k: datetime.fromisoformat(v) for k, v in plan["times"].items()}
        try:
            pool = self.pool_for(name, version, spec)
            pool.start()
        except WorkerStartError as exc:  # other runners may still run it; this one reports and moves on
            broken = self.pools.pop((name, version), None)
            if broken is not None:
                broken.close()
            self._set_pipeline_health(name, f"workers cannot start: {type(exc).__name__}: {exc}")
            _JobLog.write(
                self.pfs, name, job_id, f"runner {self.runner_id}: workers cannot start: {exc}", level="ERROR"
            )
            return None
        if self.progress:
            self.progress.job_started(name, job_id, to_run_count)
        chunk = max(1, min(64, 8 * getattr(pool, "size", 1)))
        keeper = _LeaseKeeper(self.pfs, self.runner_id, self.lease_seconds)
        keeper.start()
        self._set_workers_state(name, "busy")
        try:
            while True:
                claimed = self._claim(job_id, chunk)
                if claimed:
                    if not self._run_claimed(name, job_id, pool, claimed, times):
                        break
                    continue
                with self.pfs.session() as s:
                    state = s.scalar(select(JobRow.state).where(JobRow.id == job_id))
                    left = s.scalar(
                        select(func.count())
                        .select_from(DatumClaimRow)
                        .where(DatumClaimRow.job_id == job_id, DatumClaimRow.state != "done")
                    )
                if state != "running":
                    break  # committed (or killed) by another runner
                if not left:
                    self._commit_shared(name, spec, version, job_id, plan)
                    break
                time.sleep(min(1.0, self.lease_seconds / 4))  # others hold the rest: wait for them or their leases
        finally:
            keeper.stop()
            self._set_workers_state(name, "idle")
        info = self.pps.inspect_job(job_id)
        if self.progress and info.state != "running":
            self.progress.job_finished(info)
        return info

    def _claim(self, job_id: str, size: int) -> list[DatumClaimRow]:
        """Take up to ``size`` queued datums, or datums whose lease expired (their runner is gone)."""
        now = _now()
        free = or_(
            DatumClaimRow.state == "queued",
            and_(DatumClaimRow.state == "claimed", DatumClaimRow.lease_until < now),
        )
        pick = select(DatumClaimRow.datum_id).where(DatumClaimRow.job_id == job_id, free).limit(size)
        values = {
            "state": "claimed",
            "owner": self.runner_id,
            "lease_until": now + timedelta(seconds=self.lease_seconds),
            "claims": DatumClaimRow.claims + 1,
        }
        columns = (DatumClaimRow.datum_id, DatumClaimRow.hash, DatumClaimRow.roots, DatumClaimRow.files)
        with self.pfs.session() as s, s.begin():
            if self.paths.catalog_url.startswith("sqlite"):
                # One statement under SQLite's write lock: a read then a write could lose the race.
                ids: Any = pick.scalar_subquery()
            else:
                # SKIP LOCKED: two runners claiming at once take different rows instead of waiting on
                # each other. Its own statement: inside `IN (…)` PostgreSQL may run a LIMIT … SKIP LOCKED
                # subquery again per row and claim far more than `size`.
                ids = list(s.scalars(pick.with_for_update(skip_locked=True)))
                if not ids:
                    return []
            stmt = (
                update(DatumClaimRow)
                .where(DatumClaimRow.job_id == job_id, DatumClaimRow.datum_id.in_(ids), free)
                .values(**values)
                .returning(*columns)
                .execution_options(synchronize_session=False)
            )
            rows = s.execute(stmt).all()
        return [DatumClaimRow(job_id=job_id, datum_id=r[0], hash=r[1], roots=r[2], files=r[3]) for r in rows]

    def _run_claimed(
        self, name: str, job_id: str, pool: WorkerPool, claimed: list[DatumClaimRow], times: dict[str, datetime]
    ) -> bool:
        """Run one claimed chunk and record each result once (only while this runner still holds its lease)."""
        datums = {c.datum_id: _claim_datum(c) for c in claimed}
        tasks = [DatumTask(job_id, d.id, d.files, times) for d in datums.values()]
        logs = _JobLog(self.pfs, name, job_id)
        done: list[tuple[DatumResult, int]] = []

        def on_result(result: DatumResult, attempts: int) -> None:
            done.append((result, attempts))
            if self.progress:
                self.progress.datum_done(name, result.ok)

        def on_retry(task: DatumTask, reason: str) -> None:
            logs.add(f"attempt {task.attempt} failed, retrying: {reason}", datum=task.datum_id, level="WARNING")

        try:
            pool.run(tasks, on_result, on_retry)
        except Exception as exc:  # the pool broke: give the unfinished datums back at once
            finished = {r.datum_id for r, _ in done}
            with self.pfs.session() as s, s.begin():
                s.execute(
                    update(DatumClaimRow)
                    .where(
                        DatumClaimRow.job_id == job_id,
                        DatumClaimRow.owner == self.runner_id,
                        DatumClaimRow.state == "claimed",
                        DatumClaimRow.datum_id.in_([d for d in datums if d not in finished]),
                    )
                    .values(state="queued", owner="", lease_until=None)
                )
            broken = self.pools.pop(next((k for k, p in self.pools.items() if p is pool), ("", 0)), None)
            if broken is not None:
                broken.close()
            self._set_pipeline_health(name, f"workers cannot start: {type(exc).__name__}: {exc}")
            logs.add(f"runner {self.runner_id} gave its datums back: {type(exc).__name__}: {exc}", level="ERROR")
        with self.pfs.session() as s, s.begin():
            for result, attempts in done:
                summary = {
                    "worker": result.worker,
                    "ok": result.ok,
                    "outputs": result.outputs,
                    "recovered": result.recovered,
                    "reason": result.reason,
                    "traceback": result.traceback,
                    "seconds": result.seconds,
                }
                kept = s.execute(
                    update(DatumClaimRow)
                    .where(
                        DatumClaimRow.job_id == job_id,
                        DatumClaimRow.datum_id == result.datum_id,
                        DatumClaimRow.owner == self.runner_id,
                        DatumClaimRow.state == "claimed",
                    )
                    .values(state="done", result=json.dumps(summary), lease_until=None)
                ).rowcount
                if not kept:  # the lease ran out and another runner took the datum: its result counts
                    logs.add(
                        f"runner {self.runner_id} lost the lease of this datum; its result is dropped",
                        datum=result.datum_id,
                        worker=result.worker,
                        level="WARNING",
                    )
                    continue
                s.add(_datum_row(name, datums[result.datum_id], result, attempts))
                logs.add_result(result, attempts)
            logs.flush(s)
        if getattr(pool, "crash_looping", False):
            self._set_pipeline_health(
                name, f"workers keep dying: {pool.consecutive_deaths} deaths in a row, last: {pool.last_death}"
            )
        return len(done) == len(tasks)

    def _commit_shared(self, name: str, spec: PipelineSpec, version: int, job_id: str, plan: dict) -> None:
        """Every datum is done: build the output commit from all runners' results (once; see ``record``)."""
        with self.pfs.session() as s:
            job = s.get(JobRow, job_id)
            if job is None or job.state != "running":
                return
            input_ids = json.loads(job.input_commits)
            plan_seconds = job.plan_seconds
            claims = list(s.scalars(select(DatumClaimRow).where(DatumClaimRow.job_id == job_id)))
            gone = set(plan["gone"])
            to_run = [_claim_datum(c) for c in claims]
            results: dict[str, DatumResult] = {}
            for c in claims:
                r = json.loads(c.result)
                results[c.datum_id] = DatumResult(
                    job_id,
                    c.datum_id,
                    r["worker"],
                    ok=r["ok"],
                    outputs=[(p, sha, size) for p, sha, size in r["outputs"]],
                    recovered=r["recovered"],
                    reason=r["reason"],
                    traceback=r["traceback"],
                    seconds=r["seconds"],
                )
            # The processed-datum index moves only with a job's commit, so it is still what the plan saw.
            ids = [d.id for d in to_run] + sorted(gone)
            processed = self._load_processed(s, name, None if plan["full"] else ids)
        commits = {k: self.pfs.get_commit(cid) for k, cid in input_ids.items()}
        logs = _JobLog(self.pfs, name, job_id)
        logs.add(f"runner {self.runner_id} makes the output commit")
        self._commit_job(
            name,
            spec,
            version,
            job_id,
            commits,
            {},
            gone,
            processed,
            to_run,
            results,
            plan_seconds,
            logs,
            plan["full"],
            shared=True,
        )


def _tick_time(head: CommitInfo) -> datetime:
    """When a cron repo last ticked: the time in its head commit's description, else the commit time."""
    stamp = head.description.removeprefix("cron tick ")
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return head.created_at


class _JobTaken(Exception):
    """Another runner made this shared job's output commit first."""


def _claim_datum(c: DatumClaimRow) -> Datum:
    files = [DatumFile(i, repo, path, sha, size) for i, repo, path, sha, size in json.loads(c.files)]
    return Datum(c.datum_id, c.hash, [(n, root) for n, root in json.loads(c.roots)], files)


class _LeaseKeeper:
    """Renews this runner's datum leases while it works, so that only a runner that stops loses them."""

    def __init__(self, pfs: Pfs, runner_id: str, lease_seconds: float) -> None:
        self.pfs = pfs
        self.runner_id = runner_id
        self.lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alarmsieve-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_seconds / 3):
            try:
                with self.pfs.session() as s, s.begin():
                    s.execute(
                        update(DatumClaimRow)
                        .where(DatumClaimRow.owner == self.runner_id, DatumClaimRow.state == "claimed")
                        .values(lease_until=_now() + timedelta(seconds=self.lease_seconds))
                    )
            except Exception as exc:  # the catalog is unreachable: the leases lapse and others take over
                log.warning("runner %s could not renew its leases: %s", self.runner_id, exc)


def _running_job_row(job_id: str, name: str, version: int, commit_ids: dict[str, str], **extra: Any) -> JobRow:
    """A new job's row, state ``running``; ``extra``: columns known already (a shared job's plan)."""
    return JobRow(
        id=job_id,
        pipeline=name,
        version=version,
        state="running",
        input_commits=json.dumps(commit_ids),
        created_at=_now(),
        **extra,
    )


def _needs_run(datum: Datum, old: _Processed | None) -> bool:
    return old is None or old.hash != datum.hash or old.state != "success"


def _datum_row(pipeline: str, datum: Datum, result: DatumResult, attempts: int) -> DatumRow:
    return DatumRow(
        job_id=result.job_id,
        datum_id=datum.id,
        pipeline=pipeline,
        hash=datum.hash,
        state=("recovered" if attempts > 1 else "success")
        if result.ok
        else ("recovered" if result.recovered else "failed"),
        attempts=attempts,
        inputs=json.dumps([[name, root] for name, root in datum.roots]),
        reason=result.reason,
        traceback=result.traceback,
        worker=result.worker,
        seconds=result.seconds,
        finished_at=_now(),
    )


class _JobLog:
    """Buffers a job's log lines (each with pipeline, job, datum and worker ids) for batched inserts."""

    def __init__(self, pfs: Pfs, pipeline: str, job_id: str) -> None:
        self.pfs = pfs
        self.pipeline = pipeline
        self.job_id = job_id
        self.rows: list[LogRow] = []

    def add(
        self,
        message: str,
        *,
        datum: str = "",
        worker: str = "",
        level: str = "INFO",
        ts: datetime | None = None,
    ) -> None:
        self.rows.append(
            LogRow(
                ts=ts or _now(),
                pipeline=self.pipeline,
                job_id=self.job_id,
                datum_id=datum,
                worker=worker,
                level=level,
                message=message,
            )
        )
        log.debug("%s", message, extra={"pipeline": self.pipeline, "job": self.job_id, "datum": datum})

    def add_result(self, result: DatumResult, attempts: int) -> None:
        """A datum's own log lines, then how it ended when it did not simply succeed."""
        for line in result.logs:
            self.add(line.message, datum=result.datum_id, worker=result.worker, level=line.level, ts=line.ts)
        if result.recovered:
            self.add(
                f"datum recovered by err_cmd after: {result.reason}",
                datum=result.datum_id,
                worker=result.worker,
                level="WARNING",
            )
        elif not result.ok:
            self.add(
                f"datum failed after {attempts} attempts: {result.reason}",
                datum=result.datum_id,
                worker=result.worker,
                level="ERROR",
            )

    def flush(self, s: Session) -> None:
        s.add_all(self.rows)
        self.rows = []

    @classmethod
    def write(cls, pfs: Pfs, pipeline: str, job_id: str, message: str, *, level: str = "INFO") -> None:
        one = cls(pfs, pipeline, job_id)
        one.add(message, level=level)
        with pfs.session() as s, s.begin():
            one.flush(s)
