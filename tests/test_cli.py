"""The command line as a user drives it: the real ``alarmsieve`` in child processes, one workspace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PROJECT, run_cli


def lines(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    return tmp_path_factory.mktemp("cli") / "ws"


def cli(home: Path, *args: str, stdin: bytes | None = None, ok: bool = True) -> tuple[bytes, str]:
    result = run_cli(*args, home=home, stdin=stdin, env={"ALARMSIEVE_MODEL_DIR": str(PROJECT.parent / "shared/models")})
    if ok:
        assert result.returncode == 0, (args, result.stderr.decode())
    else:
        assert result.returncode != 0, (args, result.stdout.decode())
    return result.stdout, result.stderr.decode()


def test_cli_session(home: Path, shared_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    photos = shared_dir / "images"
    _, err = cli(home, "list", "repo", ok=False)
    assert "alarmsieve init" in err  # no workspace yet: says what to do

    out, _ = cli(home, "init")
    assert b"created repo images" in out and b"created pipeline notify" in out
    out, _ = cli(home, "init")
    assert b"nothing to do" in out

    # ---- repos and files
    cli(home, "create", "repo", "scratch")
    _, err = cli(home, "create", "repo", "scratch", ok=False)
    assert "already exists" in err
    cli(home, "put", "file", "images@master:/cam-1/0001.png", "-f", str(photos / "skimage/astronaut.png"))
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "a.bmp").write_bytes((photos / "coral/squat.bmp").read_bytes())
    (folder / "b.png").write_bytes((photos / "skimage/grass.png").read_bytes())
    cli(home, "put", "file", "images@master:/cam-2", "-r", str(folder))
    cli(
        home,
        "put",
        "file",
        "images@master:/cam-3/cat.png",
        "-f",
        "-",
        stdin=(photos / "skimage/chelsea.png").read_bytes(),
    )
    _, err = cli(home, "put", "file", "images@master:/../escape.jpg", "-f", str(photos / "coral/owl.jpg"), ok=False)
    assert "'..'" in err and "/cam-1/0001.jpg" in err
    _, err = cli(home, "put", "file", "nosuchrepo@master:/x.jpg", "-f", str(photos / "coral/owl.jpg"), ok=False)
    assert "repo 'nosuchrepo' not found" in err

    repos = {r["name"]: r for r in lines(cli(home, "list", "repo", "--json")[0])}
    assert repos["images"]["file_count"] == 4 and "scratch" in repos
    commits = lines(cli(home, "list", "commit", "images", "--json")[0])
    assert len(commits) == 3 and commits[0]["parent"] == commits[1]["id"]
    listing = {f["path"]: f["type"] for f in lines(cli(home, "list", "file", "images@master:/", "--json")[0])}
    assert listing == {"/cam-1": "dir", "/cam-2": "dir", "/cam-3": "dir"}
    got, _ = cli(home, "get", "file", "images@master:/cam-2/a.bmp")
    assert got == (photos / "coral/squat.bmp").read_bytes()
    old, _ = cli(home, "get", "file", f"images@{commits[2]['id']}:/cam-1/0001.png")
    assert old == (photos / "skimage/astronaut.png").read_bytes()
    inspected = lines(cli(home, "inspect", "commit", "images@master", "--json")[0])[0]
    assert inspected["id"] == commits[0]["id"] and inspected["origin"] == "user"
    diff = lines(cli(home, "diff", "file", "images@master", "--json")[0])
    assert [(c["path"], c["op"]) for c in diff] == [("/cam-3/cat.png", "added")]

    # ---- pipeline specs
    cli(home, "validate", "pipeline", "-f", str(PROJECT / "pipelines/detect.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "pipeline": {"name": "x"},
                "input": {"pfs": {"repo": "images", "glob": "/*"}},
                "transform": {"cmd": ["true"]},
                "egress": {"URL": "s3://bucket/dir"},
            }
        )
    )
    _, err = cli(home, "validate", "pipeline", "-f", str(bad), ok=False)
    assert "egress" in err and "not supported" in err
    bad.write_text(
        json.dumps(
            {"pipeline": {"name": "x"}, "input": {"pfs": {"repo": "images", "glob": 7}}, "transform": {"cmd": ["true"]}}
        )
    )
    _, err = cli(home, "validate", "pipeline", "-f", str(bad), ok=False)
    assert "input.pfs.glob" in err
    copy = tmp_path / "copy.yaml"
    copy.write_text(
        "pipeline: {name: copy}\ninput: {pfs: {repo: images, glob: /*}}\ntransform: {cmd: [alarmsieve, stage, noop]}\n"
    )
    cli(home, "create", "pipeline", "-f", str(copy))
    _, err = cli(home, "create", "pipeline", "-f", str(copy), ok=False)
    assert "already exists" in err and "update pipeline" in err

    # ---- run, jobs, datums, logs
    jobs = lines(cli(home, "run", "--json")[0])
    assert {j["pipeline"] for j in jobs} == {"validate", "detect", "assess", "clips", "notify", "copy"}
    assert all(j["state"] == "success" for j in jobs)
    pipelines = {p["name"]: p for p in lines(cli(home, "list", "pipeline", "--json")[0])}
    assert pipelines["detect"]["last_job"]["state"] == "success" and pipelines["detect"]["parallelism"] == 2
    detect = lines(cli(home, "inspect", "pipeline", "detect", "--json")[0])[0]
    assert detect["spec"]["transform"]["cmd"][:3] == ["alarmsieve", "stage", "detect"]
    detect_job = next(j for j in jobs if j["pipeline"] == "detect")
    job = lines(cli(home, "inspect", "job", detect_job["id"][:10], "--json")[0])[0]
    assert job["id"] == detect_job["id"] and job["processed"] == 4
    datums = lines(cli(home, "list", "datum", f"detect@{detect_job['id']}", "--json")[0])
    assert len(datums) == 4 and {d["state"] for d in datums} == {"success"}
    log_lines = lines(cli(home, "logs", "--pipeline", "detect", "--job", detect_job["id"])[0])
    assert {line["pipeline"] for line in log_lines} == {"detect"}
    per_datum = [line for line in log_lines if line["datum"]]
    assert per_datum and all(line["worker"] and line["job"] == detect_job["id"] for line in per_datum)
    assert any("person" in line["message"] for line in per_datum)
    one = per_datum[0]["datum"]
    assert {line["datum"] for line in lines(cli(home, "logs", "--datum", one[:12])[0])} == {one}

    # ---- verdicts
    verdicts = {v["input_path"]: v for v in lines(cli(home, "verdicts", "--json")[0])}
    assert set(verdicts) == {"/cam-1/0001.png", "/cam-2/a.bmp", "/cam-2/b.png", "/cam-3/cat.png"}
    person = verdicts["/cam-1/0001.png"]
    assert person["verdict"] == "alert" and person["device"] == "cam-1"
    assert person["model"]["sha256"] and person["rules_version"] and person["reasons"]
    assert any(d["label"] == "person" and len(d["box"]) == 4 for d in person["detections"])
    assert verdicts["/cam-2/b.png"]["verdict"] == "dismiss" and verdicts["/cam-3/cat.png"]["verdict"] == "dismiss"
    assert [v["input_path"] for v in lines(cli(home, "verdicts", "--device", "cam-2", "--json")[0])] == [
        "/cam-2/a.bmp",
        "/cam-2/b.png",
    ]
    assert len(lines(cli(home, "verdicts", "--since", "1h", "--json")[0])) == 4
    assert lines(cli(home, "verdicts", "--since", "2999-01-01T00:00", "--json")[0]) == []
    _, err = cli(home, "verdicts", "--since", "yesterday", ok=False)
    assert "--since" in err
    table, _ = cli(home, "verdicts")
    assert b"alert" in table and b"cam-1" in table

    # ---- serve picks up a new commit and stops when idle (--once)
    cli(home, "put", "file", "images@master:/cam-1/0002.bmp", "-f", str(photos / "coral/grace_hopper.bmp"))
    out, _ = cli(home, "serve", "--once", "--interval", "0.1")
    assert b"detect job" in out and b"success" in out
    assert "/cam-1/0002.bmp" in {v["input_path"] for v in lines(cli(home, "verdicts", "--json")[0])}


def test_put_file_into_rules_is_validated_first(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    assert run_cli("init", home=home).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  gate-2:\n    labels:\n      persn: {severity: alert}\n")
    refused = run_cli("put", "file", "rules@master:/cams.yaml", "-f", str(bad), home=home)
    assert refused.returncode == 1
    assert b"unknown label 'persn'" in refused.stderr and b"Nothing was committed" in refused.stderr
    good = tmp_path / "good.yaml"
    good.write_text("cameras:\n  gate-2:\n    min_score: 0.6\n")
    assert run_cli("put", "file", "rules@master:/cams.yaml", "-f", str(good), home=home).returncode == 0
    commits = lines(run_cli("list", "commit", "rules", "--json", home=home).stdout)
    assert len(commits) == 2  # the default rules, then the good file; the bad one left no commit


def test_a_bad_setting_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    result = run_cli("list", "repo", home=tmp_path / "ws", env={"ALARMSIEVE_EXECUTOR": "bogus"})
    assert result.returncode == 1
    assert b"ALARMSIEVE_EXECUTOR='bogus'" in result.stderr and b"'local' or 'ray'" in result.stderr
    assert b"Traceback" not in result.stderr


def test_executor_flag_wins_over_the_environment_and_is_checked(tmp_path: Path) -> None:
    bad = run_cli("--executor", "warp", "list", "repo", home=tmp_path / "ws")
    assert bad.returncode == 2 and b"--executor warp: choose local" in bad.stderr
    # the flag replaces a bad ALARMSIEVE_EXECUTOR from the environment
    ok = run_cli("--executor", "local", "init", home=tmp_path / "ws", env={"ALARMSIEVE_EXECUTOR": "bogus"})
    assert ok.returncode == 0, ok.stderr
    assert run_cli("list", "repo", home=tmp_path / "ws", env={"ALARMSIEVE_EXECUTOR": "bogus"}).returncode == 1
