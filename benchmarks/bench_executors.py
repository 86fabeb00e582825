"""Executors: local worker processes (1 and 2) vs Ray actors (2) on the COCO photos; per-datum overhead.

- Detect throughput: the default ``validate`` and ``detect`` specs (detect with parallelism N) on the
  COCO photos under one camera. Each configuration runs once cold (pool start-up included), then the
  same photos are put again under a second camera and that warm detect job is timed: images/s = photos /
  job wall time. Target: Ray (2 actors) / local (2 workers) ≥ 0.9.
- Per-datum overhead: the ``noop`` stage with one worker (local process or Ray actor) on small files,
  warm job wall time / files; Ray's overhead is the difference to the local figure.
- Shared runners: the same noop job with ``runners=shared`` (datum claims and leases) vs ``single``
  (the embedded path), one runner on SQLite: what coordinating through the catalog costs per datum.

Ray runs as a private local cluster on loopback with 2 CPUs (``ray.init(address="local")``); when
Ray is not installed those figures are skipped. ``quick`` uses 32 photos and 300 files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import SharedData, Target, at_least, say, temp_folder, workspace

PROJECT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.9


def _spec(name: str, workers: int) -> Any:
    from alarmsieve.pps.spec import parse_spec

    raw = json.loads((PROJECT / "pipelines" / f"{name}.json").read_text())
    raw["parallelismSpec"] = {"constant": workers}
    return parse_spec(raw, source=f"benchmark {name} spec")


def _runner(ws: Any, executor: str, runners: str = "single") -> Any:
    from alarmsieve.pps.runner import Runner

    paths = ws.runtime_paths()
    paths.executor = executor
    paths.runners = runners
    return Runner(ws.pfs, ws.pps, paths)


def _put(ws: Any, repo: str, files: dict[str, Path | bytes]) -> None:
    builder = ws.pfs.start_commit(repo)
    for path, body in files.items():
        if isinstance(body, Path):
            builder.put_local_file(path, body)
        else:
            builder.put_bytes(path, body)
    builder.finish()


def _detect_throughput(shared: SharedData, photos: list[Path], executor: str, workers: int) -> dict[str, Any]:
    with temp_folder(f"exec-{executor}{workers}") as tmp, workspace(tmp / "ws", shared.model_dir) as ws:
        ws.pfs.create_repo("images")
        ws.pfs.create_repo("frames")  # validate reads the union of images and video frames
        ws.pps.create_pipeline(_spec("validate", 2))
        ws.pps.create_pipeline(_spec("detect", workers))
        runner = _runner(ws, executor)
        try:
            _put(ws, "images", {f"/cold/{p.name}": p for p in photos})
            began = time.perf_counter()
            runner.run_until_idle()
            cold = time.perf_counter() - began
            _put(ws, "images", {f"/warm/{p.name}": p for p in photos})
            runner.run_pipeline_once("validate")
            began = time.perf_counter()
            job = runner.run_pipeline_once("detect")
            warm = time.perf_counter() - began
        finally:
            runner.close()
        assert job is not None and job.state == "success" and job.processed == len(photos), job
        figures = {
            "executor": executor,
            "workers": workers,
            "photos": len(photos),
            "cold_seconds": round(cold, 2),
            "warm_detect_seconds": round(warm, 3),
            "images_per_second": round(len(photos) / warm, 2),
        }
        say(
            f"{executor} × {workers}: {figures['images_per_second']:.1f} images/s warm "
            f"({warm:.2f} s for {len(photos)} photos; cold run incl. start-up {cold:.1f} s)"
        )
        return figures


def _noop_per_datum(files: int, executor: str, runners: str = "single") -> float:
    from alarmsieve.pps.spec import parse_spec

    spec = parse_spec(
        {
            "pipeline": {"name": "noop"},
            "input": {"pfs": {"name": "files", "repo": "files", "glob": "/*/*"}},
            "transform": {"cmd": ["alarmsieve", "stage", "noop"]},
            "parallelismSpec": {"constant": 1},
        },
        source="benchmark noop spec",
    )
    with temp_folder(f"exec-noop-{executor}-{runners}") as tmp, workspace(tmp / "ws", None) as ws:
        ws.pfs.create_repo("files")
        ws.pps.create_pipeline(spec)
        runner = _runner(ws, executor, runners)
        try:
            _put(ws, "files", {f"/cold/f{i:05d}": f"file {i}\n".encode() for i in range(files)})
            runner.run_until_idle()
            _put(ws, "files", {f"/warm/f{i:05d}": f"warm {i}\n".encode() for i in range(files)})
            began = time.perf_counter()
            job = runner.run_pipeline_once("noop")
            seconds = time.perf_counter() - began
        finally:
            runner.close()
        assert job is not None and job.processed == files, job
        per_datum = seconds / files * 1000
        say(f"noop, {executor} executor, {runners} runner: {per_datum:.2f} ms per datum ({files} files, warm)")
        return per_datum


def _start_ray() -> Any:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
    try:
        import ray
    except ImportError:
        return None
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def run(shared: SharedData, quick: bool = True) -> tuple[dict[str, Any], list[Target]]:
    n_photos, n_files = (32, 300) if quick else (128, 2000)
    say(f"== executors: local 1 and 2 workers vs Ray 2 actors, {n_photos} COCO photos; per-datum overhead ==")
    figures: dict[str, Any] = {"quick": quick, "cpu_count": os.cpu_count()}
    targets: list[Target] = []
    figures["noop_ms_per_datum"] = {
        "local_single": round(_noop_per_datum(n_files, "local"), 3),
        "local_shared": round(_noop_per_datum(n_files, "local", "shared"), 3),
    }
    ray = _start_ray()
    try:
        if ray is not None:
            figures["noop_ms_per_datum"]["ray_single"] = round(_noop_per_datum(n_files, "ray"), 3)
            noop = figures["noop_ms_per_datum"]
            figures["ray_overhead_ms_per_datum"] = round(noop["ray_single"] - noop["local_single"], 3)
            say(f"Ray's overhead per datum over a local worker: {figures['ray_overhead_ms_per_datum']:.2f} ms")
        if not shared.complete:
            say("detect throughput SKIPPED; missing: " + "; ".join(shared.missing))
            return figures, targets
        photos = shared.photos[:n_photos]
        runs = [_detect_throughput(shared, photos, "local", 1), _detect_throughput(shared, photos, "local", 2)]
        if ray is not None:
            runs.append(_detect_throughput(shared, photos, "ray", 2))
        figures["detect"] = runs
        if ray is None:
            say("Ray not installed (pip install 'alarmsieve[ray]'): Ray figures skipped")
            targets.append(at_least("Ray 2 actors / local 2 workers, detect images/s", None, TARGET_RATIO))
        else:
            ratio = runs[2]["images_per_second"] / runs[1]["images_per_second"]
            figures["ray_over_local2"] = round(ratio, 3)
            figures["ray_over_local1"] = round(runs[2]["images_per_second"] / runs[0]["images_per_second"], 3)
            targets.append(
                at_least(
                    "Ray 2 actors / local 2 workers, detect images/s (warm)",
                    ratio,
                    TARGET_RATIO,
                    note=f"{n_photos} photos, {os.cpu_count()} cores; Ray/local 1 worker "
                    f"{figures['ray_over_local1']:.2f}; Ray overhead "
                    f"{figures.get('ray_overhead_ms_per_datum', float('nan')):.2f} ms/datum",
                )
            )
        return figures, targets
    finally:
        if ray is not None:
            ray.shutdown()
