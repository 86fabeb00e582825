"""Pipeline versions (spec, stage code, model identity), err_cmd, reprocess_spec and crash loops.

Real workspaces, real spawned workers and subprocess transforms, and the real CLI in a child process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alarmsieve.pps.api import PpsError
from alarmsieve.pps.spec import parse_spec
from alarmsieve.workspace import Workspace
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

# ---- versions ---------------------------------------------------------------------------------------------


def test_update_says_unchanged_or_why_and_inspect_shows_history_and_diff(ws: Workspace, tmp_path: Path) -> None:
    ws.pfs.create_repo("data")
    doc = pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD)
    spec_file = tmp_path / "copy.json"
    spec_file.write_text(json.dumps(doc))
    assert cli(ws, "create", "pipeline", "-f", str(spec_file)).returncode == 0

    same = cli(ws, "update", "pipeline", "-f", str(spec_file))
    assert same.returncode == 0 and "unchanged" in out(same) and "(version 1)" in out(same)

    doc["transform"]["image"] = "alarmsieve:2"
    spec_file.write_text(json.dumps(doc))
    changed = cli(ws, "update", "pipeline", "-f", str(spec_file))
    assert "updated: spec changed (version 2)" in out(changed)
    again = cli(ws, "update", "pipeline", "-f", str(spec_file), "--reprocess")
    assert "reprocess" in out(again) and "(version 3)" in out(again)

    shown = cli(ws, "inspect", "pipeline", "copy")
    text = out(shown)
    assert shown.returncode == 0, text
    assert "History:" in text and "v1" in text and "v2" in text and "v3" in text
    assert "Diff v2 -> v3" in text
    diff12 = out(cli(ws, "inspect", "pipeline", "copy", "--diff", "1:2"))
    assert any(line.startswith("+") and '"image": "alarmsieve:2"' in line for line in diff12.splitlines())
    data = json.loads(cli(ws, "inspect", "pipeline", "copy", "--json").stdout)
    assert [v["version"] for v in data["versions"]] == [1, 2, 3]
    assert data["identity"] == {"stage": "noop", "code_version": "1"}


def test_stage_code_change_reported_by_workers_is_a_new_version(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/a": b"a"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD))
    assert only(run(ws), "copy").version == 1
    assert ws.pps.versions("copy")[0].identity == {"stage": "noop", "code_version": "1"}

    monkeypatch.setenv("ALARMSIEVE_NOOP_CODE_VERSION", "2")  # a new stage build under the same spec
    commit(ws.pfs, "data", {"/b": b"b"})
    job = only(run(ws), "copy")
    assert job.version == 2 and job.processed == 1  # only new data meets the new version
    versions = ws.pps.versions("copy")
    assert versions[-1].identity["code_version"] == "2"
    assert "stage code or model changed" in versions[-1].cause
    assert ws.pfs.head("copy").pipeline_version == "copy@v2"  # type: ignore[union-attr]
    # the same spec again, with the same code: unchanged
    spec = ws.pps.get_spec("copy")[0]
    assert ws.pps.create_pipeline(spec, update=True, identity=versions[-1].identity) == (2, "unchanged")


# ---- supervision, err_cmd, reprocess_spec ----------------------------------------------------------------


def test_worker_that_keeps_dying_marks_the_pipeline_crashing(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/a": b"a"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), [*NOOP_CMD, "--die-on", "/"], datum_tries=3))
    job = only(run(ws), "copy")
    assert job.state == "failure"
    info = ws.pps.inspect_pipeline("copy")
    assert info.state == "crashing"
    assert "workers keep dying" in info.reason and "exit code 3" in info.reason
    copy = pipeline_status(status_json(ws), "copy")
    assert copy["state"] == "crashing" and "exit code 3" in copy["reason"]
    assert any(w["state"] == "dead" and "exit code 3" in w["reason"] for w in status_json(ws)["workers"])

    # a fixed stage: the update clears the crash, the datum runs again
    ws.pps.create_pipeline(parse_spec(pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD)), update=True)
    assert ws.pps.inspect_pipeline("copy").state == "running"
    assert only(run(ws), "copy").state == "success"
    assert tree(ws.pfs, "copy") == {"/a": b"a"}


def test_err_cmd_recovers_a_failed_datum_as_in_pachyderm(ws: Workspace, tmp_path: Path) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/good.txt": b"g", "/bad.txt": b"b"})
    doc = pipeline_spec("copy", pfs_input("data", "/*"), marker_cmd(tmp_path / "m"), datum_tries=1)
    doc["transform"]["err_cmd"] = ["sh", "-c", "echo handled $PACH_DATUM_ID"]
    create_pipeline(ws, doc)
    job = only(run(ws), "copy")
    assert job.state == "success" and job.failed == 0 and job.recovered == 1
    assert set(tree(ws.pfs, "copy")) == {"/good.txt"}  # a recovered datum writes no output
    recovered = [d for d in ws.pps.list_datums("copy", job.id) if d.state == "recovered"]
    assert len(recovered) == 1 and "exited with code 7" in recovered[0].reason
    assert any("handled" in line.message for line in ws.pps.logs("copy", datum=recovered[0].datum_id))
    # recovered datums run again in the next job
    (tmp_path / "m").write_text("ok")
    commit(ws.pfs, "data", {"/new.txt": b"n"})
    second = only(run(ws), "copy")
    assert second.processed == 2 and set(tree(ws.pfs, "copy")) == {"/good.txt", "/bad.txt", "/new.txt"}


def test_reprocess_spec_every_job_runs_every_datum(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    commit(ws.pfs, "data", {"/a": b"a", "/b": b"b"})
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD, reprocessSpec="every_job"))
    assert only(run(ws), "copy").processed == 2
    commit(ws.pfs, "data", {"/c": b"c"})
    job = only(run(ws), "copy")
    assert job.processed == 3 and job.skipped == 0
    assert set(tree(ws.pfs, "copy")) == {"/a", "/b", "/c"}


def test_record_identity_first_report_is_kept_not_versioned(ws: Workspace) -> None:
    ws.pfs.create_repo("data")
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD))
    assert ws.pps.record_identity("copy", 1, {"stage": "noop", "code_version": "1"}) == (1, "recorded")
    assert ws.pps.record_identity("copy", 1, {"stage": "noop", "code_version": "1"}) == (1, "unchanged")
    version, what = ws.pps.record_identity("copy", 1, {"stage": "noop", "code_version": "9"})
    assert version == 2 and "code_version 1 -> code_version 9" in what.replace(", stage noop", "")
    with pytest.raises(PpsError, match="no version 7"):
        ws.pps.record_identity("copy", 7, {})
