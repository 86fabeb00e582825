"""PFS over a real SQLite catalog and a real content-addressed object store: repos, commits, files, provenance."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alarmsieve.pfs.api import (
    CommitNotFoundError,
    FileNotFoundInCommitError,
    Pfs,
    PfsError,
    RepoNotFoundError,
)
from alarmsieve.pfs.paths import FileRef, PathError, normalize_path, parse_file_ref
from alarmsieve.workspace import Workspace
from tests.helpers_pps import commit, new_workspace, tree


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return new_workspace(tmp_path / "ws")


@pytest.fixture
def pfs(ws: Workspace) -> Pfs:
    return ws.pfs


def _object_files(ws: Workspace) -> list[Path]:
    root = Path(ws.settings.resolved_object_store)
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


# ---- repos -------------------------------------------------------------------------------------------


def test_create_and_list_repos(pfs: Pfs) -> None:
    pfs.create_repo("images", description="camera photos")
    pfs.create_repo("rules")
    repos = pfs.list_repos()
    assert [r.name for r in repos] == ["images", "rules"]
    images = repos[0]
    assert images.description == "camera photos"
    assert images.head is None
    assert (images.file_count, images.size_bytes) == (0, 0)
    assert pfs.repo_exists("rules")
    assert not pfs.repo_exists("nope")

    c = commit(pfs, "images", {"/a.jpg": b"12345", "/cam/b.jpg": b"678"})
    images = next(r for r in pfs.list_repos() if r.name == "images")
    assert images.head == c.id
    assert (images.file_count, images.size_bytes) == (2, 8)


def test_duplicate_repo_is_refused(pfs: Pfs) -> None:
    pfs.create_repo("images")
    with pytest.raises(PfsError, match="repo 'images' already exists"):
        pfs.create_repo("images")
    pfs.create_repo("images", exist_ok=True)  # explicitly allowed: no error, still one repo
    assert [r.name for r in pfs.list_repos()] == ["images"]


@pytest.mark.parametrize("name", ["", "bad name", "a/b", "a@b", "x" * 64, "../etc", "dot.ted"])
def test_bad_repo_name_is_refused_with_a_clear_message(pfs: Pfs, name: str) -> None:
    with pytest.raises(PathError, match=r"is invalid: use 1-63 letters, digits, '-' or '_'"):
        pfs.create_repo(name)
    assert pfs.list_repos() == []


def test_unknown_repo_names_the_known_ones(pfs: Pfs) -> None:
    pfs.create_repo("images")
    with pytest.raises(RepoNotFoundError, match=r"repo 'imagez' not found \(repos: images\)"):
        pfs.start_commit("imagez")
    with pytest.raises(RepoNotFoundError):
        list(pfs.walk("imagez"))


# ---- files ---------------------------------------------------------------------------------------------


def test_put_and_get_bytes(pfs: Pfs) -> None:
    pfs.create_repo("data")
    payload = bytes(range(256)) * 1000
    c = commit(pfs, "data", {"/cam-1/0001.jpg": payload, "/empty": b""})
    assert pfs.get_file("data", "master", "/cam-1/0001.jpg") == payload
    assert pfs.get_file("data", c.id, "cam-1//0001.jpg") == payload  # normalised path, commit id ref
    assert pfs.get_file("data", "master", "/empty") == b""
    info = pfs.inspect_commit("data")
    assert info.id == c.id
    assert (info.files_added, info.files_removed, info.size_bytes) == (2, 0, len(payload))
    with pytest.raises(FileNotFoundInCommitError):
        pfs.get_file("data", "master", "/cam-1/missing.jpg")
    with pytest.raises(FileNotFoundInCommitError):
        pfs.get_file("data", "master", "/cam-1")  # a directory is not a file


def test_put_stream_and_local_file(pfs: Pfs, tmp_path: Path) -> None:
    pfs.create_repo("data")
    local = tmp_path / "local.bin"
    local.write_bytes(b"from disk")
    b = pfs.start_commit("data")
    with open(local, "rb") as handle:
        b.put_stream("/stream.bin", handle)
    b.put_local_file("/disk.bin", local)
    b.finish()
    assert tree(pfs, "data") == {"/disk.bin": b"from disk", "/stream.bin": b"from disk"}


def test_list_files_aggregates_directories(pfs: Pfs) -> None:
    pfs.create_repo("data")
    commit(
        pfs,
        "data",
        {
            "/readme.txt": b"r",
            "/cam-1/a.jpg": b"aa",
            "/cam-1/night/b.jpg": b"bbb",
            "/cam-2/c.jpg": b"cccc",
        },
    )
    top = {f.path: (f.type, f.size) for f in pfs.list_files("data")}
    assert top == {"/readme.txt": ("file", 1), "/cam-1": ("dir", 5), "/cam-2": ("dir", 4)}

    cam1 = {f.path: (f.type, f.size) for f in pfs.list_files("data", "master", "/cam-1")}
    assert cam1 == {"/cam-1/a.jpg": ("file", 2), "/cam-1/night": ("dir", 3)}

    single = pfs.list_files("data", "master", "/cam-1/a.jpg")
    assert [(f.path, f.type, f.size) for f in single] == [("/cam-1/a.jpg", "file", 2)]

    with pytest.raises(FileNotFoundInCommitError):
        pfs.list_files("data", "master", "/cam-3")
    # a sibling whose name extends the directory's name is not below it
    commit(pfs, "data", {"/cam-1.txt": b"x", "/cam-10/d.jpg": b"d"})
    assert {f.path for f in pfs.list_files("data", "master", "/cam-1")} == {"/cam-1/a.jpg", "/cam-1/night"}
    assert [f.path for f in pfs.walk("data", "master", "/cam-1")] == ["/cam-1/a.jpg", "/cam-1/night/b.jpg"]


def test_commits_are_immutable(pfs: Pfs) -> None:
    pfs.create_repo("data")
    c1 = commit(pfs, "data", {"/a.txt": b"v1", "/b.txt": b"bee", "/d/x.txt": b"x"})
    c2 = commit(pfs, "data", {"/a.txt": b"v2"}, delete=["/b.txt", "/d"])
    assert c2.parent == c1.id
    assert c2.seq == c1.seq + 1

    # the old commit still reads the old content
    assert tree(pfs, "data", c1.id) == {"/a.txt": b"v1", "/b.txt": b"bee", "/d/x.txt": b"x"}
    # the new one the new
    assert tree(pfs, "data", c2.id) == {"/a.txt": b"v2"}
    assert tree(pfs, "data") == {"/a.txt": b"v2"}
    with pytest.raises(FileNotFoundInCommitError):
        pfs.get_file("data", "master", "/b.txt")

    # a later commit does not change either
    commit(pfs, "data", {"/a.txt": b"v3", "/b.txt": b"back"})
    assert pfs.get_file("data", c1.id, "/a.txt") == b"v1"
    assert pfs.get_file("data", c2.id, "/a.txt") == b"v2"
    assert [c.id for c in pfs.list_commits("data")][1:] == [c2.id, c1.id]


def test_commit_ref_by_unique_prefix(pfs: Pfs) -> None:
    pfs.create_repo("data")
    c1 = commit(pfs, "data", {"/a": b"1"})
    commit(pfs, "data", {"/a": b"2"})
    assert pfs.get_file("data", c1.id[:10], "/a") == b"1"
    assert pfs.inspect_commit("data", c1.id[:8]).id == c1.id
    with pytest.raises(CommitNotFoundError, match="no such branch or commit"):
        pfs.inspect_commit("data", "0" * 32)
    with pytest.raises(CommitNotFoundError):
        pfs.inspect_commit("data", "feature")


def test_diff_between_commits(pfs: Pfs) -> None:
    pfs.create_repo("data")
    c1 = commit(pfs, "data", {"/keep.txt": b"k", "/mod.txt": b"old", "/gone.txt": b"g"})
    c2 = commit(pfs, "data", {"/mod.txt": b"new", "/new.txt": b"n", "/keep.txt": b"k"}, delete=["/gone.txt"])

    changes = {(ch.path, ch.op) for ch in pfs.diff("data", c1.id, c2.id)}
    assert changes == {("/mod.txt", "modified"), ("/new.txt", "added"), ("/gone.txt", "removed")}
    by_path = {ch.path: ch for ch in pfs.diff("data", c1.id, c2.id)}
    assert by_path["/mod.txt"].old_sha256 != by_path["/mod.txt"].new_sha256
    assert by_path["/mod.txt"].size == 3
    assert by_path["/gone.txt"].new_sha256 is None

    # from the empty repo: everything at the target is added
    assert {(ch.path, ch.op) for ch in pfs.diff("data", None, c1.id)} == {
        ("/keep.txt", "added"),
        ("/mod.txt", "added"),
        ("/gone.txt", "added"),
    }
    assert {(ch.path, ch.op) for ch in pfs.diff("data", None)} == {
        ("/keep.txt", "added"),
        ("/mod.txt", "added"),
        ("/new.txt", "added"),
    }
    # reversed: the inverse changes
    assert {(ch.path, ch.op) for ch in pfs.diff("data", c2.id, c1.id)} == {
        ("/mod.txt", "modified"),
        ("/new.txt", "removed"),
        ("/gone.txt", "added"),
    }
    assert pfs.diff("data", c2.id, c2.id) == []

    # a file added and removed again between the two commits is no change; one changed back is none either
    c3 = commit(pfs, "data", {"/tmp.txt": b"t", "/mod.txt": b"old"})
    c4 = commit(pfs, "data", delete=["/tmp.txt"])
    assert {(ch.path, ch.op) for ch in pfs.diff("data", c2.id, c4.id)} == {("/mod.txt", "modified")}
    assert {(ch.path, ch.op) for ch in pfs.diff("data", c1.id, c4.id)} == {
        ("/new.txt", "added"),
        ("/gone.txt", "removed"),
    }
    assert {(ch.path, ch.op) for ch in pfs.diff("data", c2.id, c3.id)} == {
        ("/tmp.txt", "added"),
        ("/mod.txt", "modified"),
    }


def test_delete_directory_removes_everything_below(pfs: Pfs) -> None:
    pfs.create_repo("data")
    commit(
        pfs,
        "data",
        {
            "/cam-1/a.jpg": b"a",
            "/cam-1/night/b.jpg": b"b",
            "/cam-1/night/deep/c.jpg": b"c",
            "/cam-10/d.jpg": b"d",  # shares the prefix "/cam-1" but is another directory
            "/cam-1.txt": b"e",
        },
    )
    c2 = commit(pfs, "data", delete=["/cam-1"])
    assert tree(pfs, "data") == {"/cam-10/d.jpg": b"d", "/cam-1.txt": b"e"}
    assert c2.files_removed == 3

    # deleting a path that does not exist is harmless; deleting "/" empties the repo
    commit(pfs, "data", delete=["/nothing/here"])
    assert set(tree(pfs, "data")) == {"/cam-10/d.jpg", "/cam-1.txt"}
    commit(pfs, "data", delete=["/"])
    assert tree(pfs, "data") == {}


@pytest.mark.parametrize(
    "bad",
    ["/a/../b", "../etc/passwd", "/a/./b", "./a", "/..", "a/..", "/a\\b", "/a\x00b"],
)
def test_path_traversal_is_refused(pfs: Pfs, bad: str) -> None:
    pfs.create_repo("data")
    commit(pfs, "data", {"/b": b"b", "/a/b": b"ab"})
    with pytest.raises(PathError) as caught:
        normalize_path(bad)
    message = str(caught.value)
    if ".." in bad.split("/") or "." in bad.split("/"):
        assert "relative components are not allowed" in message
    else:
        assert "NUL or backslash" in message

    b = pfs.start_commit("data")
    with pytest.raises(PathError):
        b.put_bytes(bad, b"evil")
    with pytest.raises(PathError):
        b.delete(bad)
    with pytest.raises(PathError):
        pfs.get_file("data", "master", bad)
    with pytest.raises(PathError):
        list(pfs.walk("data", "master", bad))
    b.finish()  # the refused calls left nothing in the builder
    assert tree(pfs, "data") == {"/b": b"b", "/a/b": b"ab"}
    assert len(pfs.list_commits("data")) == 2


def test_put_at_the_root_is_refused(pfs: Pfs) -> None:
    pfs.create_repo("data")
    b = pfs.start_commit("data")
    for path in ("/", "", "//"):
        with pytest.raises(PathError, match="repo root"):
            b.put_bytes(path, b"x")


def test_file_directory_clash_is_refused(pfs: Pfs) -> None:
    pfs.create_repo("data")
    c1 = commit(pfs, "data", {"/a": b"file", "/d/x": b"x"})

    with pytest.raises(PfsError, match="/a is a file, not a directory"):
        commit(pfs, "data", {"/a/b": b"under a file"})
    with pytest.raises(PfsError, match="it is a directory"):
        commit(pfs, "data", {"/d": b"over a directory"})
    with pytest.raises(PfsError, match="/n is a file"):  # the clash inside one commit
        commit(pfs, "data", {"/n": b"1", "/n/m": b"2"})
    # the refused commits left nothing: same head, same files
    assert pfs.inspect_commit("data").id == c1.id
    assert tree(pfs, "data") == {"/a": b"file", "/d/x": b"x"}

    # replacing a file by a directory (or back) works when the commit deletes the old one first
    commit(pfs, "data", {"/a/b": b"now a dir"}, delete=["/a"])
    commit(pfs, "data", {"/d": b"now a file"}, delete=["/d"])
    assert tree(pfs, "data") == {"/a/b": b"now a dir", "/d": b"now a file"}


def test_content_is_stored_once(ws: Workspace, pfs: Pfs) -> None:
    pfs.create_repo("data")
    pfs.create_repo("other")
    same = b"identical bytes" * 100
    commit(pfs, "data", {"/one.bin": same, "/deep/two.bin": same})
    commit(pfs, "other", {"/three.bin": same})
    objects = _object_files(ws)
    assert len(objects) == 1
    assert objects[0].read_bytes() == same
    assert os.stat(objects[0]).st_mode & 0o222 == 0  # objects are read-only
    infos = list(pfs.walk("data")) + list(pfs.walk("other"))
    assert {i.sha256 for i in infos} == {objects[0].name}

    # re-putting the same content changes nothing: no new object, and the commit counts no file change
    c = commit(pfs, "data", {"/one.bin": same})
    assert (c.files_added, c.files_removed) == (0, 0)
    commit(pfs, "data", {"/three.bin": b"different"})
    assert len(_object_files(ws)) == 2
    assert not any((Path(ws.settings.resolved_object_store) / "tmp").iterdir())  # no temp files left


def test_provenance_and_subvenance(pfs: Pfs) -> None:
    pfs.create_repo("up")
    pfs.create_repo("rules")
    pfs.create_repo("down")
    u1 = commit(pfs, "up", {"/a": b"a"})
    r1 = commit(pfs, "rules", {"/r.yaml": b"r"})
    d1 = commit(pfs, "down", {"/out": b"o"}, provenance=[u1.id, r1.id, u1.id])  # duplicates collapse

    assert sorted(pfs.inspect_commit("down").provenance) == sorted([u1.id, r1.id])
    assert sorted(pfs.get_commit(d1.id).provenance) == sorted([u1.id, r1.id])
    assert pfs.inspect_commit("up").provenance == []

    sub = pfs.subvenance(u1.id)
    assert [(c.id, c.repo) for c in sub] == [(d1.id, "down")]
    assert [c.id for c in pfs.subvenance(r1.id)] == [d1.id]
    assert pfs.subvenance(d1.id) == []

    u2 = commit(pfs, "up", {"/b": b"b"})
    d2 = commit(pfs, "down", {"/out": b"o2"}, provenance=[u2.id])
    assert [c.id for c in pfs.subvenance(u1.id)] == [d1.id]
    assert [c.id for c in pfs.subvenance(u2.id)] == [d2.id]


def test_unfinished_commit_is_invisible(pfs: Pfs) -> None:
    pfs.create_repo("data")
    b = pfs.start_commit("data")
    b.put_bytes("/pending.txt", b"not yet")
    assert pfs.head("data") is None
    assert pfs.list_commits("data") == []
    assert list(pfs.walk("data")) == []
    with pytest.raises(CommitNotFoundError, match="no commits yet"):
        pfs.inspect_commit("data")

    # another commit made meanwhile does not pick up the pending builder's files
    other = commit(pfs, "data", {"/real.txt": b"real"})
    assert tree(pfs, "data") == {"/real.txt": b"real"}
    del b  # dropped without finish
    assert [c.id for c in pfs.list_commits("data")] == [other.id]


def test_finish_is_idempotent(pfs: Pfs) -> None:
    pfs.create_repo("data")
    b = pfs.start_commit("data")
    b.put_bytes("/a", b"a")
    first = b.finish()
    assert b.finish() == first
    assert len(pfs.list_commits("data")) == 1


def test_only_master_branch(pfs: Pfs) -> None:
    pfs.create_repo("data")
    with pytest.raises(PfsError, match="only the 'master' branch"):
        pfs.start_commit("data", "dev")


# ---- atomicity under SIGKILL ----------------------------------------------------------------------------

_CHILD_PRELUDE = """
import sys, time
from pathlib import Path
sys.path.insert(0, {project!r})
from tests.helpers_pps import new_workspace
ws = new_workspace(Path({home!r}))
marker = Path({marker!r})
"""

_CHILD_MID_PUTS = """
b = ws.pfs.start_commit("data")
b.delete("/base/0")
for i in range(100000):
    b.put_bytes(f"/new/{{i:06d}}.bin", f"child {{i}}".encode())
    b.put_bytes("/base/1", f"overwritten {{i}}".encode())
    if i == 50:
        marker.write_text("puts started")
    if i > 50:
        time.sleep(0.01)
b.finish()
"""

_CHILD_IN_TRANSACTION = """
def hang(session, info):
    marker.write_text(info.id)
    time.sleep(120)

b = ws.pfs.start_commit("data")
b.on_commit = hang
b.delete("/base")
for i in range(300):
    b.put_bytes(f"/new/{{i:06d}}.bin", f"child {{i}}".encode())
b.finish()
"""


def _kill_child_at_marker(tmp_path: Path, home: Path, body: str) -> str:
    marker = tmp_path / "marker"
    script = textwrap.dedent(_CHILD_PRELUDE + body).format(
        project=str(Path(__file__).resolve().parents[1]), home=str(home), marker=str(marker)
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}")
            assert time.monotonic() < deadline, "child never reached the kill point"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return marker.read_text()


def _assert_untouched(ws: Workspace, base_commit: str, base: dict[str, bytes]) -> None:
    pfs = ws.pfs
    assert [c.id for c in pfs.list_commits("data")] == [base_commit]
    assert pfs.inspect_commit("data").id == base_commit
    listed = list(pfs.walk("data"))
    assert {f.path for f in listed} == set(base)
    for info in listed:  # every listed file is readable, with its committed content
        assert pfs.get_file("data", "master", info.path) == base[info.path]
    assert next(r for r in pfs.list_repos() if r.name == "data").file_count == len(base)
    # the catalog is not left locked: a new commit goes through and sees only the base files
    after = commit(pfs, "data", {"/after.txt": b"after the crash"})
    assert after.parent == base_commit
    assert tree(pfs, "data") == {**base, "/after.txt": b"after the crash"}


def test_sigkill_in_the_middle_of_puts_leaves_no_commit(ws: Workspace, tmp_path: Path) -> None:
    ws.pfs.create_repo("data")
    base = {"/base/0": b"zero", "/base/1": b"one"}
    c0 = commit(ws.pfs, "data", base)
    _kill_child_at_marker(tmp_path, ws.home, _CHILD_MID_PUTS)
    assert len(_object_files(ws)) > 50  # the child did store objects before it died ...
    _assert_untouched(ws, c0.id, base)  # ... but none became visible


def test_sigkill_inside_the_commit_transaction_leaves_no_commit(ws: Workspace, tmp_path: Path) -> None:
    ws.pfs.create_repo("data")
    base = {"/base/0": b"zero", "/base/1": b"one"}
    c0 = commit(ws.pfs, "data", base)
    # the child is killed after every row of its commit is written, before the transaction commits
    pending_id = _kill_child_at_marker(tmp_path, ws.home, _CHILD_IN_TRANSACTION)
    with pytest.raises(CommitNotFoundError):
        ws.pfs.get_commit(pending_id)
    _assert_untouched(ws, c0.id, base)


# ---- references ------------------------------------------------------------------------------------------


def test_parse_file_ref_forms(pfs: Pfs) -> None:
    assert parse_file_ref("images") == FileRef("images", "master", "/")
    assert parse_file_ref("images", default_path="/cam") == FileRef("images", "master", "/cam")
    assert parse_file_ref("images@master:/x") == FileRef("images", "master", "/x")
    assert parse_file_ref("images:/cam-1/a.jpg") == FileRef("images", "master", "/cam-1/a.jpg")
    assert str(parse_file_ref("images@master:cam//a.jpg")) == "images@master:/cam/a.jpg"

    pfs.create_repo("images")
    c1 = commit(pfs, "images", {"/x": b"first"})
    commit(pfs, "images", {"/x": b"second"})
    ref = parse_file_ref(f"images@{c1.id}")
    assert ref == FileRef("images", c1.id, "/")
    assert pfs.get_file(ref.repo, ref.ref, "/x") == b"first"
    ref = parse_file_ref(f"images@{c1.id}:/x")
    assert pfs.get_file(ref.repo, ref.ref, ref.path) == b"first"
    ref = parse_file_ref("images@master:/x")
    assert pfs.get_file(ref.repo, ref.ref, ref.path) == b"second"

    with pytest.raises(PathError, match="is invalid"):
        parse_file_ref("bad repo@master:/x")
    with pytest.raises(PathError, match="neither a branch name nor a commit id"):
        parse_file_ref("images@../x:/a")
    with pytest.raises(PathError, match="relative components"):
        parse_file_ref("images@master:/../../etc/passwd")


def test_concurrent_committers_to_one_branch_all_land_in_order(tmp_path: Path) -> None:
    """Separate processes committing to one repo on SQLite: every commit lands, seq numbers form a chain."""
    ws = new_workspace(tmp_path)
    ws.pfs.create_repo("busy")
    go = tmp_path / "go"
    script = textwrap.dedent(
        f"""
        from alarmsieve.config import Settings
        from alarmsieve.workspace import Workspace
        import pathlib, time
        ws = Workspace(Settings(home={str(ws.home)!r}, catalog_url=None, object_store=None), must_exist=False)
        while not pathlib.Path({str(go)!r}).exists():  # all start together, so that they contend
            time.sleep(0.005)
        for i in range(40):
            b = ws.pfs.start_commit("busy")
            b.put_bytes(f"/{{__import__('os').getpid()}}/{{i}}.txt", b"x")
            b.finish()
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE) for _ in range(4)]
    time.sleep(2)  # let them import and open the catalog
    go.touch()
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    commits = ws.pfs.list_commits("busy", limit=200)
    assert sorted(c.seq for c in commits) == list(range(1, 161))
    assert len(list(ws.pfs.walk("busy"))) == 160
