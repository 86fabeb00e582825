"""Threat rules, issue 4: sites/groups/zones/masks inheritance, schedules across DST, arming, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from alarmsieve.rules import AlarmFacts, ObjectBox, RulesError, RuleSet, judge, load_rules
from alarmsieve.rules.schema import WEEKDAYS, Window, armed_in, point_in_polygon
from tests.test_rules import COCO

W, H = 1000, 1000


def load(text: str, **more: str) -> RuleSet:
    files = {"site.yaml": text.encode(), **{k.replace("__", "/") + ".yaml": v.encode() for k, v in more.items()}}
    return load_rules(files, known_labels=COCO)


def error(text: str, **more: str) -> RulesError:
    with pytest.raises(RulesError) as info:
        load(text, **more)
    return info.value


def box_at(cx: float, bottom: float, size: float = 100) -> tuple[float, float, float, float]:
    """A box whose bottom-centre is at (cx, bottom) in normalised coordinates of the W x H frame."""
    x, y = cx * W, bottom * H
    return (x - size / 2, y - size, x + size / 2, y)


def alarm(camera: str, *objects: tuple[str, float, tuple[float, float, float, float]], when: datetime | None = None):
    objs = [ObjectBox(label=lb, score=s, box=b) for lb, s, b in objects]
    return AlarmFacts(camera=camera, width=W, height=H, status="ok", objects=objs, time=when)


SITE = """
sites:
  depot:
    timezone: Europe/London
    min_score: 0.55
    schedule:
      - {days: daily, start: '22:00', end: '06:00'}
groups:
  yard:
    labels:
      car: {severity: alert, min_score: 0.7}
cameras:
  gate-2:
    site: depot
    group: yard
    labels:
      person: {min_score: 0.6}
    zones:
      fence:
        polygon: [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]
        labels:
          person: {severity: review}
      drive:
        polygon: [[0, 0], [1, 0], [1, 0.5], [0, 0.5]]
        required: true
    masks:
      tree: [[0.9, 0.0], [1.0, 0.0], [1.0, 0.1]]
  shop:
    site: depot
    schedule: always
"""
NIGHT = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)  # 03:00 in London (GMT)
NOON = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


# --- inheritance ---------------------------------------------------------------------------------


def test_rule_paths_and_field_by_field_inheritance():
    rules = load(SITE)
    eff = rules.for_camera("gate-2")
    assert eff.rule_path == "sites/depot/cameras/gate-2"
    assert (eff.site, eff.group, eff.timezone) == ("depot", "yard", "Europe/London")
    person = eff.policy("person")
    assert (person.min_score, person.min_score_from) == (0.6, "sites/depot/cameras/gate-2")
    assert (person.severity, person.severity_from) == ("alert", "defaults")
    car = eff.policy("car")
    assert (car.severity, car.min_score, car.min_score_from) == ("alert", 0.7, "groups/yard")
    dog = eff.policy("dog")
    assert (dog.min_score, dog.min_score_from) == (0.55, "sites/depot")  # block-wide value from the site
    fence = {z.name: z for z in eff.zones}["fence"].rules.policy("person")
    assert (fence.severity, fence.severity_from) == ("review", "sites/depot/cameras/gate-2/zones/fence")
    assert fence.min_score == 0.6  # unset in the zone: falls through to the camera
    assert rules.for_camera("unknown").rule_path == "defaults"
    shop = rules.for_camera("shop").schedule  # `always` beats the site's schedule
    assert shop.source == "sites/depot/cameras/shop"
    assert all(shop.armed_at(NOON + timedelta(minutes=m)) for m in range(0, 7 * 24 * 60, 7))


LEVELS = ["defaults", "site", "group", "camera", "zone"]


@settings(max_examples=150, deadline=None)
@given(values=st.fixed_dictionaries({lv: st.one_of(st.none(), st.sampled_from([0.1, 0.2, 0.3, 0.4])) for lv in LEVELS}))
def test_inheritance_nearest_level_wins(values):
    def block(level: str) -> dict:
        return {} if values[level] is None else {"min_score": values[level], "review_min_score": 0.05}

    doc = {
        "defaults": block("defaults"),
        "sites": {"s": block("site")},
        "groups": {"g": block("group")},
        "cameras": {
            "c": {
                "site": "s",
                "group": "g",
                **block("camera"),
                "zones": {"z": {"polygon": [[0, 0], [1, 0], [1, 1]], **block("zone")}},
            }
        },
    }
    rules = load_rules({"r.yaml": yaml.safe_dump(doc).encode()}, known_labels=COCO)
    paths = {"defaults": "defaults", "site": "sites/s", "group": "groups/g", "camera": "sites/s/cameras/c"}
    paths["zone"] = "sites/s/cameras/c/zones/z"
    eff = rules.for_camera("c")
    for scope, levels in ((eff, LEVELS[:4]), (eff.zones[0].rules, LEVELS)):
        nearest = next((lv for lv in reversed(levels) if values[lv] is not None), None)
        p = scope.policy("dog")
        if nearest is None:
            assert (p.min_score, p.min_score_from) == (0.5, "defaults")  # built-in
        else:
            assert (p.min_score, p.min_score_from) == (values[nearest], paths[nearest])


# --- zones and masks -----------------------------------------------------------------------------


def test_required_zone_review_zone_and_mask():
    rules = load(SITE)
    j = judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=NIGHT))
    assert j.verdict == "alert"
    assert j.rule_path == "sites/depot/cameras/gate-2/zones/drive"
    assert j.detections[0].zone == "drive"

    j = judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.8)), when=NIGHT))
    assert j.detections[0].zone == "fence"
    assert not j.detections[0].kept
    assert j.detections[0].why == "person 0.90 outside required zone drive (sites/depot/cameras/gate-2)"

    # the same box in a review-only zone: drop the `required` flag of drive
    relaxed = load(SITE.replace("required: true", "required: false"))
    j = judge(relaxed, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.8)), when=NIGHT))
    assert (j.verdict, j.rule_path) == ("review", "sites/depot/cameras/gate-2/zones/fence")
    assert "review (sites/depot/cameras/gate-2/zones/fence" in j.reasons[0]

    j = judge(rules, alarm("gate-2", ("car", 0.9, box_at(0.95, 0.05, size=20)), when=NIGHT))
    assert j.verdict == "dismiss"
    assert j.detections[0].why == "car 0.90 in mask tree: ignored (sites/depot/cameras/gate-2)"


def test_box_touching_the_frame_edge_is_inside_an_edge_zone():
    rules = load(SITE.replace("required: true", "required: false"))
    j = judge(rules, alarm("gate-2", ("person", 0.9, (0, 500, W, H)), when=NIGHT))
    assert j.detections[0].zone == "fence"


def test_unknown_frame_size_with_required_zone_is_review_never_dismiss():
    rules = load(SITE)
    facts = AlarmFacts(
        camera="gate-2",
        width=None,
        height=None,
        status="ok",
        time=NIGHT,
        objects=[ObjectBox(label="person", score=0.9, box=(0, 0, 100, 100))],
    )
    j = judge(rules, facts)
    assert j.verdict == "review"
    assert "zones unchecked" in j.reasons[0]
    framed = load(SITE.replace("    group: yard\n", "    group: yard\n    frame: {width: 1000, height: 1000}\n", 1))
    assert judge(framed, facts).detections[0].zone == "drive"


def _reference_in_triangle(x, y, tri):
    (x1, y1), (x2, y2), (x3, y3) = tri
    d1 = (x - x2) * (y1 - y2) - (x1 - x2) * (y - y2)
    d2 = (x - x3) * (y2 - y3) - (x2 - x3) * (y - y3)
    d3 = (x - x1) * (y3 - y1) - (x3 - x1) * (y - y1)
    return min(abs(d1), abs(d2), abs(d3)), not ((d1 < 0 or d2 < 0 or d3 < 0) and (d1 > 0 or d2 > 0 or d3 > 0))


unit = st.floats(0, 1, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(tri=st.lists(st.tuples(unit, unit), min_size=3, max_size=3), x=unit, y=unit)
def test_zone_containment_matches_a_reference(tri, x, y):
    margin, inside = _reference_in_triangle(x, y, tri)
    assume(margin > 1e-9)  # on an edge either answer is right
    assert point_in_polygon(x, y, tri) == inside


@settings(max_examples=200, deadline=None)
@given(x1=unit, x2=unit, y1=unit, y2=unit, px=unit, py=unit, rot=st.integers(0, 3))
def test_rectangle_zone_containment(x1, x2, y1, y2, px, py, rot):
    lo_x, hi_x, lo_y, hi_y = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
    assume(min(abs(px - lo_x), abs(px - hi_x), abs(py - lo_y), abs(py - hi_y)) > 1e-9)
    rect = [(lo_x, lo_y), (hi_x, lo_y), (hi_x, hi_y), (lo_x, hi_y)]
    rect = rect[rot:] + rect[:rot]
    assert point_in_polygon(px, py, rect) == (lo_x < px < hi_x and lo_y < py < hi_y)


# --- box shape and count -------------------------------------------------------------------------


def test_max_area_aspect_ratio_and_min_count():
    rules = load(
        "cameras:\n  c:\n    max_box_area: 0.25\n    labels:\n      person: {aspect_ratio: [0.2, 1.0], min_count: 2}\n"
    )
    tall = (100.0, 100.0, 200.0, 400.0)  # 100 x 300: ratio 0.33
    wide = (100.0, 100.0, 400.0, 200.0)  # ratio 3
    huge = (0.0, 0.0, 900.0, 900.0)
    j = judge(rules, alarm("c", ("person", 0.9, tall)))
    assert j.verdict == "dismiss"
    assert j.detections[0].why == "person 0.90: 1 person < min_count 2 (cameras/c)"
    assert judge(rules, alarm("c", ("person", 0.9, tall), ("person", 0.8, tall))).verdict == "alert"
    j = judge(rules, alarm("c", ("person", 0.9, tall), ("person", 0.8, wide)))
    assert j.verdict == "dismiss"
    assert "aspect ratio 3.00 outside [0.2, 1] (cameras/c)" in j.detections[1].why
    j = judge(rules, alarm("c", ("person", 0.9, huge), ("person", 0.9, tall)))
    assert "box area 0.8100 > max_box_area 0.2500 (cameras/c)" in j.detections[0].why


# --- schedules and DST ---------------------------------------------------------------------------


def _reference_armed(windows: list[Window], local: datetime) -> bool:
    """Minute-of-week intervals: an independent formulation of the wall-clock windows."""
    week = 7 * 24 * 60
    now = local.weekday() * 24 * 60 + local.hour * 60 + local.minute
    for w in windows:
        for day in w.days:
            start = WEEKDAYS.index(day) * 24 * 60 + w.start
            length = (w.end - w.start) % (24 * 60) or 24 * 60
            if (now - start) % week < length:
                return True
    return False


clock = st.integers(0, 24 * 60 - 1).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")
windows = st.lists(
    st.builds(
        lambda days, start, end: {"days": days, "start": start, "end": end},
        st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True),
        clock,
        clock,
    ).filter(lambda w: w["start"] != w["end"]),
    min_size=1,
    max_size=3,
)
# Instants around the 2026 DST changes of both zones, and anywhere in the year.
TRANSITIONS = [
    datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # Europe/London springs forward
    datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # and falls back
    datetime(2026, 3, 8, 7, 0, tzinfo=UTC),  # America/New_York springs forward
    datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # and falls back
]
instants = st.one_of(
    st.builds(lambda t, m: t + timedelta(minutes=m), st.sampled_from(TRANSITIONS), st.integers(-36 * 60, 36 * 60)),
    st.datetimes(datetime(2026, 1, 1), datetime(2027, 1, 1)).map(lambda d: d.replace(tzinfo=UTC)),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ws=windows, when=instants, zone=st.sampled_from(["Europe/London", "America/New_York"]))
def test_schedule_matches_reference_across_dst(ws, when, zone):
    rules = load(yaml.safe_dump({"cameras": {"c": {"timezone": zone, "schedule": ws}}}))
    sched = rules.for_camera("c").schedule
    local = when.astimezone(ZoneInfo(zone))
    assert sched.armed_at(when) == _reference_armed(sched.windows, local)
    j = judge(rules, alarm("c", ("person", 0.9, box_at(0.5, 0.5)), when=when))
    assert (j.verdict == "alert") == _reference_armed(sched.windows, local)
    if j.verdict == "dismiss":
        assert "outside the armed schedule" in j.detections[0].why


@pytest.mark.parametrize(
    ("zone", "utc", "armed"),
    [
        # London springs forward 01:00 GMT -> 02:00 BST on Sun 29 Mar 2026; window 01:30-02:30 never occurs
        # except for its 02:00-02:30 wall-clock part right after the jump.
        ("Europe/London", datetime(2026, 3, 29, 0, 59, tzinfo=UTC), False),  # 00:59 GMT
        ("Europe/London", datetime(2026, 3, 29, 1, 0, tzinfo=UTC), True),  # 02:00 BST
        ("Europe/London", datetime(2026, 3, 29, 1, 30, tzinfo=UTC), False),  # 02:30 BST
        # falls back 02:00 BST -> 01:00 GMT on 25 Oct: 01:30 happens twice, armed both times
        ("Europe/London", datetime(2026, 10, 25, 0, 30, tzinfo=UTC), True),  # 01:30 BST
        ("Europe/London", datetime(2026, 10, 25, 1, 30, tzinfo=UTC), True),  # 01:30 GMT
        ("Europe/London", datetime(2026, 10, 25, 2, 30, tzinfo=UTC), False),  # 02:30 GMT
        # New York: 8 Mar 2026 02:00 EST -> 03:00 EDT; 1 Nov 02:00 EDT -> 01:00 EST
        ("America/New_York", datetime(2026, 3, 8, 6, 29, tzinfo=UTC), False),  # 01:29 EST
        ("America/New_York", datetime(2026, 3, 8, 6, 59, tzinfo=UTC), True),  # 01:59 EST, then the jump
        ("America/New_York", datetime(2026, 3, 8, 7, 0, tzinfo=UTC), False),  # 03:00 EDT
        ("America/New_York", datetime(2026, 11, 1, 5, 30, tzinfo=UTC), True),  # 01:30 EDT
        ("America/New_York", datetime(2026, 11, 1, 6, 30, tzinfo=UTC), True),  # 01:30 EST
    ],
)
def test_schedule_dst_edges(zone, utc, armed):
    window = [Window(days=["sun"], start="01:30", end="02:30")]  # type: ignore[list-item]
    assert armed_in(window, utc.astimezone(ZoneInfo(zone))) == armed


def test_overnight_window_belongs_to_its_start_day_and_end_is_exclusive():
    fri_night = [Window(days=["fri"], start="22:00", end="06:00")]  # type: ignore[list-item]
    tz = ZoneInfo("Europe/London")
    assert armed_in(fri_night, datetime(2026, 11, 27, 22, 0, tzinfo=tz))  # Fri 22:00
    assert armed_in(fri_night, datetime(2026, 11, 28, 5, 59, tzinfo=tz))  # Sat 05:59
    assert not armed_in(fri_night, datetime(2026, 11, 28, 6, 0, tzinfo=tz))  # Sat 06:00
    assert not armed_in(fri_night, datetime(2026, 11, 27, 5, 0, tzinfo=tz))  # Fri morning: Thu's window
    assert not armed_in(fri_night, datetime(2026, 11, 27, 21, 59, tzinfo=tz))


def test_schedule_uses_the_camera_time_zone():
    rules = load(SITE)
    assert judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=NIGHT)).verdict == "alert"
    j = judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=NOON))
    assert j.verdict == "dismiss"
    assert j.detections[0].why == (
        "person 0.90 disarmed: Fri 12:00 is outside the armed schedule daily 22:00-06:00 (Europe/London) (sites/depot)"
    )
    # 22:30 UTC is 22:30 in London but 17:30 in New York
    ny = load(SITE.replace("Europe/London", "America/New_York"))
    late = datetime(2026, 11, 27, 22, 30, tzinfo=UTC)
    assert judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=late)).verdict == "alert"
    assert judge(ny, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=late)).verdict == "dismiss"
    # no alarm time: schedules cannot be checked, never dismiss on doubt
    assert judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)))).verdict == "alert"


# --- arming --------------------------------------------------------------------------------------


def arming(scope: str, target: str, state: str, until: str | None = None) -> str:
    text = f"scope: {scope}\ntarget: {target}\nstate: {state}\nby: alice\nat: 2026-11-27T00:00:00Z\n"
    return text + (f"until: {until}\n" if until else "")


def test_operator_arming_beats_schedule_camera_beats_site_and_expires():
    disarmed = load(SITE, arming__site_depot=arming("site", "depot", "disarmed", "2026-11-27T06:00:00Z"))
    j = judge(disarmed, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=NIGHT))
    assert j.verdict == "dismiss"
    assert j.detections[0].why.startswith("person 0.90 disarmed (site depot disarmed by alice at 2026-11-27T00:00")
    later = NIGHT + timedelta(hours=4)  # 07:00: the override expired and the schedule says disarmed
    assert (
        "outside the armed schedule"
        in judge(disarmed, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=later)).reasons[1]
    )

    both = load(
        SITE,
        arming__site_depot=arming("site", "depot", "disarmed"),
        arming__camera_gate_2=arming("camera", "gate-2", "armed"),
    )
    assert judge(both, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=NOON)).verdict == "alert"
    assert judge(both, alarm("shop", ("person", 0.9, box_at(0.5, 0.3)), when=NOON)).verdict == "dismiss"


def test_bad_frame_is_review_even_when_disarmed():
    rules = load(SITE, arming__site_depot=arming("site", "depot", "disarmed"))
    facts = AlarmFacts(
        camera="gate-2", width=W, height=H, status="uniform", status_reason="lens covered", objects=[], time=NIGHT
    )
    assert judge(rules, facts).verdict == "review"


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "field", "needle"),
    [
        (
            "cameras:\n  c:\n    zones:\n      z:\n        polygon: [[0, 0], [1, 1]]\n",
            5,
            "cameras.c.zones.z.polygon",
            "at least 3 points",
        ),
        (
            "cameras:\n  c:\n    zones:\n      z:\n        polygon: [[0, 0], [1.5, 1], [0, 1]]\n",
            5,
            "cameras.c.zones.z.polygon.1",
            "outside 0..1",
        ),
        (
            "cameras:\n  c:\n    masks:\n      m: [[0, 0], [1, -0.1], [0, 1]]\n",
            4,
            "cameras.c.masks.m.1",
            "outside 0..1",
        ),
        ("sites:\n  s:\n    timezone: Europe/Londn\n", 3, "sites.s.timezone", "did you mean 'Europe/London'"),
        ("cameras:\n  c:\n    timezone: Mars/Olympus\n", 3, "cameras.c.timezone", "unknown time zone"),
        ("cameras:\n  c:\n    site: depot\n", 3, "cameras.c.site", "unknown site 'depot'"),
        ("groups:\n  yard: {}\ncameras:\n  c:\n    group: yrd\n", 5, "cameras.c.group", "did you mean 'yard'"),
        (
            "cameras:\n  c:\n    zones:\n      z:\n        polygon: [[0, 0], [1, 0], [0, 1]]\n"
            "        labels:\n          persn: {severity: review}\n",
            7,
            "cameras.c.zones.z.labels.persn",
            "unknown label",
        ),
        ("sites:\n  s:\n    labels:\n      kar: {severity: alert}\n", 4, "sites.s.labels.kar", "did you mean 'car'"),
        (
            "defaults:\n  schedule:\n    - {days: daily, start: '25:00', end: '06:00'}\n",
            3,
            "defaults.schedule.0.start",
            "not a time of day",
        ),
        (
            "defaults:\n  schedule:\n    - {days: [mon, tues], start: '22:00', end: '06:00'}\n",
            3,
            "defaults.schedule.0.days.1",
            "'mon'",
        ),
        ("cameras:\n  c:\n    labels:\n      person: {aspect_ratio: [2, 1]}\n", 4, "cameras.c.labels.person", "aspect"),
        (
            "cameras:\n  c:\n    zones:\n      z:\n        polygon: [[0, 0], [1, 0], [0, 1]]\n        requird: true\n",
            6,
            "cameras.c.zones.z.requird",
            "unknown field",
        ),
        ("defaults:\n  min_score: 0.5\n  labels: [person\n", 4, "", "invalid YAML"),
    ],
)
def test_validation_errors_name_file_line_and_field(text, line, field, needle):
    err = error(text)
    assert (err.file, err.line, err.field) == ("site.yaml", line, field), str(err)
    assert needle in str(err)
    assert "fix:" in str(err)


def test_unquoted_times_are_times_not_base_60_numbers():
    rules = load("defaults:\n  schedule:\n    - {days: weekdays, start: 22:00, end: 6:00}\n")
    w = rules.defaults.schedule[0]
    assert (w.start, w.end, w.days) == (22 * 60, 6 * 60, list(WEEKDAYS[:5]))
    err = error("defaults:\n  schedule:\n    - {start: 2200, end: '06:00'}\n")
    assert "quote it" in str(err)


def test_arming_file_errors():
    err = error("sites: {}\n", arming__site_depot=arming("site", "depot", "disarmed"))
    assert (err.file, err.line, err.field) == ("arming/site_depot.yaml", 2, "target")
    assert "unknown site 'depot'" in str(err)
    err = error("", arming__x="scope: site\ntarget: a\nstate: off\nby: me\nat: 2026-01-01T00:00:00Z\n")
    assert err.field == "state"
    err = error("", arming__x="scope: camera\ntarget: a\nstate: armed\nby: me\nat: 2026-01-01T00:00:00\n")
    assert err.field == "at" and "timezone" in str(err)


def test_duplicate_site_across_files():
    err = error("sites:\n  depot: {}\n", other="sites:\n  depot: {min_score: 0.3}\n")
    assert err.field == "sites.depot"
    assert "site 'depot' is defined in both" in str(err)


def test_naive_alarm_time_is_utc():
    rules = load(SITE)
    naive = datetime(2026, 11, 27, 3, 0)
    assert judge(rules, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=naive)).verdict == "alert"
    later = load(SITE, arming__site_depot=arming("site", "depot", "disarmed", "2026-11-27T02:00:00Z"))
    assert judge(later, alarm("gate-2", ("person", 0.9, box_at(0.5, 0.3)), when=naive)).verdict == "alert"
