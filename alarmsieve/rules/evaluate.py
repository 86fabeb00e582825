"""Judging one alarm's detections against the rules of its camera.

Principle: never dismiss on doubt. A frame the detector could not judge (rejected, error, uniform)
and an alert label scoring just under its threshold both end as ``review``, never ``dismiss``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alarmsieve.rules.clock import wall_to_utc
from alarmsieve.rules.schema import (
    EffectiveRules,
    EffectiveZone,
    LabelPolicy,
    PixelArea,
    RuleSet,
    Severity,
    point_in_polygon,
    tz_of,
)

Verdict = Literal["alert", "review", "dismiss"]
_EDGE = 1e-9
Box = tuple[float, float, float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObjectBox(_Strict):
    """One detection: COCO label, score in [0, 1], box (x1, y1, x2, y2) in pixels."""

    label: str
    score: float = Field(ge=0.0, le=1.0)
    box: Box


class AlarmFacts(_Strict):
    """What the vision stage saw in one alarm image."""

    camera: str
    width: int | None
    height: int | None
    status: Literal["ok", "rejected", "detector_error", "uniform"]
    status_reason: str = ""
    objects: list[ObjectBox]
    # aware: absolute; naive: the camera's wall clock (see rules.clock); None: no schedule check (kept armed)
    time: datetime | None = None


class DetectionJudgement(_Strict):
    label: str
    score: float
    box: Box
    kept: bool
    severity: Severity
    why: str
    zone: str | None = None  # the zone the box's bottom-centre is in (first listed), if any
    rule_path: str = ""  # the camera or zone whose rules judged it


class Judgement(_Strict):
    verdict: Verdict
    reasons: list[str]  # the first one is the deciding reason
    rule_path: str
    detections: list[DetectionJudgement]


def _pair(value: float, threshold: float) -> tuple[str, str]:
    # Two decimals, unless that would print e.g. "0.50 < 0.50".
    a, b = f"{value:.2f}", f"{threshold:.2f}"
    return (a, b) if a != b else (f"{value:.4f}", f"{threshold:.4f}")


def _src(*paths: str) -> str:
    return f"({paths[0]})" if len(set(paths)) == 1 else f"({', '.join(dict.fromkeys(paths))})"


def _area_check(
    p: LabelPolicy, obj: ObjectBox, pixels: float, frame_area: int | None
) -> tuple[str, str] | tuple[None, str]:
    """-> (why dropped, tag) or (None, note about an unchecked fraction)."""
    label, score = obj.label, obj.score
    note = ""
    for bound, threshold, src in (
        ("min", p.min_box_area, p.min_box_area_from),
        ("max", p.max_box_area, p.max_box_area_from),
    ):
        if not threshold:
            continue
        name = f"{bound}_box_area"
        if isinstance(threshold, PixelArea):
            if (pixels < threshold.pixels) if bound == "min" else (pixels > threshold.pixels):
                op = "<" if bound == "min" else ">"
                why = f"{label} {score:.2f} box area {pixels:.0f} px {op} {name} {threshold.pixels} px ({src})"
                return why, f"{label} {score:.2f} too {'small' if bound == 'min' else 'large'}"
        elif frame_area is None:
            note = "; box area unchecked: frame size unknown"  # keep it: never dismiss on doubt
        else:
            fraction = pixels / frame_area
            if (fraction < threshold) if bound == "min" else (fraction > threshold):
                op = "<" if bound == "min" else ">"
                why = f"{label} {score:.2f} box area {fraction:.4f} {op} {name} {threshold:.4f} ({src})"
                return why, f"{label} {score:.2f} too {'small' if bound == 'min' else 'large'}"
    return None, note


def _judge_one(p: LabelPolicy, obj: ObjectBox, frame_area: int | None) -> tuple[bool, Severity, str, str]:
    """-> kept, severity, why, short tag for the dismiss summary."""
    label, score = obj.label, obj.score
    if p.severity == "ignore":
        return False, "ignore", f"{label} ignored: severity ignore ({p.severity_from})", f"{label} ignored"

    x1, y1, x2, y2 = obj.box
    w, h = max(0.0, x2 - x1), max(0.0, y2 - y1)
    dropped, note = _area_check(p, obj, w * h, frame_area)
    if dropped is not None:
        return False, p.severity, dropped, note
    if p.aspect_ratio is not None and h > 0:
        lo, hi = p.aspect_ratio
        ratio = w / h
        if not lo <= ratio <= hi:
            why = f"{label} {score:.2f} aspect ratio {ratio:.2f} outside [{lo:g}, {hi:g}] ({p.aspect_ratio_from})"
            return False, p.severity, why, f"{label} {score:.2f} wrong shape"

    if score >= p.min_score:
        s, t = _pair(score, p.min_score)
        why = f"{label} {s} >= min_score {t}: {p.severity} {_src(p.severity_from, p.min_score_from)}{note}"
        return True, p.severity, why, ""
    if p.severity == "alert" and p.review_min_score < p.min_score:
        if score >= p.review_min_score:
            lo_s, hi_s = f"{p.review_min_score:.2f}", f"{p.min_score:.2f}"
            s = _pair(score, p.review_min_score)[0]
            why = (
                f"{label} {s} in review band [{lo_s}, {hi_s}): review "
                f"{_src(p.review_min_score_from, p.min_score_from)}{note}"
            )
            return True, "review", why, ""
        s, t = _pair(score, p.review_min_score)
        why = f"{label} {s} < review_min_score {t} ({p.review_min_score_from})"
        return False, p.severity, why, f"{label} {s} below review_min_score"
    s, t = _pair(score, p.min_score)
    return (
        False,
        p.severity,
        f"{label} {s} < min_score {t} ({p.min_score_from})",
        f"{label} {s} below min_score",
    )


def _zone_of(zones: list[EffectiveZone], x: float, y: float) -> EffectiveZone | None:
    for z in zones:
        bx1, by1, bx2, by2 = z.bbox
        if bx1 <= x <= bx2 and by1 <= y <= by2 and point_in_polygon(x, y, z.polygon):
            return z
    return None


class _Arming:
    """Armed or not, per camera/zone scope, for one alarm: the operator's state beats the schedule."""

    def __init__(self, rules: RuleSet, camera: str, when: datetime | None) -> None:
        state = rules.arming_for(camera)
        if when is not None and when.tzinfo is None:
            # no offset: the camera's wall clock (its zone, or UTC with `clock: utc`), as assess reads it
            eff = rules.for_camera(camera)
            when = when.replace(tzinfo=UTC) if eff.clock.kind == "utc" else wall_to_utc(when, eff.timezone)[0]
        self.override = state if state is not None and state.active(when) else None
        self.when = when
        self._cache: dict[str, tuple[bool, str]] = {}

    def check(self, scope: EffectiveRules) -> tuple[bool, str]:
        found = self._cache.get(scope.rule_path)
        if found is not None:
            return found
        if self.override is not None:
            found = (self.override.state == "armed", f"{self.override.state} ({self.override.text()})")
        elif (
            scope.schedule is None
            or scope.schedule.windows is None
            or self.when is None
            or scope.schedule.armed_at(self.when)
        ):
            found = (True, "")
        else:
            local = self.when.astimezone(tz_of(scope.schedule.timezone))
            windows = scope.schedule.text().removeprefix("armed ")
            found = (
                False,
                f"disarmed: {local:%a %H:%M} is outside the armed schedule {windows} ({scope.schedule.source})",
            )
        self._cache[scope.rule_path] = found
        return found


def judge(rules: RuleSet, facts: AlarmFacts) -> Judgement:
    """Verdict for one alarm: alert > review > dismiss; doubt about the frame itself is ``review``."""
    eff = rules.for_camera(facts.camera)
    w, h = facts.width, facts.height
    if not (w and h and w > 0 and h > 0) and eff.frame is not None:
        w, h = eff.frame.width, eff.frame.height
    sized = bool(w and h and w > 0 and h > 0)
    frame_area = w * h if sized and w and h else None
    required = eff.required_zones
    arming = _Arming(rules, facts.camera, facts.time)

    detections: list[DetectionJudgement] = []
    policies: list[LabelPolicy] = []
    tags: list[str] = []
    for obj in facts.objects:
        label, s = obj.label, f"{obj.score:.2f}"
        scope, zone, doubt = eff, None, ""
        why: str | None = None
        tag = ""
        if sized and w and h and (eff.zones or eff.masks):
            x1, _, x2, y2 = obj.box
            # bottom-centre: where the object stands; kept a hair inside the frame so that a box touching
            # the frame's edge is inside a zone drawn along that edge
            px = min(max((x1 + x2) / 2 / w, _EDGE), 1 - _EDGE)
            py = min(max(y2 / h, _EDGE), 1 - _EDGE)
            for name, polygon in eff.masks.items():
                if point_in_polygon(px, py, polygon):
                    why, tag = f"{label} {s} in mask {name}: ignored ({eff.rule_path})", f"{label} in mask {name}"
                    break
            zone = _zone_of(eff.zones, px, py) if why is None else None
            if zone is not None:
                scope = zone.rules
        elif required or eff.masks:
            doubt = "; zones unchecked: frame size unknown (at most review)"
        p = scope.policy(label)
        severity: Severity = p.severity
        if why is None and p.severity != "ignore":
            if required and not doubt and (zone is None or not zone.required):
                names = ", ".join(z.name for z in required)
                why = f"{label} {s} outside required zone {names} ({eff.rule_path})"
                tag = f"{label} outside required zone"
            else:
                ok, reason = arming.check(scope)
                if not ok:
                    why, tag = f"{label} {s} {reason}", f"{label} {s} disarmed"
        if why is None:
            kept, severity, why, tag = _judge_one(p, obj, frame_area)
            if kept and doubt:
                severity, why = "review", why + doubt
        else:
            kept = False
        det = DetectionJudgement.model_construct(
            label=label,
            score=obj.score,
            box=obj.box,
            kept=kept,
            severity=severity,
            why=why,
            zone=zone.name if zone is not None else None,
            rule_path=scope.rule_path,
        )
        detections.append(det)
        policies.append(p)
        tags.append(tag)

    # min_count: a label must be seen at least N times (kept) in the alarm for any of them to count.
    counts: dict[str, int] = {}
    for det in detections:
        if det.kept:
            counts[det.label] = counts.get(det.label, 0) + 1
    for i, (det, p) in enumerate(zip(detections, policies, strict=True)):
        if det.kept and p.min_count > 1 and counts[det.label] < p.min_count:
            n = counts[det.label]
            det.kept = False
            det.why = f"{det.label} {det.score:.2f}: {n} {det.label} < min_count {p.min_count} ({p.min_count_from})"
            tags[i] = f"{det.label} fewer than {p.min_count}"

    kept = [d for d in detections if d.kept]
    dropped_tags = [t for d, t in zip(detections, tags, strict=True) if not d.kept]
    # Deciding detection first: alerts before reviews, higher score first.
    kept.sort(key=lambda d: (d.severity != "alert", -d.score))
    reasons = [d.why for d in kept]
    verdict: Verdict
    if kept and kept[0].severity == "alert":
        verdict = "alert"
    elif facts.status != "ok" or kept:
        verdict = "review"
    else:
        verdict = "dismiss"

    if facts.status != "ok":
        status_reason = (
            f"image status {facts.status}: {facts.status_reason or 'no reason given'}"
            " — needs a human look (never dismiss on doubt)"
        )
        # The status decides unless an alert detection already outranks it.
        reasons.insert(1 if verdict == "alert" else 0, status_reason)
    elif verdict == "dismiss":
        if facts.objects:
            shown = ", ".join(dropped_tags[:6]) + (", …" if len(dropped_tags) > 6 else "")
            n = len(facts.objects)
            summary = f"no threat: {n} detection{'s' if n != 1 else ''} dropped ({shown})"
        else:
            summary = "no threat: no objects detected"
        reasons = [summary, *(d.why for d in detections)]
    rule_path = kept[0].rule_path if kept else eff.rule_path
    return Judgement.model_construct(verdict=verdict, reasons=reasons, rule_path=rule_path, detections=detections)
