"""Benchmark: what verdict history costs (issue 13): assess's previous-verdict lookup and `explain`'s history.

Builds an ``assess`` repo of N verdicts (default 20,000, 50 cameras), then three commits that each
re-judge 500 of them (a reprocess), and times, over 500 alarms: the lookup ``assess`` makes for every
alarm it judges (its current verdict, through the worker's own ``read_files``), ``Pfs.file_versions``
of one verdict path, and the whole history of an alarm (4 judgments + the notification ledger).
Needs nothing from ``../shared``.

    python -m benchmarks.bench_history [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alarmsieve.config import Settings
from alarmsieve.history import verdict_history
from alarmsieve.pps.worker import _repo_readers
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.workspace import Workspace

REJUDGED = 500
SAMPLES = 500


def _verdict(i: int, verdict: str, rules: str) -> bytes:
    return (
        VerdictRecord(
            alarm=f"/cam-{i % 50}/{i}.jpg",
            camera=f"cam-{i % 50}",
            time=datetime.now(UTC),
            verdict=verdict,  # type: ignore[arg-type]
            reasons=["bench"],
            rule_path="defaults",
            rules_commit=rules,
            status="ok",
            detections=[],
            model=None,
            annotated_file=None,
            image_sha256="ab" * 32,
            pipeline_versions={"detect": "detect@v1"},
        )
        .model_dump_json()
        .encode()
    )


def main(n: int) -> None:
    ws = Workspace(Settings(home=Path(tempfile.mkdtemp(prefix="bench-history-"))), must_exist=False)
    ws.pfs.create_repo("assess")
    builder = ws.pfs.start_commit("assess")
    for i in range(n):
        builder.put_bytes(f"/cam-{i % 50}/{i}.jpg/verdict.json", _verdict(i, "alert", "r1"))
    builder.finish()
    for k in range(3):
        builder = ws.pfs.start_commit("assess")
        for i in range(REJUDGED):
            builder.put_bytes(f"/cam-{i % 50}/{i}.jpg/verdict.json", _verdict(i, ("dismiss", "alert")[k % 2], f"r{k}"))
        builder.finish()
    # the worker's own reader (it needs only these two fields of a WorkerConfig)
    config: Any = SimpleNamespace(catalog_url=ws.catalog_url, object_store=ws.settings.resolved_object_store)
    _, read_files = _repo_readers(config)
    step = n // SAMPLES
    t0 = time.perf_counter()
    for i in range(0, n, step):
        assert read_files("assess", "master", f"/cam-{i % 50}/{i}.jpg", "verdict.json").files
    lookup = (time.perf_counter() - t0) / SAMPLES
    t0 = time.perf_counter()
    for i in range(0, n, step):
        assert ws.pfs.file_versions("assess", f"/cam-{i % 50}/{i}.jpg/verdict.json")
    versions = (time.perf_counter() - t0) / SAMPLES
    t0 = time.perf_counter()
    for i in range(0, REJUDGED, 5):
        assert len(verdict_history(ws.pfs, ws.catalog_url, f"/cam-{i % 50}/{i}.jpg").judgments) == 4
    history = (time.perf_counter() - t0) / (REJUDGED // 5)
    print(
        f"{n} verdicts ({REJUDGED} with 4 versions): previous-verdict lookup {lookup * 1000:.2f} ms/alarm, "
        f"file_versions {versions * 1000:.2f} ms/path, history of an alarm {history * 1000:.2f} ms"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
