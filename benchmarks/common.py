"""Shared helpers of the benchmarks: where the shared data is, throw-away workspaces, RSS sampling, targets."""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COCO_IMAGES = Path("datasets/coco128/train2017/images")
MODEL_FILE = "yolox_nano.onnx"
MB = 1024 * 1024


# ---- shared data -----------------------------------------------------------------------------------


@dataclass
class SharedData:
    """What the benchmarks need from ``../shared``; ``missing`` names what is absent and why it matters."""

    root: Path
    photos: list[Path]
    model_dir: Path | None
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


def shared_root() -> Path:
    """``$ALARMSIEVE_SHARED`` when set and non-empty, else ``shared/`` beside the project."""
    env = os.environ.get("ALARMSIEVE_SHARED", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared"


def locate_shared() -> SharedData:
    root = shared_root()
    missing: list[str] = []
    photos: list[Path] = []
    images = root / COCO_IMAGES
    if not root.is_dir():
        missing.append(f"the shared folder {root} (set ALARMSIEVE_SHARED or put shared/ beside the project)")
    elif not images.is_dir():
        missing.append(f"the COCO photos folder {images}")
    else:
        photos = sorted(images.glob("*.jpg"))
        if not photos:
            missing.append(f"any *.jpg photo in {images}")
    model_dir: Path | None = None
    env_model = os.environ.get("ALARMSIEVE_MODEL_DIR", "").strip()
    for candidate in ([Path(env_model).expanduser()] if env_model else []) + [root / "models"]:
        if (candidate / MODEL_FILE).is_file():
            model_dir = candidate.resolve()
            break
    if model_dir is None:
        where = f"{env_model}/{MODEL_FILE} (ALARMSIEVE_MODEL_DIR) or " if env_model else ""
        missing.append(f"the detector model {where}{root / 'models' / MODEL_FILE}")
    return SharedData(root=root, photos=photos, model_dir=model_dir, missing=missing)


# ---- workspaces --------------------------------------------------------------------------------------


@contextlib.contextmanager
def temp_folder(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"alarmsieve-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def workspace(home: Path, model_dir: Path | None) -> Iterator[Any]:
    """A fresh workspace in ``home`` whose catalog and object store stay inside it (env overrides ignored)."""
    from alarmsieve.config import Settings
    from alarmsieve.workspace import Workspace

    settings = Settings(
        home=home,
        catalog_url=None,
        object_store=None,
        model_dir=model_dir,
        model_cache=home / "model-cache",
    )
    ws = Workspace(settings, must_exist=False)
    try:
        yield ws
    finally:
        ws.pfs.engine.dispose()


def quiet_environment() -> None:
    """Keep the benchmark (and its workers, which inherit the environment) off the network."""
    os.environ["ALARMSIEVE_OFFLINE"] = "1"
    for name in ("SENDGRID_API_KEY", "ALARMSIEVE_CATALOG_URL", "ALARMSIEVE_OBJECT_STORE"):
        os.environ.pop(name, None)


# ---- worker start-up timing --------------------------------------------------------------------------


@dataclass
class PoolStart:
    pipeline: str
    workers: int
    seconds: float


@contextlib.contextmanager
def timed_pool_starts() -> Iterator[list[PoolStart]]:
    """Record how long each worker pool takes to start (spawn + imports + stage/model load).

    Wraps ``WorkerPool.start`` of this process for the duration of the block; nothing is changed on disk.
    """
    from alarmsieve.pps.executor import WorkerPool

    starts: list[PoolStart] = []
    original = WorkerPool.start

    def start(self: WorkerPool) -> None:
        if self.slots:
            return
        began = time.perf_counter()
        original(self)
        pipeline = self.slots[0].config.pipeline if self.slots else "?"
        starts.append(PoolStart(pipeline, len(self.slots), time.perf_counter() - began))

    WorkerPool.start = start  # type: ignore[method-assign]
    try:
        yield starts
    finally:
        WorkerPool.start = original  # type: ignore[method-assign]


# ---- memory sampling ---------------------------------------------------------------------------------


@dataclass
class WorkerPeak:
    worker: str
    pipeline: str
    pid: int
    peak_rss_mb: float
    samples: int


class RssSampler:
    """Samples, in a background thread, the RSS of the runner's worker processes (children of this process).

    Each child is matched to its worker through the runner's pools (``Runner.pools``), so the peak is
    reported per worker and per pipeline; children that are not workers are ignored.
    """

    def __init__(self, runner: Any, interval: float = 0.05) -> None:
        self.runner = runner
        self.interval = interval
        self.peaks: dict[int, WorkerPeak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _workers(self) -> dict[int, tuple[str, str]]:
        found: dict[int, tuple[str, str]] = {}
        for pool in list(self.runner.pools.values()):
            for slot in list(pool.slots):
                if slot.process.pid:
                    found[slot.process.pid] = (slot.config.worker_id, slot.config.pipeline)
        return found

    def sample(self) -> None:
        import psutil

        workers = self._workers()
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            who = workers.get(child.pid)
            if who is None:
                continue
            try:
                rss = child.memory_info().rss / MB
            except psutil.Error:
                continue
            peak = self.peaks.get(child.pid)
            if peak is None:
                self.peaks[child.pid] = WorkerPeak(who[0], who[1], child.pid, rss, 1)
            else:
                peak.peak_rss_mb = max(peak.peak_rss_mb, rss)
                peak.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def by_pipeline(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for peak in sorted(self.peaks.values(), key=lambda p: p.worker):
            entry = out.setdefault(peak.pipeline, {"max_peak_rss_mb": 0.0, "workers": []})
            entry["max_peak_rss_mb"] = round(max(entry["max_peak_rss_mb"], peak.peak_rss_mb), 1)
            entry["workers"].append(
                {
                    "worker": peak.worker,
                    "pid": peak.pid,
                    "peak_rss_mb": round(peak.peak_rss_mb, 1),
                    "samples": peak.samples,
                }
            )
        return out


# ---- figures and targets -----------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    value: float | None
    unit: str
    target: str
    met: bool | None  # None: could not be measured
    note: str = ""

    def line(self) -> str:
        status = "target met" if self.met else ("target MISSED" if self.met is False else "not measured")
        value = "n/a" if self.value is None else f"{self.value:.3f} {self.unit}".rstrip()
        note = f" — {self.note}" if self.note else ""
        return f"[{status}] {self.name}: {value} (target {self.target}){note}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def at_least(name: str, value: float | None, bound: float, unit: str = "", note: str = "") -> Target:
    return Target(name, value, unit, f"≥ {bound:g} {unit}".rstrip(), None if value is None else value >= bound, note)


def at_most(name: str, value: float | None, bound: float, unit: str = "", note: str = "") -> Target:
    return Target(name, value, unit, f"≤ {bound:g} {unit}".rstrip(), None if value is None else value <= bound, note)


def below(name: str, value: float | None, bound: float, unit: str = "", note: str = "") -> Target:
    return Target(name, value, unit, f"< {bound:g} {unit}".rstrip(), None if value is None else value < bound, note)


def say(text: str = "") -> None:
    print(text, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def job_breakdown(ws: Any, job: Any, workers: int) -> dict[str, Any]:
    """Where a job's time went: planning, the datums, and the output commit after the last datum.

    ``worker_ms_per_datum``: time inside the worker per datum (its ``DatumResult.seconds``: lay out,
    stage, store outputs). ``outside_worker_ms_per_datum``: the rest of the worker slots' time during
    the datum phase, per datum (pipe round trip, the runner's bookkeeping, idle slots).
    """
    datums = ws.pps.list_datums(job.pipeline, job.id)
    finished = [d.finished_at for d in datums if d.finished_at is not None]
    out: dict[str, Any] = {"datums": len(datums), "workers": workers}
    if not finished or job.finished_at is None:
        return out
    run_start = job.created_at.timestamp() + job.plan_seconds
    last = max(finished).timestamp()
    in_worker = sum(d.seconds for d in datums)
    phase = last - run_start
    out.update(
        {
            "plan_seconds": round(job.plan_seconds, 4),
            "datum_phase_seconds": round(phase, 3),
            "commit_phase_seconds": round(job.finished_at.timestamp() - last, 3),
            "worker_ms_per_datum": round(in_worker * 1000 / len(datums), 3),
            "outside_worker_ms_per_datum": round((phase * workers - in_worker) * 1000 / len(datums), 3),
        }
    )
    return out


def job_summary(job: Any) -> dict[str, Any]:
    """The figures of one :class:`~alarmsieve.pps.api.JobInfo` that the benchmarks report."""
    wall = (job.finished_at - job.created_at).total_seconds() if job.finished_at else None
    return {
        "pipeline": job.pipeline,
        "state": job.state,
        "processed": job.processed,
        "skipped": job.skipped,
        "failed": job.failed,
        "datums_total": job.datums_total,
        "plan_seconds": round(job.plan_seconds, 4),
        "wall_seconds": None if wall is None else round(wall, 4),
        "reason": job.reason,
    }
