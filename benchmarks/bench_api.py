"""HTTP API end to end: an alarm posted to a warm server (`serve --http` set-up: uvicorn + the runner loop
in one process) until its verdict is readable (``GET /api/v1/alarms/{id}?wait=30s``).

1. Latency: ``--alarms`` (200) alarms posted one after another to a warm, idle server: p50 / p95 / p99
   until the first verdict is readable, against the target p50 ≤ detector time (median ``inference_ms``
   of the same alarms) + 50 ms. "Readable" is the first verdict the API gives: the provisional one (the
   server's in-process validate → detect → assess) or the committed one, whichever comes first. Each
   alarm is then waited for until its committed verdict (``?final=true``; timed from the post too) and
   compared with its provisional verdict (``provisional.agrees``) before the next one is posted, so that
   every alarm meets an idle server (posting the next at once would measure a saturated pipeline).
2. Sustained rate: alarms offered at rising rates (each for ``--step-seconds``); the highest rate whose p50
   stays within twice the one-at-a-time p50 ("before latency doubles"), with the completed alarms/s.

Run alone: ``.venv/bin/python -m benchmarks.bench_api [--alarms 200]``; ``run_all`` finds ``run(shared)``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import SharedData, Target, locate_shared, quiet_environment, say, temp_folder, workspace

RATES = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Poster:
    """Posts distinct alarms (the photos cycled, each with its own time, so each is a new alarm id)."""

    def __init__(self, url: str, token: str, photos: list[bytes]) -> None:
        import httpx

        self.url = url
        self.photos = photos
        self.headers = {"Authorization": f"Bearer {token}"}
        self.client = httpx.Client(
            base_url=url, headers=self.headers, timeout=120, limits=httpx.Limits(max_connections=200)
        )
        self.count = 0
        self.lock = threading.Lock()
        self.base = datetime(2026, 1, 1, tzinfo=UTC)

    def one(self, final: bool = False) -> tuple[str, float]:
        alarm_id, seconds, _ = self.one_status(final)
        return alarm_id, seconds

    def one_status(self, final: bool = False) -> tuple[str, float, dict[str, Any]]:
        """Post one alarm and wait for its verdict; (alarm id, seconds from post to verdict readable).

        The first verdict readable (provisional or committed), or with ``final`` the committed one.
        """
        with self.lock:
            n = self.count
            self.count += 1
        data = self.photos[n % len(self.photos)]
        when = (self.base + timedelta(seconds=n)).isoformat()
        began = time.perf_counter()
        r = self.client.post(
            "/api/v1/alarms", data={"camera": f"cam-{n % 4}", "time": when}, files={"file": ("a.jpg", data)}
        )
        r.raise_for_status()
        alarm_id = r.json()["id"]
        while True:
            status = self.client.get(
                f"/api/v1/alarms/{alarm_id}", params={"wait": "30s", "final": "true" if final else "false"}
            ).json()
            if status["state"] == "done" or (status["state"] == "provisional" and not final):
                return alarm_id, time.perf_counter() - began, status

    def close(self) -> None:
        self.client.close()


def detector_ms(ws: Any, alarm_ids: list[str]) -> list[float]:
    paths = [f"/{a}/detections.json" for a in alarm_ids]
    found = ws.pfs.lookup("detect", "master", paths)
    out = []
    for info in found.values():
        record = json.loads(ws.pfs.objects.get_bytes(info.sha256))
        if record.get("inference_ms") is not None:
            out.append(float(record["inference_ms"]))
    return out


def offered(poster: Poster, rate: float, count: int) -> tuple[list[float], float]:
    """``count`` alarms offered at ``rate``/s; (latencies, completed alarms per second)."""
    latencies: list[float] = []
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(count, 128)) as pool:
        futures = []
        for i in range(count):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(poster.one))
        for f in futures:
            latencies.append(f.result()[1])
    return latencies, count / (time.perf_counter() - began)


def single_alarms(poster: Poster, alarms: int) -> dict[str, Any]:
    """Alarms posted one at a time to a warm, idle server: each is waited for until its first verdict is
    readable (timed), then until its committed verdict (timed too) and its notification (the last job),
    before the next is posted."""
    ids, readable, committed, fast_det = [], [], [], []
    counts = {"agree": 0, "differ": 0, "no_provisional": 0, "same_tier": 0}
    for _ in range(alarms):
        alarm_id, seconds, first = poster.one_status()
        began = time.perf_counter() - seconds
        while True:
            body = poster.client.get(f"/api/v1/alarms/{alarm_id}", params={"wait": "30s", "final": "true"}).json()
            if body["state"] == "done":
                break
        committed.append((time.perf_counter() - began) * 1000)
        ids.append(alarm_id)
        readable.append(seconds * 1000)
        # idle again: the clips and notify jobs after assess, then the runner's look for more work
        deadline = time.monotonic() + 30
        while body["notification"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
            body = poster.client.get(f"/api/v1/alarms/{alarm_id}").json()
        time.sleep(0.1)
        provisional = body.get("provisional") or {}
        agrees = provisional.get("agrees")
        counts["no_provisional" if agrees is None else "agree" if agrees else "differ"] += 1
        counts["same_tier"] += provisional.get("verdict") == body["verdict"]["verdict"]
        if (first.get("provisional") or {}).get("detector_ms") is not None:
            fast_det.append(first["provisional"]["detector_ms"])
    return {"ids": ids, "readable": readable, "committed": committed, "fast_det": fast_det, "agreement": counts}


def run(shared: SharedData, alarms: int = 200, step_seconds: float = 15.0) -> tuple[dict[str, Any], list[Target]]:
    from alarmsieve.api.app import create_app
    from alarmsieve.api.ingest import IngestLimits
    from alarmsieve.api.server import PipelineLoop, ThreadedServer
    from alarmsieve.api.tokens import TokenStore

    say("== HTTP API: alarm posted → verdict readable (warm server, runner in-process) ==")
    if shared.missing:
        say("SKIPPED: missing " + "; ".join(shared.missing))
        return {"skipped": "missing: " + "; ".join(shared.missing)}, []
    photos = [p.read_bytes() for p in shared.photos[:64]]
    figures: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2)}
    say(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes skew every figure)")
    with temp_folder("api") as home, workspace(home / "ws", shared.model_dir) as ws:
        ws.init()
        loop = PipelineLoop(ws, interval=5.0)
        app = create_app(ws, loop=loop, limits=IngestLimits(rate_per_minute=1_000_000))  # measure, not throttle
        loop.start()
        _, token = TokenStore(ws.catalog_url).create("bench", "operator")
        try:
            with ThreadedServer(app) as server:
                poster = Poster(server.url, token, photos)
                for _ in range(5):  # warm: workers started, model loaded, first jobs done
                    poster.one(final=True)
                single = single_alarms(poster, alarms)
                ms, agreement = single["readable"], single["agreement"]
                pipeline_det = detector_ms(ws, single["ids"])
                # the detector time of the path measured: the fast path's own run on the same alarms (the
                # pipeline's workers run the same model at a lower priority; their figure is kept too)
                det = single["fast_det"] or pipeline_det
                det_p50 = statistics.median(det) if det else float("nan")
                p50, p95, p99 = (percentile(ms, q) for q in (0.5, 0.95, 0.99))
                committed = single["committed"]
                figures["one_at_a_time"] = {
                    "alarms": alarms,
                    "p50_ms": round(p50, 1),
                    "p95_ms": round(p95, 1),
                    "p99_ms": round(p99, 1),
                    "mean_ms": round(statistics.fmean(ms), 1),
                    "detector_p50_ms": round(det_p50, 1),
                    "pipeline_detector_p50_ms": round(statistics.median(pipeline_det), 1) if pipeline_det else None,
                    "overhead_p50_ms": round(p50 - det_p50, 1),
                    "committed_p50_ms": round(percentile(committed, 0.5), 1),
                    "committed_p95_ms": round(percentile(committed, 0.95), 1),
                    "committed_p99_ms": round(percentile(committed, 0.99), 1),
                }
                figures["provisional_vs_committed"] = agreement
                say(
                    f"one at a time, {alarms} alarms: first verdict readable p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
                    f"p99 {p99:.0f} ms (detector p50 {det_p50:.1f} ms; overhead p50 {p50 - det_p50:.0f} ms; the "
                    f"pipeline's detector p50 {figures['one_at_a_time']['pipeline_detector_p50_ms']} ms)"
                )
                say(
                    f"committed verdict (the pipeline's): p50 {percentile(committed, 0.5):.0f} ms, "
                    f"p95 {percentile(committed, 0.95):.0f} ms, p99 {percentile(committed, 0.99):.0f} ms"
                )
                say(
                    f"provisional verdict == committed verdict: {agreement['agree']} of {alarms} "
                    f"(differ {agreement['differ']}, none made {agreement['no_provisional']}); "
                    f"same alert/review/dismiss: {agreement['same_tier']}"
                )

                steps = []
                sustained = None
                for rate in RATES:
                    lat, done_rate = offered(poster, rate, max(10, int(rate * step_seconds)))
                    step_ms = [x * 1000 for x in lat]
                    step_p50 = percentile(step_ms, 0.5)
                    ok = step_p50 <= 2 * p50
                    steps.append(
                        {
                            "offered_per_s": rate,
                            "completed_per_s": round(done_rate, 2),
                            "p50_ms": round(step_p50, 1),
                            "p95_ms": round(percentile(step_ms, 0.95), 1),
                            "within_2x_p50": ok,
                        }
                    )
                    note = "" if ok else " (p50 over 2x the one-at-a-time p50)"
                    say(f"offered {rate:g}/s: completed {done_rate:.1f}/s, p50 {step_p50:.0f} ms{note}")
                    if ok:
                        sustained = done_rate
                    if done_rate < 0.8 * rate:  # saturated: offering more only queues
                        break
                figures["rates"] = steps
                figures["load_average_at_end"] = round(os.getloadavg()[0], 2)
                figures["sustained_alarms_per_s"] = round(sustained, 2) if sustained else None
                figures["peak_completed_per_s"] = max(s["completed_per_s"] for s in steps)
                say(
                    f"sustained before p50 latency doubles: {sustained or 0:.1f} alarms/s; "
                    f"peak completed {figures['peak_completed_per_s']:.1f} alarms/s (batched jobs, longer latency)"
                )
                poster.close()
        finally:
            loop.stop()
    one = figures["one_at_a_time"]
    targets = [
        Target(
            "API end-to-end p50 (post → verdict readable)",
            one["p50_ms"],
            "ms",
            f"≤ detector p50 + 50 ms = {det_p50 + 50:.0f} ms",
            one["p50_ms"] <= det_p50 + 50 if det else None,
            note=(
                f"p95 {p95:.0f} ms, p99 {p99:.0f} ms; committed verdict p50 {one['committed_p50_ms']:.0f} ms; "
                f"provisional == committed {agreement['agree']}/{alarms} (same tier {agreement['same_tier']}); "
                f"sustained {figures['sustained_alarms_per_s']} alarms/s; load average "
                f"{figures['load_average_at_start']} -> {figures['load_average_at_end']} on {figures['cpus']} CPUs"
            ),
        )
    ]
    return figures, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=200)
    parser.add_argument("--step-seconds", type=float, default=15.0, help="how long each offered rate lasts")
    args = parser.parse_args()
    quiet_environment()
    figures, targets = run(locate_shared(), alarms=args.alarms, step_seconds=args.step_seconds)
    for t in targets:
        say(t.line())
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
