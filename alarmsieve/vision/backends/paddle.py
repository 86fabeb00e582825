"""PaddleDetection exports with post-processing inside (PP-PicoDet-XS LCNet, input 320).

Inputs ``image`` [N, 3, 320, 320] (RGB, ImageNet normalisation, plain resize) and ``scale_factor``
[1, 2] = (input h / frame h, input w / frame w); output [K, 6] rows of class, score, x1, y1, x2, y2
already in frame pixels after the model's own multiclass NMS, plus a count (not the row count: the
rows are what the NMS kept). Class-aware NMS runs once more so every backend's output means the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alarmsieve.vision.backends.base import (
    IDENTITY_PLACEMENT,
    Detection,
    check_bgr,
    prepare,
    to_detections,
)
from alarmsieve.vision.backends.session import OnnxBackend
from alarmsieve.vision.models import ResolvedModel


class PaddleNmsBackend(OnnxBackend):
    def __init__(self, model: ResolvedModel, **options: Any) -> None:
        super().__init__(model, **options)
        names = {i.name: i for i in self._session.get_inputs()}
        if set(names) != {"image", "scale_factor"}:
            raise RuntimeError(f"{self.model_name}: inputs {sorted(names)}, expected image and scale_factor")
        shape = names["image"].shape
        self.input_size = shape[2] if isinstance(shape[2], int) else model.entry.input_size

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        check_bgr(image_bgr)
        h, w = image_bgr.shape[:2]
        blob, placement = prepare(image_bgr, self.input_size, self.preprocess)
        scale = np.array([[placement.scale_y, placement.scale_x]], dtype=np.float32)
        rows = self._session.run(None, {"image": blob, "scale_factor": scale})[0].reshape(-1, 6)
        class_ids = rows[:, 0].astype(np.int64)
        valid = (class_ids >= 0) & (class_ids < len(self.labels))  # a padding row (class -1) is not an object
        rows, class_ids = rows[valid], class_ids[valid]
        return to_detections(
            rows[:, 2:6],
            rows[:, 1],
            class_ids,
            placement=IDENTITY_PLACEMENT,
            width=w,
            height=h,
            labels=self.labels,
            score_floor=self.score_floor,
            nms_iou=self.nms_iou,
        )
