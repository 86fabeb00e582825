"""``alarmsieve ingest s3://bucket/prefix``: commit what cameras uploaded to a bucket."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from alarmsieve.cli import app, console, err_console, workspace


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX holding <camera>/<file> objects")],
    repo: Annotated[str, typer.Option(help="repo to commit into")] = "images",
    watch: Annotated[bool, typer.Option(help="keep watching the prefix")] = False,
    interval: Annotated[float, typer.Option(help="seconds between passes with --watch")] = 5.0,
) -> None:
    """Commit new or changed images uploaded to an S3 bucket prefix (one atomic commit per pass)."""
    from alarmsieve.ingest import ingest_prefix

    ws = workspace()
    while True:
        result = ingest_prefix(ws.pfs, source, repo=repo)
        for key, reason in result.skipped:
            err_console.print(f"skipped {key}: {reason}", highlight=False)
        if result.commit:
            console.print(f"{repo}@{result.commit}: {len(result.added)} new file(s), {result.unchanged} unchanged")
        elif not watch:
            console.print(f"nothing new under {source} ({result.unchanged} already in {repo})")
        if not watch:
            return
        time.sleep(interval)
