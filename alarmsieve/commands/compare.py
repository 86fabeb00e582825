"""``alarmsieve compare pipeline NAME --with SPEC [--on COMMIT]``: preview a new version's effect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from alarmsieve.cli import app, console, fail, workspace

compare_app = typer.Typer(help="Preview what a new pipeline version would change.", no_args_is_help=True)
app.add_typer(compare_app, name="compare")


@compare_app.command("pipeline")
def compare_pipeline_command(
    name: str,
    with_spec: Annotated[str, typer.Option("--with", help="the candidate spec file (JSON or YAML)")],
    on: Annotated[str | None, typer.Option(help="input commit to compare on (default: the input's head)")] = None,
    save_images: Annotated[Path | None, typer.Option(help="write the candidate's annotated images here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run SPEC on already-processed data, notifying nobody, and print the verdicts that would flip."""
    from alarmsieve.compare import compare_pipeline
    from alarmsieve.pps.spec import load_spec_file

    path = Path(with_spec)
    if not path.is_file():
        fail(f"--with {with_spec}: no such spec file", 2)
    ws = workspace()
    report = compare_pipeline(ws, name, load_spec_file(path), on=on)
    if save_images:
        for flip in report.flips:
            if flip.annotated_sha256:
                dest = save_images / flip.alarm.lstrip("/")
                dest = dest.with_name(dest.name + ".candidate.jpg")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(ws.pfs.objects.get_bytes(flip.annotated_sha256))
    if as_json:
        sys.stdout.write(report.model_dump_json() + "\n")
        return
    console.print(
        f"candidate {name} on {', '.join(f'{r}@{c[:12]}' for r, c in report.inputs.items())}; "
        f"ran {' -> '.join(report.pipelines_run)} in a shadow workspace (nobody notified)",
        highlight=False,
    )
    console.print(
        f"{name} outputs: {len(report.outputs_changed)} changed, {len(report.outputs_added)} added, "
        f"{len(report.outputs_removed)} removed",
        highlight=False,
    )
    if not report.verdicts_compared:
        return
    console.print(f"verdicts: {len(report.flips)} of {report.verdicts_compared} would flip", highlight=False)
    held = ", ".join(f"rules@{commit[:12]} {n}" for commit, n in report.rules_held.items())
    console.print(f"  each alarm judged with the rules it was judged with ({held})", highlight=False)
    if report.stored_differs:
        console.print(
            f"  not counted: {len(report.stored_differs)} stored verdict(s) differ from the baseline for another "
            "reason (e.g. a newer assess version): " + ", ".join(d.alarm for d in report.stored_differs[:5]),
            highlight=False,
        )
    for camera, counts in report.flips_by_camera.items():
        console.print(f"  {camera}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), highlight=False)
    for flip in report.flips:
        console.print(f"  {flip.alarm}: {flip.before} -> {flip.after} ({flip.reason_after})", highlight=False)
