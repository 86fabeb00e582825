"""Shared helpers for the pfs and runner tests: a real workspace (SQLite + object store) and small shortcuts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from alarmsieve.config import Settings
from alarmsieve.pfs.api import CommitInfo, Pfs
from alarmsieve.pps.api import JobInfo
from alarmsieve.pps.spec import parse_spec
from alarmsieve.workspace import Workspace

NOOP_CMD = ["alarmsieve", "stage", "noop"]


def new_workspace(home: Path) -> Workspace:
    """A fresh workspace under ``home`` (explicit settings, so ALARMSIEVE_* in the environment cannot leak in)."""
    return Workspace(Settings(home=home, catalog_url=None, object_store=None), must_exist=False)


def commit(
    pfs: Pfs,
    repo: str,
    files: Mapping[str, bytes] | None = None,
    *,
    delete: Iterable[str] = (),
    provenance: Iterable[str] = (),
) -> CommitInfo:
    """One finished commit: deletions first, then puts (the order CommitBuilder applies them in)."""
    builder = pfs.start_commit(repo, provenance=provenance)
    for path in delete:
        builder.delete(path)
    for path, data in (files or {}).items():
        builder.put_bytes(path, data)
    return builder.finish()


def tree(pfs: Pfs, repo: str, ref: str = "master") -> dict[str, bytes]:
    """Every file of ``repo@ref`` with its content."""
    return {info.path: pfs.get_file(repo, ref, info.path) for info in pfs.walk(repo, ref)}


def pipeline_spec(
    name: str,
    input_: dict[str, Any],
    cmd: list[str],
    **extra: Any,
) -> dict[str, Any]:
    """A Pachyderm-format pipeline spec document."""
    transform: dict[str, Any] = {"cmd": cmd}
    if "env" in extra:
        transform["env"] = extra.pop("env")
    return {"pipeline": {"name": name}, "input": input_, "transform": transform, **extra}


def pfs_input(repo: str, glob: str = "/*", name: str | None = None) -> dict[str, Any]:
    leaf: dict[str, Any] = {"repo": repo, "glob": glob}
    if name is not None:
        leaf["name"] = name
    return {"pfs": leaf}


def create_pipeline(ws: Workspace, doc: dict[str, Any]) -> None:
    ws.pps.create_pipeline(parse_spec(doc, source="test"))


def run(ws: Workspace) -> list[JobInfo]:
    """One runner session until idle (spawns the workers of every pipeline that has work)."""
    with ws.runner() as runner:
        return runner.run_until_idle()


def only(jobs: list[JobInfo], pipeline: str) -> JobInfo:
    """The single job of ``pipeline`` among ``jobs``."""
    found = [j for j in jobs if j.pipeline == pipeline]
    assert len(found) == 1, f"expected one job of {pipeline}, got {[(j.pipeline, j.state) for j in jobs]}"
    return found[0]
