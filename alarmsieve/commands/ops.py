"""Operating the pipelines: ``status``, ``inspect datum``, ``restart datum``, ``rerun job``,
``stop|start pipeline`` and ``delete pipeline|repo|commit``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from alarmsieve.cli import (
    JsonFlag,
    ago,
    app,
    console,
    delete_app,
    emit_json,
    export_app,
    fail,
    inspect_app,
    rerun_app,
    restart_app,
    start_app,
    stop_app,
    workspace,
)

ForceFlag = Annotated[bool, typer.Option("--force", help="also delete what depends on it")]
NoRunFlag = Annotated[bool, typer.Option("--no-run", help="only ask; the next `run` or the running `serve` does it")]

_STATE_COLOURS = {"running": "green", "paused": "yellow", "failing": "red", "crashing": "bold red"}


def _run_now(ws: Any, what: str) -> None:
    """Run the requested work at once when no runner is up; otherwise the running one picks it up."""
    holder = ws.runner_holder()
    if holder is not None:
        console.print(f"{what}: queued; the runner that is up ({holder}) picks it up on its next pass")
        return
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    for job in jobs:
        console.print(
            f"{job.pipeline} job {job.id}: {job.state} ({job.processed} processed, {job.failed} failed, "
            f"{job.recovered} recovered)" + (f": {job.reason}" if job.reason else ""),
            highlight=False,
        )
    if not jobs:
        console.print(f"{what}: nothing to run")


# ---- status ----------------------------------------------------------------------------------------
@app.command()
def status(as_json: JsonFlag = False) -> None:
    """The whole system at a glance: pipelines, workers, queued and failed datums, notifications."""
    ws = workspace()
    report = ws.ops.status()
    holder = ws.runner_holder()
    if as_json:
        from alarmsieve.verdicts import clock_skews

        data = report.model_dump(mode="json")
        data["runner"] = holder
        data["camera_clocks"] = [
            {"camera": c.camera, "clock_skew_s": c.skew_s, "alarm": c.alarm, "note": c.note}
            for c in clock_skews(ws.pfs)
        ]
        return emit_json([data])
    console.print(f"[bold]runner:[/] {holder or 'not running (start one with `alarmsieve serve` or `run`)'}")
    table = Table(
        "PIPELINE", "VERSION", "STATE", "WORKERS", "BUSY", "RESTARTS", "QUEUED", "FAILED", "LAST JOB", box=None
    )
    for p in report.pipelines:
        last = "-"
        if p.last_job:
            j = p.last_job
            last = f"{j.id[:8]} {j.state} {ago(j.created_at)} ({j.processed} processed, {j.failed} failed)"
        colour = _STATE_COLOURS.get(p.state, "white")
        table.add_row(
            p.name,
            f"v{p.version}",
            f"[{colour}]{p.state}[/]",
            str(p.workers_alive),
            str(p.workers_busy),
            str(p.restarts),
            str(p.queued),
            str(p.failed_datums),
            last,
        )
    console.print(table)
    n = report.notifications
    console.print(f"[bold]notifications:[/] {n.pending} pending, {n.failed} failed, {n.sent} sent", highlight=False)
    from alarmsieve.verdicts import clock_skews

    for skew in clock_skews(ws.pfs):  # from each camera's latest verdict
        console.print(f"[yellow]camera clock:[/] {skew.line()}", highlight=False, soft_wrap=True)
    dead = [w for w in report.workers if w.state == "dead"]
    for w in dead[-5:]:
        console.print(f"[red]dead worker[/] {w.worker} ({ago(w.updated_at)}): {w.reason}", highlight=False)
    for problem in report.problems:
        console.print(f"[bold red]problem:[/] {problem}", highlight=False)
    if not report.problems:
        console.print("no problems")


# ---- datums and jobs -------------------------------------------------------------------------------
@inspect_app.command("datum")
def inspect_datum(
    target: Annotated[str, typer.Argument(help="PIPELINE@DATUM (a datum id or prefix), or PIPELINE@JOB@DATUM")],
    as_json: JsonFlag = False,
) -> None:
    """Show a datum: state, attempts, input paths, worker, and the reason with its traceback."""
    parts = target.split("@")
    if len(parts) == 2:
        pipeline, job, datum = parts[0], None, parts[1]
    elif len(parts) == 3:
        pipeline, job, datum = parts
    else:
        fail(f"{target!r}: give PIPELINE@DATUM or PIPELINE@JOB@DATUM (ids from `alarmsieve list datum`)", 2)
    if not datum:
        fail(f"{target!r}: the datum id is missing after '@'", 2)
    info = workspace().pps.inspect_datum(pipeline, datum, job)
    if as_json:
        return emit_json([info])
    rows = [
        ("Datum", info.datum_id),
        ("Pipeline", info.pipeline),
        ("Job", info.job_id),
        ("State", info.state),
        ("Attempts", str(info.attempts)),
        ("Inputs", ", ".join(f"{name}:{root}" for name, root in info.inputs)),
        ("Worker", info.worker or "-"),
        ("Time", f"{info.seconds * 1000:.0f} ms"),
        ("Finished", f"{info.finished_at.isoformat()} ({ago(info.finished_at)})" if info.finished_at else "-"),
        ("Reason", info.reason or "-"),
    ]
    for key, value in rows:
        console.print(f"[bold]{key}:[/] {value}", highlight=False)
    if info.traceback:
        console.print("[bold]Traceback:[/]")
        sys.stdout.flush()
        console.print(info.traceback.rstrip(), highlight=False, markup=False)


@restart_app.command("datum")
def restart_datum(
    target: Annotated[str, typer.Argument(help="PIPELINE@DATUM (id or prefix), or PIPELINE@failed for all failed")],
    no_run: NoRunFlag = False,
) -> None:
    """Run a datum (or every failed datum) of a pipeline again now."""
    pipeline, _, datum = target.partition("@")
    if not pipeline or not datum:
        fail(f"{target!r}: give PIPELINE@DATUM or PIPELINE@failed", 2)
    ws = workspace()
    ids = ws.ops.restart_datum(pipeline, datum)
    console.print(f"{pipeline}: {len(ids)} datum(s) marked to run again", highlight=False)
    if not no_run:
        _run_now(ws, f"restart {pipeline}")


@rerun_app.command("job")
def rerun_job(job_id: str, no_run: NoRunFlag = False) -> None:
    """Run a job's failed datums again now (or, for a job that could not start, the job)."""
    ws = workspace()
    job, ids = ws.ops.rerun_job(job_id)
    what = f"{len(ids)} failed datum(s)" if ids else "the pipeline's pending work"
    console.print(f"{job.pipeline} job {job.id} ({job.state}): running {what} again", highlight=False)
    if not no_run:
        _run_now(ws, f"rerun {job.id[:8]}")


# ---- stop / start ----------------------------------------------------------------------------------
@stop_app.command("pipeline")
def stop_pipeline(name: str) -> None:
    """Stop a pipeline: no new jobs until `start pipeline` (its input keeps being versioned)."""
    ws = workspace()
    ws.pps.get_spec(name)
    ws.pps.set_state(name, "paused", "stopped by an operator (`alarmsieve start pipeline` resumes it)")
    console.print(f"pipeline {name}: stopped")


@start_app.command("pipeline")
def start_pipeline(name: str) -> None:
    """Start a stopped (or crashing) pipeline again; it catches up on the input it missed."""
    ws = workspace()
    ws.pps.get_spec(name)
    ws.pps.set_state(name, "running", "")
    console.print(f"pipeline {name}: running")


# ---- delete ----------------------------------------------------------------------------------------
def _refuse_or_go(what: str, plan: Any, force: bool) -> None:
    extra = [p for p in plan.pipelines if p != what]
    goes = []
    if plan.pipelines:
        goes.append("pipelines " + ", ".join(plan.pipelines))
    if plan.repos:
        goes.append("repos " + ", ".join(plan.repos))
    if plan.commits:
        goes.append("commits " + ", ".join(plan.commits))
    if extra and not force:
        fail(f"{what} has dependents: {', '.join(extra)}; deleting it with --force also deletes " + "; ".join(goes))
    console.print("deleting " + "; ".join(goes), highlight=False)


@delete_app.command("pipeline")
def delete_pipeline(name: str, force: ForceFlag = False) -> None:
    """Delete a pipeline with its output repo, jobs and datums; refuses when pipelines read its output."""
    ws = workspace()
    plan = ws.ops.plan_delete_pipeline(name)
    _refuse_or_go(name, plan, force)
    ws.ops.delete_pipelines(plan.pipelines)
    console.print(f"deleted pipeline {name}" + (f" and {len(plan.pipelines) - 1} downstream" if force else ""))


@delete_app.command("repo")
def delete_repo(name: str, force: ForceFlag = False) -> None:
    """Delete a repo; refuses when pipelines read it (with --force they go too)."""
    ws = workspace()
    plan = ws.ops.plan_delete_repo(name)
    _refuse_or_go(name, plan, force)
    ws.ops.delete_pipelines(plan.pipelines)
    ws.ops.delete_repo(name)
    console.print(f"deleted repo {name}")


@delete_app.command("commit")
def delete_commit(
    target: Annotated[str, typer.Argument(help="REPO@COMMIT (the head commit of the repo)")],
    force: ForceFlag = False,
) -> None:
    """Delete a repo's head commit; refuses when output commits were made from it (with --force they go too)."""
    repo, _, ref = target.partition("@")
    if not repo or not ref:
        fail(f"{target!r}: give REPO@COMMIT", 2)
    ws = workspace()
    commit_id, plan = ws.ops.plan_delete_commit(repo, ref)
    label = f"{repo}@{commit_id}"
    extra = [c for c in plan.commits if c != label]
    if extra and not force:
        fail(
            f"{label} has dependents: {', '.join(extra)} were made from it; "
            "--force deletes them too (their pipelines then rebuild their output from the remaining input)"
        )
    ws.ops.delete_commits(plan.commits)
    console.print(f"deleted commits {', '.join(plan.commits)}", highlight=False)


# ---- export ----------------------------------------------------------------------------------------
@export_app.command("pipeline")
def export_pipeline(
    name: Annotated[str | None, typer.Argument(help="pipeline name (default: every pipeline)")] = None,
    pachyderm: Annotated[bool, typer.Option("--pachyderm", help="Pachyderm 2 spec (the only format so far)")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
) -> None:
    """Write pipeline specs that Pachyderm accepts (built-in stages run as image alarmsieve:<version>)."""
    if not pachyderm:
        fail("give --pachyderm (the export format)", 2)
    ws = workspace()
    names = [name] if name else ws.pps.topological_order()
    docs = [export_for_pachyderm(ws.pps.get_spec(n)[0]) for n in names]
    text = "\n".join(json.dumps(doc, indent=2) for doc in docs) + "\n"
    if output is not None:
        output.write_text(text)
        console.print(f"wrote {len(docs)} pipeline spec(s) to {output}")
    else:
        sys.stdout.write(text)


def export_for_pachyderm(spec: Any) -> dict[str, Any]:
    """The spec as Pachyderm 2 runs it, checked against Pachyderm's JSON schema."""
    from alarmsieve import __version__
    from alarmsieve.pps.spec import to_pachyderm, validate_against_schema
    from alarmsieve.stages.registry import builtin_stage_of

    doc = to_pachyderm(spec)
    if builtin_stage_of(spec.transform.cmd) is not None and not spec.transform.image:
        doc["transform"]["image"] = f"alarmsieve:{__version__}"
    validate_against_schema(doc, f"export of {spec.name}")
    return doc
