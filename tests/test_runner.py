"""The job runner end to end: real workspace, real spawned workers, real subprocess transforms."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from alarmsieve.pps.api import DatumInfo
from alarmsieve.workspace import Workspace
from tests.helpers_pps import (
    NOOP_CMD,
    commit,
    create_pipeline,
    new_workspace,
    only,
    pfs_input,
    pipeline_spec,
    run,
    tree,
)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return new_workspace(tmp_path / "ws")


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


# copies the datum's files of input `data` to the output, like the noop stage
COPY_DATA = 'cp -R data/. "$PFS_ROOT/out/"'


def datums_by_root(datums: list[DatumInfo]) -> dict[str, DatumInfo]:
    """Datums of a single-input pipeline by their root path."""
    out = {}
    for d in datums:
        assert len(d.inputs) == 1, d.inputs
        out[d.inputs[0][1]] = d
    return out


# ---- incremental processing ----------------------------------------------------------------------------


def test_incremental_jobs_over_a_chain_of_noop_pipelines(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    files = {
        "/cam-1/a.jpg": b"a",
        "/cam-1/night/b.jpg": b"b",
        "/cam-2/c.jpg": b"c",
        "/readme.txt": b"r",
    }
    c1 = commit(pfs, "data", files)
    create_pipeline(ws, pipeline_spec("copy", pfs_input("data", "/*"), NOOP_CMD))
    create_pipeline(ws, pipeline_spec("copy2", pfs_input("copy", "/*"), NOOP_CMD))

    with ws.runner() as runner:
        # first run: glob /* gives one datum per top-level entry; the output holds every output
        jobs = runner.run_until_idle()
        assert [j.pipeline for j in jobs] == ["copy", "copy2"]
        job = only(jobs, "copy")
        assert job.state == "success", job.reason
        assert (job.datums_total, job.processed, job.skipped, job.failed, job.removed) == (3, 3, 0, 0, 0)
        assert job.input_commits == {"data": c1.id}
        datums = datums_by_root(pps.list_datums("copy", job.id))
        assert set(datums) == {"/cam-1", "/cam-2", "/readme.txt"}
        assert all(d.state == "success" and d.attempts == 1 for d in datums.values())
        assert tree(pfs, "copy") == files
        assert tree(pfs, "copy2") == files

        # provenance: the output commit names its input commit, its job and the pipeline version
        out = pfs.inspect_commit("copy")
        assert job.output_commit == out.id
        assert out.provenance == [c1.id]
        assert out.pipeline_version == "copy@v1"
        assert out.job_id == job.id
        assert out.origin == "auto"
        out2 = pfs.inspect_commit("copy2")
        assert out2.provenance == [out.id]
        assert out2.pipeline_version == "copy2@v1"
        assert [c.id for c in pfs.subvenance(c1.id)] == [out.id]
        assert [c.id for c in pfs.subvenance(out.id)] == [out2.id]

        # no new input: no job
        assert runner.run_until_idle() == []
        assert len(pps.list_jobs("copy")) == 1

        # one new file: exactly one datum runs
        c2 = commit(pfs, "data", {"/cam-3/d.jpg": b"d"})
        jobs = runner.run_until_idle()
        job = only(jobs, "copy")
        assert (job.state, job.datums_total, job.processed, job.skipped, job.removed) == ("success", 4, 1, 3, 0)
        assert [d.inputs for d in pps.list_datums("copy", job.id)] == [[["data", "/cam-3"]]]
        job2 = only(jobs, "copy2")
        assert (job2.processed, job2.skipped) == (1, 3)
        expected = {**files, "/cam-3/d.jpg": b"d"}
        assert tree(pfs, "copy") == expected
        assert tree(pfs, "copy2") == expected
        assert pfs.inspect_commit("copy").provenance == [c2.id]

        # a modified file reprocesses only its datum
        commit(pfs, "data", {"/cam-1/night/b.jpg": b"b, version 2"})
        jobs = runner.run_until_idle()
        job = only(jobs, "copy")
        assert (job.state, job.processed, job.skipped, job.removed) == ("success", 1, 3, 0)
        assert [d.inputs for d in pps.list_datums("copy", job.id)] == [[["data", "/cam-1"]]]
        assert only(jobs, "copy2").processed == 1
        expected["/cam-1/night/b.jpg"] = b"b, version 2"
        assert tree(pfs, "copy") == expected
        assert tree(pfs, "copy2") == expected

        # a removed file removes its datum's outputs, here and downstream
        before = pfs.inspect_commit("copy2").id
        commit(pfs, "data", delete=["/readme.txt", "/cam-2"])
        jobs = runner.run_until_idle()
        job = only(jobs, "copy")
        assert (job.state, job.datums_total, job.processed, job.skipped, job.removed) == ("success", 2, 0, 2, 2)
        assert pps.list_datums("copy", job.id) == []
        job2 = only(jobs, "copy2")
        assert (job2.state, job2.removed) == ("success", 2)
        del expected["/readme.txt"], expected["/cam-2/c.jpg"]
        assert tree(pfs, "copy") == expected
        assert tree(pfs, "copy2") == expected
        assert {(c.path, c.op) for c in pfs.diff("copy2", before)} == {
            ("/readme.txt", "removed"),
            ("/cam-2/c.jpg", "removed"),
        }

        # removing one file of a datum that keeps others reprocesses that datum only
        commit(pfs, "data", delete=["/cam-1/a.jpg"])
        job = only(runner.run_until_idle(), "copy")
        assert (job.processed, job.skipped, job.removed) == (1, 1, 0)
        del expected["/cam-1/a.jpg"]
        assert tree(pfs, "copy") == expected
        assert tree(pfs, "copy2") == expected

        assert runner.run_until_idle() == []


# ---- cross and union ---------------------------------------------------------------------------------

# each datum writes the list of its input files (relative to the datum root) to a file named by its datum id
LIST_INPUTS = sh('find . -type f ! -path "./out/*" | sort > "out/$PACH_DATUM_ID.txt"')


def _listings(ws: Workspace, repo: str) -> dict[str, list[str]]:
    """datum id -> the input files that datum saw."""
    return {
        path.removeprefix("/").removesuffix(".txt"): data.decode().split() for path, data in tree(ws.pfs, repo).items()
    }


def test_cross_and_union_inputs(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("left")
    pfs.create_repo("right")
    commit(pfs, "left", {"/l1.txt": b"1", "/l2/x.txt": b"2", "/l2/y.txt": b"3"})
    commit(pfs, "right", {"/r1.txt": b"a", "/r2.txt": b"b", "/r3.txt": b"c"})
    cross = {"cross": [pfs_input("left", "/*"), pfs_input("right", "/*")]}
    union = {"union": [pfs_input("left", "/*"), pfs_input("right", "/*")]}
    create_pipeline(ws, pipeline_spec("crossed", cross, LIST_INPUTS))
    create_pipeline(ws, pipeline_spec("unioned", union, LIST_INPUTS))

    left_datums = {"/l1.txt": ["./left/l1.txt"], "/l2": ["./left/l2/x.txt", "./left/l2/y.txt"]}
    right_datums = {f"/r{i}.txt": [f"./right/r{i}.txt"] for i in (1, 2, 3)}

    with ws.runner() as runner:
        jobs = runner.run_until_idle()
        job = only(jobs, "crossed")
        assert (job.state, job.datums_total, job.processed) == ("success", 6, 6)
        listings = _listings(ws, "crossed")
        assert len(listings) == 6
        expected_cross = sorted(
            sorted(left_datums[lroot] + right_datums[rroot])
            for lroot, rroot in itertools.product(left_datums, right_datums)
        )
        assert sorted(listings.values()) == expected_cross
        # every cross datum names one root of each input, in spec order
        for d in pps.list_datums("crossed", job.id):
            assert [name for name, _root in d.inputs] == ["left", "right"]
            lroot, rroot = d.inputs[0][1], d.inputs[1][1]
            assert listings[d.datum_id] == sorted(left_datums[lroot] + right_datums[rroot])

        job = only(jobs, "unioned")
        assert (job.state, job.datums_total, job.processed) == ("success", 5, 5)
        listings = _listings(ws, "unioned")
        assert sorted(listings.values()) == sorted([*left_datums.values(), *right_datums.values()])
        for d in pps.list_datums("unioned", job.id):
            assert len(d.inputs) == 1
            name, root = d.inputs[0]
            assert listings[d.datum_id] == (left_datums if name == "left" else right_datums)[root]

        # a new file on one side of a cross adds one datum per datum of the other side, and only those run
        commit(pfs, "right", {"/r4.txt": b"d"})
        jobs = runner.run_until_idle()
        job = only(jobs, "crossed")
        assert (job.state, job.datums_total, job.processed, job.skipped) == ("success", 8, 2, 6)
        assert sorted(d.inputs[1][1] for d in pps.list_datums("crossed", job.id)) == ["/r4.txt", "/r4.txt"]
        assert len(_listings(ws, "crossed")) == 8
        job = only(jobs, "unioned")
        assert (job.datums_total, job.processed, job.skipped) == (6, 1, 5)
        assert ["./right/r4.txt"] in _listings(ws, "unioned").values()


# ---- failures and retries -------------------------------------------------------------------------------


def test_failing_datum_fails_after_datum_tries_and_is_retried_later(ws: Workspace, tmp_path: Path) -> None:
    pfs, pps = ws.pfs, ws.pps
    flag = tmp_path / "fail-bad"
    flag.touch()
    pfs.create_repo("data")
    commit(pfs, "data", {"/bad.txt": b"bad", "/good1.txt": b"g1", "/good2.txt": b"g2"})
    script = (
        'if [ -f "$FLAG" ] && [ -f data/bad.txt ]; then echo "stdout noise"; echo "cannot digest bad.txt" >&2; '
        f"exit 3; fi; {COPY_DATA}"
    )
    create_pipeline(ws, pipeline_spec("picky", pfs_input("data"), sh(script), env={"FLAG": str(flag)}, datumTries=2))

    with ws.runner() as runner:
        job = only(runner.run_until_idle(), "picky")
        assert job.state == "failure"
        assert (job.datums_total, job.processed, job.failed, job.skipped) == (3, 2, 1, 0)
        assert "1 datum(s) failed" in job.reason
        assert "exited with code 3" in job.reason
        datums = datums_by_root(pps.list_datums("picky", job.id))
        bad = datums["/bad.txt"]
        assert (bad.state, bad.attempts) == ("failed", 2)
        assert "exited with code 3" in bad.reason
        assert "cannot digest bad.txt" in bad.reason
        assert "RuntimeError" in bad.traceback
        assert all(datums[r].state == "success" and datums[r].attempts == 1 for r in ("/good1.txt", "/good2.txt"))
        # the other datums' outputs are committed
        assert job.output_commit == pfs.inspect_commit("picky").id
        assert tree(pfs, "picky") == {"/good1.txt": b"g1", "/good2.txt": b"g2"}
        retry_logs = [x for x in pps.logs(job=job.id, datum=bad.datum_id) if "retrying" in x.message]
        assert len(retry_logs) == 1
        assert retry_logs[0].level == "WARNING"
        assert "attempt 1 failed" in retry_logs[0].message

        # a failed job is not rerun on the same input
        assert runner.run_until_idle() == []

        # the input changes elsewhere: the next job runs the new datum and retries the failed one
        flag.unlink()
        commit(pfs, "data", {"/good3.txt": b"g3"})
        job = only(runner.run_until_idle(), "picky")
        assert job.state == "success", job.reason
        assert (job.datums_total, job.processed, job.failed, job.skipped) == (4, 2, 0, 2)
        assert job.recovered == 1
        datums = datums_by_root(pps.list_datums("picky", job.id))
        assert set(datums) == {"/bad.txt", "/good3.txt"}
        assert datums["/bad.txt"].datum_id == bad.datum_id
        assert datums["/bad.txt"].state == "success"
        assert tree(pfs, "picky") == {"/bad.txt": b"bad", "/good1.txt": b"g1", "/good2.txt": b"g2", "/good3.txt": b"g3"}


def test_datum_that_fails_once_then_succeeds_is_recovered(ws: Workspace, tmp_path: Path) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    commit(pfs, "data", {"/a.txt": b"a", "/b.txt": b"b"})
    # each datum fails its first attempt (a marker file per datum), then succeeds
    script = (
        'm="$MARKS/$PACH_DATUM_ID"; if [ ! -f "$m" ]; then touch "$m"; echo "flaky first try" >&2; exit 1; fi; '
        + COPY_DATA
    )
    create_pipeline(ws, pipeline_spec("flaky", pfs_input("data"), sh(script), env={"MARKS": str(tmp_path)}))

    job = only(run(ws), "flaky")
    assert job.state == "success", job.reason
    assert (job.processed, job.failed) == (2, 0)
    datums = pps.list_datums("flaky", job.id)
    assert [(d.state, d.attempts, d.reason) for d in datums] == [("recovered", 2, ""), ("recovered", 2, "")]
    assert tree(pfs, "flaky") == {"/a.txt": b"a", "/b.txt": b"b"}
    assert sorted(p.name for p in tmp_path.iterdir() if len(p.name) == 64) == sorted(d.datum_id for d in datums)


def test_datum_timeout_fails_the_datum_and_replaces_the_worker(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    # datums run in root order: the slow one first, so the fast one runs on the replacement worker
    commit(pfs, "data", {"/a-slow.txt": b"s", "/b-fast.txt": b"f"})
    script = f"if [ -f data/a-slow.txt ]; then exec sleep 30; fi; {COPY_DATA}"
    create_pipeline(ws, pipeline_spec("slowpoke", pfs_input("data"), sh(script), datumTimeout="1s", datumTries=1))

    job = only(run(ws), "slowpoke")
    assert job.state == "failure"
    assert (job.processed, job.failed) == (1, 1)
    datums = datums_by_root(pps.list_datums("slowpoke", job.id))
    slow = datums["/a-slow.txt"]
    assert (slow.state, slow.attempts) == ("failed", 1)
    assert "datum_timeout" in slow.reason
    assert "timed out after 1.0s" in slow.reason
    fast = datums["/b-fast.txt"]
    assert (fast.state, fast.attempts) == ("success", 1)
    assert fast.finished_at is not None and slow.finished_at is not None and fast.finished_at > slow.finished_at
    assert tree(pfs, "slowpoke") == {"/b-fast.txt": b"f"}


def test_two_datums_writing_one_output_path(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    commit(pfs, "data", {"/a.txt": b"a", "/b.txt": b"b"})
    create_pipeline(ws, pipeline_spec("clash", pfs_input("data"), sh('echo "$PACH_DATUM_ID" > out/same.txt')))

    with ws.runner() as runner:
        job = only(runner.run_until_idle(), "clash")
        assert job.state == "failure"
        assert (job.processed, job.failed) == (1, 1)
        datums = pps.list_datums("clash", job.id)
        by_state = {d.state: d for d in datums}
        assert set(by_state) == {"success", "failed"}, [(d.state, d.reason) for d in datums]
        winner, loser = by_state["success"], by_state["failed"]
        assert "/same.txt is written by two datums" in loser.reason
        assert winner.datum_id[:12] in loser.reason
        assert loser.datum_id[:12] in loser.reason
        assert "written by two datums" in job.reason
        # the winner's output is committed, tagged with its datum
        assert pfs.get_file("clash", "master", "/same.txt").decode().strip() == winner.datum_id
        assert next(iter(pfs.walk("clash"))).tag == winner.datum_id

        # a new datum may not take a path an unchanged datum owns either
        commit(pfs, "data", {"/c.txt": b"c"})
        job = only(runner.run_until_idle(), "clash")
        assert job.state == "failure"
        new = datums_by_root(pps.list_datums("clash", job.id))["/c.txt"]
        assert new.state == "failed"
        assert winner.datum_id[:12] in new.reason
        assert new.datum_id[:12] in new.reason
        assert pfs.get_file("clash", "master", "/same.txt").decode().strip() == winner.datum_id


def test_worker_killed_mid_datum_is_replaced_and_the_datum_retried(ws: Workspace, tmp_path: Path) -> None:
    pfs, pps = ws.pfs, ws.pps
    marker = tmp_path / "killed-once"
    pfs.create_repo("data")
    files = {"/a.txt": b"a", "/b.txt": b"b", "/c.txt": b"c"}
    commit(pfs, "data", files)
    # the one datum that creates the marker SIGKILLs its worker (the shell's parent) mid-datum; mkdir is
    # atomic, so two workers racing cannot both win
    script = (
        'if mkdir "$MARK" 2>/dev/null; then echo partial > out/partial.txt; kill -9 $PPID; exit 1; fi; ' + COPY_DATA
    )
    create_pipeline(ws, pipeline_spec("fragile", pfs_input("data"), sh(script), env={"MARK": str(marker)}))

    job = only(run(ws), "fragile")
    assert marker.exists()
    assert job.state == "success", job.reason
    assert (job.processed, job.failed) == (3, 0)
    datums = pps.list_datums("fragile", job.id)
    assert sorted((d.state, d.attempts) for d in datums) == [("recovered", 2), ("success", 1), ("success", 1)]
    # exactly one output per input file, nothing from the killed attempt
    assert tree(pfs, "fragile") == files
    killed = next(d for d in datums if d.state == "recovered")
    messages = [x.message for x in pps.logs(job=job.id, datum=killed.datum_id)]
    assert any("died while processing the datum (killed by signal 9)" in m for m in messages), messages


# ---- logs and parallelism --------------------------------------------------------------------------------


def test_job_logs_carry_ids_and_subprocess_output(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    commit(pfs, "data", {"/a.txt": b"a", "/b.txt": b"b"})
    script = (
        'echo "hello from $PPS_PIPELINE_NAME job $PACH_JOB_ID datum $PACH_DATUM_ID"; '
        'echo "careful: $(ls data)" >&2; '
        'test "$PFS_ROOT" = "$(pwd)" && echo "root ok"; ' + COPY_DATA
    )
    create_pipeline(ws, pipeline_spec("chatty", pfs_input("data"), sh(script)))

    job = only(run(ws), "chatty")
    assert job.state == "success", job.reason
    logs = pps.logs(pipeline="chatty", job=job.id)
    assert logs, "no logs recorded"
    assert all(x.pipeline == "chatty" and x.job == job.id for x in logs)
    assert any(x.message.startswith("job started: 2 datums to process") and x.datum == "" for x in logs)
    assert any(x.message.startswith("job success: 2 processed") for x in logs)

    datums = datums_by_root(pps.list_datums("chatty", job.id))
    for root, d in datums.items():
        own = pps.logs(pipeline="chatty", job=job.id, datum=d.datum_id)
        assert own and all(x.datum == d.datum_id and x.worker == d.worker != "" for x in own)
        stdout = [x for x in own if x.level == "INFO"]
        assert [x.message for x in stdout] == [f"hello from chatty job {job.id} datum {d.datum_id}\nroot ok"]
        stderr = [x for x in own if x.level == "WARNING"]
        assert [x.message for x in stderr] == [f"careful: {root.lstrip('/')}"]
    # filters by prefix, like the CLI
    assert {x.datum for x in pps.logs(job=job.id[:8]) if x.datum} == {d.datum_id for d in datums.values()}


def test_parallelism_constant_two_uses_two_workers(ws: Workspace) -> None:
    pfs, pps = ws.pfs, ws.pps
    pfs.create_repo("data")
    files = {f"/f{i}.txt": str(i).encode() for i in range(6)}
    commit(pfs, "data", files)
    # each datum also records the pid of the worker process that ran it
    script = f'{COPY_DATA}; mkdir -p out/pids; echo $PPID > "out/pids/$PACH_DATUM_ID"; sleep 0.2'
    create_pipeline(ws, pipeline_spec("wide", pfs_input("data"), sh(script), parallelismSpec={"constant": 2}))
    assert pps.inspect_pipeline("wide").parallelism == 2

    job = only(run(ws), "wide")
    assert job.state == "success", job.reason
    assert job.processed == 6
    datums = pps.list_datums("wide", job.id)
    assert len(datums) == 6
    assert all(d.state == "success" for d in datums)
    workers = {d.worker for d in datums}
    assert len(workers) == 2
    out = tree(pfs, "wide")
    assert {p: v for p, v in out.items() if not p.startswith("/pids/")} == files
    pids = {v for p, v in out.items() if p.startswith("/pids/")}
    assert len(pids) == 2  # two distinct worker processes
