"""Helpers shared by the operations tests (test_ops.py, test_ops_versions.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from alarmsieve.workspace import Workspace
from tests.conftest import run_cli


def cli(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, home=ws.home)


def out(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout.decode() + proc.stderr.decode()


def status_json(ws: Workspace) -> dict:
    proc = cli(ws, "status", "--json")
    assert proc.returncode == 0, out(proc)
    return json.loads(proc.stdout)


def pipeline_status(report: dict, name: str) -> dict:
    return next(p for p in report["pipelines"] if p["name"] == name)


def marker_cmd(marker: Path) -> list[str]:
    """Copies the datum to the output, but fails (exit 7) for a file named bad* until ``marker`` exists."""
    script = (
        'for f in data/*; do case "$f" in *bad*) test -e ' + str(marker) + ' || { echo "no marker for $f" >&2; '
        'exit 7; };; esac; done; cp -R data/. "$PFS_ROOT/out/"'
    )
    return ["sh", "-c", script]
