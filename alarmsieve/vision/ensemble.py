"""Several detectors on one frame, one list of boxes: per-model calibration, then weighted box fusion.

Each backend returns its raw candidates (at or above its floor, after its own NMS). Each model's
scores go through its calibration (``models.Calibration``: a monotone piecewise-linear map from raw
score to "probability this is a real object", identity until fitted), so that 0.6 means the same
from every model. Then weighted box fusion (WBF, Solovyev et al., ZFTurbo's ``ensemble-boxes``),
class-aware:

- per label, boxes in descending calibrated score join the cluster whose fused box they overlap
  most, if that IoU is at least ``fusion_iou`` (0.55), else start a cluster;
- a cluster's box is the score-weighted mean of its boxes;
- its score is the sum over models of each model's best calibrated score in the cluster, divided by
  the number of models that can report the label (absent models count 0; ZFTurbo's
  ``mean x min(n, N) / N`` when each model gives one box). A person-only model therefore counts
  towards ``person`` only, and a box that one model of three saw at 0.9 scores 0.3.

Each fused box keeps ``sources``: the models that saw it and their raw (uncalibrated) scores.

Written here in numpy: ``ensemble-boxes`` pulls pandas and numba, far too heavy for ~40 lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from alarmsieve.vision.backends.base import Detection, DetectorBackend, check_bgr
from alarmsieve.vision.models import Calibration

DEFAULT_FUSION_IOU = 0.55
_IDENTITY = Calibration()


def weighted_box_fusion(
    per_model: Mapping[str, Sequence[Detection]],
    *,
    models_for_label: Mapping[str, int] | None = None,
    calibrations: Mapping[str, Calibration] | None = None,
    fusion_iou: float = DEFAULT_FUSION_IOU,
) -> list[Detection]:
    """Fuse each model's detections (model name -> its detections) into one list, highest score first.

    ``models_for_label``: how many models can report each label (default: every model, for every
    label); ``calibrations``: per model (default: identity)."""
    if not 0.0 < fusion_iou <= 1.0:
        raise ValueError(f"fusion_iou must be within (0, 1], got {fusion_iou}")
    calibrations = calibrations or {}
    # label -> [(calibrated score, raw score, model, box, class id)]
    by_label: dict[str, list[tuple[float, float, str, tuple[float, float, float, float], int]]] = {}
    for model, dets in per_model.items():
        if not dets:
            continue
        cal = calibrations.get(model, _IDENTITY)
        calibrated = cal.apply_many(np.array([d.score for d in dets]))
        for d, c in zip(dets, calibrated, strict=True):
            by_label.setdefault(d.label, []).append((float(c), d.score, model, d.box, d.class_id))
    fused: list[Detection] = []
    for label, items in by_label.items():
        n_models = (models_for_label or {}).get(label, len(per_model))
        items.sort(key=lambda item: -item[0])
        boxes = np.array([item[3] for item in items], dtype=np.float64)
        weights = np.array([item[0] for item in items], dtype=np.float64)
        # Clusters so far (preallocated: at most one per box): fused box, its area, weight sums.
        centres = np.zeros((len(items), 4))
        areas = np.zeros(len(items))
        weight_sum = np.zeros(len(items))
        weighted = np.zeros((len(items), 4))
        members: list[list[int]] = []
        for i, b in enumerate(boxes):
            n = len(members)
            if n:
                c = centres[:n]
                ix = np.minimum(b[2], c[:, 2]) - np.maximum(b[0], c[:, 0])
                iy = np.minimum(b[3], c[:, 3]) - np.maximum(b[1], c[:, 1])
                inter = np.maximum(ix, 0.0) * np.maximum(iy, 0.0)
                union = (b[2] - b[0]) * (b[3] - b[1]) + areas[:n] - inter
                overlap = np.divide(inter, union, out=np.zeros(n), where=union > 0)
                best = int(overlap.argmax())
                if overlap[best] >= fusion_iou:
                    members[best].append(i)
                    weight_sum[best] += weights[i]
                    weighted[best] += weights[i] * b
                    if weight_sum[best] > 0:  # the score-weighted mean box
                        centres[best] = weighted[best] / weight_sum[best]
                    areas[best] = (centres[best, 2] - centres[best, 0]) * (centres[best, 3] - centres[best, 1])
                    continue
            members.append([i])
            centres[n], weight_sum[n], weighted[n] = b, weights[i], weights[i] * b
            areas[n] = (b[2] - b[0]) * (b[3] - b[1])
        for k, cluster in enumerate(members):
            best_cal: dict[str, float] = {}
            raw: dict[str, float] = {}
            for j in cluster:
                cal_score, raw_score, model, _, _ = items[j]
                best_cal[model] = max(best_cal.get(model, 0.0), cal_score)
                raw[model] = max(raw.get(model, 0.0), raw_score)
            x1, y1, x2, y2 = (round(float(v), 2) for v in centres[k])
            fused.append(
                Detection(
                    label=label,
                    class_id=items[cluster[0]][4],
                    score=min(1.0, sum(best_cal.values()) / max(1, n_models)),
                    box=(x1, y1, x2, y2),
                    sources=dict(sorted(raw.items(), key=lambda kv: -kv[1])),
                )
            )
    return sorted(fused, key=lambda d: -d.score)


def describe(detection: Detection, models: Sequence[str] = ()) -> str:
    """``person 0.71 (picodet-s-416 0.64, nanodet-m-416 0.52, yolox-nano —)``: the fused score, then each
    model's raw score, ``—`` for a model of ``models`` that did not see it (for logs and ``explain``)."""
    seen = [f"{m} {s:.2f}" for m, s in detection.sources.items()]
    missed = [f"{m} —" for m in models if m not in detection.sources]
    detail = f" ({', '.join(seen + missed)})" if seen or missed else ""
    return f"{detection.label} {detection.score:.2f}{detail}"


class Ensemble(DetectorBackend):
    """Several backends on the same frame (or crop), fused into one list of boxes with their sources.

    ``calibrations`` overrides per model name (fitted numbers under trial); a model missing from it
    uses its backend's ``calibration`` (its catalogue entry's), else the identity."""

    def __init__(
        self,
        backends: Sequence[DetectorBackend],
        *,
        calibrations: Mapping[str, Calibration] | None = None,
        fusion_iou: float = DEFAULT_FUSION_IOU,
    ) -> None:
        if not backends:
            raise ValueError("an ensemble needs at least one detector")
        names = [b.model_name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"each detector may appear once in an ensemble, got {', '.join(names)}")
        if not 0.0 < fusion_iou <= 1.0:
            raise ValueError(f"fusion_iou must be within (0, 1], got {fusion_iou}")
        self.backends = list(backends)
        self.calibrations = {b.model_name: getattr(b, "calibration", _IDENTITY) for b in self.backends}
        self.calibrations.update(calibrations or {})
        self.fusion_iou = fusion_iou
        self.models = [(b.model_name, b.model_sha256) for b in self.backends]
        self.model_name = "+".join(names)
        # One hash for the set: each model's sha256, in order (the order decides nothing, but is recorded).
        self.model_sha256 = (
            self.backends[0].model_sha256
            if len(self.backends) == 1
            else hashlib.sha256(";".join(f"{n}:{s}" for n, s in self.models).encode()).hexdigest()
        )
        self.input_size = max(int(getattr(b, "input_size", 416)) for b in self.backends)
        counts: dict[str, int] = {}
        for b in self.backends:
            for label in set(getattr(b, "labels", ())):
                counts[label] = counts.get(label, 0) + 1
        self.models_for_label = counts
        self.last_raw: dict[str, list[Detection]] = {}  # each model's candidates on the last frame

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        check_bgr(image_bgr)
        self.last_raw = {b.model_name: b.detect(image_bgr) for b in self.backends}
        return self.fuse(self.last_raw)

    def fuse(self, raw: dict[str, list[Detection]]) -> list[Detection]:
        """Calibrate and fuse detections already at hand (model name -> its raw candidates): refitting
        calibrations on stored candidates needs no model run."""
        if len(self.backends) == 1:  # nothing to fuse: the model's own boxes (its NMS already ran)
            name, dets = next(iter(raw.items()))
            cal = self.calibrations[name]
            if cal == _IDENTITY:  # the default: the same boxes and scores, with their source named
                return [d.model_copy(update={"sources": {name: d.score}}) for d in dets]
            return sorted(
                (
                    Detection(
                        label=d.label, class_id=d.class_id, score=cal.apply(d.score), box=d.box, sources={name: d.score}
                    )
                    for d in dets
                ),
                key=lambda d: -d.score,
            )
        return weighted_box_fusion(
            raw,
            models_for_label=self.models_for_label,
            calibrations=self.calibrations,
            fusion_iou=self.fusion_iou,
        )
