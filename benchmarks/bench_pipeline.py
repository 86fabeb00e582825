"""Benchmark 1: the full pipeline (validate → detect → assess → notify) on the COCO photos vs a bare detector loop.

Also samples the RSS of every pipeline worker during the runs (benchmark 4, detect part).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    MB,
    RssSampler,
    SharedData,
    Target,
    at_least,
    job_breakdown,
    job_summary,
    say,
    temp_folder,
    timed,
    timed_pool_starts,
    workspace,
)

CAMERAS = 3
TARGET_RATIO = 0.6
PASSES = 2  # the bare loop and the warm pipeline run are each timed twice; the best of each is compared


# ---- the bare loop -----------------------------------------------------------------------------------


def _make_detector(model_dir: Path) -> Any:
    from alarmsieve.vision.detector import create_detector
    from alarmsieve.vision.models import locate_model
    from alarmsieve.vision.tiling import TiledDetector, TilingConfig

    model = locate_model(model_dir=model_dir, cache_dir=model_dir, allow_download=False)
    # the detect stage's default: a second, tiled look at frames with a doubtful person (like for like)
    return TiledDetector(create_detector("onnx", model=model, threads=1), TilingConfig(mode="auto"))


def _detect_all(detector: Any, photos: list[str]) -> int:
    """Decode each photo with cv2.imread and run the detector on it; returns the number of detections."""
    import cv2

    found = 0
    for photo in photos:
        image = cv2.imread(photo, cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"{photo} could not be decoded")
        found += len(detector.detect(image))
    return found


def bare_loop(model_dir: Path, photos: list[Path]) -> dict[str, Any]:
    """One process, one thread (onnxruntime intra-op threads 1, OpenCV threads 1): decode + detect each photo."""
    import cv2

    cv2.setNumThreads(1)  # as the detect worker does
    detector, load = timed(lambda: _make_detector(model_dir))
    names = [str(p) for p in photos]
    _detect_all(detector, names[:1])  # warm-up: the first run of a session allocates its buffers
    passes = [timed(lambda: _detect_all(detector, names)) for _ in range(PASSES)]
    found = passes[0][0]
    seconds = min(s for _, s in passes)
    import psutil

    return {
        "images": len(names),
        "seconds": round(seconds, 3),
        "seconds_per_pass": [round(s, 3) for _, s in passes],
        "images_per_second": round(len(names) / seconds, 2),
        "ms_per_image": round(seconds * 1000 / len(names), 2),
        "detections": found,
        "model_load_seconds": round(load, 3),
        "benchmark_process_rss_mb": round(psutil.Process().memory_info().rss / MB, 1),
    }


def _bare_process(model_dir: str, photos: list[str], ready: Any, go: Any, results: Any) -> None:
    import cv2

    cv2.setNumThreads(1)
    detector = _make_detector(Path(model_dir))
    _detect_all(detector, photos[:1])
    ready.put(os.getpid())
    go.wait()
    began = time.perf_counter()
    found = _detect_all(detector, photos)
    results.put((time.perf_counter() - began, found, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def bare_loop_processes(model_dir: Path, photos: list[Path], processes: int) -> dict[str, Any]:
    """The bare loop split over ``processes`` spawned processes (one core each), timed from a common start."""
    ctx = multiprocessing.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [[str(p) for p in photos[i::processes]] for i in range(processes)]
    procs = [
        ctx.Process(target=_bare_process, args=(str(model_dir), share, ready, go, results), daemon=True)
        for share in shares
    ]
    for proc in procs:
        proc.start()
    try:
        for _ in procs:
            ready.get(timeout=120)
        began = time.perf_counter()
        go.set()
        outcomes = [results.get(timeout=600) for _ in procs]
        seconds = time.perf_counter() - began
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return {
        "processes": processes,
        "images": len(photos),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(photos) / seconds, 2),
        "detections": sum(o[1] for o in outcomes),
        "peak_rss_mb_per_process": [round(o[2], 1) for o in outcomes],
    }


# ---- the pipeline ------------------------------------------------------------------------------------


def _put_photos(ws: Any, photos: list[Path], prefix: str = "") -> None:
    builder = ws.pfs.start_commit("images", description=f"benchmark: {len(photos)} photos, prefix {prefix!r}")
    for i, photo in enumerate(photos):
        builder.put_local_file(f"/cam-{i % CAMERAS + 1}/{prefix}{photo.name}", photo)
    builder.finish()


def _run_figures(ws: Any, jobs: list[Any], seconds: float, images: int, workers: dict[str, int]) -> dict[str, Any]:
    return {
        "images": images,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 2),
        "jobs": [{**job_summary(j), "breakdown": job_breakdown(ws, j, workers.get(j.pipeline, 1))} for j in jobs],
    }


def _check_jobs(label: str, jobs: list[Any], images: int) -> list[str]:
    problems = []
    for job in jobs:
        if job.state != "success":
            problems.append(f"{label}: job of {job.pipeline} ended {job.state}: {job.reason}")
    detect = [j for j in jobs if j.pipeline == "detect"]
    if sum(j.processed for j in detect) != images:
        problems.append(f"{label}: detect processed {sum(j.processed for j in detect)} datums, expected {images}")
    return problems


def pipeline_runs(shared: SharedData) -> dict[str, Any]:
    """A cold run (workers start inside it) and a warm run (same runner, 128 new paths of the same photos)."""
    photos = shared.photos
    assert shared.model_dir is not None
    with temp_folder("pipeline") as tmp, workspace(tmp / "ws", shared.model_dir) as ws:
        ws.init()
        specs = {name: ws.pps.get_spec(name)[0] for name in ws.pps.pipeline_names()}
        workers = {name: spec.parallelism_spec.workers(os.cpu_count() or 1) for name, spec in specs.items()}
        _put_photos(ws, photos)
        with timed_pool_starts() as starts, ws.runner() as runner, RssSampler(runner) as sampler:
            cold_jobs, cold = timed(runner.run_until_idle)
            cold_starts = list(starts)
            warm_runs = []
            for k in range(1, PASSES + 1):
                _put_photos(ws, photos, prefix=f"warm{k}-")
                warm_runs.append(timed(runner.run_until_idle))
        startup = sum(s.seconds for s in cold_starts)
        outbox = len(list((ws.home / "outbox").rglob("*"))) if (ws.home / "outbox").is_dir() else 0
        cold_figures = _run_figures(ws, cold_jobs, cold, len(photos), workers)
        cold_figures["worker_startup_seconds"] = round(startup, 3)
        cold_figures["worker_startups"] = [
            {"pipeline": s.pipeline, "workers": s.workers, "seconds": round(s.seconds, 3)} for s in cold_starts
        ]
        cold_figures["images_per_second_excluding_startup"] = round(len(photos) / (cold - startup), 2)
        warm_jobs, warm = min(warm_runs, key=lambda run: run[1])
        best_warm = _run_figures(ws, warm_jobs, warm, len(photos), workers)
        return {
            "workers_per_pipeline": workers,
            "cold": cold_figures,
            "warm": best_warm,
            "warm_seconds_per_pass": [round(seconds, 3) for _, seconds in warm_runs],
            "problems": _check_jobs("cold run", cold_jobs, len(photos))
            + [p for k, (jobs, _) in enumerate(warm_runs, 1) for p in _check_jobs(f"warm run {k}", jobs, len(photos))],
            "outbox_entries": outbox,
            "worker_memory": sampler.by_pipeline(),
        }


def run(shared: SharedData) -> tuple[dict[str, Any], list[Target]]:
    assert shared.model_dir is not None
    photos = shared.photos
    cpus = os.cpu_count() or 1
    say(f"== 1. full pipeline vs bare detector loop: {len(photos)} COCO photos, {cpus} CPU cores ==")

    bare = bare_loop(shared.model_dir, photos)
    say(
        f"bare loop, 1 process, 1 thread (cv2.imread + detect): {bare['images_per_second']:.1f} images/s "
        f"({bare['ms_per_image']:.1f} ms/image, best of {PASSES} passes: "
        f"{', '.join(f'{s:.2f}' for s in bare['seconds_per_pass'])} s; model load {bare['model_load_seconds']:.2f} s, "
        "not counted)"
    )
    two: dict[str, Any] | None = None
    if cpus >= 2:
        two = bare_loop_processes(shared.model_dir, photos, 2)
        say(
            f"bare loop, 2 processes (1 thread each): {two['images_per_second']:.1f} images/s "
            f"(peak RSS per process {', '.join(f'{m:.0f}' for m in two['peak_rss_mb_per_process'])} MB)"
        )
    else:
        say("bare loop, 2 processes: skipped (1 CPU core)")

    runs = pipeline_runs(shared)
    cold, warm = runs["cold"], runs["warm"]
    say(
        f"pipeline workers: {', '.join(f'{k} {v}' for k, v in sorted(runs['workers_per_pipeline'].items()))} "
        f"(on {cpus} cores; jobs run one pipeline after another)"
    )
    say(
        f"pipeline, cold run (incl. worker start-up {cold['worker_startup_seconds']:.2f} s): "
        f"{cold['images_per_second']:.1f} images/s ({cold['seconds']:.2f} s for {cold['images']} images)"
    )
    say(
        f"pipeline, cold run minus measured worker start-up: {cold['images_per_second_excluding_startup']:.1f} images/s"
    )
    say(
        f"pipeline, warm run (workers already up, {warm['images']} new paths each time): "
        f"{warm['images_per_second']:.1f} images/s (best of {PASSES} runs: "
        f"{', '.join(f'{s:.2f}' for s in runs['warm_seconds_per_pass'])} s)"
    )
    for label, figures in (("cold", cold), ("warm", warm)):
        started_inside = " (a pool starts inside its job's datum phase)" if label == "cold" else " (best run)"
        say(f"  {label} run, job by job{started_inside}:")
        for job in figures["jobs"]:
            b = job["breakdown"]
            say(
                f"    {job['pipeline']:<8} {job['wall_seconds']:5.2f} s: "
                f"plan {b.get('plan_seconds', 0) * 1000:4.0f} ms, "
                f"datums {b.get('datum_phase_seconds', float('nan')):.2f} s on {b['workers']} worker(s) "
                f"({b.get('worker_ms_per_datum', float('nan')):.1f} ms/datum in the worker, "
                f"{b.get('outside_worker_ms_per_datum', float('nan')):.1f} outside), "
                f"output commit {b.get('commit_phase_seconds', float('nan')):.2f} s"
            )
    for problem in runs["problems"]:
        say(f"  WARNING: {problem}")

    bare_rate = bare["images_per_second"]
    warm_ratio = warm["images_per_second"] / bare_rate
    cold_ratio = cold["images_per_second"] / bare_rate
    note = (
        f"pipeline uses {runs['workers_per_pipeline'].get('detect')} detect workers on {cpus} cores; bare loop 1 core"
    )
    targets = [
        at_least("pipeline/bare throughput ratio, warm run", round(warm_ratio, 3), TARGET_RATIO, note=note),
        at_least("pipeline/bare throughput ratio, cold run (incl. start-up)", round(cold_ratio, 3), TARGET_RATIO),
    ]
    figures: dict[str, Any] = {
        "cpu_count": cpus,
        "bare_loop_1_process": bare,
        "bare_loop_2_processes": two,
        "pipeline": runs,
        "ratio_warm": round(warm_ratio, 3),
        "ratio_cold": round(cold_ratio, 3),
        "ratio_excluding_startup": round(cold["images_per_second_excluding_startup"] / bare_rate, 3),
    }
    if two is not None:
        figures["ratio_warm_vs_bare_2_processes"] = round(warm["images_per_second"] / two["images_per_second"], 3)
        say(f"pipeline warm / bare 2 processes: {figures['ratio_warm_vs_bare_2_processes']:.2f} (context, no target)")
    return figures, targets
