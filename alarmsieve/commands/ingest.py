"""``alarmsieve ingest SOURCE``: commit what cameras uploaded to an S3 bucket prefix or a local folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from alarmsieve.cli import app, console, err_console, fail, workspace


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX or a local FOLDER holding <camera>/<file> uploads")],
    repo: Annotated[
        str | None,
        typer.Option(help="repo to commit into (default: images; from a folder, clips go to videos)"),
    ] = None,
    watch: Annotated[bool, typer.Option(help="keep watching: a pass every --interval seconds")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes with --watch")] = 5.0,
    settle: Annotated[
        float, typer.Option(help="folder: take a file only once it has not changed for this many seconds")
    ] = 2.0,
    remove: Annotated[
        bool, typer.Option("--remove", help="folder: delete each file once a commit holds its content")
    ] = False,
) -> None:
    """Commit new or changed alarms uploaded to an S3 prefix or a folder (one atomic commit per repo and pass)."""
    from alarmsieve.ingest import IngestMemo, IngestResult, ingest_folder, ingest_prefix

    from_s3 = source.startswith("s3://")
    if "://" in source and not from_s3:
        fail(f"{source!r}: give s3://BUCKET/PREFIX or a local folder holding <camera>/<file> uploads", 2)
    if from_s3 and remove:
        fail("--remove is for a folder; objects in a bucket are left as they are (use a lifecycle rule)", 2)
    if settle < 0 or interval <= 0:
        fail("--settle must be >= 0 and --interval > 0 (seconds)", 2)
    ws = workspace()
    if repo is not None and not ws.pfs.repo_exists(repo):
        fail(f"repo {repo!r} not found; create it with `alarmsieve create repo {repo}` or leave --repo out")
    memo = IngestMemo()  # across --watch passes: what is unchanged is not read again
    while True:
        result: IngestResult
        if from_s3:
            result = ingest_prefix(ws.pfs, source, repo=repo or "images", memo=memo)
        else:
            result = ingest_folder(ws.pfs, Path(source), repo=repo, settle_s=settle, remove=remove, memo=memo)
        for key, reason in result.skipped:
            err_console.print(f"skipped {key}: {reason}", highlight=False)
        for target, commit in result.commits.items():
            console.print(f"{target}@{commit}: {result.added_to[target]} new file(s)", highlight=False)
        extra = f", {result.waiting} still arriving" if result.waiting else ""
        extra += f", {result.removed} removed" if result.removed else ""
        if result.commits:
            console.print(f"{len(result.added)} new, {result.unchanged} unchanged{extra}", highlight=False)
        elif not watch:
            console.print(f"nothing new in {source} ({result.unchanged} unchanged{extra})", highlight=False)
        if not watch:
            return
        time.sleep(interval)
