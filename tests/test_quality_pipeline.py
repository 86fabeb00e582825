"""Tiling in the real detector and the detect stage, the quality eval CLI with its HTML report, and tune."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from alarmsieve.vision.detector import create_detector
from alarmsieve.vision.models import locate_model
from alarmsieve.vision.tiling import TiledDetector, TilingConfig
from tests.conftest import run_cli


def far_person_frame(shared_dir: Path, height: int = 80) -> np.ndarray:
    """A 1920x1080 lawn with one real person, shrunk to ``height`` px: about 0.1 % of the frame."""
    lawn = cv2.resize(cv2.imread(str(shared_dir / "images/skimage/grass.png")), (1920, 1080))
    person = cv2.imread(str(shared_dir / "images/coral/squat.bmp"))
    small = cv2.resize(
        person, (round(person.shape[1] * height / person.shape[0]), height), interpolation=cv2.INTER_AREA
    )
    lawn[700 : 700 + height, 1200 : 1200 + small.shape[1]] = small
    return lawn


@pytest.fixture(scope="module")
def detector(model_dir: Path):
    # floor 0.25: these tests judge what the stage reports at its default --score-threshold
    model = locate_model("yolox-nano", model_dir=model_dir, allow_download=False)
    return create_detector("onnx", model=model, score_floor=0.25)


def test_tiles_find_the_far_person_the_whole_frame_misses(detector, shared_dir: Path) -> None:
    frame = far_person_frame(shared_dir)
    assert not [d for d in detector.detect(frame) if d.label == "person"]
    tiled = TiledDetector(detector, TilingConfig(mode="on", max_tiles=None))  # native 416-px tiles
    people = [d for d in tiled.detect(frame) if d.label == "person"]
    assert tiled.last_tiles == 6 * 3
    assert len(people) == 1 and people[0].score >= 0.5
    x1, y1, x2, y2 = people[0].box
    assert 1190 <= x1 < x2 <= 1270 and 690 <= y1 < y2 <= 790  # in frame pixels, where the person was pasted
    # off, and auto on a small frame: the plain detector's answer, no tiles run
    off = TiledDetector(detector, TilingConfig(mode="off"))
    assert off.detect(frame) == detector.detect(frame) and off.last_tiles == 0
    small = cv2.resize(frame, (640, 360))
    auto = TiledDetector(detector, TilingConfig(mode="auto"))
    assert auto.detect(small) == detector.detect(small) and auto.last_tiles == 0
    auto.detect(frame)
    assert auto.last_tiles == 2  # a large frame: tiled, within the default budget of 2 tiles


def test_auto_tiles_only_a_frame_with_a_doubtful_person(detector, shared_dir: Path) -> None:
    auto = TiledDetector(detector, TilingConfig(mode="auto"))
    # a sure person (0.9+): one pass
    sure = cv2.imread(str(shared_dir / "images/skimage/astronaut.png"))
    assert auto.detect(sure) == detector.detect(sure) and auto.last_tiles == 0 and auto.last_reason == ""
    # the parked motorcycle: the whole frame sees a doubtful person (0.25 <= score < 0.5), so it looks again
    garage = cv2.imread(str(shared_dir / "images/skimage/motorcycle_left.png"))
    whole = [d for d in detector.detect(garage) if d.label == "person"]
    assert whole and all(0.25 <= d.score < 0.5 for d in whole)
    auto.detect(garage)
    assert auto.last_tiles == 2 and auto.last_reason.startswith("doubtful person 0.")
    # nothing doubtful at all (no person): one pass
    calm = cv2.imread(str(shared_dir / "images/skimage/coffee.png"))
    assert auto.detect(calm) == detector.detect(calm) and auto.last_tiles == 0
    # the trigger can be switched off
    never = TiledDetector(detector, TilingConfig(mode="auto", doubt_below=0))
    never.detect(garage)
    assert never.last_tiles == 0


def test_tiling_keeps_a_large_person_as_one_box(detector, shared_dir: Path) -> None:
    frame = cv2.imread(str(shared_dir / "images/skimage/astronaut.png"))
    whole = [d for d in detector.detect(frame) if d.label == "person"]
    tiled = [
        d for d in TiledDetector(detector, TilingConfig(mode="on", tile_size=256)).detect(frame) if d.label == "person"
    ]
    assert len(whole) == 1 and len(tiled) == 1
    assert tiled[0].score >= whole[0].score


def _far_near_set(tmp_path: Path, shared_dir: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    for camera in ("far", "near"):
        (images / camera).mkdir(parents=True)
        cv2.imwrite(str(images / camera / "lawn.jpg"), far_person_frame(shared_dir))
        cv2.imwrite(str(images / camera / "grass.jpg"), cv2.imread(str(shared_dir / "images/skimage/grass.png")))
    labels = tmp_path / "labels.csv"
    labels.write_text("file,objects\nfar/lawn.jpg,person\nfar/grass.jpg,\nnear/lawn.jpg,person\nnear/grass.jpg,\n")
    return images, labels


def test_quality_eval_tiles_one_camera_and_writes_the_report(tmp_path: Path, shared_dir: Path, model_dir: Path) -> None:
    images, labels = _far_near_set(tmp_path, shared_dir)
    html = tmp_path / "report" / "eval.html"
    result = run_cli(
        "quality", "eval", "--images", str(images), "--labels", str(labels),
        "--tiling", "off", "--tile-cameras", "far", "--tile-max", "0", "--html", str(html), "--json",
        home=tmp_path / "unused",
        env={"ALARMSIEVE_MODEL_DIR": str(model_dir)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["detect_args"] == ["--tiling", "off", "--tile-cameras", "far", "--tile-max", "0"]
    verdicts = {o["file"]: o["verdict"] for o in report["outcomes"]}
    assert verdicts == {
        "far/lawn.jpg": "alert",
        "far/grass.jpg": "dismiss",
        "near/lawn.jpg": "dismiss",
        "near/grass.jpg": "dismiss",
    }
    # the plain eval keys are still there, with the intervals and breakdowns beside them
    assert (report["threats"], report["missed"], report["calm"], report["suppressed"]) == (2, 1, 2, 2)
    assert report["missed_detail"]["k"] == 1 and report["missed_ci"][0] < 0.5 < report["missed_ci"][1]
    cameras = {g["name"]: g for g in report["per_camera"]}
    assert cameras["far"]["missed"]["k"] == 0 and cameras["near"]["missed"]["k"] == 1
    assert [g["name"] for g in report["per_label"]] == ["person"]
    assert report["operator_load"] == {"alerts_on_calm": 0, "reviews_on_calm": 0, "looks": 0, "per_100_calm": 0.0}
    assert len(report["curve"]) == 30
    page = html.read_text()
    assert "Missed threats (dismissed) (1)" in page and "near/lawn.jpg" in page and "data:image/jpeg;base64," in page
    assert "<svg" in page and "False alarms (alerts on calm images) (0)" in page

    bad = run_cli("quality", "eval", "--images", str(images), "--labels", str(labels), "--tiling", "sometimes",
                  home=tmp_path / "unused")  # fmt: skip
    assert bad.returncode == 1 and b"--tiling 'sometimes': use auto, on or off" in bad.stderr

    # tune on a folder: without tiles the far person is never detected, so no threshold reaches it
    tuned = run_cli("tune", "far", "--images", str(images), "--labels", str(labels), "--json",
                    home=tmp_path / "unused", env={"ALARMSIEVE_MODEL_DIR": str(model_dir)})  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr.decode()
    [person] = json.loads(tuned.stdout)["labels"]
    assert person["threats"] == 1 and person["never_detected"] == 1 and not person["target_reached"]
    assert "out of reach" in person["note"] and "--tiling on" in person["note"]


def test_tune_on_workspace_verdicts_writes_loadable_rules(tmp_path: Path, shared_dir: Path, make_workspace) -> None:
    ws = make_workspace()
    builder = ws.pfs.start_commit("images")
    for name in ("astronaut.png", "camera.png", "grass.png", "motorcycle_left.png"):
        builder.put_local_file(f"/gate/{name}", shared_dir / "images/skimage" / name)
    builder.finish()
    with ws.runner() as runner:
        runner.run_until_idle()
    feedback = tmp_path / "feedback.csv"
    feedback.write_text(
        "file,objects\n/gate/astronaut.png,person\n/gate/camera.png,person\n/gate/grass.png,\n/gate/motorcycle_left.png,motorcycle\n"
    )
    out = tmp_path / "tuned.yaml"
    result = run_cli("tune", "gate", "--labels", str(feedback), "--write-rules", str(out), "--json", home=ws.home)
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["cameras"] == ["gate"] and report["alarms"] == 4
    [person] = report["labels"]
    assert person["threats"] == 2 and person["calm"] == 2 and person["target_reached"]
    # in force: the parked motorcycle's false "person 0.39" goes to review; the proposal dismisses it, no threat lost
    assert person["current"]["reviews_on_calm"] == 1 and person["current"]["suppression"]["k"] == 1
    assert person["proposed"]["recall_alert"]["k"] == 2 and person["proposed"]["suppression"]["k"] == 2
    assert person["proposed"]["review_threshold"] > 0.39
    rules = yaml.safe_load(out.read_text())
    assert rules["cameras"]["gate"]["labels"]["person"]["min_score"] == person["proposed"]["alert_threshold"]
    check = run_cli("tune", "nowhere", "--labels", str(feedback), home=ws.home)
    assert check.returncode == 1 and b"'nowhere' matches no camera" in check.stderr


def test_detect_stage_tiling_arguments(model_dir: Path, tmp_path: Path) -> None:
    from alarmsieve.stages.base import StageServices, StageUsageError
    from alarmsieve.stages.detect import DetectStage

    services = StageServices(model_dir=model_dir, model_cache=tmp_path / "cache")
    off = ["--cascade", "off"]  # the tiling options drive every frame only without the cascade
    stage = DetectStage([*off, "--tiling", "auto", "--tile-cameras", "gate, yard", "--tile-max", "0"], services)
    assert stage.tiling.mode == "auto" and stage.tiling.cameras == ["gate", "yard"] and stage.tiling.max_tiles is None
    assert stage.identity()["tiling"] == "auto cameras gate,yard doubt person<0.5"
    # without the cascade: auto, large frames and frames with a doubtful person
    assert DetectStage(off, services).identity()["tiling"] == "auto doubt person<0.5"
    assert "tiling" not in DetectStage([*off, "--tiling", "off"], services).identity()
    assert DetectStage([*off, "--tile-doubt-below", "0"], services).identity()["tiling"] == "auto"
    # with the cascade (the default) the first pass is tiled only for the cameras asked, or --tiling on
    assert "tiling" not in DetectStage([], services).identity()
    assert DetectStage(["--tile-cameras", "gate"], services).identity()["tiling"] == "cameras gate"
    assert DetectStage(["--tiling", "on"], services).identity()["tiling"] == "on"
    with pytest.raises(StageUsageError, match="bad tiling arguments"):
        DetectStage(["--tile-doubt-below", "1.5"], services)
    with pytest.raises(StageUsageError, match="bad arguments"):
        DetectStage(["--tiling", "sometimes"], services)
    with pytest.raises(StageUsageError, match="bad tiling arguments"):
        DetectStage(["--tiling", "on", "--tile-overlap", "0.95"], services)
