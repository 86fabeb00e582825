"""Each catalogue detector's time per frame, one onnxruntime thread, weights folded and as shipped.

A 640x480 real photo (COCO128's first, resized), the backend's whole ``detect`` (pre-processing,
inference, decode, NMS), 3 warm-up runs, then 20 timed runs of each variant interleaved (folded,
as shipped, folded, ...) so that a busy machine slows both alike; the median is reported.

Run alone: ``python -m benchmarks.bench_detectors [--runs 20] [--json FILE]``. Needs ``../shared``
(models and photos; ``ALARMSIEVE_SHARED`` / ``ALARMSIEVE_MODEL_DIR``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import cv2

from benchmarks.common import locate_shared, say


def run(runs: int = 20) -> dict[str, dict[str, float | int]]:
    from alarmsieve.vision.backends.session import strip_weight_inputs
    from alarmsieve.vision.detector import create_detector
    from alarmsieve.vision.models import CATALOGUE, locate_model

    shared = locate_shared()
    if shared.model_dir is None or not shared.photos:
        raise SystemExit(f"bench_detectors: missing {'; '.join(shared.missing)}")
    cv2.setNumThreads(1)
    frame = cv2.resize(cv2.imread(str(shared.photos[0])), (640, 480))
    figures: dict[str, dict[str, float | int]] = {}
    for name in CATALOGUE:
        model = locate_model(name, model_dir=shared.model_dir, allow_download=False)
        variants = {
            "folded": create_detector("onnx", model=model, threads=1, strip_weights=True),
            "as_shipped": create_detector("onnx", model=model, threads=1, strip_weights=False),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for detector in variants.values():
            for _ in range(3):
                detector.detect(frame)
        for _ in range(runs):
            for key, detector in variants.items():
                started = time.perf_counter()
                detector.detect(frame)
                times[key].append((time.perf_counter() - started) * 1000)
        figures[name] = {
            "weight_inputs": strip_weight_inputs(model.path.read_bytes())[1],
            "ms_folded": round(statistics.median(times["folded"]), 2),
            "ms_as_shipped": round(statistics.median(times["as_shipped"]), 2),
        }
        f = figures[name]
        say(
            f"{name:18s} weights among inputs: {f['weight_inputs']:4d}  folded {f['ms_folded']:7.2f} ms  "
            f"as shipped {f['ms_as_shipped']:7.2f} ms  (median of {runs}, 640x480, 1 thread)"
        )
    # the ensemble of all five: what fusion adds on top of running the models
    from alarmsieve.vision.ensemble import Ensemble

    members = [
        create_detector("onnx", model=locate_model(n, model_dir=shared.model_dir, allow_download=False))
        for n in CATALOGUE
    ]
    ensemble = Ensemble(members)
    ensemble.detect(frame)
    total, fusion = [], []
    for _ in range(runs):
        started = time.perf_counter()
        ensemble.detect(frame)
        total.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        ensemble.fuse(ensemble.last_raw)
        fusion.append((time.perf_counter() - started) * 1000)
    figures["ensemble-all-five"] = {
        "ms_total": round(statistics.median(total), 2),
        "ms_fusion": round(statistics.median(fusion), 3),
        "candidates": sum(len(v) for v in ensemble.last_raw.values()),
    }
    f = figures["ensemble-all-five"]
    say(
        f"{'ensemble of all 5':18s} {f['ms_total']:7.2f} ms per frame, of which fusion {f['ms_fusion']:.3f} ms "
        f"({f['candidates']} raw candidates at floor 0.05)"
    )
    return figures


def cctv(thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5)) -> dict[str, dict[str, str]]:
    """On ``datasets/cctv-dev`` (82 real security-like frames: night IR, thermal, low light, car parks):
    per detector, for the ensemble of all five (WBF, identity calibration) and for "any model" (the
    highest raw person score of the five), person frames whose best person scores at least t, and
    person-free frames with a person at t or more (whole frame, no tiles, no box matching)."""
    import csv

    from alarmsieve.vision.detector import create_detector
    from alarmsieve.vision.ensemble import Ensemble
    from alarmsieve.vision.models import CATALOGUE, locate_model

    shared = locate_shared()
    root = shared.root / "datasets/cctv-dev"
    if shared.model_dir is None or not (root / "labels.csv").is_file():
        raise SystemExit(f"bench_detectors: {root}/labels.csv or the models are missing")
    with (root / "labels.csv").open(newline="") as fh:
        rows = [(r["file"], r["person"] == "1") for r in csv.DictReader(fh)]
    backends = [
        create_detector("onnx", model=locate_model(n, model_dir=shared.model_dir, allow_download=False))
        for n in CATALOGUE
    ]
    ensemble = Ensemble(backends)
    best: dict[str, list[tuple[bool, float]]] = {n: [] for n in [*CATALOGUE, "ensemble (WBF)", "any model"]}
    for file, has_person in rows:
        frame = cv2.imread(str(root / "images" / file))
        fused = ensemble.detect(frame)
        for name, dets in [*ensemble.last_raw.items(), ("ensemble (WBF)", fused)]:
            score = max((d.score for d in dets if d.label == "person"), default=0.0)
            best[name].append((has_person, score))
        best["any model"].append((has_person, max(best[n][-1][1] for n in CATALOGUE)))
    n_person = sum(p for _, p in rows)
    n_calm = len(rows) - n_person
    figures: dict[str, dict[str, str]] = {}
    for name, pairs in best.items():
        figures[name] = {}
        for t in thresholds:
            found = sum(p and s >= t for p, s in pairs)
            false = sum((not p) and s >= t for p, s in pairs)
            figures[name][f"t={t}"] = f"{found}/{n_person} found, {false}/{n_calm} false"
        say(f"{name:18s} " + "  ".join(f"{k}: {v}" for k, v in figures[name].items()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_detectors")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cctv", action="store_true", help="also: persons found / false on cctv-dev per detector")
    args = parser.parse_args()
    figures: dict[str, object] = dict(run(args.runs))
    if args.cctv:
        figures["cctv-dev"] = cctv()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
