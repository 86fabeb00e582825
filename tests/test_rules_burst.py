"""Bursts end to end: real photos, real detector and workers; snapshots of one camera seconds apart are one event.

The parked-motorcycle photo gives the detector a doubtful person (about 0.39, in the review band
[0.35, 0.5) of the default rules) at the same place in every copy: the stand-in for an uncertain
figure that a camera's burst shows again and again. The lawn and brick-wall photos show nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alarmsieve.config import Settings
from alarmsieve.rules.repo import commit_rules
from alarmsieve.stages.records import VerdictRecord
from alarmsieve.verdicts import read_verdicts
from alarmsieve.workspace import Workspace
from tests.conftest import PROJECT

DOUBT = "images/skimage/motorcycle_left.png"
CALM = {"grass": "images/skimage/grass.png", "brick": "images/skimage/brick.png"}
RULES = b"cameras:\n  yard:\n    burst: {flicker: dismiss}\n  lane:\n    burst: {window_s: 0}\n"
ALARMS = {
    # two snapshots 3 s apart, both with the doubtful person: confirmed, alert
    "/garage/20261127_220000.png": DOUBT,
    "/garage/20261127_220003.png": DOUBT,
    # the same camera ten minutes later, alone: stays review
    "/garage/20261127_221000.png": DOUBT,
    # a one-frame flicker in a burst of three (the other two calm): dismissed where the rules say so...
    "/yard/20261127_220000.png": DOUBT,
    "/yard/20261127_220002.png": CALM["grass"],
    "/yard/20261127_220004.png": CALM["brick"],
    # ...and kept as review, with the reason, under the default `flicker: keep`
    "/porch/20261127_220000.png": DOUBT,
    "/porch/20261127_220002.png": CALM["grass"],
    "/porch/20261127_220004.png": CALM["brick"],
    # bursts switched off for this camera: two doubtful snapshots stay review
    "/lane/20261127_220000.png": DOUBT,
    "/lane/20261127_220003.png": DOUBT,
    # no time in the file names: both carry the upload's time, which says nothing about a burst
    "/attic/first.png": DOUBT,
    "/attic/second.png": DOUBT,
}


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path, model_dir: Path) -> dict[str, VerdictRecord]:
    home = tmp_path_factory.mktemp("burst")
    ws = Workspace(Settings(home=home, model_dir=model_dir, model_cache=home / "cache"), must_exist=False)
    ws.init(pipelines_dir=PROJECT / "pipelines")
    commit_rules(ws.pfs, {"/cameras.yaml": RULES}, message="burst rules")
    builder = ws.pfs.start_commit("images")
    for alarm, photo in ALARMS.items():
        builder.put_local_file(alarm, shared_dir / photo)
    builder.finish()
    with ws.runner() as runner:
        jobs = runner.run_until_idle()
    assert all(j.state == "success" for j in jobs), [j.reason for j in jobs]
    return {v.alarm: v for v in read_verdicts(ws.pfs)}


def _person(v: VerdictRecord):
    return next(d for d in v.detections if d.label == "person")


def test_a_doubtful_person_seen_in_two_snapshots_is_an_alert(judged: dict[str, VerdictRecord]) -> None:
    first, second = judged["/garage/20261127_220000.png"], judged["/garage/20261127_220003.png"]
    assert first.verdict == second.verdict == "alert"
    assert "in review band [0.35, 0.50)" in first.reasons[0]
    assert (
        "seen in 2 frames within 10 s (/garage/20261127_220003.png +3 s): alert (burst min_frames 2"
        in (first.reasons[0])
    )
    assert "(/garage/20261127_220000.png -3 s)" in second.reasons[0]
    assert _person(second).severity == "alert"
    alone = judged["/garage/20261127_221000.png"]
    assert alone.verdict == "review" and "seen in" not in alone.reasons[0]


def test_a_one_frame_flicker_is_weaker(judged: dict[str, VerdictRecord]) -> None:
    yard = judged["/yard/20261127_220000.png"]
    assert yard.verdict == "dismiss"
    assert yard.reasons[0].startswith("no threat: one-frame flicker dismissed (2 other frames within 10 s")
    assert "dismissed (burst flicker dismiss, cameras/yard)" in _person(yard).why and not _person(yard).kept
    porch = judged["/porch/20261127_220000.png"]
    assert porch.verdict == "review"
    assert (
        "one-frame flicker: none in the 2 other frames within 10 s (burst flicker keep, defaults)" in (porch.reasons[0])
    )
    assert all(judged[f"/{cam}/20261127_220002.png"].verdict == "dismiss" for cam in ("yard", "porch"))


def test_bursts_off_and_one_upload_is_no_burst(judged: dict[str, VerdictRecord]) -> None:
    assert [judged[a].verdict for a in ("/lane/20261127_220000.png", "/lane/20261127_220003.png")] == [
        "review",
        "review",
    ]
    assert judged["/attic/first.png"].verdict == judged["/attic/second.png"].verdict == "review"
    others = [a for a in ALARMS if a.startswith(("/lane/", "/attic/"))]
    assert not any("frames within" in r for a in others for r in judged[a].reasons)


def test_burst_rules_merge_per_field_and_bad_values_are_named() -> None:
    from alarmsieve.rules import RulesError, load_rules
    from alarmsieve.vision.models import COCO_LABELS

    text = b"sites: {depot: {burst: {min_frames: 3}}}\ncameras: {gate: {site: depot, burst: {window_s: 4}}}\n"
    rules = load_rules({"/r.yaml": text}, known_labels=COCO_LABELS)
    gate = rules.for_camera("gate").burst
    assert (gate.window_s, gate.min_frames, gate.flicker, gate.source) == (4.0, 3, "keep", "sites/depot/cameras/gate")
    assert rules.for_camera("other").burst.window_s == 10 and rules.for_camera("other").burst.on
    for bad, message in (
        (b"defaults: {burst: {min_frames: 1}}", "burst.min_frames"),
        (b"defaults: {burst: {flicker: drop}}", "burst.flicker"),
        (b"defaults: {burst: {window: 5}}", "unknown field 'window'"),
        (b"cameras: {g: {zones: {z: {polygon: [[0, 0], [1, 0], [1, 1]], burst: {window_s: 3}}}}}", "not per zone"),
    ):
        with pytest.raises(RulesError, match=message):
            load_rules({"/r.yaml": bad}, known_labels=COCO_LABELS)
