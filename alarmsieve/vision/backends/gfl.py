"""The GFL family (NanoDet-m, PicoDet-S without post-processing): per-stride heads, no NMS inside.

Per stride, one output of class scores [1, cells, classes] (sigmoid already applied) and one of
distance bins [1, cells, 4 * 8]: for each side (left, top, right, bottom) a distribution over 0..7
stride units; its expectation (softmax, then the mean bin) times the stride is the distance from the
cell centre ``x * stride + (stride - 1) / 2`` (the reference decoders of both exports). The outputs are
told apart by their last dimension and ordered by cell count (the finest stride first); the stride
of a level is the one whose grid ``ceil(input / stride)`` squared has that many cells (PicoDet-S at
416 has a 7 x 7 level at stride 64).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alarmsieve.vision.backends.base import (
    Detection,
    check_bgr,
    prepare,
    to_detections,
)
from alarmsieve.vision.backends.session import OnnxBackend
from alarmsieve.vision.models import ResolvedModel

_BINS = 8  # reg_max + 1
_STRIDE_CHOICES = (8, 16, 32, 64, 128)


class GflBackend(OnnxBackend):
    """NanoDet / PicoDet-S on onnxruntime: resize as the catalogue says, decode the distance bins, NMS."""

    def __init__(self, model: ResolvedModel, **options: Any) -> None:
        super().__init__(model, **options)

        outputs = self._session.get_outputs()
        n_classes = len(self.labels)
        cls = [o for o in outputs if o.shape[-1] == n_classes]
        reg = [o for o in outputs if o.shape[-1] == 4 * _BINS]
        if not cls or len(cls) != len(reg) or len(cls) + len(reg) != len(outputs):
            raise RuntimeError(
                f"{self.model_name}: outputs {[(o.name, o.shape) for o in outputs]} are not per-stride class "
                f"scores (last dim {n_classes}) and distance bins (last dim {4 * _BINS})"
            )
        cls.sort(key=lambda o: -o.shape[1])
        reg.sort(key=lambda o: -o.shape[1])
        self._cls_names = [o.name for o in cls]
        self._reg_names = [o.name for o in reg]
        centres, strides = [], []
        for o in cls:
            cells = math.isqrt(o.shape[1])
            stride = next((s for s in _STRIDE_CHOICES if math.ceil(self.input_size / s) == cells), None)
            if stride is None or cells * cells != o.shape[1]:
                raise RuntimeError(f"{self.model_name}: output {o.name} has {o.shape[1]} cells: no square stride grid")
            ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
            centre = np.stack((xs, ys), axis=-1).reshape(-1, 2) * stride + (stride - 1) / 2
            centres.append(centre)
            strides.append(np.full((cells * cells, 1), stride))
        self._centre = np.concatenate(centres).astype(np.float32)
        self._stride = np.concatenate(strides).astype(np.float32)
        self.strides = tuple(int(s[0, 0]) for s in strides)
        self._bin = np.arange(_BINS, dtype=np.float32)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        check_bgr(image_bgr)
        h, w = image_bgr.shape[:2]
        blob, placement = prepare(image_bgr, self.input_size, self.preprocess)
        outs = self._session.run(self._cls_names + self._reg_names, {self._input_name: blob})
        n = len(self._cls_names)
        cls_scores = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs[:n]])
        class_ids = cls_scores.argmax(axis=1)
        scores = cls_scores[np.arange(cls_scores.shape[0]), class_ids]
        keep = scores >= self.score_floor
        # Only the candidates at or above the floor get their distance bins decoded.
        bins = np.concatenate([o.reshape(-1, o.shape[-1]) for o in outs[n:]])[keep].reshape(-1, 4, _BINS)
        bins = np.exp(bins - bins.max(axis=2, keepdims=True))
        dist = (bins / bins.sum(axis=2, keepdims=True)) @ self._bin * self._stride[keep]
        centre = self._centre[keep]
        boxes = np.concatenate((centre - dist[:, :2], centre + dist[:, 2:]), axis=1)
        return to_detections(
            boxes,
            scores[keep],
            class_ids[keep],
            placement=placement,
            width=w,
            height=h,
            labels=self.labels,
            score_floor=self.score_floor,
            nms_iou=self.nms_iou,
        )
