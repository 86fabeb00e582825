"""The YOLOX family: YOLOX-Nano (COCO 80) and the light person detector (person only, input 192).

Output [1, N, 5 + classes], one row per grid cell of strides 8, 16, 32: cx, cy, log w, log h in
cell units, objectness and class scores (both already sigmoid). Decode: xy = (xy + grid) * stride,
wh = exp(wh) * stride; score = objectness * best class score.
"""

from __future__ import annotations

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

_STRIDES = (8, 16, 32)


class YoloxBackend(OnnxBackend):
    """A YOLOX export on onnxruntime: letterbox, one forward pass, decode, class-aware NMS."""

    def __init__(self, model: ResolvedModel, **options: Any) -> None:
        super().__init__(model, **options)

        # Grid offsets and strides depend only on the input size, so build them once.
        grids, strides = [], []
        for stride in _STRIDES:
            cells = self.input_size // stride
            ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
            grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
            strides.append(np.full((cells * cells, 1), stride))
        self._grid = np.concatenate(grids).astype(np.float32)
        self._stride = np.concatenate(strides).astype(np.float32)

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        check_bgr(image_bgr)
        h, w = image_bgr.shape[:2]
        blob, placement = prepare(image_bgr, self.input_size, self.preprocess)
        out = self._session.run(None, {self._input_name: blob})[0][0]
        if out.shape[0] != self._grid.shape[0] or out.shape[1] != 5 + len(self.labels):
            raise RuntimeError(
                f"{self.model_name}: output shape {out.shape}, expected ({self._grid.shape[0]}, "
                f"{5 + len(self.labels)}) for input {self.input_size}; is this a YOLOX export with decode left out?"
            )
        cls_scores = out[:, 5:]
        class_ids = cls_scores.argmax(axis=1)
        scores = out[:, 4] * cls_scores[np.arange(out.shape[0]), class_ids]
        keep = scores >= self.score_floor
        # Decode only the candidates at or above the floor: a few hundred rows instead of thousands.
        raw, scores, class_ids = out[keep], scores[keep], class_ids[keep]
        centre = (raw[:, :2] + self._grid[keep]) * self._stride[keep]
        half = np.exp(raw[:, 2:4]) * self._stride[keep] / 2
        boxes = np.concatenate((centre - half, centre + half), axis=1)
        return to_detections(
            boxes,
            scores,
            class_ids,
            placement=placement,
            width=w,
            height=h,
            labels=self.labels,
            score_floor=self.score_floor,
            nms_iou=self.nms_iou,
        )
