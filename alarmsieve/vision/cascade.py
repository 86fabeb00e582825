"""The cascade: the cheap detector first, the others only where the first one may be wrong.

A calm daylight frame costs one pass of the primary model, as before. A frame earns a second look when
its kind (``vision.looks.frame_kind``) or the first pass gives a reason to doubt it:

- a grey frame (night infrared, thermal, image-intensified low light) or a dark / flat one: the models
  were trained on daylight photos;
- a small frame (longer side under ``small_side``): a person there is a few dozen pixels tall;
- a doubtful candidate: the first pass found a ``doubt_labels`` object scoring at or above
  ``doubt_floor`` but under ``confident`` (raw candidates: a ``--score-threshold`` never hides it);
- a large frame (longer side at least ``large_side``): tiled at native resolution.

A frame whose first pass found a person at or above ``confident`` needs no second look.

The second look (``Look``: a model and a view of the frame) depends on the frame:

- grey: the other polarity and a contrast-equalised view (``mono``); then, only if those left a doubt
  (a candidate of at least ``more_floor`` and nothing confident), another model on both (``mono_more``);
- colour: another model on the whole frame, upscaled overlapping slices for a small frame
  (``vision.looks.upscaled_slices``) or native tiles for a large one (``vision.tiling.plan_tiles``), and
  a contrast-equalised view when the frame is dark or flat.

Every look's candidates go through the model's calibration (so 0.5 means the same from every model; a
slice's score counts ``slice_weight``, as a crop loses the context), then are merged by label: boxes that
overlap (IoU >= ``merge_iou`` or one inside the other by ``contain``) are one object, whose box is the
score-weighted mean (WBF) and whose score is the strongest calibrated look; when two or more looks (other
than a model's own slices) agree on a ``doubt_labels`` object at ``agree_floor`` or more, it scores at
least ``agree_score`` (a review, with the default rules). Doubt is never lowered: the merged score is never
under what any one look said. Each object keeps ``sources``: ``model/view`` -> raw score, so ``explain``
shows which model saw what.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from alarmsieve.vision.backends.base import Detection, DetectorBackend, check_bgr
from alarmsieve.vision.looks import FrameKind, frame_kind, inverted, normalised, upscaled_slices
from alarmsieve.vision.models import Calibration
from alarmsieve.vision.tiling import plan_tiles

View = Literal["whole", "inverted", "normalised", "slices"]


class Look(BaseModel):
    """One model on one view of the frame."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    view: View = "whole"

    def text(self) -> str:
        return self.model if self.view == "whole" else f"{self.model}/{self.view}"


class CascadePolicy(BaseModel):
    """When a frame gets a second look, and which. The defaults were chosen on cctv-dev and COCO128
    (docs/quality.md gives the figures); every field can be set per detect pipeline."""

    model_config = ConfigDict(extra="forbid")

    primary: str = "yolox-nano"
    confident: float = Field(default=0.5, ge=0.0, le=1.0)
    doubt_floor: float = Field(default=0.15, ge=0.0, le=1.0)
    doubt_labels: list[str] = ["person"]
    small_side: int = Field(default=640, ge=0)
    large_side: int = Field(default=1000, ge=1)
    mono: list[Look] = [Look(model="yolox-nano", view="inverted"), Look(model="nanodet-m-416", view="normalised")]
    # grey frames where the looks so far found a doubt_labels candidate of at least more_floor (merged
    # score) but nothing confident get these too; a calm grey frame stops before them
    mono_more: list[Look] = [Look(model="nanodet-m-416", view="inverted"), Look(model="nanodet-m-416")]
    more_floor: float = Field(default=0.1, ge=0.0, le=1.0)
    colour: list[Look] = [Look(model="nanodet-m-416"), Look(model="yolox-nano", view="slices")]
    dark_colour: list[Look] = [Look(model="yolox-nano", view="normalised")]
    merge_iou: float = Field(default=0.3, gt=0.0, le=1.0)
    contain: float = Field(default=0.7, gt=0.0, le=1.0)
    agree_floor: float = Field(default=0.25, ge=0.0, le=1.0)
    agree_score: float = Field(default=0.35, ge=0.0, le=1.0)
    # a slice shows the object without its surroundings, which makes false people of parts of things
    # (a bird's wing, a bathroom tap): evidence seen only in slices counts this much
    slice_weight: float = Field(default=0.9, gt=0.0, le=1.0)
    tile_overlap: float = Field(default=0.2, ge=0.0, lt=0.9)
    max_tiles: int = Field(default=2, ge=1)

    def models(self) -> list[str]:
        """Every model the policy may run, primary first."""
        names = [self.primary] + [look.model for look in self.mono + self.mono_more + self.colour + self.dark_colour]
        return list(dict.fromkeys(names))


class LookRecord(BaseModel):
    """What one look ran and found (for the detections record and ``explain``)."""

    look: str
    passes: int
    ms: float
    found: int


class CascadeResult(BaseModel):
    detections: list[Detection]
    kind: FrameKind
    second_look: str  # why the frame got a second look ("" = it did not)
    looks: list[LookRecord]


class Cascade:
    """Runs a ``CascadePolicy`` with loaded backends (model name -> backend) and calibrations."""

    def __init__(
        self,
        policy: CascadePolicy,
        backends: Mapping[str, DetectorBackend],
        calibrations: Mapping[str, Calibration] | None = None,
    ) -> None:
        missing = [name for name in policy.models() if name not in backends]
        if missing:
            raise ValueError(f"cascade: no backend loaded for {', '.join(missing)}")
        self.policy = policy
        self.backends = dict(backends)
        self.calibrations = dict(calibrations or {})

    def why_second_look(self, kind: FrameKind, first: list[Detection]) -> str:
        """The reason this frame gets a second look ("" = none)."""
        p = self.policy
        watched = [d for d in first if d.label in p.doubt_labels]
        top = max((d.score for d in watched), default=0.0)
        if top >= p.confident:
            return ""
        longer = max(kind.width, kind.height)
        if kind.tone == "mono":
            return "grey frame (infrared, thermal or low light)"
        if kind.dark or kind.low_contrast:
            return "dark or flat frame"
        if top >= p.doubt_floor:
            best = max(watched, key=lambda d: d.score)
            return f"doubtful {best.label} {best.score:.2f}"
        if longer >= p.large_side:
            return "large frame"
        if longer < p.small_side:
            return "small frame"
        return ""

    def tiers_for(self, kind: FrameKind) -> list[list[Look]]:
        """The second looks in the order they run; a later tier runs only on a doubt the earlier left."""
        if kind.tone == "mono":
            return [list(self.policy.mono), list(self.policy.mono_more)]
        return [self.looks_for(kind)]

    def looks_for(self, kind: FrameKind) -> list[Look]:
        """The second looks for this kind of frame. Slices pay only where a person may be too small for
        the whole-frame pass (a small frame, or a large one shrunk to the model's input); on a mid-sized
        photo a crop loses the context and adds false people (measured on COCO128, docs/quality.md)."""
        p = self.policy
        if kind.tone == "mono":
            return list(p.mono)
        longer = max(kind.width, kind.height)
        sliced = longer < p.small_side or longer >= p.large_side
        looks = [look for look in p.colour if look.view != "slices" or sliced]
        if kind.dark or kind.low_contrast:
            looks += p.dark_colour
        return looks

    def detect(self, image_bgr: np.ndarray, first_pass: DetectorBackend | None = None) -> CascadeResult:
        """``first_pass``: run this instead of the primary backend for the first look (e.g. the primary
        model tiled, for a camera the operator asked to tile)."""
        check_bgr(image_bgr)
        kind = frame_kind(image_bgr)
        primary = Look(model=self.policy.primary)
        first, record = self._run(primary, image_bgr, kind, backend=first_pass)
        found: list[tuple[Look, Detection]] = [(primary, d) for d in first]
        records = [record]
        reason = self.why_second_look(kind, first)
        merged = merge_looks(found, self.policy, self.calibrations)
        if reason:
            views: dict[str, np.ndarray] = {}
            for tier in self.tiers_for(kind):
                top = max((d.score for d in merged if d.label in self.policy.doubt_labels), default=0.0)
                if records[1:] and (top >= self.policy.confident or top < self.policy.more_floor):
                    break  # confident already, or nothing worth another look
                for look in tier:
                    dets, record = self._run(look, image_bgr, kind, views)
                    found += [(look, d) for d in dets]
                    records.append(record)
                merged = merge_looks(found, self.policy, self.calibrations)
        return CascadeResult(detections=merged, kind=kind, second_look=reason, looks=records)

    def _run(
        self,
        look: Look,
        image: np.ndarray,
        kind: FrameKind,
        views: dict[str, np.ndarray] | None = None,
        backend: DetectorBackend | None = None,
    ) -> tuple[list[Detection], LookRecord]:
        backend = backend or self.backends[look.model]
        started = time.perf_counter()
        if look.view in ("whole", "slices"):
            frame = image
        else:
            views = {} if views is None else views
            if look.view not in views:
                views[look.view] = inverted(image) if look.view == "inverted" else normalised(image)
            frame = views[look.view]
        if look.view == "slices":
            regions = self._slices(backend, kind)
            dets: list[Detection] = []
            for x1, y1, x2, y2 in regions:
                for d in backend.detect(np.ascontiguousarray(frame[y1:y2, x1:x2])):
                    bx1, by1, bx2, by2 = d.box
                    box = (round(bx1 + x1, 2), round(by1 + y1, 2), round(bx2 + x1, 2), round(by2 + y1, 2))
                    dets.append(d.model_copy(update={"box": box}))
            passes = len(regions)
        else:
            dets, passes = backend.detect(frame), 1
        ms = (time.perf_counter() - started) * 1000
        return dets, LookRecord(look=look.text(), passes=passes, ms=round(ms, 2), found=len(dets))

    def _slices(self, backend: DetectorBackend, kind: FrameKind) -> list[tuple[int, int, int, int]]:
        """Upscaled slices for a frame under ``large_side``; native tiles (at most ``max_tiles``) above."""
        if max(kind.width, kind.height) >= self.policy.large_side:
            size = int(getattr(backend, "input_size", 416))
            return plan_tiles(
                kind.width,
                kind.height,
                tile_size=size,
                overlap=self.policy.tile_overlap,
                max_tiles=self.policy.max_tiles,
            )
        return upscaled_slices(kind.width, kind.height)


def merge_looks(
    found: list[tuple[Look, Detection]], policy: CascadePolicy, calibrations: Mapping[str, Calibration] | None = None
) -> list[Detection]:
    """One detection per object: calibrated, clustered by label, WBF box, strongest look's score."""
    p = policy
    items = []
    for look, d in found:
        calibration = (calibrations or {}).get(look.model)
        score = calibration.apply(d.score) if calibration else d.score
        if look.view == "slices":
            score *= p.slice_weight
        items.append((score, look.text(), d))
    items.sort(key=lambda item: -item[0])
    clusters: list[dict] = []
    for score, source, d in items:
        box = np.asarray(d.box, dtype=np.float64)
        for cluster in clusters:
            if cluster["label"] == d.label and _same_object(cluster["box"], box, p.merge_iou, p.contain):
                cluster["members"].append((score, source, d))
                weights = np.array([m[0] for m in cluster["members"]]) + 1e-6
                boxes = np.array([m[2].box for m in cluster["members"]], dtype=np.float64)
                cluster["box"] = (weights @ boxes) / weights.sum()
                break
        else:
            clusters.append({"label": d.label, "box": box, "members": [(score, source, d)]})
    merged = []
    for cluster in clusters:
        members = cluster["members"]
        score = members[0][0]
        # Slices are the same model on the same pixels, only closer: they do not count as a second opinion.
        looks_agreeing = {source.removesuffix("/slices") for s, source, _ in members if s >= p.agree_floor}
        if cluster["label"] in p.doubt_labels and len(looks_agreeing) >= 2:
            score = max(score, p.agree_score)
        sources: dict[str, float] = {}
        for _, source, d in members:
            sources[source] = max(sources.get(source, 0.0), d.score)
        x1, y1, x2, y2 = (round(float(v), 2) for v in cluster["box"])
        merged.append(
            Detection(
                label=cluster["label"],
                class_id=members[0][2].class_id,
                score=min(1.0, score),
                box=(x1, y1, x2, y2),
                sources=sources,
            )
        )
    return sorted(merged, key=lambda d: -d.score)


def _same_object(a: np.ndarray, b: np.ndarray, iou: float, contain: float) -> bool:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    if union > 0 and inter / union >= iou:
        return True
    smaller = min(area_a, area_b)
    return smaller > 0 and inter / smaller >= contain
