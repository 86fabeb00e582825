"""Object detection behind one small interface: the public import surface.

The backends live in ``vision.backends`` (one module per decode family, chosen by the catalogue
entry's ``type``); this module re-exports what the rest of the code imports, and keeps the kind
registry (``onnx``: onnxruntime, the decoder picked by the model). Every backend returns all its
candidates at or above a low floor (``score_floor``), after class-aware NMS: thresholds for a verdict
are applied later, by whoever reports.
"""

from __future__ import annotations

from collections.abc import Callable

from alarmsieve.vision.backends import (
    CPU,
    CUDA,
    DEFAULT_NMS_IOU,
    DEFAULT_SCORE_FLOOR,
    Detection,
    DetectorBackend,
    GflBackend,
    PaddleNmsBackend,
    YoloxBackend,
    check_bgr,
    choose_providers,
    load_backend,
)

OnnxYoloxDetector = YoloxBackend  # the name this backend had when it was the only one

_BACKENDS: dict[str, Callable[..., DetectorBackend]] = {"onnx": load_backend}


def register_backend(kind: str, factory: Callable[..., DetectorBackend]) -> None:
    """Make another detector available to ``create_detector`` (e.g. a GPU or remote backend)."""
    _BACKENDS[kind] = factory


def create_detector(kind: str = "onnx", **kwargs: object) -> DetectorBackend:
    """Build the detector backend named ``kind``; keyword arguments go to its constructor
    (``onnx``: ``model`` = a ResolvedModel, then score_floor, nms_iou, threads, providers, strip_weights)."""
    try:
        factory = _BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown detector kind {kind!r}; known kinds: {', '.join(sorted(_BACKENDS))}") from None
    return factory(**kwargs)


__all__ = [
    "CPU",
    "CUDA",
    "DEFAULT_NMS_IOU",
    "DEFAULT_SCORE_FLOOR",
    "Detection",
    "DetectorBackend",
    "GflBackend",
    "OnnxYoloxDetector",
    "PaddleNmsBackend",
    "YoloxBackend",
    "check_bgr",
    "choose_providers",
    "create_detector",
    "load_backend",
    "register_backend",
]
