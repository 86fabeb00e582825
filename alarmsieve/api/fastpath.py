"""The provisional verdict: validate → detect → assess run in the API process the moment an alarm lands.

The pipelines still process every commit, and their committed verdict (``assess@master``) is the
record: it supersedes the provisional one. This path only makes the answer readable sooner: a
pipeline job pays planning, worker IPC and an output commit per stage (three of each before the
verdict), while this runs the same three :class:`~alarmsieve.stages.base.Stage` objects back to back
on a scratch folder, with nothing committed.

It is the same computation, not an approximation:

- the stages are built from the pipelines' own ``transform.cmd`` (same stage code, same arguments,
  the same model file, which :meth:`Stage.identity` must match what the pipeline's workers reported);
- ``pipeline_version`` is the pipeline's current version, so the verdict names the same versions;
- rules are read from the ``rules`` head when the alarm is judged, like an ``assess`` job does, and
  the verdict names that rules commit;
- burst evidence (``assess`` reads the camera's other frames from ``detect@master``) is the detect
  head plus the detections this path made for alarms the pipeline has not committed yet.

It can differ from the committed verdict only when something changes in between: a rules commit, a
new pipeline version, or a burst frame of the same camera that arrives after the alarm was judged.
``GET /api/v1/alarms/{id}`` says which one it returns (``state``: provisional or done) and, once both
are known, whether they agree.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from alarmsieve.pfs.api import Pfs
from alarmsieve.pps.tables import PipelineRow
from alarmsieve.stages.base import DatumContext, RepoSnapshot, SnapshotMemo, Stage, StageServices
from alarmsieve.stages.detect import DetectStage
from alarmsieve.stages.records import DETECTIONS_FILE, VERDICT_FILE, DetectionsRecord, VerdictRecord
from alarmsieve.stages.registry import build_stage, builtin_stage_of
from alarmsieve.workspace import Workspace

log = logging.getLogger("alarmsieve.api.fastpath")

# (pipeline, the stage it must run, the repo it reads), in order: each reads the previous one's output
CHAIN: tuple[tuple[str, str, str], ...] = (
    ("validate", "validate", "images"),
    ("detect", "detect", "validate"),
    ("assess", "assess", "detect"),
)
DISABLE_ENV = "ALARMSIEVE_FAST_PATH"  # off / 0 / no: serve without provisional verdicts


def fast_path_wanted() -> bool:
    return os.environ.get(DISABLE_ENV, "on").strip().lower() not in ("off", "0", "no", "false")


@dataclass(frozen=True)
class Provisional:
    """A verdict computed in the API process; ``record`` is what ``assess`` would write."""

    alarm_id: str
    record: VerdictRecord
    seconds: float  # validate + detect + assess in this process
    detector_ms: float | None  # the detector's own time within it (``inference_ms``)
    computed_at: float  # time.time()


@dataclass
class _Built:
    version: int
    stage: Stage
    input_name: str  # the name of the input (in the pipeline spec) that reads the previous repo


class _ObjectCache:
    """Object bytes by sha256 (objects never change): the rules and burst frames are read per alarm."""

    def __init__(self, pfs: Pfs, limit: int = 4096) -> None:
        self.pfs = pfs
        self.limit = limit
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str) -> bytes:
        with self._lock:
            data = self._data.get(sha256)
            if data is not None:
                self._data.move_to_end(sha256)
                return data
        data = self.pfs.objects.get_bytes(sha256)
        with self._lock:
            self._data[sha256] = data
            while len(self._data) > self.limit:
                self._data.popitem(last=False)
        return data


class FastPath:
    """One background thread running the chain on each alarm submitted; results kept by alarm id."""

    def __init__(self, ws: Workspace, *, max_queue: int = 64, keep: int = 5_000) -> None:
        self.ws = ws
        self.max_queue = max_queue
        self.keep = keep
        self.reason = ""  # why the last alarm got no provisional verdict (status, logs)
        self.skipped = 0
        self._objects = _ObjectCache(ws.pfs)
        self._snapshots = SnapshotMemo()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="alarmsieve-fastpath")
        self._futures: OrderedDict[str, Future[Provisional | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._queued = 0
        self._built: dict[str, _Built] = {}
        # detections this path made (by path), until the pipeline commits them: burst evidence
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        # in memory where there is a tmpfs: the scratch files live for a few milliseconds
        shm = Path("/dev/shm")
        where = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
        self._scratch = Path(tempfile.mkdtemp(prefix="alarmsieve-fastpath-", dir=where))

    # ---- called from request threads --------------------------------------------------------------------
    def warm(self) -> None:
        """Build the stages (load the model) now, so the first alarm does not pay for it."""
        self._pool.submit(self._warm)

    def _warm(self) -> None:
        try:
            if self._stages() is None:
                log.warning("no provisional verdicts for now: %s", self.reason)
        except Exception as exc:  # e.g. no model file: each alarm tries again, and says why
            self.reason = f"{type(exc).__name__}: {exc}"
            log.warning("no provisional verdicts for now: %s", self.reason)

    def submit(self, alarm_id: str, data: bytes, received_at: datetime) -> Future[Provisional | None] | None:
        """Judge the image of ``alarm_id`` in the background; None when overloaded or shutting down."""
        with self._lock:
            if alarm_id in self._futures:
                return self._futures[alarm_id]
            if self._queued >= self.max_queue:  # overloaded: these alarms wait for the pipeline's verdict
                self.skipped += 1
                return None
            try:
                future = self._pool.submit(self._run, alarm_id, data, received_at)
            except RuntimeError:  # the server is stopping
                return None
            self._queued += 1
            self._futures[alarm_id] = future
            while len(self._futures) > self.keep:
                self._futures.popitem(last=False)
        return future

    def future(self, alarm_id: str) -> Future[Provisional | None] | None:
        with self._lock:
            return self._futures.get(alarm_id)

    def result(self, alarm_id: str) -> Provisional | None:
        """The provisional verdict when it is ready (never blocks)."""
        future = self.future(alarm_id)
        if future is None or not future.done() or future.cancelled() or future.exception() is not None:
            return None
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self._scratch, ignore_errors=True)

    # ---- the fast-path thread ---------------------------------------------------------------------------
    def _services(self) -> StageServices:
        settings = self.ws.settings
        return StageServices(
            workspace=self.ws.home,
            catalog_url=self.ws.catalog_url,
            model_dir=settings.model_dir,
            model_cache=settings.model_cache,
            read_repo=self._read_repo,
            read_files=self._read_files,
        )

    def _read_repo(self, repo: str, branch: str) -> RepoSnapshot:
        pfs = self.ws.pfs
        head = pfs.head(repo, branch)
        head_id = head.id if head is not None else None
        return self._snapshots.get(
            repo,
            branch,
            head_id,
            lambda: {i.path: self._objects.get(i.sha256 or "") for i in pfs.walk(repo, head_id or "")},
        )

    def _read_files(self, repo: str, branch: str, prefix: str, suffix: str) -> RepoSnapshot:
        pfs = self.ws.pfs
        head = pfs.head(repo, branch)
        files: dict[str, bytes] = {}
        if head is not None:
            for i in pfs.walk(repo, head.id, prefix):
                if i.path.endswith(suffix):
                    files[i.path] = self._objects.get(i.sha256 or "")
        if repo == "detect" and suffix == DETECTIONS_FILE:
            under = "/" + prefix.strip("/") + "/"
            for path in [p for p in self._recent if p.startswith(under)]:
                if path in files:
                    del self._recent[path]  # committed by the pipeline now: the repo has it
                else:
                    files[path] = self._recent[path]
        return RepoSnapshot(head.id if head else None, files)

    def _stages(self) -> list[tuple[str, _Built]] | None:
        """The chain's stages at the pipelines' current versions (rebuilt when a version changes)."""
        pps = self.ws.pps
        with pps.session() as s:  # one query per alarm; a spec is parsed only when its version changes
            rows = s.execute(
                select(PipelineRow.name, PipelineRow.version, PipelineRow.state).where(
                    PipelineRow.name.in_([c[0] for c in CHAIN])
                )
            )
            current = {name: (version, state) for name, version, state in rows}
        chain: list[tuple[str, _Built]] = []
        for pipeline, stage_name, reads in CHAIN:
            if pipeline not in current:
                self.reason = f"this workspace has no {pipeline} pipeline"
                return None
            version, state = current[pipeline]
            if state == "paused":
                self.reason = f"pipeline {pipeline} is paused: its verdict will come when it runs again"
                return None
            built = self._built.get(pipeline)
            if built is None or built.version != version:
                spec = pps.get_spec(pipeline, version)[0]
                builtin = builtin_stage_of(spec.transform.cmd)
                leaf = next((i for i in spec.input.pfs_inputs() if i.repo == reads), None)
                if builtin is None or builtin[0] != stage_name or leaf is None:
                    self.reason = f"pipeline {pipeline} is not the built-in {stage_name} stage reading {reads}"
                    return None
                stage = build_stage(builtin[0], builtin[1], self._services())
                if isinstance(stage, DetectStage):  # the pipeline's detect worker reuses these boxes
                    stage.share_detections = True
                known = next((v.identity for v in pps.versions(pipeline) if v.version == version), {})
                if known and known != stage.identity():
                    self.reason = (
                        f"pipeline {pipeline}@v{version} ran other stage code or another model "
                        f"({known}) than this server has ({stage.identity()}); no provisional verdict"
                    )
                    return None
                built = self._built[pipeline] = _Built(version, stage, leaf.name)
            chain.append((pipeline, built))
        return chain

    def _run(self, alarm_id: str, data: bytes, received_at: datetime) -> Provisional | None:
        started = time.perf_counter()
        folder = self._scratch / uuid.uuid4().hex
        try:
            chain = self._stages()
            if chain is None:
                log.info("no provisional verdict for %s: %s", alarm_id, self.reason)
                return None
            job_id = f"fastpath-{folder.name}"  # a job of its own: rules and burst frames read afresh
            previous: Path | None = None
            detector_ms = None
            for step, (pipeline, built) in enumerate(chain):
                pfs = folder / str(step)
                target = pfs / built.input_name
                if previous is None:
                    (target / alarm_id).parent.mkdir(parents=True)
                    (target / alarm_id).write_bytes(data)
                else:
                    pfs.mkdir(parents=True)
                    previous.rename(target)
                (pfs / "out").mkdir()
                ctx = DatumContext(
                    pfs=pfs,
                    pipeline=pipeline,
                    job_id=job_id,
                    datum_id=alarm_id,
                    pipeline_version=f"{pipeline}@v{built.version}",
                    # validate's fallback time (no EXIF time, no time in the name); API names carry one
                    input_commit_times={built.input_name: received_at},
                    log=logging.LoggerAdapter(log, {"pipeline": pipeline, "job": job_id, "datum": alarm_id}),
                )
                built.stage.process(ctx)
                previous = pfs / "out"
                if pipeline == "detect":
                    detector_ms = self._remember_detections(alarm_id, previous / alarm_id / DETECTIONS_FILE)
            assert previous is not None
            verdict = previous / alarm_id / VERDICT_FILE
            if not verdict.is_file():
                self.reason = f"assess wrote no {VERDICT_FILE} for {alarm_id}"
                return None
            record = VerdictRecord.model_validate_json(verdict.read_bytes())
            return Provisional(alarm_id, record, time.perf_counter() - started, detector_ms, time.time())
        except Exception as exc:  # the pipeline still judges it; a failure here only loses the head start
            self.reason = f"{type(exc).__name__}: {exc}"
            log.exception("provisional verdict of %s failed", alarm_id)
            return None
        finally:
            with self._lock:
                self._queued -= 1
            try:  # removed after the answer is out: queued behind this alarm on the same thread
                self._pool.submit(shutil.rmtree, folder, True)
            except RuntimeError:  # shutting down
                shutil.rmtree(folder, ignore_errors=True)

    def _remember_detections(self, alarm_id: str, path: Path) -> float | None:
        """Keep the detections for burst evidence; returns the detector's ``inference_ms``."""
        if not path.is_file():
            return None
        raw = path.read_bytes()
        self._recent[f"/{alarm_id}/{DETECTIONS_FILE}"] = raw
        while len(self._recent) > 1024:  # the pipeline lags by a few alarms at most; older ones are committed
            self._recent.popitem(last=False)
        return DetectionsRecord.model_validate_json(raw).inference_ms
