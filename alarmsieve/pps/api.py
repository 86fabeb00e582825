"""PPS API: pipelines and their versions, and read access to jobs, datums and logs."""

from __future__ import annotations

import difflib
import functools
import json
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from alarmsieve.pfs.api import Pfs
from alarmsieve.pps.code import CODE_DIR_KEY, code_identity, fingerprinted_files, split_identity
from alarmsieve.pps.spec import PipelineSpec, parse_spec, spec_fingerprint, to_pachyderm
from alarmsieve.pps.tables import DatumRow, JobRow, LogRow, PipelineRow, PipelineVersionRow


class PpsError(Exception):
    """A PPS request that cannot be done; the message says why and what to do."""


class VersionInfo(BaseModel):
    version: int
    created_at: datetime
    cause: str
    fingerprint: str
    identity: dict[str, str]
    spec: dict


class PipelineInfo(BaseModel):
    name: str
    version: int
    state: str
    reason: str = ""
    input_repos: list[str]
    glob: list[str]
    parallelism: int
    created_at: datetime
    updated_at: datetime
    spec: dict
    identity: dict[str, str] = {}
    # a local transform's scripts (path -> sha256), part of the version (docs/pipeline-spec.md, "Versions")
    code_files: dict[str, str] = {}
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
    to_run: int = 0


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
    id: int = 0
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
        to_run=row.to_run or 0,
    )


def datum_info(r: DatumRow) -> DatumInfo:
    return DatumInfo(
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


def _identity_text(identity: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(identity.items()))


def _identity_change(old: dict[str, str], new: dict[str, str]) -> str:
    """The entries that changed, old -> new (``file:/x/thumbs.py 1a2b3c… -> file:/x/thumbs.py 9f8e7d…``)."""

    def short(value: str) -> str:
        return value[:12] + "…" if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else value

    def text(identity: dict[str, str], keys: list[str]) -> str:
        return ", ".join(f"{k} {short(identity[k])}" for k in keys if k in identity) or "none"

    if not old:
        return f"unknown -> {_identity_text(new)}"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return f"{text(old, keys)} -> {text(new, keys)}"


def _is_builtin(spec: PipelineSpec) -> bool:
    from alarmsieve.stages.registry import builtin_stage_of

    return builtin_stage_of(spec.transform.cmd) is not None


@functools.lru_cache(maxsize=256)
def _parsed_spec(spec_json: str, source: str) -> PipelineSpec:
    return parse_spec(json.loads(spec_json), source=source)


def _stored_spec(spec_json: str, source: str) -> PipelineSpec:
    """A stored version's spec. Parsing validates against Pachyderm's schema (milliseconds) and the runner
    asks several times per job, so each stored text is parsed once; callers get their own copy."""
    return _parsed_spec(spec_json, source).model_copy(deep=True)


class Pps:
    def __init__(self, pfs: Pfs) -> None:
        self.pfs = pfs

    def session(self) -> Session:
        return self.pfs.session()

    # ---- pipelines ---------------------------------------------------------------------------------
    def create_pipeline(
        self,
        spec: PipelineSpec,
        *,
        update: bool = False,
        reprocess: bool = False,
        identity: dict[str, str] | None = None,
        code_dir: Path | None = None,
    ) -> tuple[int, str]:
        """Create (or with ``update``, version) a pipeline. Returns (version, what happened).

        A version is the spec plus ``identity`` (what its workers report: stage code version, model
        sha256); a change in either is a new version, the same spec and identity again is "unchanged".
        An update keeps the datum salt, so only new data meets the new version; ``reprocess`` draws a
        new salt, so every datum's hash changes and all of them run again.

        ``code_dir`` is the folder the spec was created from: the local files a foreign transform names
        (``python3 thumbs.py``) resolve there and their sha256 join the identity (``pps.code``).
        """
        if code_dir is not None and not _is_builtin(spec):
            identity = (identity or {}) | code_identity(spec.transform.cmd, spec.transform.stdin, code_dir)
        for cron in spec.cron_inputs():  # Pachyderm makes a cron input's repo with the pipeline
            if not self.pfs.repo_exists(cron.repo):
                self.pfs.create_repo(cron.repo, description=f"ticks of cron input {cron.name} ({cron.spec})")
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
                old_identity: dict[str, str] = json.loads(current.identity or "{}") if current else {}
                new_identity = identity if identity else old_identity
                if current is not None and not old_identity and new_identity:
                    current.identity = json.dumps(new_identity, sort_keys=True)  # first report: recorded
                    old_identity = new_identity
                causes = []
                if current is None or current.fingerprint != fingerprint:
                    causes.append("spec changed")
                if new_identity != old_identity:
                    causes.append(f"stage code or model changed ({_identity_change(old_identity, new_identity)})")
                if reprocess:
                    causes.append("reprocess: every datum runs again")
                if not causes:
                    return row.version, "unchanged"
                version = row.version + 1
                salt = current.salt if current is not None and not reprocess else uuid.uuid4().hex
                row.version = version
                row.updated_at = now
                row.reason = ""
                if row.state == "crashing":
                    row.state = "running"
                what = "updated: " + "; ".join(causes)
            else:
                version = 1
                salt = uuid.uuid4().hex
                new_identity = identity or {}
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
                    identity=json.dumps(new_identity, sort_keys=True),
                    cause=what,
                )
            )
        if what == "created":
            self.pfs.create_repo(spec.name, description=f"output of pipeline {spec.name}", origin="pipeline")
        return version, what

    def record_identity(self, name: str, version: int, identity: dict[str, str]) -> tuple[int, str]:
        """What the workers of ``name``@``version`` reported; a new version when it differs from the recorded one.

        Returns (version to run, what happened): "unchanged", "recorded" (first report) or "updated: …"
        (the stage code or model changed under an unchanged spec; the salt is kept).
        """
        with self.session() as s:
            v = s.get(PipelineVersionRow, (name, version))
            if v is None:
                raise PpsError(f"pipeline {name!r} has no version {version}")
            known = json.loads(v.identity or "{}")
        if known == identity:
            return version, "unchanged"
        known_workers, known_code = split_identity(known)
        if not known or (not known_workers and known_code == split_identity(identity)[1]):
            with self.session() as s, s.begin():
                row = s.get(PipelineVersionRow, (name, version))
                assert row is not None
                row.identity = json.dumps(identity, sort_keys=True)
            return version, "recorded"
        spec = self.get_spec(name, version)[0]
        return self.create_pipeline(spec, update=True, identity=identity)

    def identity_of(self, name: str, version: int) -> dict[str, str]:
        with self.session() as s:
            v = s.get(PipelineVersionRow, (name, version))
            if v is None:
                raise PpsError(f"pipeline {name!r} has no version {version}")
            return json.loads(v.identity or "{}")

    def code_dir(self, name: str, version: int) -> Path | None:
        """The folder the version's spec was created from, where its relative script names resolve."""
        recorded = self.identity_of(name, version).get(CODE_DIR_KEY)
        return Path(recorded) if recorded else None

    def current_code_identity(self, name: str, version: int, spec: PipelineSpec) -> dict[str, str] | None:
        """The local code files of a foreign transform as they are now on disk (None for a built-in stage)."""
        if _is_builtin(spec):
            return None
        base = self.code_dir(name, version)
        code = code_identity(spec.transform.cmd, spec.transform.stdin, base)
        if base is not None:
            code[CODE_DIR_KEY] = str(base)  # kept even when its files are gone, to look there again
        return code

    def record_code_identity(self, name: str, version: int, code: dict[str, str]) -> tuple[int, str]:
        """A new version when the transform's code files changed since ``version`` was recorded."""
        known = self.identity_of(name, version)
        workers, known_code = split_identity(known)
        if known_code == code:
            return version, "unchanged"
        return self.record_identity(name, version, workers | code)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of a pipeline, oldest first, with its spec, identity and why it was made."""
        self.get_spec(name)  # names the known pipelines when it does not exist
        with self.session() as s:
            rows = s.scalars(
                select(PipelineVersionRow)
                .where(PipelineVersionRow.pipeline == name)
                .order_by(PipelineVersionRow.version)
            )
            return [
                VersionInfo(
                    version=r.version,
                    created_at=_aware(r.created_at),  # type: ignore[arg-type]
                    cause=r.cause or ("created" if r.version == 1 else "updated"),
                    fingerprint=r.fingerprint,
                    identity=json.loads(r.identity or "{}"),
                    spec=json.loads(r.spec_json),
                )
                for r in rows
            ]

    def version_diff(self, name: str, old: int, new: int) -> str:
        """A unified diff of two versions' specs and identities."""
        by_version = {v.version: v for v in self.versions(name)}
        for wanted in (old, new):
            if wanted not in by_version:
                raise PpsError(f"pipeline {name!r} has no version {wanted} (versions 1..{max(by_version)})")

        def lines(v: VersionInfo) -> list[str]:
            doc = {"spec": v.spec, "identity": v.identity}
            return json.dumps(doc, indent=2, sort_keys=True).splitlines()

        return "\n".join(
            difflib.unified_diff(
                lines(by_version[old]), lines(by_version[new]), f"{name}@v{old}", f"{name}@v{new}", lineterm=""
            )
        )

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
            return (_stored_spec(v.spec_json, f"pipeline {name} v{v.version}"), v.version, v.salt, row.state)

    def set_state(self, name: str, state: str, reason: str = "") -> None:
        with self.session() as s, s.begin():
            row = s.get(PipelineRow, name)
            if row is None:
                raise PpsError(f"pipeline {name!r} not found")
            row.state = state
            row.reason = reason

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
            current = s.get(PipelineVersionRow, (name, version))
            return PipelineInfo(
                name=name,
                version=version,
                state=state,
                reason=row.reason or "",
                identity=json.loads(current.identity or "{}") if current else {},
                code_files=fingerprinted_files(json.loads(current.identity or "{}")) if current else {},
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

    def list_datums(
        self, pipeline: str, job_id: str | None = None, *, state: str | None = None, limit: int | None = None
    ) -> list[DatumInfo]:
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
            if state:
                q = q.where(DatumRow.state == state)
            if limit:
                q = q.limit(limit)
            return [datum_info(r) for r in s.scalars(q)]

    def inspect_datum(self, pipeline: str, datum: str, job_id: str | None = None) -> DatumInfo:
        """A datum's latest record (or its record in ``job_id``); ``datum`` may be an id prefix."""
        with self.session() as s:
            q = select(DatumRow).where(DatumRow.pipeline == pipeline, DatumRow.datum_id.startswith(datum))
            if job_id:
                q = q.where(DatumRow.job_id == self.inspect_job(job_id).id)
            rows = list(s.scalars(q.order_by(DatumRow.finished_at.desc()).limit(50)))
            if not rows:
                self.get_spec(pipeline)
                raise PpsError(
                    f"datum {datum!r} of pipeline {pipeline!r} not found; see `alarmsieve list datum {pipeline}`"
                )
            if len({r.datum_id for r in rows}) > 1:
                ids = ", ".join(sorted({r.datum_id[:16] for r in rows})[:5])
                raise PpsError(f"datum prefix {datum!r} is ambiguous ({ids}); give more characters")
            return datum_info(rows[0])

    def logs(
        self,
        pipeline: str | None = None,
        job: str | None = None,
        datum: str | None = None,
        limit: int = 10000,
        *,
        worker: str | None = None,
        since: datetime | None = None,
        after_id: int = 0,
    ) -> list[LogInfo]:
        """Log lines oldest first; ``after_id`` continues from the last line seen (``logs --follow``)."""
        with self.session() as s:
            q = select(LogRow).order_by(LogRow.id)
            if after_id:
                q = q.where(LogRow.id > after_id)
            if since is not None:
                q = q.where(LogRow.ts >= since)
            if worker:
                q = q.where(LogRow.worker.startswith(worker))
            if pipeline:
                q = q.where(LogRow.pipeline == pipeline)
            if job:
                q = q.where(LogRow.job_id.startswith(job))
            if datum:
                q = q.where(LogRow.datum_id.startswith(datum))
            return [
                LogInfo(
                    id=r.id,
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
