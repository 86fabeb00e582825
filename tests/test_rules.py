"""Threat rules: loading, error reporting, per-camera resolution and judging."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarmsieve.rules import (
    DEFAULT_RULES_YAML,
    AlarmFacts,
    ObjectBox,
    PixelArea,
    RulesError,
    RuleSet,
    judge,
    load_rules,
)

# The detector's label list (YOLOX COCO_CLASSES order).
COCO = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
W, H = 1280, 720
BIG = (100.0, 100.0, 300.0, 500.0)  # 80 000 px, ~0.087 of the frame


def load(**files: str) -> RuleSet:
    return load_rules(
        {name.replace("__", "/") + ".yaml": text.encode() for name, text in files.items()}, known_labels=COCO
    )


def facts(*objects: tuple[str, float], camera: str = "cam-1", box: tuple[float, float, float, float] = BIG, **kw):
    fields = {"width": W, "height": H, "status": "ok", **kw}
    return AlarmFacts(camera=camera, objects=[ObjectBox(label=lb, score=s, box=box) for lb, s in objects], **fields)


DEFAULTS = load()


def rules_error(text: str, name: str = "site.yaml", **more: bytes) -> RulesError:
    with pytest.raises(RulesError) as info:
        load_rules({name: text.encode(), **more}, known_labels=COCO)
    return info.value


# --- defaults ----------------------------------------------------------------------------------


def test_default_values():
    p = DEFAULTS.for_camera("anything").policy("person")
    assert (p.severity, p.min_score, p.review_min_score, p.min_box_area) == ("alert", 0.5, 0.35, 0.0005)
    for vehicle in ("car", "truck", "bus", "motorcycle", "bicycle"):
        assert DEFAULTS.for_camera("x").policy(vehicle).severity == "ignore"
    assert DEFAULTS.for_camera("x").policy("cat").severity == "ignore"
    assert DEFAULTS.rule_path("x") == "defaults"


def test_default_yaml_is_commented_and_equivalent_to_no_files():
    assert DEFAULT_RULES_YAML.count("#") > 20
    for option in ("min_score", "review_min_score", "min_box_area", "{pixels:", "labels", "severity", "cameras"):
        assert option in DEFAULT_RULES_YAML
    shipped = load_rules({"rules.yaml": DEFAULT_RULES_YAML.encode()}, known_labels=COCO)
    assert shipped.for_camera("x") == DEFAULTS.for_camera("x")
    # The commented camera example is valid too once uncommented.
    example = [
        line.removeprefix("# ")
        for line in DEFAULT_RULES_YAML.splitlines()
        if line.startswith("# ") and line[2:].startswith(("cameras:", " "))
    ]
    example = example[example.index("cameras:") :]
    uncommented = load_rules({"cams.yaml": "\n".join(example).encode()}, known_labels=COCO)
    assert uncommented.for_camera("gate-2").policy("car").severity == "alert"
    assert uncommented.for_camera("parking").policy("person").min_box_area == PixelArea(pixels=900)


def test_person_high_score_alerts():
    j = judge(DEFAULTS, facts(("person", 0.8)))
    assert j.verdict == "alert"
    assert j.reasons[0] == "person 0.80 >= min_score 0.50: alert (defaults)"
    assert j.rule_path == "defaults"
    assert j.detections[0].kept and j.detections[0].severity == "alert"


def test_person_in_review_band_is_review():
    j = judge(DEFAULTS, facts(("person", 0.4)))
    assert j.verdict == "review"
    assert "review band [0.35, 0.50)" in j.reasons[0]


def test_person_low_score_dismissed():
    j = judge(DEFAULTS, facts(("person", 0.2)))
    assert j.verdict == "dismiss"
    assert j.reasons[0].startswith("no threat: 1 detection dropped")
    assert j.detections[0].why == "person 0.20 < review_min_score 0.35 (defaults)"
    assert not j.detections[0].kept


def test_cat_dismissed():
    j = judge(DEFAULTS, facts(("cat", 0.9)))
    assert j.verdict == "dismiss"
    assert "cat ignored" in j.reasons[0]


def test_car_ignored_by_default_but_configurable():
    j = judge(DEFAULTS, facts(("car", 0.9)))
    assert j.verdict == "dismiss"
    assert j.detections[0].why == "car ignored: severity ignore (defaults)"

    rules = load(site="defaults:\n  labels:\n    car: {severity: alert}\n")
    j = judge(rules, facts(("car", 0.9)))
    assert j.verdict == "alert"
    assert j.reasons[0] == "car 0.90 >= min_score 0.50: alert (defaults)"
    # Configuring car does not drop the built-in person rule.
    assert judge(rules, facts(("person", 0.9))).verdict == "alert"


def test_no_objects_dismissed_with_summary():
    j = judge(DEFAULTS, facts())
    assert (j.verdict, j.reasons) == ("dismiss", ["no threat: no objects detected"])


def test_small_box_dropped():
    tiny = (10.0, 10.0, 30.0, 30.0)  # 400 px = 0.00043 of 1280x720
    j = judge(DEFAULTS, facts(("person", 0.95), box=tiny))
    assert j.verdict == "dismiss"
    assert j.detections[0].why == "person 0.95 box area 0.0004 < min_box_area 0.0005 (defaults)"

    pixels = load(site="defaults:\n  min_box_area: {pixels: 500}\n")
    assert "box area 400 px < min_box_area 500 px" in judge(pixels, facts(("person", 0.95), box=tiny)).reasons[1]
    assert judge(pixels, facts(("person", 0.95), box=(0, 0, 30, 30))).verdict == "alert"

    off = load(site="defaults:\n  min_box_area: 0\n")
    assert judge(off, facts(("person", 0.95), box=tiny)).verdict == "alert"


def test_thresholds_are_inclusive():
    exact = (0.0, 0.0, 20.0, 20.0)  # 400 px
    pixels = load(site="defaults:\n  min_box_area: {pixels: 400}\n")
    assert judge(pixels, facts(("person", 0.5), box=exact)).verdict == "alert"
    fraction = load(site=f"defaults:\n  min_box_area: {400 / (W * H)!r}\n")
    assert judge(fraction, facts(("person", 0.5), box=exact)).verdict == "alert"
    assert judge(DEFAULTS, facts(("person", 0.35))).verdict == "review"


def test_fraction_area_unchecked_without_frame_size():
    j = judge(DEFAULTS, facts(("person", 0.95), box=(0, 0, 2, 2), width=None, height=None))
    assert j.verdict == "alert"  # never dismiss on doubt
    assert "frame size unknown" in j.reasons[0]


def test_camera_override_field_by_field():
    rules = load(
        site="defaults:\n  min_score: 0.6\n  labels:\n    person: {severity: alert}\n",
        cams=(
            "cameras:\n  gate-2:\n    min_score: 0.7\n    review_min_score: 0.7\n"
            "    labels:\n      car: {severity: alert}\n"
        ),
    )
    assert rules.rule_path("gate-2") == "cameras/gate-2"
    assert rules.origins == {"defaults": "site.yaml", "cameras/gate-2": "cams.yaml"}
    gate = rules.for_camera("gate-2")
    person = gate.policy("person")
    assert (person.severity, person.severity_from) == ("alert", "defaults")
    assert (person.min_score, person.min_score_from) == (0.7, "cameras/gate-2")
    assert person.min_box_area == 0.0005  # untouched: built-in
    j = judge(rules, facts(("person", 0.65), camera="gate-2"))
    assert j.verdict == "dismiss"  # band switched off on this camera
    assert j.detections[0].why == "person 0.65 < min_score 0.70 (cameras/gate-2)"
    assert j.rule_path == "cameras/gate-2"
    # Other cameras keep the defaults.
    assert judge(rules, facts(("person", 0.65), camera="gate-1")).verdict == "alert"
    assert judge(rules, facts(("car", 0.9), camera="gate-1")).verdict == "dismiss"
    j = judge(rules, facts(("car", 0.9), camera="gate-2"))
    assert j.verdict == "alert"
    assert j.reasons[0] == "car 0.90 >= min_score 0.70: alert (cameras/gate-2)"


def test_label_value_beats_block_value():
    rules = load(
        site="defaults:\n  labels:\n    person: {severity: alert, min_score: 0.8}\ncameras:\n  c: {min_score: 0.3}\n"
    )
    assert rules.for_camera("c").policy("person").min_score == 0.8
    assert rules.for_camera("c").policy("dog").min_score == 0.3


@pytest.mark.parametrize("status", ["rejected", "detector_error", "uniform"])
def test_bad_status_is_review(status):
    j = judge(DEFAULTS, facts(status=status, status_reason="lens covered"))
    assert j.verdict == "review"
    assert j.reasons[0].startswith(f"image status {status}: lens covered")
    assert "never dismiss" in j.reasons[0]


def test_bad_status_does_not_hide_an_alert():
    j = judge(DEFAULTS, facts(("person", 0.9), status="uniform", status_reason="dark"))
    assert j.verdict == "alert"
    assert j.reasons[1].startswith("image status uniform")


def test_mixed_detections_deciding_reason_first():
    j = judge(DEFAULTS, facts(("car", 0.99), ("person", 0.4), ("person", 0.9), ("person", 0.7)))
    assert j.verdict == "alert"
    assert j.reasons[0].startswith("person 0.90")
    assert len(j.detections) == 4
    assert [d.kept for d in j.detections] == [False, True, True, True]


def test_camera_rules_are_resolved_once_and_reused():
    # speed itself is measured in benchmarks/bench_rules.py; here: the per-camera resolution is cached
    rules = load(cams="cameras:\n" + "".join(f"  cam-{i}: {{min_score: 0.6}}\n" for i in range(200)))
    f = facts(*[("person", 0.3 + i / 20) for i in range(10)], ("car", 0.9), camera="cam-7")
    first = judge(rules, f)
    assert rules.for_camera("cam-7") is rules.for_camera("cam-7")
    assert judge(rules, f) == first and first.verdict == "alert"


# --- errors ------------------------------------------------------------------------------------


def test_bad_yaml_reports_file_and_line():
    err = rules_error("defaults:\n  min_score: 0.5\n  labels: [person\n", name="rules/site.yaml")
    assert err.file == "rules/site.yaml"
    assert err.line == 4
    assert "invalid YAML" in err.reason
    assert str(err).startswith("rules/site.yaml:4: invalid YAML")
    assert "fix" in str(err)


def test_bad_indentation_reports_line():
    err = rules_error("defaults:\n  min_score: 0.5\n   review_min_score: 0.3\n")
    assert err.line == 3


def test_unknown_label_lists_allowed_names():
    err = rules_error("cameras:\n  gate-2:\n    labels:\n      persn: {severity: alert}\n", name="cams.yaml")
    assert (err.file, err.line, err.field) == ("cams.yaml", 4, "cameras.gate-2.labels.persn")
    text = str(err)
    assert "unknown label 'persn'" in text
    assert "did you mean 'person'" in text
    for name in ("person", "bicycle", "toothbrush", "traffic light"):
        assert name in text


def test_unknown_field_typo():
    err = rules_error("defaults:\n  min_score: 0.5\n  min_scroe: 0.6\n")
    assert (err.line, err.field) == (3, "defaults.min_scroe")
    assert "unknown field 'min_scroe'" in err.reason
    assert "allowed here: min_score, review_min_score, min_box_area, labels" in str(err)

    err = rules_error("cameras:\n  c:\n    labels:\n      person: {severty: alert}\n")
    assert (err.line, err.field) == (4, "cameras.c.labels.person.severty")
    assert "severity" in err.fix

    err = rules_error("default:\n  min_score: 0.5\n")
    assert (err.line, err.field) == (1, "default")
    assert "defaults, cameras" in err.fix


def test_negative_score():
    err = rules_error("cameras:\n  c:\n    labels:\n      person:\n        min_score: -0.1\n")
    assert (err.line, err.field) == (5, "cameras.c.labels.person.min_score")
    assert "greater than or equal to 0" in err.reason
    assert "between 0 and 1" in str(err)


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ("defaults:\n  min_score: 1.5\n", "defaults.min_score", "less than or equal to 1"),
        ("defaults:\n  min_score: yes\n", "defaults.min_score", "expected a number"),
        ("defaults:\n  labels:\n    person: {severity: alrt}\n", "defaults.labels.person.severity", "'alert'"),
        ("defaults:\n  min_box_area: 400\n", "defaults.min_box_area", "{pixels: 400}"),
        ("defaults:\n  min_box_area: {pixel: 400}\n", "defaults.min_box_area", "unknown key 'pixel'"),
        ("defaults:\n  min_box_area: {pixels: -3}\n", "defaults.min_box_area", "greater than or equal to 0"),
        ("defaults:\n  min_score: 0.3\n  review_min_score: 0.4\n", "defaults", "review band"),
        ("cameras: [a, b]\n", "cameras", "valid dictionary"),
    ],
)
def test_invalid_values(text, field, needle):
    err = rules_error(text)
    assert err.field == field
    assert needle in str(err)
    assert err.line is not None


def test_duplicate_key_in_one_file():
    err = rules_error("cameras:\n  a: {}\n  b: {}\n  a: {min_score: 0.2}\n")
    assert err.line == 4
    assert "duplicate key 'a'" in err.reason


def test_duplicate_camera_across_files():
    with pytest.raises(RulesError) as info:
        load_rules(
            {"a.yaml": b"cameras:\n  gate-2: {min_score: 0.6}\n", "b.yml": b"\ncameras:\n  gate-2: {min_score: 0.7}\n"},
            known_labels=COCO,
        )
    err = info.value
    assert (err.file, err.line, err.field) == ("b.yml", 3, "cameras.gate-2")
    assert "a.yaml" in str(err) and "b.yml" in str(err)


def test_duplicate_defaults_across_files():
    with pytest.raises(RulesError, match=r"a\.yaml and b\.yaml"):
        load_rules({"a.yaml": b"defaults: {min_score: 0.6}\n", "b.yaml": b"defaults: {}\n"}, known_labels=COCO)


def test_non_yaml_and_empty_files_are_skipped():
    rules = load_rules({"README.md": b"# not rules: [", "empty.yaml": b"# nothing yet\n"}, known_labels=COCO)
    assert rules.cameras == {}


def test_top_level_must_be_mapping():
    err = rules_error("- person\n")
    assert "top level" in err.reason


def test_error_is_value_error_and_picklable():
    import pickle

    err = rules_error("defaults:\n  min_score: -1\n")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


# --- property: never dismiss a clear threat ---------------------------------------------------

# Few distinct values so that scores and areas often land exactly on a threshold (the boundary cases).
scores = st.one_of(st.sampled_from([0.0, 0.3, 0.35, 0.5, 0.6, 1.0]), st.floats(0.0, 1.0, allow_nan=False))
areas = st.one_of(
    st.sampled_from([0, 0.0005, 400 / (W * H), 0.01]),
    st.floats(0.0, 0.01, allow_nan=False),
    st.builds(lambda p: {"pixels": p}, st.sampled_from([0, 100, 400, 900, 5000])),
)
sides = st.one_of(st.sampled_from([0, 10, 20, 30, 100]), st.floats(0, 300))
LABELS = ["person", "car", "cat", "dog", "truck"]


@st.composite
def label_rules(draw):
    rule = {}
    if draw(st.booleans()):
        rule["severity"] = draw(st.sampled_from(["alert", "review", "ignore"]))
    if draw(st.booleans()):
        rule["min_score"] = draw(scores)
    if draw(st.booleans()):
        rule["min_box_area"] = draw(areas)
    return rule


@st.composite
def blocks(draw):
    block = {}
    if draw(st.booleans()):
        block["min_score"] = draw(scores)
    if draw(st.booleans()):
        block["min_box_area"] = draw(areas)
    block["labels"] = draw(st.dictionaries(st.sampled_from(LABELS), label_rules(), max_size=3))
    return block


objects = st.lists(
    st.builds(
        lambda label, score, x, y, w, h: ObjectBox(label=label, score=score, box=(x, y, x + w, y + h)),
        st.sampled_from(LABELS),
        scores,
        st.floats(0, 1000),
        st.floats(0, 600),
        sides,
        sides,
    ),
    max_size=6,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    defaults=blocks(),
    camera=blocks(),
    objs=objects,
    status=st.sampled_from(["ok", "ok", "ok", "rejected", "detector_error", "uniform"]),
    frame=st.sampled_from([(W, H), (640, 480), (None, None)]),
)
def test_never_dismiss_a_threat(defaults, camera, objs, status, frame):
    # Band value is drawn per block but kept <= min_score within the block (that is validated).
    for block in (defaults, camera):
        if "min_score" in block:
            block["review_min_score"] = block["min_score"] * 0.7
    text = yaml.safe_dump({"defaults": defaults, "cameras": {"cam": camera}})
    rules = load_rules({"r.yaml": text.encode()}, known_labels=COCO)
    f = AlarmFacts(camera="cam", width=frame[0], height=frame[1], status=status, objects=objs)
    j = judge(rules, f)
    eff = rules.for_camera("cam")
    frame_area = frame[0] * frame[1] if frame[0] else None

    def passes_area(o: ObjectBox) -> bool:
        threshold = eff.policy(o.label).min_box_area
        x1, y1, x2, y2 = o.box
        pixels = (x2 - x1) * (y2 - y1)
        if isinstance(threshold, PixelArea):
            return pixels >= threshold.pixels
        return frame_area is None or not threshold or pixels / frame_area >= threshold

    threat = any(
        eff.policy(o.label).severity == "alert" and o.score >= eff.policy(o.label).min_score and passes_area(o)
        for o in objs
    )
    if threat:
        assert j.verdict == "alert"
    if status != "ok":
        assert j.verdict != "dismiss"
    assert len(j.detections) == len(objs)
    assert j.reasons
