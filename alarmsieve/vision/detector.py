"""Object detection behind a small backend interface; the default backend is YOLOX-Nano on onnxruntime."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import cv2
import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alarmsieve.vision.models import ResolvedModel

_STRIDES = (8, 16, 32)
_PAD_VALUE = 114  # the letterbox fill YOLOX was trained with


class Detection(BaseModel):
    """One object found in a frame; ``box`` is (x1, y1, x2, y2) in the original image's pixels."""

    model_config = ConfigDict(extra="forbid")

    label: str
    class_id: int = Field(ge=0)
    score: float = Field(ge=0.0, le=1.0)
    box: tuple[float, float, float, float]

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


class OnnxYoloxDetector(DetectorBackend):
    """YOLOX-Nano on onnxruntime (CPU by default): letterbox, one forward pass, decode, class-aware NMS."""

    def __init__(
        self,
        model: ResolvedModel,
        *,
        score_threshold: float = 0.25,
        nms_iou: float = 0.45,
        threads: int = 1,
        providers: list[str] | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be within [0, 1], got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be within (0, 1], got {nms_iou}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.model_name = model.entry.name
        self.model_sha256 = model.sha256
        self.labels = model.entry.label_names
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou

        opts = ort.SessionOptions()
        # One intra-op thread per worker by default: pipelines scale out with workers, not threads.
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(str(model.path), sess_options=opts, providers=providers or [CPU])
        self.providers = self._session.get_providers()  # what onnxruntime really uses (CUDA may fall back)
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = inp.shape
        self.input_size = shape[2] if isinstance(shape[2], int) else model.entry.input_size

        # Grid offsets and strides depend only on the input size, so build them once.
        grids, strides = [], []
        for stride in _STRIDES:
            cells = self.input_size // stride
            ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
            grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
            strides.append(np.full((cells * cells, 1), stride))
        self._grid = np.concatenate(grids).astype(np.float32)
        self._stride = np.concatenate(strides).astype(np.float32)

    def _letterbox(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = image_bgr.shape[:2]
        size = self.input_size
        r = min(size / h, size / w)
        nw, nh = max(1, int(w * r)), max(1, int(h * r))
        canvas = np.full((size, size, 3), _PAD_VALUE, dtype=np.uint8)
        canvas[:nh, :nw] = cv2.resize(image_bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
        return blob, r

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        check_bgr(image_bgr)
        h, w = image_bgr.shape[:2]
        blob, r = self._letterbox(image_bgr)
        out = self._session.run(None, {self._input_name: blob})[0][0]
        if out.shape[0] != self._grid.shape[0]:
            raise RuntimeError(
                f"model output has {out.shape[0]} rows, expected {self._grid.shape[0]} for input "
                f"{self.input_size}; is this a YOLOX export with decode left out?"
            )

        cls_scores = out[:, 5:]
        class_ids = cls_scores.argmax(axis=1)
        scores = out[:, 4] * cls_scores[np.arange(out.shape[0]), class_ids]
        keep = scores >= self.score_threshold
        if not keep.any():
            return []
        # Decode only the candidates that passed the threshold: a few dozen rows instead of 3549.
        raw, scores, class_ids = out[keep], scores[keep], class_ids[keep]
        centre = (raw[:, :2] + self._grid[keep]) * self._stride[keep]
        size = np.exp(raw[:, 2:4]) * self._stride[keep]
        xywh = np.concatenate((centre - size / 2, size), axis=1).astype(np.float64)
        picked = cv2.dnn.NMSBoxesBatched(
            xywh, scores.astype(np.float32), class_ids.astype(np.int32), self.score_threshold, self.nms_iou
        )
        idx = np.asarray(picked, dtype=np.int64).reshape(-1)
        idx = idx[np.argsort(-scores[idx], kind="stable")]

        boxes = xywh[idx].copy()
        boxes[:, 2:] += boxes[:, :2]
        boxes /= r
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        detections = []
        for box, score, cid in zip(boxes, scores[idx], class_ids[idx], strict=True):
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                continue  # entirely in the letterbox padding: nothing left of it in the frame
            detections.append(
                Detection(
                    label=self.labels[int(cid)],
                    class_id=int(cid),
                    score=float(score),
                    box=(
                        round(float(box[0]), 2),
                        round(float(box[1]), 2),
                        round(float(box[2]), 2),
                        round(float(box[3]), 2),
                    ),
                )
            )
        return detections


_BACKENDS: dict[str, Callable[..., DetectorBackend]] = {"onnx": OnnxYoloxDetector}


def register_backend(kind: str, factory: Callable[..., DetectorBackend]) -> None:
    """Make another detector available to ``create_detector`` (e.g. a GPU or remote backend)."""
    _BACKENDS[kind] = factory


def create_detector(kind: str = "onnx", **kwargs: object) -> DetectorBackend:
    """Build the detector backend named ``kind``; keyword arguments go to its constructor."""
    try:
        factory = _BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known kinds: {', '.join(sorted(_BACKENDS))}") from None
    return factory(**kwargs)
