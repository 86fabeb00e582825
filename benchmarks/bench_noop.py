"""Benchmarks 2 and 3: per-datum overhead of a no-op stage over 10,000 small files, then one added file.

Also samples the no-op worker's RSS (benchmark 4, no-op part). Needs nothing from ``../shared``.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.common import (
    RssSampler,
    Target,
    at_most,
    below,
    job_breakdown,
    job_summary,
    say,
    temp_folder,
    timed,
    workspace,
)

FILES = 10_000
FILE_SIZE = 100
INCREMENTAL_REPEATS = 3
TARGET_MS_PER_DATUM = 2.0
TARGET_INCREMENTAL_SECONDS = 1.0

NOOP_SPEC: dict[str, Any] = {
    "pipeline": {"name": "noop"},
    "description": "benchmark: copies each file unchanged",
    # one datum per file: the files are /d/fNNNNN, so the glob is /d/* (with /* all of /d would be one datum)
    "input": {"pfs": {"name": "files", "repo": "files", "glob": "/d/*"}},
    "transform": {"cmd": ["alarmsieve", "stage", "noop"]},
    "parallelismSpec": {"constant": 1},
}


def _payload(i: int) -> bytes:
    head = f"benchmark file {i:05d}\n".encode()
    return head + b"." * (FILE_SIZE - len(head) - 1) + b"\n"


def _put_files(ws: Any, numbers: range) -> None:
    builder = ws.pfs.start_commit("files", description=f"benchmark: {len(numbers)} files")
    for i in numbers:
        builder.put_bytes(f"/d/f{i:05d}", _payload(i))
    builder.finish()


def run() -> tuple[dict[str, Any], list[Target]]:
    from alarmsieve.pps.spec import parse_spec

    say(f"== 2./3. no-op stage: {FILES:,} files of {FILE_SIZE} bytes, one datum each, 1 worker ==")
    with temp_folder("noop") as tmp, workspace(tmp / "ws", None) as ws:
        ws.pfs.create_repo("files")
        ws.pps.create_pipeline(parse_spec(NOOP_SPEC, source="benchmark noop spec"))
        _, put_seconds = timed(lambda: _put_files(ws, range(FILES)))
        say(f"setup: {FILES:,} files put in one commit in {put_seconds:.2f} s")

        with ws.runner() as runner, RssSampler(runner) as sampler:
            spec, version, _salt, _state = ws.pps.get_spec("noop")
            _, startup = timed(lambda: runner.pool_for("noop", version, spec).start())
            jobs, run_seconds = timed(runner.run_until_idle)
            job = jobs[-1]
            full = job_summary(job)
            breakdown = job_breakdown(ws, job, workers=1)

            incremental: list[dict[str, Any]] = []
            for k in range(INCREMENTAL_REPEATS):
                _put_files(ws, range(FILES + k, FILES + k + 1))
                more, seconds = timed(runner.run_until_idle)
                entry = job_summary(more[-1]) if more else {"state": "no job"}
                entry["run_until_idle_seconds"] = round(seconds, 4)
                incremental.append(entry)

    job_wall = full["wall_seconds"]
    per_datum_ms = job_wall * 1000 / FILES if job_wall is not None else None
    say(f"worker start-up (pre-started, not in the job): {startup:.2f} s")
    say(
        f"full job: {full['processed']:,} processed, {full['failed']} failed, state {full['state']}; "
        f"job wall {job_wall:.2f} s (run_until_idle {run_seconds:.2f} s), plan {full['plan_seconds']:.3f} s"
    )
    if "datum_phase_seconds" in breakdown:
        say(
            f"  datums {breakdown['datum_phase_seconds']:.2f} s (in the worker {breakdown['worker_ms_per_datum']:.3f} "
            f"ms/datum, outside it: IPC + runner {breakdown['outside_worker_ms_per_datum']:.3f} ms/datum), "
            f"output commit {breakdown['commit_phase_seconds']:.2f} s"
        )
    walls = [e["wall_seconds"] for e in incremental if e.get("wall_seconds") is not None]
    plans = [e["plan_seconds"] for e in incremental if "plan_seconds" in e]
    idle = [e["run_until_idle_seconds"] for e in incremental]
    for k, entry in enumerate(incremental, 1):
        say(
            f"one more file (#{k}): job wall {entry.get('wall_seconds', float('nan')):.3f} s, plan "
            f"{entry.get('plan_seconds', float('nan')) * 1000:.1f} ms, processed {entry.get('processed')}, "
            f"skipped {entry.get('skipped')}, run_until_idle {entry['run_until_idle_seconds']:.3f} s"
        )
    memory = sampler.by_pipeline()
    figures = {
        "files": FILES,
        "file_size": FILE_SIZE,
        "put_seconds": round(put_seconds, 3),
        "worker_startup_seconds": round(startup, 3),
        "full_job": full,
        "full_job_run_until_idle_seconds": round(run_seconds, 3),
        "overhead_ms_per_datum": None if per_datum_ms is None else round(per_datum_ms, 4),
        "breakdown": breakdown,
        "incremental": incremental,
        "incremental_median_wall_seconds": round(statistics.median(walls), 4) if walls else None,
        "incremental_median_plan_seconds": round(statistics.median(plans), 4) if plans else None,
        "worker_memory": memory,
    }
    targets = [
        at_most(
            "no-op overhead per datum ((job wall − worker start) / 10,000)",
            None if per_datum_ms is None else round(per_datum_ms, 4),
            TARGET_MS_PER_DATUM,
            "ms",
            note=f"planning {full['plan_seconds']:.3f} s of it",
        ),
        below(
            "job after adding 1 file to 10,000 processed (median job wall)",
            figures["incremental_median_wall_seconds"],
            TARGET_INCREMENTAL_SECONDS,
            "s",
            note=f"worst {max(walls):.3f} s; plan median {figures['incremental_median_plan_seconds']} s; "
            f"run_until_idle median {statistics.median(idle):.3f} s"
            if walls
            else "",
        ),
    ]
    return figures, targets
