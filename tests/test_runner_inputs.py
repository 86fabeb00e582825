"""Pachyderm's join and group inputs, end to end with real workers and subprocess transforms."""

from __future__ import annotations

from pathlib import Path

import pytest

from alarmsieve.pps.spec import SpecError, parse_spec
from alarmsieve.workspace import Workspace
from tests.helpers_pps import commit, create_pipeline, new_workspace, only, pipeline_spec, run, tree

# Each datum writes one file named after its inputs' files, listing them: what the datum held.
LIST_DATUM = (
    'name=$(cd "$PFS_ROOT" && find . -path ./out -prune -o -type f -print | sort | sed "s|^\\./||" '
    '| tr "/" "_" | tr "\\n" "+"); '
    'cd "$PFS_ROOT" && find . -path ./out -prune -o -type f -print | sort > "out/$name"'
)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = new_workspace(tmp_path / "ws")
    w.pfs.create_repo("stores")
    w.pfs.create_repo("returns")
    commit(w.pfs, "stores", {"/STOREID1.txt": b"s1", "/STOREID2.txt": b"s2", "/STOREID3.txt": b"s3"})
    commit(w.pfs, "returns", {"/a_STOREID1.txt": b"r1a", "/b_STOREID1.txt": b"r1b", "/c_STOREID4.txt": b"r4"})
    return w


def leaf(repo: str, glob: str, **extra: object) -> dict:
    return {"pfs": {"repo": repo, "glob": glob, **extra}}


def names(ws: Workspace, pipeline: str) -> set[str]:
    """The output file names: one per datum, naming the input files the datum held."""
    return {path.replace("/.+", "/") for path in tree(ws.pfs, pipeline)}


def test_inner_join_pairs_datums_with_equal_keys(ws: Workspace) -> None:
    spec = pipeline_spec(
        "joined",
        {
            "join": [
                leaf("stores", "/STOREID(*).txt", joinOn="$1"),
                leaf("returns", "/*_STOREID(*).txt", joinOn="$1"),
            ]
        },
        ["sh", "-c", LIST_DATUM],
    )
    create_pipeline(ws, spec)
    job = only(run(ws), "joined")
    assert job.state == "success" and job.processed == 2
    assert names(ws, "joined") == {
        "/returns_a_STOREID1.txt+stores_STOREID1.txt+",
        "/returns_b_STOREID1.txt+stores_STOREID1.txt+",
    }


def test_outer_join_keeps_unmatched_datums_of_outer_inputs(ws: Workspace) -> None:
    spec = pipeline_spec(
        "outer",
        {
            "join": [
                leaf("stores", "/STOREID(*).txt", joinOn="$1", outerJoin=True),
                leaf("returns", "/*_STOREID(*).txt", joinOn="$1"),
            ]
        },
        ["sh", "-c", LIST_DATUM],
    )
    create_pipeline(ws, spec)
    job = only(run(ws), "outer")
    # stores 2 and 3 have no returns but stores is outer; return 4 has no store and returns is not outer
    assert names(ws, "outer") == {
        "/returns_a_STOREID1.txt+stores_STOREID1.txt+",
        "/returns_b_STOREID1.txt+stores_STOREID1.txt+",
        "/stores_STOREID2.txt+",
        "/stores_STOREID3.txt+",
    }
    assert job.processed == 4


def test_group_puts_every_datum_with_one_key_in_one_datum(ws: Workspace) -> None:
    spec = pipeline_spec(
        "grouped",
        {
            "group": [
                leaf("stores", "/STOREID(*).txt", groupBy="$1"),
                leaf("returns", "/*_STOREID(*).txt", groupBy="$1"),
            ]
        },
        ["sh", "-c", LIST_DATUM],
    )
    create_pipeline(ws, spec)
    job = only(run(ws), "grouped")
    assert names(ws, "grouped") == {
        "/returns_a_STOREID1.txt+returns_b_STOREID1.txt+stores_STOREID1.txt+",
        "/stores_STOREID2.txt+",
        "/stores_STOREID3.txt+",
        "/returns_c_STOREID4.txt+",
    }
    assert job.processed == 4
    # a new return for store 2 changes only the datum of group 2
    commit(ws.pfs, "returns", {"/d_STOREID2.txt": b"r2"})
    second = only(run(ws), "grouped")
    assert second.processed == 1 and second.skipped == 3
    after = names(ws, "grouped")
    assert "/returns_d_STOREID2.txt+stores_STOREID2.txt+" in after and "/stores_STOREID2.txt+" not in after


def test_join_inputs_need_join_on() -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(pipeline_spec("j", {"join": [leaf("a", "/(*)"), leaf("b", "/(*)", joinOn="$1")]}, ["true"]))
    assert info.value.field == "input.join[0].pfs.joinOn"
    with pytest.raises(SpecError) as info:
        parse_spec(pipeline_spec("g", {"group": [{"cross": [leaf("a", "/*")]}]}, ["true"]))
    assert "must be a `pfs` input" in info.value.reason


def test_batched_datums_survive_a_worker_dying_mid_batch(tmp_path: Path) -> None:
    """Datums go to workers in batches; the worker dies on one datum and the rest of its batch still runs."""
    ws = new_workspace(tmp_path / "batch")
    ws.pfs.create_repo("data")
    files = {f"/f{i:03}": str(i).encode() for i in range(200)}
    files["/f050-bad"] = b"x"
    commit(ws.pfs, "data", files)
    create_pipeline(
        ws,
        pipeline_spec(
            "copy",
            {"pfs": {"repo": "data", "glob": "/*"}},
            ["alarmsieve", "stage", "noop", "--die-on", "bad"],
            datum_tries=2,
            parallelism_spec={"constant": 2},
        ),
    )
    job = only(run(ws), "copy")
    assert job.processed == 200 and job.failed == 1
    assert tree(ws.pfs, "copy") == {p: d for p, d in files.items() if "bad" not in p}
    failed = ws.pps.list_datums("copy", job.id, state="failed")
    assert [d.inputs[0][1] for d in failed] == ["/f050-bad"]
    assert failed[0].attempts == 2 and "exit code 3" in failed[0].reason


def test_cron_input_commits_a_tick_file_per_interval(tmp_path: Path) -> None:
    from datetime import timedelta

    ws = new_workspace(tmp_path / "cron")
    doc = pipeline_spec(
        "ticker",
        {"cron": {"name": "tick", "spec": "@every 1h"}},
        ["sh", "-c", 'ls "$PFS_ROOT/tick" > "$PFS_ROOT/out/seen"'],
    )
    create_pipeline(ws, doc)
    assert ws.pfs.repo_exists("ticker_tick")  # Pachyderm's default repo name: <pipeline>_<cron name>
    first = only(run(ws), "ticker")  # the first run ticks at once
    assert first.state == "success"
    assert len(tree(ws.pfs, "ticker_tick")) == 1
    assert run(ws) == []  # within the hour: no tick, no job

    with ws.runner() as runner:
        later = ws.pfs.head("ticker_tick").created_at + timedelta(hours=1, seconds=1)  # type: ignore[union-attr]
        assert runner.tick_crons(now=later) == ["ticker_tick"]
        assert runner.tick_crons(now=later) == []  # one tick per interval
        jobs = [j for j in [runner.run_pipeline_once("ticker")] if j is not None]
    assert only(jobs, "ticker").state == "success"
    ticks = sorted(tree(ws.pfs, "ticker_tick"))
    assert len(ticks) == 2 and ticks[1] == "/" + later.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert tree(ws.pfs, "ticker")["/seen"].decode().split() == [t.lstrip("/") for t in ticks]


def test_cron_spec_is_checked() -> None:
    doc = pipeline_spec("ticker", {"cron": {"name": "tick", "spec": "0 * * *"}}, ["true"])
    with pytest.raises(SpecError) as info:
        parse_spec(doc)
    assert info.value.field == "input.cron.spec" and "five fields" in info.value.reason
    doc = pipeline_spec("ticker", {"cron": {"name": "tick", "spec": "@every -5s"}}, ["true"])
    with pytest.raises(SpecError):
        parse_spec(doc)


def test_five_field_cron_ticks_on_its_schedule(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    ws = new_workspace(tmp_path / "cron5")
    # at minute 0 of every hour from 09:00 to 17:00 on weekdays
    create_pipeline(ws, pipeline_spec("ticker", {"cron": {"name": "tick", "spec": "0 9-17 * * 1-5"}}, ["true"]))
    with ws.runner() as runner:
        assert runner.tick_crons(now=datetime(2026, 11, 27, 9, 30, tzinfo=UTC)) == ["ticker_tick"]  # first: at once
        assert runner.tick_crons(now=datetime(2026, 11, 27, 9, 59, tzinfo=UTC)) == []
        assert runner.tick_crons(now=datetime(2026, 11, 27, 10, 0, tzinfo=UTC)) == ["ticker_tick"]
        # Friday 17:00 ticks; the next is Monday 09:00, not Saturday
        assert runner.tick_crons(now=datetime(2026, 11, 27, 17, 0, tzinfo=UTC)) == ["ticker_tick"]
        assert runner.tick_crons(now=datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) == []
        assert runner.tick_crons(now=datetime(2026, 11, 30, 9, 0, tzinfo=UTC)) == ["ticker_tick"]
    assert sorted(tree(ws.pfs, "ticker_tick")) == [
        "/2026-11-27T09:30:00Z",
        "/2026-11-27T10:00:00Z",
        "/2026-11-27T17:00:00Z",
        "/2026-11-30T09:00:00Z",
    ]
