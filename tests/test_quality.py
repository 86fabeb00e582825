"""Verdict quality: Wilson intervals, tiling layout and merge, the robustness generator, tune, the HTML report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from alarmsieve.evaluate import CurvePoint, ImageOutcome, OutcomeBox, curve
from alarmsieve.quality.report import curve_svg, thumbnail
from alarmsieve.quality.robustness import (
    CONDITIONS,
    RobustnessError,
    RobustnessSource,
    load_manifest,
    make_robustness_set,
)
from alarmsieve.quality.stats import proportion, wilson
from alarmsieve.quality.tune import (
    TuneError,
    check_rules_yaml,
    default_rules_files,
    load_feedback,
    match_cameras,
    propose,
    rules_yaml,
)
from alarmsieve.vision.detector import Detection
from alarmsieve.vision.tiling import TilingConfig, merge_detections, plan_tiles


# ---- Wilson -------------------------------------------------------------------------------------------
def test_wilson_matches_published_values() -> None:
    # Reference values (Newcombe 1998, table I; and the closed form at the edges)
    assert wilson(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson(20, 20) == pytest.approx((0.8389, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson(5, 3)


def test_proportion_text_and_empty() -> None:
    p = proportion(3, 4)
    assert p.rate == 0.75 and p.low is not None and p.low < 0.75 < (p.high or 0)
    assert p.text() == "3/4 75.0% [30.1%, 95.4%]"
    assert proportion(0, 0).rate is None and proportion(0, 0).text() == "0/0 (n/a)"


# ---- tiling --------------------------------------------------------------------------------------------
def test_tile_plan_covers_the_frame_with_overlap() -> None:
    tiles = plan_tiles(640, 480, tile_size=416, overlap=0.2)
    assert len(tiles) == 4
    assert {t[0] for t in tiles} == {0, 224} and {t[1] for t in tiles} == {0, 64}
    assert all(x2 - x1 == 416 and y2 - y1 == 416 for x1, y1, x2, y2 in tiles)
    covered = np.zeros((480, 640), bool)
    for x1, y1, x2, y2 in tiles:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    capped = plan_tiles(640, 480, tile_size=416, overlap=0.2, max_tiles=2)
    assert len(capped) == 2 and all(y2 - y1 == 480 for _, y1, _, y2 in capped)
    assert plan_tiles(300, 200, tile_size=416) == [(0, 0, 300, 200)]
    big = plan_tiles(1920, 1080, tile_size=416, overlap=0.2)
    assert len(big) == 6 * 3 and max(t[2] for t in big) == 1920 and max(t[3] for t in big) == 1080
    with pytest.raises(ValueError, match="frame size"):
        plan_tiles(0, 10, tile_size=416)


def test_tiling_config_modes() -> None:
    assert not TilingConfig().wanted("cam", 4000, 3000)
    assert TilingConfig(mode="on").wanted("cam", 100, 100)
    auto = TilingConfig(mode="auto", auto_min_side=1000)
    assert auto.wanted("cam", 1280, 720) and not auto.wanted("cam", 640, 480)
    per_camera = TilingConfig(cameras=["gate", " yard "])
    assert per_camera.wanted("yard", 640, 480) and not per_camera.wanted("door", 640, 480)


def _det(label: str, score: float, box: tuple[float, float, float, float], cid: int = 0) -> Detection:
    return Detection(label=label, class_id=cid, score=score, box=box)


def test_merge_is_class_aware_and_drops_cut_fragments() -> None:
    whole = _det("person", 0.8, (100, 100, 200, 400))
    duplicate = _det("person", 0.7, (102, 98, 201, 402))  # the same person seen in a tile
    fragment = _det("person", 0.9, (100, 100, 200, 250))  # cut by a tile edge, inside the whole box
    dog_same_box = _det("dog", 0.6, (100, 100, 200, 400), cid=16)
    far = _det("person", 0.55, (500, 50, 520, 90))  # a small person only a tile found
    merged = merge_detections(
        [(whole, False), (duplicate, False), (fragment, True), (dog_same_box, False), (far, True)]
    )
    assert [(d.label, d.score, d.box) for d in merged] == [
        ("person", 0.9, whole.box),  # the fragment's score, the whole box
        ("dog", 0.6, dog_same_box.box),
        ("person", 0.55, far.box),
    ]
    # a fragment with no larger box of its label around it is kept
    assert merge_detections([(fragment, True)]) == [fragment]
    assert merge_detections([]) == []


# ---- robustness set ------------------------------------------------------------------------------------
def test_every_condition_changes_the_frame_and_is_seeded(shared_dir: Path) -> None:
    image = cv2.imread(str(shared_dir / "images/skimage/astronaut.png"))
    for name, condition in CONDITIONS.items():
        a = condition(image, np.random.default_rng(7))
        b = condition(image, np.random.default_rng(7))
        assert a.shape == image.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, b), f"{name} is not deterministic for one seed"
        assert np.abs(a.astype(int) - image.astype(int)).mean() > 1.0, f"{name} left the frame unchanged"
    grey = CONDITIONS["infrared"](image, np.random.default_rng(0))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert CONDITIONS["night"](image, np.random.default_rng(0)).mean() < image.mean() * 0.6


def _small_csv(tmp_path: Path, shared_dir: Path) -> Path:
    labels = tmp_path / "labels.csv"
    labels.write_text("file,objects\nskimage/astronaut.png,person\ncoral/owl.jpg,bird\nskimage/grass.png,\n")
    return labels


def test_robustness_set_is_reproducible_and_labelled(tmp_path: Path, shared_dir: Path) -> None:
    labels = _small_csv(tmp_path, shared_dir)
    source = RobustnessSource(name="photos", images=shared_dir / "images", labels=labels)
    wanted = ["night", "headlight_glare"]
    first = make_robustness_set(tmp_path / "a", [source], seed=3, conditions=wanted)
    make_robustness_set(tmp_path / "b", [source], seed=3, conditions=wanted)
    make_robustness_set(tmp_path / "c", [source], seed=4, conditions=wanted)
    assert first.conditions == ["original", "night", "headlight_glare"] and len(first.items) == 9
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.jpg"))
    assert [str(f) for f in files][:3] == [
        "headlight_glare/photos__coral__owl.jpg",
        "headlight_glare/photos__skimage__astronaut.jpg",
        "headlight_glare/photos__skimage__grass.jpg",
    ]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    night = Path("night/photos__skimage__astronaut.jpg")
    assert (tmp_path / "a" / night).read_bytes() != (tmp_path / "c" / night).read_bytes()
    rows = list(csv.DictReader((tmp_path / "a/labels.csv").open()))
    assert {r["file"]: r["objects"] for r in rows}["night/photos__skimage__astronaut.jpg"] == "person"
    assert {r["condition"] for r in rows} == {"original", "night", "headlight_glare"}
    assert load_manifest(tmp_path / "a").seed == 3
    with pytest.raises(RobustnessError, match="not empty"):
        make_robustness_set(tmp_path / "a", [source], conditions=wanted)
    with pytest.raises(RobustnessError, match=r"unknown condition.*fog"):
        make_robustness_set(tmp_path / "d", [source], conditions=["fog"])
    with pytest.raises(RobustnessError, match="make the set first"):
        load_manifest(tmp_path / "nothing")


def test_robustness_drops_threats_too_small_to_see(tmp_path: Path, shared_dir: Path) -> None:
    coco = shared_dir / "datasets/coco128/train2017"
    if not (coco / "labels").is_dir():
        pytest.skip("COCO128 is absent")
    source = RobustnessSource(name="coco", images=coco / "images", labels=coco / "labels", limit=6)
    manifest = make_robustness_set(tmp_path / "set", [source], seed=1, conditions=["low_resolution"])
    assert len(manifest.items) == 12
    for item in manifest.items:
        stem = item.file.split("__", 1)[1].removesuffix(".jpg")
        lines = [x.split() for x in (coco / "labels" / f"{stem}.txt").read_text().splitlines() if x.strip()]
        people = [float(x[3]) * float(x[4]) for x in lines if x[0] == "0"]
        assert not people or max(people) >= 0.005


# ---- curve and report ------------------------------------------------------------------------------------
def _outcome(file: str, threat: bool, score: float | None, verdict: str, status: str = "ok") -> ImageOutcome:
    boxes = [OutcomeBox(label="person", score=score, box=(10, 10, 60, 120))] if score is not None else []
    return ImageOutcome(
        file=file,
        objects=["person"] if threat else [],
        threat=threat,
        verdict=verdict,
        reasons=["why"],
        detections=[f"person {score:.2f}"] if score is not None else [],
        camera=file.split("/")[0],
        threat_score=score,
        status=status,
        boxes=boxes,
    )


OUTCOMES = [
    _outcome("gate/a.jpg", True, 0.9, "alert"),
    _outcome("gate/b.jpg", True, 0.6, "alert"),
    _outcome("gate/c.jpg", True, 0.4, "review"),
    _outcome("gate/d.jpg", True, None, "dismiss"),
    _outcome("gate/e.jpg", False, None, "dismiss"),
    _outcome("gate/f.jpg", False, 0.45, "review"),
    _outcome("yard/g.jpg", False, 0.3, "dismiss"),
    _outcome("yard/h.jpg", False, None, "review", status="uniform"),
]


def test_curve_counts_recall_and_suppression_per_threshold() -> None:
    points = {p.threshold: p for p in curve(OUTCOMES, (0.25, 0.5, 0.95))}
    assert (points[0.25].recall, points[0.25].suppression) == (0.75, 0.25)
    assert (points[0.5].recall, points[0.5].suppression) == (0.5, 0.75)  # the uniform frame is never suppressed
    assert (points[0.95].recall, points[0.95].suppression) == (0.0, 0.75)


def test_curve_svg_and_thumbnail(shared_dir: Path) -> None:
    svg = curve_svg([CurvePoint(threshold=0.5, recall=0.9, suppression=0.8)], operating=(0.8, 0.9))
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and "threshold 0.500" in svg
    outcome = _outcome("skimage/astronaut.png", True, 0.9, "alert")
    uri = thumbnail(shared_dir / "images/skimage/astronaut.png", outcome, ["person"], side=160)
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    import base64

    data = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_COLOR)
    assert max(decoded.shape[:2]) == 160
    assert thumbnail(shared_dir / "images/nope.png", outcome, ["person"]) is None


# ---- tune -------------------------------------------------------------------------------------------------
def test_tune_reaches_the_target_and_shows_the_cost() -> None:
    current = {"person": (0.5, 0.35)}
    [p] = propose(OUTCOMES, ["person"], target_recall=0.75, current=current)
    assert p.threats == 4 and p.calm == 4 and p.never_detected == 1 and p.target_reached
    assert p.proposed.alert_threshold == 0.4 and p.proposed.review_threshold == 0.4
    assert p.proposed.recall_alert.k == 3 and p.current.recall_alert.k == 2
    # cost: the calm person 0.45 now alerts; the uniform frame is always reviewed
    assert p.proposed.alerts_on_calm == 1 and p.current.alerts_on_calm == 0
    assert p.proposed.suppression.k == 2 and p.current.suppression.k == 2
    [full] = propose(OUTCOMES, ["person"], target_recall=1.0, current=current)
    assert not full.target_reached and "1 of 4 person alarms have no person box" in full.note
    assert full.proposed.alert_threshold == 0.25
    with pytest.raises(TuneError, match="within"):
        propose(OUTCOMES, ["person"], target_recall=0.0, current=current)


def test_tune_rules_file_loads_with_the_defaults(tmp_path: Path) -> None:
    [p] = propose(OUTCOMES, ["person"], target_recall=0.5, current={"person": (0.5, 0.35)})
    text = rules_yaml(["gate", "yard"], [p], "a note\nline two")
    assert text.startswith("# a note\n# line two\n")
    check_rules_yaml(text, default_rules_files())
    assert "min_score: 0.6" in text and "review_min_score: 0.4" in text
    assert match_cameras("gate", ["gate", "yard"]) == ["gate"]
    assert match_cameras("g*,yard", ["gate", "yard", "door"]) == ["gate", "yard"]
    assert match_cameras("all", ["b", "a"]) == ["a", "b"]
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("file,objects\n/gate/a.jpg,person\n/yard/b.jpg,\n")
    assert [i.file for i in load_feedback(feedback)] == ["gate/a.jpg", "yard/b.jpg"]
    feedback.write_text("file,objects\nnocamera.jpg,person\n")
    with pytest.raises(TuneError, match=r"line 2: 'nocamera\.jpg' is not an alarm path"):
        load_feedback(feedback)
    assert json.loads(p.model_dump_json())["label"] == "person"
