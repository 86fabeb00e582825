"""Tiled inference for small, distant objects: the whole frame plus overlapping tiles, merged by NMS.

The model sees a 416-pixel square. A 1920x1080 frame shrinks 4.6x to fit it, and a person covering
1 % of a 640x480 frame is then a dozen pixels tall. Tiling runs the detector on the whole frame (for
large objects) and on overlapping tiles (for small ones, at or near native resolution), maps every
tile box back to frame pixels and merges the lot with class-aware NMS. A box cut by a tile's inner
edge is dropped when most of it lies inside a same-label box found elsewhere (the whole-frame box of
the same person), so one object gives one box.

``auto`` tiles large frames, and any frame whose whole-frame pass found a doubtful threat: a ``person``
scoring from ``doubt_from`` (0.25) up to ``doubt_below`` (the alert threshold) gets a second, closer
look. Most frames (nothing doubtful) cost one pass; a doubtful one costs ``max_tiles + 1``.

Doubt is decided on the detector's raw candidates (every backend returns all it sees above a low
floor), never on what is left after the reporting threshold: with ``--score-threshold 0.45`` a person
at 0.3 on the whole frame must still earn the frame its closer look (issue 14 §5). ``score_threshold``
is applied last, to what is reported.

``plan_tiles`` decides the layout; ``TiledDetector`` wraps any ``DetectorBackend``.
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from alarmsieve.vision.detector import Detection, DetectorBackend, check_bgr

TilingMode = Literal["auto", "on", "off"]
_EDGE_PX = 2.0  # a tile box within this many pixels of an inner tile edge is "cut" by the tile


class TilingConfig(BaseModel):
    """How to tile. ``tile_size`` is the tile side in frame pixels (None: the model's input size, i.e. native
    resolution); ``max_tiles`` caps the tile count by growing the tiles (each tile then shrinks a little
    to fit the model), which bounds the cost at ``max_tiles + 1`` passes; ``auto_min_side``: in ``auto``
    mode, tile frames whose longer side is at least this many pixels; ``doubt_labels`` / ``doubt_below``:
    in ``auto`` mode, also tile a frame whose whole-frame pass found one of these labels scoring under
    ``doubt_below`` (0: never)."""

    model_config = ConfigDict(extra="forbid")

    mode: TilingMode = "off"
    cameras: list[str] = []
    tile_size: int | None = Field(default=None, ge=64)
    overlap: float = Field(default=0.2, ge=0.0, lt=0.9)
    max_tiles: int | None = Field(default=2, ge=1)
    auto_min_side: int = Field(default=1000, ge=1)
    nms_iou: float = Field(default=0.45, gt=0.0, le=1.0)
    contain: float = Field(default=0.6, gt=0.0, le=1.0)
    doubt_labels: list[str] = ["person"]
    # the default alert threshold: a person found at 0.25..0.5 is worth a closer look
    doubt_below: float = Field(default=0.5, ge=0.0, le=1.0)
    # under this a raw candidate is noise, not doubt (the old reporting floor: same frames get tiled)
    doubt_from: float = Field(default=0.25, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _cameras_need_no_mode(self) -> TilingConfig:
        self.cameras = [c.strip() for c in self.cameras if c.strip()]
        self.doubt_labels = [c.strip() for c in self.doubt_labels if c.strip()]
        return self

    def doubt(self, whole: list[Detection]) -> Detection | None:
        """In ``auto`` mode, the whole-frame detection that makes the frame doubtful (None: none)."""
        if self.mode != "auto":
            return None
        found = [d for d in whole if d.label in self.doubt_labels and self.doubt_from <= d.score < self.doubt_below]
        return max(found, key=lambda d: d.score) if found else None

    def wanted(self, camera: str | None, width: int, height: int) -> bool:
        """Whether a frame of this camera and size is tiled."""
        if camera is not None and camera in self.cameras:
            return True
        if self.mode == "on":
            return True
        if self.mode == "auto":
            return max(width, height) >= self.auto_min_side
        return False


def _starts(length: int, tile: int, overlap_px: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap_px) / max(1, tile - overlap_px))
    n = max(n, 2)
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def plan_tiles(
    width: int, height: int, *, tile_size: int, overlap: float = 0.2, max_tiles: int | None = None
) -> list[tuple[int, int, int, int]]:
    """Tiles (x1, y1, x2, y2) covering the frame, neighbours overlapping by ``overlap`` of a tile side.

    With ``max_tiles`` the tile side grows (in steps of 32 px) until the count fits. A frame no larger
    than one tile gives a single tile: the whole frame, which tiling then adds nothing to.
    """
    if width < 1 or height < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    size = tile_size
    while True:
        tw, th = min(size, width), min(size, height)
        xs = _starts(width, tw, int(tw * overlap))
        ys = _starts(height, th, int(th * overlap))
        if max_tiles is None or len(xs) * len(ys) <= max_tiles or size >= max(width, height):
            return [(x, y, x + tw, y + th) for y in ys for x in xs]
        size += 32


def _area(box: np.ndarray) -> np.ndarray:
    return np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(box[..., 3] - box[..., 1], 0, None)


class TiledDetector(DetectorBackend):
    """Any detector, run on the whole frame and on overlapping tiles; class-aware NMS merges the boxes."""

    def __init__(
        self,
        base: DetectorBackend,
        config: TilingConfig | None = None,
        *,
        input_size: int | None = None,
        score_threshold: float | None = None,
    ):
        """``score_threshold``: report only boxes scoring at least this (None: all the base returns);
        doubt and merging see every raw candidate first."""
        if score_threshold is not None and not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within [0, 1], got {score_threshold}")
        self.base = base
        self.config = config or TilingConfig(mode="on")
        self.score_threshold = score_threshold
        self.model_name = base.model_name
        self.model_sha256 = base.model_sha256
        self.input_size = input_size or int(getattr(base, "input_size", 416))
        self.last_tiles = 0  # tiles run on the last frame (0: not tiled)
        self.last_reason = ""  # why the last frame was tiled

    def tiles_for(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        c = self.config
        return plan_tiles(
            width, height, tile_size=c.tile_size or self.input_size, overlap=c.overlap, max_tiles=c.max_tiles
        )

    def _reported(self, found: list[Detection]) -> list[Detection]:
        if self.score_threshold is None:
            return found
        return [d for d in found if d.score >= self.score_threshold]

    def detect(self, image_bgr: np.ndarray, camera: str | None = None) -> list[Detection]:
        return self._reported(self.detect_raw(image_bgr, camera))

    def detect_raw(self, image_bgr: np.ndarray, camera: str | None = None) -> list[Detection]:
        """Every candidate of the whole frame and (when tiled) the tiles, merged; nothing thresholded."""
        check_bgr(image_bgr)
        h, w = image_bgr.shape[:2]
        whole = self.base.detect(image_bgr)
        self.last_tiles, self.last_reason = 0, ""
        doubt = None if self.config.wanted(camera, w, h) else self.config.doubt(whole)
        if not self.config.wanted(camera, w, h) and doubt is None:
            return whole
        tiles = self.tiles_for(w, h)
        if len(tiles) == 1 and tiles[0] == (0, 0, w, h):
            return whole
        if doubt is not None:
            self.last_reason = f"doubtful {doubt.label} {doubt.score:.2f}"
        elif camera is not None and camera in self.config.cameras:
            self.last_reason = "camera listed"
        else:
            self.last_reason = "large frame" if self.config.mode == "auto" else "tiling on"
        self.last_tiles = len(tiles)
        found: list[tuple[Detection, bool]] = [(d, False) for d in whole]
        for x1, y1, x2, y2 in tiles:
            for d in self.base.detect(np.ascontiguousarray(image_bgr[y1:y2, x1:x2])):
                bx1, by1, bx2, by2 = d.box
                cut = (
                    (x1 > 0 and bx1 <= _EDGE_PX)
                    or (y1 > 0 and by1 <= _EDGE_PX)
                    or (x2 < w and bx2 >= (x2 - x1) - _EDGE_PX)
                    or (y2 < h and by2 >= (y2 - y1) - _EDGE_PX)
                )
                box = (bx1 + x1, by1 + y1, bx2 + x1, by2 + y1)
                found.append((d.model_copy(update={"box": tuple(round(v, 2) for v in box)}), cut))
        return merge_detections(found, nms_iou=self.config.nms_iou, contain=self.config.contain)


def _inside(a: np.ndarray, b: np.ndarray) -> float:
    """The share of box ``a`` that lies inside box ``b``."""
    inter = np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    return float(_area(inter)) / (float(_area(a)) or 1.0)


def _nms(dets: list[Detection], nms_iou: float) -> list[int]:
    """Indices kept by class-aware NMS, highest score first."""
    if not dets:
        return []
    xywh = np.array([d.box for d in dets], dtype=np.float64)
    xywh[:, 2:] -= xywh[:, :2]
    scores = np.array([d.score for d in dets], dtype=np.float32)
    classes = np.array([d.class_id for d in dets], dtype=np.int32)
    picked = cv2.dnn.NMSBoxesBatched(xywh, scores, classes, 0.0, nms_iou)
    idx = np.asarray(picked, dtype=np.int64).reshape(-1)
    return [int(i) for i in idx[np.argsort(-scores[idx], kind="stable")]]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(_area(np.array([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])))
    union = float(_area(a)) + float(_area(b)) - inter
    return inter / union if union > 0 else 0.0


def merge_detections(
    found: list[tuple[Detection, bool]], *, nms_iou: float = 0.45, contain: float = 0.6
) -> list[Detection]:
    """Merge (detection, cut-by-a-tile-edge) pairs from the whole frame and the tiles.

    Whole boxes (not cut by a tile edge) go through class-aware NMS first. A cut box is the part of an
    object that a tile shows: it is absorbed by a kept box of its label that it overlaps by
    ``nms_iou`` (IoU) or lies inside by ``contain`` (the kept box takes the higher of the two scores:
    the fragment is evidence of the same object); cut boxes left over go through NMS among themselves
    and are kept. Highest score first."""
    whole = [d for d, cut in found if not cut]
    kept = [whole[i] for i in _nms(whole, nms_iou)]
    kept_boxes = [np.array(d.box, dtype=np.float64) for d in kept]
    scores = [d.score for d in kept]
    sources = [dict(d.sources) for d in kept]
    cuts = [d for d, cut in found if cut]
    extra: list[Detection] = []
    for i in _nms(cuts, nms_iou):
        frag = cuts[i]
        box = np.array(frag.box, dtype=np.float64)
        absorbed = False
        for j, other in enumerate(kept):
            if other.class_id == frag.class_id and (
                _iou(box, kept_boxes[j]) >= nms_iou or _inside(box, kept_boxes[j]) >= contain
            ):
                scores[j] = max(scores[j], frag.score)
                for model, raw in frag.sources.items():  # the models that saw the fragment saw the object
                    sources[j][model] = max(sources[j].get(model, 0.0), raw)
                absorbed = True
                break
        if not absorbed:
            extra.append(frag)
    merged = [
        d if d.score == s and d.sources == src else d.model_copy(update={"score": s, "sources": src})
        for d, s, src in zip(kept, scores, sources, strict=True)
    ]
    return sorted(merged + extra, key=lambda d: -d.score)
