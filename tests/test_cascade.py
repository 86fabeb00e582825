"""The cascade on real frames: frame kinds, second looks, merging with sources, and what it costs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from alarmsieve.vision.backends import Detection, load_backend
from alarmsieve.vision.cascade import Cascade, CascadePolicy, Look, merge_looks
from alarmsieve.vision.looks import frame_kind, inverted, normalised, upscaled_slices
from alarmsieve.vision.models import CATALOGUE, locate_model
from alarmsieve.workspace import Workspace
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def cctv(shared_dir: Path) -> Path:
    folder = shared_dir / "datasets" / "cctv-dev" / "images"
    if not folder.is_dir():
        pytest.skip(f"cctv-dev frames not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def cascade(model_dir: Path) -> Cascade:
    policy = CascadePolicy()
    backends = {name: load_backend(locate_model(name, model_dir=model_dir)) for name in policy.models()}
    return Cascade(policy, backends, {name: CATALOGUE[name].calibration for name in backends})


def read(folder: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    return image


def test_frame_kind_tells_thermal_and_intensified_from_colour(cctv: Path, shared_dir: Path) -> None:
    thermal = frame_kind(read(cctv, "tno_tree_thermal_009.png"))
    assert thermal.tone == "mono" and thermal.low_contrast
    assert frame_kind(read(cctv, "tno_duine_visual_008.png")).tone == "mono"
    shop = frame_kind(read(cctv, "intel_010.jpg"))
    assert shop.tone == "colour" and not shop.dark
    assert frame_kind(read(shared_dir / "images" / "skimage", "astronaut.png")).tone == "colour"
    night = frame_kind(read(cctv, "pwild_003.jpg"))  # a colour camera at night
    assert night.tone == "colour" and night.dark


def test_views_keep_the_frame_shape_and_invert_polarity(cctv: Path) -> None:
    frame = read(cctv, "tno_tree_thermal_009.png")
    flipped = inverted(frame)
    assert flipped.shape == frame.shape and int(flipped[0, 0, 0]) == 255 - int(frame[0, 0, 0])
    equalised = normalised(frame)
    assert equalised.shape == frame.shape
    assert float(cv2.cvtColor(equalised, cv2.COLOR_BGR2GRAY).std()) > float(frame.std())  # contrast lifted


def test_upscaled_slices_cover_the_frame_with_overlap() -> None:
    slices = upscaled_slices(360, 270)
    assert len(slices) == 4
    covered = np.zeros((270, 360), dtype=bool)
    for x1, y1, x2, y2 in slices:
        assert x2 - x1 == 216 and y2 - y1 == 162
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert slices[0][2] > slices[1][0]  # neighbours overlap
    with pytest.raises(ValueError, match="share"):
        upscaled_slices(360, 270, share=0.3)


def test_a_thermal_person_the_first_model_misses_is_found_by_the_other_polarity(cascade: Cascade, cctv: Path) -> None:
    frame = read(cctv, "tno_tree_thermal_003.png")  # a small white-hot person between trees
    first = cascade.backends["yolox-nano"].detect(frame)
    assert max((d.score for d in first if d.label == "person"), default=0.0) < 0.35  # today: dismissed
    result = cascade.detect(frame)
    assert result.second_look.startswith("grey frame")
    person = next(d for d in result.detections if d.label == "person")
    assert person.score >= 0.5
    assert "yolox-nano/inverted" in person.sources
    assert result.looks[0].look == "yolox-nano"


def test_a_confident_daylight_frame_costs_one_pass(cascade: Cascade, shared_dir: Path) -> None:
    frame = read(shared_dir / "images" / "skimage", "astronaut.png")
    result = cascade.detect(frame)
    assert result.second_look == ""
    assert [look.look for look in result.looks] == ["yolox-nano"]
    assert result.looks[0].passes == 1
    assert result.detections[0].label == "person" and result.detections[0].score >= 0.5


def test_an_empty_thermal_scene_stays_calm(cascade: Cascade, cctv: Path) -> None:
    for name in ("tno_tree_thermal_000.png", "tno_duine_thermal_000.png", "tno_fire3_rad_009.png"):
        result = cascade.detect(read(cctv, name))
        assert result.second_look  # grey frames always get the second look
        assert max((d.score for d in result.detections if d.label == "person"), default=0.0) < 0.35, name


def test_merge_keeps_every_source_and_agreement_lifts_a_doubt() -> None:
    policy = CascadePolicy(primary="a", mono=[], colour=[Look(model="b")], dark_colour=[])
    person = {"label": "person", "class_id": 0}
    found = [
        (Look(model="a"), Detection(**person, score=0.3, box=(10, 10, 30, 60))),
        (Look(model="b"), Detection(**person, score=0.28, box=(11, 12, 31, 62))),
        (Look(model="b", view="inverted"), Detection(**person, score=0.1, box=(200, 10, 220, 60))),
    ]
    merged = merge_looks(found, policy)
    assert len(merged) == 2
    top = merged[0]
    assert top.score == pytest.approx(0.35)  # two looks agree at >= 0.25: at least a review
    assert top.sources == {"a": 0.3, "b": 0.28}
    assert 10 < top.box[0] < 11 and 60 < top.box[3] < 62  # weighted mean of both boxes
    alone = merge_looks(found[:1], policy)
    assert alone[0].score == pytest.approx(0.3)  # one look alone is not lifted


def test_a_policy_naming_a_model_without_backend_is_refused(cascade: Cascade) -> None:
    with pytest.raises(ValueError, match="no backend loaded for nanodet-m-416"):
        Cascade(CascadePolicy(), {"yolox-nano": cascade.backends["yolox-nano"]})


def test_a_thermal_alarm_through_the_pipeline_names_every_look_in_explain(
    cctv: Path, make_workspace: Callable[..., Workspace]
) -> None:
    """End to end: the default pipelines on a real thermal frame that YOLOX-Nano alone dismisses."""
    ws = make_workspace()
    put = run_cli(
        "put", "file", "images@master:/thermal-gate/20260110_220003.png", "-f",
        str(cctv / "tno_tree_thermal_003.png"), home=ws.home,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    ran = run_cli("run", home=ws.home)
    assert ran.returncode == 0, ran.stderr.decode()[-2000:]
    shown = run_cli("explain", "/thermal-gate/20260110_220003.png", "--json", home=ws.home)
    assert shown.returncode == 0, shown.stderr
    verdict = json.loads(shown.stdout)
    assert verdict["verdict"] in ("alert", "review")
    assert {m["name"] for m in verdict["models"]} >= {"yolox-nano", "nanodet-m-416"}
    assert verdict["second_look"].startswith("mono")
    person = next(d for d in verdict["detections"] if d["label"] == "person" and d["kept"])
    assert person["sources"]["yolox-nano/inverted"] >= 0.5
    text = run_cli("explain", "/thermal-gate/20260110_220003.png", home=ws.home).stdout.decode()
    assert "second look: mono" in text and "seen by yolox-nano/inverted" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--second-look-mono", "foo/inverted"], "detect: unknown detector 'foo' in a second look 'foo/inverted'"),
        (["--second-look-colour", "yolox-nano/sideways"], "detect: unknown view 'sideways' in a second look"),
        (["--confident", "2"], "detect: bad cascade arguments: confident: Input should be less than or equal to 1"),
    ],
)
def test_bad_cascade_options_are_one_line_naming_the_option(
    args: list[str], message: str, model_dir: Path, tmp_path: Path
) -> None:
    from alarmsieve.stages.base import StageServices, StageUsageError
    from alarmsieve.stages.detect import DetectStage

    services = StageServices(model_dir=model_dir, model_cache=tmp_path / "cache")
    with pytest.raises(StageUsageError) as raised:
        DetectStage(args, services)
    assert str(raised.value).startswith(message) and "detect: detect:" not in str(raised.value)
