"""Run every benchmark, print each figure with its target, and write them all to benchmarks/results/latest.json.

``make bench`` runs ``python -m benchmarks.run_all``. A missed target is reported, never raised.

Keep the imports at the top of this module light: the pipeline workers are spawned processes, and a
spawned process imports the parent's main module (this one) before it starts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def _versions() -> dict[str, str]:
    import cv2
    import onnxruntime
    import sqlalchemy

    import alarmsieve

    return {
        "alarmsieve": alarmsieve.__version__,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "opencv": cv2.__version__,
        "sqlalchemy": sqlalchemy.__version__,
    }


def _run_module(name: str, shared: Any, kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    import importlib

    run = importlib.import_module(f"benchmarks.{name}").run
    result: tuple[dict[str, Any], list[Any]] = run(shared, **kwargs) if shared is not None else run()
    return result


def main() -> int:
    from benchmarks import bench_noop, bench_pipeline
    from benchmarks.common import Target, locate_shared, quiet_environment, say

    quiet_environment()
    began = time.perf_counter()
    shared = locate_shared()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.machine(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "versions": _versions(),
        "shared": str(shared.root),
        "missing": shared.missing,
    }
    targets: list[Target] = []
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    say(f"alarmsieve benchmarks on {os.cpu_count()} CPU core(s), load average {load}; shared data: {shared.root}")
    say("(other processes on the machine skew these figures: run on an otherwise idle machine)")

    if shared.complete:
        figures, found = bench_pipeline.run(shared)
        results["pipeline_throughput"] = figures
        targets += found
    else:
        say("SKIPPED benchmark 1 (full pipeline vs bare loop) and the detect worker's memory; missing:")
        for what in shared.missing:
            say(f"  - {what}")
        results["pipeline_throughput"] = {"skipped": "missing: " + "; ".join(shared.missing)}
    say()

    figures, found = bench_noop.run()
    results["noop"] = figures
    targets += found
    say()

    # Every other benchmarks/bench_*.py module with a run() -> (figures, targets) runs here, in name order;
    # one that breaks is reported and the rest go on.
    import importlib
    import inspect
    import pkgutil

    import benchmarks

    for info in sorted(pkgutil.iter_modules(benchmarks.__path__), key=lambda m: m.name):
        if not info.name.startswith("bench_") or info.name in ("bench_pipeline", "bench_noop"):
            continue
        try:
            module = importlib.import_module(f"benchmarks.{info.name}")
            run = getattr(module, "run", None)
            if run is None:
                continue
            params = inspect.signature(run).parameters
            kwargs = {"quick": os.environ.get("ALARMSIEVE_BENCH_FULL") != "1"} if "quick" in params else {}
            # A fresh process per module: what one leaves behind (Ray's native threads, servers, caches)
            # must not slow the next one's figures (it had added 10-20 ms to the notification latencies).
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                figures, found = child.submit(_run_module, info.name, shared if params else None, kwargs).result()
            results[info.name.removeprefix("bench_")] = figures
            targets += found
        except Exception as exc:  # report and go on: one broken benchmark must not hide the others
            say(f"benchmark {info.name} FAILED: {type(exc).__name__}: {exc}")
            results[info.name.removeprefix("bench_")] = {"error": f"{type(exc).__name__}: {exc}"}
        say()

    say("== 4. peak RSS per worker (psutil, sampled every 50 ms) ==")
    memory: dict[str, Any] = {}
    detect_memory = results["pipeline_throughput"].get("pipeline", {}).get("worker_memory", {})
    for pipeline, entry in sorted(detect_memory.items()):
        memory[pipeline] = entry
    memory["noop"] = results["noop"]["worker_memory"].get("noop", {})
    for pipeline, entry in memory.items():
        workers = ", ".join(f"{w['worker']} {w['peak_rss_mb']:.0f} MB" for w in entry.get("workers", []))
        say(f"{pipeline}: max {entry.get('max_peak_rss_mb', float('nan')):.0f} MB ({workers or 'not sampled'})")
    results["worker_memory"] = memory
    say()

    say("== summary ==")
    for target in targets:
        say(target.line())
    results["targets"] = [t.as_dict() for t in targets]
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    say(f"all figures written to {RESULTS} ({results['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
