"""Judging one alarm's detections against the rules of its camera.

Principle: never dismiss on doubt. A frame the detector could not judge (rejected, error, uniform)
and an alert label scoring just under its threshold both end as ``review``, never ``dismiss``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from alarmsieve.rules.schema import LabelPolicy, PixelArea, RuleSet, Severity

Verdict = Literal["alert", "review", "dismiss"]
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


class DetectionJudgement(_Strict):
    label: str
    score: float
    box: Box
    kept: bool
    severity: Severity
    why: str


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


def _judge_one(p: LabelPolicy, obj: ObjectBox, frame_area: int | None) -> tuple[bool, Severity, str, str]:
    """-> kept, severity, why, short tag for the dismiss summary."""
    label, score = obj.label, obj.score
    if p.severity == "ignore":
        return False, "ignore", f"{label} ignored: severity ignore ({p.severity_from})", f"{label} ignored"

    note = ""
    threshold = p.min_box_area
    if threshold:
        x1, y1, x2, y2 = obj.box
        pixels = max(0.0, x2 - x1) * max(0.0, y2 - y1)
        src = f"({p.min_box_area_from})"
        if isinstance(threshold, PixelArea):
            if pixels < threshold.pixels:
                why = f"{label} {score:.2f} box area {pixels:.0f} px < min_box_area {threshold.pixels} px {src}"
                return False, p.severity, why, f"{label} {score:.2f} too small"
        elif frame_area is None:
            note = "; box area unchecked: frame size unknown"  # keep it: never dismiss on doubt
        elif (fraction := pixels / frame_area) < threshold:
            why = f"{label} {score:.2f} box area {fraction:.4f} < min_box_area {threshold:.4f} {src}"
            return False, p.severity, why, f"{label} {score:.2f} too small"

    if score >= p.min_score:
        s, t = _pair(score, p.min_score)
        why = f"{label} {s} >= min_score {t}: {p.severity} {_src(p.severity_from, p.min_score_from)}{note}"
        return True, p.severity, why, ""
    if p.severity == "alert" and p.review_min_score < p.min_score:
        if score >= p.review_min_score:
            lo, hi = f"{p.review_min_score:.2f}", f"{p.min_score:.2f}"
            s = _pair(score, p.review_min_score)[0]
            why = (
                f"{label} {s} in review band [{lo}, {hi}): review "
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


def judge(rules: RuleSet, facts: AlarmFacts) -> Judgement:
    """Verdict for one alarm: alert > review > dismiss; doubt about the frame itself is ``review``."""
    eff = rules.for_camera(facts.camera)
    w, h = facts.width, facts.height
    frame_area = w * h if w and h and w > 0 and h > 0 else None

    detections: list[DetectionJudgement] = []
    kept: list[DetectionJudgement] = []
    dropped_tags: list[str] = []
    for obj in facts.objects:
        ok, severity, why, tag = _judge_one(eff.policy(obj.label), obj, frame_area)
        # model_construct: every field was built here from validated input; skips re-validation cost.
        det = DetectionJudgement.model_construct(
            label=obj.label, score=obj.score, box=obj.box, kept=ok, severity=severity, why=why
        )
        detections.append(det)
        if ok:
            kept.append(det)
        else:
            dropped_tags.append(tag)

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
    return Judgement.model_construct(verdict=verdict, reasons=reasons, rule_path=eff.rule_path, detections=detections)
