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


def _iou_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each row of ``boxes``."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


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
        cal = calibrations.get(model, _IDENTITY)
        for d in dets:
            by_label.setdefault(d.label, []).append((cal.apply(d.score), d.score, model, d.box, d.class_id))
    fused: list[Detection] = []
    for label, items in by_label.items():
        n_models = (models_for_label or {}).get(label, len(per_model))
        items.sort(key=lambda item: -item[0])
        members: list[list[int]] = []  # cluster -> indices into items
        centres = np.zeros((0, 4))  # the fused box of each cluster so far
        for i, (_, _, _, box, _) in enumerate(items):
            b = np.asarray(box, dtype=np.float64)
            if len(members):
                overlap = _iou_many(b, centres)
                best = int(overlap.argmax())
                if overlap[best] >= fusion_iou:
                    members[best].append(i)
                    weights = np.array([items[j][0] for j in members[best]])
                    boxes = np.array([items[j][3] for j in members[best]], dtype=np.float64)
                    total = weights.sum()
                    centres[best] = (weights @ boxes) / total if total > 0 else boxes.mean(axis=0)
                    continue
            members.append([i])
            centres = np.vstack((centres, b))
        for cluster, centre in zip(members, centres, strict=True):
            best_cal: dict[str, float] = {}
            raw: dict[str, float] = {}
            for j in cluster:
                cal_score, raw_score, model, _, _ = items[j]
                best_cal[model] = max(best_cal.get(model, 0.0), cal_score)
                raw[model] = max(raw.get(model, 0.0), raw_score)
            score = min(1.0, sum(best_cal.values()) / max(1, n_models))
            fused.append(
                Detection(
                    label=label,
                    class_id=items[cluster[0]][4],
                    score=score,
                    box=(
                        round(float(centre[0]), 2),
                        round(float(centre[1]), 2),
                        round(float(centre[2]), 2),
                        round(float(centre[3]), 2),
                    ),
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
        if len(self.backends) == 1:  # nothing to fuse: the model's own boxes (its NMS already ran)
            name, dets = next(iter(self.last_raw.items()))
            cal = self.calibrations[name]
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
            self.last_raw,
            models_for_label=self.models_for_label,
            calibrations=self.calibrations,
            fusion_iou=self.fusion_iou,
        )
