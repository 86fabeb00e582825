"""Operating pipelines: status, inspect/restart datums, rerun jobs, stop/start, deletes with dependents,
versions (spec, stage code, model identity), err_cmd, reprocess_spec and crash loops.

Real workspaces, real spawned workers and subprocess transforms, and the real CLI in a child process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT
from tests.helpers_ops import cli, marker_cmd, out, pipeline_status, status_json
from tests.helpers_pps import (
    NOOP_CMD,
    commit,
    create_pipeline,
    only,
    pfs_input,
    pipeline_spec,
    run,
    tree,
)

# ---- status, inspect datum, logs -------------------------------------------------------------------------


def test_status_inspect_datum_and_logs_show_what_failed_and_why(ws: Workspace, tmp_path: Path) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/good.txt": b"g", "/bad.txt": b"b"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), marker_cmd(tmp_path / "m"), datum_tries=2))
    job = only(run(ws), "copy")
    assert job.state == "failure"

    report = status_json(ws)
    copy = pipeline_status(report, "copy")
    assert copy["state"] == "failing"
    assert copy["failed_datums"] == 1
    assert copy["last_job"]["id"] == job.id and copy["last_job"]["state"] == "failure"
    assert "exited with code 7" in copy["reason"]
    assert report["runner"] is None
    assert report["notifications"] == {"pending": 0, "failed": 0, "sent": 0}
    assert any("copy failing" in p for p in report["problems"])
    # the workers that ran the job were recorded and stopped with the runner
    assert {w["pipeline"] for w in report["workers"]} == {"copy"}
    assert all(not w["alive"] for w in report["workers"])

    table = cli(ws, "status")
    assert table.returncode == 0 and "failing" in out(table) and "problem:" in out(table)

    failed = ws.pps.list_datums("copy", state="failed")
    assert len(failed) == 1
    listed = cli(ws, "list", "datum", "copy", "--state", "failed", "--json")
    assert [json.loads(line)["datum_id"] for line in listed.stdout.splitlines()] == [failed[0].datum_id]
    proc = cli(ws, "inspect", "datum", f"copy@{failed[0].datum_id[:10]}")
    text = out(proc)
    assert proc.returncode == 0, text
    assert "State: failed" in text and "Attempts: 2" in text and "data:/bad.txt" in text
    assert "exited with code 7" in text and "Traceback (most recent call last)" in text
    assert "no marker for data/bad.txt" in text

    bad = cli(ws, "inspect", "datum", "copy@ffffffffff")
    assert bad.returncode == 1 and "not found" in out(bad) and "list datum copy" in out(bad)
    usage = cli(ws, "inspect", "datum", "copy")
    assert usage.returncode == 2 and "PIPELINE@DATUM" in out(usage)

    # logs by worker, and --since: every line is JSON with its ids
    worker = failed[0].worker
    lines = [json.loads(x) for x in cli(ws, "logs", "--worker", worker).stdout.splitlines()]
    assert lines and all(line["worker"] == worker for line in lines)
    assert any("no marker for data/bad.txt" in line["message"] for line in lines)
    assert cli(ws, "logs", "--since", "1h").stdout.strip()
    future = cli(ws, "logs", "--pipeline", "copy", "--since", "2999-01-01T00:00:00")
    assert future.returncode == 0 and future.stdout.strip() == b""


def test_logs_follow_prints_lines_as_they_arrive(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/a": b"a"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD))
    follower = subprocess.Popen(
        [sys.executable, "-m", "alarmsieve", "logs", "--follow", "--pipeline", "copy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "ALARMSIEVE_HOME": str(ws.home)},
        cwd=PROJECT,
    )
    try:
        run(ws)  # the job's lines land while the follower is up
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert first["pipeline"] == "copy" and first["job"] and "job started" in first["message"]
    finally:
        follower.terminate()
        follower.wait(10)


# ---- restart datum, rerun job, stop / start ------------------------------------------------------------


def test_restart_datum_and_rerun_job_run_failed_datums_now(ws: Workspace, tmp_path: Path) -> None:
    marker = tmp_path / "m"
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/good.txt": b"g", "/bad.txt": b"b", "/bad2.txt": b"c"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), marker_cmd(marker), datum_tries=1))
    first = only(run(ws), "copy")
    assert first.failed == 2
    assert run(ws) == []  # inputs unchanged: nothing to do on its own

    marker.write_text("fixed")
    proc = cli(ws, "rerun", "job", first.id[:10])
    assert proc.returncode == 0, out(proc)
    assert "running 2 failed datum(s) again" in out(proc)
    assert "success (2 processed, 0 failed, 2 recovered)" in out(proc)
    assert set(tree(ws.pfs, "copy")) == {"/good.txt", "/bad.txt", "/bad2.txt"}
    assert pipeline_status(status_json(ws), "copy")["state"] == "running"
    done = cli(ws, "rerun", "job", first.id)
    assert done.returncode == 1 and "no failed datums left" in out(done)

    marker.unlink()
    commit(ws.pfs, "data", {"/bad3.txt": b"d"})
    second = only(run(ws), "copy")
    assert second.failed == 1
    marker.write_text("fixed")
    failed = ws.pps.list_datums("copy", second.id, state="failed")
    proc = cli(ws, "restart", "datum", f"copy@{failed[0].datum_id[:12]}")
    assert proc.returncode == 0, out(proc)
    assert "1 datum(s) marked to run again" in out(proc) and "success (1 processed" in out(proc)
    assert "/bad3.txt" in tree(ws.pfs, "copy")

    nothing = cli(ws, "restart", "datum", "copy@failed")
    assert nothing.returncode == 1 and "no failed datums" in out(nothing)
    unknown = cli(ws, "restart", "datum", "copy@0000000000")
    assert unknown.returncode == 1 and "no datum '0000000000'" in out(unknown)


def test_stop_and_start_pipeline(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD))
    assert cli(ws, "stop", "pipeline", "copy").returncode == 0
    commit(ws.pfs, "data", {"/a": b"a"})
    assert run(ws) == []
    assert pipeline_status(status_json(ws), "copy")["state"] == "paused"
    assert cli(ws, "start", "pipeline", "copy").returncode == 0
    assert only(run(ws), "copy").processed == 1
    missing = cli(ws, "stop", "pipeline", "nope")
    assert missing.returncode == 1 and "pipeline 'nope' not found" in out(missing)


# ---- deletes ---------------------------------------------------------------------------------------------


def test_delete_refuses_with_dependents_and_force_says_what_goes(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    c1 = commit(ws.pfs, "data", {"/a": b"a"})
    c2 = commit(ws.pfs, "data", {"/b": b"b"})
    create_pipeline(ws, pipeline_spec("one", pfs_input("data", "/*"), NOOP_CMD))
    create_pipeline(ws, pipeline_spec("two", pfs_input("one", "/*"), NOOP_CMD))
    run(ws)
    assert set(tree(ws.pfs, "two")) == {"/a", "/b"}

    refused = cli(ws, "delete", "repo", "data")
    assert refused.returncode == 1 and "data has dependents: one, two" in out(refused)
    refused = cli(ws, "delete", "pipeline", "one")
    assert refused.returncode == 1 and "one has dependents: two" in out(refused)
    output_repo = cli(ws, "delete", "repo", "one")
    assert output_repo.returncode == 1 and "delete the pipeline instead" in out(output_repo)
    old = cli(ws, "delete", "commit", f"data@{c1.id}")
    assert old.returncode == 1 and "only the newest commit" in out(old)

    # the head commit of data made one's and two's output: refused, then deleted with them
    refused = cli(ws, "delete", "commit", f"data@{c2.id}")
    assert refused.returncode == 1 and "one@" in out(refused) and "two@" in out(refused)
    assert set(tree(ws.pfs, "two")) == {"/a", "/b"}
    gone = cli(ws, "delete", "commit", f"data@{c2.id}", "--force")
    assert gone.returncode == 0, out(gone)
    assert ws.pfs.head("data").id == c1.id  # type: ignore[union-attr]
    # downstream pipelines rebuild their output from the input that remains
    jobs = run(ws)
    assert {j.pipeline for j in jobs} == {"one", "two"} and all(j.state == "success" for j in jobs)
    assert set(tree(ws.pfs, "two")) == {"/a"}

    forced = cli(ws, "delete", "pipeline", "one", "--force")
    assert forced.returncode == 0, out(forced)
    assert "pipelines one, two" in out(forced)
    assert ws.pps.pipeline_names() == [] and not ws.pfs.repo_exists("one") and not ws.pfs.repo_exists("two")
    assert cli(ws, "delete", "repo", "data").returncode == 0
    assert not ws.pfs.repo_exists("data")


# ---- export ----------------------------------------------------------------------------------------------


def test_export_pachyderm_specs_pass_pachyderm_schema(ws: Workspace, tmp_path: Path) -> None:
    from alarmsieve.pps.spec import load_spec_documents, validate_against_schema

    ws.init(pipelines_dir=PROJECT / "pipelines")
    target = tmp_path / "export.json"
    proc = cli(ws, "export", "pipeline", "--pachyderm", "-o", str(target))
    assert proc.returncode == 0, out(proc)
    docs = target.read_text().count("\n}\n")
    specs = load_spec_documents(target.read_text(), str(target))
    assert [s.name for s in specs] == ws.pps.topological_order()
    for spec in specs:
        assert spec.transform.cmd[:3] == ["alarmsieve", "stage", spec.transform.cmd[2]]
        assert spec.transform.image is not None and spec.transform.image.startswith("alarmsieve:")
    one = cli(ws, "export", "pipeline", "detect", "--pachyderm")
    doc = json.loads(one.stdout)
    validate_against_schema(doc, "exported detect")
    assert doc["pipeline"]["name"] == "detect" and doc["transform"]["cmd"][:3] == ["alarmsieve", "stage", "detect"]
    assert docs == len(specs)  # one JSON document per pipeline
    assert cli(ws, "export", "pipeline", "detect").returncode == 2
