"""Operations benchmarks: job planning with one changed file among 10k and 100k processed datums (it
should stay flat as history grows), and ``status`` / ``list datum`` latency with 100,000 datums.

The processed history is written straight into the catalog (the datum ids and hashes the planner
computes for the real files, one success record per datum) instead of running 100,000 datums through
a worker: what is measured is planning and reading, not processing. Run alone with
``python -m benchmarks.bench_ops``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import Target, below, say, temp_folder, timed, workspace

SIZES = (10_000, 100_000)
REPEATS = 5
TARGET_PLAN_SECONDS = 1.0
TARGET_STATUS_MS = 300.0

SPEC: dict[str, Any] = {
    "pipeline": {"name": "noop"},
    "input": {"pfs": {"name": "files", "repo": "files", "glob": "/d/*"}},
    "transform": {"cmd": ["alarmsieve", "stage", "noop"]},
}


def _history(ws: Any, n: int) -> tuple[str, str]:
    """``n`` files, processed by one successful job; returns (that job's input commit, a commit changing 1 file)."""
    from alarmsieve.pps.datums import plan_all
    from alarmsieve.pps.spec import parse_spec
    from alarmsieve.pps.tables import DatumRow, JobRow, ProcessedDatumRow

    ws.pfs.create_repo("files")
    ws.pps.create_pipeline(parse_spec(SPEC, source="bench_ops"))
    builder = ws.pfs.start_commit("files")
    for i in range(n):
        builder.put_bytes(f"/d/f{i:06d}", f"file {i}\n".encode())
    first = builder.finish()
    spec, _version, salt, _state = ws.pps.get_spec("noop")
    datums = plan_all(ws.pfs, spec.input, {"files": first.id}, salt)
    job_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    with ws.pfs.session() as s, s.begin():
        s.add(
            JobRow(
                id=job_id,
                pipeline="noop",
                version=1,
                state="success",
                input_commits=json.dumps({"files": first.id}),
                datums_total=n,
                processed=n,
                created_at=now,
                finished_at=now,
            )
        )
        s.bulk_insert_mappings(
            ProcessedDatumRow,  # type: ignore[arg-type]
            [
                {
                    "pipeline": "noop",
                    "datum_id": d.id,
                    "hash": d.hash,
                    "state": "success",
                    "job_id": job_id,
                    "roots": json.dumps(d.roots),
                    "outputs": json.dumps([d.roots[0][1].removeprefix("/d")]),
                }
                for d in datums.values()
            ],
        )
        s.bulk_insert_mappings(
            DatumRow,  # type: ignore[arg-type]
            [
                {
                    "job_id": job_id,
                    "datum_id": d.id,
                    "pipeline": "noop",
                    "hash": d.hash,
                    "state": "success",
                    "attempts": 1,
                    "inputs": json.dumps([[name, root] for name, root in d.roots]),
                    "reason": "",
                    "traceback": "",
                    "worker": "noop-v1-w0",
                    "seconds": 0.001,
                    "finished_at": now,
                }
                for d in datums.values()
            ],
        )
    changed = ws.pfs.start_commit("files")
    changed.put_bytes("/d/f000001", b"changed\n")
    return first.id, changed.finish().id


def _median_ms(fn: Any, repeats: int = REPEATS) -> float:
    return statistics.median(timed(fn)[1] for _ in range(repeats)) * 1000


def one_size(n: int) -> dict[str, Any]:
    with temp_folder(f"ops{n}") as tmp, workspace(tmp / "ws", None) as ws:
        (_, setup) = timed(lambda: _history(ws, n))
        old, new = ws.pfs.head("files").parent, ws.pfs.head("files").id  # type: ignore[union-attr]
        spec, _version, salt, _state = ws.pps.get_spec("noop")
        with ws.runner() as runner:
            plan = runner._plan("noop", spec, salt, {"files": new}, {"files": old})
            present, gone, processed, _full = plan
            plan_ms = _median_ms(lambda: runner._plan("noop", spec, salt, {"files": new}, {"files": old}))
        figures: dict[str, Any] = {
            "datums": n,
            "setup_seconds": round(setup, 1),
            "plan_ms": round(plan_ms, 2),
            "plan_touched_datums": len(present) + len(gone),
            "plan_loaded_history_rows": len(processed),
        }
        if n == max(SIZES):
            ws.ops.status()  # first call imports the notification ledger
            figures["status_ms"] = round(_median_ms(ws.ops.status), 2)
            figures["list_datum_all_ms"] = round(_median_ms(lambda: ws.pps.list_datums("noop"), 3), 1)
            figures["list_datum_failed_ms"] = round(_median_ms(lambda: ws.pps.list_datums("noop", state="failed")), 2)
            figures["list_datum_first_100_ms"] = round(_median_ms(lambda: ws.pps.list_datums("noop", limit=100)), 2)
            env = {**os.environ, "ALARMSIEVE_HOME": str(ws.home)}
            (ws.home / "workspace.txt").write_text("bench\n")
            cli = [sys.executable, "-m", "alarmsieve", "status", "--json"]
            figures["cli_status_ms"] = round(
                _median_ms(lambda: subprocess.run(cli, env=env, capture_output=True, check=True), 3), 1
            )
        return figures


def run() -> tuple[dict[str, Any], list[Target]]:
    say("== ops: planning with 1 changed file vs history size; status and list datum with 100,000 datums ==")
    results: dict[str, Any] = {}
    for n in SIZES:
        figures = one_size(n)
        results[str(n)] = figures
        say(
            f"{n:>7,} processed datums: plan {figures['plan_ms']:.1f} ms "
            f"({figures['plan_touched_datums']} datum touched, "
            f"{figures['plan_loaded_history_rows']} history rows read; "
            f"setup {figures['setup_seconds']} s)"
        )
    big = results[str(max(SIZES))]
    small = results[str(min(SIZES))]
    growth = big["plan_ms"] / small["plan_ms"] if small["plan_ms"] else None
    results["plan_growth_10k_to_100k"] = round(growth, 2) if growth else None
    say(
        f"status (in process) {big['status_ms']:.1f} ms; `alarmsieve status --json` (new process) "
        f"{big['cli_status_ms']:.0f} ms; list datum: all {big['list_datum_all_ms']:.0f} ms, "
        f"failed only {big['list_datum_failed_ms']:.1f} ms, first 100 {big['list_datum_first_100_ms']:.1f} ms"
    )
    targets = [
        below("plan, 1 changed file among 100k datums", big["plan_ms"] / 1000, TARGET_PLAN_SECONDS, "s"),
        below(
            "plan growth 10k -> 100k datums (flat = about 1x)",
            growth,
            2.0,
            "x",
            note="planning reads only the changed datums",
        ),
        below("status with 100k datums (in process)", big["status_ms"], TARGET_STATUS_MS, "ms"),
        below(
            "`alarmsieve status --json` with 100k datums (new process, includes interpreter start-up)",
            big["cli_status_ms"],
            TARGET_STATUS_MS * 4,
            "ms",
        ),
    ]
    return results, targets


if __name__ == "__main__":
    from benchmarks.common import quiet_environment

    quiet_environment()
    figures, found = run()
    for target in found:
        say(target.line())
