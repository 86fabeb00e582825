"""``compare pipeline``: a candidate version runs on processed data, notifies nobody, reports flips."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT, run_cli


def test_compare_a_stricter_detector_before_updating(
    make_workspace: Callable[..., Workspace], shared_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    builder.put_local_file("/front/astronaut.png", shared_dir / "images/skimage/astronaut.png")
    builder.put_local_file("/front/grass.png", shared_dir / "images/skimage/grass.png")
    builder.put_local_file("/back/squat.bmp", shared_dir / "images/coral/squat.bmp")
    builder.finish()
    with ws.runner() as runner:
        runner.run_until_idle()
    before = {v.alarm: v.verdict for v in read_verdicts(ws.pfs)}
    emails = sorted(p.name for p in ws.outbox.glob("*.eml"))
    assert before["/front/astronaut.png"] == "alert" and len(emails) == 2

    spec = json.loads((PROJECT / "pipelines/detect.json").read_text())
    spec["transform"]["cmd"] += ["--score-threshold", "0.97"]  # a candidate that drops every person
    candidate = tmp_path / "detect-strict.json"
    candidate.write_text(json.dumps(spec))
    result = run_cli(
        "compare",
        "pipeline",
        "detect",
        "--with",
        str(candidate),
        "--json",
        "--save-images",
        str(tmp_path / "img"),
        home=ws.home,
        env={"ALARMSIEVE_MODEL_DIR": str(model_dir)},
    )
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["pipelines_run"] == ["detect", "assess", "clips"]  # notify is never run
    assert {(f["alarm"], f["before"], f["after"]) for f in report["flips"]} == {
        ("/front/astronaut.png", "alert", "dismiss"),
        ("/back/squat.bmp", "alert", "dismiss"),
    }
    assert report["flips_by_camera"] == {"back": {"alert->dismiss": 1}, "front": {"alert->dismiss": 1}}
    assert report["verdicts_compared"] == 3 and len(report["outputs_changed"]) >= 2
    assert (tmp_path / "img/front/astronaut.png.candidate.jpg").read_bytes()[:2] == b"\xff\xd8"
    # the real workspace is untouched: same verdicts, same pipeline version, no new notification
    assert {v.alarm: v.verdict for v in read_verdicts(ws.pfs)} == before
    assert ws.pps.get_spec("detect")[1] == 1
    assert sorted(p.name for p in ws.outbox.glob("*.eml")) == emails

    text = run_cli(
        "compare",
        "pipeline",
        "detect",
        "--with",
        str(candidate),
        home=ws.home,
        env={"ALARMSIEVE_MODEL_DIR": str(model_dir)},
    )
    assert b"2 of 3 would flip" in text.stdout and b"front: alert->dismiss 1" in text.stdout
    wrong = run_cli("compare", "pipeline", "assess", "--with", str(candidate), home=ws.home)
    assert wrong.returncode == 1 and b"not 'assess'" in wrong.stderr
