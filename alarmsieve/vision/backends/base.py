"""What every detector backend shares: the detection type, the interface, input checks, execution
providers, pre-processing (resize + normalise, as data from the catalogue) and the post-processing that
turns decoded candidates into detections (score floor, class-aware NMS, original pixels)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alarmsieve.vision.models import Preprocess

DEFAULT_SCORE_FLOOR = 0.05  # raw candidates: low enough for fusion and second looks, high enough to stay small
DEFAULT_NMS_IOU = 0.45


class Detection(BaseModel):
    """One object found in a frame; ``box`` is (x1, y1, x2, y2) in the original image's pixels.

    ``sources`` names the models that saw it with their raw scores (filled by the ensemble; a single
    backend leaves it empty)."""

    model_config = ConfigDict(extra="forbid")

    label: str
    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float]
    sources: dict[str, float] = {}

    @field_validator("score")
    @classmethod
    def _round_score(cls, value: float) -> float:
        # Four decimals keep stored results stable and diffable across runs and machines.
        return round(value, 4)


def check_bgr(image_bgr: np.ndarray) -> None:
    """Reject what is not a uint8 HxWx3 array, before it turns into a cryptic OpenCV error."""
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 numpy array, got {type(image_bgr).__name__}")
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.shape[0] < 1 or image_bgr.shape[1] < 1:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image_bgr.shape}")


class DetectorBackend(ABC):
    """What the pipeline needs from a detector: a name and hash for provenance, and ``detect``."""

    model_name: str
    model_sha256: str

    @abstractmethod
    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """Detections in a uint8 HxWx3 BGR frame, highest score first."""


CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def choose_providers(device: str = "auto", available: list[str] | None = None) -> list[str]:
    """onnxruntime execution providers for ``device``: ``cpu``, ``cuda``, or ``auto`` (CUDA when this
    onnxruntime build has it, i.e. ``onnxruntime-gpu`` on a machine with a GPU; else CPU).

    On Ray, an actor given a GPU (``resource_requests.gpu``) sees it through ``CUDA_VISIBLE_DEVICES``,
    so ``auto`` picks it up there and stays on the CPU everywhere else.
    """
    have = ort.get_available_providers() if available is None else available
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in have:
            raise ValueError(
                f"device cuda: this onnxruntime has no CUDA provider (it has {', '.join(have)}); install "
                "onnxruntime-gpu in place of onnxruntime on GPU machines, or use --device auto or cpu"
            )
        return [CUDA, CPU]
    if device == "auto":
        return [CUDA, CPU] if CUDA in have else [CPU]
    raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")


def check_options(score_floor: float, nms_iou: float, threads: int) -> None:
    if not 0.0 <= score_floor <= 1.0:
        raise ValueError(f"score_floor must be within [0, 1], got {score_floor}")
    if not 0.0 < nms_iou <= 1.0:
        raise ValueError(f"nms_iou must be within (0, 1], got {nms_iou}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")


@dataclass(frozen=True)
class Placement:
    """Where the frame went in the model's input: input pixel = frame pixel * scale + offset."""

    scale_x: float
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    def to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in input pixels -> frame pixels."""
        out = boxes.astype(np.float64, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.offset_x) / self.scale_x
        out[:, [1, 3]] = (out[:, [1, 3]] - self.offset_y) / self.scale_y
        return out


IDENTITY_PLACEMENT = Placement(1.0, 1.0)


def prepare(image_bgr: np.ndarray, size: int, spec: Preprocess) -> tuple[np.ndarray, Placement]:
    """The model's input blob [1, 3, size, size] float32, and where the frame landed in it."""
    h, w = image_bgr.shape[:2]
    if spec.resize == "stretch":
        canvas = cv2.resize(image_bgr, (size, size), interpolation=cv2.INTER_LINEAR)
        placement = Placement(size / w, size / h)
    else:
        r = min(size / h, size / w)
        nw, nh = max(1, round(w * r)), max(1, round(h * r))  # round: int() can lose a row
        left, top = ((size - nw) // 2, (size - nh) // 2) if spec.resize == "letterbox_centre" else (0, 0)
        canvas = np.full((size, size, 3), spec.pad, dtype=np.uint8)
        canvas[top : top + nh, left : left + nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        placement = Placement(r, r, left, top)
    if spec.colour == "rgb":
        canvas = canvas[..., ::-1]
    blob = canvas.astype(np.float32)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        blob = (blob - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(blob.transpose(2, 0, 1)[None]), placement


def nms_indices(boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, nms_iou: float) -> np.ndarray:
    """Indices kept by class-aware NMS, highest score first."""
    if len(scores) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = boxes_xyxy.astype(np.float64, copy=True)
    xywh[:, 2:] -= xywh[:, :2]
    picked = cv2.dnn.NMSBoxesBatched(xywh, scores.astype(np.float32), class_ids.astype(np.int32), 0.0, nms_iou)
    idx = np.asarray(picked, dtype=np.int64).reshape(-1)
    return idx[np.argsort(-scores[idx], kind="stable")]


def to_detections(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    *,
    placement: Placement,
    width: int,
    height: int,
    labels: tuple[str, ...],
    score_floor: float,
    nms_iou: float,
) -> list[Detection]:
    """Candidates (xyxy in input pixels) -> detections at or above the floor, in frame pixels, clipped
    to the frame, after class-aware NMS (on the clipped boxes: what is reported never overlaps more than
    ``nms_iou``), highest score first."""
    keep = scores >= score_floor
    boxes, scores, class_ids = placement.to_frame(boxes_xyxy[keep]), scores[keep], class_ids[keep]
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    idx = nms_indices(boxes, scores, class_ids, nms_iou)
    boxes = boxes[idx]
    detections = []
    for box, score, cid in zip(boxes, scores[idx], class_ids[idx], strict=True):
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue  # entirely in the padding: nothing left of it in the frame
        detections.append(
            Detection(
                label=labels[int(cid)],
                class_id=int(cid),
                score=min(1.0, float(score)),
                box=(
                    round(float(box[0]), 2),
                    round(float(box[1]), 2),
                    round(float(box[2]), 2),
                    round(float(box[3]), 2),
                ),
            )
        )
    return detections
