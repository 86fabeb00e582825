"""Foreign Pachyderm code that reads /pfs/<input> and writes /pfs/out runs unchanged, in a private mount
namespace (``unshare``) with the datum bound at /pfs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alarmsieve.pps.worker import PFS_MOUNT, _probe_namespace
from alarmsieve.workspace import Workspace
from tests.helpers_pps import commit, create_pipeline, new_workspace, only, pfs_input, pipeline_spec, run, tree

# Written in the style of Pachyderm's opencv edges example: fixed /pfs paths, one output per input file.
EDGES_STYLE = """
import glob
import os

for path in glob.glob("/pfs/images/*"):
    name = os.path.basename(path)
    with open(path) as src, open(os.path.join("/pfs/out", name + ".upper"), "w") as out:
        out.write(src.read().upper())
print("datum", os.environ["PACH_DATUM_ID"][:12], "of", os.environ["PPS_PIPELINE_NAME"], "at", os.getcwd())
"""


@pytest.fixture
def pfs_mount_point() -> Iterator[Path]:
    """/pfs as the machine's setup leaves it (an empty folder); made here, and removed after, when run as root."""
    mount = Path(PFS_MOUNT)
    made = False
    if not mount.is_dir():
        if os.geteuid() != 0:
            pytest.skip("no /pfs mount point: the machine's setup must run `mkdir /pfs` as root (see docs)")
        mount.mkdir()
        made = True
    try:
        if _probe_namespace() is None:
            pytest.skip("unshare cannot make a mount namespace here (needs root or user namespaces)")
        yield mount
    finally:
        if made:
            mount.rmdir()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return new_workspace(tmp_path / "ws")


def test_pachyderm_style_code_reads_and_writes_pfs(ws: Workspace, tmp_path: Path, pfs_mount_point: Path) -> None:
    script = tmp_path / "edges_style.py"
    script.write_text(EDGES_STYLE)
    ws.pfs.create_repo("images")
    commit(ws.pfs, "images", {"/a.txt": b"alpha", "/b.txt": b"beta"})
    create_pipeline(ws, pipeline_spec("upper", pfs_input("images", "/*"), [sys.executable, str(script)]))
    # 1.x word-count style: a shell reading its script from stdin, with the input's env variable
    doc = pipeline_spec("shell", pfs_input("images", "/*"), ["sh"], env={"SUFFIX": ".copy"})
    doc["transform"]["stdin"] = ['cp "$images" "/pfs/out/$(basename "$images")$SUFFIX"', "test -d /pfs/out"]
    create_pipeline(ws, doc)

    jobs = run(ws)
    assert only(jobs, "upper").state == "success", only(jobs, "upper").reason
    assert tree(ws.pfs, "upper") == {"/a.txt.upper": b"ALPHA", "/b.txt.upper": b"BETA"}
    assert only(jobs, "shell").state == "success", only(jobs, "shell").reason
    assert tree(ws.pfs, "shell") == {"/a.txt.copy": b"alpha", "/b.txt.copy": b"beta"}
    printed = [line.message for line in ws.pps.logs("upper") if line.message.startswith("datum ")]
    assert len(printed) == 2 and all(m.endswith("of upper at /pfs") for m in printed)
    assert list(pfs_mount_point.iterdir()) == []  # the host's /pfs is never written


def test_failing_foreign_code_reports_exit_code(ws: Workspace, pfs_mount_point: Path) -> None:
    ws.pfs.create_repo("images")
    commit(ws.pfs, "images", {"/a.txt": b"alpha"})
    create_pipeline(
        ws,
        pipeline_spec("broken", pfs_input("images", "/*"), ["sh", "-c", "ls /pfs/nope >&2; exit 4"], datum_tries=1),
    )
    job = only(run(ws), "broken")
    assert job.state == "failure"
    (datum,) = ws.pps.list_datums("broken", job.id)
    assert "exited with code 4" in datum.reason and "/pfs/nope" in datum.reason


def test_namespace_can_be_turned_off() -> None:
    env = {**os.environ, "ALARMSIEVE_PFS_MOUNT": "off"}
    code = "from alarmsieve.pps.worker import pfs_namespace; print(pfs_namespace())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "None"
