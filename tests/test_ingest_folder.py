"""The watch-folder ingest: what cameras upload to a local folder (FTP drop) lands in images / videos."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alarmsieve.config import Settings
from alarmsieve.ingest import IngestError, IngestMemo, ingest_folder, repo_for
from alarmsieve.workspace import Workspace
from tests.conftest import run_cli

OLD = time.time() - 120  # an mtime well past the settle times used here: the upload is complete


def _drop(folder: Path, rel: str, body: bytes, *, mtime: float | None = OLD) -> Path:
    path = folder / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    for repo in ("images", "videos"):
        workspace.pfs.create_repo(repo)
    return workspace


def test_a_pass_commits_settled_uploads_by_kind_and_says_what_it_left(
    ws: Workspace, tmp_path: Path, shared_dir: Path
) -> None:
    photo = (shared_dir / "images" / "coral" / "owl.jpg").read_bytes()
    clip = b"\x00\x00\x00\x18ftypmp42 not decoded here: validate and frames judge it"
    incoming = tmp_path / "incoming"
    _drop(incoming, "cam-1/0001.jpg", photo)
    _drop(incoming, "cam-2/0002.MP4", clip)
    _drop(incoming, "loose.jpg", photo)  # not under a camera folder
    _drop(incoming, "cam-1/.in.0003.jpg.", photo)  # an FTP server's temporary name
    _drop(incoming, "cam-1/0004.jpg", photo[:1000], mtime=None)  # still growing: written just now

    result = ingest_folder(ws.pfs, incoming, settle_s=30.0)

    assert sorted(result.commits) == ["images", "videos"]
    assert result.added_to == {"images": 1, "videos": 1}
    assert ws.pfs.get_file("images", "master", "/cam-1/0001.jpg") == photo
    assert ws.pfs.get_file("videos", "master", "/cam-2/0002.MP4") == clip
    assert [key for key, _ in result.skipped] == ["loose.jpg"]
    assert "not under a camera folder" in result.skipped[0][1]
    assert result.waiting == 2
    assert {i.path for i in ws.pfs.walk("images")} == {"/cam-1/0001.jpg"}


def test_repeated_passes_commit_only_what_changed_and_the_memo_spares_the_reads(
    ws: Workspace, tmp_path: Path, shared_dir: Path
) -> None:
    photos = shared_dir / "images"
    incoming = tmp_path / "incoming"
    first = _drop(incoming, "cam-1/a.jpg", (photos / "coral" / "owl.jpg").read_bytes())
    _drop(incoming, "cam-1/b.png", (photos / "skimage" / "astronaut.png").read_bytes())
    memo = IngestMemo()
    assert ingest_folder(ws.pfs, incoming, memo=memo).added == ["/cam-1/a.jpg", "/cam-1/b.png"]

    again = ingest_folder(ws.pfs, incoming, memo=memo)
    assert (again.commits, again.unchanged) == ({}, 2)
    # Same size, same mtime, other bytes: the watcher's memo does not read it again (as rsync would not);
    # a new watcher (a fresh memo) reads everything once and finds the change.
    body = first.read_bytes()
    first.write_bytes(bytes(255 - b for b in body))
    os.utime(first, (OLD, OLD))
    assert ingest_folder(ws.pfs, incoming, memo=memo).unchanged == 2
    assert ingest_folder(ws.pfs, incoming, memo=IngestMemo()).added == ["/cam-1/a.jpg"]

    _drop(incoming, "cam-1/a.jpg", (photos / "coral" / "parrot.jpg").read_bytes(), mtime=OLD + 5)
    changed = ingest_folder(ws.pfs, incoming, memo=memo)
    assert (changed.added, changed.unchanged) == (["/cam-1/a.jpg"], 1)
    assert ws.pfs.get_file("images", "master", "/cam-1/a.jpg") == (photos / "coral" / "parrot.jpg").read_bytes()
    assert len(ws.pfs.list_commits("images")) == 3


def test_remove_deletes_only_what_a_commit_holds(ws: Workspace, tmp_path: Path, shared_dir: Path) -> None:
    photo = (shared_dir / "images" / "coral" / "owl.jpg").read_bytes()
    incoming = tmp_path / "incoming"
    taken = _drop(incoming, "cam-1/a.jpg", photo)
    growing = _drop(incoming, "cam-1/b.jpg", photo[:500], mtime=None)
    result = ingest_folder(ws.pfs, incoming, remove=True, settle_s=30.0)
    assert (result.added, result.removed, result.waiting) == (["/cam-1/a.jpg"], 1, 1)
    assert not taken.exists() and growing.exists()
    # a file already in the repo with the same content is removed too (a crash after the commit, before the delete)
    again = _drop(incoming, "cam-1/a.jpg", photo)
    result = ingest_folder(ws.pfs, incoming, remove=True, settle_s=30.0)
    assert (result.commits, result.unchanged, result.removed) == ({}, 1, 1)
    assert not again.exists()


def test_a_missing_repo_skips_its_files_and_the_rest_goes_on(tmp_path: Path, shared_dir: Path) -> None:
    ws = Workspace(Settings(home=tmp_path / "ws"), must_exist=False)
    ws.pfs.create_repo("images")  # no videos repo
    incoming = tmp_path / "incoming"
    _drop(incoming, "cam-1/a.jpg", (shared_dir / "images" / "coral" / "owl.jpg").read_bytes())
    _drop(incoming, "cam-1/b.mkv", b"a clip")
    result = ingest_folder(ws.pfs, incoming)
    assert list(result.commits) == ["images"]
    [(key, reason)] = result.skipped
    assert key == "cam-1/b.mkv" and "repo 'videos' not found" in reason and "create repo videos" in reason


def test_a_bad_folder_and_a_bad_file_name_are_named(ws: Workspace, tmp_path: Path, shared_dir: Path) -> None:
    with pytest.raises(IngestError, match=r"no such folder.*<camera>/<file>"):
        ingest_folder(ws.pfs, tmp_path / "nope")
    incoming = tmp_path / "incoming"
    _drop(incoming, "cam-1/a\\b.jpg", b"a name a repo path cannot hold")
    _drop(incoming, "cam-1/c.jpg", (shared_dir / "images" / "coral" / "owl.jpg").read_bytes())
    result = ingest_folder(ws.pfs, incoming)
    assert result.added == ["/cam-1/c.jpg"]
    [(key, reason)] = result.skipped
    assert key == "cam-1/a\\b.jpg" and "backslash" in reason


def test_repo_for_sends_clips_to_videos() -> None:
    assert [repo_for(p) for p in ("/c/a.jpg", "/c/a.MOV", "/c/a.webm", "/c/a.avi", "/c/a")] == [
        "images",
        "videos",
        "videos",
        "videos",
        "images",
    ]


def test_cli_ingest_folder_then_run_gives_a_verdict(tmp_path: Path, shared_dir: Path, model_dir: Path) -> None:
    home = tmp_path / "ws"
    env = {"ALARMSIEVE_MODEL_DIR": str(model_dir)}
    assert run_cli("init", home=home, env=env).returncode == 0
    incoming = tmp_path / "incoming"
    _drop(incoming, "cam-7/0001.jpg", (shared_dir / "images" / "coral" / "grace_hopper.bmp").read_bytes())
    shutil.copy(shared_dir / "images" / "coral" / "owl.jpg", incoming / "stray.jpg")
    done = run_cli("ingest", str(incoming), "--remove", home=home, env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert b"images@" in done.stdout and b"1 new file(s)" in done.stdout and b"1 removed" in done.stdout
    assert b"stray.jpg: not under a camera folder" in done.stderr
    assert not (incoming / "cam-7" / "0001.jpg").exists() and (incoming / "stray.jpg").exists()
    assert run_cli("run", home=home, env=env).returncode == 0
    verdicts = run_cli("verdicts", "--json", home=home, env=env)
    [verdict] = [json.loads(line) for line in verdicts.stdout.splitlines()]
    assert (verdict["input_path"], verdict["device"], verdict["verdict"]) == ("/cam-7/0001.jpg", "cam-7", "alert")
    nothing = run_cli("ingest", str(incoming), home=home, env=env)
    assert nothing.returncode == 0 and b"nothing new" in nothing.stdout
    for bad, why in (
        (["ingest", "ftp://host/x"], b"s3://BUCKET/PREFIX or a local folder"),
        (["ingest", "s3://bucket/x", "--remove"], b"--remove is for a folder"),
        (["ingest", str(tmp_path / "missing")], b"no such folder"),
        (["ingest", str(incoming), "--settle", "-1"], b"--settle must be >= 0"),
        (["ingest", str(incoming), "--repo", "nope"], b"repo 'nope' not found"),
    ):
        out = run_cli(*bad, home=home, env=env)
        assert out.returncode in (1, 2) and why in out.stderr, out.stderr.decode()


def test_serve_once_with_ingest_commits_the_uploads_and_judges_them(
    tmp_path: Path, shared_dir: Path, model_dir: Path
) -> None:
    home = tmp_path / "ws"
    env = {"ALARMSIEVE_MODEL_DIR": str(model_dir)}
    assert run_cli("init", home=home, env=env).returncode == 0
    incoming = tmp_path / "incoming"
    upload = _drop(incoming, "cam-3/0001.bmp", (shared_dir / "images" / "coral" / "grace_hopper.bmp").read_bytes())
    served = run_cli("serve", "--once", "--ingest", str(incoming), "--ingest-remove", home=home, env=env)
    assert served.returncode == 0, served.stderr.decode()
    assert b"ingested 1 file(s) from" in served.stdout and not upload.exists()
    verdicts = run_cli("verdicts", "--json", home=home, env=env)
    [verdict] = [json.loads(line) for line in verdicts.stdout.splitlines()]
    assert (verdict["input_path"], verdict["verdict"]) == ("/cam-3/0001.bmp", "alert")
    missing = run_cli("serve", "--once", "--ingest", str(tmp_path / "nope"), home=home, env=env)
    assert missing.returncode == 1 and b"no such folder" in missing.stderr


def test_the_http_servers_pipeline_loop_runs_the_folder_pass_before_each_round(
    make_workspace: Callable[..., Workspace], tmp_path: Path, shared_dir: Path
) -> None:
    from alarmsieve.api.server import PipelineLoop

    ws = make_workspace()
    incoming = tmp_path / "incoming"
    _drop(incoming, "cam-4/0001.jpg", (shared_dir / "images" / "coral" / "owl.jpg").read_bytes())
    passes: list[list[str]] = []
    loop = PipelineLoop(ws, niceness=0, before_round=lambda: passes.append(ingest_folder(ws.pfs, incoming).added))
    loop.run(once=True)
    assert passes == [["/cam-4/0001.jpg"]]
    assert "/cam-4/0001.jpg/verdict.json" in {info.path for info in ws.pfs.walk("assess")}
