"""Threat rules: the YAML schema, loading from a rules repo, and per-camera resolution.

Rules are layered, field by field: built-in values (``default_rules.yaml``) < the repo's
``defaults:`` block < the camera's site (``sites:``) < its group (``groups:``) < the camera
(``cameras:``) < a zone of the camera. Inside the merged view a label's own value beats the
block-wide one. Files under ``arming/`` hold the operators' arm/disarm state (who, when, until).
See docs/rules.md.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.resources
import re
import zoneinfo
from collections.abc import Collection, Mapping
from datetime import datetime
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Severity = Literal["alert", "review", "ignore"]

DEFAULTS_PATH = "defaults"
_HELP = "see alarmsieve/rules/default_rules.yaml (DEFAULT_RULES_YAML), which shows every option"


class RulesError(ValueError):
    """A rules file is wrong. ``str()`` names the file, line, field, what is wrong and how to fix it."""

    def __init__(self, file: str, line: int | None, field: str, reason: str, fix: str = "") -> None:
        self.file = file
        self.line = line
        self.field = field
        self.reason = reason
        self.fix = fix
        super().__init__(file, line, field, reason, fix)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {self.field}: {self.reason}" if self.field else f"{where}: {self.reason}"
        return f"{text} — fix: {self.fix}" if self.fix else text


class _Strict(BaseModel):
    # A typo in a rules file must be an error, never a silently ignored field.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _reject_bool(value: Any) -> Any:
    # YAML turns yes/no/on/off into booleans, which pydantic would otherwise read as 1.0/0.0.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Score = Annotated[float, BeforeValidator(_reject_bool), Field(ge=0.0, le=1.0)]


class PixelArea(_Strict):
    """``min_box_area: {pixels: N}``: box width x height in pixels."""

    pixels: Annotated[int, BeforeValidator(_reject_bool), Field(ge=0)]


def _parse_area(value: Any) -> Any:
    if isinstance(value, PixelArea):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a fraction or {{pixels: N}}, got {str(value).lower()}")
    if isinstance(value, int | float):
        if not 0 <= value < 1:
            raise ValueError(
                f"{value} is not a fraction of the frame area (0 <= x < 1); "
                f"for a pixel count write {{pixels: {max(int(value), 0)}}}"
            )
        return float(value)
    if isinstance(value, Mapping):
        if unknown := [str(k) for k in value if k != "pixels"]:
            raise ValueError(f"unknown key {', '.join(map(repr, unknown))}; write {{pixels: N}}")
        try:
            return PixelArea.model_validate(value)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"expected {{pixels: N}} with N a whole number >= 0 ({where}: {err['msg']})") from None
    raise ValueError("expected a fraction of the frame area (0 <= x < 1) or {pixels: N}")


# A plain number is always a fraction of the frame; pixels are always spelled {pixels: N}.
AreaThreshold = Annotated[float | PixelArea, BeforeValidator(_parse_area)]


def _check_band(min_score: float | None, review_min_score: float | None) -> None:
    if min_score is not None and review_min_score is not None and review_min_score > min_score:
        raise ValueError(
            f"review_min_score {review_min_score} is above min_score {min_score}; "
            "the review band is [review_min_score, min_score)"
        )


def _check_aspect(value: tuple[float, float] | None) -> None:
    if value is not None and value[0] > value[1]:
        raise ValueError(f"aspect_ratio [{value[0]}, {value[1]}]: the minimum is above the maximum")


def _parse_aspect(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2 and not any(isinstance(v, bool) for v in value):
        return value
    raise ValueError("expected [min, max] of box width / height, e.g. [0.2, 1.5]")


_Positive = Annotated[float, Field(gt=0)]
AspectRange = Annotated[tuple[_Positive, _Positive], BeforeValidator(_parse_aspect)]
Count = Annotated[int, BeforeValidator(_reject_bool), Field(ge=1)]

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_SETS = {"daily": WEEKDAYS, "weekdays": WEEKDAYS[:5], "weekends": WEEKDAYS[5:]}


def _parse_days(value: Any) -> Any:
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _DAY_SETS:
            return list(_DAY_SETS[key])
        return [value]
    return value


def _parse_clock(value: Any) -> int:
    """'HH:MM' (00:00 .. 24:00) -> minutes since midnight."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"expected a time 'HH:MM', got the number {value}; quote it, e.g. '06:00'")
    if not isinstance(value, str):
        raise ValueError(f"expected a time 'HH:MM', got {value!r}")
    hh, sep, mm = value.strip().partition(":")
    if not (sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and len(hh) <= 2):
        raise ValueError(f"expected a time 'HH:MM', got {value!r}")
    minutes = int(hh) * 60 + int(mm)
    if int(mm) >= 60 or minutes > 24 * 60:
        raise ValueError(f"{value!r} is not a time of day (00:00 .. 24:00)")
    return minutes


Clock = Annotated[int, BeforeValidator(_parse_clock)]


def clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


class Window(_Strict):
    """One armed window, in the camera's local wall-clock time: ``{days: weekdays, start: '22:00', end: '06:00'}``.

    ``end`` before ``start`` runs past midnight into the next day; the window belongs to the day it starts.
    """

    days: Annotated[list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]], BeforeValidator(_parse_days)] = (
        Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    )
    start: Clock
    end: Clock

    @model_validator(mode="after")
    def _not_empty(self) -> Window:
        if self.start == self.end:
            raise ValueError("start equals end: an empty window; for all day write start: '00:00', end: '24:00'")
        if self.start == 24 * 60:
            raise ValueError("start 24:00: a window starts at 23:59 at the latest")
        return self

    def text(self) -> str:
        days = next((k for k, v in _DAY_SETS.items() if tuple(self.days) == v), ",".join(self.days))
        return f"{days} {clock_text(self.start)}-{clock_text(self.end)}"


ALWAYS = {"days": list(WEEKDAYS), "start": "00:00", "end": "24:00"}


def _parse_schedule(value: Any) -> Any:
    if value == "always":
        return [ALWAYS]
    if isinstance(value, str | int | float | Mapping):
        raise ValueError("expected `always` or a list of windows like [{days: weekdays, start: '22:00', end: '06:00'}]")
    return value


Schedule = Annotated[list[Window], BeforeValidator(_parse_schedule)]


def _check_zone(value: Any) -> Any:
    if isinstance(value, str):
        return value
    raise ValueError("expected an IANA time zone name such as Europe/London")


@functools.cache
def _zone_names() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


@functools.cache
def tz_of(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _valid_timezone(value: str) -> str:
    try:
        tz_of(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(value, _zone_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown time zone {value!r}{hint}") from None
    return value


TimeZoneName = Annotated[str, BeforeValidator(_check_zone), AfterValidator(_valid_timezone)]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)")
_UNIT_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """``2h``, ``90m``, ``1d``, ``45s`` -> seconds; ``off`` -> 0 (the check is off)."""
    if value is False:  # YAML reads a bare `off` as false
        return 0.0
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration like '2h', '90m', '1d' or 'off', got {value!r}")
    key = value.strip().lower()
    if key == "off":
        return 0.0
    match = _DURATION.fullmatch(key)
    if not match:
        raise ValueError(f"expected a duration like '2h', '90m', '1d' or 'off', got {value!r}")
    return float(match[1]) * _UNIT_S[match[2]]


Duration = Annotated[float, BeforeValidator(parse_duration)]
ClockKind = Literal["local", "utc"]
CLOCK_SKEW_MAX_S = 2 * 3600.0  # built-in clock_skew_max: 2h


def _parse_point(value: Any) -> Any:
    if isinstance(value, list | tuple) and len(value) == 2:
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ValueError(f"point {list(value)}: coordinates must be numbers")
            if not 0.0 <= v <= 1.0:
                raise ValueError(
                    f"point {list(value)} is outside 0..1: zone and mask points are fractions of the frame "
                    "(x from the left, y from the top)"
                )
        return value
    raise ValueError(f"expected a point [x, y] with 0 <= x, y <= 1, got {value!r}")


Point = Annotated[tuple[float, float], BeforeValidator(_parse_point)]


def _check_polygon(value: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(value) < 3:
        raise ValueError(f"a polygon needs at least 3 points, got {len(value)}")
    return value


Polygon = Annotated[list[Point], AfterValidator(_check_polygon)]


class LabelRule(_Strict):
    """Rules of one label; unset fields are inherited (see module docstring)."""

    severity: Severity | None = None
    min_score: Score | None = None
    review_min_score: Score | None = None
    min_box_area: AreaThreshold | None = None
    max_box_area: AreaThreshold | None = None
    aspect_ratio: AspectRange | None = None
    min_count: Count | None = None

    @model_validator(mode="after")
    def _band(self) -> LabelRule:
        _check_band(self.min_score, self.review_min_score)
        _check_aspect(self.aspect_ratio)
        return self


class BurstRule(_Strict):
    """``burst:``: snapshots of one camera seconds apart are one event (see docs/rules.md).

    ``window_s``: frames of the camera within this many seconds of the alarm (before or after) belong to
    its event (0: bursts off). ``min_frames``: a review-band detection of an alert label seen in at least
    this many frames of the event (the alarm's included) is confirmed: ``alert``. ``flicker``: what happens
    to a review-band detection seen in this frame only while at least two other frames of the event show
    nothing like it: ``keep`` (it stays ``review``; the reason says it is a one-frame flicker) or
    ``dismiss``."""

    window_s: Annotated[float, BeforeValidator(_reject_bool), Field(ge=0, le=3600)] | None = None
    min_frames: Annotated[int, BeforeValidator(_reject_bool), Field(ge=2, le=100)] | None = None
    flicker: Literal["keep", "dismiss"] | None = None


def _parse_detectors(value: Any) -> Any:
    # `detectors: yolox-nano, picodet-s-416` (one string) is as good as a YAML list
    return [n.strip() for n in value.split(",") if n.strip()] if isinstance(value, str) else value


def _check_detector_list(value: list[str]) -> list[str]:
    if not value:
        raise ValueError("name at least one detector, or remove `detectors:` to inherit the set")
    if len(set(value)) != len(value):
        raise ValueError(f"a detector is named twice: {', '.join(value)}")
    return value


# Detector set (catalogue names, checked in load_rules): the detect stage fuses their boxes.
DetectorNames = Annotated[list[str], BeforeValidator(_parse_detectors), AfterValidator(_check_detector_list)]


def _none_is_empty(value: Any) -> Any:
    # `gate-2:` with nothing under it is an empty override, not an error.
    return {} if value is None else value


class RuleBlock(_Strict):
    """``defaults:``, a site, a group, a camera or a zone; every field optional so overrides can be partial."""

    min_score: Score | None = None
    review_min_score: Score | None = None
    min_box_area: AreaThreshold | None = None
    labels: dict[str, Annotated[LabelRule, BeforeValidator(_none_is_empty)]] = Field(default_factory=dict)
    max_box_area: AreaThreshold | None = None
    aspect_ratio: AspectRange | None = None
    min_count: Count | None = None
    schedule: Schedule | None = None
    burst: Annotated[BurstRule, BeforeValidator(_none_is_empty)] | None = None
    detectors: DetectorNames | None = None
    # camera time (docs/rules.md "Camera time"): what a time without an offset means, and how far a
    # camera's clock may be from the upload time before schedules use the upload time instead
    clock: ClockKind | None = None
    clock_skew_max: Duration | None = None

    @model_validator(mode="after")
    def _band(self) -> RuleBlock:
        _check_band(self.min_score, self.review_min_score)
        _check_aspect(self.aspect_ratio)
        return self


class SiteBlock(RuleBlock):
    """``sites: {depot: ...}``: rules and the time zone of every camera of a site."""

    timezone: TimeZoneName | None = None


class ZoneBlock(RuleBlock):
    """A named zone of a camera: a polygon in normalised coordinates and the rules inside it."""

    polygon: Polygon
    required: bool = False

    @model_validator(mode="after")
    def _no_burst(self) -> ZoneBlock:
        if self.burst is not None:
            raise ValueError("burst is set per camera (or site, group, defaults), not per zone; move it up")
        if self.detectors is not None:
            raise ValueError("detectors run on the whole frame: set them per camera (or site, group, defaults)")
        for name in ("clock", "clock_skew_max"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is set per camera (or site, group, defaults), not per zone; move it up")
        return self


class FrameSize(_Strict):
    width: Annotated[int, Field(gt=0)]
    height: Annotated[int, Field(gt=0)]


class CameraBlock(RuleBlock):
    """One camera: its site, group, time zone, frame size, zones and masks, and its own rules."""

    site: str | None = None
    group: str | None = None
    timezone: TimeZoneName | None = None
    frame: FrameSize | None = None
    zones: dict[str, ZoneBlock] = Field(default_factory=dict)
    masks: dict[str, Polygon] = Field(default_factory=dict)


CameraBlocks = dict[str, Annotated[CameraBlock, BeforeValidator(_none_is_empty)]]
SiteBlocks = dict[str, Annotated[SiteBlock, BeforeValidator(_none_is_empty)]]
GroupBlocks = dict[str, Annotated[RuleBlock, BeforeValidator(_none_is_empty)]]


class RuleFile(_Strict):
    """One YAML file of the rules repo."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    defaults: RuleBlock | None = None
    cameras: CameraBlocks = Field(default_factory=dict)
    sites: SiteBlocks = Field(default_factory=dict)
    groups: GroupBlocks = Field(default_factory=dict)


ARMING_DIR = "arming"


class ArmingState(_Strict):
    """``arming/<scope>-<target>.yaml``: an operator armed or disarmed a site or a camera (who, when, until)."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    scope: Literal["site", "camera"]
    target: str
    state: Literal["armed", "disarmed"]
    by: str
    at: AwareDatetime
    until: AwareDatetime | None = None
    note: str = ""

    def active(self, when: datetime | None) -> bool:
        return self.until is None or when is None or when < self.until

    def text(self) -> str:
        until = f" until {self.until.isoformat()}" if self.until else ""
        return f"{self.scope} {self.target} {self.state} by {self.by} at {self.at.isoformat()}{until}"

    @property
    def path(self) -> str:
        return f"{self.scope}s/{self.target}"


def arming_file(scope: str, target: str) -> str:
    return f"/{ARMING_DIR}/{scope}-{target}.yaml"


class LabelPolicy(_Strict):
    """Fully resolved rules of one label on one camera (or zone), with the rule path each value came from."""

    severity: Severity
    min_score: float
    review_min_score: float  # == min_score when the band is off
    min_box_area: float | PixelArea  # 0.0 when off
    severity_from: str
    min_score_from: str
    review_min_score_from: str
    min_box_area_from: str
    max_box_area: float | PixelArea | None = None
    max_box_area_from: str = DEFAULTS_PATH
    aspect_ratio: tuple[float, float] | None = None
    aspect_ratio_from: str = DEFAULTS_PATH
    min_count: int = 1
    min_count_from: str = DEFAULTS_PATH


class ResolvedSchedule(_Strict):
    windows: list[Window] | None  # None: always armed
    source: str
    timezone: str

    def armed_at(self, when: datetime) -> bool:
        if self.windows is None:
            return True
        return armed_in(self.windows, when.astimezone(tz_of(self.timezone)))

    def text(self) -> str:
        if self.windows is None:
            return "always armed"
        return "armed " + "; ".join(w.text() for w in self.windows) + f" ({self.timezone})"


def armed_in(windows: list[Window], local: datetime) -> bool:
    """Is a local wall-clock time inside one of the windows? (Wall clock: DST moves the window with it.)"""
    minute = local.hour * 60 + local.minute
    today = WEEKDAYS[local.weekday()]
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    for w in windows:
        if w.start < w.end:
            if today in w.days and w.start <= minute < w.end:
                return True
        else:  # past midnight: the evening part today, the morning part belongs to yesterday's window
            if today in w.days and minute >= w.start:
                return True
            if yesterday in w.days and minute < w.end:
                return True
    return False


class ResolvedBurst(_Strict):
    """The burst rules of one camera, field by field from the nearest layer that writes them."""

    window_s: float
    min_frames: int
    flicker: Literal["keep", "dismiss"]
    source: str  # the most specific rule path that writes a burst field

    @property
    def on(self) -> bool:
        return self.window_s > 0


class ResolvedClock(_Strict):
    """How one camera's times are read: its clock kind and skew limit, each with the rule path it came from."""

    kind: ClockKind = "local"
    kind_from: str = DEFAULTS_PATH
    skew_max_s: float = CLOCK_SKEW_MAX_S  # 0: no skew check
    skew_max_from: str = DEFAULTS_PATH


class EffectiveZone(_Strict):
    name: str
    path: str
    polygon: list[tuple[float, float]]
    bbox: tuple[float, float, float, float]
    required: bool
    rules: EffectiveRules


class EffectiveRules(_Strict):
    """The rules one camera (or one zone of it) is judged by: a label -> policy table built once."""

    rule_path: str
    labels: dict[str, LabelPolicy]
    other: LabelPolicy  # labels not listed anywhere: severity ignore
    camera: str = ""
    site: str | None = None
    group: str | None = None
    timezone: str = "UTC"
    timezone_from: str = DEFAULTS_PATH  # the camera or site that declared it (defaults: UTC)
    clock: ResolvedClock = ResolvedClock()
    frame: FrameSize | None = None
    schedule: ResolvedSchedule | None = None
    zones: list[EffectiveZone] = Field(default_factory=list)
    masks: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)
    burst: ResolvedBurst = ResolvedBurst(window_s=0, min_frames=2, flicker="keep", source=DEFAULTS_PATH)

    def policy(self, label: str) -> LabelPolicy:
        return self.labels.get(label, self.other)

    @property
    def required_zones(self) -> list[EffectiveZone]:
        return [z for z in self.zones if z.required]


EffectiveZone.model_rebuild()


def point_in_polygon(x: float, y: float, polygon: list[tuple[float, float]]) -> bool:
    """Even-odd ray casting; a point exactly on an edge may fall either side."""
    inside = False
    n = len(polygon)
    j = n - 1
    for i in range(n):
        xi, yi = polygon[i]
        xj, yj = polygon[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def _bbox(polygon: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    xs = [p[0] for p in polygon]
    ys = [p[1] for p in polygon]
    return min(xs), min(ys), max(xs), max(ys)


_LABEL_FIELDS = (
    "severity",
    "min_score",
    "review_min_score",
    "min_box_area",
    "max_box_area",
    "aspect_ratio",
    "min_count",
)
# Built-in values of the fields default_rules.yaml leaves unset (off).
_BUILTIN_OFF: dict[str, Any] = {"max_box_area": None, "aspect_ratio": None, "min_count": 1}

Layers = list[tuple[RuleBlock, str]]


def _resolve_labels(layers: Layers) -> tuple[dict[str, LabelPolicy], LabelPolicy]:
    def block_value(name: str) -> tuple[Any, str]:
        for block, src in layers:
            value = getattr(block, name)
            if value is not None:
                return value, src
        if name in _BUILTIN_OFF:
            return _BUILTIN_OFF[name], DEFAULTS_PATH
        raise AssertionError(f"built-in defaults lack {name}")  # default_rules.yaml sets them all

    def policy(label: str | None) -> LabelPolicy:
        found: dict[str, tuple[Any, str]] = {}
        for name in _LABEL_FIELDS:
            for block, src in layers:
                rule = block.labels.get(label) if label is not None else None
                if rule is not None and getattr(rule, name) is not None:
                    found[name] = (getattr(rule, name), src)
                    break
            else:
                found[name] = ("ignore", DEFAULTS_PATH) if name == "severity" else block_value(name)
        min_score, min_src = found["min_score"]
        review, review_src = found["review_min_score"]
        if review > min_score:  # set in different layers: an empty band, not an error
            review, review_src = min_score, min_src
        return LabelPolicy(
            severity=found["severity"][0],
            min_score=min_score,
            review_min_score=review,
            min_box_area=found["min_box_area"][0],
            severity_from=found["severity"][1],
            min_score_from=min_src,
            review_min_score_from=review_src,
            min_box_area_from=found["min_box_area"][1],
            max_box_area=found["max_box_area"][0],
            max_box_area_from=found["max_box_area"][1],
            aspect_ratio=found["aspect_ratio"][0],
            aspect_ratio_from=found["aspect_ratio"][1],
            min_count=found["min_count"][0],
            min_count_from=found["min_count"][1],
        )

    names = sorted({label for block, _ in layers for label in block.labels})
    return {n: policy(n) for n in names}, policy(None)


def _resolve_schedule(layers: Layers, timezone: str) -> ResolvedSchedule:
    for block, src in layers:
        if block.schedule is not None:
            return ResolvedSchedule(windows=list(block.schedule), source=src, timezone=timezone)
    return ResolvedSchedule(windows=None, source=DEFAULTS_PATH, timezone=timezone)


def _resolve_clock(layers: Layers) -> ResolvedClock:
    found: dict[str, Any] = {}
    for name, key in (("clock", "kind"), ("clock_skew_max", "skew_max_s")):
        for block, src in layers:
            if getattr(block, name) is not None:
                found[key], found[f"{key.removesuffix('_s')}_from"] = getattr(block, name), src
                break
    return ResolvedClock(**found)


_BURST_OFF: dict[str, Any] = {"window_s": 0.0, "min_frames": 2, "flicker": "keep"}


def _resolve_burst(layers: Layers) -> ResolvedBurst:
    found: dict[str, Any] = {}
    # the most specific layer that writes a burst field names the rules in the reasons
    source = next((src for block, src in layers if block.burst is not None), DEFAULTS_PATH)
    for name in ("window_s", "min_frames", "flicker"):
        for block, _ in layers:
            if block.burst is not None and getattr(block.burst, name) is not None:
                found[name] = getattr(block.burst, name)
                break
        else:
            found[name] = _BURST_OFF[name]
    return ResolvedBurst(**found, source=source)


class RuleSet(_Strict):
    """All rules of a repo, merged. ``origins`` maps a rule path to the file that defined it."""

    defaults: RuleBlock = Field(default_factory=RuleBlock)
    cameras: CameraBlocks = Field(default_factory=dict)
    sites: SiteBlocks = Field(default_factory=dict)
    groups: GroupBlocks = Field(default_factory=dict)
    arming: dict[str, ArmingState] = Field(default_factory=dict)  # "sites/x" | "cameras/x" -> state
    origins: dict[str, str] = Field(default_factory=dict)

    # Resolved once per camera: judging must stay far below a millisecond per alarm.
    _effective: dict[str, EffectiveRules] = PrivateAttr(default_factory=dict)

    def rule_path(self, camera: str) -> str:
        block = self.cameras.get(camera)
        if block is None:
            return DEFAULTS_PATH
        return f"sites/{block.site}/cameras/{camera}" if block.site else f"cameras/{camera}"

    def for_camera(self, camera: str) -> EffectiveRules:
        eff = self._effective.get(camera)
        if eff is None:
            eff = self._resolve(camera)
            self._effective[camera] = eff
        return eff

    def detectors_for(self, camera: str) -> list[str] | None:
        """The detector set of a camera: camera < group < site < defaults, the nearest that sets one;
        None when no layer does (the detect stage's ``--detectors`` then decide)."""
        block = self.cameras.get(camera)
        layers: list[RuleBlock | None] = [block]
        if block is not None and block.group:
            layers.append(self.groups.get(block.group))
        if block is not None and block.site:
            layers.append(self.sites.get(block.site))
        layers.append(self.defaults)
        return next((list(b.detectors) for b in layers if b is not None and b.detectors is not None), None)

    def arming_for(self, camera: str) -> ArmingState | None:
        """The operator's arming state nearest to the camera (camera beats site), active or not."""
        found = self.arming.get(f"cameras/{camera}")
        if found is None:
            block = self.cameras.get(camera)
            if block is not None and block.site:
                found = self.arming.get(f"sites/{block.site}")
        return found

    def _resolve(self, camera: str) -> EffectiveRules:
        block = self.cameras.get(camera)
        path = self.rule_path(camera)
        # Most specific layer first; the built-in block is reported as "defaults" too.
        layers: Layers = [(self.defaults, DEFAULTS_PATH), (BUILTIN_DEFAULTS, DEFAULTS_PATH)]
        site_block = self.sites.get(block.site) if block is not None and block.site else None
        if site_block is not None and block is not None:
            layers.insert(0, (site_block, f"sites/{block.site}"))
        if block is not None and block.group and block.group in self.groups:
            layers.insert(0, (self.groups[block.group], f"groups/{block.group}"))
        if block is not None:
            layers.insert(0, (block, path))
        timezone, timezone_from = "UTC", DEFAULTS_PATH
        if block is not None and block.timezone:
            timezone, timezone_from = block.timezone, path
        elif site_block is not None and site_block.timezone and block is not None:
            timezone, timezone_from = site_block.timezone, f"sites/{block.site}"
        labels, other = _resolve_labels(layers)
        zones = []
        for name, zone in (block.zones if block is not None else {}).items():
            zpath = f"{path}/zones/{name}"
            zlayers = [(zone, zpath), *layers]
            zlabels, zother = _resolve_labels(zlayers)
            zrules = EffectiveRules(
                rule_path=zpath,
                labels=zlabels,
                other=zother,
                camera=camera,
                timezone=timezone,
                schedule=_resolve_schedule(zlayers, timezone),
            )
            polygon = list(zone.polygon)
            zones.append(
                EffectiveZone(
                    name=name, path=zpath, polygon=polygon, bbox=_bbox(polygon), required=zone.required, rules=zrules
                )
            )
        return EffectiveRules(
            rule_path=path,
            labels=labels,
            other=other,
            camera=camera,
            site=block.site if block else None,
            group=block.group if block else None,
            timezone=timezone,
            timezone_from=timezone_from,
            clock=_resolve_clock(layers),
            frame=block.frame if block else None,
            schedule=_resolve_schedule(layers, timezone),
            zones=zones,
            masks={k: list(v) for k, v in (block.masks if block else {}).items()},
            burst=_resolve_burst(layers),
        )

    def warm(self) -> RuleSet:
        """Resolve the no-camera rules now (done by :func:`load_rules`); cameras resolve on first use."""
        self.for_camera("\0no-such-camera")
        return self


# --- YAML parsing with line numbers ---------------------------------------------------------


class _DuplicateKeyError(ConstructorError):
    pass


# libyaml's parser when PyYAML has it (many times faster on a large rules repo), same nodes and marks.
_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise _DuplicateKeyError(
                    None,
                    None,
                    f"duplicate key {key!r} (first written on line {seen[key]})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 22:00 as the base-60 number 1320; rules files write times of day, so only plain
# decimal, octal, hex and binary integers are integers here ('22:00' stays a string).
_INT = "tag:yaml.org,2002:int"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != _INT]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(
    _INT,
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _parse_yaml(file: str, raw: bytes) -> tuple[Any, Node | None]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RulesError(
            file, None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})", "save it as UTF-8"
        ) from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, _DuplicateKeyError):
            raise RulesError(file, line, "", str(exc.problem), "keep only one of the two entries") from None
        problem = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise RulesError(
            file,
            line,
            "",
            f"invalid YAML: {problem}",
            "fix the YAML syntax at that line (indentation, ':' and quotes)",
        ) from None
    except yaml.YAMLError as exc:
        raise RulesError(file, None, "", f"invalid YAML: {exc}", "fix the YAML syntax") from None
    finally:
        loader.dispose()
    return data, node


def _line_of(root: Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest key of ``loc`` found in the YAML node tree (1-based)."""
    if root is None:
        return None
    node: Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                    node, line = value_node, key_node.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, UnionType):
            models = [a for a in get_args(tp) if a is not type(None)]
            tp = next((a for a in models if isinstance(a, type) and issubclass(a, BaseModel)), models[0])
        else:
            return tp


def _model_at(loc: tuple[Any, ...], top: type[BaseModel] = RuleFile) -> type[BaseModel] | None:
    """The schema model that a validation error location points into (for 'allowed fields')."""
    tp: Any = top
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _fix_for(err: Mapping[str, Any], top: type[BaseModel] = RuleFile) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], top)
        allowed = ", ".join(model.model_fields) if model is not None else "see the defaults file"
        return f"remove {loc[-1]!r} or correct its spelling; allowed here: {allowed}"
    if kind == "literal_error":
        return f"use one of {err.get('ctx', {}).get('expected', 'the listed values')}"
    if kind in ("greater_than_equal", "less_than_equal", "float_parsing", "float_type", "value_error") and (
        loc and str(loc[-1]).endswith("min_score")
    ):
        return "use a detector score between 0 and 1, e.g. 0.5"
    if loc and loc[-1] == "min_box_area":
        return "write a fraction of the frame area like 0.0005, or {pixels: 400}"
    if kind == "value_error" and "review band" in msg:
        return "lower review_min_score or raise min_score (equal values switch the band off)"
    if "time zone" in msg:
        return "use an IANA name from the tz database, e.g. Europe/London, America/New_York, UTC"
    if "polygon" in msg or "outside 0..1" in msg or "point" in msg:
        return (
            "write at least 3 points [x, y], each a fraction of the frame between 0 and 1, "
            "e.g. [[0, 0.5], [1, 0.5], [1, 1]]"
        )
    if "HH:MM" in msg or "time of day" in msg or "empty window" in msg:
        return "write windows like {days: weekdays, start: '22:00', end: '06:00'} (quote the times)"
    if (loc and loc[-1] == "aspect_ratio") or "aspect_ratio" in msg:
        return "write [min, max] of box width / height, e.g. [0.2, 1.5]"
    if loc and "days" in loc:
        return "use mon, tue, wed, thu, fri, sat, sun, or daily / weekdays / weekends"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "write a mapping here (indented `name: value` lines)"
    return _HELP


def _from_validation(file: str, root: Node | None, exc: ValidationError, top: type[BaseModel] = RuleFile) -> RulesError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(p for p in first["loc"] if p != "[key]")
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        reason = f"unknown field {loc[-1]!r}"
    if len(errors) > 1:
        others = "; ".join(".".join(str(p) for p in e["loc"]) for e in errors[1:4])
        reason += f" (and {len(errors) - 1} more: {others})"
    return RulesError(file, _line_of(root, loc), ".".join(str(p) for p in loc), reason, _fix_for(first, top))


def _blocks_of(rf: RuleFile) -> list[tuple[tuple[str, ...], RuleBlock]]:
    blocks: list[tuple[tuple[str, ...], RuleBlock]] = [(("defaults",), rf.defaults)] if rf.defaults is not None else []
    blocks += [(("sites", name), block) for name, block in rf.sites.items()]
    blocks += [(("groups", name), block) for name, block in rf.groups.items()]
    for cam, block in rf.cameras.items():
        blocks.append((("cameras", cam), block))
        blocks += [(("cameras", cam, "zones", name), zone) for name, zone in block.zones.items()]
    return blocks


def _check_labels(file: str, root: Node | None, rf: RuleFile, allowed: list[str]) -> None:
    known = set(allowed)
    for prefix, block in _blocks_of(rf):
        for label in block.labels:
            if label in known:
                continue
            close = difflib.get_close_matches(label, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            loc = (*prefix, "labels", label)
            raise RulesError(
                file,
                _line_of(root, loc),
                ".".join(loc),
                f"unknown label {label!r}{hint}",
                f"use a label the detector knows: {', '.join(allowed)}",
            )


def _check_detectors(file: str, root: Node | None, rf: RuleFile, known: list[str]) -> None:
    for prefix, block in _blocks_of(rf):
        for name in block.detectors or []:
            if name in known:
                continue
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            loc = (*prefix, "detectors")
            raise RulesError(
                file,
                _line_of(root, loc),
                ".".join(loc),
                f"unknown detector {name!r}{hint}",
                f"use detectors of the catalogue: {', '.join(known)}",
            )


def _validate(file: str, root: Node | None, model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _from_validation(file, root, exc, model) from None


def _is_arming(file: str) -> bool:
    return file.lstrip("/").startswith(ARMING_DIR + "/")


NOT_RULES = frozenset({"notify.yaml", "notify.yml"})


def load_rules(
    files: Mapping[str, bytes], *, known_labels: Collection[str], known_detectors: Collection[str] | None = None
) -> RuleSet:
    """Merge every ``*.yaml``/``*.yml`` of a rules repo (path -> content) into one :class:`RuleSet`.

    Raises :class:`RulesError` naming file, line and field on any problem, including a camera (or
    ``defaults``, a site, a group) defined in two files, labels outside ``known_labels`` (the
    detector's labels), a camera naming a site or group that no file defines, and an arming file
    (``arming/*.yaml``) for an unknown site, and ``detectors:`` naming a detector outside
    ``known_detectors`` (default: the model catalogue, ``vision.models.CATALOGUE``).
    """
    allowed = list(dict.fromkeys(known_labels))
    if known_detectors is None:
        from alarmsieve.vision.models import CATALOGUE  # late: the catalogue is data, not a dependency of rules

        known_detectors = CATALOGUE
    detectors = list(known_detectors)
    defaults: RuleBlock | None = None
    tables: dict[str, dict[str, Any]] = {"cameras": {}, "sites": {}, "groups": {}}
    origins: dict[str, str] = {}
    roots: dict[str, Node | None] = {}
    arming_files: list[tuple[str, Node | None, ArmingState]] = []
    for file in sorted(files):
        # notify.yaml holds the notification settings (alarmsieve.notify.config), not threat rules
        if file.lstrip("/").lower() in NOT_RULES:
            continue
        if not file.lower().endswith((".yaml", ".yml")):
            continue
        data, root = _parse_yaml(file, files[file])
        if data is None:  # empty or comments only
            continue
        roots[file] = root
        if not isinstance(data, dict):
            what = "`scope:`, `target:`, `state:`, `by:` and `at:`" if _is_arming(file) else "`defaults:`, `cameras:`"
            raise RulesError(file, 1, "", f"top level is a {type(data).__name__}", f"write a mapping with {what}")
        if _is_arming(file):
            arming_files.append((file, root, _validate(file, root, ArmingState, data)))
            continue
        rf: RuleFile = _validate(file, root, RuleFile, data)
        _check_labels(file, root, rf, allowed)
        _check_detectors(file, root, rf, detectors)
        if rf.defaults is not None:
            if DEFAULTS_PATH in origins:
                raise RulesError(
                    file,
                    _line_of(root, ("defaults",)),
                    "defaults",
                    f"`defaults` is defined in both {origins[DEFAULTS_PATH]} and {file}",
                    "keep a single `defaults:` block in the rules repo",
                )
            defaults, origins[DEFAULTS_PATH] = rf.defaults, file
        for kind in ("sites", "groups", "cameras"):
            for name, block in getattr(rf, kind).items():
                path = f"{kind}/{name}"
                if path in origins:
                    noun = kind[:-1]
                    raise RulesError(
                        file,
                        _line_of(root, (kind, name)),
                        f"{kind}.{name}",
                        f"{noun} {name!r} is defined in both {origins[path]} and {file}",
                        f"define each {noun} in exactly one file (merge the two blocks)",
                    )
                tables[kind][name], origins[path] = block, file
    sites, groups, cameras = tables["sites"], tables["groups"], tables["cameras"]
    for name, block in cameras.items():
        file = origins[f"cameras/{name}"]
        for kind, ref, table in (("site", block.site, sites), ("group", block.group, groups)):
            if ref is not None and ref not in table:
                close = difflib.get_close_matches(ref, list(table), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise RulesError(
                    file,
                    _line_of(roots[file], ("cameras", name, kind)),
                    f"cameras.{name}.{kind}",
                    f"unknown {kind} {ref!r}{hint}",
                    f"define it under `{kind}s:` in a rules file, or correct the name"
                    + (f" (known: {', '.join(sorted(table))})" if table else ""),
                )
    arming: dict[str, ArmingState] = {}
    for file, root, state in arming_files:
        if state.scope == "site" and state.target not in sites:
            raise RulesError(
                file,
                _line_of(root, ("target",)),
                "target",
                f"unknown site {state.target!r}",
                "define the site under `sites:` first, or arm/disarm a camera instead",
            )
        if state.path in arming:
            raise RulesError(
                file,
                _line_of(root, ("target",)),
                "target",
                f"{state.scope} {state.target!r} has arming state in two files ({origins[state.path]} and {file})",
                "keep one arming file per site or camera",
            )
        arming[state.path], origins[state.path] = state, file
    return RuleSet(
        defaults=defaults or RuleBlock(),
        cameras=cameras,
        sites=sites,
        groups=groups,
        arming=arming,
        origins=origins,
    ).warm()


def _read_default_yaml() -> str:
    return importlib.resources.files("alarmsieve.rules").joinpath("default_rules.yaml").read_text("utf-8")


DEFAULT_RULES_YAML: str = _read_default_yaml()


# The shipped file is the single source of the built-in values (validated once at import).
def _builtin_defaults() -> RuleBlock:
    parsed = RuleFile.model_validate(_parse_yaml("default_rules.yaml", DEFAULT_RULES_YAML.encode())[0])
    block = parsed.defaults
    if block is None or None in (block.min_score, block.review_min_score, block.min_box_area):
        raise RuntimeError("default_rules.yaml must set defaults.min_score, review_min_score and min_box_area")
    return block


BUILTIN_DEFAULTS: RuleBlock = _builtin_defaults()


class RulePlaces(_Strict):
    """Sites and time zones as the rules declare them (for readers that need only these, e.g. notify)."""

    camera_site: dict[str, str] = Field(default_factory=dict)  # camera -> site
    camera_zone: dict[str, str] = Field(default_factory=dict)  # camera -> its own timezone
    site_zone: dict[str, str] = Field(default_factory=dict)  # site -> timezone

    def site_of(self, camera: str) -> str | None:
        return self.camera_site.get(camera)

    def timezone_of(self, camera: str) -> str | None:
        """The camera's zone (its own, else its site's); None when the rules declare none (then UTC)."""
        site = self.camera_site.get(camera)
        return self.camera_zone.get(camera) or (self.site_zone.get(site) if site else None)


def rule_places(files: Mapping[str, bytes]) -> RulePlaces:
    """Sites and time zones from a rules repo's files, leniently: a file that does not parse (or an unknown
    zone) is skipped here — ``rules check`` and the assess stage report it; this reader only wants names."""
    places = RulePlaces()
    for file in sorted(files):
        name = file.lstrip("/").lower()
        if name in NOT_RULES or _is_arming(file) or not name.endswith((".yaml", ".yml")):
            continue
        try:
            data = yaml.safe_load(files[file])
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict):
            continue
        for kind, table in (("sites", places.site_zone), ("cameras", places.camera_zone)):
            blocks = data.get(kind)
            if not isinstance(blocks, dict):
                continue
            for key, block in blocks.items():
                if not isinstance(block, dict):
                    continue
                zone = block.get("timezone")
                if isinstance(zone, str):
                    with contextlib.suppress(ValueError):  # rules check names a bad zone
                        table[str(key)] = _valid_timezone(zone)
                if kind == "cameras" and isinstance(block.get("site"), str):
                    places.camera_site[str(key)] = block["site"]
    return places
