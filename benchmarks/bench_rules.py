"""Benchmark: rules evaluation in ``assess`` with 1,000 cameras x 10 zones (target ≤ 1 ms per alarm).

Builds a rules repo of 20 sites (time zones, night schedules), 50 groups and 1,000 cameras with 10
zones and 2 masks each, then times: validating and loading it (once per rules commit), finding the
rules of a job when the commit did not change (the per-job cache of the real ``AssessStage``), and
judging alarms of random cameras, each with 6 detections: on a camera's first alarm (its rules are
resolved then) and after. Needs nothing from ``../shared``.

    python -m benchmarks.bench_rules
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from benchmarks.common import Target, at_most, say

CAMERAS = 1_000
ZONES = 10
SITES = 20
GROUPS = 50
ALARMS = 20_000
DETECTIONS = 6
TARGET_MS_PER_ALARM = 1.0
TIMEZONES = ["Europe/London", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "Europe/Berlin"]
LABELS = ["person", "car", "truck", "dog", "bicycle", "cat"]


def rules_files(rng: random.Random) -> dict[str, bytes]:
    sites = {
        f"site-{s}": {
            "timezone": TIMEZONES[s % len(TIMEZONES)],
            "schedule": [
                {"days": "weekdays", "start": "19:00", "end": "07:00"},
                {"days": "weekends", "start": "00:00", "end": "24:00"},
            ],
        }
        for s in range(SITES)
    }
    groups = {f"group-{g}": {"labels": {"car": {"severity": "alert", "min_score": 0.6}}} for g in range(GROUPS)}
    files: dict[str, bytes] = {"/sites.yaml": yaml.safe_dump({"sites": sites, "groups": groups}).encode()}
    for s in range(SITES):
        cameras: dict[str, Any] = {}
        for c in range(s, CAMERAS, SITES):
            zones = {}
            for z in range(ZONES):
                x, y = rng.uniform(0, 0.8), rng.uniform(0, 0.8)
                w, h = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
                zones[f"z{z}"] = {
                    "polygon": [
                        [round(x, 3), round(y, 3)],
                        [round(x + w, 3), round(y, 3)],
                        [round(x + w, 3), round(y + h, 3)],
                        [round(x, 3), round(y + h, 3)],
                    ],
                    "required": z == 0,
                    "labels": {"person": {"severity": "review" if z % 3 == 1 else "alert", "min_score": 0.45}},
                }
            cameras[f"cam-{c}"] = {
                "site": f"site-{s}",
                "group": f"group-{c % GROUPS}",
                "frame": {"width": 1280, "height": 720},
                "labels": {"person": {"min_score": 0.55}},
                "zones": zones,
                "masks": {"tree": [[0.9, 0.0], [1.0, 0.0], [1.0, 0.1]], "road": [[0.0, 0.9], [0.2, 0.9], [0.2, 1.0]]},
            }
        files[f"/cameras/site-{s}.yaml"] = yaml.safe_dump({"cameras": cameras}).encode()
    return files


def alarms(rng: random.Random) -> list[Any]:
    from alarmsieve.stages.records import AlarmMeta, BoxRecord, DetectionsRecord

    start = datetime(2026, 11, 27, tzinfo=UTC)
    out = []
    for i in range(ALARMS):
        camera = f"cam-{rng.randrange(CAMERAS)}"
        boxes = []
        for _ in range(DETECTIONS):
            x, y = rng.uniform(0, 1200), rng.uniform(0, 650)
            boxes.append(
                BoxRecord(
                    label=rng.choice(LABELS),
                    score=round(rng.random(), 3),
                    box=(x, y, x + rng.uniform(10, 200), y + rng.uniform(10, 300)),
                )
            )
        meta = AlarmMeta(
            alarm=f"/{camera}/{i}.jpg",
            camera=camera,
            time=start + timedelta(minutes=rng.randrange(7 * 24 * 60)),
            time_source="filename",
            image_file=f"{i}.jpg",
            sha256="0" * 64,
            size_bytes=1,
            width=1280,
            height=720,
            status="ok",
        )
        out.append(DetectionsRecord(meta=meta, status="ok", detections=boxes))
    return out


def run() -> tuple[dict[str, Any], list[Target]]:
    from alarmsieve.rules import judge
    from alarmsieve.rules.evaluate import AlarmFacts, ObjectBox
    from alarmsieve.stages.assess import AssessStage, judge_record
    from alarmsieve.stages.base import DatumContext, RepoSnapshot, StageServices

    say(f"== rules: assess with {CAMERAS:,} cameras x {ZONES} zones, {SITES} sites, {GROUPS} groups ==")
    rng = random.Random(4)
    files = rules_files(rng)
    size = sum(len(v) for v in files.values())
    records = alarms(rng)

    snapshot = RepoSnapshot("c0ffee", files)
    reads = []

    def read_repo(repo: str, branch: str) -> RepoSnapshot:
        reads.append(repo)
        return snapshot

    stage = AssessStage([], StageServices(read_repo=read_repo))
    began = time.perf_counter()
    first = stage.rules_in_force(DatumContext(pfs=_nowhere(), job_id="job-1"))
    load_s = time.perf_counter() - began
    say(f"load + validate {len(files)} files ({size / 1e6:.1f} MB of YAML): {load_s:.2f} s (once per rules commit)")

    began = time.perf_counter()
    for j in range(100):
        again = stage.rules_in_force(DatumContext(pfs=_nowhere(), job_id=f"job-{j + 2}"))
    per_job_ms = (time.perf_counter() - began) * 1000 / 100
    assert again.rules is first.rules
    say(f"rules of a new job, same commit (cache hit): {per_job_ms:.3f} ms per job")

    rules = first.rules
    facts = [
        AlarmFacts(
            camera=r.meta.camera,
            width=r.meta.width,
            height=r.meta.height,
            status=r.status,
            objects=[ObjectBox(label=d.label, score=d.score, box=d.box) for d in r.detections],
            time=r.meta.time,
        )
        for r in records
    ]
    began = time.perf_counter()
    verdicts: dict[str, int] = {}
    for f in facts:
        v = judge(rules, f).verdict
        verdicts[v] = verdicts.get(v, 0) + 1
    cold_ms = (time.perf_counter() - began) * 1000 / len(facts)
    cameras_seen = len({f.camera for f in facts})
    say(f"judge, first pass ({cameras_seen:,} cameras resolved on first use): {cold_ms:.3f} ms per alarm")

    rounds = []
    for _ in range(3):
        began = time.perf_counter()
        for f in facts:
            judge(rules, f)
        rounds.append((time.perf_counter() - began) * 1000 / len(facts))
    warm_ms = statistics.median(rounds)
    say(f"judge, warm: {warm_ms:.3f} ms per alarm ({DETECTIONS} detections each); verdicts {verdicts}")

    began = time.perf_counter()
    for r in records[:5000]:
        judge_record(r, rules, "c0ffee", None, {})
    record_ms = (time.perf_counter() - began) * 1000 / 5000
    say(f"judge_record (facts in, VerdictRecord out, as assess writes it): {record_ms:.3f} ms per alarm")

    figures = {
        "cameras": CAMERAS,
        "zones_per_camera": ZONES,
        "alarms": ALARMS,
        "detections_per_alarm": DETECTIONS,
        "rules_yaml_bytes": size,
        "load_seconds": round(load_s, 3),
        "cached_rules_per_job_ms": round(per_job_ms, 4),
        "judge_first_pass_ms_per_alarm": round(cold_ms, 4),
        "judge_warm_ms_per_alarm": round(warm_ms, 4),
        "judge_record_ms_per_alarm": round(record_ms, 4),
        "verdicts": verdicts,
    }
    targets = [
        at_most("rules evaluation per alarm (1,000 cameras x 10 zones, warm)", warm_ms, TARGET_MS_PER_ALARM, "ms"),
        at_most(
            "rules evaluation per alarm incl. first-use resolution",
            cold_ms,
            TARGET_MS_PER_ALARM,
            "ms",
            note=f"{cameras_seen:,} cameras resolved during the pass",
        ),
        at_most("assess judge_record per alarm", record_ms, TARGET_MS_PER_ALARM, "ms"),
    ]
    return figures, targets


def _nowhere() -> Any:
    from pathlib import Path

    return Path("/nonexistent-pfs-root")


if __name__ == "__main__":
    _, found = run()
    for target in found:
        say(target.line())
