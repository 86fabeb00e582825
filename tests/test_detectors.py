"""The five catalogue detectors on real photos, weights folded at load, calibration, weighted box fusion,
the tiling doubt read from raw candidates (issue 14 §5), the detect stage's options, and `detectors:` in rules."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from alarmsieve.rules.schema import RulesError, load_rules
from alarmsieve.stages.records import AlarmMeta, DetectionsRecord
from alarmsieve.vision.backends.session import open_session, strip_weight_inputs
from alarmsieve.vision.detector import Detection, DetectorBackend, create_detector
from alarmsieve.vision.ensemble import Ensemble, describe, weighted_box_fusion
from alarmsieve.vision.models import CATALOGUE, COCO_LABELS, Calibration, locate_model
from alarmsieve.vision.tiling import TiledDetector, TilingConfig
from tests.conftest import PROJECT

NAMES = list(CATALOGUE)
COCO = "datasets/coco128/train2017"


@pytest.fixture(scope="module")
def all_models(model_dir: Path) -> Path:
    missing = [e.filename for e in CATALOGUE.values() if not (model_dir / e.filename).is_file()]
    if missing:
        pytest.skip(f"detector files {', '.join(missing)} not found in {model_dir}; set ALARMSIEVE_MODEL_DIR")
    return model_dir


@pytest.fixture(scope="module")
def backends(all_models: Path) -> dict[str, DetectorBackend]:
    # model_dir, not an explicit path: the catalogue's sha256 is enforced on each shared file
    return {name: create_detector("onnx", model=locate_model(name, model_dir=all_models)) for name in NAMES}


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def labelled_people(shared: Path, min_area: float = 0.05, limit: int = 12) -> list[tuple[Path, list[tuple]]]:
    """coco128 photos with their ground-truth person boxes (pixels) covering at least ``min_area``."""
    found = []
    for label_file in sorted((shared / COCO / "labels").glob("*.txt")):
        image = shared / COCO / "images" / f"{label_file.stem}.jpg"
        h, w = cv2.imread(str(image)).shape[:2]
        boxes = []
        for line in label_file.read_text().splitlines():
            cls, cx, cy, bw, bh = (float(v) for v in line.split())
            if cls == 0 and bw * bh >= min_area:
                boxes.append(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
        if boxes:
            found.append((image, boxes))
        if len(found) == limit:
            break
    return found


def people(dets: list[Detection], at: float = 0.0) -> list[Detection]:
    return [d for d in dets if d.label == "person" and d.score >= at]


# --- the catalogue --------------------------------------------------------------------------------


def test_catalogue_files_match_their_sha256_and_size(
    all_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALARMSIEVE_MODEL_DIR", str(all_models))
    for name, entry in CATALOGUE.items():
        path = all_models / entry.filename
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256, name
        assert path.stat().st_size == entry.size_bytes, name
        located = locate_model(name, cache_dir=tmp_path)  # found through ALARMSIEVE_MODEL_DIR
        assert located.source == "model_dir" and located.matches_catalogue and located.path == path.resolve()
        assert entry.url.startswith("https://raw.githubusercontent.com/") and entry.sha256[:8] not in entry.url
    assert [e.type for e in CATALOGUE.values()] == ["yolox", "gfl", "gfl", "paddle_nms", "yolox"]
    assert CATALOGUE["person-light-192"].label_names == ("person",)


# --- each backend on real photos -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_backend_finds_the_astronaut(backends: dict[str, DetectorBackend], shared_dir: Path, name: str) -> None:
    frame = cv2.imread(str(shared_dir / "images/skimage/astronaut.png"))
    found = people(backends[name].detect(frame), at=0.5)
    assert found, backends[name].detect(frame)[:3]
    x1, y1, x2, y2 = found[0].box
    assert (x2 - x1) * (y2 - y1) > 0.4 * 512 * 512  # she fills most of the frame: boxes in frame pixels


@pytest.mark.parametrize("name", NAMES)
def test_backend_boxes_match_coco_person_labels(
    backends: dict[str, DetectorBackend], shared_dir: Path, name: str
) -> None:
    """Each labelled person (>= 5 % of the photo) against the detector's best-overlapping person box."""
    overlaps = []
    for image, truth in labelled_people(shared_dir):
        dets = people(backends[name].detect(cv2.imread(str(image))), at=0.3)
        overlaps += [max((iou(t, d.box) for d in dets), default=0.0) for t in truth]
    overlaps_arr = np.array(overlaps)
    assert len(overlaps_arr) >= 15
    # the light 192-px person model is coarser; the COCO models draw tight boxes
    floor = 0.6 if name == "person-light-192" else 0.75
    assert overlaps_arr.mean() >= floor, (name, overlaps_arr.round(2))
    assert (overlaps_arr >= 0.5).mean() >= (0.7 if name == "person-light-192" else 0.85), overlaps_arr.round(2)


@pytest.mark.parametrize("name", NAMES)
def test_backend_output_contract(backends: dict[str, DetectorBackend], shared_dir: Path, name: str) -> None:
    """Raw candidates: at or above the floor, highest first, in the frame, no same-label overlap past NMS."""
    backend = backends[name]
    # the coco128 photo with the most labelled people (a crowd: overlapping boxes for NMS to sort out)
    label_files = sorted((shared_dir / COCO / "labels").glob("*.txt"))
    crowd = max(label_files, key=lambda f: sum(line.startswith("0 ") for line in f.read_text().splitlines()))
    frame = cv2.imread(str(shared_dir / COCO / "images" / f"{crowd.stem}.jpg"))
    h, w = frame.shape[:2]
    dets = backend.detect(frame)
    assert len(people(dets, at=0.3)) >= 3
    scores = [d.score for d in dets]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.05
    for i, d in enumerate(dets):
        assert 0 <= d.box[0] < d.box[2] <= w and 0 <= d.box[1] < d.box[3] <= h
        assert d.label == COCO_LABELS[d.class_id] and d.sources == {}
        assert all(iou(d.box, e.box) <= 0.45 + 1e-6 for e in dets[i + 1 :] if e.label == d.label)
    assert backend.detect(frame) == dets  # deterministic


@pytest.mark.parametrize("name", NAMES)
def test_backend_sees_nothing_absurd_in_empty_scenes(
    backends: dict[str, DetectorBackend], shared_dir: Path, name: str
) -> None:
    for photo in ("skimage/grass.png", "skimage/gravel.png", "skimage/brick.png", "coral/sunflower.bmp"):
        frame = cv2.imread(str(shared_dir / "images" / photo))
        # never an alert-level person (PicoDet-XS does see a 0.42 "person" in the whole gravel frame)
        assert people(backends[name].detect(frame), at=0.5) == [], (name, photo)
    grey = np.full((480, 640, 3), 114, np.uint8)
    assert [d for d in backends[name].detect(grey) if d.score >= 0.25] == []


# --- weights listed among the graph inputs ------------------------------------------------------------


@pytest.mark.parametrize("name", ["nanodet-m-416", "picodet-s-416"])
def test_stripping_weight_inputs_keeps_the_outputs(all_models: Path, shared_dir: Path, name: str) -> None:
    model = locate_model(name, model_dir=all_models)
    data = model.path.read_bytes()
    stripped, removed = strip_weight_inputs(data)
    assert removed > 50 and len(stripped) < len(data) + 1024
    assert strip_weight_inputs(stripped) == (stripped, 0)  # all gone: only the image input is left
    as_shipped = open_session(model.path, strip_weights=False)
    folded = open_session(model.path, strip_weights=True)
    frame = cv2.imread(str(shared_dir / "images/skimage/astronaut.png"))
    blob = cv2.dnn.blobFromImage(frame, 1 / 57.0, (416, 416), (104, 116, 124), swapRB=name.startswith("picodet"))
    feed = {folded.get_inputs()[0].name: blob.astype(np.float32)}
    for a, b in zip(as_shipped.run(None, feed), folded.run(None, feed), strict=True):
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-4)
    # and the backend's detections are the same either way
    plain = create_detector("onnx", model=model, strip_weights=False).detect(frame)
    fast = create_detector("onnx", model=model).detect(frame)
    assert [d.label for d in plain] == [d.label for d in fast] and len(plain) > 10
    assert np.allclose([d.score for d in plain], [d.score for d in fast], atol=2e-4)  # float sums in another order
    assert np.allclose([d.box for d in plain], [d.box for d in fast], atol=0.05)


def test_nothing_to_strip_in_yolox(all_models: Path) -> None:
    data = (all_models / "yolox_nano.onnx").read_bytes()
    assert strip_weight_inputs(data) == (data, 0)


# --- calibration ----------------------------------------------------------------------------------


def test_calibration_is_monotone_and_identity_by_default() -> None:
    identity = Calibration()
    assert [identity.apply(x) for x in (0.0, 0.3, 1.0)] == [0.0, 0.3, 1.0]
    fitted = Calibration(points=((0.0, 0.0), (0.2, 0.05), (0.5, 0.7), (1.0, 0.98)))
    grid = np.linspace(0, 1, 101)
    mapped = [fitted.apply(float(x)) for x in grid]
    assert all(b >= a for a, b in itertools.pairwise(mapped)) and mapped[-1] == 0.98
    assert fitted.apply(0.35) == pytest.approx(0.375)
    with pytest.raises(ValidationError, match="never decrease"):
        Calibration(points=((0.0, 0.0), (0.5, 0.8), (1.0, 0.6)))
    with pytest.raises(ValidationError, match="increase strictly"):
        Calibration(points=((0.0, 0.0), (0.5, 0.5), (0.5, 0.6), (1.0, 1.0)))
    with pytest.raises(ValidationError, match="start at raw score 0"):
        Calibration(points=((0.1, 0.0), (1.0, 1.0)))
    for entry in CATALOGUE.values():  # what ships is valid (identity until the numbers are fitted)
        assert entry.calibration.apply(0.0) <= entry.calibration.apply(0.5) <= entry.calibration.apply(1.0)


# --- weighted box fusion --------------------------------------------------------------------------


def box(label: str, score: float, xyxy: tuple[float, float, float, float]) -> Detection:
    return Detection(label=label, class_id=COCO_LABELS.index(label), score=score, box=xyxy)


def test_wbf_merges_overlapping_boxes_and_divides_by_the_models_that_can_see_the_label() -> None:
    fused = weighted_box_fusion(
        {
            "a": [box("person", 0.8, (100, 100, 200, 300)), box("car", 0.6, (400, 50, 600, 150))],
            "b": [box("person", 0.4, (110, 100, 210, 300))],
            "person-only": [box("person", 0.6, (100, 110, 200, 310))],
        },
        models_for_label={"person": 3, "car": 2},
    )
    person, car = fused
    assert person.sources == {"a": 0.8, "person-only": 0.6, "b": 0.4}
    assert person.score == pytest.approx((0.8 + 0.4 + 0.6) / 3, abs=1e-4)
    # the score-weighted mean box
    assert person.box[0] == pytest.approx((0.8 * 100 + 0.4 * 110 + 0.6 * 100) / 1.8, abs=0.01)
    assert person.box[3] == pytest.approx((0.8 * 300 + 0.4 * 300 + 0.6 * 310) / 1.8, abs=0.01)
    # a car only one of the two COCO models saw: half its score (the person-only model does not count)
    assert car.sources == {"a": 0.6} and car.score == pytest.approx(0.3)
    assert describe(person, ["a", "b", "c"]) == "person 0.60 (a 0.80, person-only 0.60, b 0.40, c —)"
    assert describe(car, ["a", "b"]) == "car 0.30 (a 0.60, b —)"
    # different labels never merge; boxes under the IoU threshold stay apart
    apart = weighted_box_fusion(
        {"a": [box("person", 0.9, (0, 0, 100, 100))], "b": [box("person", 0.9, (60, 0, 160, 100))]}
    )
    assert len(apart) == 2 and all(d.score == pytest.approx(0.45) for d in apart)


def test_wbf_applies_each_models_calibration_but_reports_raw_scores() -> None:
    cal = {"b": Calibration(points=((0.0, 0.0), (0.5, 0.9), (1.0, 1.0)))}
    (fused,) = weighted_box_fusion(
        {"a": [box("person", 0.6, (0, 0, 100, 200))], "b": [box("person", 0.5, (0, 0, 100, 200))]}, calibrations=cal
    )
    assert fused.score == pytest.approx((0.6 + 0.9) / 2) and fused.sources == {"a": 0.6, "b": 0.5}


def test_ensemble_fuses_real_detections(backends: dict[str, DetectorBackend], shared_dir: Path) -> None:
    members = [backends[n] for n in ("yolox-nano", "picodet-s-416", "person-light-192")]
    ensemble = Ensemble(members)
    assert ensemble.models_for_label["person"] == 3 and ensemble.models_for_label["car"] == 2
    for image, truth in labelled_people(shared_dir, min_area=0.1, limit=6):
        frame = cv2.imread(str(image))
        fused = ensemble.detect(frame)
        assert set(ensemble.last_raw) == {"yolox-nano", "picodet-s-416", "person-light-192"}
        for t in truth:
            best = max(people(fused), key=lambda d: iou(t, d.box))
            assert iou(t, best.box) >= 0.5, (image.name, best)
            assert len(best.sources) >= 2  # a large person is seen by more than one model
            raw_best = {
                m: max((d.score for d in people(ensemble.last_raw[m]) if iou(d.box, best.box) >= 0.55), default=None)
                for m in best.sources
            }
            assert raw_best == best.sources, image.name  # sources are each model's raw score of that box
        # only the COCO models can report anything but people
        for d in fused:
            if d.label != "person":
                assert "person-light-192" not in d.sources
    # fused boxes: one per object and label, highest first
    scores = [d.score for d in fused]
    assert scores == sorted(scores, reverse=True)


def test_an_ensemble_of_one_is_the_model_itself(backends: dict[str, DetectorBackend], shared_dir: Path) -> None:
    frame = cv2.imread(str(shared_dir / "images/coral/traffic_0001.bmp"))
    alone = backends["yolox-nano"].detect(frame)
    single = Ensemble([backends["yolox-nano"]])
    assert single.model_sha256 == CATALOGUE["yolox-nano"].sha256
    got = single.detect(frame)
    assert [(d.label, d.score, d.box) for d in got] == [(d.label, d.score, d.box) for d in alone]
    assert all(d.sources == {"yolox-nano": d.score} for d in got)
    with pytest.raises(ValueError, match="once"):
        Ensemble([backends["yolox-nano"], backends["yolox-nano"]])


# --- issue 14 §5: the second look reads raw candidates, not what the threshold left -----------------


def pasted_person_frame(shared: Path) -> np.ndarray:
    """A real person (squat.bmp) 90 px tall on a real lawn (grass.png) of 900x600: under the 1000-px
    size trigger, so only doubt can make auto tiling look again."""
    lawn = cv2.resize(cv2.imread(str(shared / "images/skimage/grass.png")), (900, 600))
    person = cv2.imread(str(shared / "images/coral/squat.bmp"))
    small = cv2.resize(person, (round(person.shape[1] * 90 / person.shape[0]), 90), interpolation=cv2.INTER_AREA)
    lawn[400:490, 600 : 600 + small.shape[1]] = small
    return lawn


@pytest.mark.parametrize("frame_of", ["cctv-dev/intel_008.jpg", "pasted"])
def test_threshold_045_still_tiles_a_doubtful_person(
    backends: dict[str, DetectorBackend], shared_dir: Path, model_dir: Path, frame_of: str
) -> None:
    if frame_of == "pasted":
        frame = pasted_person_frame(shared_dir)
    else:  # a real car park from above: a pedestrian near the top, small
        frame = cv2.imread(str(shared_dir / "datasets/cctv-dev/images" / frame_of.split("/")[1]))
    yolox = backends["yolox-nano"]
    whole = max(d.score for d in people(yolox.detect(frame)))
    assert 0.25 <= whole < 0.45  # doubtful on the whole frame, under the raised threshold
    # before the fix: the detector itself cut at --score-threshold, so the doubt never showed
    old = create_detector("onnx", model=locate_model("yolox-nano", model_dir=model_dir), score_floor=0.45)
    before = TiledDetector(old, TilingConfig(mode="auto"))
    assert people(before.detect(frame)) == [] and before.last_tiles == 0
    # after: doubt read on the raw candidates, the threshold applied to what is reported
    after = TiledDetector(yolox, TilingConfig(mode="auto"), score_threshold=0.45)
    found = people(after.detect(frame))
    assert after.last_tiles == 2 and after.last_reason.startswith("doubtful person 0.")
    assert found and found[0].score >= 0.45 and all(d.score >= 0.45 for d in after.detect(frame))


def test_detect_stage_with_threshold_045_finds_the_tiled_person(model_dir: Path, shared_dir: Path, tmp_path: Path):
    from alarmsieve.stages.base import StageServices
    from alarmsieve.stages.detect import DetectStage

    stage = DetectStage(["--score-threshold", "0.45"], StageServices(model_dir=model_dir, model_cache=tmp_path))
    frame = cv2.imread(str(shared_dir / "datasets/cctv-dev/images/intel_008.jpg"))
    found = stage.tiled.detect(frame, camera="carpark")
    assert stage.tiled.last_tiles == 2 and people(found, at=0.45)
    assert all(d.score >= 0.45 for d in found)


# --- the detect stage: options, help, several detectors -----------------------------------------------


def run_stage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alarmsieve", "stage", "detect", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        env=env,
        timeout=300,
        check=False,
    )


def test_stage_detect_help_lists_every_option() -> None:
    from alarmsieve.stages.detect import DetectStage

    result = run_stage("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: alarmsieve stage detect")
    options = [a.option_strings[-1] for a in DetectStage.argument_parser()._actions if a.option_strings]
    assert len(options) > 15
    for option in options:
        assert option in result.stdout
    squeezed = "".join(result.stdout.split())  # argparse wraps long words at hyphens
    assert all(name in squeezed for name in CATALOGUE)  # the known detectors are named
    # and the docs table has every option
    table = (PROJECT / "docs/quality.md").read_text()
    missing = [o for o in options if o != "--help" and f"`{o}" not in table]
    assert missing == []


def test_stage_refuses_unknown_detectors_in_one_line(model_dir: Path, tmp_path: Path) -> None:
    from alarmsieve.stages.base import StageServices, StageUsageError
    from alarmsieve.stages.detect import DetectStage

    services = StageServices(model_dir=model_dir, model_cache=tmp_path)
    with pytest.raises(StageUsageError, match=r"unknown detector 'yolo9' in --detectors; known detectors: yolox-nano"):
        DetectStage(["--detectors", "yolox-nano,yolo9"], services)
    with pytest.raises(StageUsageError, match="not both"):
        DetectStage(["--detectors", "yolox-nano", "--model", "/tmp/x.onnx"], services)
    with pytest.raises(StageUsageError, match="twice"):
        DetectStage(["--detectors", "yolox-nano,yolox-nano"], services)
    with pytest.raises(StageUsageError, match="score_floor must be within"):
        DetectStage(["--score-floor", "1.5"], services)
    # in a pipeline's transform.cmd, --help is a mistake, not a request to print and exit the worker
    with pytest.raises(StageUsageError, match="run `alarmsieve stage detect --help`"):
        DetectStage(["--help"], services)


def test_stage_runs_several_detectors_and_records_models_and_sources(
    all_models: Path, shared_dir: Path, tmp_path: Path
) -> None:
    import os

    from alarmsieve.stages.base import StageServices
    from alarmsieve.stages.detect import DetectStage

    services = StageServices(model_dir=all_models, model_cache=tmp_path / "cache")
    names = ["yolox-nano", "picodet-s-416", "person-light-192"]
    identity = DetectStage(["--detectors", ",".join(names)], services).identity()
    assert all(CATALOGUE[n].sha256 in identity["models"] for n in names)
    single = DetectStage(["--cascade", "off"], services).identity()
    assert single.keys() == {"stage", "code_version", "model", "model_sha256", "tiling"}
    cascade = DetectStage([], services).identity()  # the default: the cascade names every model it may run
    assert "nanodet-m-416@" in cascade["models"] and "inverted" in cascade["cascade"]

    # one alarm laid out as a datum of the validate repo, run through the real CLI in a subprocess
    image = (shared_dir / "images/coral/grace_hopper.bmp").read_bytes()
    folder = tmp_path / "pfs/validate/cam-1/0001.bmp"
    folder.mkdir(parents=True)
    (folder / "image.bmp").write_bytes(image)
    meta = AlarmMeta(
        alarm="/cam-1/0001.bmp",
        camera="cam-1",
        time=datetime(2026, 12, 3, 9, 0, tzinfo=UTC),
        time_source="commit",
        image_file="image.bmp",
        sha256=hashlib.sha256(image).hexdigest(),
        size_bytes=len(image),
        status="ok",
    )
    (folder / "meta.json").write_text(meta.model_dump_json())
    env = {**os.environ, "ALARMSIEVE_MODEL_DIR": str(all_models), "ALARMSIEVE_OFFLINE": "1"}
    result = run_stage("--pfs", str(tmp_path / "pfs"), "--detectors", ",".join(names), env=env)
    assert result.returncode == 0, result.stderr
    record = DetectionsRecord.model_validate_json((tmp_path / "pfs/out/cam-1/0001.bmp/detections.json").read_text())
    assert [(m.name, m.sha256) for m in record.models] == [(n, CATALOGUE[n].sha256) for n in names]
    assert record.model is not None and record.model.name == "yolox-nano"
    person = next(b for b in record.detections if b.label == "person")
    assert person.score >= 0.5 and set(person.sources) == set(names)
    assert all(b.sources and set(b.sources) <= set(names) for b in record.detections)
    assert json.loads((tmp_path / "pfs/out/cam-1/0001.bmp/detections.json").read_text())["detections"][0]["sources"]


# --- `detectors:` in the rules ---------------------------------------------------------------------


RULES = b"""defaults:
  detectors: [yolox-nano]
sites:
  depot:
    detectors: yolox-nano, picodet-s-416
groups:
  night:
    detectors: [person-light-192, nanodet-m-416]
cameras:
  gate:
    site: depot
  yard:
    site: depot
    group: night
  lobby:
    detectors: [picodet-xs-320]
"""


def test_rules_detector_sets_resolve_per_camera() -> None:
    rules = load_rules({"cameras.yaml": RULES}, known_labels=COCO_LABELS)
    assert rules.detectors_for("gate") == ["yolox-nano", "picodet-s-416"]  # from its site
    assert rules.detectors_for("yard") == ["person-light-192", "nanodet-m-416"]  # group beats site
    assert rules.detectors_for("lobby") == ["picodet-xs-320"]
    assert rules.detectors_for("anywhere") == ["yolox-nano"]  # the defaults block
    assert load_rules({}, known_labels=COCO_LABELS).detectors_for("gate") is None  # the stage's --detectors


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            b"cameras:\n  gate:\n    detectors: [yolox-nano, picodet-s]\n",
            "rules.yaml:3: cameras.gate.detectors: unknown detector 'picodet-s' (did you mean 'picodet-s-416'?)"
            " — fix: use detectors of the catalogue: yolox-nano, nanodet-m-416",
        ),
        (b"defaults:\n  detectors: yolov8\n", "rules.yaml:2: defaults.detectors: unknown detector 'yolov8'"),
        (b"cameras:\n  gate:\n    detectors: []\n", "cameras.gate.detectors: name at least one detector"),
        (b"sites:\n  depot:\n    detectors: [yolox-nano, yolox-nano]\n", "a detector is named twice"),
        (
            b"cameras:\n  gate:\n    zones:\n      door:\n        polygon: [[0, 0], [1, 0], [1, 1]]\n"
            b"        detectors: [yolox-nano]\n",
            "detectors run on the whole frame: set them per camera",
        ),
    ],
)
def test_rules_refuse_bad_detector_names_in_one_line(yaml_text: bytes, message: str) -> None:
    with pytest.raises(RulesError) as info:
        load_rules({"rules.yaml": yaml_text}, known_labels=COCO_LABELS)
    text = str(info.value)
    assert message in text and "\n" not in text
