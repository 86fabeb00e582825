"""No silent empty success: pipeline paths that used to end in `success` with nothing to show.

Real workspaces (SQLite + object store), real worker processes and real subprocess transforms, on real
photos from ../shared; the /pfs mount cases make the mount point as root (as the machine's setup would).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alarmsieve.api.app import create_app
from alarmsieve.api.tokens import TokenStore
from alarmsieve.workspace import Workspace
from tests.conftest import run_cli
from tests.helpers_pps import commit, create_pipeline, new_workspace, only, pfs_input, pipeline_spec, run, tree
from tests.test_runner_pfs_mount import pfs_mount_point  # noqa: F401  (the fixture)

NO_MOUNT = {"ALARMSIEVE_PFS_MOUNT": "off"}


def cli_workspace(home: Path) -> Workspace:
    """An initialised workspace (repos images, videos, rules) without the default pipelines."""
    ws = new_workspace(home)
    no_pipelines = home.parent / "no-pipelines"
    no_pipelines.mkdir(exist_ok=True)
    ws.init(pipelines_dir=no_pipelines)
    return ws


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return new_workspace(tmp_path / "ws")


@pytest.fixture
def no_mount(monkeypatch: pytest.MonkeyPatch) -> None:
    """No private /pfs mount, whatever the machine allows (the workers inherit the environment)."""
    monkeypatch.setenv("ALARMSIEVE_PFS_MOUNT", "off")


def training_repo(ws: Workspace, shared_dir: Path) -> dict[str, bytes]:
    """A `training` repo holding real binary files, as the object-detection example's input."""
    files = {
        "/frozen_inference_graph.pb": (shared_dir / "images/coral/parrot.jpg").read_bytes(),
        "/labels/owl.jpg": (shared_dir / "images/coral/owl.jpg").read_bytes(),
        "/labels/deep/bird.bmp": (shared_dir / "images/coral/bird.bmp").read_bytes(),
    }
    ws.pfs.create_repo("training")
    commit(ws.pfs, "training", files)
    return files


def shell(name: str, lines: list[str], repo: str = "training", glob: str = "/") -> dict:
    """A 1.x-style transform: a shell reading its script from stdin."""
    doc = pipeline_spec(name, pfs_input(repo, glob), ["sh"], datum_tries=1)
    doc["transform"]["stdin"] = ["set -e", *lines]
    return doc


def hashes(ws: Workspace, repo: str) -> dict[str, str]:
    return {info.path: info.sha256 or "" for info in ws.pfs.walk(repo, "master")}


# ---- 1. symlinks in /pfs/out ---------------------------------------------------------------------------
def test_object_detection_symlink_at_literal_pfs(
    ws: Workspace,
    shared_dir: Path,
    pfs_mount_point: Path,  # noqa: F811
) -> None:
    """Pachyderm 1.7's object-detection example: the model pipeline links its input into /pfs/out."""
    files = training_repo(ws, shared_dir)
    create_pipeline(
        ws,
        shell(
            "model",
            [
                "ln -s /pfs/training/frozen_inference_graph.pb /pfs/out/frozen_inference_graph.pb",
                "ln -s /pfs/training/labels /pfs/out/labels",  # a folder of the inputs
            ],
        ),
    )
    job = only(run(ws), "model")
    assert job.state == "success", job.reason
    assert hashes(ws, "model") == {
        "/frozen_inference_graph.pb": sha256(files["/frozen_inference_graph.pb"]),
        "/labels/owl.jpg": sha256(files["/labels/owl.jpg"]),
        "/labels/deep/bird.bmp": sha256(files["/labels/deep/bird.bmp"]),
    }
    assert tree(ws.pfs, "model")["/frozen_inference_graph.pb"] == files["/frozen_inference_graph.pb"]
    assert list(pfs_mount_point.iterdir()) == []


def test_symlinks_without_the_mount_store_the_linked_inputs(ws: Workspace, shared_dir: Path, no_mount: None) -> None:
    files = training_repo(ws, shared_dir)
    graph = sha256(files["/frozen_inference_graph.pb"])
    create_pipeline(ws, shell("by_root", ['ln -s "$PFS_ROOT/training/frozen_inference_graph.pb" "$PFS_ROOT/out/m.pb"']))
    create_pipeline(ws, shell("relative", ["mkdir out/sub", "ln -s ../../training/labels out/sub/l"]))
    # the link names /pfs/training/… literally (as code written for the mount would), from a script file
    script = Path(ws.home).parent / "link_literal.py"
    script.write_text(
        "import os\n"
        "os.symlink('/pfs/training/frozen_inference_graph.pb', os.path.join(os.environ['PFS_ROOT'], 'out', 'g.pb'))\n"
    )
    create_pipeline(ws, pipeline_spec("literal", pfs_input("training", "/"), [sys.executable, str(script)]))

    jobs = run(ws)
    for name in ("by_root", "relative", "literal"):
        assert only(jobs, name).state == "success", only(jobs, name).reason
    assert hashes(ws, "by_root") == {"/m.pb": graph}
    assert hashes(ws, "relative") == {
        "/sub/l/owl.jpg": sha256(files["/labels/owl.jpg"]),
        "/sub/l/deep/bird.bmp": sha256(files["/labels/deep/bird.bmp"]),
    }
    assert hashes(ws, "literal") == {"/g.pb": graph}
    assert tree(ws.pfs, "literal") == {"/g.pb": files["/frozen_inference_graph.pb"]}


def test_symlinks_that_point_elsewhere_fail_the_datum_with_the_fix(
    ws: Workspace, shared_dir: Path, no_mount: None
) -> None:
    training_repo(ws, shared_dir)
    create_pipeline(ws, shell("outside", ['ln -s /etc/passwd "$PFS_ROOT/out/x"']))
    create_pipeline(ws, shell("dangling", ['ln -s "$PFS_ROOT/training/missing.pb" "$PFS_ROOT/out/x"']))
    create_pipeline(ws, shell("loop", ['cd "$PFS_ROOT/out"', "ln -s b a", "ln -s a b"]))
    labels = "$PFS_ROOT/training/labels"  # a linked folder holding a link back to itself
    create_pipeline(
        ws, shell("folder_loop", [f'ln -s "{labels}" "{labels}/deep/up"', f'ln -s "{labels}" "$PFS_ROOT/out/l"'])
    )
    # a good file next to a bad link: the datum still fails (nothing half-committed)
    create_pipeline(ws, shell("mixed", ['echo ok > "$PFS_ROOT/out/ok.txt"', 'ln -s /etc "$PFS_ROOT/out/etc"']))

    jobs = run(ws)
    expected = {
        "outside": "$PFS_ROOT/out/x links to /etc/passwd, outside the datum's inputs; copy the file instead",
        "dangling": "/training/missing.pb, which does not exist (a dangling link); copy the file instead",
        "loop": "$PFS_ROOT/out/a links to b, which is a symlink loop; copy the file instead",
        "mixed": "$PFS_ROOT/out/etc links to /etc, outside the datum's inputs",
        "folder_loop": "$PFS_ROOT/training/labels/deep/up links to ",
    }
    for name, text in expected.items():
        job = only(jobs, name)
        assert job.state == "failure" and job.failed == 1, (name, job.state, job.reason)
        (datum,) = ws.pps.list_datums(name, job.id)
        assert text in datum.reason, (name, datum.reason)
        assert name != "folder_loop" or "which is a symlink loop" in datum.reason
        assert datum.traceback == ""  # the transform's mistake: one line, no traceback
        assert tree(ws.pfs, name) == {}


# ---- 2. the literal /pfs/out without a private mount ---------------------------------------------------
def test_literal_pfs_without_the_mount_fails_instead_of_empty_success(
    ws: Workspace, shared_dir: Path, tmp_path: Path, no_mount: None
) -> None:
    ws.pfs.create_repo("images")
    photo = (shared_dir / "images/coral/owl.jpg").read_bytes()
    commit(ws.pfs, "images", {"/cam-1/owl.jpg": photo})
    # the shell swallows the failed copy: exit 0, nothing written
    create_pipeline(ws, shell("careless", ['cp "$images" /pfs/out/ 2>/dev/null || true'], "images", "/*/*"))
    # Pachyderm's opencv-edges style script: globbing /pfs/images finds nothing, writes nothing, exits 0
    script = tmp_path / "edges_style.py"
    script.write_text(
        "import glob, os, shutil\n"
        "for path in glob.glob('/pfs/images/*/*'):\n"
        "    shutil.copy(path, os.path.join('/pfs/out', os.path.basename(path)))\n"
    )
    create_pipeline(ws, pipeline_spec("edges", pfs_input("images", "/*/*"), [sys.executable, str(script)]))
    # the same work written for $PFS_ROOT runs fine without the mount
    create_pipeline(ws, shell("portable", ['cp "$images" "$PFS_ROOT/out/$(basename "$images")"'], "images", "/*/*"))

    jobs = run(ws)
    careless = only(jobs, "careless")
    assert careless.state == "failure", careless.reason
    (datum,) = ws.pps.list_datums("careless", careless.id)
    assert "names the literal /pfs/out/ but no private /pfs mount can be made here (ALARMSIEVE_PFS_MOUNT=off)" in (
        datum.reason
    )
    assert "use $PFS_ROOT/" in datum.reason
    edges = only(jobs, "edges")
    assert edges.state == "failure", edges.reason
    (datum,) = ws.pps.list_datums("edges", edges.id)
    assert f"wrote no output, and {script} names the literal /pfs/images/*/*" in datum.reason
    assert datum.attempts == 1  # the same refusal again would be no news: not retried (datumTries 3)
    assert "ALARMSIEVE_PFS_MOUNT=off" in datum.reason and "$PFS_ROOT/out" in datum.reason
    assert only(jobs, "portable").state == "success"
    assert tree(ws.pfs, "portable") == {"/owl.jpg": photo}


# ---- 3. a local transform's code is part of its version ------------------------------------------------
THUMBS_V1 = """import os, shutil
src = os.environ["images"]
shutil.copy(src, os.path.join(os.environ["PFS_ROOT"], "out", os.path.basename(src) + ".v1"))
"""


def cli_json(home: Path, *args: str) -> list[dict]:
    result = run_cli(*args, "--json", home=home, env=NO_MOUNT)
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_editing_the_script_makes_a_new_version(tmp_path: Path, shared_dir: Path) -> None:
    home = tmp_path / "ws"
    cli_workspace(home)
    code = tmp_path / "code"
    code.mkdir()
    (code / "thumbs.py").write_text(THUMBS_V1)
    spec = code / "thumbs.json"
    spec.write_text(
        json.dumps(
            {
                "pipeline": {"name": "thumbs"},
                "input": {"pfs": {"repo": "images", "glob": "/*"}},
                "transform": {"cmd": ["python3", "thumbs.py"]},
            }
        )
    )
    photo = shared_dir / "images/coral/owl.jpg"
    # run from the project folder: the relative thumbs.py resolves against the spec's folder, not here
    assert run_cli("create", "pipeline", "-f", str(spec), home=home).returncode == 0
    assert run_cli("put", "file", "images@master:/a.jpg", "-f", str(photo), home=home).returncode == 0
    result = run_cli("run", home=home, env=NO_MOUNT)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()

    (info,) = cli_json(home, "inspect", "pipeline", "thumbs")
    script = str((code / "thumbs.py").resolve())
    assert info["version"] == 1
    assert info["code_files"] == {script: sha256(THUMBS_V1.encode())}
    assert {p["name"]: p["version"] for p in cli_json(home, "list", "pipeline")} == {"thumbs": 1}

    (code / "thumbs.py").write_text(THUMBS_V1.replace(".v1", ".v2"))
    assert run_cli("put", "file", "images@master:/b.jpg", "-f", str(photo), home=home).returncode == 0
    result = run_cli("run", home=home, env=NO_MOUNT)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()

    (info,) = cli_json(home, "inspect", "pipeline", "thumbs")
    assert info["version"] == 2
    assert info["code_files"] == {script: sha256(THUMBS_V1.replace(".v1", ".v2").encode())}
    assert "stage code or model changed (file:" + script in info["versions"][-1]["cause"]
    assert {p["name"]: p["version"] for p in cli_json(home, "list", "pipeline")} == {"thumbs": 2}
    text = run_cli("inspect", "pipeline", "thumbs", home=home).stdout.decode()
    assert f"Code file: {script} sha256" in text
    ws = new_workspace(home)
    head = ws.pfs.head("thumbs")
    assert head is not None and head.pipeline_version == "thumbs@v2"
    assert set(tree(ws.pfs, "thumbs")) == {"/a.jpg.v1", "/b.jpg.v2"}  # old data keeps v1's output


# ---- 4 and 5. `run` says what failed; status, API and dashboard agree ---------------------------------
@pytest.fixture
def troubled(tmp_path: Path, shared_dir: Path) -> Workspace:
    """A workspace with a failing pipeline (its datum fails) and a crashing one (its workers cannot start)."""
    ws = cli_workspace(tmp_path / "ws")
    commit(ws.pfs, "images", {"/cam-1/owl.jpg": (shared_dir / "images/coral/owl.jpg").read_bytes()})
    create_pipeline(ws, shell("broken", ["echo 'cannot read it' >&2", "exit 3"], "images", "/*/*"))
    create_pipeline(ws, pipeline_spec("nostage", pfs_input("images", "/*/*"), ["alarmsieve", "stage", "nosuch"]))
    create_pipeline(ws, pipeline_spec("fine", pfs_input("images", "/*/*"), ["alarmsieve", "stage", "noop"]))
    return ws


def test_run_exits_1_and_points_at_what_exists(troubled: Workspace) -> None:
    home = troubled.home
    result = run_cli("run", home=home, env=NO_MOUNT)
    out = result.stdout.decode()
    assert result.returncode == 1, out + result.stderr.decode()
    jobs = {j.pipeline: j for j in troubled.pps.list_jobs()}
    assert "3 job(s) run, 2 failed or errored: " in out
    assert "broken failure" in out and "nostage error" in out
    broken, nostage = jobs["broken"], jobs["nostage"]
    hint = f"alarmsieve list datum broken@{broken.id} --state failed"
    assert hint in out
    assert f"alarmsieve inspect job {nostage.id}" in out and f"alarmsieve logs --job {nostage.id}" in out
    # the hints work: the failed datum, the job that could not run
    listed = run_cli(*hint.split()[1:], "--json", home=home)
    assert listed.returncode == 0 and "exited with code 3" in listed.stdout.decode()
    inspected = run_cli("inspect", "job", nostage.id, home=home)
    assert inspected.returncode == 0 and "unknown stage 'nosuch'" in inspected.stdout.decode()

    again = run_cli("run", "--json", home=home, env=NO_MOUNT)  # JSON too: the exit status says it
    assert again.returncode == 1
    assert {json.loads(line)["state"] for line in again.stdout.splitlines()} >= {"error"}


def test_status_api_and_dashboard_agree(troubled: Workspace) -> None:
    run(troubled)
    cli = run_cli("status", "--json", home=troubled.home)
    assert cli.returncode == 0, cli.stderr.decode()
    (report,) = [json.loads(line) for line in cli.stdout.splitlines()]
    in_cli = {p["name"]: (p["state"], p["reason"]) for p in report["pipelines"]}
    assert in_cli["broken"][0] == "failing" and in_cli["nostage"][0] == "crashing"
    assert in_cli["fine"] == ("running", "")

    _, token = TokenStore(troubled.catalog_url).create("alice", "operator")
    with TestClient(create_app(troubled, loop=None)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        status = client.get("/api/v1/status")
        assert status.status_code == 200, status.text
        body = status.json()
        assert {p["name"]: (p["state"], p["reason"]) for p in body["pipelines"]} == in_cli
        assert body["problems"] == report["problems"]
        page = client.get("/system")
        assert page.status_code == 200
    html = page.text
    for name, (state, _reason) in in_cli.items():
        row = html.split(f'<tr id="pipeline-{name}">', 1)[1].split("</tr>", 1)[0]
        assert f'data-state="{state}"' in row, (name, row)
    assert "unknown stage" in html.split('<tr id="pipeline-nostage">', 1)[1].split("</tr>", 1)[0]


def test_code_files_named_by_cmd_and_stdin(tmp_path: Path) -> None:
    from alarmsieve.pps.code import code_files, runnable_cmd

    for rel in ("thumbs.py", "pkg/mod.py", "settings.yaml", "run.sh", "lib/util.sh"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# code\n")
    cmd = ["/usr/bin/python3", "thumbs.py", "--config=settings.yaml", "/pfs/images", "missing.py"]
    stdin = ['python3 -m pkg.mod "$images"', "sh lib/util.sh /pfs/out  # a comment: other.py"]
    assert code_files(cmd, stdin, tmp_path) == sorted(
        (tmp_path / rel).resolve() for rel in ("thumbs.py", "pkg/mod.py", "settings.yaml", "lib/util.sh")
    )
    assert code_files(["./run.sh"], [], tmp_path) == [(tmp_path / "run.sh").resolve()]  # a script as the program
    assert code_files(["python3", "thumbs.py"], [], None) == []  # relative names need the spec's folder
    assert runnable_cmd(["python3", "thumbs.py", "-v"], tmp_path) == ["python3", str(tmp_path / "thumbs.py"), "-v"]
